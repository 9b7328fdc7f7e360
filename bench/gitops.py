"""Benchmark the GitOps loop on a real kube-apiserver; prints ratios against baselines of the same run.

1. Time from a commit to converged: with the push webhook (target p50 <= 1 s) and with polling.
2. A repository of 1,000 TrafficReplays and one CapturePolicy selecting 500 Deployments: one full
   reconcile (target <= 30 s), against `kubectl apply --server-side` of the same 1,000 files.
3. A no-op reconcile right after: the number of write calls it makes (target 0).

Run: .venv/bin/python bench/gitops.py [--replays 1000] [--workloads 500] [--commits 10]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller import schema  # noqa: E402
from controller.devcluster import DevCluster, ensure_binaries, stop_pid  # noqa: E402
from controller.devcluster.cluster import free_port  # noqa: E402
from controller.gitops.reconcile import Options, Reconciler  # noqa: E402
from controller.gitops.source import GitSource  # noqa: E402
from controller.kube import connect  # noqa: E402
from tests.cluster.test_gitops import replay_yaml  # noqa: E402
from tests.gitrepo import Repo  # noqa: E402

API = "replayops.dev/v1alpha1"
POLICY = f"""apiVersion: {API}
kind: CapturePolicy
metadata: {{name: bench}}
spec:
  selector: {{matchLabels: {{app: bench}}}}
"""


def copies(kube, ns: str) -> int | None:  # type: ignore[no-untyped-def]
    tr = kube.get(API, "TrafficReplay", "live", ns)
    return None if tr is None else int(tr["spec"]["load"]["copies"])


def commit_to_converged(kube, kubeconfig: Path, tmp: Path, ns: str, commits: int, push: bool,  # type: ignore[no-untyped-def]
                        interval: str) -> list[float]:
    repo = Repo(tmp / f"repo-{ns}")
    repo.commit("start", {"live.yaml": replay_yaml("live", copies=1)})
    port, secret = free_port(), b"bench"
    (tmp / "secret").write_bytes(secret)
    argv = [sys.executable, "-m", "controller.cli", "controller", "run", "--repo", repo.url, "--namespace", ns,
            "--status-namespace", ns, "--name", ns, "--kubeconfig", str(kubeconfig), "--interval", interval,
            "--cache", str(tmp / f"cache-{ns}")]
    if push:
        argv += ["--push-port", str(port), "--push-secret-file", str(tmp / "secret")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = []
    try:
        while copies(kube, ns) != 1:
            time.sleep(0.05)
        for i in range(2, commits + 2):
            repo.commit(f"copies {i}", {"live.yaml": replay_yaml("live", copies=i)})
            started = time.perf_counter()
            if push:
                body = json.dumps({"ref": "refs/heads/main"}).encode()
                sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/github", data=body, method="POST",
                                             headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sig})
                urllib.request.urlopen(req, timeout=5).read()
            while copies(kube, ns) != i:
                time.sleep(0.02)
            out.append(time.perf_counter() - started)
    finally:
        stop_pid(proc.pid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replays", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=500)
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--poll-interval", default="5s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        dev = DevCluster(tmp / "cluster", ensure_binaries(), controller_manager=False)
        dev.start()
        try:
            kube = connect(dev.kubeconfig)
            kube.install_crds(schema.load_crds())
            for ns in ("push", "poll", "big", "baseline"):
                kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

            pushed = commit_to_converged(kube, dev.kubeconfig, tmp, "push", args.commits, True, "10m")
            polled = commit_to_converged(kube, dev.kubeconfig, tmp, "poll", args.commits, False, args.poll_interval)
            print(f"commit -> converged ({args.commits} commits each):")
            print(f"  push webhook   p50 {statistics.median(pushed):6.3f} s  max {max(pushed):6.3f} s"
                  "   (target p50 <= 1 s)")
            print(f"  polling {args.poll_interval:>4}   p50 {statistics.median(polled):6.3f} s  "
                  f"max {max(polled):6.3f} s")
            print(f"  ratio push/poll p50: {statistics.median(pushed) / statistics.median(polled):.3f}")

            for i in range(args.workloads):
                kube.create({"apiVersion": "apps/v1", "kind": "Deployment",
                             "metadata": {"name": f"w{i:04d}", "namespace": "big"},
                             "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "bench", "i": str(i)}},
                                      "template": {"metadata": {"labels": {"app": "bench", "i": str(i)}},
                                                   "spec": {"containers": [{"name": "a", "image": "a"}]}}}})
            files = {f"replays/r{i:04d}.yaml": replay_yaml(f"r{i:04d}", f"http://t{i}:80")
                     for i in range(args.replays)}
            repo = Repo(tmp / "big-repo")
            repo.commit("big", {**files, "policy.yaml": POLICY})
            started = time.perf_counter()
            kubectl = Path(sys.executable).parent / "kubectl"
            subprocess.run([str(kubectl), f"--kubeconfig={dev.kubeconfig}", "apply", "--server-side", "-n",
                            "baseline", "-f", str(repo.path / "replays")], check=True, capture_output=True)
            baseline = time.perf_counter() - started
            reconciler = Reconciler(kube, GitSource(repo.url, cache=tmp / "big-cache"),
                                    Options(name="big", namespace="big", status_namespace="big"))
            started = time.perf_counter()
            outcome = reconciler.reconcile()
            full = time.perf_counter() - started
            assert not outcome.error, outcome.error
            writes = kube.writes
            started = time.perf_counter()
            noop = reconciler.reconcile()
            noop_s = time.perf_counter() - started
            print(f"full reconcile: {len(outcome.applied)} replays applied, {len(outcome.annotated)} workloads "
                  f"annotated in {full:.1f} s   (target <= 30 s)")
            print(f"  kubectl apply --server-side of the {args.replays} replays alone: {baseline:.1f} s; "
                  f"ratio ours/kubectl {full / baseline:.2f}")
            print(f"no-op reconcile: {noop_s:.2f} s, {kube.writes - writes} write calls, "
                  f"{len(noop.applied)} applied   (target 0 writes)")
        finally:
            dev.stop()


if __name__ == "__main__":
    main()
