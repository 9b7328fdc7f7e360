"""Benchmark the capturing sidecar against nginx direct and bare mitmdump, with wrk (Debian) as the load.

Targets on loopback, all forwarding to one nginx: nginx direct; bare `mitmdump` in reverse mode;
mitmproxy with only the sidecar's addon set and no recorder (bench/lean_mitmproxy.py: isolates
the recorder's own cost); `replayops proxy` (records every pair and delivers it to a running
`replayops forwarder` on the same cores); the same with the forwarder "elsewhere" (nginx accepts
the batches, as a forwarder on other nodes would: only the sidecar's own work stays on these cores);
and `replayops proxy --workers 2`, forwarder elsewhere.
For each, wrk measures maximum throughput (closed loop) and latency at a fixed 500 req/s (open
loop, evenly spaced: bench/wrk.py). Rounds alternate the targets; medians are printed. While one
target is measured the others are paused (SIGSTOP), and a sidecar's backlog from the flat-out run
is drained before its paced run.
Then the sidecar's RSS is sampled over a soak run to show whether memory stays flat.
Targets: the addon costs <= 15% of bare mitmdump's throughput; added p99 <= 3 ms at 500 req/s; the
sidecar's CPU per 1,000 req/s (its processes' CPU time over the paced run) <= 0.5 vCPU, beside Istio's
published ~0.35 vCPU per 1,000 req/s for Envoy.

Prerequisites: `apt-get install wrk nginx-light`.
Run: .venv/bin/python bench/capture_proxy.py [--seconds 8] [--rounds 3] [--soak 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk  # noqa: E402
from controller.devcluster import stop_pid  # noqa: E402
from controller.devcluster.cluster import free_port  # noqa: E402

BIN = Path(sys.executable).parent


def nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;
    return 200 '{{"item":"apple","price":3,"currency":"EUR"}}'; }}
    location /v1/batches {{ return 202; }} }} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], start_new_session=True)


def cpu_seconds(group: int) -> float:
    """CPU time (user + system) of every process in process group ``group`` (a target and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drained(health_port: int, timeout: float = 120) -> None:
    """Wait until the sidecar has handed every captured pair on (sent or dropped), then let the forwarder finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5).read().decode()
        total = {name: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(name + "_total"))
                 for name in ("replayops_capture_pairs_captured", "replayops_capture_pairs_sent",
                              "replayops_capture_pairs_dropped")}
        if total["replayops_capture_pairs_captured"] <= (total["replayops_capture_pairs_sent"]
                                                         + total["replayops_capture_pairs_dropped"]):
            time.sleep(2)
            return
        time.sleep(0.5)
    raise RuntimeError(f"the sidecar on health port {health_port} did not drain in {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500)
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
        up, bare, lean, ours, remote, ours2, fwd, health, health_remote, health2 = (free_port() for _ in range(10))
        paced = wrk.script(tmp / "paced.lua", rate=args.rate)

        def proxy(port: int, health_port: int, forwarder: int, *extra: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([str(BIN / "replayops"), "proxy", "--reverse", f"{port}:{up}", "--forwarder",
                                     f"http://127.0.0.1:{forwarder}", "--service", "bench", "--health-port",
                                     str(health_port), *extra], env=env, start_new_session=True,
                                    stderr=subprocess.DEVNULL)

        procs = [nginx(tmp, up),
                 subprocess.Popen([str(BIN / "mitmdump"), "-q", "--mode", f"reverse:http://127.0.0.1:{up}@{bare}"],
                                  start_new_session=True),
                 subprocess.Popen([sys.executable, str(Path(__file__).with_name("lean_mitmproxy.py")),
                                   f"reverse:http://127.0.0.1:{up}@{lean}"], start_new_session=True),
                 subprocess.Popen([str(BIN / "replayops"), "forwarder", "--host", "127.0.0.1", "--port", str(fwd)],
                                  env=env, start_new_session=True, stderr=subprocess.DEVNULL),
                 # the forwarder's DLP on these two cores, and "elsewhere" (as in a cluster): nginx takes the
                 # batches (202) so only the sidecar's own work (record, encode, compress, post) is here
                 proxy(ours, health, fwd), proxy(remote, health_remote, up),
                 proxy(ours2, health2, up, "--workers", "2")]
        healths = {"replayops proxy": health, "ours, fwd elsewhere": health_remote,
                   "ours -w2, fwd elsewhere": health2}
        targets = {"nginx direct": up, "bare mitmdump": bare, "sidecar addons only": lean,
                   "replayops proxy": ours, "ours, fwd elsewhere": remote, "ours -w2, fwd elsewhere": ours2}
        # each target's processes (the forwarder goes with the proxy that uses it); the others are
        # paused with SIGSTOP while one is measured, so idle event loops and backlogs stay out of it
        groups = {"nginx direct": [], "bare mitmdump": [procs[1]], "sidecar addons only": [procs[2]],
                  "replayops proxy": [procs[4], procs[3]], "ours, fwd elsewhere": [procs[5]],
                  "ours -w2, fwd elsewhere": [procs[6]]}

        def only(name: str) -> None:
            for other, members in groups.items():
                for proc in members:
                    os.killpg(proc.pid, signal.SIGCONT if other == name else signal.SIGSTOP)

        try:
            for port in targets.values():
                wait_port(port)
                wrk.run(f"http://127.0.0.1:{port}/api/price", 2, args.connections)  # warm up
            runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, port in targets.items():
                    only(name)
                    url = f"http://127.0.0.1:{port}/api/price"
                    full = wrk.run(url, args.seconds, args.connections)
                    if name in healths:  # the flat-out run's backlog must not share the cores with the next
                        drained(healths[name])
                    group = groups[name][0].pid if groups[name] else None
                    before = cpu_seconds(group) if group else 0.0
                    at_rate = wrk.run(url, args.seconds, args.connections, paced)
                    at_rate["cpu"] = (cpu_seconds(group) - before) / args.seconds if group else 0.0
                    runs[name].append((full, at_rate))

            def med(name: str, which: int, key: str) -> float:
                return statistics.median(r[which][key] for r in runs[name])

            print(f"wrk -t1 -c{args.connections}, {args.seconds:.0f}s per run, median of {args.rounds} rounds "
                  f"(alternating targets)")
            print(f"{'':24} {'max req/s':>9} | at {args.rate:.0f}/s: {'req/s':>6} {'p50 ms':>7} {'p90 ms':>7} "
                  f"{'p99 ms':>7}  (p99 of each round)")
            for name in targets:
                p99s = " ".join(f"{r[1]['p99']:.2f}" for r in runs[name])
                print(f"{name:24} {med(name, 0, 'rps'):9.0f} | {'':8} {med(name, 1, 'rps'):6.0f} "
                      f"{med(name, 1, 'p50'):7.2f} {med(name, 1, 'p90'):7.2f} {med(name, 1, 'p99'):7.2f}  ({p99s})")
            for name in list(targets)[1:]:
                per_k = med(name, 1, "cpu") / (med(name, 1, "rps") / 1000)
                print(f"CPU at {args.rate:.0f}/s, {name}: {med(name, 1, 'cpu'):.3f} vCPU = {per_k:.2f} vCPU per "
                      "1,000 req/s   (target <= 0.5 for the sidecar; Envoy ~0.35)")
            ratio = med("replayops proxy", 0, "rps") / med("bare mitmdump", 0, "rps")
            print(f"throughput ours/bare mitmdump: {ratio:.2f}   (target >= 0.85)")
            print(f"throughput ours/same mitmproxy without the recorder: "
                  f"{med('replayops proxy', 0, 'rps') / med('sidecar addons only', 0, 'rps'):.2f}"
                  "   (the recorder's own cost)")
            print(f"throughput 2 workers/1 worker (forwarder elsewhere): "
                  f"{med('ours -w2, fwd elsewhere', 0, 'rps') / med('ours, fwd elsewhere', 0, 'rps'):.2f}")
            for name in list(targets)[1:]:
                print(f"added latency at {args.rate:.0f}/s vs direct, {name}: "
                      f"p50 {med(name, 1, 'p50') - med('nginx direct', 1, 'p50'):.2f} ms, "
                      f"p99 {med(name, 1, 'p99') - med('nginx direct', 1, 'p99'):.2f} ms   (target p99 <= 3 ms)")
            only("replayops proxy")
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
            print(f"sidecar RSS over a {args.soak:.0f}s soak at {args.rate:.0f}/s (MB): "
                  + " ".join(f"{s:.0f}" for s in samples))
            half = len(samples) // 2
            print(f"  first half mean {sum(samples[:half]) / half:.1f} MB, second half mean "
                  f"{sum(samples[half:]) / (len(samples) - half):.1f} MB; pairs delivered to the forwarder: "
                  f"{sent:.0f}")
        finally:
            only("")
            for members in groups.values():
                for proc in members:
                    os.killpg(proc.pid, signal.SIGCONT)
            for proc in procs:
                stop_pid(proc.pid, timeout=5)


if __name__ == "__main__":
    main()
