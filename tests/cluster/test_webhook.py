"""The admission webhook, called by the real apiserver over HTTPS with our caBundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import api
from controller.admission import register
from tests.conftest import Cluster, WebhookProc, start_webhook
from tests.crd_cases import policy, replay


@pytest.fixture(scope="module")
def webhook(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProc]:
    hook = start_webhook(cluster, tmp_path_factory.mktemp("webhook"))
    yield hook
    hook.stop()
    register.unregister(cluster.kube)


def _in(ns: str, obj: dict) -> dict:  # type: ignore[type-arg]
    obj["metadata"]["namespace"] = ns
    return obj


def _capture_policy(cluster: Cluster, ns: str, name: str = "checkout", **spec: object) -> None:
    obj = policy(**spec)
    obj["metadata"] = {"name": name, "namespace": ns}
    cluster.kube.create(obj)


POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations: {{replayops.dev/capture: checkout}}
spec:
  containers:
  - name: app
    image: shop/checkout:1.4
    ports: [{{containerPort: 8080, name: http}}]
"""


def test_kubectl_apply_of_a_replay_against_a_missing_workload_shows_our_message(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    manifest = """
apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata: {name: bad}
spec: {snapshot: s1, target: {workloadRef: {name: ghost}}}
"""
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    assert out.returncode != 0
    assert f"spec.target.workloadRef: Deployment {namespace}/ghost does not exist (rule: target-exists)" \
        in out.stderr


def test_a_replay_whose_target_is_deleted_stays_updatable_but_cannot_be_pointed_at_a_missing_one(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    cluster.kube.create({"apiVersion": "apps/v1", "kind": "Deployment",
                         "metadata": {"name": "web", "namespace": namespace},
                         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                                  "template": {"metadata": {"labels": {"app": "web"}},
                                               "spec": {"containers": [{"name": "app", "image": "shop/web:1"}]}}}})
    manifest = """
apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata: {name: nightly}
spec: {snapshot: s1, target: {workloadRef: {name: TARGET}}, load: {copies: COPIES}}
"""
    def apply(target: str, copies: int) -> Any:
        text = manifest.replace("TARGET", target).replace("COPIES", str(copies))
        return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)

    assert apply("web", 1).returncode == 0
    cluster.kube.delete("apps/v1", "Deployment", "web", namespace)
    updated = apply("web", 2)  # the target it already names is gone: not checked again
    assert updated.returncode == 0, updated.stderr
    stored = cluster.kube.get(api.API_VERSION, "TrafficReplay", "nightly", namespace) or {}
    assert stored["spec"]["load"]["copies"] == 2
    moved = apply("ghost", 2)  # a target it newly names is
    assert moved.returncode != 0
    assert f"Deployment {namespace}/ghost does not exist (rule: target-exists)" in moved.stderr


def test_replay_is_defaulted_by_the_webhook(cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    stored = cluster.kube.create(_in(namespace, replay(mode="mocks-only")))
    assert stored["spec"]["mocks"]["timing"]["mode"] == "recorded"


def test_pod_with_the_capture_annotation_comes_back_with_the_sidecar(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace, outbound={"enabled": True, "tlsUnwrap": True})
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=POD.format(name="p1"), check=True)
    assert "created" in out.stdout
    pod = cluster.kube.get("v1", "Pod", "p1", namespace)
    assert pod is not None
    init = {c["name"]: c for c in pod["spec"]["initContainers"]}
    assert init[api.PROXY]["restartPolicy"] == "Always"
    assert "--tls-unwrap" in init[api.PROXY]["args"]
    assert pod["metadata"]["annotations"][api.INJECTED]
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert {"HTTP_PROXY", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"} <= env


def test_opted_out_pod_is_left_alone(cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace)
    manifest = POD.format(name="p2").replace("{replayops.dev/capture: checkout}",
                                             "{replayops.dev/capture: checkout, sidecar.replayops.dev/inject: 'false'}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=True)
    pod = cluster.kube.get("v1", "Pod", "p2", namespace)
    assert pod is not None and not pod["spec"].get("initContainers")


def test_deployment_with_the_annotation_produces_pods_with_the_sidecar(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                 "template": {"metadata": {"labels": {"app": "checkout"},
                                           "annotations": {api.CAPTURE: "checkout"}},
                              "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4",
                                                       "ports": [{"containerPort": 8080}]}]}}}}
    cluster.kube.create(deployment)
    pods = cluster.kube.wait_for(
        "2 pods of Deployment checkout",
        lambda: (lambda p: p if len(p) == 2 else None)(cluster.kube.list("v1", "Pod", namespace, "app=checkout")),
        timeout=60)
    for pod in pods:
        names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert names == [api.PROXY], pod["metadata"]["name"]
        assert pod["metadata"]["annotations"][api.INJECTED]


