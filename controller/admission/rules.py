"""Rules across objects, beyond what a schema can say; shared by the webhook and the GitOps loop.

Each check returns ``Finding``s naming the field and the rule. What the rules
need from the world (workloads, running replays, namespaces, the snapshot
store) comes through the ``Lookup`` protocol, so the webhook answers from the
cluster and ``replayops validate`` from the files of a revision.
"""

from __future__ import annotations

try:  # the regex parser is private; it moved in 3.11
    import re._parser as sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.admission.inject import HEALTH_PORT
from controller.api import ACTIVE_PHASES, EXCLUDED_NAMESPACES, PENDING
from controller.durations import epoch
from controller.policy import selector_matches
from controller.store import Manifest

OWN_POD_LABELS = ({"app.kubernetes.io/part-of": "replayops", "app.kubernetes.io/name": "replayops-controller"},
                  {"app.kubernetes.io/part-of": "replayops", "app.kubernetes.io/name": "replayops-webhook"})


@dataclass(frozen=True)
class Finding:
    """A rule violation (or, with ``warning``, a caveat) about the field at ``path``."""

    path: str
    message: str
    rule: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (rule: {self.rule})"


@dataclass(frozen=True)
class Limits:
    """Cluster admin settings the rules enforce."""

    max_copies: int = 200
    max_rps: float = 20000.0
    capture_namespaces: frozenset[str] | None = None  # None: any namespace (see capture_label)
    capture_label: str | None = None  # a namespace labelled <label>=true allows capture


class Lookup(Protocol):
    def workload_exists(self, namespace: str, kind: str, name: str) -> bool | None: ...  # None: unknown
    def active_replays(self, namespace: str, target: str | None = None) -> list[Mapping[str, Any]]: ...  # on target
    def finished_replays(self, namespace: str) -> set[str] | None: ...  # names; None: unknown
    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None: ...
    def snapshot_exists(self, name: str) -> bool | None: ...  # None: the store is unreachable
    def snapshot_readable(self, namespace: str, name: str) -> bool | None: ...  # by its replays; None: unknown
    def resource_exists(self, kind: str, namespace: str, name: str) -> bool | None: ...  # our kinds; None: unknown


# the cross-object rules of one kind: (object, lookup, limits, the stored object it updates) → findings
Check = Callable[[Mapping[str, Any], "Lookup", "Limits", Mapping[str, Any] | None], list["Finding"]]


def _must_exist(path: str, what: str, exists: bool | None, rule: str) -> list[Finding]:
    """An error when the object ``what`` names does not exist; a warning when there was no cluster to ask."""
    if exists is False:
        return [Finding(path, f"{what} does not exist", rule)]
    if exists is None:
        return [Finding(path, f"{what} not checked: no cluster", rule, warning=True)]
    return []


def target_key(spec: Mapping[str, Any]) -> str:
    target = spec.get("target") or {}
    ref = target.get("workloadRef")
    return f"{ref.get('kind', 'Deployment')}/{ref.get('name')}" if ref else str(target.get("url"))


def on_target(replays: list[Mapping[str, Any]], target: str | None) -> list[Mapping[str, Any]]:
    """The replays on ``target`` (a ``target_key``); None: all of them."""
    return replays if target is None else [r for r in replays if target_key(r.get("spec") or {}) == target]


def _changed(old: Mapping[str, Any] | None, obj: Mapping[str, Any], value: Callable[[Mapping[str, Any]], Any]) -> bool:
    """Whether ``obj`` is new, or ``value`` of its spec differs from the stored ``old``: existence checks
    run then only — the object a stored one names may go away later (a deleted target Deployment must not
    make every later update of the replay, or commit of its repository, be refused)."""
    return old is None or value(old.get("spec") or {}) != value(obj.get("spec") or {})


