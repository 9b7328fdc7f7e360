"""Benchmark the GitOps loop on a real kube-apiserver; prints ratios against baselines of the same run.

1. Time from a commit to converged: with the push webhook (target p50 <= 0.1 s) and with polling; on
   an empty cluster and again beside the big set of part 2.
2. 5,000 Deployments (``replicas: 0``: nothing is scheduled; every tenth selected by one CapturePolicy)
   and a repository of 1,000 TrafficReplays: one full apply through the loop's watch-backed caches
   (target <= 2x `kubectl apply --server-side` of the same objects: the replays, the policy and the
   workloads' annotations, on a copy of the selected Deployments).
3. A no-op pass right after, and a poll (fetch, nothing new): write and list calls (target 0 writes,
   <= 5 list calls); then a commit that changes one file of the 1,000.

Run: .venv/bin/python bench/gitops.py [--replays 1000] [--workloads 5000] [--commits 10]
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
from controller.gitops import desired  # noqa: E402
from controller.gitops.loop import Loop, watch_caches  # noqa: E402
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
    argv = [sys.executable, "-m", "controller.cli", "controller", "run", "--no-replays", "--repo", repo.url,
            "--namespace", ns, "--forwarder-namespace", ns,
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


def deployment(name: str, ns: str, labels: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "a", "image": "a"}]}}}}


def pushes(kube, dev: DevCluster, tmp: Path, args: argparse.Namespace, ns: str,  # type: ignore[no-untyped-def]
           label: str) -> float:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    pushed = commit_to_converged(kube, dev.kubeconfig, tmp, ns, args.commits, True, "10m")
    print(f"  push webhook ({label}) p50 {statistics.median(pushed):6.3f} s  max {max(pushed):6.3f} s"
          "   (target p50 <= 0.1 s)")
    return statistics.median(pushed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replays", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=5000)
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
            for ns in ("poll", "big", "baseline"):
                kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            print(f"commit -> converged ({args.commits} commits each):")
            empty = pushes(kube, dev, tmp, args, "push-empty", "empty")
            polled = commit_to_converged(kube, dev.kubeconfig, tmp, "poll", args.commits, False, args.poll_interval)
            print(f"  polling {args.poll_interval:>4}   p50 {statistics.median(polled):6.3f} s  "
                  f"max {max(polled):6.3f} s;  ratio push/poll p50: {empty / statistics.median(polled):.3f}")

            selected = [i for i in range(args.workloads) if i % 10 == 0]
            for i in range(args.workloads):
                labels = {"app": "bench" if i in selected else "other", "i": str(i)}
                kube.create(deployment(f"w{i:04d}", "big", labels))
            for i in selected:
                kube.create(deployment(f"w{i:04d}", "baseline", {"app": "bench", "i": str(i)}))
            files = {f"replays/r{i:04d}.yaml": replay_yaml(f"r{i:04d}", f"http://t{i}:80")
                     for i in range(args.replays)}
            repo = Repo(tmp / "big-repo")
            repo.commit("big", {**files, "policy.yaml": POLICY})

            # the baseline: kubectl applies the same objects, and the same annotations on copies of the workloads
            base = tmp / "baseline"
            base.mkdir()
            for name, text in files.items():
                (base / Path(name).name).write_text(text)
            (base / "policy.yaml").write_text(POLICY)
            for i in selected:
                (base / f"w{i:04d}.json").write_text(json.dumps({
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"w{i:04d}"},
                    "spec": {"template": {"metadata": {"annotations": {
                        "replayops.dev/capture": "bench", "replayops.dev/config-hash": "0123456789abcdef"}}}}}))
            kubectl = Path(sys.executable).parent / "kubectl"
            started = time.perf_counter()
            subprocess.run([str(kubectl), f"--kubeconfig={dev.kubeconfig}", "apply", "--server-side", "-n",
                            "baseline", "-f", str(base)], check=True, capture_output=True)
            baseline = time.perf_counter() - started
            kube.delete(API, "CapturePolicy", "bench", "baseline")  # its workloads are not the loop's to annotate

            big = connect(dev.kubeconfig)  # the loop's client, reading through its caches
            reconciler = Reconciler(big, GitSource(repo.url, cache=tmp / "big-cache"),
                                    Options(name="big", namespace="big", status_namespace="big"))
            loop = Loop(reconciler, interval=3600)  # never run: its caches are what the controller reads through
            caches = watch_caches(big, loop, desired.DEFAULT_ALLOWED_KINDS, replays=False, replay_namespace="big")
            started = time.perf_counter()
            outcome = reconciler.reconcile()
            full = time.perf_counter() - started
            assert not outcome.error, outcome.error
            print(f"full apply: {len(outcome.applied)} objects applied, {len(outcome.annotated)} of "
                  f"{args.workloads} workloads annotated in {full:.1f} s;  kubectl apply --server-side of the "
                  f"same: {baseline:.1f} s;  ratio ours/kubectl {full / baseline:.2f}   (target <= 2)")
            def measured(what: str, fetch: bool, target: str = "") -> None:
                lists, writes = big.lists, big.writes
                started = time.perf_counter()
                out = reconciler.reconcile(fetch=fetch)
                took = time.perf_counter() - started
                assert not out.error, out.error
                print(f"{what}: {took:.2f} s, {big.writes - writes} write calls, {big.lists - lists} list calls, "
                      f"{len(out.applied)} applied{target}")

            measured("no-op pass", False, "   (target 0 writes, <= 5 lists)")
            measured("poll, nothing new", True, "   (target 0 writes, <= 5 lists)")
            repo.commit("one replay changed", {"replays/r0000.yaml": replay_yaml("r0000", "http://t0:80", copies=3)})
            measured(f"a commit changing one of the {args.replays} files", True)
            caches.stop()
            beside = pushes(kube, dev, tmp, args, "push-beside", f"beside {args.workloads} workloads")
            print(f"  ratio beside/empty p50: {beside / empty:.2f}")
        finally:
            dev.stop()


if __name__ == "__main__":
    main()
