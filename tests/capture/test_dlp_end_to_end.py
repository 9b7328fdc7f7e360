"""DLP with no holes, end to end: a corpus of secrets sent by real clients through every path the real
sidecar process records — HTTP/1.1 (JSON, form, multipart, binary, compressed, chunked; in headers,
cookies, query, path and body, both ways), HTTP/2, gRPC (plain and per-message compressed) and WebSocket
(text and binary, both ways) — reaches the real forwarder and the store, whose bytes (segments
decompressed, and every body decoded from base64 and decompressed) hold none of them. The app's traffic
is untouched: every client gets what the server sent."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from aiohttp import ClientSession, web

from controller import pki
from controller.capture import codecs
from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from controller.store import rrpair
from tests.capture.servers import serve_h2, ws_echo
from tests.capture.test_processes import cli
from tests.helpers import stored_lines, wait_200

CARD, EMAIL, AWS, CUSTOM = "4111 1111 1111 1111", "jane.doe@example.com", "AKIAIOSFODNN7EXAMPLE", "EMP-123456"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
BEARER = "abcDEF123ghiJKL456"
SECRETS = [CARD, CARD.replace(" ", ""), EMAIL, AWS, CUSTOM, JWT, BEARER]
TEXT = f"card {CARD} mail {EMAIL} key {AWS} jwt {JWT} employee {CUSTOM} auth Bearer {BEARER}"
DOC = {"card": CARD, "contact": {"email": EMAIL}, "keys": [AWS], "note": TEXT, "page": 2}
BINARY = b"\x00\xff\x10" + TEXT.encode() + b"\xfe\x00"  # not UTF-8: recorded base64, masked in place
POLICY = """apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {name: checkout, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  dlp: {patterns: [{type: custom, name: employee, regex: "EMP-[0-9]{6}"}]}
"""


async def _app_handler(request: web.Request) -> web.StreamResponse:
    """The app: echoes what it got (as JSON), or answers with the corpus compressed, chunked or binary."""
    kind = request.match_info["kind"]
    if kind == "compressed":
        codec = request.query["codec"]
        return web.Response(body=codecs.compress(json.dumps(DOC).encode(), codec),
                            headers={"Content-Encoding": codec, "Content-Type": "application/json"})
    if kind == "archive":  # a gzip file the app serves as such (no Content-Encoding)
        return web.Response(body=gzip.compress(json.dumps(DOC).encode()), content_type="application/gzip")
    if kind == "binary":
        return web.Response(body=BINARY, content_type="application/octet-stream")
    if kind == "chunked":
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for word in TEXT.split(" "):
            await resp.write(word.encode() + b" ")
        await resp.write_eof()
        return resp
    body = await request.read()
    return web.json_response({"path": request.path_qs, "body": body.decode("utf-8", "replace")},
                             headers={"Set-Cookie": f"session={BEARER}; Path=/"})


def _requests(base: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(method, httpx arguments) of each HTTP/1.1 request of the corpus."""
    yield "POST", {"url": f"{base}/app/json", "json": DOC,
                   "headers": {"Authorization": f"Bearer {JWT}", "X-Api-Key": AWS, "X-Note": f"card {CARD}",
                               "Cookie": f"sid={BEARER}; contact={EMAIL}; theme=dark"}}
    yield "GET", {"url": f"{base}/app/query", "params": {"email": EMAIL, "card": CARD, "emp": CUSTOM, "page": "2"}}
    yield "GET", {"url": f"{base}/app/users/{EMAIL}/cards/{CARD.replace(' ', '')}/emp/{CUSTOM}"}
    yield "POST", {"url": f"{base}/app/form", "data": {"user": "jane", "note": TEXT, "password": "hunter2-pass"}}
    yield "POST", {"url": f"{base}/app/multipart", "data": {"note": TEXT},
                   "files": {"upload": ("id.bin", BINARY, "application/octet-stream")}}
    yield "POST", {"url": f"{base}/app/binary", "content": BINARY,
                   "headers": {"Content-Type": "application/octet-stream"}}
    yield "POST", {"url": f"{base}/app/base64", "content": base64.b64encode(BINARY),
                   "headers": {"Content-Type": "application/octet-stream"}}
    yield "POST", {"url": f"{base}/app/chunked-upload", "content": _words(),
                   "headers": {"Content-Type": "text/plain"}}
    for codec in codecs.CODECS:
        yield "POST", {"url": f"{base}/app/upload-{codec}", "content": codecs.compress(json.dumps(DOC).encode(), codec),
                       "headers": {"Content-Encoding": codec, "Content-Type": "application/json"}}
        yield "GET", {"url": f"{base}/compressed/x", "params": {"codec": codec}}
    yield "GET", {"url": f"{base}/archive/x"}
    yield "GET", {"url": f"{base}/binary/x"}
    yield "GET", {"url": f"{base}/chunked/x"}


async def _words() -> AsyncIterator[bytes]:
    """The corpus's text, word by word: a chunked body."""
    for word in TEXT.split(" "):
        yield word.encode() + b" "


def _grpc_frame(message: bytes, compressed: bool) -> bytes:
    payload = gzip.compress(message) if compressed else message
    return bytes([int(compressed)]) + struct.pack(">I", len(payload)) + payload


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text or s in unquote(text) or s.replace(" ", "+") in text]


