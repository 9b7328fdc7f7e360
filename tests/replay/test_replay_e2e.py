"""Local replay end to end: record the demo app, replay against builds of it, mock its dependency."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from controller.store import FileStore, Manifest, rrpair
from tests.helpers import wait_200

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def app(port: int, dependency: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(DEMO / "server.py"), str(port), dependency, *extra], env=env)
    wait_200(f"http://127.0.0.1:{port}/healthz")
    return proc


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """REPLAYOPS_HOME holding snapshot `demo`, recorded from the demo app by `replayops capture`."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "REPLAYOPS_HOME": str(home), "REPLAYOPS_DLP_KEY": "k"}
    dep_port, app_port, listen, out = free_port(), free_port(), free_port(), free_port()
    dep = subprocess.Popen([sys.executable, str(DEMO / "dependency.py"), str(dep_port)])
    capture = subprocess.Popen([sys.executable, "-m", "controller.cli", "capture", "--listen", str(listen),
                                "--upstream", f"http://127.0.0.1:{app_port}", "--outbound", str(out), "--name", "demo",
                                "--service", "demo", "--", sys.executable, str(DEMO / "server.py"), str(app_port),
                                f"http://127.0.0.1:{dep_port}"], env=env, cwd=ROOT)
    try:
        wait_200(f"http://127.0.0.1:{app_port}/healthz")  # the app itself: nothing recorded yet
        for item in ("apple", "pear", "apple"):
            assert requests.get(f"http://127.0.0.1:{listen}/api/quote?item={item}&qty=2", timeout=5).ok
        assert requests.post(f"http://127.0.0.1:{listen}/api/orders", json={"items": ["fig"]}, timeout=5).ok
        capture.send_signal(signal.SIGINT)
        assert capture.wait(30) == 0
    finally:
        stop_pid(dep.pid)
        stop_pid(capture.pid)
    env["DEP_PORT"] = str(dep_port)
    yield env


def test_replay_against_a_changed_build_names_the_changed_endpoint_with_its_diff(recorded: dict[str, str]) -> None:
    dep_port = free_port()
    dep = subprocess.Popen([sys.executable, str(DEMO / "dependency.py"), str(dep_port)])
    port = free_port()
    changed = app(port, f"http://127.0.0.1:{dep_port}", "--variant", "discount")
    try:
        out = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress",
                  "--ignore-path", "$.order", "--min-success-rate", "0.99")
    finally:
        stop_pid(changed.pid)
        stop_pid(dep.pid)
    assert out.returncode == 1, out.stderr
    assert "GET /api/quote: 3 mismatches" in out.stdout
    assert "$.total: recorded 6, got 5.4" in out.stdout
    assert "POST /api/orders" not in out.stdout.split("goal")[-1].split("noise")[0]
    assert "noise ignored on GET /api/quote: $.ts" in out.stdout
    report_id = out.stdout.split()[1].rstrip(":")
    shown = cli(recorded, "report", "show", report_id, "--json")
    rep = json.loads(shown.stdout)
    assert rep["endpoints"]["GET /api/quote"]["mismatches"] == 3 and rep["goalsMet"] is False
    html = (Path(recorded["REPLAYOPS_HOME"]) / "reports" / report_id / "report.html").read_text()
    assert html.count("<svg") >= 4 and "goals NOT met" in html


def test_mocks_let_the_demo_app_pass_with_its_dependency_stopped(recorded: dict[str, str]) -> None:
    mock_port, port = free_port(), free_port()
    mock = subprocess.Popen([sys.executable, "-m", "controller.cli", "mock", "demo", "--listen", str(mock_port),
                             "--no-fuzzy"], env=recorded, cwd=ROOT)
    wait_200(f"http://127.0.0.1:{mock_port}/__replayops/health")
    server = app(port, f"http://127.0.0.1:{recorded['DEP_PORT']}", env={**os.environ, "HTTP_PROXY":
                                                                          f"http://127.0.0.1:{mock_port}"})
    try:
        out = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress",
                  "--ignore-path", "$.order", "--min-success-rate", "1")
        metrics = requests.get(f"http://127.0.0.1:{mock_port}/__replayops/metrics", timeout=5).text
        miss = requests.get(f"http://127.0.0.1:{port}/api/quote?item=kiwi", timeout=5)
        misses = requests.get(f"http://127.0.0.1:{mock_port}/__replayops/misses", timeout=5).json()
    finally:
        stop_pid(server.pid)
        stop_pid(mock.pid)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "success 100.00%" in out.stdout
    assert 'replayops_mock_requests_total{outcome="exact"} 3.0' in metrics
    assert "replayops_mock_match_rate 1.0" in metrics
    assert miss.status_code == 404, "the app saw the mock's 404 for an unrecorded call"
    assert misses[-1]["reason"] == "closest recording GET /price differs: query item='kiwi' vs recorded 'apple'"


