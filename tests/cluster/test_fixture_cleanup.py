"""The session fixture leaves no process behind: after a failing session and after Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.devcluster import pid_alive

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("probe_session.py")


def _inner_pytest(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, REPLAYOPS_TEST_PIDFILE=str(tmp_path / "pids"),
               REPLAYOPS_PROBE_MODE=mode, REPLAYOPS_PROBE_READY=str(tmp_path / "ready"))
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--basetemp", str(tmp_path / "base"), str(PROBE)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a run started in the background by a shell inherits SIGINT ignored: as a user's ^C
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _pids(tmp_path: Path) -> list[int]:
    return [int(p) for p in (tmp_path / "pids").read_text().split()]


def test_failing_session_leaves_no_process(tmp_path: Path) -> None:
    inner = _inner_pytest(tmp_path, "fail")
    out, _ = inner.communicate(timeout=300)
    assert inner.returncode == 1, out
    pids = _pids(tmp_path)
    assert len(pids) == 3
    assert [p for p in pids if pid_alive(p)] == []


def test_interrupted_session_leaves_no_process(tmp_path: Path) -> None:
    inner = _inner_pytest(tmp_path, "wait")
    deadline = time.monotonic() + 240
    while not (tmp_path / "ready").exists():
        assert inner.poll() is None, inner.communicate()[0]
        assert time.monotonic() < deadline, "inner session never became ready"
        time.sleep(0.2)
    pids = _pids(tmp_path)
    assert all(pid_alive(p) for p in pids)
    inner.send_signal(signal.SIGINT)
    out, _ = inner.communicate(timeout=120)
    assert inner.returncode != 0, out
    assert [p for p in pids if pid_alive(p)] == []
