"""Watches that wake the reconcile loop: resourceVersion resumes, bookmarks, relist on 410 Gone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller import logs
from controller.kube import Kube
from controller.kube.backoff import Backoff

log = logs.get("watch")


class Watcher(threading.Thread):
    """Calls ``on_event(type, object)`` for every change of one kind (optionally label-selected, optionally
    in one namespace: what an account with a namespaced Role may watch)."""

    def __init__(self, kube: Kube, api_version: str, kind: str, on_event: Callable[[str, dict[str, Any]], None],
                 stop: threading.Event, *, label_selector: str | None = None, namespace: str | None = None,
                 timeout: int = 60, resource_version: str | None = None,
                 on_list: Callable[[list[dict[str, Any]], str], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__(name=f"watch-{kind}", daemon=True)
        self.kube, self.api_version, self.kind = kube, api_version, kind
        self.on_event, self.stop_event = on_event, stop
        self.label_selector, self.namespace, self.timeout = label_selector, namespace, timeout
        self.relists = 0
        self.resume_from = resource_version  # resume a watch from here instead of listing first
        self.on_list, self.on_error = on_list, on_error  # every (re)list's objects and version; every failure
        self.keep = keep  # what of each listed object to keep, page by page (a big list is never held whole)
        self.backoff = Backoff(base=1.0, cap=30.0)  # after failures in a row; reset by the next event

    def _list(self) -> str:
        """List (page by page); the resourceVersion the watch resumes from."""
        items: list[dict[str, Any]] = []
        rv = ""
        for page in self.kube.pages(self.api_version, self.kind, self.namespace, self.label_selector):
            items += map(self.keep, page["items"]) if self.keep else page["items"]
            rv = str((page.get("metadata") or {}).get("resourceVersion") or rv)
        self.relists += 1
        if self.on_list:
            self.on_list(items, rv)
        return rv

    def run(self) -> None:
        rv: str | None = self.resume_from
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    rv = self._list()
                res = self.kube.resource(self.api_version, self.kind)
                for event in self.kube.dynamic.watch(res, namespace=self.namespace, label_selector=self.label_selector,
                                                     resource_version=rv, timeout=self.timeout,
                                                     allow_watch_bookmarks=True):
                    if self.stop_event.is_set():
                        return
                    kind, raw = event["type"], event["raw_object"]
                    if kind == "ERROR":
                        if raw.get("code") == 410:
                            rv = None  # too old: relist
                            break
                        raise ApiException(status=raw.get("code"), reason=raw.get("message"))
                    rv = raw["metadata"]["resourceVersion"]
                    self.backoff.reset()
                    if kind != "BOOKMARK":
                        self.on_event(kind, raw)
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                if self.stop_event.is_set():  # stopped (the server may be going too): nothing to report
                    return
                log.warning("watch failed; retrying", extra=logs.fields(kind=self.kind, error=str(exc)))
                self._failed(f"HTTP {exc.status}: {exc.reason}")
                rv = None  # what happened meanwhile is unknown: relist
            except Exception as exc:  # network errors: keep watching
                if self.stop_event.is_set():
                    return
                if getattr(exc, "status", 0) == 410:  # a list's continue token expired: list again, now
                    rv = None
                    continue
                log.warning("watch interrupted; retrying", extra=logs.fields(kind=self.kind, error=str(exc)))
                self._failed(str(exc))
                rv = None

    def _failed(self, error: str) -> None:
        if self.on_error:
            self.on_error(f"{self.kind}: {error}")
        self.stop_event.wait(self.backoff.next())
