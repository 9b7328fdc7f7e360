"""A watch-backed cache of one kind: a list, then a watch that keeps it current (relist on 410 Gone).

``get`` answers from memory. ``ready`` is False until the first list succeeded and while the last
list or watch failed (a revoked permission, an unreachable apiserver), so that a reader can refuse
to act on what it cannot see instead of acting on nothing; ``error`` says why.
"""

from __future__ import annotations

import threading
from typing import Any

from controller.kube import Kube
from controller.kube.watch import Watcher


class Cache:
    """Objects of one kind by (namespace, name), kept current by a ``Watcher``."""

    def __init__(self, kube: Kube, api_version: str, kind: str, *, namespace: str | None = None) -> None:
        self._items: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self.stop = threading.Event()
        self.watcher = Watcher(kube, api_version, kind, self._on_event, self.stop, namespace=namespace,
                               on_list=self._on_list, on_error=self._on_error)
        self.error = "not listed yet"

    def start(self, wait: float = 0) -> Cache:
        self.watcher.start()
        if wait:
            self._synced.wait(wait)
        return self

    @property
    def ready(self) -> bool:
        return self._synced.is_set()

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj["metadata"]
        return meta.get("namespace") or "", meta["name"]

    def _on_list(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._items = {self._key(o): o for o in items}
        self.error = ""
        self._synced.set()

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            if kind == "DELETED":
                self._items.pop(self._key(obj), None)
            else:
                self._items[self._key(obj)] = obj
        if self.error:  # a watch that delivers again has recovered
            self.error = ""
            self._synced.set()

    def _on_error(self, error: str) -> None:
        self.error = error
        self._synced.clear()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get((namespace, name))
