"""`replayops diff PATH`: what applying would change, against live state, via server-side dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cluster.test_gitops import POLICY, GitOps, replay_yaml
from tests.conftest import Cluster


def diff(cluster: Cluster, path: Path, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "diff", str(path), "--namespace", ns,
                           "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True, text=True,
                          timeout=60)


def test_diff_shows_new_and_changed_objects_and_changes_nothing(cluster: Cluster, namespace: str,
                                                                tmp_path: Path) -> None:
    (tmp_path / "r1.yaml").write_text(replay_yaml("r1", copies=2))
    out = diff(cluster, tmp_path, namespace)
    assert out.returncode == 0, out.stderr
    assert "+kind: TrafficReplay" in out.stdout and "1 of 1 objects would change" in out.stderr
    assert cluster.kube.get("replayops.dev/v1alpha1", "TrafficReplay", "r1", namespace) is None
    cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path / "r1.yaml"), check=True)
    out = diff(cluster, tmp_path, namespace)  # applied by kubectl: the controller would only add its labels
    assert "1 of 1 objects would change" in out.stderr
    assert sorted(_edits(out.stdout)) == ["+    app.kubernetes.io/managed-by: replayops",
                                          "+    replayops.dev/source: default", "+  labels:"], out.stdout
    (tmp_path / "r1.yaml").write_text(replay_yaml("r1", copies=5))
    out = diff(cluster, tmp_path, namespace)
    assert "-    copies: 2" in out.stdout and "+    copies: 5" in out.stdout


def test_a_repository_the_controller_applied_diffs_clean_and_a_change_stands_alone(cluster: Cluster, namespace: str,
                                                                                    tmp_path: Path) -> None:
    gitops = GitOps(cluster, namespace, tmp_path)
    gitops.repo.commit("both", {"replays/r1.yaml": replay_yaml("r1", copies=2),
                                "policies/checkout.yaml": POLICY.replace("{sampling}", "0.5")})
    gitops.reconcile()
    clean = diff(cluster, gitops.repo.path, namespace, "--name", namespace)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout == "" and "0 of 2 objects would change" in clean.stderr, clean.stdout
    gitops.repo.write("replays/r1.yaml", replay_yaml("r1", copies=5))
    changed = diff(cluster, gitops.repo.path, namespace, "--name", namespace)
    assert "1 of 2 objects would change" in changed.stderr, changed.stdout
    assert _edits(changed.stdout) == ["-    copies: 2", "+    copies: 5"], changed.stdout


def _edits(diff_text: str) -> list[str]:
    return [line for line in diff_text.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
