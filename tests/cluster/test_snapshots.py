"""Declared Snapshots against the real apiserver: the cut's status, a recreated one cut anew, replays that
wait for theirs, and a Snapshot edited in git replaced rather than stalling the controller."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import snapshots
from controller.admission import register
from controller.api import API_VERSION
from controller.gitops.reconcile import Options, Reconciler
from controller.gitops.replayjobs import JobConfig, ReplayJobs, job_name, snapshot_job_name
from controller.gitops.source import GitSource
from controller.store import FileStore, rrpair
from tests.cluster.test_replay_jobs import run_pod
from tests.conftest import Cluster
from tests.gitrepo import Repo


def pairs(n: int, at: float) -> list[dict[str, Any]]:
    return [rrpair.make(method="GET", url=f"http://svc/api/{i}", request_headers=[], request_body=None, status=200,
                        response_headers=[], response_body=b"{}", started=at + i, finished=at + i,
                        direction="inbound", service="pod") for i in range(n)]


def create(cluster: Cluster, ns: str, name: str = "morning", **spec: Any) -> dict[str, Any]:
    return cluster.kube.create({"apiVersion": API_VERSION, "kind": "Snapshot",
                                "metadata": {"name": name, "namespace": ns},
                                "spec": {"stream": f"{ns}.web.pod", "window": {"last": "1h"}, **spec}})


def status(cluster: Cluster, ns: str, name: str = "morning", kind: str = "Snapshot") -> dict[str, Any]:
    return (cluster.kube.get(API_VERSION, kind, name, ns) or {}).get("status") or {}


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    register.unregister(cluster.kube)  # no webhook from an earlier test refusing our objects
    name = f"sn-{uuid.uuid4().hex[:8]}"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kube.delete("v1", "Namespace", name)


def test_the_cut_is_ready_with_its_counts_and_a_recreated_snapshot_is_cut_anew(
        cluster: Cluster, ns: str, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    now = time.time()
    store.append(f"{ns}.web.pod", pairs(3, now - 60))
    create(cluster, ns)
    ok, message = snapshots.cut(cluster.kube, store, ns, "morning", now)
    assert ok, message
    got = status(cluster, ns)
    assert got["phase"] == "Ready" and got["pairs"] == 3 and got["byDirection"] == {"inbound": 3}
    assert got["storeName"] == f"{ns}.morning" and got["bytes"] > 0 and got["observedGeneration"] == 1
    assert got["conditions"][0]["reason"] == "SnapshotCut"

    store.append(f"{ns}.web.pod", pairs(2, now - 30))
    cluster.kube.delete(API_VERSION, "Snapshot", "morning", ns)
    create(cluster, ns)  # the same name, a new object: its own cut, not the old one's
    assert snapshots.cut(cluster.kube, store, ns, "morning", now)[0]
    assert status(cluster, ns)["pairs"] == 5
    assert store.manifest(f"{ns}.morning").count == 5


def test_a_cut_that_cannot_be_made_fails_with_the_reason(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    create(cluster, ns)
    ok, message = snapshots.cut(cluster.kube, FileStore(tmp_path / "not-a-dir"), ns, "morning", time.time())
    assert not ok
    got = status(cluster, ns)
    assert got["phase"] == "Failed" and got["conditions"][0]["reason"] == "SnapshotFailed"
    assert f"cutting {ns}.morning" in got["conditions"][0]["message"]


def test_a_replay_waits_for_its_snapshot_to_be_cut_by_the_snapshot_job(cluster: Cluster, ns: str,
                                                                        tmp_path: Path) -> None:
    jobs = ReplayJobs(cluster.kube, JobConfig(namespace=ns))
    FileStore(tmp_path / "store").append(f"{ns}.web.pod", pairs(3, time.time() - 60))
    snap = create(cluster, ns)
    replay = cluster.kube.create({"apiVersion": API_VERSION, "kind": "TrafficReplay",
                                  "metadata": {"name": "smoke", "namespace": ns},
                                  "spec": {"snapshot": "morning", "target": {"url": "http://127.0.0.1:9"}}})
    done = [line for line in jobs.sync() if f" {ns}/" in line]
    assert done == [f"created Job {snapshot_job_name(snap)} for Snapshot {ns}/morning"], "no replay Job yet"
    waiting = status(cluster, ns, "smoke", "TrafficReplay")
    assert waiting["phase"] == "Pending" and waiting["conditions"][0]["reason"] == "SnapshotNotReady"
    assert status(cluster, ns)["phase"] == "Pending"

    job = cluster.kube.get("batch/v1", "Job", snapshot_job_name(snap), ns) or {}
    ran = run_pod(cluster, job, tmp_path)  # the Job's pod: `replayops snapshot cut --resource`
    assert ran.returncode == 0, ran.stderr
    assert status(cluster, ns)["phase"] == "Ready"
    done = [line for line in jobs.sync() if f" {ns}/" in line]
    assert done == [f"created Job {job_name(replay)} for TrafficReplay {ns}/smoke"]

    cluster.kube.delete(API_VERSION, "Snapshot", "morning", ns)
    done = [line for line in jobs.sync() if f" {ns}/" in line]
    assert f"deleted Job {snapshot_job_name(snap)} of {ns}/morning" in done


SNAPSHOT = """apiVersion: replayops.dev/v1alpha1
kind: Snapshot
metadata: {{name: morning, namespace: {ns}}}
spec:
  stream: {ns}.web.pod
  window: {{last: {last}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: after, namespace: {ns}}}
data: {{revision: "{last}"}}
"""


def test_a_snapshot_edited_in_git_is_replaced_and_the_rest_of_the_revision_applies(
        cluster: Cluster, ns: str, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit("snapshot", {"snap.yaml": SNAPSHOT.format(ns=ns, last="10m")})
    reconciler = Reconciler(cluster.kube, GitSource(repo.url, cache=tmp_path / "cache"),
                            Options(name=ns, namespace=ns, status_namespace=ns))
    assert not reconciler.reconcile().error
    first = cluster.kube.get(API_VERSION, "Snapshot", "morning", ns) or {}
    repo.commit("a longer window", {"snap.yaml": SNAPSHOT.format(ns=ns, last="1h")})
    out = reconciler.reconcile()
    assert not out.error, out.error
    assert out.replaced == [f"Snapshot {ns}/morning"]
    second = cluster.kube.get(API_VERSION, "Snapshot", "morning", ns) or {}
    assert second["spec"]["window"] == {"last": "1h"} and second["metadata"]["uid"] != first["metadata"]["uid"]
    after = cluster.kube.get("v1", "ConfigMap", "after", ns) or {}
    assert after["data"] == {"revision": "1h"}, "what follows the Snapshot in the revision was applied too"
    assert not reconciler.reconcile().replaced, "an unchanged Snapshot is left alone"
