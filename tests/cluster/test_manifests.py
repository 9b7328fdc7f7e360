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


def test_the_webhooks_service_account_may_do_what_the_webhook_does_and_no_more(cluster: Cluster) -> None:
    out = cluster.kubectl("kustomize", str(ROOT / "manifests" / "base"), check=True).stdout
    rbac = [d for d in YAML(typ="safe").load_all(out) if d and (
        d["kind"] in ("Namespace", "ServiceAccount") or d["apiVersion"].startswith("rbac.authorization.k8s.io/"))]
    for doc in rbac:
        cluster.kube.apply(doc)
    who = "--as=system:serviceaccount:replayops-system:replayops-webhook"

    def can(*args: str) -> bool:
        answer = cluster.kubectl("auth", "can-i", who, *args).stdout.strip()
        assert answer in ("yes", "no"), answer
        return answer == "yes"

    ns = ("-n", "replayops-system")
    assert can("get", "secrets/replayops-webhook-tls", *ns) and can("create", "secrets", *ns)
    assert can("patch", "mutatingwebhookconfigurations/replayops-webhook")
    assert can("patch", "validatingwebhookconfigurations/replayops-webhook")
    assert can("get", "capturepolicies.replayops.dev", "-n", "shop") and can("list", "trafficreplays.replayops.dev",
                                                                             "-n", "shop")
    assert can("get", "deployments.apps", "-n", "shop") and can("get", "namespaces")
    assert not can("get", "secrets/other", *ns) and not can("list", "secrets", *ns)
    assert not can("get", "secrets/replayops-webhook-tls", "-n", "default")
    assert not can("patch", "mutatingwebhookconfigurations/someone-else")
