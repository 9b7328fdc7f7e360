"""The admission webhook, called by the real apiserver over HTTPS with our caBundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
