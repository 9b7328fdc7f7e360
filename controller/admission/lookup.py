"""What the admission rules need to know about the cluster, answered by the API with a short cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import logs
from controller.admission import rules
from controller.api import ACTIVE_PHASES, API_VERSION, PENDING, TERMINAL_PHASES
from controller.kube import Kube, KubeError
from controller.store import Manifest

log = logs.get("webhook")
WORKLOAD_API = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}


class TTLCache:
    """A tiny thread-safe cache of recent answers (keeps injection fast under load)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._data: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        value = compute()
        with self._lock:
            self._data[key] = (now, value)
        return value


class ClusterLookup:
    """``rules.Lookup`` and the webhook's policy getter, backed by the Kubernetes API."""

    def __init__(self, kube: Kube, *, snapshot: Callable[[str], Manifest | bool | None] = lambda _: None,
                 policy_ttl: float = 2.0, namespace_ttl: float = 2.0) -> None:
        self.kube = kube
        self._snapshot = snapshot  # a store snapshot's manifest; False: there is none; None: unknown
        self._policies = TTLCache(policy_ttl)
        self._namespaces = TTLCache(namespace_ttl)

    def workload_exists(self, namespace: str, kind: str, name: str) -> bool:
        api = WORKLOAD_API.get(kind)
        return bool(api) and self.kube.get(api, kind, name, namespace) is not None  # type: ignore[arg-type]

    def active_replays(self, namespace: str, target: str | None = None) -> list[Mapping[str, Any]]:
        items = self.kube.list(API_VERSION, "TrafficReplay", namespace)
        return rules.on_target([i for i in items if (i.get("status") or {}).get("phase", PENDING) in ACTIVE_PHASES],
                               target)

    def finished_replays(self, namespace: str) -> set[str]:
        return {i["metadata"]["name"] for i in self.kube.list(API_VERSION, "TrafficReplay", namespace)
                if (i.get("status") or {}).get("phase") in TERMINAL_PHASES}

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        def fetch() -> Mapping[str, str] | None:
            ns = self.kube.get("v1", "Namespace", namespace)
            return None if ns is None else (ns["metadata"].get("labels") or {})
        return self._namespaces.get(("labels", namespace), fetch)  # type: ignore[no-any-return]

    def quotas(self, namespace: str) -> list[Mapping[str, Any]]:
        """The namespace's ResourceQuotas with their usage, read fresh each time (a rollout's pods each change
        it); none when they cannot be read: injection goes on."""
        return self._list("ResourceQuota", namespace)

    def limit_ranges(self, namespace: str) -> list[Mapping[str, Any]]:
        """The namespace's LimitRanges (none when they cannot be read: injection goes on)."""
        return self._namespaces.get(("limitranges", namespace),  # type: ignore[no-any-return]
                                    lambda: self._list("LimitRange", namespace))

    def _list(self, kind: str, namespace: str) -> list[Mapping[str, Any]]:
        try:
            return list(self.kube.list("v1", kind, namespace))
        except KubeError as err:
            log.warning("objects not read", extra=logs.fields(kind=kind, namespace=namespace, error=str(err)))
            return []

    def snapshot_exists(self, name: str) -> bool | None:
        found = self._snapshot(name)
        return None if found is None else bool(found)

    def snapshot_readable(self, namespace: str, name: str) -> bool | None:
        found = self._snapshot(name)
        return found.readable_by(namespace) if isinstance(found, Manifest) else None

    def resource_exists(self, kind: str, namespace: str, name: str) -> bool | None:
        try:
            return self.kube.get(API_VERSION, kind, name, namespace) is not None
        except KubeError:
            return None

    def policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        def fetch() -> Mapping[str, Any] | None:
            try:
                return self.kube.get(API_VERSION, "CapturePolicy", name, namespace)
            except KubeError:
                return None
        return self._policies.get((namespace, name), fetch)  # type: ignore[no-any-return]
