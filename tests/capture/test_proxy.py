"""The capturing proxy with real clients (requests, httpx, curl) and real upstreams on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from mitmproxy import connection
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server_hooks import ClientConnectedHook

from controller import pki
from controller.admission import inject
from controller.capture.addon import Buffer, CaptureMetrics
from controller.capture.proxy import CaptureProxy, ProxyConfig
from controller.devcluster.cluster import free_port
from tests.capture.servers import serve


class Running:
    def __init__(self, config: ProxyConfig) -> None:
        self.records: list[dict[str, Any]] = []
        self.metrics = CaptureMetrics()
        self.proxy = CaptureProxy(config, Buffer(self.records.extend, self.metrics, flush_interval=0.05),
                                  self.metrics)
        self.proxy.start()

    def wait(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.records) >= n, f"recorded {len(self.records)} of {n}"
        return self.records


@pytest.fixture
def upstream() -> Iterator[int]:
    with serve() as port:
        yield port


def start(**config: Any) -> Running:
    return Running(ProxyConfig(listen_host="127.0.0.1", service="checkout", **config))


def test_inbound_reverse_and_outbound_forward_are_both_recorded(upstream: int) -> None:
    listen, out = free_port(), free_port()
    run = start(reverse=[(listen, f"http://127.0.0.1:{upstream}")], outbound=out)
    try:
        r = requests.post(f"http://127.0.0.1:{listen}/api/orders?id=7", json={"items": ["apple"]}, timeout=5)
        assert r.status_code == 200 and r.json()["path"] == "/api/orders?id=7"
        with httpx.Client(proxy=f"http://127.0.0.1:{out}") as client:
            assert client.get(f"http://127.0.0.1:{upstream}/prices/apple").status_code == 200
        curl = subprocess.run(["curl", "-sf", "-x", f"http://127.0.0.1:{out}", f"http://127.0.0.1:{upstream}/c"],
                              capture_output=True, text=True, timeout=10)
        assert curl.returncode == 0 and json.loads(curl.stdout)["path"] == "/c"
        records = run.wait(3)
    finally:
        run.proxy.stop()
    inbound = [r for r in records if r["direction"] == "inbound"]
    outbound = [r for r in records if r["direction"] == "outbound"]
    assert len(inbound) == 1 and len(outbound) == 2
    assert inbound[0]["request"]["method"] == "POST"
    assert json.loads(inbound[0]["request"]["body"]) == {"items": ["apple"]}
    assert inbound[0]["response"]["status"] == 200 and inbound[0]["service"] == "checkout"
    assert sorted(r["request"]["url"].rsplit("/", 1)[1] for r in outbound) == ["apple", "c"]
    assert all(r["version"] == 1 and r["duration"] >= 0 for r in records)


def test_clients_from_public_addresses_are_not_blocked(upstream: int) -> None:
    """mitmdump's default ``Block`` addon kills clients with a global address; a sidecar must not.

    The hook chain of the running proxy is asked about a client at a public address (no packet
    leaves the machine: the hook decides before any I/O).
    """
    listen = free_port()
    run = start(reverse=[(listen, f"http://127.0.0.1:{upstream}")])
    try:
        assert run.proxy.master and run.proxy.loop
        client = connection.Client(peername=("8.8.8.8", 40000), sockname=("127.0.0.1", listen),
                                   proxy_mode=ProxyMode.parse(f"reverse:http://127.0.0.1:{upstream}"))
        asyncio.run_coroutine_threadsafe(run.proxy.master.addons.handle_lifecycle(ClientConnectedHook(client)),
                                         run.proxy.loop).result(5)
        assert client.error is None
        assert requests.get(f"http://127.0.0.1:{listen}/still-served", timeout=5).status_code == 200
    finally:
        run.proxy.stop()


def _tls_upstream(tmp_path: Path) -> tuple[pki.KeyPair, pki.KeyPair]:
    ca = pki.make_ca("test-upstream-ca")
    (tmp_path / "upstream-ca.pem").write_bytes(ca.cert_pem)
    return ca, pki.issue(ca, "upstream", ips=("127.0.0.1",), dns=("localhost",))


def test_outbound_https_is_recorded_through_tls_unwrapping(tmp_path: Path) -> None:
    """As injected: the CA (with its key) in the sidecar's own directory, the app's trust — certificates
    only — in the directory the app's containers mount."""
    _, cert = _tls_upstream(tmp_path)
    with serve(tls=cert, cert_dir=tmp_path) as port:
        out = free_port()
        run = start(outbound=out, tls_unwrap=True, ca_dir=tmp_path / "run", trust_dir=tmp_path / "ca",
                    upstream_ca=tmp_path / "upstream-ca.pem")
        try:
            bundle = tmp_path / "ca" / "ca-bundle.pem"
            assert bundle.is_file() and (tmp_path / "ca" / "ca.pem").is_file()
            assert {p.name for p in (tmp_path / "ca").iterdir()} == {"ca.pem", "ca-bundle.pem", "truststore.jks"}
            assert not [p for p in (tmp_path / "ca").iterdir() if b"PRIVATE KEY" in p.read_bytes()], \
                "the app's containers must not get the CA's private key"
            assert b"PRIVATE KEY" in (tmp_path / "run" / "mitmproxy-ca.pem").read_bytes()
            r = requests.get(f"https://127.0.0.1:{port}/secure?q=1", proxies={"https": f"http://127.0.0.1:{out}"},
                             verify=str(bundle), timeout=5)
            assert r.status_code == 200
            records = run.wait(1)
        finally:
            run.proxy.stop()
    assert records[0]["request"]["url"] == f"https://127.0.0.1:{port}/secure?q=1"
    assert json.loads(records[0]["response"]["body"])["path"] == "/secure?q=1"