def _snapshot_exists(ns: str, snapshot: str, lookup: Lookup) -> list[Finding]:
    """A replay's snapshot: a Snapshot of its namespace, or a snapshot in the store."""
    found: list[Finding] = []
    declared = lookup.resource_exists("Snapshot", ns, snapshot)  # a Snapshot of this namespace, or a store name
    other_ns, _, cut_of = snapshot.partition(".")
    foreign = bool(not declared and cut_of and other_ns != ns
                   and lookup.resource_exists("Snapshot", other_ns, cut_of))
    if foreign:
        found.append(Finding("spec.snapshot", f"{snapshot!r} is the cut of Snapshot {other_ns}/{cut_of}: a replay "
                             "names Snapshots of its own namespace", "own-namespace"))
    exists = True if declared or foreign else lookup.snapshot_exists(snapshot)
    if exists and not declared and not foreign and lookup.snapshot_readable(ns, snapshot) is False:
        found.append(Finding("spec.snapshot", f"{snapshot!r} in the store is not namespace {ns}'s nor shared with "
                             f"it (replayops snapshot share {snapshot} --with {ns})", "snapshot-namespace"))
    if exists is False:
        found.append(Finding("spec.snapshot", f"{snapshot!r} is neither a Snapshot in namespace {ns} nor a "
                             "snapshot in the store", "snapshot-exists"))
    elif exists is None:
        found.append(Finding("spec.snapshot", f"{snapshot!r} is not a Snapshot in namespace {ns} and the store "
                             "is unreachable; existence not checked", "snapshot-exists", warning=True))
    return found


def check_replay(obj: Mapping[str, Any], lookup: Lookup, limits: Limits,
                 old: Mapping[str, Any] | None = None) -> list[Finding]:
    """Cross-object rules of a TrafficReplay (``old``: the stored object it updates)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns, name = meta.get("namespace", "default"), meta.get("name")
    found: list[Finding] = []
    ref = (spec.get("target") or {}).get("workloadRef")
    if ref and _changed(old, obj, target_key):
        kind = ref.get("kind", "Deployment")
        found += _must_exist("spec.target.workloadRef", f"{kind} {ns}/{ref['name']}",
                             lookup.workload_exists(ns, kind, ref["name"]), "target-exists")
    if _changed(old, obj, lambda s: str(s.get("snapshot"))):
        found += _snapshot_exists(ns, str(spec.get("snapshot")), lookup)
    load = spec.get("load") or {}
    if int(load.get("copies", 1)) > limits.max_copies:
        found.append(Finding("spec.load.copies", f"{load['copies']} copies exceed the limit of "
                             f"{limits.max_copies}", "load-limits"))
    for i, stage in enumerate(load.get("stages") or []):
        if float(stage.get("targetRPS", 0)) > limits.max_rps:
            found.append(Finding(f"spec.load.stages[{i}].targetRPS", f"{stage['targetRPS']} req/s exceeds "
                                 f"the limit of {limits.max_rps:g}", "load-limits"))
    key = target_key(spec)
    for other in lookup.active_replays(ns, key):
        other_name = (other.get("metadata") or {}).get("name")
        if other_name != name:
            found.append(Finding("spec.target", f"replay {ns}/{other_name} is already running against "
                                 f"{key}; one running replay per target", "one-replay-per-target"))
    return found


def check_snapshot(obj: Mapping[str, Any], lookup: Lookup, limits: Limits,
                   old: Mapping[str, Any] | None = None) -> list[Finding]:
    """Cross-object rules of a Snapshot: the policy it names exists (checked when it is named: a cut
    stays updatable, its finalizer removable, after the policy goes); its window is not reversed."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns = meta.get("namespace", "default")
    found: list[Finding] = []
    if spec.get("policy") and _changed(old, obj, lambda s: s.get("policy")):
        found += _must_exist("spec.policy", f"CapturePolicy {ns}/{spec['policy']}",
                             lookup.resource_exists("CapturePolicy", ns, str(spec["policy"])), "policy-exists")
    if spec.get("stream") and not str(spec["stream"]).startswith(f"{ns}."):
        found.append(Finding("spec.stream", f"{spec['stream']!r} is not a stream of namespace {ns} (streams are "
                             f"{ns}.<policy>.<pod>); a Snapshot cuts only its own namespace's traffic",
                             "own-namespace"))
    window, at = spec.get("window") or {}, {}
    for key in ("from", "to"):
        if window.get(key):
            try:
                at[key] = epoch(str(window[key]))
            except ValueError as exc:
                found.append(Finding(f"spec.window.{key}", str(exc), "window"))
    if len(at) == 2 and at["to"] <= at["from"]:
        found.append(Finding("spec.window.to", f"{window['to']} is not after from {window['from']}", "window"))
    return found


