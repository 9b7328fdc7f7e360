"""Defaults the CRD schema cannot express (they depend on other fields); applied by the webhook."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controller import schema

MOCK_TIMING_BY_MODE = {"full": "none", "mocks-only": "recorded", "tests-only": "none"}


def schema_defaults(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with its CRD schema's defaults (all a Snapshot needs)."""
    found = schema.schema_for(str(obj.get("apiVersion")), str(obj.get("kind")))
    return schema.apply_defaults(found, copy.deepcopy(dict(obj))) if found else copy.deepcopy(dict(obj))


def default_replay(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A TrafficReplay with the target's kind and the mocks' timing filled in."""
    out = schema_defaults(obj)
    spec = out.setdefault("spec", {})
    ref = (spec.get("target") or {}).get("workloadRef")
    if isinstance(ref, dict):
        ref.setdefault("kind", "Deployment")
    if spec.get("mode") != "tests-only":
        timing = spec.setdefault("mocks", {}).setdefault("timing", {})
        if isinstance(timing, dict) and "mode" not in timing:
            timing["mode"] = MOCK_TIMING_BY_MODE.get(str(spec.get("mode", "full")), "none")
    return out


def default_policy(obj: Mapping[str, Any], *, max_size_mb: int = 1024) -> dict[str, Any]:
    """A CapturePolicy whose retention carries the cluster's size cap when it names none."""
    out = schema_defaults(obj)
    retention = out.setdefault("spec", {}).setdefault("retention", {})
    if isinstance(retention, dict):
        retention.setdefault("maxSizeMB", max_size_mb)
    return out
