"""``make up``'s steps in pods (``controller/devcluster/install.py``), on the session's node: the seeded
repository served by git daemon, replayops from the dev overlay pointed at it, the demo captured in the
namespace the controller created from git, a Snapshot and a TrafficReplay committed and run as Job pods —
and a later ``make up`` with another image replays again. (``replayops up`` itself starts a node of its own;
the machine has room for one, so its steps run here on the session's.)"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from controller.api import API_VERSION
from controller.devcluster import install, up
from controller.devcluster.cluster import recorded_service
from controller.devcluster.process import stop_pid
from controller.store import FileStore
from tests.node.conftest import NodeCluster


def test_make_ups_steps_end_with_the_demo_captured_and_its_replay_succeeded_and_rerun_for_a_new_build(
        node: NodeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAYOPS_HOME", str(tmp_path / "home"))
    workdir = tmp_path / "dev"
    workdir.mkdir()
    repo = install.seed_repo(install.repo_dir())
    assert repo == tmp_path / "home" / "gitops-repo", "outside the dev directory: make down keeps its commits"
    try:
        url = install.serve_git(workdir, repo)
        install.install(node.kube, node.kubeconfig, workdir, node.image, url)
        install.deploy_demo(node.kube, node.kubeconfig, workdir, node.image)
        store = FileStore(install.store_root(node.kube))
        install.commit_replay(node.kube, repo, store, "build-1")
        first = install.replay_verdict(node.kube, "build-1")
        assert first["phase"] == "Succeeded", first
        assert first["summary"]["requests"] >= 10 and first["summary"]["goalsMet"] is True
        snapshot = node.kube.get(API_VERSION, "Snapshot", "demo-baseline", install.DEMO_NAMESPACE) or {}
        assert snapshot["status"]["phase"] == "Ready" and snapshot["status"]["pairs"] >= 20
        inspector = up._start_inspector(node.kubeconfig, workdir, 0, store=store.root).split()[0]
        replays = urllib.request.urlopen(f"{inspector}/replays?namespace={install.DEMO_NAMESPACE}", timeout=30)
        assert f'href="/reports/{first["reportRef"]["id"]}"' in replays.read().decode(), "the replay links its report"
        report = urllib.request.urlopen(f"{inspector}/reports/{first['reportRef']['id']}", timeout=30)
        assert f"Replay {first['reportRef']['id']}:" in report.read().decode(), "the Job's report, as make up shows it"

        install.commit_replay(node.kube, repo, store, "build-2")  # a later make up, another image
        again = install.replay_verdict(node.kube, "build-2")
        replay = node.kube.get(API_VERSION, "TrafficReplay", "demo-smoke", install.DEMO_NAMESPACE) or {}
        assert replay["spec"]["buildTag"] == "build-2" and again["observedGeneration"] == 2
        assert again["phase"] == "Succeeded" and again["reportRef"]["id"] != first["reportRef"]["id"]
    finally:
        for service in ("git-daemon", "inspector"):
            pid = recorded_service(workdir, service)
            if pid is not None:
                stop_pid(pid)