def test_goals_turn_into_the_exit_code(recorded: dict[str, str]) -> None:
    dep_port, port = free_port(), free_port()
    dep = subprocess.Popen([sys.executable, str(DEMO / "dependency.py"), str(dep_port)])
    server = app(port, f"http://127.0.0.1:{dep_port}")
    try:
        met = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress",
                  "--ignore-path", "$.order", "--min-success-rate", "1", "--copies", "4")
        unmet = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress",
                    "--ignore-path", "$.order", "--max-p99", "0.0001")
        strict = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress",
                     "--min-success-rate", "1", "--no-detect-noise")
    finally:
        stop_pid(server.pid)
        stop_pid(dep.pid)
    assert met.returncode == 0 and "16 requests" in met.stdout, met.stdout
    assert unmet.returncode == 1 and "goal max p99" in unmet.stdout and "NOT met" in unmet.stdout
    assert strict.returncode == 1 and "$.order: recorded" in strict.stdout, "random ids differ unless ignored"
    assert "$.ts: recorded" in strict.stdout


class Guarded(BaseHTTPRequestHandler):
    """A target whose tokens expire and which refuses stale timestamps: what replays usually trip over."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    token = "live-" + os.urandom(4).hex()

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, {"access_token": self.token})

    def do_GET(self) -> None:  # noqa: N802
        from urllib.parse import parse_qs, urlsplit

        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(401, {"error": "token expired"})
        since = parse_qs(urlsplit(self.path).query).get("since", ["0"])[0]
        if abs(time.time() - float(since)) > 3600:
            return self._send(400, {"error": "since is too old"})
        self._send(200, {"ok": True})

    def log_message(self, *args: object) -> None:
        pass


def test_transforms_make_a_replay_with_expiring_tokens_and_timestamps_pass(tmp_path: Path) -> None:
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path)}
    two_days_ago = time.time() - 2 * 86400
    records = [rrpair.make(method="GET", url=f"http://svc/api/feed?since={int(two_days_ago - 60)}",
                           request_headers=[["Authorization", "Bearer old-expired-token"]], request_body=None,
                           status=200, response_headers=[["Content-Type", "application/json"]],
                           response_body=b'{"ok": true}', started=two_days_ago + i, finished=two_days_ago + i,
                           direction="inbound", service="svc") for i in range(5)]
    FileStore(tmp_path / "store").write_snapshot(Manifest(name="feed"), records)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{server.server_address[1]}"
    spec = tmp_path / "replay.yaml"
    spec.write_text("""apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata: {name: feed}
spec:
  snapshot: feed
  target: {url: "http://svc"}
  transforms:
    - {type: timeShift}
    - type: bearerRefresh
      login: {method: POST, path: /login, body: '{"user": "replay"}', tokenPath: $.access_token}
  goals: {minSuccessRate: 1}
