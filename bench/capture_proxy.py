"""Benchmark the capturing sidecar against nginx direct and bare mitmdump, with wrk (Debian) as the load.

For each of: nginx direct, bare `mitmdump` in reverse mode, mitmproxy with only the sidecar's addon set
(bench/lean_mitmproxy.py: the recorder's cost alone), and `replayops proxy` (recording every pair and
delivering it to a running `replayops forwarder`), wrk measures
  - maximum throughput (closed loop, --connections, --seconds), and
  - latency at a fixed ~500 req/s (wrk's Lua `delay()` paces each connection).
Then the sidecar's RSS is sampled over a soak run to show whether memory stays flat.
Targets: the addon costs <= 15% of bare mitmdump's throughput; added p99 <= 3 ms at 500 req/s.

Prerequisites: `apt-get install wrk nginx-light`.
Run: .venv/bin/python bench/capture_proxy.py [--seconds 10] [--soak 60]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.devcluster import stop_pid  # noqa: E402
from controller.devcluster.cluster import free_port  # noqa: E402

BIN = Path(sys.executable).parent
PACED = "request = function() return wrk.request() end\ndelay = function() return {delay} end\n"


def nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;
    return 200 '{{"item":"apple","price":3,"currency":"EUR"}}'; }} }} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], start_new_session=True)


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {port}")


def wrk(port: int, seconds: float, connections: int, script: Path | None = None) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency"]
    if script:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/api/price"], capture_output=True, text=True,
                         check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        result[f"p{pct}"] = float(m.group(1)) * scale
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--soak", type=float, default=60, help="seconds of load while sampling the sidecar's RSS")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install wrk nginx-light")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "REPLAYOPS_HOME": str(tmp / "home"), "REPLAYOPS_FORWARDER_TOKEN": "bench",
               "REPLAYOPS_DLP_KEY": "bench"}
        up, bare, lean, ours, fwd, health = (free_port() for _ in range(6))
        paced = tmp / "paced.lua"
        paced.write_text(PACED.format(delay=round(args.connections * 1000 / 500)))
        procs = [nginx(tmp, up),
                 subprocess.Popen([str(BIN / "mitmdump"), "-q", "--mode", f"reverse:http://127.0.0.1:{up}@{bare}"],
                                  start_new_session=True),
                 subprocess.Popen([sys.executable, str(Path(__file__).with_name("lean_mitmproxy.py")),
                                   f"reverse:http://127.0.0.1:{up}@{lean}"], start_new_session=True),
                 subprocess.Popen([str(BIN / "replayops"), "forwarder", "--host", "127.0.0.1", "--port", str(fwd)],
                                  env=env, start_new_session=True, stderr=subprocess.DEVNULL),
                 subprocess.Popen([str(BIN / "replayops"), "proxy", "--reverse", f"{ours}:{up}", "--forwarder",
                                   f"http://127.0.0.1:{fwd}", "--service", "bench", "--health-port", str(health)],
                                  env=env, start_new_session=True, stderr=subprocess.DEVNULL)]
        try:
            for port in (up, bare, lean, ours):
                wait_port(port)
            results = {}
            for name, port in (("nginx direct", up), ("bare mitmdump", bare), ("sidecar addons only", lean),
                               ("replayops proxy", ours)):
                results[name] = (wrk(port, args.seconds, args.connections),
                                 wrk(port, args.seconds, args.connections, paced))
            print(f"wrk -t1 -c{args.connections} -d{args.seconds:.0f}s against nginx on loopback")
            print(f"{'':18} {'max req/s':>10} {'p50 ms':>8} {'p99 ms':>8} | at ~500/s: {'req/s':>7} "
                  f"{'p50 ms':>7} {'p99 ms':>7}")
            for name, (full, slow) in results.items():
                print(f"{name:18} {full['rps']:10.0f} {full['p50']:8.2f} {full['p99']:8.2f} | {'':11}"
                      f"{slow['rps']:7.0f} {slow['p50']:7.2f} {slow['p99']:7.2f}")
            bare_full, lean_full = results["bare mitmdump"][0], results["sidecar addons only"][0]
            ours_full = results["replayops proxy"][0]
            direct_slow, ours_slow = results["nginx direct"][1], results["replayops proxy"][1]
            print(f"throughput ours/bare mitmdump: {ours_full['rps'] / bare_full['rps']:.2f}   (target >= 0.85)")
            print(f"throughput ours/same mitmproxy without the recorder: {ours_full['rps'] / lean_full['rps']:.2f}"
                  "   (the recorder's own cost)")
            print(f"added latency at ~500/s vs direct: p50 {ours_slow['p50'] - direct_slow['p50']:.2f} ms, "
                  f"p99 {ours_slow['p99'] - direct_slow['p99']:.2f} ms   (target p99 <= 3 ms)")
            sidecar = procs[4].pid
            samples = [rss_mb(sidecar)]
            load = subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{args.soak:.0f}s", "-s", str(paced),
                                     f"http://127.0.0.1:{ours}/api/price"], stdout=subprocess.DEVNULL)
            step = max(args.soak / 12, 1)
            while load.poll() is None:
                time.sleep(step)
                samples.append(rss_mb(sidecar))
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=5).read().decode()
            sent = sum(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("replayops_capture_pairs_sent_total"))
            print(f"sidecar RSS over a {args.soak:.0f}s soak at ~500/s (MB): "
                  + " ".join(f"{s:.0f}" for s in samples))
            half = len(samples) // 2
            print(f"  first half mean {sum(samples[:half]) / half:.1f} MB, second half mean "
                  f"{sum(samples[half:]) / (len(samples) - half):.1f} MB; pairs delivered to the forwarder: "
                  f"{sent:.0f}")
        finally:
            for proc in procs:
                stop_pid(proc.pid, timeout=5)


if __name__ == "__main__":
    main()
