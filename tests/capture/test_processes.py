"""The sidecar, the forwarder and local capture as the processes users run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from controller.store import FileStore
from tests.capture.servers import serve
from tests.helpers import wait_200

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"


def cli(*args: str, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)  # type: ignore[call-overload]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home"), "REPLAYOPS_FORWARDER_TOKEN": "tok",
            "REPLAYOPS_DLP_KEY": "test-key"}


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _stored(home: Path) -> int:
    from tests.helpers import stored_lines
    return len(stored_lines(home / "store"))


def test_forwarder_killed_mid_stream_every_app_request_succeeds_and_nothing_is_lost(env: dict[str, str],
                                                                                    tmp_path: Path) -> None:
    """The forwarder goes away mid-traffic: the app's requests all succeed; the sidecar keeps the pairs and
    retries with backoff; when the forwarder is back, every pair reaches the store, each once."""
    fwd_port, listen, health = free_port(), free_port(), free_port()
    with serve() as upstream:
        forwarder = cli("forwarder", "--port", str(fwd_port), "--host", "127.0.0.1", env=env)
        proxy = cli("proxy", "--reverse", f"{listen}:{upstream}", "--forwarder", f"http://127.0.0.1:{fwd_port}",
                    "--policy", "shop/checkout", "--service", "checkout", "--health-port", str(health), env=env)
        try:
            wait_200(f"http://127.0.0.1:{fwd_port}/healthz")
            wait_200(f"http://127.0.0.1:{health}/healthz")
            session = requests.Session()
            statuses = [session.get(f"http://127.0.0.1:{listen}/before/{i}", timeout=5).status_code
                        for i in range(20)]
            _wait(lambda: _stored(tmp_path / "home") == 20, "the first 20 pairs stored")
            stop_pid(forwarder.pid, timeout=5)
            statuses += [session.get(f"http://127.0.0.1:{listen}/after/{i}", timeout=5).status_code
                         for i in range(50)]
            _wait(lambda: metric(requests.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text,
                                 "replayops_capture_batch_retries_total") >= 2, "the sidecar retrying")
            forwarder = cli("forwarder", "--port", str(fwd_port), "--host", "127.0.0.1", env=env)
            _wait(lambda: _stored(tmp_path / "home") >= 70, "the kept pairs stored once the forwarder is back",
                  timeout=60)
            text = requests.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
        finally:
            stop_pid(proxy.pid)
            stop_pid(forwarder.pid)
    assert statuses == [200] * 70
    assert metric(text, "replayops_capture_pairs_captured_total") == 70
    assert metric(text, "replayops_capture_pairs_sent_total") == 70
    assert metric(text, "replayops_capture_pairs_dropped_total") == 0
    assert _stored(tmp_path / "home") == 70, "each pair stored once"


def test_local_capture_records_both_directions_of_the_demo_app(env: dict[str, str], tmp_path: Path) -> None:
    dep_port, app_port, listen, out = free_port(), free_port(), free_port(), free_port()
    dep = subprocess.Popen([sys.executable, str(DEMO / "dependency.py"), str(dep_port)])
    capture = cli("capture", "--listen", str(listen), "--upstream", f"http://127.0.0.1:{app_port}",
                  "--outbound", str(out), "--name", "demo-1", "--service", "demo", "--",
                  sys.executable, str(DEMO / "server.py"), str(app_port), f"http://127.0.0.1:{dep_port}", env=env)
    try:
        wait_200(f"http://127.0.0.1:{listen}/healthz")
        for item in ("apple", "pear", "apple"):
            r = requests.get(f"http://127.0.0.1:{listen}/api/quote?item={item}&qty=2", timeout=5)
            assert r.status_code == 200 and r.json()["item"] == item
        r = requests.post(f"http://127.0.0.1:{listen}/api/orders", json={"items": ["fig"],
                          "email": "jane.doe@example.com"}, headers={"Authorization": "Bearer abcdefgh12345"},
                          timeout=5)
        assert r.status_code == 201
        capture.send_signal(signal.SIGINT)
        stdout, stderr = capture.communicate(timeout=30)
    finally:
        stop_pid(dep.pid)
        stop_pid(capture.pid)
    assert capture.returncode == 0, stderr
    assert "snapshot demo-1:" in stdout
    assert "inbound  GET /api/quote" in stdout and "outbound GET /price" in stdout
    assert "redactions:" in stdout and "email" in stdout
    show = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "show", "demo-1"], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    assert show.returncode == 0 and '"count": ' in show.stdout
    manifest = json.JSONDecoder().raw_decode(show.stdout)[0]
    assert manifest["by_direction"]["inbound"] == 5 and manifest["by_direction"]["outbound"] == 3
    har_path = tmp_path / "demo.har"
    exp = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "export", "demo-1", "--har",
                          str(har_path)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert exp.returncode == 0 and "jane.doe@example.com" not in har_path.read_text()
    imp = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "import", str(har_path), "--name",
                          "demo-copy"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert imp.returncode == 0 and "8 pairs imported" in imp.stdout
    ls = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "ls"], env=env, capture_output=True,
                        text=True, cwd=ROOT)
    assert "demo-1" in ls.stdout and "demo-copy" in ls.stdout
    assert all(line.endswith("read by -") for line in ls.stdout.splitlines()), "made here: no namespace's yet"


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines() if "multiprocessing.spawn" in line}


def _listeners(port: int) -> int:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_workers_share_the_ports_are_restarted_and_deliver_everything_on_stop(env: dict[str, str],
                                                                               tmp_path: Path) -> None:
    fwd_port, listen, health = free_port(), free_port(), free_port()
    with serve() as upstream:
        forwarder = cli("forwarder", "--port", str(fwd_port), "--host", "127.0.0.1", env=env)
        proxy = cli("proxy", "--workers", "2", "--reverse", f"{listen}:{upstream}", "--forwarder",
                    f"http://127.0.0.1:{fwd_port}", "--service", "checkout", "--health-port", str(health), env=env)
        try:
            wait_200(f"http://127.0.0.1:{fwd_port}/healthz")
            wait_200(f"http://127.0.0.1:{health}/healthz")
            workers = _children(proxy.pid)
            assert len(workers) == 2
            # a new connection per request: the kernel spreads them over both workers' sockets
            statuses = [requests.get(f"http://127.0.0.1:{listen}/a/{i}", timeout=5).status_code for i in range(30)]
            assert _listeners(listen) == 2
            os.kill(min(workers), signal.SIGKILL)
            # connections the kernel already queued on the dead worker's socket are reset with it, as
            # with any crash; new ones go to the living worker once that socket is closed
            _wait(lambda: _listeners(listen) == 1, "the killed worker's socket to close")
            statuses += [requests.get(f"http://127.0.0.1:{listen}/b/{i}", timeout=5).status_code for i in range(30)]
            _wait(lambda: len(_children(proxy.pid)) == 2 and _listeners(listen) == 2, "the worker's restart")
            restarted = _children(proxy.pid)
            wait_200(f"http://127.0.0.1:{health}/healthz")
            statuses += [requests.get(f"http://127.0.0.1:{listen}/c/{i}", timeout=5).status_code for i in range(30)]
            text = requests.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
            proxy.send_signal(signal.SIGTERM)
            _, stderr = proxy.communicate(timeout=30)
        finally:
            stop_pid(proxy.pid)
            stop_pid(forwarder.pid)
    assert statuses == [200] * 90
    assert len(restarted) == 2 and min(workers) not in restarted
    assert "proxy worker died; restarting" in stderr
    assert proxy.returncode == 0 and not _children(proxy.pid)
    # the metrics of all workers, the killed one's counts included, in one scrape
    assert metric(text, "replayops_capture_pairs_captured_total") == 90
    store = FileStore(tmp_path / "home" / "store")
    paths = {r["request"]["url"].split("/", 3)[3] for stream in store.streams() for r in store.stream_records(stream)}
    # what the live workers held was delivered when they stopped; only the killed worker's buffer can be lost
    assert {f"c/{i}" for i in range(30)} <= paths
    assert len(paths) >= 60


def test_proxy_without_a_forwarder_token_serves_the_app_and_drops_with_the_reason(env: dict[str, str]) -> None:
    del env["REPLAYOPS_FORWARDER_TOKEN"]
    listen, health = free_port(), free_port()
    with serve() as upstream:
        proxy = cli("proxy", "--reverse", f"{listen}:{upstream}", "--forwarder", "http://127.0.0.1:1",
                    "--health-port", str(health), env=env)
        try:
            wait_200(f"http://127.0.0.1:{health}/healthz")
            assert requests.get(f"http://127.0.0.1:{listen}/x", timeout=5).status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = requests.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
                if metric(text, "replayops_capture_pairs_dropped_total"):
                    break
                time.sleep(0.2)
        finally:
            proxy.send_signal(signal.SIGTERM)
            _, stderr = proxy.communicate(timeout=30)
    assert metric(text, 'replayops_capture_pairs_dropped_total{reason="sink-error"}') == 1
    assert "no forwarder token (no --token-file, and $REPLAYOPS_FORWARDER_TOKEN is empty)" in stderr


def test_proxy_flags_are_checked() -> None:
    bad = cli("proxy", "--workers", "0", "--reverse", "1:2", "--forwarder", "x", env=dict(os.environ))
    _, stderr = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "--workers: '0' is not a count from 1 to 64" in stderr


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_probe_sent_while_the_proxy_loads_waits_and_is_answered(env: dict[str, str], workers: int) -> None:
    """The health port is bound before mitmproxy loads: a kubelet probe that comes during the load is
    queued and answered once the proxy is ready — Ready without waiting for the next probe period."""
    listen, health = free_port(), free_port()
    with serve() as upstream:
        proxy = cli("proxy", "--reverse", f"{listen}:{upstream}", "--forwarder", "http://127.0.0.1:9",
                    "--health-port", str(health), "--workers", str(workers), env=env)
        try:
            deadline = time.monotonic() + 60
            while (probe := _connect(health)) is None:
                assert proxy.poll() is None and time.monotonic() < deadline, "the health port never listened"
                time.sleep(0.002)
            with probe:
                proxy_listening = _connect(listen)
                probe.settimeout(60)
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                answer = probe.makefile("rb").readline()
        finally:
            stop_pid(proxy.pid)
    assert proxy_listening is None, "the probe came only after the proxy listened: nothing shows it waited"
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_a_forwarder_given_the_key_secret_removes_the_key_an_earlier_version_left_on_the_volume(
        env: dict[str, str], tmp_path: Path) -> None:
    home = Path(env["REPLAYOPS_HOME"])
    home.mkdir(parents=True)
    (home / "dlp.key").write_text("old-key-on-the-shared-volume\n")
    port = free_port()
    (tmp_path / "policies.yaml").write_text("")
    forwarder = cli("forwarder", "--port", str(port), "--host", "127.0.0.1", "--policy-file",
                    str(tmp_path / "policies.yaml"), env=env)
    try:
        wait_200(f"http://127.0.0.1:{port}/healthz")
    finally:
        stop_pid(forwarder.pid)
    assert not (home / "dlp.key").exists()
    _, err = forwarder.communicate(timeout=10)
    assert "removed the DLP key an earlier version kept on the store volume" in err
