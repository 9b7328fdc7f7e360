"""Watch-backed caches: a paginated list, then a watch that keeps it current (relist on 410 Gone).

A ``Cache`` holds the objects of one kind (optionally label-selected, optionally in one namespace)
and answers ``get`` and ``list`` from memory. ``ready`` is False until the first list succeeded and
while the last list or watch failed (a revoked permission, an unreachable apiserver), so that a reader
can refuse to act on what it cannot see instead of acting on nothing; ``error`` says why.

``Caches`` is the set a ``Kube`` reads through (``Kube.caches``): a list that a ready cache covers is
answered by it, any other goes to the API server; what the client writes is recorded in the cache
right away (a newer resourceVersion only), so that the next pass never re-applies what the watch has
not delivered yet. Cached objects are shared: callers read them and never change them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from controller.kube.watch import Watcher

if TYPE_CHECKING:
    from controller.kube import Kube

Obj = dict[str, Any]
OnChange = Callable[[Obj | None, Obj | None], None]  # (old, new): None for an add's old, a delete's new
BOOKKEEPING = ("resourceVersion", "managedFields", "generation")
TOMBSTONE_SECONDS = 60.0


def parse_selector(selector: str | None) -> dict[str, str] | None:
    """An equality-based label selector (``a=b,c==d``) as a dict; None for one a cache cannot evaluate
    (``!=``, ``in``, ``exists``): such lists go to the API server."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (selector or "").split(","))):
        key, sep, value = part.replace("==", "=").partition("=")
        if not sep or "!" in key or any(c in part for c in " ()"):
            return None
        out[key.strip()] = value.strip()
    return out


def spec_changed(old: Obj | None, new: Obj | None) -> bool:
    """Whether a watch event changed more than status and bookkeeping (resourceVersion, managedFields):
    a burst of status writes — a rolling Deployment's, our own on a policy — wakes nobody."""
    if old is None or new is None:
        return True
    if (old["metadata"].get("generation"), old["metadata"].get("deletionTimestamp")) != (
            new["metadata"].get("generation"), new["metadata"].get("deletionTimestamp")):
        return True

    def shape(obj: Obj) -> Obj:
        meta = {k: v for k, v in obj["metadata"].items() if k not in BOOKKEEPING}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}

    return shape(old) != shape(new)


def metadata_only(obj: Obj) -> Obj:
    """An object cut to what the converger reads of a pod (its labels and annotations): a cluster's pods
    cost a cache little."""
    meta = obj["metadata"]
    keep = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences")
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": {k: meta[k] for k in keep if k in meta}}


