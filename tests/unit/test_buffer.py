"""The sidecar's buffer is bounded in records and in bytes, and batches are bounded in bytes: it drops and
counts what does not fit, never blocking the app."""

from __future__ import annotations

import threading
import time

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
    assert live.filter.keep({"id": "x", "request": {"method": "GET", "url": "http://a/"},
                                                "response": {"status": 200}}), "everything until an answer"
    live.update({"stored": 1, "policy": {"filters": {"exclude": [{"paths": ["/skip"]}]}, "sampling": 0.5}})
    assert live.filter.sampling == 0.5 and live.filter.exclude == [{"paths": ["/skip"]}]
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


def test_a_batch_that_failed_is_retried_as_the_same_batch_and_a_refused_one_is_dropped() -> None:
    from controller.capture.addon import Batch, Refused

    tries: list[tuple[str, int]] = []
    answers = [Refused("forwarder answered 503", 503), ConnectionRefusedError(111, "refused"), None,
               Refused("forwarder answered 422: unknown CapturePolicy", 422)]

    def deliver(batch: list[bytes]) -> None:
        if not batch:
            return  # the empty batch that asks for the policy
        assert isinstance(batch, Batch)
        tries.append((batch.id, len(batch)))
        if (answer := answers.pop(0)) is not None:
            raise answer
    metrics = CaptureMetrics()
    buffer = Buffer(deliver, metrics, flush_interval=0.02, retry_first=0.05, retry_max=0.2, encode=lambda r: b"x")
    buffer.offer({})
    deadline = time.monotonic() + 10
    while len(tries) < 3 and time.monotonic() < deadline:
        threading.Event().wait(0.02)
    buffer.offer({})
    while len(tries) < 4 and time.monotonic() < deadline:
        threading.Event().wait(0.02)
    buffer.close()
    assert [n for _, n in tries] == [1, 1, 1, 1] and len({i for i, _ in tries[:3]}) == 1, tries
    assert tries[3][0] != tries[0][0], "the next batch has its own id"
    assert metrics.retries._value.get() == 2 and metrics.sent._value.get() == 1
    assert metrics.dropped.labels("sink-error")._value.get() == 1, "a refusal for the batch itself: dropped"


def test_a_batch_failing_longer_than_retry_for_is_dropped_and_the_next_goes() -> None:
    from controller.capture.addon import Refused

    sent: list[int] = []

    def deliver(batch: list[bytes]) -> None:
        if batch and batch[0] == b"poison":
            raise Refused("forwarder answered 500", 500)  # the same every time
        if batch:
            sent.append(len(batch))
    metrics = CaptureMetrics()
    buffer = Buffer(deliver, metrics, flush_interval=0.02, retry_first=0.02, retry_max=0.05, retry_for=0.3,
                    batch_size=1, encode=lambda r: r["b"])
    buffer.offer({"b": b"poison"})
    buffer.offer({"b": b"fine"})
    deadline = time.monotonic() + 10
    while not sent and time.monotonic() < deadline:
        time.sleep(0.02)
    buffer.close()
    assert sent == [1] and metrics.dropped.labels("sink-error")._value.get() == 1
    assert metrics.retries._value.get() >= 2
