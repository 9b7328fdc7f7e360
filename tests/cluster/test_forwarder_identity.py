"""Teams kept apart: the real forwarder knows a sidecar by its pod's ServiceAccount token, checked with
TokenReview by the real apiserver, and the pod — not the batch — decides the policy and the stream. Tokens
are minted by the apiserver (TokenRequest, bound to a pod), as the kubelet mints a projected token."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from controller import tokens
from controller.api import API_VERSION, CAPTURE
from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from controller.store import rrpair
from tests.capture.test_processes import cli
from tests.conftest import Cluster
from tests.helpers import wait_200


def _pod(cluster: Cluster, namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return cluster.kube.create({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                                "spec": {"serviceAccountName": "app",
                                         "containers": [{"name": "app", "image": "shop/checkout"}]}})


def _token(cluster: Cluster, namespace: str, pod: dict[str, Any] | None,
           audience: str = tokens.FORWARDER_AUDIENCE) -> str:
    spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": 600}
    if pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"]["uid"]}
    answer = cluster.kube.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/app/token",
                               body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
                               what="request a token")
    return str(answer["status"]["token"])


def _record(path: str) -> dict[str, Any]:
    return rrpair.make(method="GET", url=f"http://checkout{path}", request_headers=[], request_body=None,
                       status=200, response_headers=[], response_body=b"ok", started=1.0, finished=1.1,
                       direction="inbound", service="checkout")


@pytest.fixture
def forwarder(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cluster.kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "app", "namespace": namespace}})
    cluster.kube.apply({"apiVersion": API_VERSION, "kind": "CapturePolicy",
                        "metadata": {"name": "checkout", "namespace": namespace},
                        "spec": {"selector": {"matchLabels": {"app": "checkout"}}}})
    port = free_port()
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home"), "REPLAYOPS_FORWARDER_TOKEN": "master",
           "REPLAYOPS_DLP_KEY": "k"}
    proc = cli("forwarder", "--port", str(port), "--host", "127.0.0.1", "--kubeconfig", str(cluster.kubeconfig),
               env=env)
    try:
        wait_200(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}/v1/batches", tmp_path / "home" / "store" / "streams"
    finally:
        stop_pid(proc.pid)


def _post(url: str, token: str, claims: dict[str, str], paths: list[str]) -> requests.Response:
    batch = {"id": uuid.uuid4().hex, "created": 1.0, **claims, "records": [_record(p) for p in paths]}
    return requests.post(url, json=batch, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _stored(streams: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for segment in sorted(streams.rglob("*.jsonl.gz")):
        for line in gzip.decompress(segment.read_bytes()).splitlines():
            found.setdefault(segment.parent.name, []).append(json.loads(line)["request"]["url"])
    return found


def test_the_pod_of_the_token_decides_policy_and_stream_whatever_the_batch_claims(
        cluster: Cluster, namespace: str, forwarder: tuple[str, Path]) -> None:
    url, streams = forwarder
    pod = _pod(cluster, namespace, "checkout-1", {CAPTURE: "checkout"})
    token = _token(cluster, namespace, pod)
    honest = _post(url, token, {"policy": f"{namespace}/checkout", "stream": f"{namespace}.checkout.proxy"}, ["/a"])
    lying = _post(url, token, {"policy": "payments/ledger", "stream": "payments.ledger.db-0"}, ["/b"])
    assert honest.status_code == lying.status_code == 202, (honest.text, lying.text)
    assert _stored(streams) == {f"{namespace}.checkout.checkout-1": ["http://checkout/a", "http://checkout/b"]}, \
        "both stored under the pod's own policy and stream: the claim of another team's is not read"


def test_tokens_that_may_not_write_are_refused_with_the_reason_and_nothing_stored(
        cluster: Cluster, namespace: str, forwarder: tuple[str, Path]) -> None:
    url, streams = forwarder
    uncaptured = _pod(cluster, namespace, "other-1", {})
    captured = _pod(cluster, namespace, "checkout-2", {CAPTURE: "checkout"})
    claims = {"policy": f"{namespace}/checkout", "stream": f"{namespace}.checkout.x"}

    no_policy = _post(url, _token(cluster, namespace, uncaptured), claims, ["/a"])
    assert no_policy.status_code == 403 and f"pod {namespace}/other-1 is not captured" in no_policy.json()["error"]
    unbound = _post(url, _token(cluster, namespace, None), claims, ["/b"])
    assert unbound.status_code == 403 and "not a pod's ServiceAccount token" in unbound.json()["error"]
    other_audience = _post(url, _token(cluster, namespace, captured, audience="https://vault.example"), claims, ["/c"])
    assert other_audience.status_code == 401 and "not accepted" in other_audience.json()["error"]
    forged = _post(url, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", claims, ["/d"])
    assert forged.status_code == 401
    gone_token = _token(cluster, namespace, captured)
    cluster.kube.delete("v1", "Pod", "checkout-2", namespace)
    cluster.kube.wait_for("pod deleted", lambda: cluster.kube.get("v1", "Pod", "checkout-2", namespace) is None)
    gone = _post(url, gone_token, claims, ["/e"])
    assert gone.status_code in (401, 403), gone.text  # the apiserver refuses a token whose pod is gone
    assert _stored(streams) == {}, "nothing stored"


def test_a_forwarder_that_may_not_review_tokens_is_not_ready_until_it_may(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """The shipped RBAC gives the forwarder TokenReviews; without them every sidecar's batch would be
    refused, so the replica says it is not ready (its Service sends batches to one that is)."""
    import time

    kube = cluster.kube
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "fwd", "namespace": namespace}})
    role = f"{namespace}-fwd"
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
                "rules": [{"apiGroups": ["replayops.dev"], "resources": ["capturepolicies"],
                           "verbs": ["get", "list", "watch"]}]})
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                       "kind": "ClusterRole", "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": "fwd", "namespace": namespace}]}
    kube.apply(binding)
    token = kube.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/fwd/token",
                      body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                            "spec": {"expirationSeconds": 600}}, what="request a token")["status"]["token"]
    admin = json.loads(cluster.kubeconfig.read_text())
    kubeconfig = tmp_path / "fwd.kubeconfig"  # the admin's server and CA, the ServiceAccount's token
    kubeconfig.write_text(json.dumps({**admin, "users": [{"name": admin["users"][0]["name"],
                                                          "user": {"token": token}}]}))
    port = free_port()
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home"), "REPLAYOPS_FORWARDER_TOKEN": "master",
           "REPLAYOPS_DLP_KEY": "k"}
    proc = cli("forwarder", "--port", str(port), "--host", "127.0.0.1", "--kubeconfig", str(kubeconfig), env=env)
    try:
        wait_200(f"http://127.0.0.1:{port}/healthz")
        deadline = time.monotonic() + 30
        while (ready := requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)).status_code == 200 \
                or ready.json().get("status") == "policies unavailable":
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.5)
        assert ready.status_code == 503 and ready.json()["status"] == "token reviews unavailable", ready.text
        assert "tokenreviews" in ready.json()["error"], ready.text
        kube.apply({**binding, "metadata": {"name": f"{role}-reviews"},
                    "roleRef": {**binding["roleRef"], "name": "system:auth-delegator"}})
        wait_200(f"http://127.0.0.1:{port}/readyz", timeout=60)
    finally:
        stop_pid(proc.pid)
        kube.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", role)
        kube.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", f"{role}-reviews")
        kube.delete("rbac.authorization.k8s.io/v1", "ClusterRole", role)
