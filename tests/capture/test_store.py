"""The store and interchange: atomic snapshots, cuts, retention, migration, and bad input named by place."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.capture import har
from controller.store import FileStore, Manifest, ReadProblem, StoreError, rrpair


def rec(i: int, service: str = "shop", at: float = 100.0) -> dict:  # type: ignore[type-arg]
    return rrpair.make(method="GET", url=f"http://shop/items/{i}", request_headers=[["Accept", "*/*"]],
                       request_body=None, status=200, response_headers=[], response_body=b"\xff\x00binary",
                       started=at + i, finished=at + i + 0.01, direction="inbound", service=service)


def test_snapshot_round_trip_with_manifest(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write_snapshot(Manifest(name="s1", service="shop"), [rec(i) for i in range(3)])
    m = store.manifest("s1")
    assert (m.count, m.start, m.by_direction) == (3, 100.0, {"inbound": 3})
    back = list(store.read("s1"))
    assert [r["request"]["url"] for r in back] == [f"http://shop/items/{i}" for i in range(3)]
    assert rrpair.decode_body(back[0]["response"]) == b"\xff\x00binary"
    assert [s.name for s in store.snapshots()] == ["s1"]
    with pytest.raises(StoreError, match="already exists"):
        store.write_snapshot(Manifest(name="s1"), [])
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "no temporary file left"


def test_cut_by_service_and_window_then_remove(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append("shop.pod-a", [rec(i) for i in range(10)])
    store.append("cart.pod-b", [rec(i, service="cart") for i in range(10)])
    m = store.cut("morning", service="shop", start=103, end=106)
    assert m.count == 4
    assert store.remove("morning") and not store.exists("morning") and not store.remove("morning")


def test_retention_expires_sealed_segments_by_age_then_size_and_never_an_open_one(tmp_path: Path) -> None:
    import os
    store = FileStore(tmp_path, roll_bytes=1)  # every batch seals its segment
    store.append("shop", [rec(1)])
    old = next(tmp_path.rglob("*.jsonl.gz"))
    os.utime(old, (1000, 1000))
    store.append("shop", [rec(2)])
    assert store.expire(max_age_s=3600) == [str(old)]
    assert len(list(tmp_path.rglob("*.jsonl.gz"))) == 1
    for i in range(3):
        store.append("shop", [rec(i) for i in range(50)])
    size = sum(p.stat().st_size for p in tmp_path.rglob("*.jsonl.gz"))
    removed = store.expire(max_bytes=size // 2, stream="shop")
    assert removed and sum(p.stat().st_size for p in tmp_path.rglob("*.jsonl.gz")) <= size // 2
    writing = FileStore(tmp_path)  # a writer's open segment, however old, is never deleted under it
    writing.append("shop", [rec(9)])
    (segment,) = tmp_path.rglob("*.open.jsonl.gz")
    os.utime(segment, (1000, 1000))
    assert str(segment) not in store.expire(max_age_s=3600, max_bytes=0)
    assert segment.exists()


def test_truncated_and_corrupt_segments_are_named_and_the_rest_is_kept(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write_snapshot(Manifest(name="s"), [rec(i) for i in range(3)])
    seg = next((tmp_path / "snapshots" / "s" / "segments").glob("*.jsonl.gz"))
    good = gzip.decompress(seg.read_bytes()).decode().splitlines()
    seg.write_bytes(gzip.compress(("\n".join([good[0], "{broken", good[2]]) + "\n").encode()))
    truncated = seg.with_name("000002.jsonl.gz")
    truncated.write_bytes(gzip.compress(("\n".join(good) + "\n").encode())[:-12])
    with pytest.raises(StoreError, match=r"000001.jsonl.gz:2: not an RRPair"):
        list(store.read("s"))
    problems: list[ReadProblem] = []
    kept = list(store.read("s", strict=False, problems=problems))
    assert [(Path(p.file).name, p.line) for p in problems] == [("000001.jsonl.gz", 2), ("000002.jsonl.gz", 3)]
    assert "corrupt or truncated" in str(problems[1])
    assert len(kept) == 4, "every readable record of both segments is kept"


def test_version_0_records_are_migrated_on_read() -> None:
    old = {"id": "a", "start": 1.0, "end": 1.5, "status": 201, "direction": "outbound",
           "request": {"method": "PUT", "url": "http://x/y", "headers": {"Accept": "json"}},
           "response": {"headers": {"X": "1"}, "body": "ok"}}
    new = rrpair.migrate(old)
    assert new["version"] == 1 and new["response"]["status"] == 201 and new["duration"] == 500.0
    assert new["request"]["headers"] == [["Accept", "json"]]


def test_har_round_trip_and_bad_entries(tmp_path: Path) -> None:
    records = [rec(i) for i in range(3)]
    doc = har.to_har(records)
    doc["log"]["entries"].insert(1, {"request": {"url": "http://x"}, "response": {"status": 200}})
    path = tmp_path / "in.har"
    path.write_text(json.dumps(doc))
    got = har.read_har(path)
    assert [r["id"] for r in got.records] == [r["id"] for r in records]
    assert got.records[0]["response"]["body"] == records[0]["response"]["body"]
    assert got.skipped == [f"{path}: log.entries[1]: request.method is missing"] and got.warnings == []


def test_har_that_is_not_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.har"
    path.write_text('{\n  "log": {\n    "entries": [,]\n  }\n}\n')
    with pytest.raises(har.HarError, match=r"bad.har:3: not JSON"):
        har.read_har(path)
    (tmp_path / "empty.har").write_text("{}")
    with pytest.raises(har.HarError, match="log.entries is missing"):
        har.read_har(tmp_path / "empty.har")


def test_mitmproxy_flow_files_are_imported(tmp_path: Path) -> None:
    from mitmproxy import io
    from mitmproxy.test import tflow

    path = tmp_path / "flows.mitm"
    with open(path, "wb") as fh:
        writer = io.FlowWriter(fh)
        for _ in range(3):
            writer.add(tflow.tflow(resp=True))
    records = har.read_flows(path, "shop").records
    assert len(records) == 3 and all(r["service"] == "shop" and r["response"]["status"] == 200 for r in records)
    (tmp_path / "junk.mitm").write_bytes(b"not a flow file at all")
    with pytest.raises(har.HarError, match="junk.mitm: not a mitmproxy flow file"):
        har.read_flows(tmp_path / "junk.mitm")


def test_a_cut_names_the_corrupt_segments_it_skipped_and_keeps_the_rest(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append("s", [rec(i) for i in range(3)])
    bad = tmp_path / "streams" / "s" / "20260101T000000-broken.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"id": 1}\n')[:-6])  # cut short: a crash mid-write of an old version
    problems: list[ReadProblem] = []
    m = store.cut("c", service="shop", start=0, end=1e12, stream="s", problems=problems)
    assert m.count == 3 and len(problems) == 1 and str(bad) in str(problems[0])
    assert store.manifest("c").problems == [str(problems[0])], "the snapshot says what it is missing"


def test_a_failed_snapshot_write_leaves_no_staging_behind(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    def records() -> Iterator[dict]:  # type: ignore[type-arg]
        yield rec(0)
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        store.write_snapshot(Manifest(name="full"), records())
    assert not store.exists("full") and not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.gz"))


def _segments(tmp_path: Path, pattern: str = "*.jsonl.gz") -> list[Path]:
    return sorted((tmp_path / "streams").rglob(pattern))


def test_a_stream_is_appended_batch_by_batch_to_one_segment_rolled_by_size_and_age(tmp_path: Path) -> None:
    store = FileStore(tmp_path, roll_bytes=2000)
    for i in range(5):
        store.append("shop", [rec(i)], batch=f"b{i}")
    (open_,) = _segments(tmp_path)
    assert open_.name.endswith(".open.jsonl.gz") and store.writer in open_.name, "five batches, one file"
    assert [r["request"]["url"] for r in store.stream_records("shop")] == [f"http://shop/items/{i}" for i in range(5)]
    for i in range(5, 40):
        store.append("shop", [rec(i)], batch=f"b{i}")
    sealed = _segments(tmp_path)[:-1]
    assert len(sealed) >= 2 and not [p for p in sealed if p.name.endswith(".open.jsonl.gz")], "rolled by size"
    assert all(p.stat().st_size < 2000 + 1000 for p in sealed)
    aged = FileStore(tmp_path / "aged", roll_seconds=0.0)
    aged.append("shop", [rec(0)])
    assert aged.tidy() == [] and not _segments(tmp_path / "aged", "*.open.jsonl.gz"), "an idle segment is sealed"
    aged.append("shop", [rec(1)])
    store.close()
    assert not _segments(tmp_path, "*.open.jsonl.gz"), "closing seals"
    assert len(list(store.stream_records("shop"))) == 40


def test_writers_side_by_side_store_every_batch_once_whoever_gets_its_retry(tmp_path: Path) -> None:
    import threading

    from controller.store import DuplicateBatch
    replicas = [FileStore(tmp_path, roll_bytes=4000), FileStore(tmp_path, roll_bytes=4000)]
    duplicates = []

    def send(worker: int) -> None:
        for i in range(60):
            batch = f"w{worker}-{i}"
            for attempt in range(2):  # every batch is sent twice, to both replicas (a lost answer, retried)
                try:
                    replicas[(worker + attempt) % 2].append("shop", [rec(1000 * worker + i)], batch=batch)
                except DuplicateBatch:
                    duplicates.append(batch)
    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(duplicates) == 240
    got = [r["request"]["url"] for r in replicas[0].stream_records("shop")]
    assert sorted(got) == sorted(f"http://shop/items/{1000 * w + i}" for w in range(4) for i in range(60))
    raw = [line for p in _segments(tmp_path) for line in gzip.decompress(p.read_bytes()).splitlines()]
    assert len(raw) == 240, "stored once: a duplicate is refused before it is written or cut off after"
    writers = {p.name.rsplit("-", 1)[0].split("-", 1)[1] for p in _segments(tmp_path)}
    assert writers == {r.writer for r in replicas}, "each writer appends to its own segments"


def test_a_batch_a_crash_left_half_written_is_skipped_then_cut_off_when_the_segment_is_sealed(tmp_path: Path) -> None:
    import os
    crashed = FileStore(tmp_path)
    for i in range(3):
        crashed.append("shop", [rec(i)], batch=f"b{i}")
    (segment,) = _segments(tmp_path)
    whole = segment.stat().st_size
    with open(segment, "ab") as fh:  # the writer died in the middle of its fourth batch
        fh.write(gzip.compress(b'{"id": "x"}\n' * 100)[:40])
    (tmp_path / "streams" / "shop" / ".20260101T000000-x.jsonl.gz.1234.tmp").write_bytes(b"staging")
    other = FileStore(tmp_path)
    problems: list[ReadProblem] = []
    assert len(list(other.stream_records("shop", problems=problems))) == 3 and problems == [], \
        "an open segment's unfinished batch was never acknowledged: not a problem"
    assert other.tidy() == [], "a recent open segment may still be written: left alone"
    os.utime(segment, (1000, 1000))
    for stale in (tmp_path / "streams" / "shop").glob(".*.tmp"):
        os.utime(stale, (1000, 1000))
    tidied = other.tidy()
    assert str(segment) in tidied and any(t.endswith(".tmp") for t in tidied)
    (sealed,) = _segments(tmp_path)
    assert not sealed.name.endswith(".open.jsonl.gz") and sealed.stat().st_size == whole, "cut at the last batch"
    assert len(list(other.stream_records("shop", problems=problems))) == 3 and problems == []
    assert not list(tmp_path.rglob("*.tmp"))
    with open(sealed, "ab") as fh:  # a sealed segment cut short is corruption: reported
        fh.write(gzip.compress(b'{"id": "y"}\n')[:30])
    assert len(list(other.stream_records("shop", problems=problems))) == 3
    assert len(problems) == 1 and "corrupt or truncated" in str(problems[0]) and sealed.name in str(problems[0])


def test_a_batch_stored_twice_by_a_crash_before_its_answer_is_read_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    batch = [rec(i) for i in range(3)]
    store.append("shop", batch, batch="b1")
    for marker in tmp_path.rglob(".batches/*"):  # the writer died before its batch id was on disk
        marker.unlink()
    FileStore(tmp_path).append("shop", batch, batch="b1")
    assert len(list(store.stream_records("shop"))) == 3
    assert store.cut("once", service="shop", start=0, end=1e12).count == 3


def test_batch_ids_are_forgotten_after_the_retry_window(tmp_path: Path) -> None:
    import os
    import time

    from controller.store import BATCHES_KEPT, DuplicateBatch
    store = FileStore(tmp_path)
    store.append("shop", [rec(1)], batch="b1")
    with pytest.raises(DuplicateBatch):
        store.append("shop", [rec(1)], batch="b1")
    (marker,) = tmp_path.rglob(".batches/*")
    old = time.time() - BATCHES_KEPT - 10
    os.utime(marker, (old, old))
    store.tidy()
    assert not marker.exists()


def test_a_batch_refused_or_failed_mid_write_leaves_no_gap_and_later_batches_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import threading

    from controller.store import DuplicateBatch
    store = FileStore(tmp_path)
    real_fsync, calls = os.fsync, []

    def slow_then_failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        threading.Event().wait(0.2)  # two copies of one batch in flight at once (a sender's timeout, retried)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", slow_then_failing_fsync)
    outcomes: list[str] = []

    def send() -> None:
        try:
            FileStore.append(store, "shop", [rec(1)], batch="same")
            outcomes.append("stored")
        except DuplicateBatch:
            outcomes.append("duplicate")
    copies = [threading.Thread(target=send) for _ in range(2)]
    for t in copies:
        t.start()
    for t in copies:
        t.join()
    assert sorted(outcomes) == ["duplicate", "stored"]
    with pytest.raises(OSError, match="Input/output"):
        store.append("shop", [rec(2)], batch="fails")
    store.append("shop", [rec(3)], batch="after")
    monkeypatch.setattr(os, "fsync", real_fsync)
    problems: list[ReadProblem] = []
    got = [r["request"]["url"] for r in store.stream_records("shop", problems=problems)]
    assert got == ["http://shop/items/1", "http://shop/items/3"] and problems == [], \
        "stored once; the failed batch left nothing; the next one reads"


def test_housekeeping_runs_while_new_streams_open(tmp_path: Path) -> None:
    import sys
    import threading
    store = FileStore(tmp_path)
    for i in range(1000):  # a forwarder that has seen many pods
        store.append(f"shop.p.old-{i}", [rec(i)])
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the race comes at once, if it is there
    stop = threading.Event()
    errors: list[Exception] = []

    def tidy() -> None:
        while not stop.is_set():
            try:
                store.tidy()
            except Exception as exc:  # noqa: BLE001 - the test reports any
                errors.append(exc)
    housekeeper = threading.Thread(target=tidy)
    housekeeper.start()
    try:
        for i in range(300):  # a new pod's stream, one after another
            store.append(f"shop.p.pod-{i}", [rec(i)])
    finally:
        stop.set()
        housekeeper.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_a_stream_two_writers_took_at_once_is_read_in_recorded_order(tmp_path: Path) -> None:
    replicas = [FileStore(tmp_path), FileStore(tmp_path)]
    for i in range(8):  # the sidecar's batches alternate between the forwarder's replicas
        replicas[i % 2].append("shop", [rec(i)], batch=f"b{i}")
    assert len(_segments(tmp_path)) == 2
    assert [r["request"]["url"] for r in replicas[0].stream_records("shop")] == [
        f"http://shop/items/{i}" for i in range(8)]
    assert [r["request"]["url"] for r in replicas[0].read(replicas[0].cut("c", service="shop", start=0,
                                                                          end=1e12).name)] == [
        f"http://shop/items/{i}" for i in range(8)]
