"""Whether an injected pod would still be admitted: Pod Security, ResourceQuotas and LimitRanges, as pure functions.

The webhook runs before the apiserver's PodSecurity, LimitRanger and ResourceQuota admission; a sidecar that
any of them would refuse must not make the pod fail to create. ``pod_security_level`` reads a namespace's
enforced level, ``quota_overrun`` says which quota the injected pod would exceed (or which limit it would
lack), ``limit_range_problem`` which LimitRange bound its sidecar breaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

ENFORCE = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")
UNKNOWN = "unknown"  # the level of a namespace whose labels cannot be read: assumed to forbid what restricted does
# Pod Security levels that forbid the init container's NET_ADMIN/NET_RAW (baseline allows neither)
FORBID_NET_ADMIN = frozenset({"baseline", "restricted", UNKNOWN})
# quota keys a container's resources count against: key -> (requests|limits, resource)
QUOTA_KEYS = {"cpu": ("requests", "cpu"), "memory": ("requests", "memory"),
              "requests.cpu": ("requests", "cpu"), "requests.memory": ("requests", "memory"),
              "limits.cpu": ("limits", "cpu"), "limits.memory": ("limits", "memory")}
POD_COUNT = frozenset({"pods", "count/pods"})  # quota keys counting pods


def pod_security_level(labels: Mapping[str, str] | None, default: str = "privileged") -> str:
    """The Pod Security level a namespace enforces (``default`` when unlabelled; an unknown value is
    treated as restricted, as the apiserver does)."""
    level = (labels or {}).get(ENFORCE, default)
    return level if level in LEVELS else "restricted"


def _quantity(container: Mapping[str, Any], kind: str, resource: str) -> Decimal | None:
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if value is None and kind == "requests":  # a limit with no request is also the request
        value = ((container.get("resources") or {}).get("limits") or {}).get(resource)
    return None if value is None else Decimal(parse_quantity(value))


def effective(spec: Mapping[str, Any], kind: str, resource: str) -> Decimal:
    """A pod's effective request or limit of ``resource``, as the scheduler and quota count it: the larger of
    its containers' sum plus its sidecars' (restartable init containers) and each init container's own plus
    the sidecars started before it."""
    sidecars, init_peak = Decimal(0), Decimal(0)
    for container in spec.get("initContainers") or []:
        amount = _quantity(container, kind, resource) or Decimal(0)
        if container.get("restartPolicy") == "Always":
            sidecars += amount
        else:
            init_peak = max(init_peak, sidecars + amount)
    main = sum((_quantity(c, kind, resource) or Decimal(0) for c in spec.get("containers") or []), Decimal(0))
    return max(init_peak, sidecars + main)


def _missing_limit(spec: Mapping[str, Any], resource: str) -> list[str]:
    return [c.get("name", "?") for c in _containers(spec) if _quantity(c, "limits", resource) is None]


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _best_effort(spec: Mapping[str, Any]) -> bool:
    """Whether a pod is of the BestEffort QoS class: no container requests or limits anything."""
    return not any((c.get("resources") or {}).get(kind) for c in _containers(spec) for kind in ("requests", "limits"))


def _cross_namespace_affinity(spec: Mapping[str, Any]) -> bool:
    affinity = spec.get("affinity") or {}
    terms = [t for kind in ("podAffinity", "podAntiAffinity") for when in (
        "requiredDuringSchedulingIgnoredDuringExecution", "preferredDuringSchedulingIgnoredDuringExecution")
        for t in (affinity.get(kind) or {}).get(when) or []]
    return any(t.get("namespaces") or "namespaceSelector" in t or (t.get("podAffinityTerm") or {}).get("namespaces")
               or "namespaceSelector" in (t.get("podAffinityTerm") or {}) for t in terms)


def _scope_holds(scope: str, operator: str, values: list[str], spec: Mapping[str, Any]) -> bool:
    """Whether a pod spec is in one quota scope (an unknown scope counts the pod: the safe side)."""
    if scope == "PriorityClass":
        name = spec.get("priorityClassName") or ""
        return {"In": name in values, "NotIn": name not in values, "Exists": bool(name),
                "DoesNotExist": not name}.get(operator, True)
    held = {"BestEffort": _best_effort(spec), "NotBestEffort": not _best_effort(spec),
            "Terminating": spec.get("activeDeadlineSeconds") is not None,
            "NotTerminating": spec.get("activeDeadlineSeconds") is None,
            "CrossNamespacePodAffinity": _cross_namespace_affinity(spec)}.get(scope, True)
    return held if operator in ("Exists", "In") else not held


def in_scope(quota_spec: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether a ResourceQuota with ``quota_spec`` counts a pod with ``spec`` (all its scopes hold)."""
    scopes: list[tuple[str, str, list[str]]] = [(name, "Exists", []) for name in quota_spec.get("scopes") or []]
    scopes += [(e.get("scopeName", ""), e.get("operator", "Exists"), list(e.get("values") or []))
               for e in (quota_spec.get("scopeSelector") or {}).get("matchExpressions") or []]
    return all(_scope_holds(name, op, values, spec) for name, op, values in scopes)


