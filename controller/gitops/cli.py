"""``replayops validate | diff | controller run``: the GitOps commands (PR pipelines and the loop)."""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller import __version__, argtypes, logs, paths
from controller.admission import rules
from controller.api import APPLIED_HASH, CONVERGER_LEASE, REPLAYS_LEASE, REVISION, SYSTEM_NAMESPACE, source_manager
from controller.durations import parse_duration
from controller.gitops import auth, desired
from controller.gitops.replayjobs import JobConfig, ReplayJobs

log = logs.get("controller")
VOLATILE_META = ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp")


def _duration(text: str) -> float:
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return float(seconds or 0)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    val = sub.add_parser("validate", help="check directories or files of YAML offline (no cluster), as CI on a PR")
    val.add_argument("path", type=Path, nargs="+", help="each judged as one revision")
    val.add_argument("--namespace", default="default", help="namespace of objects that name none")
    val.add_argument("--store", type=Path, default=None, help="a local snapshot store to check snapshot names in "
                     "(default $REPLAYOPS_HOME/store when it exists)")
    val.set_defaults(func=run_validate)

    diff = sub.add_parser("diff", help="what applying a directory would change in the cluster (server dry-run)")
    diff.add_argument("path", type=Path)
    diff.add_argument("--namespace", default="default")
    diff.add_argument("--name", default="default", help="the source that applies it (the controller's --name)")
    diff.add_argument("--kubeconfig", type=Path, default=None)
    diff.set_defaults(func=run_diff)

    ctl = sub.add_parser("controller", help="the GitOps controller")
    verbs = ctl.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("run", help="converge the cluster to a git repository")
    r.add_argument("--repo", required=True, type=argtypes.repository, help="file://, git://, https:// or ssh:// URL")
    ref = r.add_mutually_exclusive_group()
    ref.add_argument("--branch", default="main")
    ref.add_argument("--tag")
    ref.add_argument("--commit", help="pin a commit")
    r.add_argument("--path", default=".", help="sub-path of the repository holding the YAML")
    r.add_argument("--interval", type=_duration, default=60.0, help="poll interval (default 60s)")
    r.add_argument("--git-timeout", type=_duration, default=60.0,
                   help="a fetch fails after this long connecting or without a byte from the server (default 60s)")
    r.add_argument("--self-heal", action="store_true", help="revert manual edits of fields we own")
    r.add_argument("--prune", action="store_true", help="delete owned objects that are gone from git")
    r.add_argument("--service-account", type=argtypes.resource, default=None, metavar="NAMESPACE/NAME",
                   help="apply and prune as this ServiceAccount (the controller impersonates it): the repository "
                        "can do no more than it may")
    r.add_argument("--allow-empty", action="store_true", help="with --prune, let a revision with no objects "
                   "delete everything this source applied (refused by default)")
    r.add_argument("--dry-run", action="store_true", help="server-side dry-run only; change nothing")
    r.add_argument("--name", default="default", help="this source's name (labels, status ConfigMap)")
    r.add_argument("--namespace", default="default", help="namespace of objects that name none")
    r.add_argument("--status-namespace", default=SYSTEM_NAMESPACE)
    r.add_argument("--forwarder-namespace", type=argtypes.dns_label, default=SYSTEM_NAMESPACE,
                   help="where the forwarder, its token and the converger's and replay runner's Leases are; every "
                        f"source names the same (default {SYSTEM_NAMESPACE})")
    r.add_argument("--allow-kind", action="append", default=[], metavar="APIVERSION/KIND",
                   help="also apply this kind from git (default: v1/Namespace, v1/ConfigMap)")
    r.add_argument("--kubeconfig", type=Path, default=None)
    r.add_argument("--no-replays", dest="replays", action="store_false",
                   help="do not run TrafficReplays (another controller runs them)")
    r.add_argument("--replay-namespace", default=JobConfig.namespace, help="where replay Jobs run (beside the "
                   "snapshot store's volume)")
    r.add_argument("--replay-image", default=None, help="image of the replay Jobs (default: in a pod, the pod's "
                   f"own image ($POD_NAME, $POD_NAMESPACE); else {JobConfig.image})")
    r.add_argument("--store-claim", default=JobConfig.store_claim,
                   help="PersistentVolumeClaim holding the snapshot store, mounted into replay Jobs")
    r.add_argument("--cache", type=Path, default=None, help="git cache directory")
    auth.add_arguments(r)
    r.add_argument("--push-port", type=int, default=0, help="serve the push-webhook receiver on this port")
    r.add_argument("--push-secret-file", type=Path, help="HMAC secret / GitLab token for pushes")
    r.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port")
    r.add_argument("--leader-elect", action="store_true", help="run as one of several replicas")
    r.add_argument("--lease-seconds", type=_duration, default=15.0, help="lease duration (client-go's default 15s)")
    r.add_argument("--renew-deadline", type=_duration, default=10.0,
                   help="a leader that has not renewed for this long stops writing (default 10s)")
    r.add_argument("--retry-period", type=_duration, default=2.0, help="how often to renew or try (default 2s)")
    r.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}")
    ctl.set_defaults(func=run_controller)