def _nested_repeat(parsed: Any, inside_repeat: bool = False) -> bool:
    """True when an unbounded repeat sits inside another repeat: (a+)+, (a*)*, (a|b+)*."""
    for op, arg in parsed:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _low, high, sub = arg
            unbounded = high == sre_parse.MAXREPEAT or high > 100
            children, inner = [sub], inside_repeat or unbounded
            if inside_repeat and unbounded:
                return True
        elif name == "SUBPATTERN":
            children, inner = [arg[-1]], inside_repeat
        elif name == "BRANCH":
            children, inner = list(arg[1]), inside_repeat
        elif name in ("ASSERT", "ASSERT_NOT"):
            children, inner = [arg[1]], inside_repeat
        else:
            continue
        if any(_nested_repeat(child, inner) for child in children):
            return True
    return False


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is unfit for DLP (does not compile, or backtracks catastrophically), or None."""
    try:
        re.compile(pattern)
        parsed = sre_parse.parse(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        return f"does not compile: {exc}"
    if _nested_repeat(list(parsed)):
        return "nested unbounded quantifiers (e.g. (a+)+) can backtrack catastrophically; bound them"
    return None


def capture_allowed(namespace: str, lookup: Lookup, limits: Limits) -> bool:
    if namespace in EXCLUDED_NAMESPACES:
        return False
    if limits.capture_namespaces is None and limits.capture_label is None:
        return True
    if limits.capture_namespaces is not None and namespace in limits.capture_namespaces:
        return True
    labels = lookup.namespace_labels(namespace) or {}
    return bool(limits.capture_label) and labels.get(limits.capture_label or "") == "true"


def check_policy(obj: Mapping[str, Any], lookup: Lookup, limits: Limits,
                 old: Mapping[str, Any] | None = None) -> list[Finding]:
    """Cross-object rules of a CapturePolicy."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns = meta.get("namespace", "default")
    found: list[Finding] = []
    for i, pattern in enumerate((spec.get("dlp") or {}).get("patterns") or []):
        if pattern.get("type") == "custom" and "regex" in pattern:
            problem = regex_problem(str(pattern["regex"]))
            if problem:
                found.append(Finding(f"spec.dlp.patterns[{i}].regex", problem, "dlp-regex"))
    inbound, outbound = spec.get("inbound") or {}, spec.get("outbound") or {}
    proxy_ports = {int(inbound.get("proxyPort", 15001)), HEALTH_PORT}
    if outbound.get("enabled") and int(outbound.get("proxyPort", 15002)) in proxy_ports:
        found.append(Finding("spec.outbound.proxyPort", "collides with the inbound proxy or health port",
                             "distinct-ports"))
    clash = sorted(proxy_ports & {int(p) for p in inbound.get("ports") or []})
    if clash:
        found.append(Finding("spec.inbound.ports", f"port {clash[0]} is the proxy's own", "distinct-ports"))
    selector = spec.get("selector") or {}
    if ns in EXCLUDED_NAMESPACES or any(selector_matches(selector, labels) for labels in OWN_POD_LABELS):
        found.append(Finding("spec.selector", "selects replayops' own pods; replayops never captures itself",
                             "not-self"))
    elif not capture_allowed(ns, lookup, limits):
        how = []
        if limits.capture_namespaces is not None:
            how.append("add it to the webhook's --capture-namespaces")
        if limits.capture_label:
            how.append(f"label it {limits.capture_label}=true")
        found.append(Finding("metadata.namespace", f"capture is not allowed in namespace {ns}: "
                             + " or ".join(how), "capture-allowed"))
    return found


