"""The sidecar's buffer is bounded in records and in bytes, and batches are bounded in bytes: it drops and
counts what does not fit, never blocking the app."""

from __future__ import annotations

import threading

from controller.capture.addon import Buffer, CaptureMetrics


def _dropped(metrics: CaptureMetrics) -> float:
    return metrics.dropped.labels("buffer-full")._value.get()


def test_records_beyond_the_byte_budget_are_dropped_and_counted() -> None:
    gate, batches = threading.Event(), []

    def deliver(batch: list[bytes]) -> None:
        gate.wait(10)  # the forwarder is slow: nothing leaves while the buffer fills
        batches.append(batch)
    metrics = CaptureMetrics()
    buffer = Buffer(deliver, metrics, capacity=1000, capacity_bytes=10_000, batch_bytes=4_000,
                    flush_interval=60, encode=lambda r: b"x" * r["size"])
    for _ in range(15):
        buffer.offer({"size": 1_000})
    assert _dropped(metrics) >= 5, "10,000 bytes hold 10 records of 1,000 (one may be on its way)"
    gate.set()
    buffer.close()
    sizes = [sum(map(len, b)) for b in batches]
    assert sum(sizes) + 1_000 * _dropped(metrics) == 15_000
    assert max(sizes) <= 4_000, f"a batch over its byte bound: {sizes}"


def test_a_record_larger_than_a_batch_goes_alone() -> None:
    batches: list[list[bytes]] = []
    buffer = Buffer(batches.append, CaptureMetrics(), batch_bytes=100, flush_interval=60, encode=lambda r: r["b"])
    buffer.offer({"b": b"y" * 500})
    buffer.offer({"b": b"z" * 10})
    buffer.close()
    assert [list(map(len, b)) for b in batches] == [[500], [10]]


def test_the_live_policy_follows_the_forwarders_answers_and_ignores_what_it_cannot_read() -> None:
    from controller.capture.addon import LivePolicy

    live = LivePolicy()
    assert not live.known and live.filter.keep({"id": "x", "request": {"method": "GET", "url": "http://a/"},
                                                "response": {"status": 200}}), "everything until an answer"
    live.update({"stored": 1, "policy": {"filters": {"exclude": [{"paths": ["/skip"]}]}, "sampling": 0.5}})
    assert live.known and live.filter.sampling == 0.5 and live.filter.exclude == [{"paths": ["/skip"]}]
    for odd in ({"policy": {"sampling": "lots"}}, {"policy": "none"}, {}):
        live.update(odd)
        assert live.filter.sampling == 0.5, f"{odd} replaced the policy in force"


def test_an_idle_sidecar_asks_for_the_policy_with_an_empty_batch() -> None:
    asked = threading.Event()

    def deliver(batch: list[bytes]) -> None:
        if batch == []:
            asked.set()
    buffer = Buffer(deliver, CaptureMetrics(), flush_interval=0.05, refresh=0.1, encode=lambda r: b"")
    try:
        assert asked.wait(5), "no empty batch was sent while idle"
    finally:
        buffer.close()