def _java_tool_options(ca_dir: Path) -> str:
    """JAVA_TOOL_OPTIONS as the injector renders it for TLS unwrapping, pointed at ``ca_dir``."""
    policy = {"outbound": {"enabled": True, "tlsUnwrap": True}}
    env = {e["name"]: e["value"] for e in inject._app_env(policy)}
    return env["JAVA_TOOL_OPTIONS"].replace(inject.CA_DIR, str(ca_dir))


def test_a_java_app_trusts_the_unwrapping_ca_through_the_injected_truststore(tmp_path: Path) -> None:
    if not shutil.which("java"):
        pytest.skip("no java on this machine")
    _, cert = _tls_upstream(tmp_path)
    with serve(tls=cert, cert_dir=tmp_path) as port:
        out = free_port()
        run = start(outbound=out, tls_unwrap=True, ca_dir=tmp_path / "ca", upstream_ca=tmp_path / "upstream-ca.pem")
        try:
            env = {**os.environ, "JAVA_TOOL_OPTIONS": _java_tool_options(tmp_path / "ca")}
            java = subprocess.run(["java", str(Path(__file__).with_name("java") / "Get.java"),
                                   f"https://127.0.0.1:{port}/from-java", str(out)], env=env,
                                  capture_output=True, text=True, timeout=120)
            untrusted = subprocess.run(["java", str(Path(__file__).with_name("java") / "Get.java"),
                                        f"https://127.0.0.1:{port}/no-truststore", str(out)],
                                       capture_output=True, text=True, timeout=120)
            records = run.wait(1)
        finally:
            run.proxy.stop()
    assert java.returncode == 0, java.stderr[-2000:]
    assert java.stdout.startswith("200 ") and "/from-java" in java.stdout
    assert [r["request"]["url"] for r in records] == [f"https://127.0.0.1:{port}/from-java"]
    # without the truststore the JVM refuses our CA: the test above is not passing by accident
    assert untrusted.returncode != 0 and "PKIX" in untrusted.stderr


def test_without_unwrapping_outbound_tls_passes_through_unrecorded(tmp_path: Path) -> None:
    _, cert = _tls_upstream(tmp_path)
    with serve(tls=cert, cert_dir=tmp_path) as port:
        out = free_port()
        run = start(outbound=out, tls_unwrap=False, ca_dir=tmp_path / "ca")
        try:
            r = requests.get(f"https://127.0.0.1:{port}/x", proxies={"https": f"http://127.0.0.1:{out}"},
                             verify=str(tmp_path / "upstream-ca.pem"), timeout=5)
            assert r.status_code == 200, "the app's own certificate check still passes: nothing was intercepted"
            time.sleep(0.3)
        finally:
            run.proxy.stop()
    assert run.records == []


