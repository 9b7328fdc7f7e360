"""The controller's main loop: watches and pushes wake it; while leading, it reconciles and runs replays.

``Loop.run`` returns when ``stop`` is called (SIGTERM/SIGINT in the CLI). A pass fetches git
when a push asked for it or the poll interval elapsed, and only reads the cache otherwise, so a
burst of watch events costs no fetches. Without leadership nothing is written.
"""

from __future__ import annotations

import threading
import time

from controller import logs
from controller.gitops.leader import LeaderElector
from controller.gitops.reconcile import Reconciler
from controller.gitops.replayjobs import ReplayJobs
from controller.kube import KubeError

log = logs.get("controller")


class Loop:
    """One controller's loop over a reconciler (and, optionally, the replay Jobs), behind a leader lease."""

    def __init__(self, reconciler: Reconciler, *, interval: float, replays: ReplayJobs | None = None,
                 elector: LeaderElector | None = None, lease_seconds: float = 15.0) -> None:
        self.reconciler, self.replays, self.elector = reconciler, replays, elector
        self.interval = interval
        self.tick = min(interval, lease_seconds / 3) if elector else interval
        self._stop, self._wake, self._fetch_due = threading.Event(), threading.Event(), threading.Event()
        self._fetch_due.set()

    def wake(self, *_: object) -> None:
        """Run a pass soon (a watch saw a change)."""
        self._wake.set()

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
        if self.elector is None:
            return True
        try:
            return self.elector.try_acquire()
        except KubeError as exc:
            log.error("leader election failed", extra=logs.fields(error=str(exc)))
            return False

    def _pass(self, fetch: bool) -> None:
        self.reconciler.reconcile(fetch=fetch or self.reconciler.last_applied is None)
        if self.replays:
            try:
                self.replays.sync()
            except KubeError as exc:
                log.error("replays not synced", extra=logs.fields(error=str(exc)))

    def run(self) -> None:
        next_fetch = 0.0
        while not self._stop.is_set():
            if self._leading():
                fetch = self._fetch_due.is_set() or time.monotonic() >= next_fetch
                self._fetch_due.clear()
                self._pass(fetch)
                if fetch:
                    next_fetch = time.monotonic() + self.interval
            self._wake.wait(timeout=self.tick)
            self._wake.clear()
        if self.elector:
            self.elector.release()
