"""Benchmark the admission webhook; prints ratios against baselines measured in the same run.

1. Admission latency of a pod-injection review at 500 req/s over HTTPS keep-alive on loopback, paced
   by wrk (Debian; open loop, evenly spaced: bench/wrk.py), against the same server's /healthz.
   Target: p99 <= 5 ms.
2. Pod-create latency through the real kube-apiserver (etcd with fsync) with our webhook / without a
   webhook. Target: ratio <= 1.3. Beside it, in the same alternating rounds: the floor — the fastest
   webhook this machine runs (bench/floor_webhook.py), answering with our patch and with none — and
   the injected pod created directly, which separate what any webhook costs the apiserver and what the
   bigger pod costs from what ours adds; pods of one template (as a ReplicaSet creates them), pods all
   different (no cached patch applies) and pods without the capture annotation (our matchConditions
   spare them the call).

Run: .venv/bin/python bench/webhook_admission.py [--seconds 10] [--rounds 3] [--pods 200]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import jsonpatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk  # noqa: E402
from controller import schema  # noqa: E402
from controller.admission import register  # noqa: E402
from controller.devcluster import DevCluster, ensure_binaries  # noqa: E402
from controller.devcluster.cluster import free_port  # noqa: E402
from controller.kube import Kube, connect  # noqa: E402
from tests.conftest import Cluster, WebhookProc, start_webhook  # noqa: E402


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


def bench_pod(ns: str, *, label: str | None = None, captured: bool = True) -> dict[str, object]:
    """The benchmark's pod; with ``label`` it differs from every other (no cached patch applies)."""
    meta: dict[str, object] = {"name": f"p-{uuid.uuid4().hex[:12]}", "namespace": ns}
    if captured:
        meta["annotations"] = {"replayops.dev/capture": "checkout"}
    if label:
        meta["labels"] = {"bench-pod": label}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4",
                                     "ports": [{"containerPort": 8080}]}]}}


class PodPoster:
    """POSTs pods to the apiserver over one keep-alive TLS connection, reading but not parsing the
    answers: what is timed is the apiserver (and its webhooks), not a client's JSON decoding."""

    def __init__(self, dev: DevCluster) -> None:
        pki = dev.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.conn = http.client.HTTPSConnection("127.0.0.1", dev.ports.apiserver, context=ctx, timeout=30)

    def create_ms(self, ns: str, pods: Iterable[dict[str, object]]) -> list[float]:
        out = []
        for pod in pods:
            body = json.dumps(pod).encode()
            started = time.perf_counter()
            self.conn.request("POST", f"/api/v1/namespaces/{ns}/pods", body,
                              {"Content-Type": "application/json", "Accept": "application/json"})
            resp = self.conn.getresponse()
            answer = resp.read()
            out.append((time.perf_counter() - started) * 1000)
            if resp.status != 201:
                raise RuntimeError(f"pod create answered {resp.status}: {answer[:300]!r}")
        return out


