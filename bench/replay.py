"""Benchmark the replay data plane; prints ratios against tools that are not ours, run in the same session.

1. Generator throughput vs wrk (Debian) and vs Locust (PyPI, in its own venv) against the same nginx,
   same connection count, same two cores. Targets: >= 2x Locust, >= 0.3x wrk.
2. Responder throughput vs WireMock standalone (the jar from Maven Central, Java 17) serving the same
   mappings, both loaded by wrk. Target: >= 1x WireMock.
3. Generator peak RSS replaying a 1,000,000-request snapshot (streamed): target <= 300 MB.

Prerequisites: apt-get install wrk nginx-light; mvn (for the WireMock jar, cached under ~/.cache/replayops/bench).
Run: .venv/bin/python bench/replay.py [--seconds 10] [--users 64] [--big 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk  # noqa: E402
from bench.capture_proxy import nginx, wait_port  # noqa: E402
from controller.capture import rrpair  # noqa: E402
from controller.devcluster import stop_pid  # noqa: E402
from controller.devcluster.cluster import free_port  # noqa: E402
from controller.store import FileStore, Manifest  # noqa: E402

BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "replayops" / "bench"
WIREMOCK = "org.wiremock:wiremock-standalone:3.9.2"
BODY = b'{"item":"apple","price":3,"currency":"EUR"}'


def record(i: int, path: str, direction: str, host: str = "svc") -> dict:  # type: ignore[type-arg]
    return rrpair.make(method="GET", url=f"http://{host}{path}", request_headers=[["Accept", "application/json"]],
                       request_body=None, status=200, response_headers=[["Content-Type", "application/json"]],
                       response_body=BODY, started=1_700_000_000 + i * 0.001, finished=1_700_000_000 + i * 0.001,
                       direction=direction, service="bench")


def wrk_rps(url: str, seconds: float, connections: int) -> float:
    return wrk.run(url, seconds, connections, threads=2)["rps"]


def replay_rps(env: dict[str, str], target: str, seconds: float, users: int,
               snapshot: str = "one") -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([str(BIN / "replayops"), "replay", snapshot, "--target", target, "--copies", str(users),
                          "--duration", f"{seconds:.0f}s", "--loop", "--no-progress", "--workers", "2"],
                         env=env, capture_output=True, text=True)
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    m = re.search(r"([\d.]+) req/s", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1)), peak // 1024


def locust_rps(target: str, seconds: float, users: int, tmp: Path) -> float:
    venv = CACHE / "locust-venv"
    if not (venv / "bin" / "locust").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "locust"], check=True)
    locustfile = tmp / "locustfile.py"
    locustfile.write_text("from locust import FastHttpUser, task, constant\n"
                          "class U(FastHttpUser):\n    wait_time = constant(0)\n"
                          "    @task\n    def get(self):\n        self.client.get('/api/price')\n")
    csv = tmp / "locust"
    subprocess.run([str(venv / "bin" / "locust"), "-f", str(locustfile), "--headless", "-u", str(users), "-r",
                    str(users), "-t", f"{seconds:.0f}s", "--host", target, "--processes", "2", "--csv", str(csv),
                    "--only-summary"], capture_output=True, text=True, timeout=seconds + 60)
    rows = (tmp / "locust_stats.csv").read_text().splitlines()
    header, agg = rows[0].split(","), [r for r in rows if ",Aggregated," in r][0].split(",")
    return float(agg[header.index("Requests/s")])


def wiremock_jar() -> Path:
    jar = CACHE / "wiremock-standalone-3.9.2.jar"
    if not jar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mvn", "-q", "dependency:copy", f"-Dartifact={WIREMOCK}", f"-DoutputDirectory={CACHE}"],
                       check=True)
    return jar


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--big", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "REPLAYOPS_HOME": str(tmp / "home")}
        store = FileStore(tmp / "home" / "store")
        store.write_snapshot(Manifest(name="one"), [record(0, "/api/price", "inbound")])
        store.write_snapshot(Manifest(name="mocks"), [record(i, f"/api/item/{i}", "outbound") for i in range(100)])
        up = free_port()
        procs = [nginx(tmp, up)]
        try:
            wait_port(up)
            target = f"http://127.0.0.1:{up}"
            direct = wrk_rps(f"{target}/api/price", args.seconds, args.users)
            ours, _ = replay_rps(env, target, args.seconds, args.users)
            loc = locust_rps(target, args.seconds, args.users, tmp)
            print(f"generator vs others against nginx, {args.users} connections/users, 2 processes, "
                  f"{args.seconds:.0f}s each:")
            print(f"  wrk {direct:10.0f} req/s   locust {loc:8.0f} req/s   replayops {ours:8.0f} req/s")
            print(f"  ratio ours/locust {ours / loc:.2f} (target >= 2)   ours/wrk {ours / direct:.2f} (target >= 0.3)")

            mock_port, wm_port = free_port(), free_port()
            mappings = tmp / "wm" / "mappings"
            mappings.mkdir(parents=True)
            for i in range(100):
                (mappings / f"m{i}.json").write_text(json.dumps({
                    "request": {"method": "GET", "url": f"/api/item/{i}"},
                    "response": {"status": 200, "body": BODY.decode(),
                                 "headers": {"Content-Type": "application/json"}}}))
            procs.append(subprocess.Popen([str(BIN / "replayops"), "mock", "mocks", "--listen", str(mock_port),
                                           "--workers", "2", "--no-fuzzy"], env=env, start_new_session=True,
                                          stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen(["java", "-jar", str(wiremock_jar()), "--port", str(wm_port),
                                           "--root-dir", str(tmp / "wm"), "--disable-request-logging",
                                           "--no-request-journal", "--async-response-enabled", "true"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            for port in (mock_port, wm_port):
                deadline = time.monotonic() + 60
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/item/7", timeout=2).read()
                        break
                    except OSError:
                        assert time.monotonic() < deadline, f"mock on {port} never answered"
                        time.sleep(0.3)
            wrk_rps(f"http://127.0.0.1:{wm_port}/api/item/7", 3, args.users)  # JVM warm-up
            mock = wrk_rps(f"http://127.0.0.1:{mock_port}/api/item/7", args.seconds, args.users)
            wm = wrk_rps(f"http://127.0.0.1:{wm_port}/api/item/7", args.seconds, args.users)
            print(f"responder vs WireMock 3.9.2 (100 mappings, wrk -c{args.users}): replayops {mock:8.0f} req/s, "
                  f"WireMock {wm:8.0f} req/s, ratio {mock / wm:.2f} (target >= 1)")

            started = time.monotonic()
            store.write_snapshot(Manifest(name="big"), (record(i, f"/api/price?i={i}", "inbound")
                                                        for i in range(args.big)))
            written = time.monotonic() - started
            rate, peak = replay_rps(env, target, 30, 8, snapshot="big")
            print(f"generator on a {args.big:,}-request snapshot (written in {written:.0f}s): {rate:.0f} req/s over "
                  f"30s with 8 users; peak RSS of the largest process {peak} MB (target <= 300 MB)")
        finally:
            for proc in procs:
                stop_pid(proc.pid, timeout=5)


if __name__ == "__main__":
    main()
