"""The loop reads through watch-backed caches: paged lists, no-op passes that list nothing, coalesced wakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import controller.kube as kube_module
from controller.gitops import desired
from controller.gitops.loop import Loop, watch_caches
from controller.gitops.reconcile import Options, Reconciler
from controller.gitops.source import GitSource
from controller.kube import Kube, connect
from tests.cluster.test_gitops import POLICY, SETTINGS, GitOps, replay_yaml
from tests.conftest import Cluster
from tests.gitrepo import Repo


def test_a_big_list_is_paged_and_every_object_comes_back(cluster: Cluster, namespace: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(7):
        cluster.kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": f"c{i}", "namespace": namespace, "labels": {"paged": "yes"}}})
    monkeypatch.setattr(kube_module, "PAGE", 3)
    kube = connect(cluster.kubeconfig)
    names = [o["metadata"]["name"] for o in kube.list("v1", "ConfigMap", namespace, label_selector="paged=yes")]
    assert sorted(names) == [f"c{i}" for i in range(7)]
    assert kube.lists == 3, "7 objects, 3 a page: 3 list calls"


class Cached:
    """A source's reconciler and loop on a client of its own that reads through the loop's caches."""

    def __init__(self, cluster: Cluster, namespace: str, tmp: Path, repo: Repo) -> None:
        self.kube: Kube = connect(cluster.kubeconfig)
        options = Options(name=namespace, namespace=namespace, status_namespace=namespace, self_heal=True,
                          prune=True)
        self.reconciler = Reconciler(self.kube, GitSource(repo.url, cache=tmp / "cache"), options)
        self.loop = Loop(self.reconciler, interval=3600)
        self.caches = watch_caches(self.kube, self.loop, desired.DEFAULT_ALLOWED_KINDS, replays=False,
                                   replay_namespace=namespace)
        assert all(c.ready for c in self.caches), [c.error for c in self.caches]

    def counts(self) -> tuple[int, int]:
        return self.kube.lists, self.kube.writes


@pytest.fixture
def cached(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[GitOps, Cached]]:
    cluster.settle()
    plain = GitOps(cluster, namespace, tmp_path / "plain", self_heal=True, prune=True)
    for i in range(3):
        plain.deployment(f"web{i}", {"app": "checkout", "i": str(i)})
    plain.repo.commit("policy, replays", {"policy.yaml": POLICY.replace("{sampling}", "0.5"), "settings.yaml": SETTINGS,
                                          **{f"r{i}.yaml": replay_yaml(f"r{i}", f"http://t{i}:80") for i in range(5)}})
    with_caches = Cached(cluster, namespace, tmp_path / "cached", plain.repo)
    yield plain, with_caches
    with_caches.caches.stop()
    cluster.kube.delete("replayops.dev/v1alpha1", "CapturePolicy", "checkout", namespace)  # no later pass meets it


def test_a_no_op_pass_through_the_caches_lists_nothing_and_writes_nothing(cached: tuple[GitOps, Cached]) -> None:
    plain, ours = cached
    first = ours.reconciler.reconcile()
    mine = [a for a in first.annotated if f" {plain.ns}/" in a]  # other tests' namespaces may still be going
    assert not first.error and len(first.applied) == 7 and len(mine) == 3, first
    lists, writes = ours.counts()
    second = ours.reconciler.reconcile(fetch=False)  # right after: the watches may not have delivered yet
    assert not second.error and not second.applied and not second.annotated, second
    assert ours.counts() == (lists, writes), "a no-op pass: no list call and no write"
    uncached = plain.cluster.kube.lists
    assert not plain.reconcile().applied and plain.cluster.kube.lists - uncached >= 5, \
        "the same pass without caches lists every kind (the count above can fail)"


def test_a_burst_of_watch_events_causes_one_pass_and_status_writes_none(cached: tuple[GitOps, Cached]) -> None:
    plain, ours = cached
    loop = ours.loop
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    kube = plain.cluster.kube
    try:
        kube.wait_for("the first pass", lambda: ours.reconciler.last_applied is not None, timeout=30)

        def quiet(seconds: float = 1.5) -> int:  # passes settle: none for ``seconds``
            while True:
                seen = loop.passes
                time.sleep(seconds)
                if loop.passes == seen:
                    return seen

        def observed() -> bool:  # the Deployment controller has annotated and counted the rolled templates
            found = [kube.get("apps/v1", "Deployment", f"web{i}", plain.ns) or {} for i in range(3)]
            return all(d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"] for d in found)

        kube.wait_for("the Deployments observed", observed, timeout=60)
        start = quiet()
        for i in range(30):  # another tool writes a policy's status: only status changes
            kube.apply_status({"apiVersion": "replayops.dev/v1alpha1", "kind": "CapturePolicy",
                               "metadata": {"name": "checkout", "namespace": plain.ns},
                               "status": {"observedGeneration": i + 1}}, field_manager="a-status-writer")
        assert quiet() == start, "status writes wake no pass"
        for i in range(20):  # a burst of real changes (a label another tool sets on a source's ConfigMap)
            kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": "settings", "namespace": plain.ns, "labels": {"burst": str(i)}}}, field_manager="a-labeller")
        after = quiet()
        assert 1 <= after - start <= 3, f"20 changes in a burst caused {after - start} passes, not one each"
    finally:
        loop.stop()
        runner.join(10)
