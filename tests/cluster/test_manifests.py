"""manifests/base builds with kustomize and every object it holds is accepted by the real apiserver."""

from __future__ import annotations

from ruamel.yaml import YAML

from controller.kube import KubeError
from tests.conftest import Cluster

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_kustomize_base_objects_pass_server_side_dry_run(cluster: Cluster) -> None:
    out = cluster.kubectl("kustomize", str(ROOT / "manifests" / "base"), check=True).stdout
    docs = [d for d in YAML(typ="safe").load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "Service", "ClusterRole",
            "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} <= kinds
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    cluster.kube.apply(namespace)
    errors = []
    for doc in docs:
        try:
            cluster.kube.apply(doc, dry_run=True)
        except KubeError as err:
            errors.append(str(err))
    assert errors == []
    hooks = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"][0]["webhooks"]
    pods = next(h for h in hooks if h["name"].startswith("pods."))
    assert pods["failurePolicy"] == "Ignore" and pods["sideEffects"] == "None"
    assert all(h["failurePolicy"] == "Fail" for h in hooks if h is not pods)
