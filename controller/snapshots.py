"""Snapshots declared in the cluster: cut from the store by a Job, named by TrafficReplays.

A ``Snapshot`` names a CapturePolicy (its streams are ``<namespace>.<policy>.<pod>``) or one
stream, a time window and optional filters. ``cut`` (run in the snapshot Job's pod) writes the
snapshot into the store as ``<namespace>.<name>`` and its status (Ready with pairs, bytes and the
window; Failed with the reason). A TrafficReplay's ``spec.snapshot`` is the name of a Snapshot of
its namespace when one exists, else a snapshot of the store by its own name (imported ones) — one that
namespace may read: cut for it, or shared with it (``replayops snapshot share NAME --with NAMESPACE``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from controller import conditions
from controller.api import API_VERSION, FAILED, READY_PHASE, SNAPSHOT_CUT, SNAPSHOT_FAILED
from controller.durations import epoch, parse_duration
from controller.kube import Kube
from controller.store import FileStore, Manifest, ReadProblem, StoreError


class SnapshotNotReady(LookupError):
    """A TrafficReplay names a Snapshot that is not (yet) cut, or a snapshot its namespace may not read;
    the message says which and why."""


def store_name(namespace: str, name: str) -> str:
    """The store's name of the Snapshot ``namespace/name`` (DNS names joined by a dot stay unique)."""
    return f"{namespace}.{name}"


def resolve(kube: Kube, namespace: str, name: str, store: FileStore) -> str:
    """The store name a TrafficReplay in ``namespace`` means by ``spec.snapshot: name``: its namespace's
    Snapshot ``name``, else the store's snapshot ``name`` if ``namespace`` may read it."""
    snap = kube.get(API_VERSION, "Snapshot", name, namespace)
    if snap is None:
        try:
            manifest = store.manifest(name)
        except StoreError as exc:
            raise SnapshotNotReady(f"{name!r} is neither a Snapshot in namespace {namespace} nor readable in the "
                                   f"store: {exc}") from exc
        if not manifest.readable_by(namespace):
            owner = f"namespace {manifest.namespace}'s" if manifest.namespace else "made outside the cluster"
            raise SnapshotNotReady(f"snapshot {name!r} in the store is {owner} and not shared with namespace "
                                   f"{namespace}; share it with: replayops snapshot share {name} --with {namespace}")
        return name
    status = snap.get("status") or {}
    if status.get("phase") != READY_PHASE or status.get("observedGeneration") != snap["metadata"].get("generation"):
        why = conditions.ready_condition(status).get("message", "")
        raise SnapshotNotReady(f"Snapshot {namespace}/{name} is {status.get('phase') or 'not cut yet'}"
                               + (f": {why}" if why else ""))
    return str(status.get("storeName") or store_name(namespace, name))


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window(spec: Mapping[str, Any], now: float) -> tuple[float, float]:
    """``spec.window`` as epoch seconds (from, to); ``last`` counts back from ``now``."""
    win = spec.get("window") or {}
    if win.get("last"):
        return now - float(parse_duration(str(win["last"])) or 0), now
    return epoch(str(win["from"])), epoch(str(win["to"])) if win.get("to") else now


def streams(store: FileStore, namespace: str, spec: Mapping[str, Any]) -> list[str]:
    """The store streams a Snapshot's spec names, all of its own namespace (``<namespace>.<policy>.<pod>``;
    pod names of workloads have no dots, so policy ``a`` never takes the streams of policy ``a.b``)."""
    if spec.get("stream"):
        stream = str(spec["stream"])
        if not stream.startswith(f"{namespace}."):
            raise ValueError(f"spec.stream {stream!r} is not a stream of namespace {namespace}")
        return [stream]
    prefix = f"{namespace}.{spec['policy']}."
    return [s for s in store.streams() if s.startswith(prefix) and "." not in s[len(prefix):]]


def kept(filters: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether a Snapshot's ``filters`` keep ``record`` (each filter named must match)."""
    request = record.get("request") or {}
    path = urlsplit(str(request.get("url", ""))).path or "/"
    return (not filters.get("directions") or record.get("direction") in filters["directions"]) \
        and (not filters.get("methods") or str(request.get("method", "")).upper() in filters["methods"]) \
        and (not filters.get("paths") or any(fnmatch.fnmatchcase(path, p) for p in filters["paths"]))


def records(store: FileStore, namespace: str, spec: Mapping[str, Any], start: float, end: float,
            problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]:
    """The pairs of the Snapshot's streams in its window that its filters keep; what cannot be read is
    appended to ``problems``."""
    filters = spec.get("filters") or {}
    for stream in streams(store, namespace, spec):
        for record in store.stream_records(stream, problems=problems):
            at = float((record.get("timestamps") or {}).get("request", 0))
            if start <= at <= end and kept(filters, record):
                yield record


def _status(namespace: str, name: str, phase: str, generation: int, reason: str, message: str,
            **fields: Any) -> dict[str, Any]:
    """A Snapshot's status body (for server-side apply) with its Ready condition."""
    return {"apiVersion": API_VERSION, "kind": "Snapshot", "metadata": {"name": name, "namespace": namespace},
            "status": {"phase": phase, "observedGeneration": generation, **fields,
                       "conditions": [conditions.ready(phase == READY_PHASE, reason, message, generation)]}}


def cut(kube: Kube, store: FileStore, namespace: str, name: str, now: float) -> tuple[bool, str]:
    """Cut the Snapshot ``namespace/name`` into the store and write its status; (ok, what happened)."""
    snap = kube.get(API_VERSION, "Snapshot", name, namespace)
    if snap is None:
        return False, f"Snapshot {namespace}/{name} does not exist"
    generation = int(snap["metadata"].get("generation", 1))
    spec = snap.get("spec") or {}
    target = store_name(namespace, name)
    source = f"Snapshot {namespace}/{name} (uid {snap['metadata'].get('uid')}) of " + (
        f"CapturePolicy {spec['policy']}" if spec.get("policy") else f"stream {spec.get('stream')}")
    try:
        start, end = window(spec, now)
        manifest = store.manifest(target) if store.exists(target) else None
        if manifest is None or manifest.source != source:  # nothing, or an earlier object's cut: cut anew
            store.remove(target)
            fresh = Manifest(name=target, service=spec.get("policy", ""), start=start, end=end,
                             policy=spec.get("policy", ""), source=source, namespace=namespace)
            problems: list[ReadProblem] = []

            def cut_records() -> Iterator[dict[str, Any]]:
                yield from records(store, namespace, spec, start, end, problems)
                fresh.problems = [str(p) for p in problems]  # before the manifest is written
            manifest = store.write_snapshot(fresh, cut_records())
        start, end = manifest.start or start, manifest.end or end
    except (StoreError, OSError, ValueError) as exc:
        message = f"cutting {target}: {exc}"
        kube.apply_status(_status(namespace, name, FAILED, generation, SNAPSHOT_FAILED, message))
        return False, message
    size = sum(p.stat().st_size for p in store.segments(target))
    message = f"{manifest.count} pairs of {_iso(start)} to {_iso(end)}"
    if manifest.problems:  # kept what could be read; said what could not
        message += (f"; {len(manifest.problems)} unreadable place(s) in the store skipped, first: "
                    f"{manifest.problems[0]}")
    kube.apply_status(_status(namespace, name, READY_PHASE, generation, SNAPSHOT_CUT, message, storeName=target,
                              pairs=manifest.count, byDirection=manifest.by_direction, bytes=size,
                              window={"from": _iso(start), "to": _iso(end)}))
    return True, message