@pytest.mark.parametrize("max_body", [None, 12])
def test_websocket_messages_are_recorded(max_body: int | None) -> None:
    """Both ways; a long-lived socket keeps only its first ``max_body`` bytes of messages (the rest pass
    through, unkept and counted), so it cannot grow the sidecar without bound."""
    import asyncio

    from aiohttp import ClientSession, web

    from tests.capture.servers import ws_echo

    async def scenario() -> list[dict[str, Any]]:
        app = web.Application()
        app.router.add_get("/ws", ws_echo)
        runner = web.AppRunner(app)
        await runner.setup()
        upstream = free_port()
        await web.TCPSite(runner, "127.0.0.1", upstream).start()
        listen = free_port()
        run = start(reverse=[(listen, f"http://127.0.0.1:{upstream}")],
                    **({"max_body": max_body} if max_body else {}))
        try:
            async with ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{listen}/ws") as ws:
                await ws.send_str("hello")
                assert (await ws.receive()).data == "echo:hello"
                await ws.send_str("bye")
                assert (await ws.receive()).data == "echo:bye", "every message passes, kept or not"
            for _ in range(200):
                if run.records:
                    break
                await asyncio.sleep(0.05)
        finally:
            run.proxy.stop()
            await runner.cleanup()
        return run.records

    records = asyncio.run(scenario())
    assert records and records[0]["protocol"] == "websocket"
    got = [(m["fromClient"], m["data"]) for m in records[0]["websocket"]]
    if max_body is None:
        assert got == [(True, "hello"), (False, "echo:hello"), (True, "bye"), (False, "echo:bye")]
        assert "websocketDropped" not in records[0]["tags"]
    else:  # 5 + 10 bytes are over 12: the first kept, the other three not
        assert got == [(True, "hello")] and records[0]["tags"]["websocketDropped"] == "3"


def test_health_and_metrics_endpoint(upstream: int) -> None:
    listen = free_port()
    listening = socket.create_server(("127.0.0.1", 0))
    health = listening.getsockname()[1]
    run = start(reverse=[(listen, f"http://127.0.0.1:{upstream}")], health=listening)
    try:
        assert requests.get(f"http://127.0.0.1:{health}/healthz", timeout=5).status_code == 200
        requests.get(f"http://127.0.0.1:{listen}/a", timeout=5)
        run.wait(1)
        text = requests.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
    finally:
        run.proxy.stop()
    assert 'replayops_capture_pairs_captured_total{direction="inbound"} 1.0' in text
    assert "replayops_capture_buffer_fill" in text


def test_http2_and_grpc_are_recorded_with_their_bodies(tmp_path: Path) -> None:
    import struct

    from tests.capture.servers import serve_h2

    _, cert = _tls_upstream(tmp_path)
    with serve_h2(cert, tmp_path) as port:
        out = free_port()
        run = start(outbound=out, tls_unwrap=True, ca_dir=tmp_path / "ca", upstream_ca=tmp_path / "upstream-ca.pem")
        try:
            bundle = str(tmp_path / "ca" / "ca-bundle.pem")
            with httpx.Client(http2=True, proxy=f"http://127.0.0.1:{out}", verify=bundle) as client:
                r = client.get(f"https://127.0.0.1:{port}/h2/items")
                assert r.http_version == "HTTP/2" and r.json()["protocol"] == "h2"
                message = b"\x0a\x05apple"  # a protobuf field 1 = "apple"
                frame = b"\x00" + struct.pack(">I", len(message)) + message
                g = client.post(f"https://127.0.0.1:{port}/shop.Prices/Get", content=frame,
                                headers={"content-type": "application/grpc", "te": "trailers"})
                assert g.status_code == 200 and g.content == frame
            records = run.wait(2)
        finally:
            run.proxy.stop()
    by_path = {r["request"]["url"].split(str(port))[1]: r for r in records}
    assert by_path["/h2/items"]["protocol"] == "http/2"
    grpc = by_path["/shop.Prices/Get"]
    assert grpc["protocol"] == "grpc"
    from controller.store.rrpair import decode_body
    assert decode_body(grpc["request"]) == frame and decode_body(grpc["response"]) == frame