def test_capture_policy_with_a_catastrophic_regex_is_refused(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    manifest = """
apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {name: slow}
spec:
  selector: {matchLabels: {app: x}}
  dlp: {patterns: [{type: custom, regex: "(a+)+$"}]}
"""
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    assert out.returncode != 0 and "spec.dlp.patterns[0].regex" in out.stderr and "dlp-regex" in out.stderr


def test_metrics_are_served(webhook: WebhookProc) -> None:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(Path(webhook.cert_dir) / "ca.crt"))
    with urllib.request.urlopen(f"{webhook.url}/metrics", context=ctx, timeout=5) as resp:
        text = resp.read().decode()
    assert "replayops_webhook_requests_total" in text


def _warning_events(cluster: Cluster, ns: str, reason: str) -> list[dict]:  # type: ignore[type-arg]
    return cluster.kube.wait_for(  # type: ignore[no-any-return]
        f"a {reason} Event in {ns}",
        lambda: [e for e in cluster.kube.list("v1", "Event", ns) if e.get("reason") == reason] or None, timeout=20)


def test_transparent_capture_in_a_baseline_namespace_falls_back_to_reverse_and_the_pod_is_created(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline", check=True)
    net_admin = POD.format(name="raw").replace("{replayops.dev/capture: checkout}", "{}") + \
        "    securityContext: {capabilities: {add: [NET_ADMIN]}}\n"
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=net_admin)
    assert refused.returncode != 0 and "NET_ADMIN" in refused.stderr  # the apiserver enforces baseline
    _capture_policy(cluster, namespace, inbound={"mode": "transparent"})
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=POD.format(name="p3"), check=True)
    assert "captured in reverse mode, not transparent: Pod Security level baseline" in out.stderr
    pod = cluster.kube.get("v1", "Pod", "p3", namespace)
    assert pod is not None
    proxy, = pod["spec"]["initContainers"]
    assert proxy["name"] == api.PROXY and "--reverse" in proxy["args"]
    event, = _warning_events(cluster, namespace, api.CAPTURE_DEGRADED)
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "p3"
    # the pod had no uid at admission: looked up, so that `kubectl describe pod` shows the Event
    assert event["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert event["source"]["component"] == "replayops-webhook"


def test_a_restricted_namespace_admits_the_sidecar(cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", check=True)
    _capture_policy(cluster, namespace)
    # only the app's container is made compliant: the sidecar must meet restricted on its own settings
    compliant = POD.format(name="p4") + """    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
      runAsNonRoot: true
      runAsUser: 1000
      seccompProfile: {type: RuntimeDefault}
"""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=compliant, check=True)
    pod = cluster.kube.get("v1", "Pod", "p4", namespace)
    assert pod is not None and [c["name"] for c in pod["spec"]["initContainers"]] == [api.PROXY]


def test_a_quota_too_small_for_the_sidecar_gets_pods_without_it_and_an_event(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace)
    cluster.kube.create({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "small", "namespace":
                         namespace}, "spec": {"hard": {"requests.memory": "100Mi"}}})
    cluster.kube.wait_for("quota small observed", lambda: (
        (cluster.kube.get("v1", "ResourceQuota", "small", namespace) or {}).get("status", {}).get("hard")),
        timeout=30)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "checkout"}},
                 "template": {"metadata": {"labels": {"app": "checkout"}, "annotations": {api.CAPTURE: "checkout"}},
                              "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4",
                                                       "resources": {"requests": {"memory": "64Mi"}}}]}}}}
    cluster.kube.create(deployment)
    pod, = cluster.kube.wait_for("the pod of checkout",
                                 lambda: cluster.kube.list("v1", "Pod", namespace, "app=checkout") or None, timeout=60)
    assert not pod["spec"].get("initContainers") and api.INJECTED not in (pod["metadata"].get("annotations") or {})
    event, = _warning_events(cluster, namespace, api.CAPTURE_SKIPPED)
    assert event["involvedObject"]["kind"] == "ReplicaSet"
    assert "ResourceQuota small has requests.memory 100Mi" in event["message"]


