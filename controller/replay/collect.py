"""The collector: cluster events around a replay run, kept in its report.

Events of the replay's namespace from a minute before the run (a rollout, a crash loop that set the
scene) to its end; for a workload target only those of the workload and of what it owns (its
ReplicaSets and Pods carry its name as their prefix).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from controller.kube import Kube

LEAD_S = 60.0


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def events(kube: Kube, namespace: str, spec: Mapping[str, Any], started: float, finished: float
           ) -> list[dict[str, str]]:
    """The namespace's events from ``LEAD_S`` before ``started`` to ``finished``, oldest first."""
    ref = (spec.get("target") or {}).get("workloadRef") or {}
    prefix = str(ref.get("name") or "")
    out = []
    for event in kube.list("v1", "Event", namespace):
        when = event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
            "creationTimestamp")
        regarding = event.get("involvedObject") or {}
        if not when or not started - LEAD_S <= _epoch(str(when)) <= finished + 1:
            continue
        if prefix and not str(regarding.get("name", "")).startswith(prefix):
            continue
        out.append({"time": str(when), "type": str(event.get("type", "")), "reason": str(event.get("reason", "")),
                    "object": f"{regarding.get('kind', '')}/{regarding.get('name', '')}",
                    "message": str(event.get("message") or "")})
    return sorted(out, key=lambda e: e["time"])