def _offline_lookup(store: Path | None) -> rules.StaticLookup:
    """What validate knows without a cluster: nothing, and the snapshots of a readable local store."""
    lookup = rules.StaticLookup.offline()
    store = store or paths.home() / "store"
    if store.is_dir():
        from controller.store import FileStore, StoreError

        try:
            lookup.manifests = {m.name: m for m in FileStore(store).snapshots()}
            lookup.snapshots = set(lookup.manifests)
        except (OSError, StoreError) as exc:
            print(f"replayops validate: warning: store {store} is not readable ({exc}); snapshot names "
                  "not checked", file=sys.stderr)
    return lookup


def run_validate(args: argparse.Namespace) -> int:
    lookup, failed = _offline_lookup(args.store), False
    for path in args.path:
        try:
            files = desired.read_dir(path)
        except OSError as exc:
            print(f"replayops validate: {exc}", file=sys.stderr)
            return 2
        try:
            state = desired.build(files, lookup=lookup, namespace=args.namespace)
        except desired.InvalidRevision as exc:
            for problem in exc.problems:
                print(f"{path / problem.file if path.is_dir() else path}:{problem.line}: {problem.message}")
            failed = True
            continue
        for warning in state.warnings:  # what offline validation cannot check, or may fail at apply time
            where = path / warning.file if path.is_dir() else path
            print(f"{where}:{warning.line}: warning: {warning.message}", file=sys.stderr)
        print(f"{path}: {len(state.items)} objects valid in {len(files)} files")
    return 1 if failed else 0


def _normalise(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return ""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (out.get("metadata") or {}).items() if k not in VOLATILE_META}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()  # bookkeeping, not a change
                   if k not in ("kubectl.kubernetes.io/last-applied-configuration", APPLIED_HASH)}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    out["metadata"] = meta
    from io import StringIO

    buf = StringIO()
    YAML().dump(out, buf)
    return buf.getvalue()


def run_diff(args: argparse.Namespace) -> int:
    from controller.admission.lookup import ClusterLookup
    from controller.kube import KubeError, connect


    try:
        kube = connect(args.kubeconfig)
        state = desired.build(desired.read_dir(args.path), lookup=ClusterLookup(kube), namespace=args.namespace)
        changed = 0
        for item in state.items:
            meta = item.obj["metadata"]
            live = kube.get(item.obj["apiVersion"], item.obj["kind"], meta["name"], meta.get("namespace"))
            applied = ((live or {}).get("metadata", {}).get("annotations") or {}).get(REVISION)
            # as the controller applies it: our labels, and the revision it applied (a new one is no change)
            after = kube.apply(desired.stamp(item.obj, args.name, applied), field_manager=source_manager(args.name),
                               dry_run=True)
            lines = list(difflib.unified_diff(_normalise(live).splitlines(), _normalise(after).splitlines(),
                                              f"live/{item}", f"git/{item}", lineterm=""))
            if lines:
                changed += 1
                print("\n".join(lines))
        print(f"{changed} of {len(state.items)} objects would change", file=sys.stderr)
        return 0
    except desired.InvalidRevision as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, KubeError) as exc:
        print(f"replayops diff: {exc}", file=sys.stderr)
        return 2


def _serve(app: Any, port: int) -> None:
    from waitress import create_server

    server = create_server(app, host="0.0.0.0", port=port, threads=4, max_request_body_size=1024 * 1024)
    threading.Thread(target=server.run, name=f"http-{port}", daemon=True).start()


