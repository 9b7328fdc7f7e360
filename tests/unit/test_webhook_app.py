"""The Flask app answers every AdmissionReview with its uid; bad bodies get a 400 with a reason."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pytest
from flask.testing import FlaskClient

from controller.admission import rules
from controller.admission.app import Deps, create_app
from controller.kube import KubeError
from tests.crd_cases import policy, replay

POLICY = policy(outbound={"enabled": True})
POLICY["metadata"]["namespace"] = "shop"


def lookup(**kw: Any) -> rules.StaticLookup:
    base: dict[str, Any] = {"workloads": {("shop", "Deployment", "checkout")}, "replays": {},
                            "namespaces": {"shop": {}}, "snapshots": {"checkout-2026-11-20"}}
    base.update(kw)
    return rules.StaticLookup(**base)


def make_client(look: rules.StaticLookup | None = None, limits: rules.Limits | None = None) -> FlaskClient:
    policies = {("shop", "p1"): POLICY}
    deps = Deps(lookup=look or lookup(), policies=lambda ns, n: policies.get((ns, n)),
                limits=limits or rules.Limits())
    return create_app(deps).test_client()


def review(obj: dict[str, Any] | None, *, group: str, kind: str, op: str = "CREATE",
           ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "kind": {"group": group, "version": "v1", "kind": kind},
                        "operation": op, "namespace": ns, "object": obj}}


def pod(annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8080}]}]}}


def post(client: FlaskClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(path, json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = resp.get_json()["response"]
    assert out["uid"] == body["request"]["uid"]
    return out  # type: ignore[no-any-return]


def test_pod_with_capture_annotation_gets_a_patch_adding_the_sidecar() -> None:
    body = review(pod({"replayops.dev/capture": "p1"}), group="", kind="Pod")
    out = post(make_client(), "/mutate/pods", body)
    assert out["allowed"] and out["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(body["request"]["object"], json.loads(base64.b64decode(out["patch"])))
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["replayops-proxy"]
    assert patched["metadata"]["annotations"]["replayops.dev/injected"]


def injected(client: FlaskClient, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the apiserver stores it after our /mutate/pods answer."""
    body = review(obj, group="", kind="Pod")
    out = post(client, "/mutate/pods", body)
    return jsonpatch.apply_patch(obj, json.loads(base64.b64decode(out["patch"])))  # type: ignore[no-any-return]


def test_pods_alike_but_for_their_names_each_get_a_correct_patch() -> None:
    client = make_client()
    first, second = pod({"replayops.dev/capture": "p1"}), pod({"replayops.dev/capture": "p1"})
    second["metadata"]["name"] = "y"
    labelled = pod({"replayops.dev/capture": "p1"})
    labelled["metadata"]["labels"] = {"tier": "web"}
    results = [injected(client, p) for p in (first, second, labelled)]
    assert [r["metadata"]["name"] for r in results] == ["x", "y", "x"]
    assert results[2]["metadata"]["labels"] == {"tier": "web"}
    assert all([c["name"] for c in r["spec"]["initContainers"]] == ["replayops-proxy"] for r in results)


def test_a_changed_policy_changes_the_next_injection() -> None:
    policies = {("shop", "p1"): POLICY}
    client = create_app(Deps(lookup=lookup(), policies=lambda ns, n: policies.get((ns, n)))).test_client()
    before = injected(client, pod({"replayops.dev/capture": "p1"}))
    assert "SSL_CERT_FILE" not in {e["name"] for e in before["spec"]["containers"][0]["env"]}
    unwrapping = policy(outbound={"enabled": True, "tlsUnwrap": True})
    unwrapping["metadata"]["namespace"] = "shop"
    policies[("shop", "p1")] = unwrapping
    after = injected(client, pod({"replayops.dev/capture": "p1"}))
    assert "SSL_CERT_FILE" in {e["name"] for e in after["spec"]["containers"][0]["env"]}
    assert "--tls-unwrap" in after["spec"]["initContainers"][0]["args"]


def test_pod_naming_a_missing_policy_is_admitted_with_a_warning() -> None:
    out = post(make_client(), "/mutate/pods", review(pod({"replayops.dev/capture": "gone"}), group="", kind="Pod"))
    assert out["allowed"] and "patch" not in out
    assert "CapturePolicy shop/gone not found" in out["warnings"][0]


