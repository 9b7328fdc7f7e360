"""Benchmark the admission webhook; prints ratios against baselines measured in the same run.

1. Admission latency of a pod-injection review at ~500 req/s over HTTPS keep-alive on loopback, paced
   by wrk (Debian; a Lua delay() per connection), against the same server's /healthz.
   Target: p99 <= 5 ms.
2. Pod-create latency through the real kube-apiserver with the webhook registered / without it.
   Target: ratio <= 1.3.

Run: .venv/bin/python bench/webhook_admission.py [--seconds 10] [--pods 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller import schema  # noqa: E402
from controller.devcluster import DevCluster, ensure_binaries  # noqa: E402
from controller.kube import connect  # noqa: E402
from controller.webhook import register  # noqa: E402
from tests.conftest import Cluster, start_webhook  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def review_body(ns: str) -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "checkout-", "annotations": {"replayops.dev/capture": "checkout"}},
           "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4",
                                    "ports": [{"containerPort": 8080}]}]}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                   "operation": "CREATE", "namespace": ns, "object": pod}}).encode()


def wrk_paced(port: int, path: str, body: bytes | None, rate: float, seconds: float, tmp: Path,
              connections: int = 10) -> dict[str, float]:
    """wrk at about ``rate`` req/s (each connection waits between requests); p50/p99 in ms and req/s."""
    import re
    import subprocess

    script = tmp / f"paced-{path.strip('/').replace('/', '-')}.lua"
    lines = [f"delay = function() return {round(connections * 1000 / rate)} end"]
    if body is not None:
        (tmp / "body.json").write_bytes(body)
        lines += ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
                  f'local f = io.open("{tmp / "body.json"}", "rb"); wrk.body = f:read("*a"); f:close()']
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(script),
                          f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        result[f"p{q}"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return result


def paced(port: int, ca: Path, method: str, path: str, body: bytes | None, rate: float, seconds: float,
          threads: int = 4) -> list[float]:
    """Latencies (ms) of requests sent at ``rate`` req/s in total, from their scheduled times."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.5
    per_thread = rate / threads

    def worker(offset: int) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        mine: list[float] = []
        n = 0
        while True:
            scheduled = start + (n + offset / threads) / per_thread
            if scheduled - start > seconds:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            mine.append((time.perf_counter() - scheduled) * 1000)
            n += 1
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies


def pod_create_ms(cluster: Cluster, ns: str, count: int) -> list[float]:
    out = []
    for i in range(count):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}-{i}", "namespace": ns,
                            "annotations": {"replayops.dev/capture": "checkout"}},
               "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4",
                                        "ports": [{"containerPort": 8080}]}]}}
        started = time.perf_counter()
        cluster.kube.create(pod)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dev = DevCluster(Path(tmp) / "cluster", ensure_binaries(), controller_manager=False)
        dev.start()
        try:
            kube = connect(dev.kubeconfig)
            kube.install_crds(schema.load_crds())
            cluster = Cluster(dev.kubeconfig, kube, dev)
            ns = "bench"
            kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            kube.create({"apiVersion": "replayops.dev/v1alpha1", "kind": "CapturePolicy",
                         "metadata": {"name": "checkout", "namespace": ns},
                         "spec": {"selector": {"matchLabels": {"app": "checkout"}}, "outbound": {"enabled": True}}})
            hook = start_webhook(cluster, Path(tmp), "--threads", "16", "--workers", str(args.workers))
            try:
                ca = hook.cert_dir / "ca.crt"
                wbase = wrk_paced(hook.port, "/healthz", None, args.rate, args.seconds, Path(tmp))
                winj = wrk_paced(hook.port, "/mutate/pods", review_body(ns), args.rate, args.seconds, Path(tmp))
                print(f"admission paced by wrk at ~{args.rate:.0f} req/s for {args.seconds:.0f}s:")
                print(f"  /healthz      {wbase['rps']:5.0f} req/s  p50 {wbase['p50']:6.2f} ms  "
                      f"p99 {wbase['p99']:6.2f} ms")
                print(f"  /mutate/pods  {winj['rps']:5.0f} req/s  p50 {winj['p50']:6.2f} ms  p99 {winj['p99']:6.2f} ms"
                      "   (target p99 <= 5 ms)")
                print(f"  ratio injection/healthz: p50 {winj['p50'] / wbase['p50']:.2f}  "
                      f"p99 {winj['p99'] / wbase['p99']:.2f}")
                base = paced(hook.port, ca, "GET", "/healthz", None, args.rate, args.seconds)
                inj = paced(hook.port, ca, "POST", "/mutate/pods", review_body(ns), args.rate, args.seconds)
                print(f"admission from a Python open-loop client at {args.rate:.0f} req/s ({len(inj)} reviews):")
                print(f"  /healthz      p50 {pct(base, .5):6.2f} ms  p99 {pct(base, .99):6.2f} ms")
                print(f"  /mutate/pods  p50 {pct(inj, .5):6.2f} ms  p99 {pct(inj, .99):6.2f} ms"
                      f"   (target p99 <= 5 ms)")
                print(f"  ratio injection/healthz: p50 {pct(inj, .5) / pct(base, .5):.2f}  "
                      f"p99 {pct(inj, .99) / pct(base, .99):.2f}")
                pod_create_ms(cluster, ns, 20)  # warm up both paths' caches
                with_hook = pod_create_ms(cluster, ns, args.pods)
            finally:
                hook.stop()
            register.unregister(kube)
            time.sleep(2)  # let the apiserver drop the configuration
            pod_create_ms(cluster, ns, 20)
            without = pod_create_ms(cluster, ns, args.pods)
            print(f"pod create through kube-apiserver ({args.pods} pods each):")
            print(f"  without webhook  median {statistics.median(without):6.2f} ms  p99 {pct(without, .99):6.2f} ms")
            print(f"  with webhook     median {statistics.median(with_hook):6.2f} ms  "
                  f"p99 {pct(with_hook, .99):6.2f} ms")
            print(f"  ratio with/without: median {statistics.median(with_hook) / statistics.median(without):.2f}"
                  f"   (target <= 1.3)")
        finally:
            dev.stop()


if __name__ == "__main__":
    main()
