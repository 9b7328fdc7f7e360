"""The replayops mitmproxy addon: turn finished flows into RRPairs and hand them to a fail-open buffer.

Inbound flows arrive through the reverse or transparent listeners, outbound
ones through the forward proxy (``HTTP_PROXY``). Without TLS unwrapping,
outbound TLS is passed through untouched. The buffer is bounded in records and
in bytes: when it is full, or the forwarder is slow or down, records are
dropped and counted — the application's own traffic is never held up by capture.

The policy's filters and sampling come from the forwarder at run time, in each
batch's answer (``LivePolicy``): a pair they drop is never turned into a record.
Until the first answer every pair is recorded (the forwarder filters them); an
idle sidecar asks again every ``refresh`` seconds with an empty batch.

A body longer than the limit (``--max-body``), or of unknown length (chunked,
HTTP/2 without content-length, server-sent events, gRPC streams), is streamed:
each chunk goes on as it arrives, and only the first ``limit`` bytes are kept
for the record, which says how long the body was (``truncated``). Decoding a
compressed body for the record stops at the limit too.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gzip
import json
import os
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any

from mitmproxy import http, tls
from prometheus_client import CollectorRegistry, Counter, Gauge

from controller import logs
from controller.capture import codecs
from controller.capture.filters import Filter
from controller.policy import BUFFER_BYTES, MAX_BODY_BYTES
from controller.store import rrpair

log = logs.get("capture")
INBOUND_MODES = ("reverse", "transparent")


class CaptureMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.captured = Counter("replayops_capture_pairs_captured", "RRPairs recorded", ["direction"], registry=r)
        self.sent = Counter("replayops_capture_pairs_sent", "RRPairs delivered to the forwarder or store",
                            registry=r)
        self.dropped = Counter("replayops_capture_pairs_dropped", "RRPairs dropped (buffer full or sink down)",
                               ["reason"], registry=r)
        self.buffer = Gauge("replayops_capture_buffer_fill", "RRPairs waiting in the buffer", registry=r,
                            multiprocess_mode="livesum")
        self.upstream_errors = Counter("replayops_capture_upstream_errors", "Flows that failed upstream",
                                       registry=r)
        self.retries = Counter("replayops_capture_batch_retries", "Batches tried again after a failure",
                               registry=r)
        self.filtered = Counter("replayops_capture_pairs_filtered", "Pairs the policy's filters or sampling "
                                "dropped before they were recorded", registry=r)


def _headers(message: http.Message) -> list[list[str]]:
    return [[k, v] for k, v in message.headers.items(multi=True)]


WS_KEPT, WS_DROPPED = "replayops.ws.kept", "replayops.ws.dropped"  # a socket's bytes kept, messages not


class Tee:
    """A streamed body's chunks passed on as they come (the same objects: no copy); the first ``limit``
    bytes kept for the record, and the length counted."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.kept = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if len(self.kept) < self.limit:
            self.kept += chunk[:self.limit - len(self.kept)]
        return chunk


def streams(message: http.Message, limit: int) -> bool:
    """Whether ``message``'s body goes through unbuffered: longer than ``limit``, or of unknown length."""
    length = message.headers.get("content-length")
    return not (length and length.isdigit() and int(length) <= limit)


def _body(message: http.Message, limit: int) -> tuple[bytes | None, bool, int | None]:
    """The body as recorded: decoded (DLP must see plaintext) up to ``limit`` bytes; whether it was
    content-encoded; and, when the record holds only its start, the body's length on the wire."""
    tee = message.stream if isinstance(message.stream, Tee) and message.raw_content is None else None
    raw = bytes(tee.kept) if tee else message.raw_content
    if raw is None:
        return None, False, None
    size = tee.size if tee else len(raw)
    cut = size > len(raw)
    codec = codecs.declared(message.headers.get("content-encoding", ""))
    if raw and codec:
        with contextlib.suppress(*codecs.ERRORS):  # not what it says: kept as it came, encoding and all
            decoded, whole = codecs.decompress_prefix(raw, codec, limit)
            return decoded, True, size if cut or not whole else None
    return raw, False, size if cut else None


def _view(flow: http.HTTPFlow, record_id: str) -> dict[str, Any]:
    """What a policy's filters and sampling judge of a flow, before it is recorded."""
    return {"id": record_id, "request": {"method": flow.request.method, "url": flow.request.url},
            "response": {"status": flow.response.status_code if flow.response else 0}}