def _decoded_bodies(record: dict[str, Any]) -> Iterator[bytes]:
    """Every body of a record as bytes — decoded from base64, decompressed when compressed, gRPC frames'
    messages unpacked — and every WebSocket message."""
    pieces = [rrpair.decode_body(record[side]) for side in ("request", "response")]
    pieces += [base64.b64decode(m["data"]) if m["type"] == "binary" else m["data"].encode()
               for m in record.get("websocket") or []]
    for data in pieces:
        yield data
        if codec := codecs.sniff(data):
            yield codecs.decompress(data, codec, 1 << 24)
        at = 0
        while data[:1] in (b"\x00", b"\x01") and at + 5 <= len(data):
            size = struct.unpack(">I", data[at + 1:at + 5])[0]
            message = data[at + 5:at + 5 + size]
            yield gzip.decompress(message) if data[at] == 1 else message
            at += 5 + size


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The real forwarder (the policy from a file) and the real sidecar: a reverse listener in front of the
    app, another in front of its WebSocket server, and the outbound proxy unwrapping TLS."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    ca = pki.make_ca("test-upstream-ca")
    (tmp_path / "upstream-ca.pem").write_bytes(ca.cert_pem)
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home"), "REPLAYOPS_FORWARDER_TOKEN": "tok",
           "REPLAYOPS_DLP_KEY": "test-key"}
    fwd, app, listen, outbound, health = (free_port() for _ in range(5))
    with serve_h2(pki.issue(ca, "upstream", ips=("127.0.0.1",)), tmp_path) as h2_port:
        forwarder = cli("forwarder", "--port", str(fwd), "--host", "127.0.0.1", "--policy-file",
                        str(tmp_path / "policy.yaml"), env=env)
        proxy = cli("proxy", "--reverse", f"{listen}:{app}", "--outbound", str(outbound), "--tls-unwrap",
                    "--ca-dir", str(tmp_path / "ca"), "--upstream-ca", str(tmp_path / "upstream-ca.pem"),
                    "--forwarder", f"http://127.0.0.1:{fwd}", "--policy", "shop/checkout", "--service", "checkout",
                    "--health-port", str(health), env=env)
        try:
            wait_200(f"http://127.0.0.1:{fwd}/healthz")
            wait_200(f"http://127.0.0.1:{health}/healthz")
            yield {"app": app, "listen": listen, "outbound": outbound, "h2": h2_port, "tmp": tmp_path,
                   "store": tmp_path / "home" / "store"}
        finally:
            stop_pid(proxy.pid)
            stop_pid(forwarder.pid)


