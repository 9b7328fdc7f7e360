"""Long build steps with progress: the command's output in a log file, elapsed time every few seconds.

Every minutes-long step of the local cluster — the Go builds of Kubernetes, etcd and the node parts,
the image's debootstrap, build and export — runs through ``run_step``, so a first ``make up`` always
says which part is building, for how long so far, and where its log is.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from controller.devcluster.errors import DevClusterError, MissingTools

PROGRESS_EVERY_S = 15


def say(who: str, message: str) -> None:
    print(f"{who}: {message}", file=sys.stderr, flush=True)


def tail(log: Path, lines: int = 20) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_step(what: str, cmd: list[str], log: Path, *, timeout_s: float, cwd: Path | None = None,
             env: dict[str, str] | None = None, who: str = "replayops") -> float:
    """Run a long command with its output in ``log``, printing progress; return the seconds it took.
    Raise MissingTools when the command is not installed, DevClusterError (with the log's tail) when it
    fails or outlives ``timeout_s``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    say(who, f"{what} (log {log})")
    start = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=env)
        except FileNotFoundError as exc:
            raise MissingTools(f"{what}: {cmd[0]} not found") from exc
        while True:
            try:
                code = proc.wait(timeout=PROGRESS_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if elapsed > timeout_s:
                    proc.kill()
                    proc.wait()
                    raise DevClusterError(
                        f"{what} timed out after {elapsed:.0f} s; log {log}:\n{tail(log)}") from None
                say(who, f"{what}: {elapsed:.0f} s (log {log})")
            except BaseException:
                proc.kill()
                proc.wait()
                raise
    elapsed = time.monotonic() - start
    if code != 0:
        raise DevClusterError(f"{what} failed (exit {code}) after {elapsed:.0f} s; log {log}; last lines:\n"
                              f"{tail(log)}")
    say(who, f"{what}: done in {elapsed:.0f} s")
    return elapsed