TRANSPARENT = policy(inbound={"mode": "transparent"})
TRANSPARENT["metadata"]["namespace"] = "shop"


def notifying_client(labels: dict[str, str], quotas: list[dict[str, Any]],
                     notes: list[tuple[str, str]]) -> FlaskClient:
    deps = Deps(lookup=lookup(namespaces={"shop": labels}), policies=lambda ns, n: TRANSPARENT,
                quotas=lambda ns: quotas, notify=lambda pod, ns, reason, msg: notes.append((reason, msg)))
    return create_app(deps).test_client()


def test_transparent_capture_falls_back_to_reverse_where_pod_security_forbids_net_admin() -> None:
    notes: list[tuple[str, str]] = []
    client = notifying_client({"pod-security.kubernetes.io/enforce": "baseline"}, [], notes)
    body = review(pod({"replayops.dev/capture": "p1"}), group="", kind="Pod")
    out = post(client, "/mutate/pods", body)
    patched = jsonpatch.apply_patch(body["request"]["object"], json.loads(base64.b64decode(out["patch"])))
    proxy, = patched["spec"]["initContainers"]
    assert proxy["name"] == "replayops-proxy" and "--reverse" in proxy["args"] and "--transparent" not in proxy["args"]
    assert "Pod Security level baseline forbids the replayops-init" in out["warnings"][0]
    assert [r for r, _ in notes] == ["CaptureDegraded"] and "sent to ports 15001 (for 8080)" in notes[0][1]
    privileged = injected(notifying_client({}, [], []), pod({"replayops.dev/capture": "p1"}))
    assert [c["name"] for c in privileged["spec"]["initContainers"]] == ["replayops-init", "replayops-proxy"]


def test_the_fallback_names_each_port_the_proxy_fronts() -> None:
    notes: list[tuple[str, str]] = []
    two = pod({"replayops.dev/capture": "p1"})
    two["spec"]["containers"][0]["ports"] += [{"containerPort": 9090}]
    post(notifying_client({"pod-security.kubernetes.io/enforce": "restricted"}, [], notes), "/mutate/pods",
         review(two, group="", kind="Pod"))
    assert "sent to ports 15001 (for 8080), 15003 (for 9090)" in notes[0][1]  # 15002 is the outbound port


class UnreadableNamespaces(rules.StaticLookup):
    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        raise KubeError(f"get Namespace {namespace}: 503 Service Unavailable")


def test_a_namespace_that_cannot_be_read_gets_reverse_mode_the_safe_side() -> None:
    notes: list[tuple[str, str]] = []
    deps = Deps(lookup=UnreadableNamespaces(**vars(lookup())), policies=lambda ns, n: TRANSPARENT,
                notify=lambda pod, ns, reason, msg: notes.append((reason, msg)))
    out = post(create_app(deps).test_client(), "/mutate/pods", review(pod({"replayops.dev/capture": "p1"}),
                                                                      group="", kind="Pod"))
    patched = jsonpatch.apply_patch(pod({"replayops.dev/capture": "p1"}), json.loads(base64.b64decode(out["patch"])))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["replayops-proxy"]
    assert "Pod Security level could not be read" in notes[0][1]


def test_a_limit_range_the_sidecar_breaks_skips_injection_and_defaults_count_for_quotas() -> None:
    notes: list[tuple[str, str]] = []
    capped = {"metadata": {"name": "cap"}, "spec": {"limits": [{"type": "Container", "max": {"memory": "128Mi"}}]}}
    deps = Deps(lookup=lookup(), policies=lambda ns, n: POLICY, limit_ranges=lambda ns: [capped],
                notify=lambda pod, ns, reason, msg: notes.append((reason, msg)))
    out = post(create_app(deps).test_client(), "/mutate/pods", review(pod({"replayops.dev/capture": "p1"}),
                                                                      group="", kind="Pod"))
    assert out["allowed"] and "patch" not in out
    assert out["warnings"] == ["replayops: not injected: LimitRange cap: container replayops-proxy is above the "
                               "maximum memory per Container of 128Mi"]
    assert [r for r, _ in notes] == ["CaptureSkipped"]
    defaults = {"metadata": {"name": "d"}, "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}}]}}
    on_cpu_limits = {"metadata": {"name": "q"}, "spec": {"hard": {"limits.cpu": "2"}}, "status": {"used": {}}}
    app = pod({"replayops.dev/capture": "p1"})
    app["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m"}}  # as LimitRanger left it
    deps = Deps(lookup=lookup(), policies=lambda ns, n: POLICY, limit_ranges=lambda ns: [defaults],
                quotas=lambda ns: [on_cpu_limits])
    out = post(create_app(deps).test_client(), "/mutate/pods", review(app, group="", kind="Pod"))
    patched = jsonpatch.apply_patch(app, json.loads(base64.b64decode(out["patch"])))
    proxy, = patched["spec"]["initContainers"]
    assert proxy["resources"]["limits"] == {"memory": "256Mi", "cpu": "500m"}  # the namespace's default added
    assert patched["metadata"]["name"] == "x"