async def _send_corpus(stack: dict[str, Any]) -> int:
    """Serve the app, send every request of the corpus through the sidecar; the number of pairs sent."""
    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    app.router.add_route("*", "/{kind}/{rest:.*}", _app_handler)
    runner = web.AppRunner(app, auto_decompress=False)  # the app echoes bodies as they came
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", stack["app"]).start()
    sent = 0
    try:
        base = f"http://127.0.0.1:{stack['listen']}"
        async with httpx.AsyncClient(timeout=10) as client:
            for method, kwargs in _requests(base):
                resp = await client.request(method, **kwargs)
                assert resp.status_code == 200, (kwargs["url"], resp.status_code)
                if kwargs["url"].endswith("/compressed/x"):
                    assert resp.json() == DOC, "the client gets the app's answer, decoded as it was sent"
                if kwargs["url"].endswith("/chunked/x"):
                    assert resp.text == "".join(w + " " for w in TEXT.split(" "))
                sent += 1
        async with ClientSession() as session, session.ws_connect(f"{base}/ws") as ws:
            await ws.send_str(TEXT)
            assert (await ws.receive()).data == f"echo:{TEXT}"
            await ws.send_bytes(BINARY)
            assert (await ws.receive()).data == b"echo:" + BINARY
        sent += 1
        bundle = str(stack["tmp"] / "ca" / "ca-bundle.pem")
        async with httpx.AsyncClient(http2=True, proxy=f"http://127.0.0.1:{stack['outbound']}", verify=bundle,
                                     timeout=10) as h2:
            h2_base = f"https://127.0.0.1:{stack['h2']}"
            resp = await h2.post(f"{h2_base}/h2/users/{EMAIL}", json=DOC,
                                 headers={"authorization": f"Bearer {JWT}", "x-api-key": AWS})
            assert resp.http_version == "HTTP/2" and resp.status_code == 200
            message = b"\x0a" + bytes([len(TEXT)]) + TEXT.encode()  # protobuf field 1, a string
            for compressed in (False, True):
                frame = _grpc_frame(message, compressed)
                headers = {"content-type": "application/grpc", "te": "trailers"}
                if compressed:
                    headers["grpc-encoding"] = "gzip"
                got = await h2.post(f"{h2_base}/shop.Notes/Put", content=frame, headers=headers)
                assert got.status_code == 200 and got.content == frame, "the gRPC answer is the server's"
            sent += 3
    finally:
        await runner.cleanup()
    return sent


def _stored(store: Path, want: int) -> tuple[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + 30
    while True:
        lines = stored_lines(store)
        raw, records = "\n".join(lines), [json.loads(line) for line in lines]
        if len(records) >= want or time.monotonic() > deadline:
            return raw, records
        time.sleep(0.2)


def test_no_secret_of_the_corpus_reaches_the_store_by_any_path_the_sidecar_records(stack: dict[str, Any]) -> None:
    sent = asyncio.run(_send_corpus(stack))
    raw, records = _stored(stack["store"], sent)
    assert len(records) == sent, f"stored {len(records)} of {sent} pairs"
    assert {r["protocol"] for r in records} == {"http/1.1", "http/2", "grpc", "websocket"}
    assert _leaks(raw) == [], "a secret in the store's segments"
    for record in records:
        for data in _decoded_bodies(record):
            assert _leaks(data.decode("latin-1")) == [], f"a secret in a body of {record['request']['url']}"
    grpc = [r for r in records if r["protocol"] == "grpc"]
    assert all(len(rrpair.decode_body(r["request"])) == len(rrpair.decode_body(r["response"])) for r in grpc)
    assert raw.count("[redacted:employee:") >= 10, "the policy's own pattern, beside the built-in ones"
    paths = {urlsplit(r["request"]["url"]).path: r for r in records}
    doc = json.loads(rrpair.decode_body(paths["/app/json"]["request"]))
    assert doc["page"] == 2 and doc["card"].startswith("[redacted:creditCard:"), "what is not secret is kept"
    assert paths["/app/query"]["request"]["url"].endswith("&page=2")