def to_record(flow: http.HTTPFlow, service: str, limit: int = MAX_BODY_BYTES,
              record_id: str | None = None) -> dict[str, Any]:
    """The RRPair of a finished flow; bodies kept up to ``limit`` bytes."""
    req, resp = flow.request, flow.response
    assert resp is not None
    mode = flow.client_conn.proxy_mode.type_name
    direction = "inbound" if mode in INBOUND_MODES else "outbound"
    req_body, req_coded, req_cut = _body(req, limit)
    resp_body, resp_coded, resp_cut = _body(resp, limit)
    tags = {"mode": mode}
    req_headers, resp_headers = _headers(req), _headers(resp)
    for coded, headers in ((req_coded, req_headers), (resp_coded, resp_headers)):
        if coded:  # stored decoded: drop what described the encoding
            headers[:] = [h for h in headers if h[0].lower() not in ("content-encoding", "content-length")]
    ctype = (req.headers.get("content-type") or "").lower()
    protocol = req.http_version.lower().replace("http/2.0", "http/2")
    if ctype.startswith("application/grpc"):
        protocol = "grpc"
    if flow.websocket is not None:
        protocol = "websocket"
    record = rrpair.make(
        method=req.method, url=req.url, request_headers=req_headers, request_body=req_body,
        status=resp.status_code, reason=resp.reason, response_headers=resp_headers, response_body=resp_body,
        started=req.timestamp_start, finished=resp.timestamp_end or time.time(), direction=direction,
        service=service, protocol=protocol, tags=tags, record_id=record_id)
    for key, cut in (("request", req_cut), ("response", resp_cut)):
        if cut is not None:
            record[key]["truncated"] = cut
    if flow.metadata.get(WS_DROPPED):
        record["tags"]["websocketDropped"] = str(flow.metadata[WS_DROPPED])  # messages past the limit, unkept
    if flow.websocket is not None:
        record["websocket"] = [
            {"fromClient": m.from_client, "type": "text" if m.is_text else "binary", "ts": m.timestamp,
             "data": m.text if m.is_text else base64.b64encode(m.content).decode()}
            for m in flow.websocket.messages]
    return record


class LivePolicy:
    """The policy's filters and sampling as the forwarder last answered (every pair until it has)."""

    def __init__(self) -> None:
        self.filter = Filter()

    def update(self, answer: Mapping[str, Any]) -> None:
        early = answer.get("policy")
        if isinstance(early, Mapping):
            try:
                self.filter = Filter.from_policy(early)
            except (TypeError, ValueError, AttributeError):  # an answer we cannot read leaves the last in force
                return


class Batch(list[Any]):
    """Records sent together, with the id and time the forwarder stores them by: a retry is the same
    batch, which the forwarder stores once."""

    def __init__(self, items: list[Any]) -> None:
        super().__init__(items)
        self.id, self.created = uuid.uuid4().hex, time.time()


