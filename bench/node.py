"""Benchmarks on the real node: what capture costs a pod, and how long git → store → replay takes.

On a node of its own (the machine holds one: run it with no `replayops dev up` and no test session),
with replayops installed from manifests/overlays/dev and the image built by `replayops dev image`:

1. Pod startup: milliseconds from creating a one-replica Deployment to its pod Ready, with capture (the
   template carries the capture annotation: the webhook injects the sidecar) and without, in alternating
   rounds (median of --rounds each); then the same for --replicas replicas. Target: ratio <= 1.25.
2. Sidecar memory: the injected proxy's cgroup memory (``memory.current`` of its container) idle and
   under --rate req/s through it for --seconds (an asyncio client on the host, to the pod on the
   bridge). Istio's published figure for its proxy: about 40 MB per 1,000 req/s. Target <= 100 MiB.
3. End to end (--e2e runs): a CapturePolicy committed to git → the first pair in the store; a
   TrafficReplay committed → Succeeded. p50 of the runs each.

Run: .venv/bin/python bench/node.py [--rounds 10] [--replicas 10] [--rate 500] [--seconds 20] [--e2e 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller import paths  # noqa: E402
from controller.api import API_VERSION, CAPTURE, PROXY  # noqa: E402
from controller.devcluster import DevCluster, ensure_binaries, host, image, install  # noqa: E402
from controller.devcluster.build import ensure_node_binaries  # noqa: E402
from controller.kube import Kube, connect  # noqa: E402
from controller.store import FileStore  # noqa: E402
from tests.gitrepo import Repo, git_daemon  # noqa: E402

NS = "bench"
POLICY = {"apiVersion": API_VERSION, "kind": "CapturePolicy", "metadata": {"name": "bench", "namespace": NS},
          "spec": {"selector": {"matchLabels": {"bench": "captured"}}, "inbound": {"mode": "reverse",
                                                                                "ports": [8080]}}}


def deployment(name: str, tag: str, replicas: int, captured: bool) -> dict[str, Any]:
    notes = {CAPTURE: "bench"} if captured else {}
    labels = {"app": name, "bench": "captured" if captured else "plain"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels, "annotations": notes}, "spec": {
                         "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "app", "image": tag, "imagePullPolicy": "Never",
                                         "command": ["python3", "-m", "http.server", "8080", "-d", "/opt/replayops"],
                                         "ports": [{"containerPort": 8080}],
                                         "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}}


def start_to_ready(kube: Kube, tag: str, replicas: int, captured: bool) -> float:
    """Milliseconds from the Deployment's create to all its pods Ready (polled every 50 ms)."""
    name = f"{'cap' if captured else 'plain'}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    kube.create(deployment(name, tag, replicas, captured))
    kube.wait_for(f"{name} ready", lambda: ((kube.get("apps/v1", "Deployment", name, NS) or {}).get("status") or {})
                  .get("readyReplicas") == replicas, timeout=300, interval=0.05)
    took = (time.monotonic() - started) * 1000
    kube.delete("apps/v1", "Deployment", name, NS)
    kube.wait_for("its pods gone", lambda: not kube.list("v1", "Pod", NS, label_selector=f"app={name}"),
                  timeout=120, interval=0.2)
    return took


def pod_startup(kube: Kube, tag: str, rounds: int, replicas: int) -> None:
    one: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for captured in ((True, False) if i % 2 else (False, True)):  # alternate which goes first
            one[captured].append(start_to_ready(kube, tag, 1, captured))
    many = {captured: start_to_ready(kube, tag, replicas, captured) for captured in (False, True)}
    with_, without = statistics.median(one[True]), statistics.median(one[False])
    print(f"pod startup, create → Ready, median of {rounds} alternating rounds:")
    print(f"  1 replica   without capture {without:7.0f} ms   with capture {with_:7.0f} ms   added "
          f"{with_ - without:6.0f} ms   ratio {with_ / without:.2f}   (target <= 1.25)")
    for captured in (False, True):
        print(f"    each {'with   ' if captured else 'without'} capture: "
              + " ".join(f"{ms:.0f}" for ms in one[captured]))
    print(f"  {replicas} replicas without capture {many[False]:7.0f} ms   with capture {many[True]:7.0f} ms   "
          f"ratio {many[True] / many[False]:.2f}")


def _memory(pod: dict[str, Any]) -> int:
    """The working set of the pod's sidecar container, as the kubelet counts it: its cgroup's usage less
    inactive file cache (cgroup v1 here: ``memory/kubepods/.../<container id>``; v2: ``memory.current``)."""
    status = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == PROXY)
    cid = status["containerID"].split("://", 1)[1]
    for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        for found in root.glob(f"kubepods*/**/{cid}"):
            stat = dict(line.split() for line in (found / "memory.stat").read_text().splitlines())
            if (found / "memory.usage_in_bytes").is_file():
                return int((found / "memory.usage_in_bytes").read_text()) - int(stat.get("total_inactive_file", 0))
            return int((found / "memory.current").read_text()) - int(stat.get("inactive_file", 0))
    raise RuntimeError(f"no cgroup for container {cid}")


async def _load(url: str, rate: float, seconds: float) -> tuple[int, int]:
    import aiohttp

    sent = failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def one() -> None:
            nonlocal sent, failed
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    failed += resp.status >= 500
            except aiohttp.ClientError:
                failed += 1
            sent += 1
        tasks, start = [], time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return sent, failed


