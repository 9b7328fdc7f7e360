"""The errors of the local cluster: what failed and the next step."""

import shutil


class DevClusterError(RuntimeError):
    """A control-plane build, start or wait failed; the message says what and what to do."""


class MissingTools(DevClusterError):
    """A tool the build or the node needs is not installed; the message is the ``apt-get install`` line."""


def require_tools(packages: dict[str, str]) -> None:
    """Raise MissingTools naming the Debian packages of the commands (command -> package) not on PATH."""
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if missing:
        raise MissingTools(f"missing {', '.join(missing)}; install with: apt-get install {' '.join(missing)}")