class Refused(RuntimeError):
    """The forwarder answered a batch with something other than 202; ``status`` says whether to retry."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def retryable(exc: Exception) -> bool:
    """A failure a later try may not meet: no connection, a timeout, 408, 429, 5xx. A refusal for the
    batch itself (a bad token, an unknown policy, a malformed batch) is not retried."""
    if isinstance(exc, Refused):
        return exc.status in (408, 429) or exc.status >= 500
    return isinstance(exc, OSError | HTTPException)


class Buffer:
    """A bounded buffer drained by a background thread into ``deliver`` in batches (size or time).

    Bounded in records (``capacity``) and, for encoded records, in bytes (``capacity_bytes``); a batch
    holds at most ``batch_size`` records and ``batch_bytes`` bytes (one record more than that goes alone).
    A batch that fails in a way worth retrying is tried again, the same batch, with capped exponential
    backoff (``retry_first`` doubling to ``retry_max``, with jitter; for at most ``retry_for`` seconds, then
    it is dropped and counted, so one batch never stalls the rest); it stays in the budget meanwhile, so
    records that come while the forwarder is away fill the buffer and, once it is full, are dropped and
    counted — the app is never held up. ``encode`` runs on the offering thread: records kept as bytes cost
    the sender thread no GIL time to serialise and the cyclic GC nothing to scan.
    """

    def __init__(self, deliver: Callable[[list[Any]], None], metrics: CaptureMetrics, *,
                 capacity: int = 10000, capacity_bytes: int = BUFFER_BYTES, batch_size: int = 500,
                 batch_bytes: int = 8 << 20, flush_interval: float = 1.0, refresh: float = 10.0,
                 retry_first: float = 0.5, retry_max: float = 30.0, retry_for: float = 300.0,
                 encode: Callable[[dict[str, Any]], Any] | None = None, policy: LivePolicy | None = None) -> None:
        self.deliver, self.metrics, self.encode = deliver, metrics, encode
        self.policy = policy or LivePolicy()
        self.refresh = refresh  # an idle buffer with a policy to learn sends an empty batch this often
        self._delivered = float("-inf")
        self.capacity, self.capacity_bytes = capacity, capacity_bytes
        self.batch_size, self.batch_bytes, self.flush_interval = batch_size, batch_bytes, flush_interval
        self.retry_first, self.retry_max, self.retry_for = retry_first, retry_max, retry_for
        self._sending = threading.Lock()  # one drain at a time (the sender, and a close whose join timed out)
        self._items: collections.deque[Any] = collections.deque()
        self._bytes = 0  # of the encoded records held, the batch being retried included
        self._retry: Batch | None = None  # the batch to try again, at ``_retry_at`` (monotonic)
        self._retry_at, self._attempts, self._failing_since = 0.0, 0, 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-sender", daemon=True)
        self._thread.start()

    def offer(self, record: dict[str, Any]) -> None:
        """Never blocks: a full buffer drops the record and counts it."""
        item = self.encode(record) if self.encode else record
        size = _size(item)
        with self._lock:
            if len(self._items) >= self.capacity or self._bytes + size > self.capacity_bytes:
                self.metrics.dropped.labels("buffer-full").inc()
                return
            self._items.append(item)
            self._bytes += size
            count, held = len(self._items), self._bytes
        self.metrics.buffer.set(count)
        if count >= self.batch_size or held >= self.batch_bytes:
            self._wake.set()

    def _take(self) -> Batch:
        items: list[Any] = []
        size = 0
        with self._lock:
            while self._items and len(items) < self.batch_size and (
                    not items or size + _size(self._items[0]) <= self.batch_bytes):
                item = self._items.popleft()
                items.append(item)
                size += _size(item)
            self.metrics.buffer.set(len(self._items))
        return Batch(items)

    def _settle(self, batch: Batch) -> None:
        """``batch`` delivered or dropped: out of the budget."""
        with self._lock:
            self._bytes -= sum(map(_size, batch))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        with self._sending:
            self._send()

    def _send(self) -> None:
        if (not self._items and self._retry is None and self.encode
                and time.monotonic() - self._delivered >= self.refresh):
            with contextlib.suppress(Exception):  # asks the forwarder for the policy; a failure: next time
                self.deliver([])
                self._delivered = time.monotonic()
        while True:
            if self._retry is not None and time.monotonic() < self._retry_at and not self._stop.is_set():
                return  # backing off
            batch, self._retry = self._retry or self._take(), None
            if not batch:
                return
            try:
                self.deliver(batch)
            except Exception as exc:  # the sink is slow, down or refusing
                if not self._attempts:
                    self._failing_since = time.monotonic()
                if (retryable(exc) and not self._stop.is_set()
                        and time.monotonic() - self._failing_since < self.retry_for):
                    self._attempts += 1
                    delay = min(self.retry_max, self.retry_first * 2 ** (self._attempts - 1))
                    self._retry, self._retry_at = batch, time.monotonic() + delay * random.uniform(0.8, 1.2)
                    self.metrics.retries.inc()
                    log.warning("batch not delivered; retrying", extra=logs.fields(
                        records=len(batch), batch=batch.id, attempt=self._attempts, retry_in=round(delay, 2),
                        error=str(exc)[:300]))
                    return
                self.metrics.dropped.labels("sink-error").inc(len(batch))
                log.warning("batch dropped", extra=logs.fields(records=len(batch), batch=batch.id,
                                                               error=str(exc)[:300]))
                if self._stop.is_set():  # stopping and the forwarder does not answer: no wait per batch left
                    while rest := self._take():
                        self.metrics.dropped.labels("sink-error").inc(len(rest))
                        self._settle(rest)
            else:
                self._delivered = time.monotonic()
                self.metrics.sent.inc(len(batch))
            self._attempts = 0
            self._settle(batch)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is buffered (each batch tried once more), then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._drain()


def _size(item: Any) -> int:
    return len(item) if isinstance(item, bytes) else 0


def json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def bearer(token: str, token_file: str = "") -> Callable[[], str]:
    """The sidecar's credential, asked for before each batch: ``token_file`` (its pod's ServiceAccount token,
    which the kubelet renews: read again when it changed), else ``token``."""
    seen: list[Any] = [None, ""]  # (what the file was, its token)

    def current() -> str:
        if token_file:
            try:
                stat = os.stat(token_file)
                if seen[0] != (stat.st_ino, stat.st_mtime_ns):
                    with open(token_file, encoding="utf-8") as fh:
                        seen[:] = [(stat.st_ino, stat.st_mtime_ns), fh.read().strip()]
                return str(seen[1])
            except OSError:
                pass
        return token
    return current


def forwarder_sink(url: str, token: Callable[[], str], *, policy: str, stream: str, timeout: float = 2.0,
                   on_answer: Callable[[Mapping[str, Any]], None] | None = None) -> Callable[[list[bytes]], None]:
    """Deliver batches of JSON-encoded records to the forwarder: gzip'd, bearer token, short timeout, over one
    kept-alive connection (the standard library's: the sidecar starts without an HTTP client library), used by
    one batch at a time. A connection the forwarder closed while idle is replaced once, on the spot; a timeout
    is not retried (the forwarder may have the batch: the buffer decides)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/") + "/v1/batches"
    kind = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    head = json.dumps({"policy": policy, "stream": stream})[:-1]
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    conn: list[HTTPConnection] = []
    lock = threading.Lock()  # callers on several threads share the one connection

    def post(body: bytes, credential: str) -> tuple[int, bytes]:
        reused = bool(conn)
        if not conn:
            conn.append(kind(parts.hostname or "", parts.port, timeout=timeout))
        try:
            conn[0].request("POST", path, body=body, headers={**headers, "Authorization": f"Bearer {credential}"})
            resp = conn[0].getresponse()
            return resp.status, resp.read()
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):  # RemoteDisconnected among them
            conn.pop().close()
            if reused:
                return post(body, credential)
            raise
        except (OSError, HTTPException):
            conn.pop().close()
            raise

    def locked_post(body: bytes, credential: str) -> tuple[int, bytes]:
        with lock:
            return post(body, credential)

    def deliver(batch: list[bytes]) -> None:
        credential = token()
        if not credential:
            raise RuntimeError("no forwarder token (no --token-file, and $REPLAYOPS_FORWARDER_TOKEN is empty)")
        ids = f', "id": "{batch.id}", "created": {batch.created!r}' if isinstance(batch, Batch) else ""
        body = (head + ids + ', "records": [').encode() + b",".join(batch) + b"]}"
        status, text = locked_post(gzip.compress(body, 1), credential)  # zlib releases the GIL
        if status != 202:
            raise Refused(f"forwarder answered {status}: {text[:200].decode(errors='replace')}", status)
        if on_answer is not None:
            with contextlib.suppress(ValueError):
                answer = json.loads(text)
                if isinstance(answer, dict):
                    on_answer(answer)
    return deliver


