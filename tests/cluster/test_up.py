"""`replayops up` (what `make up` runs) ends with a kubeconfig listing our CRDs; `dev down` leaves nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML

from controller.devcluster import install, pid_alive, read_state
from tests.conftest import Cluster
from tests.helpers import wait_200

ROOT = Path(__file__).resolve().parents[2]


def test_up_then_down(cluster: Cluster, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"REPLAYOPS_HOME": str(tmp_path)}
    # --no-node: the machine holds one node, and the session's (tests/node) may be running
    up = subprocess.run([sys.executable, "-m", "controller.cli", "up", "--no-node"], env=env, capture_output=True,
                        text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = tmp_path / "dev" / "kubeconfig"
        assert f"kubeconfig: {kubeconfig}" in up.stdout
        crds = cluster.kubectl("get", "crd", f"--kubeconfig={kubeconfig}", check=True).stdout
        assert "trafficreplays.replayops.dev" in crds and "capturepolicies.replayops.dev" in crds
        state = read_state(tmp_path / "dev")
        assert state is not None
        pids = [int(p["pid"]) for p in state["procs"]]  # type: ignore[attr-defined]
        assert {p["name"] for p in state["procs"]} >= {  # type: ignore[attr-defined]
            "etcd", "kube-apiserver", "webhook", "controller", "inspector"}
        inspector = re.search(r"inspector: (http://127\.0\.0\.1:\d+)", up.stdout)
        assert inspector, up.stdout
        wait_200(f"{inspector.group(1)}/healthz")
        deadline = time.monotonic() + 60
        while "demo-server" not in cluster.kubectl("get", "cp", "-A", f"--kubeconfig={kubeconfig}").stdout:
            assert time.monotonic() < deadline, "the controller never applied examples/gitops"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{inspector.group(1)}/policies", timeout=10) as page:
            assert "demo-server" in page.read().decode(), "the inspector shows what the controller applied"
    finally:
        down = subprocess.run([sys.executable, "-m", "controller.cli", "dev", "down"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert [p for p in pids if pid_alive(p)] == []


def test_dev_up_when_a_part_fails_to_start_names_it_with_its_log_and_leaves_nothing_running(
        cluster: Cluster, tmp_path: Path) -> None:
    from controller.devcluster.build import ensure_binaries

    real = ensure_binaries()  # the cached build
    assets = tmp_path / "bin"  # what a user's KUBEBUILDER_ASSETS could hold: a broken kube-apiserver
    assets.mkdir()
    (assets / "etcd").symlink_to(real.etcd)
    (assets / "kube-controller-manager").symlink_to(real.kube_controller_manager)
    broken = assets / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'E1202 run.go:72] error: unknown flag: --from-a-newer-release' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {
        "REPLAYOPS_HOME": str(tmp_path / "home"), "KUBEBUILDER_ASSETS": str(assets)}
    up = subprocess.run([sys.executable, "-m", "controller.cli", "dev", "up", "--no-node"], env=env,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "kube-apiserver exited while waiting for" in up.stderr, up.stderr
    log = re.search(r"log (\S+kube-apiserver\S*):", up.stderr)
    assert log and Path(log.group(1)).is_file(), up.stderr
    assert "unknown flag: --from-a-newer-release" in up.stderr, "the tail of its log is shown"
    assert "Traceback" not in up.stderr
    etcd = subprocess.run(["pgrep", "-f", f"etcd.*{tmp_path}"], capture_output=True, text=True)
    assert etcd.stdout.strip() == "", "the parts already started were stopped"


def test_a_new_cluster_gets_the_demo_replay_committed_again_instead_of_one_cut_from_an_empty_store(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """``make down`` keeps the repository, with the demo's Snapshot and replay committed for the old
    cluster; the next ``make up`` (no such Snapshot in the new cluster) removes them in one commit, so the
    controller never cuts the Snapshot before the demo's pairs are stored. A running cluster keeps them."""
    from controller.api import API_VERSION
    from tests.gitrepo import Repo

    repo = Repo(tmp_path / "gitops-repo")
    repo.commit("seed and an earlier make up", {"README.md": "x\n", **{
        rel: (ROOT / "examples" / "demo" / "replay" / src).read_text()
        for rel, src in zip(install.DEMO_REPLAY_FILES, ("snapshot.yaml", "smoke.yaml"), strict=True)}})
    kept = repo.git("rev-parse", "HEAD")
    snapshot = YAML(typ="safe").load((ROOT / "examples" / "demo" / "replay" / "snapshot.yaml").read_text())
    snapshot["metadata"]["namespace"] = namespace
    cluster.kube.apply(snapshot)  # the cluster this repository was committed for: still running
    assert install.forget_demo_replay(cluster.kube, repo.path, namespace) is False
    assert repo.git("rev-parse", "HEAD") == kept
    cluster.kube.delete(API_VERSION, "Snapshot", "demo-baseline", namespace)  # a new cluster
    cluster.kube.wait_for("the Snapshot gone", lambda: cluster.kube.get(
        API_VERSION, "Snapshot", "demo-baseline", namespace) is None, timeout=30)
    assert install.forget_demo_replay(cluster.kube, repo.path, namespace) is True
    assert repo.git("rev-list", "--count", f"{kept}..HEAD") == "1"
    assert repo.git("ls-files").split() == ["README.md"]
    assert install.forget_demo_replay(cluster.kube, repo.path, namespace) is False, "nothing left to remove"


def test_a_new_cluster_without_our_crds_yet_forgets_the_demo_replay(tmp_path: Path) -> None:
    """``make down`` then ``make up``: the repository kept the demo's Snapshot and replay, and the new
    cluster does not even serve the Snapshot kind when they are forgotten (the CRDs come later)."""
    from controller.devcluster import DevCluster, ensure_binaries
    from controller.kube import connect
    from tests.gitrepo import Repo

    repo = Repo(tmp_path / "repo")
    repo.commit("kept from the last cluster", {"README.md": "x", **{rel: "kind: Snapshot\n" for rel in
                                                                     install.DEMO_REPLAY_FILES}})
    (repo.path / install.DEMO_REPLAY_FILES[0]).write_text("kind: Snapshot  # a user's uncommitted edit\n")
    dev = DevCluster(tmp_path / "cp", ensure_binaries(), controller_manager=False)
    dev.start()
    try:
        assert install.forget_demo_replay(connect(dev.kubeconfig), repo.path) is True
    finally:
        dev.stop()
    assert repo.git("ls-files").split() == ["README.md"]
