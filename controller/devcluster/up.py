"""``replayops up``: the main job — a cluster (local or $KUBECONFIG), our CRDs, the webhook, and what next."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from controller import paths, schema
from controller.admission import register
from controller.api import SYSTEM_NAMESPACE
from controller.devcluster import DevClusterError, pid_alive, stop_pid
from controller.devcluster import cli as dev_cli
from controller.devcluster.cluster import free_port, recorded_service, spawn_service
from controller.kube import Kube, KubeError, connect


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start (or reuse) a cluster and run replayops against it")
    p.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG") or None,
                   help="use this existing cluster instead of the local control plane ($KUBECONFIG)")
    p.add_argument("--webhook-port", type=int, default=0, help="local webhook port (default: a free one)")
    p.add_argument("--inspector-port", type=int, default=0, help="local inspector port (default: a free one)")
    p.add_argument("--no-node", action="store_true", help="the local control plane only (no pods run; fast)")
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
    """A local git repository seeded from examples/gitops (kept when it already exists)."""
    if not (repo_dir / ".git").exists():
        shutil.copytree(paths.source_dir("examples") / "gitops", repo_dir, dirs_exist_ok=True)
        env = {**os.environ, "GIT_AUTHOR_NAME": "replayops", "GIT_AUTHOR_EMAIL": "replayops@localhost",
               "GIT_COMMITTER_NAME": "replayops", "GIT_COMMITTER_EMAIL": "replayops@localhost"}
        # updateInstead: the inspector's commits are pushed into this working copy
        for argv in (["init", "-q", "-b", "main"], ["config", "receive.denyCurrentBranch", "updateInstead"],
                     ["add", "-A"], ["commit", "-q", "-m", "seed from examples/gitops"]):
            subprocess.run(["git", *argv], cwd=repo_dir, env=env, check=True, capture_output=True)
    return f"file://{repo_dir}"


def _start_controller(kube: Kube, kubeconfig: Path, workdir: Path) -> str:
    pid = recorded_service(workdir, "controller")
    if pid is not None and pid_alive(pid):
        return f"running (pid {pid})"
    repo = _seed_repo(workdir / "gitops-repo")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}})
    argv = [sys.executable, "-m", "controller.cli", "controller", "run", "--repo", repo, "--branch", "main",
            "--path", ".", "--interval", "10s", "--self-heal", "--prune", "--kubeconfig", str(kubeconfig),
            "--cache", str(workdir / "git-cache")]
    proc = spawn_service(workdir, "controller", argv)
    return f"watching {repo} (pid {proc.pid}, log {proc.log})"


def _start_inspector(kubeconfig: Path, workdir: Path, port: int) -> str:
    pid = recorded_service(workdir, "inspector")
    if pid is not None and pid_alive(pid):
        return f"running (pid {pid})"
    port = port or free_port()
    argv = [sys.executable, "-m", "controller.cli", "inspector", "serve", "--port", str(port),
            "--repo", _seed_repo(workdir / "gitops-repo"), "--workdir", str(workdir / "inspector-work"),
            "--kubeconfig", str(kubeconfig), "--store", str(paths.home() / "store")]
    proc = spawn_service(workdir, "inspector", argv)
    return f"http://127.0.0.1:{port} (pid {proc.pid}, log {proc.log})"


def run(args: argparse.Namespace) -> int:
    workdir = paths.dev_cluster_dir()
    try:
        kubeconfig = args.kubeconfig or dev_cli.up(workdir, node=not args.no_node)
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
    print(f"  cd {paths.dev_cluster_dir() / 'gitops-repo'}   # commit policies/ and replays/ here")
    print("  kubectl get tr,cp -A                  # what the controller applied from git")
    print("  replayops dev status                  # what runs, and where its logs are")
    print("  replayops dev down                    # stop everything")
    return 0