def test_a_quota_the_sidecar_would_exceed_skips_injection_with_a_notice() -> None:
    notes: list[tuple[str, str]] = []
    tight = {"metadata": {"name": "small"}, "spec": {"hard": {"requests.memory": "100Mi"}},
             "status": {"used": {"requests.memory": "50Mi"}}}
    body = review(pod({"replayops.dev/capture": "p1"}), group="", kind="Pod")
    out = post(notifying_client({}, [tight], notes), "/mutate/pods", body)
    assert out["allowed"] and "patch" not in out
    assert out["warnings"][0].startswith("replayops: not injected: ResourceQuota small has requests.memory 100Mi")
    assert [r for r, _ in notes] == ["CaptureSkipped"]
    dry = {**body, "request": {**body["request"], "dryRun": True}}
    post(notifying_client({}, [tight], notes), "/mutate/pods", dry)
    assert len(notes) == 1  # a dry run records nothing


def test_replay_against_a_missing_workload_is_denied_naming_field_and_rule() -> None:
    obj = replay(target={"workloadRef": {"kind": "Deployment", "name": "nope"}})
    out = post(make_client(), "/validate/trafficreplays", review(obj, group="replayops.dev", kind="TrafficReplay"))
    assert not out["allowed"]
    assert "spec.target.workloadRef: Deployment shop/nope does not exist (rule: target-exists)" in \
        out["status"]["message"]


def test_replay_over_the_load_limits_is_denied() -> None:
    obj = replay(load={"copies": 50, "stages": [{"duration": "1m", "targetRPS": 900}]})
    out = post(make_client(limits=rules.Limits(max_copies=10, max_rps=100)), "/validate/trafficreplays",
               review(obj, group="replayops.dev", kind="TrafficReplay"))
    assert "spec.load.copies" in out["status"]["message"]
    assert "spec.load.stages[0].targetRPS" in out["status"]["message"]


def test_second_running_replay_on_the_same_target_is_denied() -> None:
    running = replay()
    running["metadata"]["name"] = "earlier"
    running["status"] = {"phase": "Running"}
    out = post(make_client(lookup(replays={"shop": [running]})), "/validate/trafficreplays",
               review(replay(), group="replayops.dev", kind="TrafficReplay"))
    assert not out["allowed"] and "one-replay-per-target" in out["status"]["message"]


def test_unknown_snapshot_is_denied_and_unreachable_store_only_warns() -> None:
    out = post(make_client(), "/validate/trafficreplays",
               review(replay(snapshot="nope"), group="replayops.dev", kind="TrafficReplay"))
    assert not out["allowed"] and "spec.snapshot" in out["status"]["message"]
    out = post(make_client(lookup(snapshots=None)), "/validate/trafficreplays",
               review(replay(snapshot="nope"), group="replayops.dev", kind="TrafficReplay"))
    assert out["allowed"] and "unreachable" in out["warnings"][0]


def test_a_store_snapshot_not_of_the_replays_namespace_nor_shared_with_it_is_denied_saying_how_to_share() -> None:
    from controller.store import Manifest

    def judged(owner: str, shared: tuple[str, ...] = ()) -> dict[str, Any]:
        look = lookup(snapshots={"imported"},
                      manifests={"imported": Manifest("imported", namespace=owner, shared=list(shared))})
        return post(make_client(look), "/validate/trafficreplays",
                    review(replay(snapshot="imported"), group="replayops.dev", kind="TrafficReplay"))
    out = judged("payments")
    assert not out["allowed"] and "'imported' in the store is not namespace shop's nor shared with it " \
        "(replayops snapshot share imported --with shop)" in out["status"]["message"]
    assert judged("shop")["allowed"] and judged("payments", ("*",))["allowed"]


