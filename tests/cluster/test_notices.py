"""The webhook's Events against the real apiserver: one per owner and reason per quiet window, written in
order off the admission path, and the memory of who was told stays bounded."""

from __future__ import annotations

from typing import Any

from controller.admission.notices import Notices
from tests.conftest import Cluster


def replica_set(name: str) -> dict[str, Any]:
    """A pod as admission sees one of a ReplicaSet's: no name yet, its owner named."""
    return {"metadata": {"generateName": f"{name}-", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": f"uid-{name}", "controller": True}]}}


def test_one_event_per_owner_and_reason_per_quiet_window_with_bounded_memory(cluster: Cluster,
                                                                             namespace: str) -> None:
    now = [1000.0]
    notices = Notices(cluster.kube, quiet=600, remembered=3, clock=lambda: now[0])

    def told(sentinel: str) -> list[tuple[str, str, str]]:
        """The Events written so far, once the one queued last (``sentinel``'s) is: one thread writes them
        in order, so every earlier one is written by then."""
        notices(replica_set(sentinel), namespace, "Sentinel", "last")
        cluster.kube.wait_for(f"the Event about {sentinel}", lambda: any(
            e["involvedObject"]["name"] == sentinel for e in cluster.kube.list("v1", "Event", namespace)),
            timeout=30, interval=0.2)
        return sorted((e["involvedObject"]["name"], e["involvedObject"]["uid"], e["reason"])
                      for e in cluster.kube.list("v1", "Event", namespace) if e["reason"] != "Sentinel")

    for _ in range(5):  # a rollout: every replica through admission
        notices(replica_set("web-1"), namespace, "CaptureSkipped", "the sidecar would exceed quota q")
    notices(replica_set("web-1"), namespace, "CaptureDegraded", "restricted: reverse mode")
    notices(replica_set("api-1"), namespace, "CaptureSkipped", "the sidecar would exceed quota q")
    assert told("first") == [("api-1", "uid-api-1", "CaptureSkipped"), ("web-1", "uid-web-1", "CaptureDegraded"),
                             ("web-1", "uid-web-1", "CaptureSkipped")]
    now[0] += 599
    notices(replica_set("web-1"), namespace, "CaptureSkipped", "still within the window")
    assert len(told("second")) == 3
    now[0] += 2  # the window of the first ones has passed: told again, and the stale ones are forgotten
    notices(replica_set("web-1"), namespace, "CaptureSkipped", "again")
    assert told("third").count(("web-1", "uid-web-1", "CaptureSkipped")) == 2
    assert len(notices._last) <= notices.remembered  # the sentinels' keys and the new one, nothing stale
