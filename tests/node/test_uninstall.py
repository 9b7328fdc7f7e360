"""Uninstall: ``kubectl delete -k`` of the install leaves nothing that blocks creating pods or deleting
namespaces (runs after the install's tests: it removes what they installed)."""

from __future__ import annotations

import json
from pathlib import Path

from controller.api import API_VERSION, SYSTEM_NAMESPACE
from tests.node.conftest import NodeCluster, python_job
from tests.node.test_install import kustomization


def test_kubectl_delete_k_leaves_no_webhook_no_finalizer_and_nothing_blocking(node: NodeCluster,
                                                                              tmp_path: Path) -> None:
    install = kustomization(tmp_path, node.image)
    node.kubectl("apply", "--server-side", "-k", str(install), check=True)  # installed (again, idempotent)
    ns = "after-uninstall"
    node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    node.kube.wait_for("default ServiceAccount", lambda: node.kube.get("v1", "ServiceAccount", "default", ns))
    node.kubectl("apply", "-f", "-", check=True, input=json.dumps({
        "apiVersion": API_VERSION, "kind": "CapturePolicy", "metadata": {"name": "left", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "x"}}}}))

    out = node.kubectl("delete", "-k", str(install), "--wait=true", "--timeout=180s")
    assert out.returncode == 0, out.stderr
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert node.kube.get("admissionregistration.k8s.io/v1", kind, "replayops-webhook") is None
    assert not [c for c in node.kube.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")
                if c["spec"]["group"] == "replayops.dev"], "the CRDs (and their objects) are gone"
    node.kube.wait_for(f"namespace {SYSTEM_NAMESPACE} deleted (no finalizer holds it)",
                       lambda: node.kube.get("v1", "Namespace", SYSTEM_NAMESPACE) is None, timeout=180, interval=1)
    node.kube.apply(python_job("after", ns, node.image, "print('created and ran')"))
    node.kube.wait_for("a pod created and run with no webhook in the way", lambda: (
        (node.kube.get("batch/v1", "Job", "after", ns) or {}).get("status") or {}).get("succeeded"), timeout=120)
    node.kube.delete("v1", "Namespace", ns)
    node.kube.wait_for(f"namespace {ns} deleted", lambda: node.kube.get("v1", "Namespace", ns) is None,
                       timeout=180, interval=1)
