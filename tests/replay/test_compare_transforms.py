"""Comparison and transforms as pure functions."""

from __future__ import annotations

import json
from pathlib import Path

from controller.replay import compare, transforms
from controller.store import rrpair


def resp(body: object, status: int = 200, headers: list[list[str]] | None = None) -> dict:  # type: ignore[type-arg]
    return rrpair.make(method="GET", url="http://x/", request_headers=[], request_body=None, status=status,
                       response_headers=headers or [], response_body=json.dumps(body).encode(), started=0,
                       finished=0, direction="inbound", service="s")["response"]


def test_json_bodies_are_compared_leaf_by_leaf_with_ignores_and_tolerance() -> None:
    rec = resp({"total": 6.0, "items": [{"id": 1}], "ts": 1})
    rules = compare.Rules(ignore=("$.ts",), tolerance=0.01)
    assert not compare.compare(rec, 200, {}, json.dumps({"total": 6.03, "items": [{"id": 1}], "ts": 2}).encode(),
                               rules)
    diff = compare.compare(rec, 200, {}, json.dumps({"total": 5.4, "items": [{"id": 2}], "ts": 3}).encode(), rules)
    assert diff.lines == ["$.items[0].id: recorded 1, got 2", "$.total: recorded 6.0, got 5.4"]


def test_status_headers_and_non_json_bodies() -> None:
    rec = resp({"a": 1}, headers=[["Content-Type", "application/json"]])
    diff = compare.compare(rec, 500, {"content-type": "text/plain"}, b"oops", compare.Rules(headers=("content-type",)))
    assert diff.lines[0] == "status: recorded 200, got 500"
    assert "header content-type" in diff.lines[1]
    assert compare.compare(rec, 200, {}, b'{"a":1}', compare.Rules(body="none")).lines == []


def test_include_only_and_noise() -> None:
    rec = resp({"id": 1, "name": "a", "at": "x"})
    rules = compare.Rules(include_only=("$.name",))
    assert not compare.compare(rec, 200, {}, json.dumps({"id": 9, "name": "a"}).encode(), rules)
    assert compare.noise(resp({"v": 1, "at": 1}), resp({"v": 1, "at": 2})) == {"$.at"}


def test_values_made_anew_on_every_call_are_known_by_their_look() -> None:
    body = {"ts": 1764870000.25, "ms": 1764870000250, "order": "0b9e5c1e-6f1d-4a57-9a3e-2c8f4f1b7d10",
            "at": "2026-12-04T20:00:00Z", "local": "2026-12-04 20:00:00.123+01:00",
            "price": 2, "qty": 3, "total": 6.0, "id": 1234, "born": "1990-05-01", "name": "apple",
            "flag": True, "items": [{"created": "2026-12-04T20:00"}]}
    assert compare.volatile(resp(body)) == {"$.ts", "$.ms", "$.order", "$.at", "$.local", "$.items[0].created"}
    assert compare.volatile(rrpair.make(method="GET", url="http://x/", request_headers=[], request_body=None,
                                        status=200, response_headers=[], response_body=b"not json", started=0,
                                        finished=0, direction="inbound", service="s")["response"]) == set()


def test_time_shift_keeps_the_recorded_offset() -> None:
    recorded_at = 1_700_000_000.0
    text = "from=2023-11-14T22:13:20Z&epoch=1700000000&ms=1700000000000&other=42"
    out = transforms.shift_text(text, 86400, recorded_at)
    assert out == "from=2023-11-15T22:13:20Z&epoch=1700086400&ms=1700086400000&other=42"


def test_extract_id_maps_recorded_ids_to_live_ones_in_later_requests() -> None:
    session = transforms.Session([{"type": "extractId", "name": "order", "path": "$.order", "from": "responseBody"}])
    recorded = resp({"order": "rec-1"})
    session.learn(recorded, {}, 201, {}, b'{"order": "live-9"}')
    req = transforms.Request("GET", "http://t/api/orders/rec-1", [["X-Order", "rec-1"]], b'{"ref":"rec-1"}')
    out = session.apply(req, 0, 0)
    assert out.url.endswith("/live-9") and out.headers == [["X-Order", "live-9"]] and b"live-9" in out.body


def test_header_query_json_path_regex_and_host_rewrite() -> None:
    session = transforms.Session([
        {"type": "header", "name": "X-Env", "value": "replay"},
        {"type": "query", "name": "v", "value": "2"},
        {"type": "jsonPath", "path": "$.user.tier", "value": "gold"},
        {"type": "regex", "pattern": "sandbox", "value": "prod"},
        {"type": "hostRewrite", "host": "canary", "port": 9090},
    ])
    req = transforms.Request("POST", "http://t:8080/api/sandbox?v=1", [], b'{"user":{"tier":"free"}}')
    out = session.apply(req, 0, 0)
    assert out.url == "http://canary:9090/api/prod?v=2"
    assert out.header("X-Env") == "replay" and out.header("Host") == "canary"
    assert json.loads(out.body) == {"user": {"tier": "gold"}}


def test_a_truncated_recording_is_compared_on_the_start_it_kept() -> None:
    rec = {**resp(None), "body": '{"items": [1, 2', "truncated": 4096}
    assert not compare.compare(rec, 200, {}, b'{"items": [1, 2, 3], "more": "..."}', compare.Rules())
    diff = compare.compare(rec, 200, {}, b'{"items": [9]}', compare.Rules())
    assert diff.lines == ["body: the recorded first 15 bytes (of 4096) differ"]


def test_a_record_says_how_long_its_truncated_body_was() -> None:
    record = rrpair.make(method="GET", url="http://svc/", request_headers=[], request_body=None, status=200,
                         response_headers=[], response_body=b"abc", started=1.0, finished=2.0,
                         direction="inbound", service="svc")
    record["response"]["truncated"] = 1 << 30
    assert rrpair.validate(record) is record
    for bad in (-1, "1Gi", True):
        record["response"]["truncated"] = bad
        try:
            rrpair.validate(record)
        except rrpair.RecordError as exc:
            assert "response.truncated must be the body's length in bytes" in str(exc)
        else:
            raise AssertionError(f"truncated={bad!r} accepted")


def test_a_pair_whose_request_body_was_recorded_truncated_is_not_replayed_and_is_named(tmp_path: Path) -> None:
    from controller.replay.generator import inbound
    from controller.store import FileStore, Manifest

    def pair(i: int) -> dict:  # type: ignore[type-arg]
        return rrpair.make(method="POST", url=f"http://svc/upload/{i}", request_headers=[], request_body=b"x" * 10,
                           status=200, response_headers=[], response_body=b"ok", started=1.0, finished=1.1,
                           direction="inbound", service="svc")
    cut = pair(2)
    cut["request"]["truncated"] = 5 << 20
    store = FileStore(tmp_path)
    store.write_snapshot(Manifest(name="s"), [pair(1), cut])
    problems: list = []  # type: ignore[type-arg]
    assert [r["request"]["url"] for r in inbound(store, "s", problems)] == ["http://svc/upload/1"]
    assert len(problems) == 1 and "POST /upload/2" in str(problems[0]) and "recorded truncated" in str(problems[0])
