"""Desired state: the YAML files of one revision, parsed, defaulted and validated as a whole.

Every ``*.yaml``/``*.yml`` document is parsed with ruamel.yaml (line numbers
kept). Our kinds are judged as the webhook would see them (defaulted), against
the CRD schemas and the cross-object rules (the same code the webhook runs),
but kept as written, so that applying them owns only the fields git names;
other kinds must be on the allow-list. ``build`` returns every object with
its source location, or raises ``InvalidRevision`` listing every problem as
``file:line: Kind ns/name: message`` — one bad file rejects the revision.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from controller import schema
from controller.admission import defaults, rules
from controller.api import APPLIED_HASH, MANAGED_BY, REVISION, SOURCE

DEFAULT_ALLOWED_KINDS = frozenset({"v1/Namespace", "v1/ConfigMap"})
# kinds known to be cluster-scoped without asking a cluster (offline validation); a controller asks discovery
CLUSTER_SCOPED = frozenset({
    "v1/Namespace", "v1/PersistentVolume", "v1/Node", "rbac.authorization.k8s.io/v1/ClusterRole",
    "rbac.authorization.k8s.io/v1/ClusterRoleBinding", "storage.k8s.io/v1/StorageClass",
    "scheduling.k8s.io/v1/PriorityClass", "networking.k8s.io/v1/IngressClass", "node.k8s.io/v1/RuntimeClass",
    "apiextensions.k8s.io/v1/CustomResourceDefinition",
    "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration",
    "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration"})


def known_scope(api_version: str, kind: str) -> bool:
    """Whether ``apiVersion/kind`` is cluster-scoped, as far as known without a cluster."""
    return f"{api_version}/{kind}" in CLUSTER_SCOPED
APPLY_ORDER = ("Namespace", "ConfigMap", "CapturePolicy", "Snapshot", "TrafficReplay")


def stamp(obj: Mapping[str, Any], source: str, revision: str | None) -> dict[str, Any]:
    """``obj`` as source ``source`` applies it: labelled as ours and that source's, annotated with the
    hash of what git says of it and the revision it comes from (none: leave that annotation out).

    The hash tells a change in git (apply it, with this revision) from drift in the cluster (git says
    the same; without self-heal only reported): a commit that changes one file of a thousand applies
    one object, and each keeps the revision that last changed it."""
    out = copy.deepcopy(dict(obj))
    meta = out.setdefault("metadata", {})
    meta.setdefault("labels", {}).update({MANAGED_BY: "replayops", SOURCE: source})
    notes = meta.setdefault("annotations", {})
    notes.pop(REVISION, None)
    notes.pop(APPLIED_HASH, None)
    digest = hashlib.sha256(json.dumps(out, sort_keys=True, default=str).encode()).hexdigest()[:16]
    notes[APPLIED_HASH] = digest
    if revision is not None:
        notes[REVISION] = revision
    return out


@dataclass(frozen=True)
class Problem:
    """One reason a revision is rejected (or, with ``warning``, a caveat)."""

    file: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:  # line 0: about the path as a whole
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class InvalidRevision(ValueError):
    """The revision holds at least one invalid document; nothing of it may be applied."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class Item:
    """One desired object and where it came from."""

    obj: dict[str, Any]
    file: str
    line: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        meta = self.obj["metadata"]
        return (self.obj["apiVersion"], self.obj["kind"], meta.get("namespace", ""), meta["name"])

    def __str__(self) -> str:
        meta = self.obj["metadata"]
        where = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
        return f"{self.obj['kind']} {where}"


@dataclass
class Desired:
    items: list[Item]
    warnings: list[Problem] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.obj["kind"] == kind]


def _line_of(node: Any, path: str) -> int | None:
    """The 1-based line of ``path`` (``spec.load.stages[0].targetRPS``) in a ruamel node, or its
    deepest existing ancestor."""
    parts: list[str | int] = []
    for piece in path.replace("]", "").split("."):
        name, *indexes = piece.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indexes if i.isdigit())
    line = None
    for part in parts:
        lc = getattr(node, "lc", None)
        try:
            if lc is not None:
                line = (lc.key(part)[0] if isinstance(part, str) else lc.item(part)[0]) + 1
            node = node[part]
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    return line


