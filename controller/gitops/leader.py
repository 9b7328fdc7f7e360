"""Leader election with a ``coordination.k8s.io/v1`` Lease, on client-go's rules and timings.

A background thread tries every ``retry_period`` to acquire or renew the lease (optimistic concurrency
on resourceVersion). Expiry is judged as client-go judges it, never by comparing clocks: a candidate
notes *on its own monotonic clock* when it last saw the lease record change, and takes the lease once
the record has not changed for ``lease_duration``. A leader leads only while its last successful renewal
(timed from before the request was sent) is younger than ``renew_deadline`` (< ``lease_duration``):
``check()`` — called by ``Kube`` before every write — refuses once it is older, so a leader that was
paused, partitioned or slow stops writing before any other candidate can have taken over.
``release()`` hands the lease over at once. With ``eligible``, a candidate campaigns only while it says
so, and stops leading (letting the lease lapse) when it does not (the converger's lease is held only by a
leader of a source).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import logs
from controller.kube import Kube, KubeError

log = logs.get("leader")


class NotLeader(KubeError):
    """A write refused: this candidate does not hold a lease it renewed within the renew deadline."""


@dataclass(frozen=True)
class Timings:
    """client-go's LeaderElectionConfig: LeaseDuration, RenewDeadline, RetryPeriod (seconds)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(f"leader election needs retry period ({self.retry_period:g}s) < renew deadline "
                             f"({self.renew_deadline:g}s) < lease duration ({self.lease_duration:g}s)")


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, *, namespace: str, name: str, identity: str, timings: Timings | None = None,
                 clock: Callable[[], float] = time.monotonic, eligible: Callable[[], bool] | None = None) -> None:
        self.kube, self.namespace, self.name, self.eligible = kube, namespace, name, eligible
        self.on_lead: Callable[[], None] | None = None  # called each time this candidate becomes the leader
        self.identity, self.timings, self.clock = identity, timings or Timings(), clock
        self.is_leader = False
        self.term = 0  # counts the times this candidate became the leader
        self._renewed_at = float("-inf")  # our clock, before the last successful acquire or renew was sent
        self._observed: tuple[Any, ...] | None = None  # the lease record last seen ...
        self._observed_at = float("-inf")  # ... and when (our clock) it last changed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    def _spec(self, acquire: str | None, transitions: int) -> dict[str, Any]:
        now = _fmt(dt.datetime.now(dt.UTC))  # for people and tools reading the Lease; no decision uses it
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.timings.lease_duration)),
                "acquireTime": acquire or now, "renewTime": now, "leaseTransitions": transitions}

    def try_acquire_or_renew(self) -> bool:
        """One attempt to acquire or renew the lease; True when this candidate holds it now."""
        started = self.clock()
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None, 0)}
                self.kube.call("POST", self._path(), body=body, what="create lease")
                return self._renewed(started)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseTransitions"))
            if record != self._observed:
                self._observed, self._observed_at = record, started
            ours = holder == self.identity
            if holder and not ours and started < self._observed_at + self.timings.lease_duration:
                return self._became(False)  # another holds it and was seen renewing within the lease duration
            transitions = int(spec.get("leaseTransitions") or 0)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": self._spec(spec.get("acquireTime") if ours else None,
                                       transitions if ours else transitions + 1)}
            self.kube.call("PUT", self._path(self.name), body=body, what="update lease")
            return self._renewed(started)
        except KubeError as exc:
            if exc.status == 409:  # someone else won the race
                return self._became(False)
            raise

    def leading(self) -> bool:
        """Whether this candidate may write: it holds the lease, renewed within the renew deadline."""
        return self.is_leader and self.clock() - self._renewed_at < self.timings.renew_deadline

    def check(self) -> float:
        """The write fence: raise ``NotLeader`` unless ``leading()``; else the seconds left before the renew
        deadline, which bound the write (``Kube`` times it out by then)."""
        left = self.timings.renew_deadline - (self.clock() - self._renewed_at)
        if self.is_leader and left > 0:
            return left
        raise NotLeader(f"not the leader ({self.identity}): the lease {self.namespace}/{self.name} was not "
                        f"renewed within {self.timings.renew_deadline:g}s", status=0, reason="NotLeader")

    def start(self) -> None:
        """Acquire and renew in the background, every retry period, until ``stop()``."""
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.eligible is None or self.eligible():
                    self.try_acquire_or_renew()
                elif self.is_leader:  # no more writes, and no release: the lease lapses, so that a write still
                    self._became(False)  # in flight (it gives up by the renew deadline) lands before another leads
            except KubeError as exc:
                log.warning("lease not renewed", extra=logs.fields(identity=self.identity, error=str(exc)))
            except Exception:  # an odd answer must not end the elector: this replica would never lead again
                log.exception("lease not renewed", extra=logs.fields(identity=self.identity))
            if self.is_leader and not self.leading():
                log.error("leadership lost: the lease was not renewed within the renew deadline",
                          extra=logs.fields(identity=self.identity, renew_deadline=self.timings.renew_deadline))
                self._became(False)
            self._stop.wait(self.timings.retry_period)

    def stop(self) -> None:
        """Stop renewing, then release the lease."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.timings.renew_deadline)
        self.release()

    def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False  # first: no write from here on
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {**lease["spec"], "holderIdentity": None, "renewTime": None}}
            with contextlib.suppress(KubeError):
                self.kube.call("PUT", self._path(self.name), body=body, what="release lease")

    def _renewed(self, started: float) -> bool:
        self._renewed_at = started
        return self._became(True)

    def _became(self, leader: bool) -> bool:
        if leader != self.is_leader:
            log.info("leadership changed", extra=logs.fields(identity=self.identity, lease=self.name, leader=leader))
            self.term += leader
        was, self.is_leader = self.is_leader, leader
        if leader and not was and self.on_lead:
            self.on_lead()
        return leader