def _skipped_pod(cluster: Cluster, namespace: str, name: str, resources: dict[str, object]) -> dict[str, object]:
    """Create a capture-annotated Deployment; its one pod, which must have been created without the sidecar."""
    cluster.kube.create({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}, "annotations": {api.CAPTURE: "checkout"}},
                              "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4",
                                                       "resources": resources}]}}}})
    pod, = cluster.kube.wait_for(f"the pod of {name}",
                                 lambda: cluster.kube.list("v1", "Pod", namespace, f"app={name}") or None, timeout=60)
    return pod  # type: ignore[no-any-return]


def _limit_range(cluster: Cluster, namespace: str, **item: object) -> None:
    cluster.kube.create({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr", "namespace": namespace},
                         "spec": {"limits": [{"type": "Container", **item}]}})


def test_a_limit_range_the_sidecar_breaks_gets_pods_without_it(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace)
    _limit_range(cluster, namespace, max={"memory": "128Mi"}, default={"cpu": "300m", "memory": "128Mi"})
    plain = _skipped_pod(cluster, namespace, "capped", {})
    assert not plain["spec"].get("initContainers")  # the sidecar's 256Mi limit is above the max
    event, = _warning_events(cluster, namespace, api.CAPTURE_SKIPPED)
    assert "LimitRange lr: container replayops-proxy is above the maximum memory per Container" in event["message"]


def test_limit_range_defaults_given_to_the_sidecar_count_for_a_quota(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace)
    _limit_range(cluster, namespace, default={"cpu": "300m", "memory": "256Mi"})
    cluster.kube.create({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cpu", "namespace":
                         namespace}, "spec": {"hard": {"limits.cpu": "4"}}})
    cluster.kube.wait_for("quota cpu observed", lambda: (
        (cluster.kube.get("v1", "ResourceQuota", "cpu", namespace) or {}).get("status", {}).get("hard")), timeout=30)
    created = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=POD.format(name="p5"), check=True)
    assert "not injected" not in created.stderr
    pod = cluster.kube.get("v1", "Pod", "p5", namespace)
    assert pod is not None
    proxy, = pod["spec"]["initContainers"]
    # the webhook gave the sidecar the namespace's default CPU limit, which the quota requires (LimitRanger gave
    # the app's container its own before the webhook, and does not run again for ours)
    assert proxy["name"] == api.PROXY and proxy["resources"]["limits"]["cpu"] == "300m"


def test_a_scoped_quota_the_sidecar_brings_the_pod_into_skips_injection(
        cluster: Cluster, webhook: WebhookProc, namespace: str) -> None:
    _capture_policy(cluster, namespace)
    cluster.kube.create({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "burstable", "namespace":
                         namespace}, "spec": {"hard": {"requests.memory": "32Mi"}, "scopes": ["NotBestEffort"]}})
    cluster.kube.wait_for("quota burstable observed", lambda: (
        (cluster.kube.get("v1", "ResourceQuota", "burstable", namespace) or {}).get("status", {}).get("hard")),
        timeout=30)
    pod = _skipped_pod(cluster, namespace, "besteffort", {})  # BestEffort alone: the quota does not count it
    assert not pod["spec"].get("initContainers")
    event, = _warning_events(cluster, namespace, api.CAPTURE_SKIPPED)
    assert "ResourceQuota burstable has requests.memory 32Mi" in event["message"]
    assert "into its scope NotBestEffort" in event["message"]