@dataclass
class StaticLookup:
    """A ``Lookup`` over known facts: the objects of a git revision, or a snapshot list."""

    workloads: set[tuple[str, str, str]] | None  # (namespace, kind, name); None: unknown
    replays: dict[str, list[Mapping[str, Any]]]
    namespaces: dict[str, Mapping[str, str]]
    snapshots: set[str] | None = None  # None: no store to ask
    manifests: dict[str, Manifest] | None = None  # snapshot → its manifest (who may read it); None: unknown
    finished: dict[str, set[str]] | None = None  # namespace → names of finished replays; None: unknown
    resources: set[tuple[str, str, str]] | None = None  # (kind, namespace, name) of our objects; None: unknown

    @classmethod
    def offline(cls) -> StaticLookup:
        """Knowing nothing of a cluster or store: what ``replayops validate`` and the inspector check with."""
        return cls(workloads=None, replays={}, namespaces={}, snapshots=None)

    def workload_exists(self, namespace: str, kind: str, name: str) -> bool | None:
        return None if self.workloads is None else (namespace, kind, name) in self.workloads

    def active_replays(self, namespace: str, target: str | None = None) -> list[Mapping[str, Any]]:
        return on_target([r for r in self.replays.get(namespace, [])
                          if (r.get("status") or {}).get("phase", PENDING) in ACTIVE_PHASES], target)

    def finished_replays(self, namespace: str) -> set[str] | None:
        return None if self.finished is None else self.finished.get(namespace, set())

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self.namespaces.get(namespace)

    def snapshot_exists(self, name: str) -> bool | None:
        return None if self.snapshots is None else name in self.snapshots

    def snapshot_readable(self, namespace: str, name: str) -> bool | None:
        manifest = None if self.manifests is None else self.manifests.get(name)
        return None if manifest is None else manifest.readable_by(namespace)

    def resource_exists(self, kind: str, namespace: str, name: str) -> bool | None:
        return None if self.resources is None else (kind, namespace, name) in self.resources


class RevisionLookup:
    """A ``Lookup`` that also knows the objects of the revision being judged: a Snapshot may name a
    CapturePolicy, and a TrafficReplay a Snapshot, committed beside it."""

    def __init__(self, inner: Lookup, declared: set[tuple[str, str, str]]) -> None:
        self.inner, self.declared = inner, declared

    def workload_exists(self, namespace: str, kind: str, name: str) -> bool | None:
        return self.inner.workload_exists(namespace, kind, name)

    def active_replays(self, namespace: str, target: str | None = None) -> list[Mapping[str, Any]]:
        return self.inner.active_replays(namespace, target)

    def finished_replays(self, namespace: str) -> set[str] | None:
        return self.inner.finished_replays(namespace)

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self.inner.namespace_labels(namespace)

    def snapshot_exists(self, name: str) -> bool | None:
        return self.inner.snapshot_exists(name)

    def snapshot_readable(self, namespace: str, name: str) -> bool | None:
        return self.inner.snapshot_readable(namespace, name)

    def resource_exists(self, kind: str, namespace: str, name: str) -> bool | None:
        return True if (kind, namespace, name) in self.declared else self.inner.resource_exists(kind, namespace, name)


class MemoLookup:
    """Answers each question of a ``Lookup`` once (for one reconcile pass over many objects)."""

    def __init__(self, inner: Lookup) -> None:
        self.inner = inner
        self._memo: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _ask(self, name: str, *args: str) -> Any:
        key = (name, args)
        if key not in self._memo:
            self._memo[key] = getattr(self.inner, name)(*args)
        return self._memo[key]

    def workload_exists(self, namespace: str, kind: str, name: str) -> bool | None:
        return self._ask("workload_exists", namespace, kind, name)  # type: ignore[no-any-return]

    def active_replays(self, namespace: str, target: str | None = None) -> list[Mapping[str, Any]]:
        """Indexed by target once per namespace: judging a revision of many replays is not quadratic."""
        replays: list[Mapping[str, Any]] = self._ask("active_replays", namespace)
        if target is None:
            return replays
        key = ("active_replays_by_target", (namespace,))
        if key not in self._memo:
            index: dict[str, list[Mapping[str, Any]]] = {}
            for replay in replays:
                index.setdefault(target_key(replay.get("spec") or {}), []).append(replay)
            self._memo[key] = index
        return list(self._memo[key].get(target, []))

    def finished_replays(self, namespace: str) -> set[str] | None:
        return self._ask("finished_replays", namespace)  # type: ignore[no-any-return]

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._ask("namespace_labels", namespace)  # type: ignore[no-any-return]

    def snapshot_exists(self, name: str) -> bool | None:
        return self._ask("snapshot_exists", name)  # type: ignore[no-any-return]

    def snapshot_readable(self, namespace: str, name: str) -> bool | None:
        return self._ask("snapshot_readable", namespace, name)  # type: ignore[no-any-return]

    def resource_exists(self, kind: str, namespace: str, name: str) -> bool | None:
        return self._ask("resource_exists", kind, namespace, name)  # type: ignore[no-any-return]
