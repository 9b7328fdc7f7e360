"""Imports as tools write them: HAR with a byte-order mark, compressed HAR (.zhar), old mitmproxy flow
files with their two-flow WebSocket sessions, entries and flows without a response (kept request-only,
with a warning); the direction the traffic had; and a HAR of an API served as that API's mocks by the real
``replayops mock``. Bad files fail with one line naming the file (and the entry), never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import io
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

from controller.capture import har
from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from controller.store import FileStore

ROOT = Path(__file__).resolve().parents[2]


def _browser_har() -> dict[str, Any]:
    """What a browser's devtools export: calls to an API, one of them aborted (no response)."""
    def entry(path: str, answer: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"startedDateTime": "2026-12-01T10:00:00.000Z", "time": 12,
                               "request": {"method": "GET", "url": f"https://api.example.test{path}",
                                           "httpVersion": "HTTP/2", "headers": [{"name": "Accept", "value": "*/*"}]}}
        if answer is not None:
            out["response"] = {"status": 200, "statusText": "OK", "httpVersion": "HTTP/2",
                               "headers": [{"name": "Content-Type", "value": "application/json"}],
                               "content": {"size": 0, "mimeType": "application/json", "text": json.dumps(answer)}}
        return out
    return {"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "140"},
                    "entries": [entry("/v1/prices/apple", {"price": 3}), entry("/v1/prices/pear", {"price": 4}),
                                entry("/v1/slow", None)]}}


@pytest.mark.parametrize("form", ["bom.har", "plain.zhar", "plain.har.gz"])
def test_har_with_a_byte_order_mark_or_compressed_imports(tmp_path: Path, form: str) -> None:
    text = json.dumps(_browser_har()).encode()
    data = {"bom.har": b"\xef\xbb\xbf" + text, "plain.zhar": zlib.compress(text, 9),
            "plain.har.gz": gzip.compress(text)}[form]
    path = tmp_path / form
    path.write_bytes(data)
    got = har.read_har(path)
    assert [r["request"]["url"].rpartition("/")[2] for r in got.records] == ["apple", "pear", "slow"]
    assert got.skipped == [] and got.warnings == [f"{path}: log.entries[2]: no response: kept request-only"]
    assert got.records[2]["response"]["status"] == 0


def _write_flows(path: Path, flows: list[dict[str, Any]]) -> None:
    with open(path, "wb") as fh:
        for state in flows:
            tnetstring.dump(state, fh)


def _as_version_11(state: dict[str, Any]) -> list[dict[str, Any]]:
    """A current WebSocket flow's state as mitmproxy 6 wrote it (flow format 11): the handshake as an HTTP
    flow, then a WebSocket flow naming it — the inverse of mitmproxy's own migrations 11 → 21."""
    for conn in ("client_conn", "server_conn"):
        c = state[conn]
        c["state"] = 0
        c["tls_established"] = bool(c.get("tls_version"))
        c["cipher_name"] = c.pop("cipher", None)
        c.pop("transport_protocol", None)
    cc, sc = state["client_conn"], state["server_conn"]
    cc.pop("proxy_mode", None)
    cc["address"] = cc.pop("peername")
    cc["tls_extensions"] = None
    sc["ip_address"], sc["source_address"], sc["via2"] = sc.pop("peername"), sc.pop("sockname"), sc.pop("via")
    state.pop("timestamp_created", None)
    state.pop("comment", None)
    state["marked"], state["mode"], state["version"] = False, "regular", 11
    websocket = state.pop("websocket")
    handshake = {**state, "metadata": {"websocket": True}}
    messages = [m[:-1] for m in websocket["messages"]]  # without "injected" (format 15)
    session = {"type": "websocket", "id": "ws-session", "version": 11, "messages": messages,
               "close_sender": "client" if websocket["closed_by_client"] else "server",
               "close_code": websocket["close_code"], "close_reason": websocket["close_reason"],
               "metadata": {"websocket_handshake": state["id"]}, "client_conn": state["client_conn"],
               "server_conn": state["server_conn"], "error": None, "intercepted": False, "is_replay": None,
               "marked": False}
    return [handshake, session]


def test_an_old_flow_file_with_a_websocket_session_imports_as_one_pair_with_its_messages(tmp_path: Path) -> None:
    flow = tflow.twebsocketflow()
    path = tmp_path / "mitmproxy6.mitm"
    _write_flows(path, _as_version_11(flow.get_state()))
    got = har.read_flows(path, "chat")
    assert got.skipped == [] and len(got.records) == 1, got
    record = got.records[0]
    assert record["protocol"] == "websocket" and record["response"]["status"] == 101
    assert [(m["fromClient"], m["type"]) for m in record["websocket"]] == [
        (m.from_client, "text" if m.is_text else "binary") for m in flow.websocket.messages]
    assert record["websocket"][1]["data"] == flow.websocket.messages[1].text


def test_a_flow_without_a_response_is_kept_request_only_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "flows.mitm"
    with open(path, "wb") as fh:
        writer = io.FlowWriter(fh)
        writer.add(tflow.tflow(resp=True))
        writer.add(tflow.tflow(resp=False))
    got = har.read_flows(path, "shop")
    assert [r["response"]["status"] for r in got.records] == [200, 0]
    assert got.warnings == [f"{path}: flow 1: no response: kept request-only"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("bad", [b"\x78\x9c not zlib at all", b"{\"log\": {\"entries\": 5}}"])
def test_a_bad_har_fails_in_one_line_naming_the_file(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "broken.zhar"
    path.write_bytes(bad if bad.startswith(b"\x78") else zlib.compress(bad))
    out = _cli("snapshot", "--store", str(tmp_path / "store"), "import", str(path), "--name", "x",
               env=dict(os.environ))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and str(path) in out.stderr, out.stderr


def test_a_har_of_an_api_imported_serves_as_its_mocks(tmp_path: Path) -> None:
    """WireMock's and Hoverfly's way: a HAR of calls to an API, imported, answers those calls."""
    path = tmp_path / "api.har"
    path.write_text(json.dumps(_browser_har()))
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home")}
    store = str(tmp_path / "home" / "store")
    for name, direction in (("as-inbound", None), ("as-outbound", "outbound")):
        out = _cli("snapshot", "--store", store, "import", str(path), "--name", name,
                   *(["--direction", direction] if direction else []), env=env)
        assert out.returncode == 0, out.stderr
        assert "warning: " in out.stderr and "log.entries[2]: no response: kept request-only" in out.stderr
    assert FileStore(Path(store)).manifest("as-outbound").by_direction == {"outbound": 3}
    for name, direction in (("as-outbound", "outbound"), ("as-inbound", "inbound")):
        port = free_port()
        mock = subprocess.Popen([sys.executable, "-m", "controller.cli", "mock", name, "--store", store, "--listen",
                                 str(port), "--direction", direction], env=env, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _wait_listening(port)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/prices/pear",
                                         headers={"Host": "api.example.test"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read()) == {"price": 4}, f"{name} served with --direction {direction}"
        finally:
            stop_pid(mock.pid)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the mock never listened on {port}")
