"""`replayops diff PATH`: what applying would change, against live state, via server-side dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cluster.test_gitops import replay_yaml
from tests.conftest import Cluster


def diff(cluster: Cluster, path: Path, ns: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "diff", str(path), "--namespace", ns,
                           "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, timeout=60)


def test_diff_shows_new_and_changed_objects_and_changes_nothing(cluster: Cluster, namespace: str,
                                                                tmp_path: Path) -> None:
    (tmp_path / "r1.yaml").write_text(replay_yaml("r1", copies=2))
    out = diff(cluster, tmp_path, namespace)
    assert out.returncode == 0, out.stderr
    assert "+kind: TrafficReplay" in out.stdout and "1 of 1 objects would change" in out.stderr
    assert cluster.kube.get("replayops.dev/v1alpha1", "TrafficReplay", "r1", namespace) is None
    cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path / "r1.yaml"), check=True)
    out = diff(cluster, tmp_path, namespace)
    assert "0 of 1 objects would change" in out.stderr and out.stdout == ""
    (tmp_path / "r1.yaml").write_text(replay_yaml("r1", copies=5))
    out = diff(cluster, tmp_path, namespace)
    assert "-    copies: 2" in out.stdout and "+    copies: 5" in out.stdout
