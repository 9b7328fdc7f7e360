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


def _apply_rbac(cluster: Cluster) -> None:
    out = cluster.kubectl("kustomize", str(ROOT / "manifests" / "base"), check=True).stdout
    for doc in YAML(typ="safe").load_all(out):
        if doc and (doc["kind"] in ("Namespace", "ServiceAccount")
                    or doc["apiVersion"].startswith("rbac.authorization.k8s.io/")):
            cluster.kube.apply(doc)


def _can(cluster: Cluster, account: str, *args: str) -> bool:
    """``kubectl auth can-i`` as the ServiceAccount ``account`` of replayops-system."""
    answer = cluster.kubectl("auth", "can-i", f"--as=system:serviceaccount:replayops-system:{account}",
                             *args).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def test_the_webhooks_service_account_may_do_what_the_webhook_does_and_no_more(cluster: Cluster) -> None:
    _apply_rbac(cluster)

    def can(*args: str) -> bool:
        return _can(cluster, "replayops-webhook", *args)

    ns = ("-n", "replayops-system")
    assert can("get", "secrets/replayops-webhook-tls", *ns) and can("create", "secrets", *ns)
    assert can("patch", "mutatingwebhookconfigurations/replayops-webhook")
    assert can("patch", "validatingwebhookconfigurations/replayops-webhook")
    assert can("get", "capturepolicies.replayops.dev", "-n", "shop") and can("list", "trafficreplays.replayops.dev",
                                                                             "-n", "shop")
    assert can("get", "deployments.apps", "-n", "shop") and can("get", "namespaces")
    assert not can("get", "secrets/other", *ns) and not can("list", "secrets", *ns)
    assert can("get", "pods", *ns) and not can("list", "pods", *ns) and not can("get", "pods", "-n", "shop")
    assert not can("get", "secrets/replayops-webhook-tls", "-n", "default")
    assert not can("patch", "mutatingwebhookconfigurations/someone-else")


def test_replay_jobs_and_the_controller_may_do_what_they_do_and_no_more(cluster: Cluster) -> None:
    _apply_rbac(cluster)
    ns = ("-n", "replayops-system")
    for verb in ("create", "list", "watch", "delete"):
        assert _can(cluster, "replayops-controller", verb, "jobs.batch", *ns), verb
    assert not _can(cluster, "replayops-controller", "create", "jobs.batch", "-n", "shop")
    assert _can(cluster, "replayops-controller", "create", "services", *ns)
    token = "secrets/replayops-forwarder-token"
    assert _can(cluster, "replayops-controller", "get", token, "-n", "shop")
    assert _can(cluster, "replayops-controller", "patch", token, "-n", "shop")
    assert not _can(cluster, "replayops-controller", "get", "secrets/db", "-n", "shop")
    assert not _can(cluster, "replayops-controller", "list", "secrets", "-n", "shop")
    replay = ("replayops-replay",)
    assert _can(cluster, *replay, "get", "trafficreplays.replayops.dev", "-n", "shop")
    assert _can(cluster, *replay, "patch", "trafficreplays.replayops.dev", "--subresource=status", "-n", "shop")
    assert not _can(cluster, *replay, "patch", "trafficreplays.replayops.dev", "-n", "shop")
    assert _can(cluster, *replay, "get", "deployments.apps", "-n", "shop")
    assert _can(cluster, *replay, "list", "services", "-n", "shop") and _can(cluster, *replay, "list", "events",
                                                                              "-n", "shop")
    assert not _can(cluster, *replay, "get", "secrets", "-n", "shop")
    assert _can(cluster, "replayops-forwarder", "get", "capturepolicies.replayops.dev", "-n", "shop")