def _plain(node: Any) -> Any:
    return json.loads(json.dumps(node, default=str))


@functools.lru_cache(maxsize=8192)
def _load(data: bytes) -> tuple[list[Any], Problem | None]:
    """The documents of one file's bytes, or the problem (line; the file's name filled in by the caller):
    parsed once per content, so a commit that changes one file of a thousand parses one. The nodes are
    shared: read, never changed."""
    try:
        return list(YAML(typ="rt").load_all(data.decode("utf-8"))), None
    except UnicodeDecodeError as exc:
        return [], Problem("", 1, f"not UTF-8 text: {exc}")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return [], Problem("", (mark.line + 1) if mark else 1, f"YAML error: {exc.problem or exc.context}")
    except YAMLError as exc:
        return [], Problem("", 1, f"YAML error: {exc}")


def parse(files: Mapping[str, bytes]) -> tuple[list[tuple[Any, str, int]], list[Problem]]:
    """All documents of all files, as (ruamel node, file, line), and the parse problems."""
    docs: list[tuple[Any, str, int]] = []
    problems: list[Problem] = []
    for name in sorted(files):
        loaded, problem = _load(bytes(files[name]))
        if problem is not None:
            problems.append(replace(problem, file=name))
            continue
        for doc in loaded:
            if doc is None:
                continue
            line = (doc.lc.line + 1) if hasattr(doc, "lc") else 1
            if not isinstance(doc, dict):
                problems.append(Problem(name, line, f"a document must be a mapping, got {type(doc).__name__}"))
                continue
            docs.append((doc, name, line))
    return docs, problems


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _name_problem(name: str, namespace: Any, kind: str) -> str | None:
    """What the apiserver would refuse about the object's names (DNS-1123), or None."""
    label = kind == "Namespace"
    if not (DNS_LABEL if label else DNS_SUBDOMAIN).fullmatch(name) or len(name) > (63 if label else 253):
        return (f"metadata.name {name!r} must be a DNS-1123 {'label' if label else 'subdomain'}: lowercase "
                "letters, digits, '-'" + ("" if label else " and '.'") + ", starting and ending alphanumeric")
    if namespace is not None and (not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace)
                                  or len(namespace) > 63):
        return f"metadata.namespace {namespace!r} must be a DNS-1123 label"
    return None


def _concurrent_replays(items: list[Item], lookup: rules.Lookup) -> list[Problem]:
    """Replays of one revision on one target: the webhook admits one running replay per target, so
    two that would both start would leave the revision half applied. An error when the cluster says
    which have finished; a warning offline, where it cannot."""
    groups: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        if item.obj["kind"] == "TrafficReplay":
            ns = item.obj["metadata"]["namespace"]
            groups.setdefault((ns, rules.target_key(item.obj.get("spec") or {})), []).append(item)
    found = []
    for (ns, target), group in groups.items():
        finished = lookup.finished_replays(ns) if len(group) > 1 else set()
        starting = [i for i in group if finished is None or i.obj["metadata"]["name"] not in finished]
        for item in starting[1:]:
            found.append(Problem(item.file, item.line, f"{item}: {starting[0]} ({starting[0].file}) also targets "
                                 f"{target}{' and neither has finished' if finished is not None else ''}; one "
                                 "running replay per target (rule: one-replay-per-target)", finished is None))
    return found


JUDGES: dict[str, tuple[Callable[[Mapping[str, Any]], dict[str, Any]], rules.Check]] = {
    "TrafficReplay": (defaults.default_replay, rules.check_replay),
    "CapturePolicy": (defaults.default_policy, rules.check_policy),
    "Snapshot": (defaults.schema_defaults, rules.check_snapshot),
}


