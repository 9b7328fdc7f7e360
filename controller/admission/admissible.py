"""Whether an injected pod would still be admitted: Pod Security levels and ResourceQuotas, as pure functions.

The webhook runs before the apiserver's PodSecurity and ResourceQuota admission; a sidecar that either would
refuse must not make the pod fail to create. ``pod_security_level`` reads a namespace's enforced level,
``quota_overrun`` says which quota the injected pod would exceed (or which limit it would lack).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

ENFORCE = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")
# Pod Security levels that forbid the init container's NET_ADMIN/NET_RAW (baseline allows neither)
FORBID_NET_ADMIN = frozenset({"baseline", "restricted"})
# quota keys a container's resources count against: key -> (requests|limits, resource)
QUOTA_KEYS = {"cpu": ("requests", "cpu"), "memory": ("requests", "memory"),
              "requests.cpu": ("requests", "cpu"), "requests.memory": ("requests", "memory"),
              "limits.cpu": ("limits", "cpu"), "limits.memory": ("limits", "memory")}


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
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return [c.get("name", "?") for c in containers if _quantity(c, "limits", resource) is None]


def quota_overrun(quotas: Iterable[Mapping[str, Any]], before: Mapping[str, Any],
                  after: Mapping[str, Any], added: Iterable[str]) -> str | None:
    """Why the pod spec ``after`` (``before`` with the containers named ``added``) would be refused by one of
    ``quotas`` (ResourceQuota objects with status) when ``before`` would not be; None when it fits. Quotas with
    scopes are left out: which pods they count depends on more than resources."""
    ours = set(added)
    for quota in quotas:
        spec = quota.get("spec") or {}
        if spec.get("scopes") or spec.get("scopeSelector"):
            continue
        name = (quota.get("metadata") or {}).get("name", "?")
        hard, used = spec.get("hard") or {}, (quota.get("status") or {}).get("used") or {}
        for key, (kind, resource) in QUOTA_KEYS.items():
            if key not in hard:
                continue
            if kind == "limits":
                lacking = [c for c in _missing_limit(after, resource) if c in ours]
                if lacking:
                    return (f"ResourceQuota {name} tracks {key}, which every container must set, and "
                            f"{', '.join(lacking)} sets none")
            limit = Decimal(parse_quantity(hard[key]))
            in_use = Decimal(parse_quantity(used.get(key, "0")))
            need, had = effective(after, kind, resource), effective(before, kind, resource)
            if in_use + need > limit >= in_use + had:
                return (f"ResourceQuota {name} has {key} {hard[key]} with {used.get(key, '0')} used: the pod "
                        f"needs {_show(had, resource)} alone and {_show(need, resource)} with the sidecar")
    return None


def _show(amount: Decimal, resource: str) -> str:
    """A quantity as a person reads it: CPU in millicores, memory in Mi."""
    return f"{amount * 1000:.0f}m" if resource == "cpu" else f"{amount / (1 << 20):.0f}Mi"
