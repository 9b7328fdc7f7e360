"""``replayops up``: the main job.

On the local node (the default): the image, the cluster with its node, replayops installed from
``manifests/`` in pods, the demo captured and its replay run as a Job pod (``install``), the inspector,
and what to do next — printed again by every later ``replayops up`` and ``replayops dev status``.
With ``--kubeconfig`` or ``--no-node`` (no pods can run): our CRDs, and the webhook, the controller
and the inspector as local processes against that API.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from controller import conditions, paths, schema
from controller.admission import register
from controller.api import SUCCEEDED, SYSTEM_NAMESPACE
from controller.devcluster import DevClusterError, install, pid_alive, stop_pid
from controller.devcluster import cli as dev_cli
from controller.devcluster.cluster import free_port, recorded_service, spawn_service
from controller.devcluster.process import http_check, wait_until
from controller.kube import Kube, KubeError, connect
from controller.store import FileStore


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start (or reuse) a cluster and run replayops against it")
    p.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG") or None,
                   help="use this existing cluster instead of the local control plane ($KUBECONFIG)")
    p.add_argument("--webhook-port", type=int, default=0, help="local webhook port (default: a free one)")
    p.add_argument("--inspector-port", type=int, default=0, help="local inspector port (default: a free one)")
    p.add_argument("--no-node", action="store_true", help="the local control plane only, replayops as local "
                   "processes (no pods run; fast)")
    p.set_defaults(func=run)


def _start_webhook(kube: Kube, kubeconfig: Path, workdir: Path, port: int) -> str:
    """Run the webhook detached on loopback, registered with the apiserver; reuse a running one."""
    pid = recorded_service(workdir, "webhook")
    if pid is not None:
        if pid_alive(pid):
            register.wait_until_called(kube)
            return f"running (pid {pid})"
        stop_pid(pid, timeout=1)
    port = port or free_port()
    argv = [sys.executable, "-m", "controller.cli", "webhook", "serve", "--port", str(port),
            "--host", "127.0.0.1", "--cert-dir", str(workdir / "webhook-certs"),
            "--kubeconfig", str(kubeconfig), "--register", f"https://127.0.0.1:{port}"]
    proc = spawn_service(workdir, "webhook", argv)
    register.wait_until_called(kube)
    return f"https://127.0.0.1:{port} (pid {proc.pid}, log {proc.log})"


def _seed_repo(repo_dir: Path) -> str:
    return f"file://{install.seed_repo(repo_dir)}"


def _start_controller(kube: Kube, kubeconfig: Path, workdir: Path) -> str:
    pid = recorded_service(workdir, "controller")
    if pid is not None and pid_alive(pid):
        return f"running (pid {pid})"
    repo = _seed_repo(install.repo_dir())
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}})
    argv = [sys.executable, "-m", "controller.cli", "controller", "run", "--repo", repo, "--branch", "main",
            "--path", ".", "--interval", "10s", "--self-heal", "--prune", "--kubeconfig", str(kubeconfig),
            "--cache", str(workdir / "git-cache")]
    proc = spawn_service(workdir, "controller", argv)
    return f"watching {repo} (pid {proc.pid}, log {proc.log})"


def _start_inspector(kubeconfig: Path, workdir: Path, port: int, store: Path | None = None) -> str:
    pid = recorded_service(workdir, "inspector")
    if pid is not None and pid_alive(pid):
        return f"{_recorded_url(workdir)} (pid {pid})"
    port = port or free_port()
    argv = [sys.executable, "-m", "controller.cli", "inspector", "serve", "--port", str(port),
            "--repo", _seed_repo(install.repo_dir()), "--workdir", str(workdir / "inspector-work"),
            "--kubeconfig", str(kubeconfig), "--store", str(store or paths.home() / "store"),
            "--reports", str((store.parent if store else paths.home()) / "reports")]  # beside it, as Jobs write
    proc = spawn_service(workdir, "inspector", argv)
    (workdir / "inspector.url").write_text(f"http://127.0.0.1:{port}")
    wait_until(proc, f"the inspector on port {port}", http_check(f"http://127.0.0.1:{port}/healthz"), timeout=60)
    return f"http://127.0.0.1:{port} (pid {proc.pid}, log {proc.log})"


def _recorded_url(workdir: Path) -> str:
    where = workdir / "inspector.url"
    return where.read_text().strip() if where.is_file() else "running"


def _in_pods(args: argparse.Namespace, workdir: Path) -> int:
    """The whole story on the local node: replayops in pods, the demo captured, its replay run."""
    from controller.devcluster import image
    from controller.devcluster.build import ensure_node_binaries

    try:
        with install.step("building or reusing the replayops image (the first build takes minutes; logs in "
                          f"{image.image_dir() / 'logs'})"):
            built = image.ensure_image()
        reuse = dev_cli.running_node(workdir)
        with install.step("reusing the running cluster and node" if reuse else
                          "starting the control plane and the node (containerd, kubelet, kube-proxy, CoreDNS)"):
            kubeconfig = dev_cli.up(workdir, node=True, images=(built.archive,))
            if reuse:  # the image may be new since the node started
                image.import_into(ensure_node_binaries().containerd_bin / "ctr",
                                  str(workdir / "node" / "containerd" / "containerd.sock"), built.archive)
        kube = connect(kubeconfig)
        repo = install.seed_repo(install.repo_dir())
        install.forget_demo_replay(kube, repo)
        with install.step(f"serving {repo} to pods with git daemon"):
            url = install.serve_git(workdir, repo)
        with install.step("installing replayops from manifests/overlays/dev: webhook, controller and forwarder pods"):
            install.install(kube, kubeconfig, workdir, built.tag, url)
        with install.step("deploying the demo (examples/demo/k8s) into namespace demo, captured by the policy "
                          "from git"):
            install.deploy_demo(kube, kubeconfig, workdir, built.tag)
        store = FileStore(install.store_root(kube))
        inspector = _start_inspector(kubeconfig, workdir, args.inspector_port, store=store.root)
        with install.step("waiting for recorded pairs, then committing a Snapshot and a TrafficReplay of them"):
            build = built.tag.rpartition(":")[2]
            install.commit_replay(kube, repo, store, build)
        with install.step("waiting for the snapshot to be cut and the replay to run as a Job pod"):
            verdict = install.replay_verdict(kube, build)
    except (DevClusterError, KubeError, OSError, subprocess.SubprocessError) as err:
        print(f"replayops up: {err}", file=sys.stderr)
        return 1
    summary = _summary(kubeconfig, inspector, repo, url, verdict)
    (workdir / "summary.txt").write_text(summary)
    print("\n" + summary)
    return 0 if verdict.get("phase") == SUCCEEDED else 1


def _summary(kubeconfig: Path, inspector: str, repo: Path, url: str, verdict: dict[str, Any]) -> str:
    """What runs where and what to do next (printed by ``up`` and ``replayops dev status``)."""
    said = conditions.ready_condition(verdict).get("message", "")
    figures = verdict.get("summary") or {}
    venv = Path(sys.executable).parent
    return "\n".join([
        "replayops is up: the webhook, the controller (two replicas, one leader) and the forwarder run in pods on",
        "the local node; the demo server is captured; its replay ran as a Job pod.",
        f"  kubeconfig:  {kubeconfig}",
        f"  inspector:   {inspector.split(' ')[0]}",
        f"  replayops:   {venv / 'replayops'}   (or: source {venv / 'activate'})",
        f"  GitOps repo: {repo}   (pods fetch it from {url})",
        f"  demo replay: {verdict.get('phase')}: {figures.get('requests', 0)} requests, success rate "
        f"{figures.get('successRate', 0)}; {said}",
        "Next:",
        f"  export KUBECONFIG={kubeconfig}",
        "  kubectl get pods -A                          # what runs in pods",
        "  kubectl -n demo get capturepolicy,snapshot,trafficreplay",
        "  kubectl -n demo logs deploy/demo-server -c replayops-proxy",
        f"  cd {repo}   # commit policies/, snapshots/, replays/ here; the controller applies them in seconds",
        "  replayops dev status                         # every part, its pid and health, and this again",
        "  make down                                    # stop everything and restore the host",
    ]) + "\n"


def run(args: argparse.Namespace) -> int:
    workdir = paths.dev_cluster_dir()
    if not (args.kubeconfig or args.no_node):
        workdir.mkdir(parents=True, exist_ok=True)
        return _in_pods(args, workdir)
    try:
        kubeconfig = args.kubeconfig or dev_cli.up(workdir, node=False)
        kube = connect(kubeconfig)
        kube.install_crds(schema.load_crds())
        workdir.mkdir(parents=True, exist_ok=True)
        webhook = _start_webhook(kube, Path(kubeconfig), workdir, args.webhook_port)
        controller = _start_controller(kube, Path(kubeconfig), workdir)
        inspector = _start_inspector(Path(kubeconfig), workdir, args.inspector_port)
    except (DevClusterError, KubeError) as err:
        print(f"replayops up: {err}", file=sys.stderr)
        return 1
    names = ", ".join(c["metadata"]["name"] for c in schema.load_crds())
    print(f"replayops is up.\n  kubeconfig: {kubeconfig}\n  CRDs installed: {names}\n  webhook: {webhook}\n"
          f"  controller: {controller}\n  inspector: {inspector}\n"
          f"  status: kubectl -n {SYSTEM_NAMESPACE} get cm replayops-status-default -o yaml\n")
    print("Next:")
    print(f"  export KUBECONFIG={kubeconfig}")
    print("  kubectl get crd | grep replayops")
    print(f"  cd {install.repo_dir()}   # commit policies/ and replays/ here")
    print("  kubectl get tr,cp -A                  # what the controller applied from git")
    print("  replayops dev status                  # what runs, and where its logs are")
    print("  replayops dev down                    # stop everything")
    return 0
