"""Leader election with a ``coordination.k8s.io/v1`` Lease (optimistic concurrency on resourceVersion).

A candidate holds the lease while it renews it within ``lease_seconds``; a
standby takes over once the holder's renewTime is older than that, so failover
happens within one lease duration. ``release()`` hands the lease over at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from controller import logs
from controller.kube import Kube, KubeError

log = logs.get("leader")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaderElector:
    def __init__(self, kube: Kube, *, namespace: str, name: str, identity: str, lease_seconds: int = 15) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity, self.lease_seconds = identity, lease_seconds
        self.is_leader = False

    def _path(self, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    def _spec(self, acquire: dt.datetime | None, transitions: int) -> dict[str, Any]:
        now = _now()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": _fmt(acquire or now), "renewTime": _fmt(now), "leaseTransitions": transitions}

    def try_acquire(self) -> bool:
        """Acquire or renew the lease; True while this candidate leads."""
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None, 0)}
                self.kube.call("POST", self._path(), body=body, what="create lease")
                return self._became(True)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            renew = _parse(spec.get("renewTime"))
            duration = spec.get("leaseDurationSeconds") or self.lease_seconds
            expired = renew is None or (_now() - renew).total_seconds() > duration
            if holder and holder != self.identity and not expired:
                return self._became(False)
            transitions = int(spec.get("leaseTransitions") or 0)
            ours = holder == self.identity
            acquire = _parse(spec.get("acquireTime")) if ours else None
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": self._spec(acquire, transitions if ours else transitions + 1)}
            self.kube.call("PUT", self._path(self.name), body=body, what="update lease")
            return self._became(True)
        except KubeError as exc:
            if exc.status == 409:  # someone else won the race
                return self._became(False)
            raise

    def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if not self.is_leader:
            return
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {**lease["spec"], "holderIdentity": None, "renewTime": None}}
            with contextlib.suppress(KubeError):
                self.kube.call("PUT", self._path(self.name), body=body, what="release lease")
        self.is_leader = False

    def _became(self, leader: bool) -> bool:
        if leader != self.is_leader:
            log.info("leadership changed", extra=logs.fields(identity=self.identity, leader=leader))
        self.is_leader = leader
        return leader

