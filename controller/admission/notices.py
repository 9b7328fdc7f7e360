"""Events about pods the webhook injected differently or not at all, recorded off the admission path.

A rollout sends every replica through admission: ``Notices`` records one Event per owner and reason per
``quiet`` seconds, from a background thread, so an answer never waits on (or fails with) an Event write.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import logs
from controller.kube import Kube, KubeError

log = logs.get("webhook")
COMPONENT = "replayops-webhook"


def regarding(pod: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """What an Event about a pod being admitted is about: its controller (the ReplicaSet, Job, ...), else the
    pod when it has a name, else its namespace (a generated name does not exist yet)."""
    meta = pod.get("metadata") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict) and o.get("name")]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner:
        return {"apiVersion": owner.get("apiVersion", "v1"), "kind": owner.get("kind", "Pod"),
                "metadata": {"name": owner["name"], "namespace": namespace, "uid": owner.get("uid")}}
    if meta.get("name"):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": meta["name"], "namespace": namespace}}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "namespace": namespace}}


class Notices:
    """Throttled Warning Events written by one daemon thread."""

    def __init__(self, kube: Kube, *, quiet: float = 600.0, backlog: int = 256, remembered: int = 4096,
                 uid_wait: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.clock = clock
        self.quiet = quiet
        self.remembered = remembered
        self.uid_wait = uid_wait
        self._last: dict[tuple[str, str, str, str], float] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[dict[str, Any], str, str]] = queue.Queue(backlog)
        threading.Thread(target=self._drain, name="webhook-events", daemon=True).start()

    def __call__(self, pod: Mapping[str, Any], namespace: str, reason: str, message: str) -> None:
        about = regarding(pod, namespace)
        key = (namespace, about["kind"], about["metadata"]["name"], reason)
        now = self.clock()
        with self._lock:
            if now - self._last.get(key, -self.quiet) < self.quiet:
                return
            if len(self._last) >= self.remembered:  # forget owners quiet long enough to be told again anyway
                self._last = {k: t for k, t in self._last.items() if now - t < self.quiet}
            self._last[key] = now
        try:
            self._queue.put_nowait((about, reason, message))
        except queue.Full:
            log.warning("event dropped: backlog full", extra=logs.fields(reason=reason, namespace=namespace))

    def _drain(self) -> None:
        while True:
            about, reason, message = self._queue.get()
            try:
                if about["kind"] == "Pod":
                    about = self._with_uid(about)
                self.kube.event(about, reason=reason, message=message, type_="Warning", component=COMPONENT)
            except KubeError as err:
                log.warning("event not recorded", extra=logs.fields(reason=reason, error=str(err)))

    def _with_uid(self, pod: dict[str, Any]) -> dict[str, Any]:
        """A bare pod as an Event's subject with its uid (which admission runs before it has), so that
        ``kubectl describe pod`` shows the Event; waits up to ``uid_wait`` seconds for the pod to exist."""
        meta = pod["metadata"]
        deadline = time.monotonic() + self.uid_wait
        while True:
            try:
                live = self.kube.get("v1", "Pod", meta["name"], meta["namespace"])
            except KubeError:
                live = None
            if live is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        uid = ((live or {}).get("metadata") or {}).get("uid")
        return {**pod, "metadata": {**meta, "uid": uid}} if uid else pod
