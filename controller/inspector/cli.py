"""``replayops inspector serve``: the inspector web UI under waitress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller import argtypes, logs, paths
from controller.api import SYSTEM_NAMESPACE
from controller.gitops import auth


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ins = sub.add_parser("inspector", help="the inspector web UI (its actions become git commits)")
    verbs = ins.add_subparsers(dest="verb", required=True)
    serve = verbs.add_parser("serve", help="serve the inspector over HTTP")
    serve.add_argument("--port", type=int, default=8088)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: put an authenticating proxy in front to expose it)")
    serve.add_argument("--repo", required=True, type=argtypes.repository,
                       help="the GitOps repository the actions commit to")
    serve.add_argument("--branch", default="main")
    serve.add_argument("--path", default=".", help="sub-path of the repository holding the YAML")
    serve.add_argument("--author", default="replayops inspector <inspector@replayops.dev>",
                       help="commit author, 'Name <email>'")
    auth.add_arguments(serve)
    serve.add_argument("--workdir", type=Path, default=None, help="working copy (default under $REPLAYOPS_HOME)")
    serve.add_argument("--kubeconfig", type=Path, default=None)
    serve.add_argument("--status-namespace", default=SYSTEM_NAMESPACE,
                       help="where the controller writes its sources' status (its --status-namespace)")
    serve.add_argument("--store", type=Path, default=None, help="snapshot store root, to list snapshots")
    serve.add_argument("--reports", type=Path, default=None,
                       help="replay reports directory, to show them (default $REPLAYOPS_HOME/reports)")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from waitress import serve

    from controller.inspector.app import Deps, create_app
    from controller.inspector.gitwrite import GitWriter
    from controller.kube import connect
    from controller.store import FileStore

    logs.setup()
    if not 0 < args.port < 65536:
        print(f"replayops inspector serve: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    if " <" not in args.author or not args.author.endswith(">"):
        print(f"replayops inspector serve: --author {args.author!r} is not 'Name <email>'", file=sys.stderr)
        return 2
    try:
        credentials = auth.from_args(args)
    except (ValueError, OSError) as exc:
        print(f"replayops inspector serve: {exc}", file=sys.stderr)
        return 2
    try:
        kube = connect(args.kubeconfig)
        cluster = kube.api.configuration.host
    except Exception as exc:  # any failure to build a client: no cluster to show
        print(f"replayops inspector serve: no cluster access: {exc}", file=sys.stderr)
        return 2
    git = GitWriter(args.repo, args.workdir or paths.home() / "inspector" / "repo", branch=args.branch,
                    path=args.path, author=args.author, auth=credentials)
    store = FileStore(args.store) if args.store else None
    app = create_app(Deps(kube, git, cluster=cluster, snapshots=store.snapshots if store else list,
                          reports=args.reports or paths.home() / "reports", status_namespace=args.status_namespace))
    print(f"inspector on http://{args.host}:{args.port}", file=sys.stderr)
    serve(app, host=args.host, port=args.port, threads=4, ident="replayops-inspector")
    return 0