@dataclass(frozen=True)
class Sink:
    """Where a sidecar delivers: the forwarder (plain values, so it can cross to worker processes)."""

    url: str
    token: str
    policy: str
    stream: str
    capacity: int = 10000
    capacity_bytes: int = BUFFER_BYTES
    token_file: str = ""  # read before each batch when it exists (the pod's ServiceAccount token), else token

    def buffer(self, metrics: CaptureMetrics) -> Buffer:
        live = LivePolicy()
        deliver = forwarder_sink(self.url, bearer(self.token, self.token_file), policy=self.policy,
                                 stream=self.stream, on_answer=live.update)
        return Buffer(deliver, metrics, capacity=self.capacity, capacity_bytes=self.capacity_bytes,
                      encode=json_bytes, policy=live)


class Recorder:
    """The addon. ``tls_unwrap=False`` passes outbound TLS through without looking inside; bodies longer
    than ``max_body``, or of unknown length, stream through (``Tee``)."""

    def __init__(self, buffer: Buffer, metrics: CaptureMetrics, service: str, *, tls_unwrap: bool,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.buffer, self.metrics, self.service, self.tls_unwrap = buffer, metrics, service, tls_unwrap
        self.max_body = max_body

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if not self.tls_unwrap and data.context.client.proxy_mode.type_name not in INBOUND_MODES:
            data.ignore_connection = True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if streams(flow.request, self.max_body):
            flow.request.stream = Tee(self.max_body)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and streams(flow.response, self.max_body):
            flow.response.stream = Tee(self.max_body)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._offer(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """A long-lived socket keeps its first ``max_body`` bytes of messages; later ones pass, unkept."""
        assert flow.websocket is not None
        kept = flow.metadata.get(WS_KEPT, 0) + len(flow.websocket.messages[-1].content)
        if kept > self.max_body or WS_DROPPED in flow.metadata:  # the record keeps a prefix of the session
            flow.websocket.messages.pop()  # sent all the same: the layer holds it
            flow.metadata[WS_DROPPED] = flow.metadata.get(WS_DROPPED, 0) + 1
        else:
            flow.metadata[WS_KEPT] = kept

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._offer(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.metrics.upstream_errors.inc()

    def _offer(self, flow: http.HTTPFlow) -> None:
        record_id, policy = str(uuid.uuid4()), self.buffer.policy.filter
        try:
            kept = policy.everything or policy.keep(_view(flow, record_id))
        except Exception:  # a policy that cannot judge it: recorded, the forwarder decides
            kept = True
        if not kept:  # dropped before any recording
            self.metrics.filtered.inc()
            return
        try:
            record = to_record(flow, self.service, self.max_body, record_id)
            self.buffer.offer(record)
        except Exception as exc:  # a flow we cannot read must not disturb the proxy
            self.metrics.dropped.labels("unreadable").inc()
            log.warning("flow not recorded", extra=logs.fields(error=str(exc)[:300]))
            return
        self.metrics.captured.labels(record["direction"]).inc()