def _usage(spec: Mapping[str, Any], key: str) -> Decimal:
    if key in POD_COUNT:
        return Decimal(1)
    kind, resource = QUOTA_KEYS[key]
    return effective(spec, kind, resource)


def quota_overrun(quotas: Iterable[Mapping[str, Any]], before: Mapping[str, Any],
                  after: Mapping[str, Any], added: Iterable[str]) -> str | None:
    """Why the pod spec ``after`` (``before`` with the containers named ``added``) would be refused by one of
    ``quotas`` (ResourceQuota objects with status) when ``before`` would not be; None when it fits. A scoped
    quota counts the pod by its scopes, which the sidecar can change: its requests make a BestEffort pod
    NotBestEffort."""
    ours = set(added)
    for quota in quotas:
        spec = quota.get("spec") or {}
        if not in_scope(spec, after):
            continue
        counted = in_scope(spec, before)  # counted without the sidecar too: only the difference is ours
        name = (quota.get("metadata") or {}).get("name", "?")
        hard, used = spec.get("hard") or {}, (quota.get("status") or {}).get("used") or {}
        joins = "" if counted else f" (the sidecar's resources bring the pod into its scope {_scopes(spec)})"
        for key in hard:
            if key not in QUOTA_KEYS and key not in POD_COUNT:
                continue
            kind, resource = QUOTA_KEYS.get(key, ("", ""))
            if kind == "limits":
                lacking = [c for c in _missing_limit(after, resource) if c in ours or not counted]
                if lacking:
                    return (f"ResourceQuota {name} tracks {key}, which every container must set, and "
                            f"{', '.join(lacking)} sets none{joins}")
            limit = Decimal(parse_quantity(hard[key]))
            in_use = Decimal(parse_quantity(used.get(key, "0")))
            need, had = _usage(after, key), _usage(before, key) if counted else Decimal(0)
            if in_use + need > limit >= in_use + had:
                needs = (f"the pod needs {_show(had, resource)} alone and {_show(need, resource)} with the sidecar"
                         if counted else f"the pod needs {_show(need, resource)}")
                return f"ResourceQuota {name} has {key} {hard[key]} with {used.get(key, '0')} used: {needs}{joins}"
    return None


def _scopes(spec: Mapping[str, Any]) -> str:
    names = [*(spec.get("scopes") or []),
             *(e.get("scopeName", "?") for e in (spec.get("scopeSelector") or {}).get("matchExpressions") or [])]
    return ", ".join(names)


def _show(amount: Decimal, resource: str) -> str:
    """A quantity as a person reads it: CPU in millicores, memory in Mi, pods as a count."""
    if resource == "cpu":
        return f"{amount * 1000:.0f}m"
    return f"{amount / (1 << 20):.0f}Mi" if resource == "memory" else f"{amount:.0f} pod(s)"


