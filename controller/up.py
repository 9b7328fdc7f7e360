"""``replayops up``: the main job — a cluster (local or $KUBECONFIG), our CRDs, and what to do next."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from controller import paths, schema
from controller.devcluster import DevClusterError
from controller.devcluster import cli as dev_cli
from controller.kube import KubeError, connect


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start (or reuse) a cluster and install replayops into it")
    p.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG") or None,
                   help="use this existing cluster instead of the local control plane ($KUBECONFIG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        kubeconfig = args.kubeconfig or dev_cli.up(paths.dev_cluster_dir())
        kube = connect(kubeconfig)
        kube.install_crds(schema.load_crds())
    except (DevClusterError, KubeError) as err:
        print(f"replayops up: {err}", file=sys.stderr)
        return 1
    names = ", ".join(c["metadata"]["name"] for c in schema.load_crds())
    print(f"replayops is up.\n  kubeconfig: {kubeconfig}\n  CRDs installed: {names}\n")
    print("Next:")
    print(f"  export KUBECONFIG={kubeconfig}")
    print("  kubectl get crd | grep replayops")
    print("  kubectl apply -f examples/replays/   # a TrafficReplay")
    print("  replayops dev down                   # stop the local control plane")
    return 0
