"""Property tests: whatever arrives, the webhook answers 200 with the uid or 400 with a reason — never 500.

Over 10,000 generated cases in the normal run (see the max_examples below).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.admission.app import ROUTES
from tests.unit.test_webhook_app import make_client

CLIENT = make_client()
PATHS = sorted(ROUTES)


def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    database=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def check(path: str, body: bytes) -> None:
    resp = CLIENT.post(path, data=body, content_type="application/json")
    assert resp.status_code in (200, 400), (resp.status_code, resp.get_data(as_text=True)[:300])
    answer = resp.get_json()
    if resp.status_code == 400:
        assert answer["error"]
        return
    sent = json.loads(body)
    assert answer["response"]["uid"] == sent["request"]["uid"]
    assert isinstance(answer["response"]["allowed"], bool)
    assert answer["response"].get("status", {}).get("code") != 500, answer  # a handler crashed


@fast(3500)
@given(st.sampled_from(PATHS), st.binary(max_size=512))
def test_random_bytes(path: str, body: bytes) -> None:
    check(path, body)


@fast(2500)
@given(st.sampled_from(PATHS), json_values)
def test_random_json(path: str, value: Any) -> None:
    check(path, json.dumps(value).encode())


def _review(draw: Any) -> dict[str, Any]:
    group_kind = draw(st.sampled_from([("", "Pod"), ("replayops.dev", "TrafficReplay"),
                                       ("replayops.dev", "CapturePolicy"), ("apps", "Deployment")]))
    request: dict[str, Any] = {
        "uid": draw(st.one_of(st.uuids().map(str), st.text(max_size=8), st.integers(), st.none())),
        "kind": draw(st.one_of(st.just({"group": group_kind[0], "version": "v1", "kind": group_kind[1]}),
                               json_values)),
        "operation": draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "PATCH", 7])),
        "namespace": draw(st.one_of(st.sampled_from(["shop", "kube-system", ""]), json_values)),
        "object": draw(st.one_of(json_values, st.fixed_dictionaries({
            "apiVersion": st.sampled_from(["v1", "replayops.dev/v1alpha1", "x"]),
            "kind": st.just(group_kind[1]),
            "metadata": st.one_of(json_values, st.fixed_dictionaries({
                "name": st.text(max_size=10),
                "annotations": st.one_of(json_values, st.dictionaries(
                    st.sampled_from(["replayops.dev/capture", "sidecar.replayops.dev/inject",
                                     "replayops.dev/status", "replayops.dev/injected"]),
                    st.one_of(st.sampled_from(["p1", "false", "{}", "not json"]), json_values)))})),
            "spec": json_values}))),
    }
    for key in draw(st.sets(st.sampled_from(sorted(request)), max_size=2)):
        del request[key]
    return {"apiVersion": draw(st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", None])),
            "kind": draw(st.sampled_from(["AdmissionReview", "Review"])), "request": request}


@fast(3000)
@given(st.sampled_from(PATHS), st.data())
def test_near_miss_reviews(path: str, data: st.DataObject) -> None:
    check(path, json.dumps(data.draw(st.composite(lambda draw: _review(draw))())).encode())


pods = st.fixed_dictionaries({
    "metadata": st.fixed_dictionaries({"annotations": st.fixed_dictionaries(
        {"replayops.dev/capture": st.sampled_from(["p1", "missing"])},
        optional={"replayops.dev/status": st.text(max_size=30)})}),
    "spec": st.fixed_dictionaries({"containers": st.lists(st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=8)},
        optional={"ports": st.lists(st.fixed_dictionaries(
            {"containerPort": st.integers(1, 65535)},
            optional={"protocol": st.sampled_from(["TCP", "UDP"])}), max_size=3),
            "env": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "value": st.text(max_size=8)}),
                            max_size=2)}), max_size=3)},
        optional={"hostNetwork": st.booleans(), "initContainers": st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=8)}), max_size=2)}),
})


@fast(1500)
@given(pods, st.uuids())
def test_well_formed_pod_reviews_always_get_an_answer(pod: dict[str, Any], uid: Any) -> None:
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uid), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "namespace": "shop", "object": pod}}
    check("/mutate/pods", json.dumps(body).encode())


def test_oversized_body_is_a_400() -> None:
    resp = CLIENT.post("/validate/trafficreplays", data=b" " * (3 * 1024 * 1024 + 10),
                       content_type="application/json")
    assert resp.status_code == 400 and "limit" in resp.get_json()["error"]
