"""manifests/base builds with kustomize and every object it holds is accepted by the real apiserver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller.devcluster import install
from controller.kube import KubeError
from tests.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]


def test_kustomize_base_objects_pass_server_side_dry_run(cluster: Cluster) -> None:
    out = cluster.kubectl("kustomize", str(ROOT / "manifests" / "base"), check=True).stdout
    docs = [d for d in YAML(typ="safe").load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "Service", "ClusterRole",
            "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} <= kinds
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    cluster.kube.apply(namespace)
    assert _dry_run_errors(cluster, docs) == []
    hooks = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"][0]["webhooks"]
    pods = next(h for h in hooks if h["name"].startswith("pods."))
    assert pods["failurePolicy"] == "Ignore" and pods["sideEffects"] == "None"
    assert all(h["failurePolicy"] == "Fail" for h in hooks if h is not pods)


def _dry_run_errors(cluster: Cluster, docs: list[dict[str, Any]]) -> list[str]:
    """What the apiserver says against applying each of ``docs`` (server-side, dry run)."""
    errors = []
    for doc in docs:
        try:
            cluster.kube.apply(doc, dry_run=True)
        except KubeError as err:
            errors.append(str(err))
    return errors


def _with_inspector(tmp: Path) -> Path:
    """An installation's kustomization: the base with the optional inspector component."""
    return install.kustomization(tmp, ROOT / "manifests" / "base", "ghcr.io/replayops/replayops:0.1.0",
                                 components=(ROOT / "manifests" / "components" / "inspector",))


def test_the_inspector_component_adds_its_pod_and_passes_server_side_dry_run(cluster: Cluster,
                                                                              tmp_path: Path) -> None:
    out = cluster.kubectl("kustomize", str(_with_inspector(tmp_path)), check=True).stdout
    docs = [d for d in YAML(typ="safe").load_all(out) if d]
    ours = [d for d in docs if "inspector" in d["metadata"]["name"]]
    assert {d["kind"] for d in ours} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                         "RoleBinding", "Deployment", "Service", "NetworkPolicy"}
    deployment = next(d for d in ours if d["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "replayops-system"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/replayops/replayops:0.1.0"
    cluster.kube.apply(next(d for d in docs if d["kind"] == "Namespace"))
    assert _dry_run_errors(cluster, ours) == []
    _apply_rbac(cluster, _with_inspector(tmp_path))
    assert _can(cluster, "replayops-inspector", "list", "pods", "-n", "shop")
    assert _can(cluster, "replayops-inspector", "list", "trafficreplays.replayops.dev", "-n", "shop")
    assert not _can(cluster, "replayops-inspector", "list", "secrets", "-n", "shop")
    assert not _can(cluster, "replayops-inspector", "get", "secrets/replayops-dlp-key", "-n", "replayops-system")
    assert not _can(cluster, "replayops-inspector", "create", "trafficreplays.replayops.dev", "-n", "shop")
    assert _can(cluster, "replayops-inspector", "list", "configmaps", "-n", "replayops-system")  # the status
    assert not _can(cluster, "replayops-inspector", "list", "configmaps", "-n", "shop")


def _apply_rbac(cluster: Cluster, where: Path = ROOT / "manifests" / "base") -> None:
    out = cluster.kubectl("kustomize", str(where), check=True).stdout
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
    assert can("list", "resourcequotas", "-n", "shop") and can("list", "limitranges", "-n", "shop")
    assert can("create", "events", "-n", "shop")
    assert not can("delete", "events", "-n", "shop") and not can("update", "resourcequotas", "-n", "shop")
    assert not can("get", "secrets/other", *ns) and not can("list", "secrets", *ns)
    # a bare pod's uid for its Event (admission sees every pod's spec anyway); never a list of them
    assert can("get", "pods", *ns) and not can("list", "pods", *ns) and can("get", "pods", "-n", "shop")
    assert not can("list", "pods", "-n", "shop") and not can("update", "pods", "-n", "shop")
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
    assert _can(cluster, "replayops-controller", "get", "secrets/replayops-dlp-key", *ns)
    assert not _can(cluster, "replayops-controller", "get", "secrets/replayops-dlp-key", "-n", "shop")
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
