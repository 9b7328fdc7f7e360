"""What the inspector shows, as pure functions from cluster objects to rows.

Secrets are shown by name, type and key names only: ``secret_row`` never reads a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller import conditions
from controller.api import CAPTURE, CONFIG_HASH, INJECTED, OPT_OUT, PENDING, PROXY
from controller.policy import selector_matches


@dataclass(frozen=True)
class WorkloadRow:
    namespace: str
    kind: str
    name: str
    replicas: str
    captured_by: str  # the CapturePolicy named on the pod template, "" when not captured
    opted_out: bool
    tls_out: bool
    pods: int
    injected: int
    sidecars_ready: int
    config_hash: str


def _pods_of(workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    selector = (workload.get("spec") or {}).get("selector") or {}
    if not selector:
        return []
    return [p for p in pods if selector_matches(selector, p["metadata"].get("labels") or {})]


def _sidecar_ready(pod: Mapping[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    return any(s.get("name") == PROXY and s.get("ready") for s in statuses)


def workload_row(kind: str, workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                 policies: Mapping[str, Mapping[str, Any]]) -> WorkloadRow:
    """One workload with its capture state; ``policies`` by name, of the workload's namespace."""
    meta, spec = workload["metadata"], workload.get("spec") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    notes, labels = template.get("annotations") or {}, template.get("labels") or {}
    mine = _pods_of(workload, pods)
    captured_by = notes.get(CAPTURE, "")
    outbound = ((policies.get(captured_by) or {}).get("spec") or {}).get("outbound") or {}
    status = workload.get("status") or {}
    desired = spec.get("replicas", status.get("desiredNumberScheduled", 0))
    return WorkloadRow(
        namespace=meta["namespace"], kind=kind, name=meta["name"],
        replicas=f"{status.get('readyReplicas', status.get('numberReady', 0)) or 0}/{desired}",
        captured_by=captured_by,
        opted_out=str(notes.get(OPT_OUT, labels.get(OPT_OUT, ""))).lower() == "false",
        tls_out=bool(outbound.get("enabled") and outbound.get("tlsUnwrap")),
        pods=len(mine),
        injected=sum(1 for p in mine if INJECTED in (p["metadata"].get("annotations") or {})),
        sidecars_ready=sum(1 for p in mine if _sidecar_ready(p)),
        config_hash=notes.get(CONFIG_HASH, ""),
    )


@dataclass(frozen=True)
class ReplayRow:
    namespace: str
    name: str
    snapshot: str
    target: str
    phase: str
    message: str
    requests: int | None
    success_rate: float | None
    p99_ms: float | None
    goals_met: bool | None
    report: str
    report_id: str


def replay_row(replay: Mapping[str, Any]) -> ReplayRow:
    meta, spec, status = replay["metadata"], replay.get("spec") or {}, replay.get("status") or {}
    target = spec.get("target") or {}
    ref = target.get("workloadRef") or {}
    summary = status.get("summary") or {}
    ready = conditions.ready_condition(status)
    return ReplayRow(
        namespace=meta["namespace"], name=meta["name"], snapshot=spec.get("snapshot", ""),
        target=target.get("url") or f"{ref.get('kind', 'Deployment')}/{ref.get('name', '')}",
        phase=status.get("phase", PENDING if status else "New"), message=ready.get("message", ""),
        requests=summary.get("requests"), success_rate=summary.get("successRate"), p99_ms=summary.get("p99Ms"),
        goals_met=summary.get("goalsMet"), report=(status.get("reportRef") or {}).get("path", ""),
        report_id=(status.get("reportRef") or {}).get("id", ""),
    )


@dataclass(frozen=True)
class SecretRow:
    namespace: str
    name: str
    type: str
    keys: tuple[str, ...]


def secret_row(secret: Mapping[str, Any]) -> SecretRow:
    """Name, type and key names; the values are not read."""
    meta = secret["metadata"]
    keys = sorted({*(secret.get("data") or {}), *(secret.get("stringData") or {})})
    return SecretRow(meta["namespace"], meta["name"], secret.get("type", "Opaque"), tuple(keys))


@dataclass(frozen=True)
class EventRow:
    time: str
    type: str
    reason: str
    object: str
    message: str


def event_row(event: Mapping[str, Any]) -> EventRow:
    regarding = event.get("involvedObject") or event.get("regarding") or {}
    when = event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
        "creationTimestamp") or ""
    return EventRow(str(when), event.get("type", ""), event.get("reason", ""),
                    f"{regarding.get('kind', '')}/{regarding.get('name', '')}", event.get("message") or event.get(
                        "note") or "")
