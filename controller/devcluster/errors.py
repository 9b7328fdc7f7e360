"""The errors of the local cluster: what failed and the next step."""

import os
import shutil


class DevClusterError(RuntimeError):
    """A control-plane build, start or wait failed; the message says what and what to do."""


class MissingTools(DevClusterError):
    """A tool the build or the node needs is not installed; the message is the ``apt-get install`` line."""


SYSTEM_DIRS = ("/usr/sbin", "/sbin")  # nft, iptables, runc live here; `su` without `-` leaves them off PATH


def require_tools(packages: dict[str, str]) -> None:
    """Raise MissingTools naming the Debian packages of the commands (command -> package) that are neither
    on PATH nor in the system directories; those are added to PATH when a command is found only there."""
    path = os.environ.get("PATH", "")
    extra = [d for d in SYSTEM_DIRS if d not in path.split(os.pathsep)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([p for p in (path, *extra) if p])
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if missing:
        raise MissingTools(f"missing {', '.join(missing)}; install with: apt-get install {' '.join(missing)}")
