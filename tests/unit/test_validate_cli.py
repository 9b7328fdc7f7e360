"""`replayops validate PATH`: offline, non-zero with file:line lines, as a PR pipeline runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"})


def test_examples_and_policies_are_valid() -> None:
    for path in (ROOT / "examples" / "gitops", ROOT / "examples" / "demo" / "replay", ROOT / "policies"):
        out = validate(path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "objects valid" in out.stdout


def test_invalid_files_fail_with_file_line_messages(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text((ROOT / "policies" / "checkout-capture.yaml").read_text())
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: replayops.dev/v1alpha1\nkind: CapturePolicy\nmetadata: {name: x}\nspec:\n"
        "  selector: {matchLabels: {app: x}}\n  sampling: 1.5\n")
    out = validate(tmp_path)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f"{tmp_path}/bad.yaml:6: CapturePolicy default/x: spec.sampling: 1.5 is greater than the maximum of 1 "
        "(rule: maximum)"]


def test_missing_path_is_exit_2(tmp_path: Path) -> None:
    out = validate(tmp_path / "nope")
    assert out.returncode == 2 and "no such file or directory" in out.stderr


def test_two_new_replays_on_one_target_are_warned_about_offline(tmp_path: Path) -> None:
    smoke = (ROOT / "examples" / "demo" / "replay" / "smoke.yaml").read_text()
    (tmp_path / "a.yaml").write_text(smoke)
    (tmp_path / "b.yaml").write_text(smoke.replace("name: demo-smoke", "name: demo-smoke-2"))
    out = validate(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (f"{tmp_path}/b.yaml:3: warning: TrafficReplay demo/demo-smoke-2: TrafficReplay demo/demo-smoke (a.yaml) "
            "also targets Deployment/demo-server; one running replay per target "
            "(rule: one-replay-per-target)") in out.stderr.splitlines()