@dataclass
class Floor:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def our_patch(hook_url: str, cert_dir: Path, body: bytes) -> str:
    """The JSONPatch (base64) our webhook answers ``body`` with."""
    ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    req = urllib.request.Request(f"{hook_url}/mutate/pods", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.load(resp)["response"]["patch"]  # type: ignore[no-any-return]


def start_floor(cert_dir: Path, patch: Path | None) -> Floor:
    """bench/floor_webhook.py, answering pods with ``patch`` (or allowing them unchanged)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floor_webhook.py")), "--port", str(port),
                             "--cert-dir", str(cert_dir), *(["--patch", str(patch)] if patch else [])])
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Floor(proc, url)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the floor webhook did not start") from None
            time.sleep(0.1)


@dataclass(frozen=True)
class Case:
    """One way of creating the benchmark's pods: which webhook answers (None: none) and which pods."""

    label: str
    webhook: str | None
    pod: Callable[[int], dict[str, object]]


def create_rounds(cluster: Cluster, ns: str, cases: list[Case], urls: dict[str, str], ca_pem: bytes,
                  rounds: int, per_round: int) -> dict[str, list[float]]:
    """Pod-create latencies per case, measured in alternating rounds so that drift in the apiserver
    and etcd hits every case alike (the webhook configurations are applied and deleted between them)."""
    out: dict[str, list[float]] = {case.label: [] for case in cases}
    poster = PodPoster(cluster.dev)
    for _ in range(rounds):
        for case in cases:
            if case.webhook is None:
                register.unregister(cluster.kube)
                wait_injection(cluster.kube, ns, False)
            else:
                register.register(cluster.kube, ca_pem, urls[case.webhook])
                wait_injection(cluster.kube, ns, case.webhook != "allow")
                time.sleep(1)  # until every apiserver informer serves the new configuration
            poster.create_ms(ns, (case.pod(i) for i in range(10)))  # warm up
            out[case.label] += poster.create_ms(ns, (case.pod(i) for i in range(per_round)))
    return out


def pod_creates(cluster: Cluster, ns: str, hook: WebhookProc, tmp: Path, rounds: int, pods: int) -> None:
    """Pod-create latency without a webhook, through floors and through ours; prints the ratios."""
    hook_url = f"https://127.0.0.1:{hook.port}"
    patch = our_patch(hook_url, hook.cert_dir, review_body(ns))
    (tmp / "patch.b64").write_text(patch)
    injected = jsonpatch.apply_patch(bench_pod(ns), json.loads(base64.b64decode(patch)))
    cases = [
        Case("without webhook", None, lambda i: bench_pod(ns)),
        Case("  the injected pod", None, lambda i: {**injected, "metadata": {**injected["metadata"],
                                                                              "name": f"i-{uuid.uuid4().hex[:12]}"}}),
        Case("floor, no patch", "allow", lambda i: bench_pod(ns)),
        Case("floor, our patch", "floor", lambda i: bench_pod(ns)),
        Case("ours", "ours", lambda i: bench_pod(ns)),
        Case("ours, unique pods", "ours", lambda i: bench_pod(ns, label=uuid.uuid4().hex)),
        Case("ours, not captured", "ours", lambda i: bench_pod(ns, captured=False)),
    ]
    floors = {"floor": start_floor(hook.cert_dir, tmp / "patch.b64"), "allow": start_floor(hook.cert_dir, None)}
    try:
        urls = {"ours": hook_url, **{name: floor.url for name, floor in floors.items()}}
        creates = create_rounds(cluster, ns, cases, urls, hook.cert_dir.joinpath("ca.crt").read_bytes(), rounds,
                                max(1, pods // rounds))
    finally:
        for floor in floors.values():
            floor.stop()
    med = {label: statistics.median(values) for label, values in creates.items()}
    print(f"pod create through kube-apiserver ({len(creates['ours'])} pods per case, {rounds} alternating rounds, "
          f"etcd with fsync unless --no-fsync):")
    for label, values in creates.items():
        print(f"  {label:19} median {med[label]:6.2f} ms  p99 {pct(values, .99):6.2f} ms")
    base = med["without webhook"]
    print(f"  ratio with/without: ours {med['ours'] / base:.2f} (pods of one template, as a ReplicaSet makes them), "
          f"ours {med['ours, unique pods'] / base:.2f} (every pod different)   (target <= 1.3)")
    print(f"  the floor (bench/floor_webhook.py, the fastest server possible here): with our patch "
          f"{med['floor, our patch'] / base:.2f}, without a patch {med['floor, no patch'] / base:.2f}")
    print(f"  a pod without the capture annotation (our matchConditions skip the call): "
          f"{med['ours, not captured'] / base:.2f}")
    print(f"  ratio ours/floor: {med['ours'] / med['floor, our patch']:.2f} and "
          f"{med['ours, unique pods'] / med['floor, our patch']:.2f};  ours/creating the injected pod directly: "
          f"{med['ours'] / med['  the injected pod']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--pods", type=int, default=200, help="pods created per case")
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
                pod_creates(cluster, ns, hook, Path(tmp), args.rounds, args.pods)
            finally:
                hook.stop()
            mean_ms, calls = webhook_call_ms(dev)
            print(f"  the apiserver's own measure of the injection calls (both webhooks): mean {mean_ms:.2f} ms "
                  f"over {calls} calls (apiserver_admission_webhook_admission_duration_seconds)")
        finally:
            dev.stop()


if __name__ == "__main__":
    main()