def _later(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is strictly later than ``b`` (they are opaque; etcd's are integers: a
    version that is not says nothing)."""
    return a.isdigit() and b.isdigit() and int(a) > int(b)


def _newer(new: Obj, old: Obj | None) -> bool:
    """Whether ``new`` is the same or a later version than ``old``."""
    return old is None or not _later(old["metadata"].get("resourceVersion", ""),
                                     new["metadata"].get("resourceVersion", ""))


class Cache:
    """Objects of one kind by (namespace, name), kept current by a ``Watcher``; ``on_change(old, new)``
    for every event that changed one."""

    def __init__(self, kube: Kube, api_version: str, kind: str, *, namespace: str | None = None,
                 label_selector: str | None = None, on_change: OnChange | None = None,
                 transform: Callable[[Obj], Obj] | None = None) -> None:
        self.api_version, self.kind, self.namespace = api_version, kind, namespace
        self.selector = parse_selector(label_selector) or {}
        self.on_change, self.transform = on_change, transform
        self._items: dict[tuple[str, str], Obj] = {}
        self._listed = False
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._settled = threading.Event()  # listed or failed once: waiting longer tells nothing
        self.stop = threading.Event()
        # deleted lately (key -> resourceVersion, when): a write recorded after its delete is not brought back
        self._gone: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._listed_at = ""  # the resourceVersion of the last list
        self.watcher = Watcher(kube, api_version, kind, self._on_event, self.stop, namespace=namespace,
                               label_selector=label_selector, on_list=self._on_list, on_error=self._on_error,
                               keep=self._keep)
        self.error = "not listed yet"

    def start(self, wait: float = 0) -> Cache:
        self.watcher.start()
        if wait:
            self._synced.wait(wait)
        return self

    def wait(self, timeout: float) -> bool:
        """Until listed, or first failed; whether it is ready."""
        self._settled.wait(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return self._synced.is_set()

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str]:
        meta = obj["metadata"]
        return meta.get("namespace") or "", meta["name"]

    def _keep(self, obj: Obj) -> Obj:
        obj = {**obj, "apiVersion": self.api_version, "kind": self.kind}  # a list's items may name neither
        return self.transform(obj) if self.transform else obj

    def _on_list(self, items: list[Obj], version: str = "") -> None:
        """A (re)list, as of ``version``: it replaces what was known, but for what this client wrote since."""
        fresh = {self._key(o): o for o in items}
        with self._lock:
            old = self._items
            for key, obj in old.items():  # recorded after the list's snapshot: newer than it
                if _later(obj["metadata"].get("resourceVersion", ""), version):
                    fresh[key] = obj
            self._items, self._gone, self._listed_at = fresh, OrderedDict(), version
        self.error = ""
        self._synced.set()
        self._settled.set()
        relisted, self._listed = self._listed, True
        if self.on_change and relisted:  # what changed while the watch was away
            for key in old.keys() | fresh.keys():
                if old.get(key) != fresh.get(key):
                    self.on_change(old.get(key), fresh.get(key))

    def _on_event(self, kind: str, obj: Obj) -> None:
        obj = self._keep(obj)
        key, version = self._key(obj), obj["metadata"].get("resourceVersion", "")
        with self._lock:
            old = self._items.get(key)
            if kind == "DELETED":
                if old is not None and _later(old["metadata"].get("resourceVersion", ""), version):
                    old = obj = self._items[key]  # an object recreated (and recorded) since: it stays
                else:
                    self._items.pop(key, None)
                    self._tombstone(key, version)
            elif _newer(obj, old):
                self._items[key] = obj
                self._gone.pop(key, None)
            else:  # what this client wrote is already here
                old = obj = self._items[key]
        if self.error:  # a watch that delivers again has recovered
            self.error = ""
            self._synced.set()
        if self.on_change and old is not obj:
            self.on_change(old, None if kind == "DELETED" else obj)

    def _tombstone(self, key: tuple[str, str], version: str) -> None:
        """Remember a delete for a minute (a write's record follows it by milliseconds), never longer."""
        now = time.monotonic()
        self._gone[key] = (version, now)
        self._gone.move_to_end(key)
        while self._gone and next(iter(self._gone.values()))[1] < now - TOMBSTONE_SECONDS:
            self._gone.popitem(last=False)

    def _on_error(self, error: str) -> None:
        self.error = error
        self._synced.clear()
        self._settled.set()

    def covers(self, namespace: str | None, selector: Mapping[str, str]) -> bool:
        """Whether every object a list in ``namespace`` with ``selector`` finds is in this cache."""
        return (self.namespace is None or self.namespace == namespace) and all(
            selector.get(k) == v for k, v in self.selector.items())

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._items.get((namespace, name))

    def list(self, namespace: str | None = None, selector: Mapping[str, str] | None = None) -> list[Obj]:
        with self._lock:
            items = list(self._items.values())
        return [o for o in items if (namespace is None or o["metadata"].get("namespace") == namespace)
                and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in (selector or {}).items())]

    def record(self, obj: Obj) -> None:
        """What this client wrote (the server's answer), unless the watch already brought a later one."""
        if not self.covers(obj["metadata"].get("namespace"), (obj["metadata"].get("labels") or {})):
            return self.forget(obj["metadata"].get("namespace") or "", obj["metadata"]["name"])
        obj = self._keep(obj)
        key, version = self._key(obj), obj["metadata"].get("resourceVersion", "")
        with self._lock:
            deleted = self._gone.get(key, (self._listed_at if key not in self._items else "", 0.0))[0]
            if deleted and not _later(version, deleted):
                return None  # deleted after this write (the watch saw it, or a later list lacks it): no ghost
            if _newer(obj, self._items.get(key)):
                self._items[key] = obj
        return None

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._items.pop((namespace, name), None)


class Caches:
    """The caches a client reads through, by kind."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._by_kind: dict[tuple[str, str], list[Cache]] = {}

    def add(self, api_version: str, kind: str, **options: Any) -> Cache:
        cache = Cache(self.kube, api_version, kind, **options)
        self._by_kind.setdefault((api_version, kind), []).append(cache)
        return cache

    def __iter__(self) -> Any:
        return (c for caches in self._by_kind.values() for c in caches)

    def start(self, wait: float = 0) -> None:
        """Start every cache; wait (``wait`` seconds in all) until each listed or failed."""
        for cache in self:
            cache.start()
        deadline = time.monotonic() + wait
        for cache in self:
            cache.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        for cache in self:
            cache.stop.set()

    def serving(self, api_version: str, kind: str, namespace: str | None, label_selector: str | None
                ) -> tuple[Cache, dict[str, str]] | None:
        """A ready cache that holds everything the list would find, with the parsed selector; None: ask the
        API server."""
        selector = parse_selector(label_selector)
        if selector is None:
            return None
        for cache in self._by_kind.get((api_version, kind), ()):
            if cache.ready and cache.covers(namespace, selector):
                return cache, selector
        return None

    def record(self, obj: Mapping[str, Any]) -> None:
        for cache in self._by_kind.get((str(obj.get("apiVersion")), str(obj.get("kind"))), ()):
            cache.record(dict(obj))

    def forget(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        for cache in self._by_kind.get((api_version, kind), ()):
            cache.forget(namespace or "", name)