def with_limit_defaults(limit_ranges: Iterable[Mapping[str, Any]], spec: Mapping[str, Any],
                        added: Iterable[str]) -> dict[str, Any]:
    """``spec`` with the containers named ``added`` given the Container defaults of ``limit_ranges`` for what
    they leave unset, as the apiserver's LimitRanger gives them to every container it sees."""
    ours = set(added)
    items = [i for lr in limit_ranges for i in (lr.get("spec") or {}).get("limits") or []
             if i.get("type") == "Container"]
    if not items:
        return dict(spec)

    def defaulted(container: Mapping[str, Any]) -> Mapping[str, Any]:
        if container.get("name") not in ours:
            return container
        resources = {k: dict(v) for k, v in (container.get("resources") or {}).items()}
        for item in items:
            for field, kind in (("defaultRequest", "requests"), ("default", "limits")):
                for resource, value in (item.get(field) or {}).items():
                    resources.setdefault(kind, {}).setdefault(resource, value)
        return {**container, "resources": resources}

    return {**spec, **{key: [defaulted(c) for c in spec.get(key) or []] for key in ("initContainers", "containers")
                       if key in spec}}


def _bounds(kind_of: str, name: str, subject: str, item: Mapping[str, Any],
            requests: Mapping[str, Decimal | None], limits: Mapping[str, Decimal | None]) -> str | None:
    """Which of a LimitRange item's min, max and maxLimitRequestRatio ``subject`` breaks (as LimitRanger
    judges it), in words."""
    where = f"LimitRange {name}: {subject}"
    for resource, value in (item.get("min") or {}).items():
        bound, request, limit = Decimal(parse_quantity(value)), requests.get(resource), limits.get(resource)
        if request is None or request < bound or (limit is not None and limit < bound):
            return f"{where} is below the minimum {resource} per {kind_of} of {value}"
    for resource, value in (item.get("max") or {}).items():
        bound, request, limit = Decimal(parse_quantity(value)), requests.get(resource), limits.get(resource)
        if limit is None:
            return f"{where} sets no {resource} limit, and the maximum per {kind_of} is {value}"
        if limit > bound or (request is not None and request > bound):
            return f"{where} is above the maximum {resource} per {kind_of} of {value}"
    for resource, value in (item.get("maxLimitRequestRatio") or {}).items():
        request, limit = requests.get(resource), limits.get(resource)
        if not request or not limit or limit / request > Decimal(parse_quantity(value)):
            return f"{where} has a {resource} limit to request ratio above {value} (or lacks one of them)"
    return None


def limit_range_problem(limit_ranges: Iterable[Mapping[str, Any]], before: Mapping[str, Any],
                        after: Mapping[str, Any], added: Iterable[str]) -> str | None:
    """Why LimitRanger would refuse the pod spec ``after`` (``before`` with the containers named ``added``)
    when ``before`` passes: an added container, or the pod's total, outside a
    Container or Pod item's bounds. None when it is admitted."""
    ours = set(added)
    for lr in limit_ranges:
        name = (lr.get("metadata") or {}).get("name", "?")
        for item in (lr.get("spec") or {}).get("limits") or []:
            if item.get("type") == "Container":
                for c in (c for c in _containers(after) if c.get("name") in ours):
                    why = _bounds("Container", name, f"container {c.get('name')}", item,
                                  {r: _quantity(c, "requests", r) for r in _bounded(item)},
                                  {r: _quantity(c, "limits", r) for r in _bounded(item)})
                    if why:
                        return why
            elif item.get("type") == "Pod":
                why = _pod_bounds(name, item, after)
                if why and not _pod_bounds(name, item, before):
                    return why
    return None


def _bounded(item: Mapping[str, Any]) -> set[str]:
    """The resources a LimitRange item bounds."""
    return {r for field in ("min", "max", "maxLimitRequestRatio") for r in item.get(field) or {}}


def _pod_bounds(name: str, item: Mapping[str, Any], spec: Mapping[str, Any]) -> str | None:
    totals = {kind: {r: None if _unset(spec, kind, r) else effective(spec, kind, r) for r in _bounded(item)}
              for kind in ("requests", "limits")}
    return _bounds("Pod", name, "the pod", item, totals["requests"], totals["limits"])


def _unset(spec: Mapping[str, Any], kind: str, resource: str) -> bool:
    """Whether some container sets no ``kind`` of ``resource`` (LimitRanger then finds none for the pod)."""
    return any(_quantity(c, kind, resource) is None for c in _containers(spec))
