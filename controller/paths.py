"""Where replayops keeps local state: ``$REPLAYOPS_HOME`` (default ``~/.replayops``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The root of all local state (snapshots, reports, the dev cluster)."""
    return Path(os.environ.get("REPLAYOPS_HOME") or Path.home() / ".replayops")


def dev_cluster_dir() -> Path:
    """Where ``replayops dev up`` keeps the detached local control plane."""
    return home() / "dev"


def source_dir(name: str) -> Path:
    """A top-level directory of the replayops tree (``crds``, ``manifests``): ``$REPLAYOPS_ROOT/name``,
    default the tree this package was installed from."""
    root = os.environ.get("REPLAYOPS_ROOT") or Path(__file__).resolve().parent.parent
    return Path(root) / name