def _declared(docs: list[tuple[Any, str, int]], namespace: str) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of our objects in the revision, which others of it may name."""
    out = set()
    for node, _file, _line in docs:
        obj = _plain(node)
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and schema.is_ours(obj):
            out.add((str(obj["kind"]), str(meta.get("namespace") or namespace), meta["name"]))
    return out


def build(files: Mapping[str, bytes], *, lookup: rules.Lookup, limits: rules.Limits | None = None,
          namespace: str = "default", allowed_kinds: Iterable[str] = DEFAULT_ALLOWED_KINDS,
          cluster_scoped: Callable[[str, str], bool] = known_scope,
          live: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None) -> Desired:
    """Parse, default and validate a revision; raise InvalidRevision with every problem found.

    Objects of a ``cluster_scoped(apiVersion, kind)`` kind are keyed and applied without a namespace;
    the others get ``namespace`` when they name none. ``live`` (by ``Item.key``) holds the applied objects
    the revision updates: what they name is checked to exist only when the revision changes it."""
    limits = limits or rules.Limits()
    allowed = set(allowed_kinds)
    docs, problems = parse(files)
    revision = rules.RevisionLookup(lookup, _declared(docs, namespace))
    items: list[Item] = []
    warnings: list[Problem] = []
    seen: dict[tuple[str, str, str, str], Item] = {}
    for node, file, line in docs:
        obj = _plain(node)
        kind, api = obj.get("kind"), obj.get("apiVersion")
        meta = obj.get("metadata")
        if not isinstance(kind, str) or not isinstance(api, str):
            problems.append(Problem(file, line, "apiVersion and kind are required"))
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            problems.append(Problem(file, _line_of(node, "metadata") or line, f"{kind}: metadata.name is required"))
            continue
        if not cluster_scoped(api, kind):
            meta.setdefault("namespace", namespace)
        elif "namespace" in meta:  # as kubectl does: a cluster-scoped object has none
            warnings.append(Problem(file, _line_of(node, "metadata.namespace") or line,
                                    f"{kind} {meta['name']}: is cluster-scoped; metadata.namespace "
                                    f"{meta.pop('namespace')!r} ignored"))
        bad_name = _name_problem(meta["name"], meta.get("namespace"), kind)
        if bad_name:
            problems.append(Problem(file, _line_of(node, "metadata") or line, f"{kind} {meta['name']}: {bad_name}"))
            continue
        label = f"{kind} {meta.get('namespace', '')}/{meta['name']}".replace(" /", " ")
        if schema.is_ours(obj):
            # judged as the webhook would see it (defaulted); applied as written, so git owns only its fields
            default, check = JUDGES[kind]
            judged = default(obj)
            errors = schema.validate(judged)
            for err in errors:
                problems.append(Problem(file, _line_of(node, err.path) or line, f"{label}: {err} (rule: {err.rule})"))
            if not errors:
                old = (live or {}).get((api, kind, meta.get("namespace", ""), meta["name"]))
                for finding in check(judged, revision, limits, old):
                    problem = Problem(file, _line_of(node, finding.path) or line, f"{label}: {finding}",
                                      finding.warning)
                    (warnings if finding.warning else problems).append(problem)
        elif f"{api}/{kind}" not in allowed:
            problems.append(Problem(file, line, f"{label}: kind {api}/{kind} is not allowed "
                                                f"(allowed: {', '.join(sorted(allowed))})"))
            continue
        item = Item(obj, file, line)
        if item.key in seen:
            first = seen[item.key]
            problems.append(Problem(file, line, f"{label}: also defined at {first.file}:{first.line}"))
            continue
        seen[item.key] = item
        items.append(item)
    for problem in _concurrent_replays(items, lookup):
        (warnings if problem.warning else problems).append(problem)
    if problems:
        raise InvalidRevision(problems)
    order = {k: i for i, k in enumerate(APPLY_ORDER)}
    items.sort(key=lambda i: (order.get(i.obj["kind"], len(order)), i.key))
    return Desired(items, warnings)


def read_dir(path: Path) -> dict[str, bytes]:
    """The YAML files under ``path`` (a working copy), keyed by their path relative to it."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.suffix in (".yaml", ".yml") and ".git" not in p.parts}
