"""The real node: one per test session (the machine has room for one), namespaces per test.

``node`` starts a control plane on the node's bridge with containerd, kubelet, kube-scheduler,
kube-proxy and CoreDNS, the pause image and the replayops image built by ``replayops dev image``
imported; it is torn down (host restored) at the end of the session, on failure too.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller import schema
from controller.devcluster import DevCluster, ensure_binaries, image, install
from controller.devcluster.build import ensure_node_binaries
from controller.kube import connect
from tests.conftest import Cluster


@dataclass
class NodeCluster(Cluster):
    """A ``Cluster`` with a real node, and the replayops image's tag in it."""

    image: str = ""

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        args = ["-n", namespace, "logs", pod] + (["-c", container] if container else [])
        return self.kubectl(*args).stdout


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    pause, replayops = image.ensure_pause_image(), image.ensure_image()
    dev = DevCluster(tmp_path_factory.mktemp("node"), ensure_binaries(), node=ensure_node_binaries(),
                     pause_image=pause.tag, images=(pause.archive, replayops.archive))
    dev.start()
    try:
        kube = connect(dev.kubeconfig)
        kube.install_crds(schema.load_crds())
        yield NodeCluster(dev.kubeconfig, kube, dev, image=replayops.tag)
    finally:
        dev.stop()


@pytest.fixture
def node_ns(node: NodeCluster) -> Iterator[str]:
    name = f"n-{uuid.uuid4().hex[:10]}"
    node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    node.kube.wait_for("default ServiceAccount", lambda: node.kube.get("v1", "ServiceAccount", "default", name))
    yield name
    node.kube.delete("v1", "Namespace", name)


def python_job(name: str, namespace: str, image: str, code: str, *, backoff: int = 0) -> dict[str, Any]:
    """A Job running ``python3 -c CODE`` in the replayops image, as a non-root user (Pod Security restricted)."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": backoff, "template": {"spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                "command": ["python3", "-c", textwrap.dedent(code)],
                                "securityContext": {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}}]}}}}


def job_outcome(node: NodeCluster, namespace: str, name: str, timeout: float = 120) -> tuple[bool, str]:
    """Wait for a Job to finish; return whether it succeeded and its pod's log."""
    def finished() -> dict[str, Any] | None:
        job = node.kube.get("batch/v1", "Job", name, namespace) or {}
        done = {c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
        return job if done & {"Complete", "Failed"} else None

    job = node.kube.wait_for(f"job {name} finished", finished, timeout=timeout, interval=0.5)
    pods = [p for p in node.kube.list("v1", "Pod", namespace)
            if p["metadata"].get("labels", {}).get("job-name") == name]
    last = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])["metadata"]["name"]
    return bool(job["status"].get("succeeded")), node.logs(namespace, last)


def wait_available(node: NodeCluster, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    """Wait until a Deployment has all its replicas of its current template available."""
    return install.wait_available(node.kube, namespace, name, timeout)