def run_controller(args: argparse.Namespace) -> int:
    from prometheus_client import make_wsgi_app

    from controller.gitops import receiver
    from controller.gitops.leader import LeaderElector, Timings
    from controller.gitops.loop import Loop, watch_caches
    from controller.gitops.reconcile import Metrics, Options, Reconciler
    from controller.gitops.source import GitSource
    from controller.kube import Kube, connect

    logs.setup()
    try:
        timings = Timings(args.lease_seconds, args.renew_deadline, args.retry_period)
    except ValueError as exc:
        print(f"replayops controller run: {exc}", file=sys.stderr)
        return 2
    allowed = desired.DEFAULT_ALLOWED_KINDS | frozenset(args.allow_kind)
    options = Options(name=args.name, namespace=args.namespace, status_namespace=args.status_namespace,
                      forwarder_namespace=args.forwarder_namespace,
                      self_heal=args.self_heal, prune=args.prune, dry_run=args.dry_run, allowed_kinds=allowed,
                      allow_empty=args.allow_empty, service_account=args.service_account)
    try:
        credentials = auth.from_args(args)
    except (ValueError, OSError) as exc:
        print(f"replayops controller run: {exc}", file=sys.stderr)
        return 2
    source = GitSource(args.repo, cache=args.cache or paths.home() / "git", branch=args.branch, tag=args.tag,
                       commit=args.commit, path=args.path, auth=credentials, timeout=args.git_timeout)
    try:
        kube = connect(args.kubeconfig)
    except Exception as exc:
        print(f"replayops controller run: no cluster access: {exc}", file=sys.stderr)
        return 2
    metrics = Metrics()
    agent = f"replayops-controller/{__version__} ({args.identity})"  # the audit log names the replica
    kube.api.user_agent = agent
    reconciler = Reconciler(kube, source, options, metrics)
    image = args.replay_image or kube.own_image() or JobConfig.image
    replays = ReplayJobs(kube, JobConfig(namespace=args.replay_namespace, image=image,
                                         store_claim=args.store_claim), dry_run=args.dry_run) if args.replays else None
    def client(fence: LeaderElector | None = None) -> Kube:
        """A client of its own: a slow pass never holds up a renewal; ``fence``'s lease fences its writes."""
        made = connect(args.kubeconfig)
        made.api.user_agent, made.fence = agent, fence.check if fence else None
        return made

    elector = converger = runner = None
    if args.leader_elect:
        elector = LeaderElector(client(), namespace=args.status_namespace, name=f"replayops-controller-{args.name}",
                                identity=args.identity, timings=timings)
        kube.fence = elector.check
    if elector and not args.dry_run:  # a preview never holds the cluster-wide work
        # one converger and one replay runner for every source: a leader of its source campaigns for them (in
        # the forwarder's namespace, which every source names the same); their writes are fenced by them
        shared = functools.partial(LeaderElector, client(), namespace=options.forwarder_namespace,
                                   identity=f"{args.identity}/{args.name}", timings=timings,
                                   eligible=elector.leading)
        converger = shared(name=CONVERGER_LEASE)
        reconciler.cluster, reconciler.converging = client(converger), converger.leading
        if replays:
            runner = shared(name=REPLAYS_LEASE)
            replays.kube = client(runner)
    loop = Loop(reconciler, interval=args.interval, replays=replays, elector=elector,
                replaying=runner.leading if runner else None)
    if args.push_port:
        if not args.push_secret_file:
            print("replayops controller run: --push-port needs --push-secret-file", file=sys.stderr)
            return 2
        _serve(receiver.create_app(args.push_secret_file.read_bytes().strip(), args.branch, loop.push), args.push_port)
    if args.metrics_port:
        _serve(make_wsgi_app(metrics.registry), args.metrics_port)
    caches = watch_caches(kube, loop, allowed, replays=replays is not None, replay_namespace=args.replay_namespace)
    for other in (reconciler.cluster, replays.kube if replays else None):
        if other is not None:
            other.caches = caches
    for lease in (converger, runner):  # a new converger, a new replay runner: it passes at once
        if lease:
            lease.on_lead = loop.wake
            lease.start()
    signal.signal(signal.SIGTERM, loop.stop)
    signal.signal(signal.SIGINT, loop.stop)
    log.info("controller started", extra=logs.fields(repo=source.shown, ref=source.ref, path=args.path,
                                                     identity=args.identity))
    loop.run()
    for lease in (converger, runner):
        if lease:
            lease.stop()
    caches.stop()
    log.info("controller stopped", extra=logs.fields(identity=args.identity))
    return 0
