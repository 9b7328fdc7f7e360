"""`replayops validate PATH`: offline, non-zero with file:line lines, as a PR pipeline runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from controller.store import FileStore, Manifest

ROOT = Path(__file__).resolve().parents[2]


def validate(*paths: Path, args: tuple[str, ...] = (), home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent", "REPLAYOPS_HOME": str(home or "/nonexistent")}
    return subprocess.run([sys.executable, "-m", "controller.cli", "validate", *map(str, paths), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


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


def test_several_paths_are_judged_each_as_a_revision(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "p.yaml").write_text((ROOT / "policies" / "checkout-capture.yaml").read_text())
    (bad / "p.yaml").write_text("apiVersion: replayops.dev/v1alpha1\nkind: CapturePolicy\nmetadata: {name: x}\n"
                                "spec:\n  selector: {matchLabels: {app: x}}\n  sampling: 2\n")
    out = validate(bad, good)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{bad}/p.yaml:6: CapturePolicy default/x: spec.sampling: 2 is greater")
    assert lines[1] == f"{good}: 1 objects valid in 1 files"
    assert validate(good, good).returncode == 0


SMOKE = (ROOT / "examples" / "demo" / "replay" / "smoke.yaml").read_text()


def test_a_readable_local_store_is_asked_for_snapshot_names(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(SMOKE)
    unchecked = validate(tmp_path)  # no store: a warning, not an error
    assert unchecked.returncode == 0, unchecked.stdout + unchecked.stderr
    assert "existence not checked (rule: snapshot-exists)" in unchecked.stderr
    home = tmp_path / "home"
    FileStore(home / "store").write_snapshot(Manifest(name="demo-baseline"), [])
    foreign = validate(tmp_path, home=home)  # $REPLAYOPS_HOME/store by default
    assert foreign.returncode == 1 and "(rule: snapshot-namespace)" in foreign.stdout, "made here, not demo's"
    FileStore(home / "store").share("demo-baseline", ["demo"])
    found = validate(tmp_path, home=home)
    assert found.returncode == 0 and "snapshot-exists" not in found.stderr, found.stdout + found.stderr
    (tmp_path / "r.yaml").write_text(SMOKE.replace("snapshot: demo-baseline", "snapshot: demo-gone"))
    missing = validate(tmp_path, args=("--store", str(home / "store")))
    assert missing.returncode == 1
    assert "spec.snapshot: 'demo-gone' is neither a Snapshot in namespace demo nor a snapshot in the store" \
        in missing.stdout
