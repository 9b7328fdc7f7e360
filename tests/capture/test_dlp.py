"""DLP: a corpus of PII-laden pairs goes through the forwarder; no secret reaches the store's bytes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from controller.capture import dlp
from controller.capture.forwarder import create_app
from controller.store import FileStore, rrpair

CARD, CARD2 = "4111 1111 1111 1111", "5500-0000-0000-0004"
SECRETS = [
    CARD, CARD.replace(" ", ""), CARD2, "jane.doe@example.com", "hunter2-password", "tok_live_abcdef123456",
    "AKIAIOSFODNN7EXAMPLE", "sess-9f8e7d6c5b4a", "Bearer abcDEF123ghiJKL456",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "client-secret-value-42", "IBAN-DE89370400440532013000",
]


def corpus() -> list[dict]:  # type: ignore[type-arg]
    def pair(**kw: object) -> dict:  # type: ignore[type-arg]
        base = dict(method="POST", url="http://shop/api/pay", request_headers=[], request_body=None, status=200,
                    response_headers=[], response_body=None, started=1.0, finished=1.1, direction="inbound",
                    service="shop")
        base.update(kw)
        return rrpair.make(**base)  # type: ignore[arg-type]

    return [
        pair(request_headers=[["Authorization", "Bearer abcDEF123ghiJKL456"], ["Content-Type", "application/json"]],
             request_body=json.dumps({"card": CARD, "email": "jane.doe@example.com",
                                      "password": "hunter2-password", "nested": {"api_token": "tok_live_abcdef123456"},
                                      "list": [{"cc": CARD2}]}).encode()),
        pair(url="http://shop/api/login?email=jane.doe@example.com&access_token=tok_live_abcdef123456&page=2",
             response_headers=[["Set-Cookie", "sid=sess-9f8e7d6c5b4a; Path=/; Secure"]],
             response_body=b"welcome jane.doe@example.com, your key AKIAIOSFODNN7EXAMPLE"),
        pair(request_headers=[["Cookie", "sid=sess-9f8e7d6c5b4a; theme=dark"],
                              ["Content-Type", "application/x-www-form-urlencoded"]],
             request_body=b"user=jane&password=hunter2-password&card=4111111111111111"),
        pair(direction="outbound", request_headers=[["X-Client-Secret", "client-secret-value-42"]],
             response_body=(b"token: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
                            b"dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")),
        pair(request_body=b"transfer to IBAN-DE89370400440532013000 please"),
    ]


POLICY = {"apiVersion": "replayops.dev/v1alpha1", "kind": "CapturePolicy",
          "metadata": {"name": "shop", "namespace": "prod"},
          "spec": {"selector": {"matchLabels": {"app": "shop"}},
                   "dlp": {"patterns": [{"type": "creditCard"}, {"type": "email"}, {"type": "bearerToken"},
                                        {"type": "awsKey"},
                                        {"type": "custom", "name": "iban", "regex": "IBAN-[A-Z]{2}[0-9]{20}"}]}}}


def test_no_secret_reaches_the_raw_bytes_of_any_segment(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    client = create_app(store, "t0ken", b"key", {"prod/shop": POLICY}.get).test_client()
    body = gzip.compress(json.dumps({"policy": "prod/shop", "stream": "shop", "records": corpus()}).encode())
    resp = client.post("/v1/batches", data=body, headers={"Authorization": "Bearer t0ken",
                                                          "Content-Encoding": "gzip"})
    assert resp.status_code == 202 and resp.get_json()["stored"] == 5
    segments = list(tmp_path.rglob("*.jsonl.gz"))
    assert segments
    raw = b"".join(gzip.decompress(s.read_bytes()) for s in segments).decode()
    leaked = [s for s in SECRETS if s in raw]
    assert leaked == []
    assert raw.count("[redacted:") >= len(SECRETS)
    assert "theme=" in raw and "page=2" in raw, "what is not secret is kept"


def test_same_secret_same_tag_and_the_tag_depends_on_the_key() -> None:
    a = dlp.Redactor(dlp.Rules(), b"key-a")
    b = dlp.Redactor(dlp.Rules(), b"key-b")
    assert a.text("mail jane.doe@example.com") == a.text("to jane.doe@example.com").replace("to", "mail")
    assert a.text("jane.doe@example.com") != b.text("jane.doe@example.com")


@pytest.mark.parametrize(("number", "redacted"), [("4111 1111 1111 1111", True), ("4111 1111 1111 1112", False),
                                                  ("1234 5678 9012 3456", False), ("378282246310005", True)])
def test_card_numbers_need_a_valid_luhn_checksum(number: str, redacted: bool) -> None:
    out = dlp.Redactor(dlp.Rules(), b"k").text(f"card {number} ok")
    assert (number not in out) is redacted


def test_forwarder_refuses_bad_tokens_and_bodies_and_keeps_good_records(tmp_path: Path) -> None:
    client = create_app(FileStore(tmp_path), "t0ken", b"key", lambda _: None).test_client()
    assert client.post("/v1/batches", data=b"{}", headers={"Authorization": "Bearer nope"}).status_code == 401
    bad = client.post("/v1/batches", data=b"{not json", headers={"Authorization": "Bearer t0ken"})
    assert bad.status_code == 400 and "not a batch" in bad.get_json()["error"]
    records = [*corpus()[:2], {"version": 1, "id": "x"}, {"version": 99}]
    resp = client.post("/v1/batches", json={"stream": "s", "records": records},
                       headers={"Authorization": "Bearer t0ken"})
    out = resp.get_json()
    assert resp.status_code == 202 and out["stored"] == 2
    assert out["rejected"] == ["records[2]: missing field 'direction'",
                               "records[3]: unknown RRPair version 99 (this replayops reads up to 1)"]


def test_policy_filters_and_sampling_apply(tmp_path: Path) -> None:
    policy = {"spec": {"filters": {"exclude": [{"paths": ["/api/login"]}]}, "sampling": 1}}
    client = create_app(FileStore(tmp_path), "t", b"k", lambda _: policy).test_client()
    out = client.post("/v1/batches", json={"stream": "s", "records": corpus()},
                      headers={"Authorization": "Bearer t"}).get_json()
    assert out["stored"] == 4 and out["filtered"] == 1


def test_forwarder_health_and_metrics(tmp_path: Path) -> None:
    client = create_app(FileStore(tmp_path), "t", b"k", lambda _: None).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    client.post("/v1/batches", json={"stream": "s", "records": corpus()[:1]}, headers={"Authorization": "Bearer t"})
    assert 'replayops_forwarder_records_total{outcome="stored"} 1.0' in client.get("/metrics").get_data(as_text=True)


def test_forwarder_applies_the_policy_retention(tmp_path: Path) -> None:
    import os

    policy = {"spec": {"retention": {"maxAge": "1h"}}}
    store = FileStore(tmp_path, roll_bytes=1)  # each batch its own sealed segment
    store.append("s", corpus()[:1])
    old = next(tmp_path.rglob("*.jsonl.gz"))
    os.utime(old, (1000, 1000))
    client = create_app(store, "t", b"k", lambda _: policy).test_client()
    resp = client.post("/v1/batches", json={"stream": "s", "records": corpus()[:1]},
                       headers={"Authorization": "Bearer t"})
    assert resp.status_code == 202, "answered at once: retention runs in the background, off the request path"
    import time
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not old.exists() and len(list(tmp_path.rglob("*.jsonl.gz"))) == 1


def test_forwarder_never_stores_what_no_policy_was_applied_to(tmp_path: Path) -> None:
    from controller.capture.forwarder import PoliciesUnavailable

    def unreadable(_: str) -> None:
        raise PoliciesUnavailable("CapturePolicy: HTTP 403: Forbidden")

    store = FileStore(tmp_path)
    auth = {"Authorization": "Bearer t"}
    down = create_app(store, "t", b"k", unreadable).test_client()
    resp = down.post("/v1/batches", json={"stream": "s", "policy": "prod/shop", "records": corpus()}, headers=auth)
    assert resp.status_code == 503 and "403" in resp.get_json()["error"]
    unknown = create_app(store, "t", b"k", lambda _: None).test_client()
    resp = unknown.post("/v1/batches", json={"stream": "s", "policy": "prod/gone", "records": corpus()}, headers=auth)
    assert resp.status_code == 422 and "prod/gone" in resp.get_json()["error"]
    assert not list(tmp_path.rglob("*.jsonl.gz"))
    scraped = down.get("/metrics").get_data(as_text=True)
    assert f'replayops_forwarder_records_total{{outcome="refused_policies_unavailable"}} {len(corpus())}.0' in scraped
    not_ready = down.get("/readyz")  # the pod leaves the Service's endpoints while it would refuse
    assert not_ready.status_code == 503 and "403" in not_ready.get_json()["error"]
    assert down.get("/healthz").status_code == 200, "alive all the same: no restart for an RBAC problem"
    assert unknown.get("/readyz").status_code == 200


def test_a_retried_batch_is_stored_once_whichever_replica_gets_it(tmp_path: Path) -> None:
    """Two forwarder replicas on one store; a sidecar's batch (its id and time) sent to both at once, and
    again: one segment, and every answer a 202 (a retry whose first answer was lost is acknowledged)."""
    import concurrent.futures
    import uuid

    replicas = [create_app(FileStore(tmp_path), "t", b"k", lambda _: {}).test_client() for _ in range(2)]
    batch = {"id": uuid.uuid4().hex, "created": 1_800_000_000.5, "stream": "s", "records": corpus()}
    auth = {"Authorization": "Bearer t"}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: replicas[i % 2].post("/v1/batches", json=batch, headers=auth).get_json(),
                                range(6)))
    assert [a["stored"] for a in answers].count(5) == 1 and sum(bool(a.get("duplicate")) for a in answers) == 5
    lines = [line for p in tmp_path.rglob("*.jsonl.gz") for line in gzip.decompress(p.read_bytes()).splitlines()]
    assert len(lines) == 5, "the batch is in the store once"
    assert not list(tmp_path.rglob("*.tmp")), "no staging file left behind"


@pytest.mark.parametrize(("field", "value", "error"), [
    ("id", "../../etc", "id must be 32 lowercase hex digits"), ("id", 7, "id must be 32 lowercase hex digits"),
    ("created", "yesterday", "created must be the batch's time"), ("created", float("inf"), "created must be")])
def test_a_batch_with_a_bad_id_or_time_is_refused_naming_the_field(tmp_path: Path, field: str, value: object,
                                                                   error: str) -> None:
    import uuid

    client = create_app(FileStore(tmp_path), "t", b"k", lambda _: {}).test_client()
    batch = {"id": uuid.uuid4().hex, "created": 1.0, "stream": "s", "records": corpus(), field: value}
    resp = client.post("/v1/batches", data=json.dumps(batch), headers={"Authorization": "Bearer t",
                                                                      "Content-Type": "application/json"})
    assert resp.status_code == 400 and error in resp.get_json()["error"]
    assert not list(tmp_path.rglob("*.jsonl.gz")), "nothing stored"


def test_a_namespaces_token_writes_only_under_its_own_namespaces_policies(tmp_path: Path) -> None:
    from controller import tokens

    store = FileStore(tmp_path)
    policies = {"prod/shop": POLICY, "ops/audit": {**POLICY, "metadata": {"name": "audit", "namespace": "ops"}}}
    client = create_app(store, "m4ster", b"k", policies.get).test_client()
    prod = tokens.for_namespace("m4ster", "prod")

    def post(token: str, policy: str, stream: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        resp = client.post("/v1/batches", json={"policy": policy, "stream": stream, "records": corpus()[:1]},
                           headers={"Authorization": f"Bearer {token}"})
        return resp.status_code, resp.get_json()

    assert post(prod, "prod/shop", "prod.shop.web-1")[0] == 202
    for policy, stream in (("ops/audit", "ops.audit.web-1"), ("prod/shop", "ops.audit.web-1"),
                           ("ops/audit", "prod.shop.web-1"), ("prod/shop", "prod.shopping.web-1")):
        code, body = post(prod, policy, stream)
        assert code == 403 and "a token of namespace prod writes only under its own" in body["error"], (policy, stream)
    assert post(tokens.for_namespace("wrong-master", "prod"), "prod/shop", "prod.shop.web-1") == (
        401, {"error": "missing or wrong bearer token"})
    assert post("m4ster", "ops/audit", "ops.audit.x")[0] == 202, "the forwarder's own master writes anywhere"
    assert sorted(p.parent.name for p in tmp_path.rglob("*.jsonl.gz")) == ["ops.audit.x", "prod.shop.web-1"]