""")
    try:
        without = cli(env, "replay", "feed", "--target", target, "--no-progress", "--min-success-rate", "1")
        with_transforms = cli(env, "replay", "feed", "--target", target, "--no-progress", "--spec", str(spec))
    finally:
        server.shutdown()
    assert without.returncode == 1 and "status: recorded 200, got 401" in without.stdout
    assert with_transforms.returncode == 0, with_transforms.stdout + with_transforms.stderr
    assert "success 100.00%" in with_transforms.stdout


def test_bad_snapshot_is_a_clear_error(recorded: dict[str, str]) -> None:
    out = cli(recorded, "replay", "no-such-snapshot", "--target", "http://127.0.0.1:1", "--no-progress")
    assert out.returncode == 2 and "no snapshot 'no-such-snapshot'" in out.stderr
    bad_spec = cli(recorded, "replay", "demo", "--target", "http://127.0.0.1:1", "--spec", "/nonexistent.yaml")
    assert bad_spec.returncode == 2 and "/nonexistent.yaml" in bad_spec.stderr


def test_unreachable_resetting_and_slow_targets_give_errors_and_a_partial_report(recorded: dict[str, str]) -> None:
    unreachable = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{free_port()}", "--no-progress")
    assert unreachable.returncode == 1
    assert "every request to" in unreachable.stderr and "Connection refused" in unreachable.stderr
    assert "report: " in unreachable.stdout

    resetting = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def reset_all() -> None:
        resetting.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = resetting.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
            except TimeoutError:
                continue
    threading.Thread(target=reset_all, daemon=True).start()

    class Slow(Guarded):
        def do_GET(self) -> None:  # noqa: N802
            time.sleep(1.5)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                self._send(200, {})

        do_POST = do_GET  # noqa: N815
    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        reset = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{resetting.getsockname()[1]}",
                    "--no-progress")
        timed_out = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{slow.server_address[1]}",
                        "--no-progress", "--request-timeout", "0.3")
    finally:
        stop.set()
        slow.shutdown()
    assert reset.returncode == 1
    reset_report = json.loads(cli(recorded, "report", "show", reset.stdout.split()[1].rstrip(":"), "--json").stdout)
    assert reset_report["summary"]["errors"] == 4 and reset_report["errors"], ("each reset is an error, named",
                                                                               reset.stdout, reset_report)
    assert timed_out.returncode == 1 and "TimeoutError" in timed_out.stdout
    report_id = timed_out.stdout.split()[1].rstrip(":")
    rep = json.loads(cli(recorded, "report", "show", report_id, "--json").stdout)
    assert rep["summary"]["errors"] == 4 and rep["summary"]["requests"] == 4, "every request is accounted for"


def test_a_local_target_command_is_started_and_its_output_collected(recorded: dict[str, str], tmp_path: Path) -> None:
    dep_port, port = free_port(), free_port()
    dep = subprocess.Popen([sys.executable, str(DEMO / "dependency.py"), str(dep_port)])
    script = tmp_path / "target.py"
    script.write_text("import runpy, sys\nprint('target booting', flush=True)\n"
                      f"sys.argv = ['server.py', '{port}', 'http://127.0.0.1:{dep_port}']\n"
                      f"runpy.run_path({str(DEMO / 'server.py')!r}, run_name='__main__')\n")
    try:
        out = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress",
                  "--", sys.executable, str(script))  # no flags: its timestamp and order id are found as noise
    finally:
        stop_pid(dep.pid)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(cli(recorded, "report", "show", out.stdout.split()[1].rstrip(":"), "--json").stdout)
    assert "target booting" in rep["logs"]
    assert rep["noise"] == {"GET /api/quote": ["$.ts"], "POST /api/orders": ["$.order"]}, rep["noise"]


def test_a_target_command_that_cannot_serve_fails_the_replay_saying_so(recorded: dict[str, str]) -> None:
    import socket
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # another app holds the port the command would take
        taken = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{port}", "--no-progress", "--",
                    sys.executable, str(DEMO / "server.py"), str(port), "http://127.0.0.1:9")
    assert taken.returncode == 2, taken.stdout + taken.stderr
    assert f"something already listens on 127.0.0.1:{port} before the target command started" in taken.stderr
    assert "requests" not in taken.stdout, "nothing was replayed against the other app"
    exited = cli(recorded, "replay", "demo", "--target", f"http://127.0.0.1:{free_port()}", "--no-progress", "--",
                 sys.executable, "-c", "raise SystemExit(3)")
    assert exited.returncode == 2 and "the target command exited with 3 before it listened" in exited.stderr
    assert "Traceback" not in taken.stderr + exited.stderr
