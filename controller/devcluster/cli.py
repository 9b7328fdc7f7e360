"""``replayops dev up | down | status | kubeconfig | build``: the detached local cluster (control plane + node)."""

from __future__ import annotations

import argparse
import shutil
import ssl
import sys
import urllib.request
from pathlib import Path
from typing import Any

from controller import paths
from controller.devcluster import host
from controller.devcluster import node as nodes
from controller.devcluster.build import ensure_binaries, ensure_node_binaries
from controller.devcluster.cluster import DevCluster, read_state
from controller.devcluster.errors import DevClusterError
from controller.devcluster.process import pid_alive, stop_pid


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = sub.add_parser("dev", help="local cluster: control plane and a real node (containerd, kubelet, ...)")
    dev.add_argument("--dir", type=Path, default=None, help="state directory (default $REPLAYOPS_HOME/dev)")
    verbs = dev.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="build or reuse the binaries and start the control plane and the node")
    up.add_argument("--no-controller-manager", action="store_true",
                    help="start only etcd and kube-apiserver (implies --no-node)")
    up.add_argument("--no-node", action="store_true", help="the control plane only (no pods run; fast)")
    verbs.add_parser("down", help="stop everything, tear the node down and restore the host")
    verbs.add_parser("status", help="show the components and whether the apiserver is ready")
    verbs.add_parser("kubeconfig", help="print the kubeconfig path")
    build = verbs.add_parser("build", help="build or reuse the binaries only")
    build.add_argument("--no-node", action="store_true", help="the control plane's binaries only")
    verbs.add_parser("image", help="build or reuse the replayops and pause images (OCI archives for the node)"
                     ).set_defaults(func=run_image)
    dev.set_defaults(func=run)


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")


def _running(workdir: Path) -> dict | None:  # type: ignore[type-arg]
    """The state of a running control plane in ``workdir`` (services beside it may be down)."""
    state = read_state(workdir)
    procs = [p for p in (state or {}).get("procs", []) if p["name"] in CONTROL_PLANE]  # type: ignore[attr-defined]
    if state and procs and all(pid_alive(int(p["pid"])) for p in procs):
        return state
    return None


def running_node(workdir: Path) -> bool:
    """Whether a cluster with its node runs in ``workdir`` (``up`` would reuse it)."""
    state = _running(workdir)
    return bool(state and state.get("node"))


def up(workdir: Path, *, controller_manager: bool = True, node: bool = True,
       images: tuple[Path, ...] = ()) -> Path:
    """Start a detached cluster in ``workdir`` (or reuse a running one); return the kubeconfig."""
    node = node and controller_manager  # the node needs the controller-manager (ServiceAccounts, Jobs)
    state = _running(workdir)
    if state and bool(state.get("node")) == node:
        return Path(str(state["kubeconfig"]))
    down(workdir)
    binaries = ensure_binaries()
    if not node:
        cluster = DevCluster(workdir, binaries, controller_manager=controller_manager, detached=True)
    else:
        from controller.devcluster import image

        pause = image.ensure_pause_image()
        cluster = DevCluster(workdir, binaries, detached=True, node=ensure_node_binaries(),
                             pause_image=pause.tag, images=(pause.archive, *images))
    cluster.start()
    return cluster.kubeconfig


def down(workdir: Path) -> list[str]:
    """Stop whatever a previous ``up`` left in ``workdir`` (the node first, in its order, restoring the
    host); return the names stopped."""
    own = host.HostState.load()
    stopped = nodes.teardown(stop_pid) if own and own.workdir == str(workdir) else []
    state = read_state(workdir)
    procs: list[dict[str, Any]] = list(state["procs"]) if state else []  # type: ignore[call-overload]
    for proc in reversed(procs):
        if not pid_alive(int(proc["pid"])):
            continue
        stop_pid(int(proc["pid"]))
        stopped.append(f"{proc['name']} (pid {proc['pid']})")
    if workdir.exists():
        shutil.rmtree(workdir)
    return stopped


def _ready(state: dict) -> str:  # type: ignore[type-arg]
    pkidir = Path(str(state["kubeconfig"])).parent / "pki"
    ctx = ssl.create_default_context(cafile=str(pkidir / "ca.crt"))
    ctx.load_cert_chain(str(pkidir / "admin.crt"), str(pkidir / "admin.key"))
    try:
        with urllib.request.urlopen(f"{state['server']}/readyz", timeout=3, context=ctx) as resp:
            return "ready" if resp.status == 200 else f"HTTP {resp.status}"
    except OSError as exc:
        return f"not ready ({exc})"


def run_image(args: argparse.Namespace) -> int:
    """``replayops dev image``: print each image's tag and archive; exit 2 when a tool is missing."""
    from controller.devcluster.image import MissingTools, ensure_image, ensure_pause_image

    try:
        for ref in (ensure_image(), ensure_pause_image()):
            print(f"{ref.tag} {ref.archive}")
    except MissingTools as err:
        print(f"replayops dev image: {err}", file=sys.stderr)
        return 2
    except DevClusterError as err:
        print(f"replayops dev image: {err}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    workdir = args.dir or paths.dev_cluster_dir()
    try:
        if args.verb == "build":
            print(ensure_binaries())
            if not args.no_node:
                print(ensure_node_binaries())
        elif args.verb == "up":
            kubeconfig = up(workdir, controller_manager=not args.no_controller_manager, node=not args.no_node)
            print(f"control plane up; kubeconfig: {kubeconfig}")
            print(f"  export KUBECONFIG={kubeconfig}")
        elif args.verb == "down":
            stopped = down(workdir)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.verb == "status":
            state = read_state(workdir)
            if not state:
                print(f"no control plane in {workdir}")
                return 1
            for proc in state["procs"]:  # type: ignore[attr-defined]
                alive = "running" if pid_alive(int(proc["pid"])) else "DEAD"
                print(f"{proc['name']:<26} pid {proc['pid']:<8} {alive}  log {proc['log']}")
            print(f"kube-apiserver {state['server']}: {_ready(state)}")
            summary = workdir / "summary.txt"  # what `replayops up` installed, and what next
            if summary.is_file():
                print("\n" + summary.read_text(), end="")
        elif args.verb == "kubeconfig":
            state = _running(workdir)
            if not state:
                print(f"no running control plane in {workdir}; run `replayops dev up`", file=sys.stderr)
                return 1
            print(state["kubeconfig"])
    except DevClusterError as err:
        print(f"replayops dev {args.verb}: {err}", file=sys.stderr)
        return 1
    return 0
