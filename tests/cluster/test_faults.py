"""The controller under faults: its API server and its git server stop and come back mid-run — on a
control plane of the test's own (the session's is shared with every other test)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import schema
from controller.devcluster import DevCluster, ensure_binaries, stop_pid
from controller.devcluster.cluster import free_port
from controller.kube import Kube, KubeError, connect
from tests.cluster.test_controller_process import wait
from tests.cluster.test_gitops import replay_yaml
from tests.gitrepo import Repo, git_daemon

API = "replayops.dev/v1alpha1"
NS = "faults"


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    dev = DevCluster(tmp_path_factory.mktemp("faults"), ensure_binaries(), controller_manager=False)
    dev.start()
    try:
        kube = connect(dev.kubeconfig)
        kube.install_crds(schema.load_crds())
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield dev
    finally:
        dev.stop()


def _copies(kube: Kube) -> int | None:
    try:
        tr = kube.get(API, "TrafficReplay", "r1", NS)
    except KubeError:
        return None
    return None if tr is None else int(tr["spec"]["load"]["copies"])


def _status(kube: Kube) -> dict[str, str]:
    try:
        cm = kube.get("v1", "ConfigMap", f"replayops-status-{NS}", NS)
    except KubeError:
        return {}
    return (cm or {}).get("data") or {}


def test_the_loop_outlives_an_api_server_and_a_git_server_that_stop_and_come_back(own: DevCluster,
                                                                                   tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = Repo(root / "team.git")
    repo.commit("one", {"r1.yaml": replay_yaml("r1", copies=1)})
    git_port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "controller.log"
    kube = connect(own.kubeconfig)
    git = contextlib.ExitStack()
    git.enter_context(git_daemon(root, port=git_port))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "controller", "run", "--repo",
             f"git://127.0.0.1:{git_port}/team.git", "--branch", "main", "--namespace", NS, "--status-namespace",
             NS, "--forwarder-namespace", NS, "--name", NS, "--kubeconfig", str(own.kubeconfig), "--cache",
             str(tmp_path / "cache"),
             "--interval", "1s", "--git-timeout", "5s", "--no-replays", "--metrics-port", str(metrics_port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait("the first revision applied", lambda: _copies(kube) == 1)
        own.stop_apiserver()
        two = repo.commit("two", {"r1.yaml": replay_yaml("r1", copies=2)})
        wait("passes failing while the API server is away",
             lambda: log_path.read_text().count("the API server did not answer") >= 2)
        assert proc.poll() is None, "the controller died with its API server away"
        own.start_apiserver()
        kube = connect(own.kubeconfig)
        wait("the revision committed meanwhile applied", lambda: _copies(kube) == 2, timeout=120)
        wait("status says so", lambda: _status(kube).get("lastAppliedRevision") == f"main@sha1:{two}"
             and _status(kube).get("ready") == "True")

        git.close()  # the git server goes away
        three = repo.commit("three", {"r1.yaml": replay_yaml("r1", copies=3)})
        wait("status reports the failing fetch", lambda: _status(kube).get("ready") == "False"
             and f"fetch git://127.0.0.1:{git_port}/team.git" in _status(kube).get("lastError", ""))
        assert _status(kube)["lastAppliedRevision"] == f"main@sha1:{two}", "the last good revision stays named"
        git.enter_context(git_daemon(root, port=git_port))
        wait("the revision committed meanwhile applied", lambda: _copies(kube) == 3, timeout=120)
        wait("status recovered", lambda: _status(kube).get("lastAppliedRevision") == f"main@sha1:{three}"
             and _status(kube).get("ready") == "True")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert proc.poll() is None
    finally:
        stop_pid(proc.pid, timeout=10)
        git.close()
        if not own.procs or all(p.name != "kube-apiserver" for p in own.procs):
            own.start_apiserver()
    retries = [line for line in metrics.splitlines() if line.startswith("replayops_reconcile_retries_total ")]
    assert retries and float(retries[0].split()[1]) >= 2, metrics
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "pass failed; retrying" in text