def sidecar_memory(kube: Kube, tag: str, rate: float, seconds: float) -> None:
    kube.create(deployment("mem", tag, 1, True))
    kube.wait_for("mem ready", lambda: ((kube.get("apps/v1", "Deployment", "mem", NS) or {}).get("status") or {})
                  .get("readyReplicas") == 1, timeout=300, interval=0.2)
    [pod] = kube.list("v1", "Pod", NS, label_selector="app=mem")
    time.sleep(5)  # settle after start
    idle = _memory(pod)
    peak, stop = [idle], False

    async def sample() -> None:
        while not stop:
            peak.append(_memory(pod))
            await asyncio.sleep(0.5)

    async def run() -> tuple[int, int]:
        nonlocal stop
        sampler = asyncio.create_task(sample())
        got = await _load(f"http://{pod['status']['podIP']}:15001/", rate, seconds)
        stop = True
        await sampler
        return got
    sent, failed = asyncio.run(run())
    print(f"sidecar memory (working set of {PROXY}'s cgroup), {seconds:g}s at {rate:g} req/s "
          f"({sent} sent, {failed} failed):")
    print(f"  idle {idle / 2**20:6.1f} MiB   under load peak {max(peak) / 2**20:6.1f} MiB   (target <= 100 MiB; "
          f"Istio's proxy: ~{40 * rate / 1000:.0f} MB at this rate)   ratio load/idle {max(peak) / idle:.2f}")
    kube.delete("apps/v1", "Deployment", "mem", NS)


def end_to_end(kube: Kube, kubeconfig: Path, tag: str, runs: int, work: Path, repo: Repo) -> None:
    """Commit → first pair; commit → Succeeded, through the controller in its pod."""
    to_pair, to_verdict = [], []
    store = FileStore(install.store_root(kube))
    examples = paths.source_dir("examples")

    def in_ns(path: Path, ns: str) -> str:
        return path.read_text().replace("namespace: demo", f"namespace: {ns}")

    def phase(kind: str, name: str, ns: str) -> str:
        return str(((kube.get(API_VERSION, kind, name, ns) or {}).get("status") or {}).get("phase"))

    for i in range(runs):
        ns = f"e2e-{i}"
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        install.kubectl(kubeconfig, "apply", "--server-side", "-k",  # the demo with its client, sending already
                        str(install.kustomization(work / ns, examples / "demo" / "k8s", tag, ns)))
        install.wait_available(kube, ns, "demo-server", 300)
        started = time.monotonic()
        repo.commit(f"capture {ns}", {f"policies/{ns}.yaml": in_ns(examples / "gitops" / "policies" /
                                                                    "demo-capture.yaml", ns)})
        kube.wait_for("the first pair", lambda ns=ns: install.recorded(store, ns, "demo-server") > 0,
                      timeout=300, interval=0.1)
        to_pair.append(time.monotonic() - started)
        repo.commit(f"snapshot {ns}", {f"snapshots/{ns}.yaml": in_ns(examples / "demo" / "replay" / "snapshot.yaml",
                                                                      ns)})
        kube.wait_for("the snapshot", lambda ns=ns: phase("Snapshot", "demo-baseline", ns) == "Ready", timeout=300)
        started = time.monotonic()
        repo.commit(f"replay {ns}", {f"replays/{ns}.yaml": in_ns(examples / "demo" / "replay" / "smoke.yaml", ns)})
        kube.wait_for("the verdict", lambda ns=ns: phase("TrafficReplay", "demo-smoke", ns) == "Succeeded",
                      timeout=600, interval=0.1)
        to_verdict.append(time.monotonic() - started)
    print(f"end to end through the controller in its pod (dev overlay: git polled every 5 s), {runs} runs:")
    print(f"  commit of a CapturePolicy → first pair in the store   p50 {statistics.median(to_pair):6.1f} s   "
          f"(each: {' '.join(f'{t:.1f}' for t in to_pair)})")
    print(f"  commit of a TrafficReplay → Succeeded (Job pod)         p50 {statistics.median(to_verdict):6.1f} s   "
          f"(each: {' '.join(f'{t:.1f}' for t in to_verdict)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--e2e", type=int, default=5)
    args = parser.parse_args()
    pause, replayops = image.ensure_pause_image(), image.ensure_image()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dev = DevCluster(work / "node", ensure_binaries(), node=ensure_node_binaries(), pause_image=pause.tag,
                         images=(pause.archive, replayops.archive))
        dev.start()
        repo = Repo(work / "git" / "repo")
        repo.commit("seed", {"README.md": "bench\n"})
        try:
            kube = connect(dev.kubeconfig)
            with git_daemon(work / "git", host.NODE_IP) as port:  # where the controller's pods fetch it
                install.install(kube, dev.kubeconfig, work, replayops.tag, f"git://{host.NODE_IP}:{port}/repo")
                kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
                kube.wait_for("default ServiceAccount", lambda: kube.get("v1", "ServiceAccount", "default", NS))
                kube.create(POLICY)
                pod_startup(kube, replayops.tag, args.rounds, args.replicas)
                sidecar_memory(kube, replayops.tag, args.rate, args.seconds)
                if args.e2e:
                    end_to_end(kube, dev.kubeconfig, replayops.tag, args.e2e, work, repo)
        finally:
            dev.stop()
    print(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M")}))


if __name__ == "__main__":
    main()
