"""Large and streaming bodies through the real sidecar process never hurt the app: a 1 GiB download and a
256 MiB upload pass byte for byte while the sidecar's memory stays under half an injected sidecar's limit;
server-sent events reach the client as they are sent; a decompression bomb costs the record its limit and
no more. The forwarder stores each pair with the start of its body and the body's length."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from controller.admission.inject import InjectConfig
from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from tests.capture.servers import serve
from tests.capture.test_processes import cli
from tests.helpers import stored_lines, wait_200

GiB, MiB = 1 << 30, 1 << 20
CHUNK = bytes(range(256)) * 256  # 64 KiB, the same every time: a download's digest is known up front
FIRST_EVENT = threading.Event()  # set by the client once it read the first server-sent event


@functools.cache
def bomb() -> bytes:
    """512 MiB of zeros gzip'd: about 0.5 MiB on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    return b"".join(packer.compress(zeros) for _ in range(512)) + packer.flush()


def _injected_limit() -> int:
    quantity = InjectConfig(image="x").memory_limit
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * MiB


class Bulk(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/events":
            return self._events()
        if self.path == "/bomb":
            return self._send(bomb(), [("Content-Encoding", "gzip"), ("Content-Type", "application/json")])
        size = int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for _ in range(size // len(CHUNK)):
            self.wfile.write(CHUNK)

    def do_POST(self) -> None:  # noqa: N802
        left, digest = int(self.headers["Content-Length"]), hashlib.sha256()
        while left:
            piece = self.rfile.read(min(left, 1 << 20))
            digest.update(piece)
            left -= len(piece)
        self._send(json.dumps({"sha256": digest.hexdigest()}).encode(), [("Content-Type", "application/json")])

    def _send(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        """One event, then — only once the client says it has it — the second: a proxy that held the stream
        back until it ended would never let the client see the first."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"data: first\n\n")
        self.wfile.flush()
        if FIRST_EVENT.wait(60):
            self.wfile.write(b"data: second\n\n")
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Sidecar:
    pid: int
    port: int
    store: Path

    def peak_rss(self) -> int:
        """The sidecar process's peak resident memory (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in stored_lines(self.store)]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    home = tmp_path_factory.mktemp("home")
    environ = {**os.environ, "REPLAYOPS_HOME": str(home), "REPLAYOPS_FORWARDER_TOKEN": "tok",
               "REPLAYOPS_DLP_KEY": "test-key"}
    fwd_port, listen, health = free_port(), free_port(), free_port()
    with serve(Bulk) as upstream:
        forwarder = cli("forwarder", "--port", str(fwd_port), "--host", "127.0.0.1", env=environ)
        proxy = cli("proxy", "--reverse", f"{listen}:{upstream}", "--forwarder", f"http://127.0.0.1:{fwd_port}",
                    "--service", "bulk", "--health-port", str(health), env=environ)  # the defaults, as injected
        try:
            wait_200(f"http://127.0.0.1:{fwd_port}/healthz")
            wait_200(f"http://127.0.0.1:{health}/healthz")
            yield Sidecar(proxy.pid, listen, home / "store")
        finally:
            stop_pid(proxy.pid)
            stop_pid(forwarder.pid)


def _stored(sidecar: Sidecar, path: str) -> dict[str, Any]:
    for _ in range(100):
        found = [r for r in sidecar.records() if str(r["request"]["url"]).endswith(path)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no record of {path} stored")


def test_a_1_gib_download_passes_byte_for_byte_in_bounded_memory(sidecar: Sidecar) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=60)
    conn.request("GET", f"/download/{GiB}")
    resp = conn.getresponse()
    want, got, size = hashlib.sha256(), hashlib.sha256(), 0
    for _ in range(GiB // len(CHUNK)):
        want.update(CHUNK)
    while piece := resp.read(1 << 20):
        got.update(piece)
        size += len(piece)
    conn.close()
    assert resp.status == 200 and size == GiB and got.digest() == want.digest()
    assert sidecar.peak_rss() < _injected_limit() // 2, f"the sidecar peaked at {sidecar.peak_rss() >> 20} MiB"
    record = _stored(sidecar, f"/download/{GiB}")
    response = record["response"]
    assert response["truncated"] == GiB and base64.b64decode(response["body"]) == CHUNK * (MiB // len(CHUNK))


def test_a_256_mib_upload_streams_to_the_app(sidecar: Sidecar) -> None:
    digest = hashlib.sha256()
    size = 256 * MiB

    def body() -> Iterator[bytes]:
        for _ in range(size // len(CHUNK)):
            digest.update(CHUNK)
            yield CHUNK
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=60)
    conn.request("POST", "/upload", body=body(), headers={"Content-Length": str(size)})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert resp.status == 200 and answer["sha256"] == digest.hexdigest()
    assert sidecar.peak_rss() < _injected_limit() // 2
    request = _stored(sidecar, "/upload")["request"]
    assert request["truncated"] == size and base64.b64decode(request["body"]) == CHUNK * (MiB // len(CHUNK))


def test_server_sent_events_reach_the_client_as_they_are_sent(sidecar: Sidecar) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=30)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline() == b"data: first\n"  # before the server sends the second, or ends
    FIRST_EVENT.set()
    assert resp.read() == b"\ndata: second\n\n"
    conn.close()
    record = _stored(sidecar, "/events")
    assert record["response"]["body"] == "data: first\n\ndata: second\n\n"
    assert "truncated" not in record["response"]


def test_a_decompression_bomb_costs_the_record_its_limit_and_the_app_gets_its_bytes(sidecar: Sidecar) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=30)
    conn.request("GET", "/bomb")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip" and resp.read() == bomb()
    conn.close()
    record = _stored(sidecar, "/bomb")
    response = record["response"]
    assert response["truncated"] == len(bomb()) and response["body"] == "\0" * MiB
    assert sidecar.peak_rss() < _injected_limit() // 2
