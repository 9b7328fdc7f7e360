"""The controller's main loop: watches and pushes wake it; while leading, it reconciles and runs replays.

``Loop.run`` returns when ``stop`` is called (SIGTERM/SIGINT in the CLI). A pass fetches git
when a push asked for it or the poll interval elapsed, and only reads the cache otherwise, so a
burst of watch events costs no fetches. Watch events are coalesced: a pass starts once they have
been quiet for ``settle`` seconds (at most ``settle_max`` after the first), so a burst causes one pass,
not one each; a push is never held back. Without leadership nothing is written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from controller import logs
from controller.api import API_VERSION, JOB_MANAGER, KINDS, MANAGED_BY, WORKLOAD_API, WORKLOAD_KINDS
from controller.gitops.leader import LeaderElector, NotLeader
from controller.gitops.reconcile import Outcome, Reconciler
from controller.gitops.replayjobs import ReplayJobs
from controller.kube import Kube, KubeError
from controller.kube.backoff import Backoff
from controller.kube.cache import Caches, metadata_only, spec_changed

log = logs.get("controller")


class Loop:
    """One controller's loop over a reconciler (and, optionally, the replay Jobs), behind a leader lease."""

    def __init__(self, reconciler: Reconciler, *, interval: float, replays: ReplayJobs | None = None,
                 elector: LeaderElector | None = None, backoff: Backoff | None = None, settle: float = 0.05,
                 settle_max: float = 1.0, replaying: Callable[[], bool] | None = None) -> None:
        self.reconciler, self.replays, self.elector = reconciler, replays, elector
        self.replaying = replaying or (lambda: True)  # one replay runner for every source (its Lease)
        self.interval, self.settle, self.settle_max = interval, settle, settle_max
        self.passes = 0
        # the leader passes every interval (watches and pushes wake it sooner); a standby looks again
        # each retry period, so that it passes as soon as it leads
        self.standby_tick = min(interval, elector.timings.retry_period) if elector else interval
        # a pass that failed transiently is retried sooner than the next interval, never later
        self.backoff = backoff or Backoff(base=1.0, cap=min(60.0, interval))
        self._stop, self._wake, self._fetch_due = threading.Event(), threading.Event(), threading.Event()
        self._fetch_due.set()

    def wake(self, *_: object) -> None:
        """Run a pass soon (a watch saw a change)."""
        self._wake.set()

    def changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """A cache's watch event: a pass soon, unless only status or bookkeeping changed."""
        if spec_changed(old, new):
            self._wake.set()

    def workload_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """A workload's watch event: a pass soon when what the converger reads of it changed (its labels,
        annotations, selector, pod template), not for a scale (an autoscaler's) or a rollout's status."""
        if old is None or new is None or _workload_view(old) != _workload_view(new):
            self._wake.set()

    def _coalesce(self) -> None:
        """After a watch's wake: wait until events are quiet for ``settle`` (bounded by ``settle_max``)."""
        deadline = time.monotonic() + self.settle_max
        while not (self._stop.is_set() or self._fetch_due.is_set()):
            self._wake.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not self._wake.wait(min(self.settle, left)):
                return

    def push(self, _ref: str = "") -> None:
        """Fetch and run a pass soon (a push webhook arrived)."""
        self._fetch_due.set()
        self._wake.set()

    def stop(self, *_: object) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    def _leading(self) -> bool:
        return self.elector is None or self.elector.leading()

    def _term(self) -> int:
        return self.elector.term if self.elector else 0

    def _pass(self, fetch: bool) -> Outcome:
        out = self.reconciler.reconcile(fetch=fetch or self.reconciler.last_applied is None)
        if self.replays and self.replaying():
            try:
                self.replays.sync()
            except NotLeader as exc:
                log.info("replays stopped: leadership lost", extra=logs.fields(error=str(exc)))
            except KubeError as exc:
                log.error("replays not synced", extra=logs.fields(error=str(exc)))
                out.retry_for(exc)
        return out

    def _next_wait(self, out: Outcome | None, fetched: bool) -> float:
        """How long until the next pass: the interval (a standby: its tick), or the backoff after a
        transient failure (reported)."""
        if out is None:
            return self.standby_tick
        if not out.transient:
            self.backoff.reset()
            return self.interval
        delay = self.backoff.next(out.retry_after)
        if fetched:  # the retry fetches again
            self._fetch_due.set()
        self.reconciler.metrics.retries.inc()
        log.warning("pass failed; retrying", extra=logs.fields(
            error=out.error.splitlines()[0] if out.error else "", retry_in=round(delay, 2),
            failures=self.backoff.failures))
        return delay

    def run(self) -> None:
        if self.elector:
            self.elector.start()
        next_fetch, term = 0.0, -1
        while not self._stop.is_set():
            out, fetch = None, False
            leading = self._leading()
            if leading and self._term() != term:  # leading again (even while this loop slept): another may
                term = self._term()  # have applied a newer revision meanwhile — fetch it, never apply the cache
                self._fetch_due.set()
            if leading:
                fetch = self._fetch_due.is_set() or time.monotonic() >= next_fetch
                self._fetch_due.clear()
                self.passes += 1
                try:
                    out = self._pass(fetch)
                except Exception as exc:  # a bug must not end the loop: report it, try again next interval
                    log.exception("pass crashed")
                    out = Outcome(error=f"pass crashed: {exc!r}")
                if fetch:
                    next_fetch = time.monotonic() + self.interval
            delay = self._next_wait(out, fetch)
            if out is not None and out.transient:  # backing off: a watch event must not cut it short
                self._stop.wait(delay)
            elif self._wake.wait(timeout=delay):
                self._coalesce()
            self._wake.clear()
        if self.elector:
            self.elector.stop()


def _workload_view(obj: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    return meta.get("labels"), meta.get("annotations"), spec.get("selector"), spec.get("template")


def watch_caches(kube: Kube, loop: Loop, allowed: Iterable[str], *, replays: bool, replay_namespace: str,
                 wait: float = 30.0) -> Caches:
    """The watch-backed caches the loop reads through (``kube.caches``) and is woken by: every object of
    a replayops source, every CapturePolicy (whoever applied it), every workload, every pod's metadata;
    with replays, every replay and snapshot and our Jobs. A pass lists nothing a ready cache holds."""
    caches = Caches(kube)
    ours = f"{MANAGED_BY}=replayops"
    for ref in sorted(set(allowed) | {f"{API_VERSION}/{kind}" for kind in KINDS}):
        api, _, kind = ref.rpartition("/")
        everything = kind == "CapturePolicy" or (replays and kind in KINDS)
        caches.add(api, kind, label_selector=None if everything else ours, on_change=loop.changed)
    for kind in WORKLOAD_KINDS:
        caches.add(WORKLOAD_API, kind, on_change=loop.workload_changed)
    caches.add("v1", "Pod", transform=metadata_only)  # read each pass (stale pods); their churn wakes nobody
    if replays:  # a Job's status is what the replay's follows: every change of one wakes the loop
        caches.add("batch/v1", "Job", label_selector=f"{MANAGED_BY}={JOB_MANAGER}", namespace=replay_namespace,
                   on_change=lambda *_: loop.wake())
    caches.start(wait=wait)  # a cache not ready by then is read around (the API server answers) until it is
    kube.caches = caches
    return caches
