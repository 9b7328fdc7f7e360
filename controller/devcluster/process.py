"""The processes of the local cluster: liveness, waiting for health with a reason, stopping by group.

``wait_until`` polls a check and fails with what it waited for, what it saw last and the tail of
the process's log, also as soon as the process exits, so a part that fails to start is named with
its log. ``stop_pid`` terminates, then kills, a process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.devcluster.errors import DevClusterError

STOP_TIMEOUT_S = 15.0


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Proc:
    """One started component: its name, pid and log file."""

    name: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def failure(proc: Proc, headline: str) -> str:
    """``headline`` with the last lines of ``proc``'s log (and a hint for a port clash)."""
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n".join(proc.log.read_text(errors="replace").splitlines()[-12:])
    hint = ""
    if "address already in use" in tail:
        hint = "\nport clash: another process took the port; run again (new ports are picked)"
    return f"{headline}\nlog {proc.log}:\n{tail}{hint}"


def wait_until(proc: Proc, what: str, check: Callable[[], str | None], timeout: float,
               interval: float = 0.25) -> None:
    """Poll ``check`` (None: ready; else what it saw) until ready; raise DevClusterError naming ``what``,
    the last observation and ``proc``'s log when ``timeout`` passes or the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not pid_alive(proc.pid):
            raise DevClusterError(failure(proc, f"{proc.name} exited while waiting for {what}"))
        seen = check()
        if seen is None:
            return
        last = seen
        time.sleep(interval)
    raise DevClusterError(failure(proc, f"timed out after {timeout:.0f}s waiting for {what} (last: {last})"))


def http_check(url: str, context: ssl.SSLContext | None = None) -> Callable[[], str | None]:
    """A ``wait_until`` check: ready when ``url`` answers 200."""
    def check() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except OSError as exc:
            return str(exc)
    return check


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group of ``pid`` (or the process, when it leads none), then SIGKILL it if it is
    still alive after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:  # not a group leader: signal the process itself
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        except PermissionError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