@pytest.mark.parametrize(("spec", "field"), [
    ({"dlp": {"patterns": [{"type": "custom", "regex": "(a+)+$"}]}}, "spec.dlp.patterns[0].regex"),
    ({"dlp": {"patterns": [{"type": "custom", "regex": "([a-z"}]}}, "spec.dlp.patterns[0].regex"),
    ({"selector": {"matchLabels": {"app.kubernetes.io/part-of": "replayops"}}}, "spec.selector"),
    ({"outbound": {"enabled": True, "proxyPort": 15001}}, "spec.outbound.proxyPort"),
])
def test_bad_capture_policies_are_denied(spec: dict[str, Any], field: str) -> None:
    out = post(make_client(), "/validate/capturepolicies",
               review(policy(**spec), group="replayops.dev", kind="CapturePolicy"))
    assert not out["allowed"] and field in out["status"]["message"]


def test_capture_only_where_the_admin_allows_it() -> None:
    limits = rules.Limits(capture_namespaces=frozenset({"prod"}), capture_label="replayops.dev/capture-allowed")
    body = review(policy(), group="replayops.dev", kind="CapturePolicy")
    out = post(make_client(limits=limits), "/validate/capturepolicies", body)
    assert not out["allowed"] and "capture is not allowed in namespace shop" in out["status"]["message"]
    labelled = lookup(namespaces={"shop": {"replayops.dev/capture-allowed": "true"}})
    assert post(make_client(labelled, limits), "/validate/capturepolicies", body)["allowed"]


def test_replay_defaulting_fills_kind_and_mock_timing() -> None:
    obj = replay(target={"workloadRef": {"name": "checkout"}}, mode="mocks-only")
    body = review(obj, group="replayops.dev", kind="TrafficReplay")
    out = post(make_client(), "/mutate/trafficreplays", body)
    patched = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(out["patch"])))
    assert patched["spec"]["target"]["workloadRef"]["kind"] == "Deployment"
    assert patched["spec"]["mocks"]["timing"]["mode"] == "recorded"


def test_review_of_another_resource_is_refused_with_a_reason() -> None:
    body = review({"kind": "Deployment"}, group="apps", kind="Deployment")
    out = post(make_client(), "/mutate/pods", body)
    assert not out["allowed"] and "admits Pod" in out["status"]["message"]


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(), "expected apiVersion"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"kind": {"group": "", "version": "v1", "kind": "Pod"}}}).encode(), "uid"),
    (b"x" * (3 * 1024 * 1024 + 1), "limit"),
])
def test_bad_bodies_get_400_with_reason(body: bytes, reason: str) -> None:
    resp = make_client().post("/mutate/pods", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert reason in resp.get_json()["error"]


def test_metrics_count_requests_denials_and_errors() -> None:
    client = make_client()
    post(client, "/mutate/pods", review(pod({"replayops.dev/capture": "p1"}), group="", kind="Pod"))
    post(client, "/validate/trafficreplays", review(replay(snapshot="nope"), group="replayops.dev",
                                                   kind="TrafficReplay"))
    client.post("/mutate/pods", data=b"{", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'replayops_webhook_requests_total{allowed="true",endpoint="/mutate/pods"} 1.0' in text
    assert 'replayops_webhook_denials_total{endpoint="/validate/trafficreplays"} 1.0' in text
    assert 'replayops_webhook_errors_total{endpoint="/mutate/pods",kind="bad-request"} 1.0' in text
    assert "replayops_webhook_patch_bytes_count 1.0" in text
    assert "replayops_webhook_latency_seconds_bucket" in text


def test_health_endpoints() -> None:
    client = make_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_snapshot_check_asks_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from controller.admission.cli import _snapshot_check
    from controller.store import FileStore, Manifest

    FileStore(tmp_path).write_snapshot(Manifest(name="checkout-1", namespace="shop"), [])
    found = _snapshot_check(tmp_path)
    manifest = found("checkout-1")
    assert isinstance(manifest, Manifest) and manifest.readable_by("shop") and not manifest.readable_by("web")
    assert found("other") is False and found("Not A Name") is False
    assert _snapshot_check(None)("checkout-1") is None
    assert _snapshot_check(tmp_path / "absent")("checkout-1") is None
