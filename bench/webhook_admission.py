"""Benchmark the admission webhook; prints ratios against baselines measured in the same run.

1. Admission latency of a pod-injection review at 500 req/s over HTTPS keep-alive on loopback, paced
   by wrk (Debian; open loop, evenly spaced: bench/wrk.py), against the same server's /healthz.
   Target: p99 <= 5 ms.
2. Pod-create latency through the real kube-apiserver with the webhook registered / without it.
   Target: ratio <= 1.3.

Run: .venv/bin/python bench/webhook_admission.py [--seconds 10] [--pods 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk  # noqa: E402
from controller import schema  # noqa: E402
from controller.devcluster import DevCluster, ensure_binaries  # noqa: E402
from controller.kube import Kube, connect  # noqa: E402
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


def injection_active(kube: Kube, ns: str) -> bool:
    """Whether a pod created now comes back injected (server-side dry run)."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "probe", "namespace": ns, "annotations": {"replayops.dev/capture": "checkout"}},
           "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4"}]}}
    out = kube.apply(pod, dry_run=True)
    return any(c["name"] == "replayops-proxy" for c in out["spec"].get("initContainers", []))


def webhook_call_ms(dev: DevCluster) -> tuple[float, int]:
    """Mean duration of the pod-injection webhook call as the apiserver measures it, and the call count."""
    pki = dev.workdir / "pki"
    text = subprocess.run(["curl", "-sf", "--cacert", str(pki / "ca.crt"), "--cert", str(pki / "admin.crt"),
                           "--key", str(pki / "admin.key"), f"https://127.0.0.1:{dev.ports.apiserver}/metrics"],
                          capture_output=True, text=True, check=True).stdout
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        if line.startswith("apiserver_admission_webhook_admission_duration_seconds_") and \
                'name="pods.inject.replayops.dev"' in line:
            kind = line.split("{", 1)[0].rsplit("_", 1)[1]
            if kind in total:
                total[kind] += float(line.rsplit(" ", 1)[1])
    return 1000 * total["sum"] / max(total["count"], 1), int(total["count"])


def wait_injection(kube: Kube, ns: str, active: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while injection_active(kube, ns) != active:
        if time.monotonic() > deadline:
            raise RuntimeError(f"injection still {'off' if active else 'on'} after {timeout:.0f}s")
        time.sleep(0.2)


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", dest="durable", action="store_false",
                        help="etcd without fsync (the tests' setting); by default it syncs as in production")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dev = DevCluster(Path(tmp) / "cluster", ensure_binaries(), controller_manager=False, durable=args.durable)
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
                url = f"https://127.0.0.1:{hook.port}"
                health_lua = wrk.script(Path(tmp) / "healthz.lua", rate=args.rate)
                inject_lua = wrk.script(Path(tmp) / "inject.lua", rate=args.rate, body=review_body(ns))
                rounds: dict[str, list[dict[str, float]]] = {"/healthz": [], "/mutate/pods": []}
                wrk.run(f"{url}/mutate/pods", 2, 10, inject_lua)  # warm up the workers
                for _ in range(args.rounds):
                    rounds["/healthz"].append(wrk.run(f"{url}/healthz", args.seconds, 10, health_lua))
                    rounds["/mutate/pods"].append(wrk.run(f"{url}/mutate/pods", args.seconds, 10, inject_lua))
                wbase, winj = ({k: statistics.median(r[k] for r in rounds[path]) for k in ("rps", "p50", "p99")}
                               for path in ("/healthz", "/mutate/pods"))
                print(f"admission by wrk at {args.rate:.0f} req/s (open loop, evenly spaced), {args.seconds:.0f}s, "
                      f"median of {args.rounds} rounds:")
                print(f"  /healthz      {wbase['rps']:5.0f} req/s  p50 {wbase['p50']:6.2f} ms  "
                      f"p99 {wbase['p99']:6.2f} ms")
                print(f"  /mutate/pods  {winj['rps']:5.0f} req/s  p50 {winj['p50']:6.2f} ms  p99 {winj['p99']:6.2f} ms"
                      "   (target p99 <= 5 ms)  p99 of each round: "
                      + " ".join(f"{r['p99']:.2f}" for r in rounds["/mutate/pods"]))
                print(f"  ratio injection/healthz: p50 {winj['p50'] / wbase['p50']:.2f}  "
                      f"p99 {winj['p99'] / wbase['p99']:.2f}")
                # with and without the webhook in alternating rounds (the configuration is applied and
                # deleted between them), so drift in the apiserver and etcd hits both sides alike
                ca_pem, hook_url = (hook.cert_dir / "ca.crt").read_bytes(), f"https://127.0.0.1:{hook.port}"
                with_hook: list[float] = []
                without: list[float] = []
                per_round = max(1, args.pods // args.rounds)
                for _ in range(args.rounds):
                    wait_injection(kube, ns, True)
                    pod_create_ms(cluster, ns, 10)  # warm up
                    with_hook += pod_create_ms(cluster, ns, per_round)
                    register.unregister(kube)
                    wait_injection(kube, ns, False)
                    pod_create_ms(cluster, ns, 10)
                    without += pod_create_ms(cluster, ns, per_round)
                    register.register(kube, ca_pem, hook_url)
            finally:
                hook.stop()
            print(f"pod create through kube-apiserver ({len(with_hook)} pods each, {args.rounds} alternating rounds, "
                  f"etcd {'with fsync' if args.durable else 'without fsync'}):")
            print(f"  without webhook  median {statistics.median(without):6.2f} ms  p99 {pct(without, .99):6.2f} ms")
            print(f"  with webhook     median {statistics.median(with_hook):6.2f} ms  "
                  f"p99 {pct(with_hook, .99):6.2f} ms")
            print(f"  ratio with/without: median {statistics.median(with_hook) / statistics.median(without):.2f}"
                  f"   (target <= 1.3)")
            mean_ms, calls = webhook_call_ms(dev)
            print(f"  the apiserver's own measure of the injection call: mean {mean_ms:.2f} ms over {calls} calls "
                  "(apiserver_admission_webhook_admission_duration_seconds)")
        finally:
            dev.stop()


if __name__ == "__main__":
    main()
