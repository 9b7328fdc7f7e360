"""Which workloads carry which capture annotations, as pure functions over plain objects.

``plan`` maps every Deployment/StatefulSet/DaemonSet to the annotations the
CapturePolicies want on its pod template: ``replayops.dev/capture`` and
``replayops.dev/config-hash``, or none. A workload two policies select is a
conflict: it is left as it is and reported, never flapped between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.api import CAPTURE, CONFIG_HASH, OPT_OUT, WORKLOAD_KINDS
from controller.policy import config_hash, selector_matches

OWNED = (CAPTURE, CONFIG_HASH)
WorkloadKey = tuple[str, str, str]  # (namespace, kind, name)


@dataclass
class Plan:
    """Wanted template annotations per workload, plus what each policy selected and the conflicts."""

    wanted: dict[WorkloadKey, dict[str, str]] = field(default_factory=dict)
    selected: dict[tuple[str, str], list[WorkloadKey]] = field(default_factory=dict)  # (ns, policy) ->
    conflicts: dict[WorkloadKey, list[str]] = field(default_factory=dict)


def key(workload: Mapping[str, Any]) -> WorkloadKey:
    meta = workload["metadata"]
    return (meta.get("namespace", ""), workload["kind"], meta["name"])


def template_annotations(workload: Mapping[str, Any]) -> dict[str, str]:
    template = (workload.get("spec") or {}).get("template") or {}
    return dict((template.get("metadata") or {}).get("annotations") or {})


def _opted_out(workload: Mapping[str, Any]) -> bool:
    template = ((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}
    notes = (workload["metadata"].get("annotations"), workload["metadata"].get("labels"), template.get("annotations"))
    return any(str(n.get(OPT_OUT, "")).lower() == "false" for n in notes if n)


def plan(policies: Iterable[Mapping[str, Any]], workloads: Iterable[Mapping[str, Any]]) -> Plan:
    """What every workload's template should carry, given the (defaulted) CapturePolicies."""
    out = Plan()
    matches: dict[WorkloadKey, list[tuple[str, str]]] = {}
    by_namespace: dict[str, list[tuple[str, Mapping[str, Any], str]]] = {}  # ns -> (name, spec, config hash)
    for pol in sorted(policies, key=lambda p: p["metadata"]["name"]):
        meta, spec = pol["metadata"], pol["spec"]
        out.selected[(meta["namespace"], meta["name"])] = []
        by_namespace.setdefault(meta["namespace"], []).append((meta["name"], spec, config_hash(spec)))
    for wl in workloads:
        candidates = by_namespace.get(wl["metadata"].get("namespace", ""))
        if not candidates or wl["kind"] not in WORKLOAD_KINDS or _opted_out(wl):
            continue
        labels = ((wl.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
        for name, spec, digest in candidates:
            if wl["kind"] not in spec.get("kinds", WORKLOAD_KINDS):
                continue
            if selector_matches(spec.get("selector") or {}, labels):
                matches.setdefault(key(wl), []).append((name, digest))
    for wkey, found in matches.items():
        for name, _ in found:
            out.selected[(wkey[0], name)].append(wkey)
        if len(found) > 1:
            out.conflicts[wkey] = [name for name, _ in found]
        else:
            name, digest = found[0]
            out.wanted[wkey] = {CAPTURE: name, CONFIG_HASH: digest}
    return out


def ours(workload: Mapping[str, Any], manager: str) -> dict[str, str]:
    """The capture annotations on a workload's template that ``manager`` set (per managedFields): only
    those are ours to change or remove; ones a user or another tool set are left alone."""
    present = {k: v for k, v in template_annotations(workload).items() if k in OWNED}
    if not present:  # nothing of ours can be there (most workloads): no managedFields to read
        return {}
    owned: set[str] = set()
    for entry in workload["metadata"].get("managedFields") or []:
        if entry.get("manager") != manager:
            continue
        fields = (((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:template") or {})
        notes = ((fields.get("f:metadata") or {}).get("f:annotations") or {})
        owned |= {k[2:] for k in notes if k[2:] in OWNED}
    return {k: v for k, v in present.items() if k in owned}
