"""``replayops proxy | forwarder | capture | snapshot ...``: the capture commands."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller import argtypes, logs, paths, policy, tokens
from controller.capture import dlp, har
from controller.store import FileStore, Manifest, ReadProblem, StoreError, rrpair

log = logs.get("capture")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count from 1 to 64")
    return int(text)


def _time(text: str) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else \
            dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from exc


def dlp_key() -> bytes:
    """The tagging key: $REPLAYOPS_DLP_KEY, or one generated once into $REPLAYOPS_HOME/dlp.key."""
    if os.environ.get("REPLAYOPS_DLP_KEY"):
        return os.environ["REPLAYOPS_DLP_KEY"].encode()
    path = paths.home() / "dlp.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("proxy", help="the capturing sidecar (mitmproxy with the replayops addon)")
    p.add_argument("--reverse", action="append", default=[], metavar="LISTEN:APPPORT",
                   help="inbound reverse proxy from LISTEN to the app (repeatable)")
    p.add_argument("--transparent", type=_port, help="inbound transparent listener (iptables-redirected)")
    p.add_argument("--outbound", type=_port, help="outbound forward proxy port (HTTP_PROXY)")
    p.add_argument("--tls-unwrap", action="store_true", help="terminate outbound TLS with our CA")
    p.add_argument("--ca-dir", type=Path, help="where the CA lives, its private key too (generated when absent)")
    p.add_argument("--trust-dir", type=Path,
                   help="where the app's trust is written when unwrapping TLS (ca.pem, ca-bundle.pem, "
                        "truststore.jks; certificates only — default: --ca-dir)")
    p.add_argument("--upstream-ca", type=Path, help="extra CA to trust for upstream servers")
    p.add_argument("--forwarder", required=True, help="forwarder URL")
    p.add_argument("--token-file", type=Path,
                   help="the forwarder token, read before each batch (in a pod: its projected ServiceAccount "
                        "token, which the kubelet renews); when absent, $REPLAYOPS_FORWARDER_TOKEN")
    p.add_argument("--policy", default="", help="namespace/name of the CapturePolicy")
    p.add_argument("--service", default=os.environ.get("POD_NAME", ""), help="service name in records")
    p.add_argument("--health-port", type=_port, default=15020)
    p.add_argument("--buffer", type=int, default=10000, help="records kept while the forwarder is slow")
    p.add_argument("--buffer-bytes", type=argtypes.byte_size, default=policy.BUFFER_BYTES,
                   help="bytes of records kept while the forwarder is slow (all workers together)")
    p.add_argument("--max-body", type=argtypes.byte_size, default=policy.MAX_BODY_BYTES,
                   help="a body longer than this many bytes (or of unknown length) streams through; "
                        "its record keeps this many")
    p.add_argument("--workers", type=_count, default=1,
                   help="proxy processes sharing the ports (SO_REUSEPORT); one process uses at most one core")
    p.set_defaults(func=run_proxy)

    f = sub.add_parser("forwarder", help="receive RRPair batches, apply policy and DLP, write the store")
    f.add_argument("--port", type=_port, default=8090)
    f.add_argument("--host", default="0.0.0.0")
    f.add_argument("--token-file", type=Path, help="shared token (default $REPLAYOPS_FORWARDER_TOKEN)")
    f.add_argument("--policy-file", type=Path, action="append", default=[],
                   help="CapturePolicy YAML to apply (else the policy is read from the cluster)")
    f.add_argument("--kubeconfig", type=Path)
    f.add_argument("--store", type=Path, help="store directory (default $REPLAYOPS_HOME/store)")
    f.set_defaults(func=run_forwarder)

    c = sub.add_parser("capture", help="record an app locally: replayops capture --listen 8081 --upstream URL -- CMD",
                       epilog="the app command follows --")
    c.add_argument("--listen", type=_port, required=True)
    c.add_argument("--upstream", required=True, help="the app's URL, e.g. http://127.0.0.1:8080")
    c.add_argument("--outbound", type=_port, help="forward-proxy port given to the app as HTTP_PROXY")
    c.add_argument("--name", help="snapshot name (default: generated and printed)")
    c.add_argument("--service", default="local")
    c.add_argument("--store", type=Path)
    c.set_defaults(func=run_capture)

    s = sub.add_parser("snapshot", help="list, show, cut, remove, import and export snapshots")
    s.add_argument("--store", type=Path)
    verbs = s.add_subparsers(dest="verb", required=True)
    verbs.add_parser("ls")
    show = verbs.add_parser("show")
    show.add_argument("name")
    cut = verbs.add_parser("cut", help="cut NAME from the store's streams, or cut the Snapshot --resource names")
    cut.add_argument("name", nargs="?")
    cut.add_argument("--resource", metavar="NAMESPACE/NAME", type=argtypes.resource,
                     help="a Snapshot of the cluster: cut its window and write its status (the snapshot Jobs)")
    cut.add_argument("--kubeconfig", type=Path, help="cluster access for --resource")
    cut.add_argument("--service", default="")
    cut.add_argument("--stream")
    cut.add_argument("--from", dest="start", type=_time, default=0.0)
    cut.add_argument("--to", dest="end", type=_time, default=float("inf"))
    rm = verbs.add_parser("rm")
    rm.add_argument("name")
    imp = verbs.add_parser("import")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", required=True)
    imp.add_argument("--service", default="")
    imp.add_argument("--namespace", type=argtypes.dns_label,
                     help="the namespace it is for: its replays may read it (others only once it is shared)")
    imp.add_argument("--direction", choices=rrpair.DIRECTIONS,
                     help="the direction the traffic had (default: the file's own, else inbound); a HAR of calls "
                          "to an API imported outbound serves as that API's mocks (replayops mock)")
    share = verbs.add_parser("share", help="let replays of other namespaces read snapshot NAME (a replay reads "
                                           "only its own namespace's snapshots otherwise)")
    share.add_argument("name")
    share.add_argument("--with", dest="namespaces", action="append", required=True, metavar="NAMESPACE",
                       type=_namespace_or_all, help="a namespace whose replays may read it, or '*' for every one "
                                                     "(repeatable)")
    exp = verbs.add_parser("export")
    exp.add_argument("name")
    exp.add_argument("--har", type=Path, required=True)
    s.set_defaults(func=run_snapshot)


def _namespace_or_all(text: str) -> str:
    return text if text == "*" else argtypes.dns_label(text)


def listen_health(port: int) -> socket.socket:
    """The health port's socket, bound before mitmproxy loads (most of the sidecar's start).

    A kubelet probe that comes while the proxy is still loading then waits in the listen backlog and
    is answered the moment the proxy is ready, instead of being refused and retried a period later.
    The sidecar listens on all addresses: the kubelet's probes and Prometheus come to the pod IP.
    """
    return socket.create_server(("", port), backlog=128)


def run_proxy(args: argparse.Namespace) -> int:
    try:
        health = listen_health(args.health_port) if args.health_port else None
    except OSError as exc:
        print(f"replayops proxy: --health-port {args.health_port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    from controller.capture.addon import CaptureMetrics, Sink
    from controller.capture.proxy import CaptureProxy, ProxyConfig, parse_reverse
    from controller.capture.workers import Supervisor

    logs.setup()
    try:
        config = ProxyConfig(reverse=[parse_reverse(r) for r in args.reverse], transparent=args.transparent,
                             outbound=args.outbound, tls_unwrap=args.tls_unwrap, ca_dir=args.ca_dir,
                             trust_dir=args.trust_dir, upstream_ca=args.upstream_ca, service=args.service,
                             max_body=args.max_body, health=health)
    except ValueError as exc:
        print(f"replayops proxy: {exc}", file=sys.stderr)
        return 2
    if not config.modes():
        print("replayops proxy: give at least one of --reverse, --transparent, --outbound", file=sys.stderr)
        return 2
    token = os.environ.get("REPLAYOPS_FORWARDER_TOKEN", "")
    if not token and not (args.token_file and args.token_file.is_file()):  # capture must never keep the app
        log.warning("no forwarder token (no --token-file, and $REPLAYOPS_FORWARDER_TOKEN is empty): records "
                    "will be dropped until there is one", extra=logs.fields(token_file=str(args.token_file or "")))
    stream = f"{args.policy.replace('/', '.') or 'default'}.{args.service or 'proxy'}"
    sink = Sink(args.forwarder, token, args.policy, stream, capacity=max(1, args.buffer // args.workers),
                capacity_bytes=max(1, args.buffer_bytes // args.workers), token_file=str(args.token_file or ""))
    proxy: CaptureProxy | Supervisor
    if args.workers > 1:
        proxy = Supervisor(config, sink, args.workers)
    else:
        metrics = CaptureMetrics()
        proxy = CaptureProxy(config, sink.buffer(metrics), metrics)
    try:
        proxy.start()
    except RuntimeError as exc:
        print(f"replayops proxy: {exc}", file=sys.stderr)
        return 1
    # everything loaded so far lives as long as the process: keep it out of the cyclic GC's full
    # collections, which otherwise scan it all and stall every in-flight request for ~50 ms
    gc.freeze()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"replayops proxy listening: {', '.join(config.modes())}"
          + (f" ({args.workers} workers)" if args.workers > 1 else ""), file=sys.stderr, flush=True)
    if isinstance(proxy, Supervisor):
        proxy.run(stop.is_set)
        proxy.close()
    else:
        stop.wait()
        proxy.stop()
    return 0


def _cluster(files: list[Path], kubeconfig: Path | None) -> tuple[Any, Any, Any]:
    """Policies from ``--policy-file`` when given, else the cluster's, through a watch-backed cache (in a
    pod, with the forwarder's own ServiceAccount); with a cluster, who sidecars are too (TokenReview and
    their pods, each answer kept a minute). Returns (policies, reviewer, pods)."""
    from controller.capture.forwarder import PoliciesUnavailable

    if files:
        loaded = {}
        for file in files:
            for doc in YAML(typ="safe").load_all(file.read_text()):
                if doc and doc.get("kind") == "CapturePolicy":
                    meta = doc["metadata"]
                    loaded[f"{meta.get('namespace', 'default')}/{meta['name']}"] = doc
        return (lambda ref: loaded.get(ref)), None, None
    from controller.api import API_VERSION
    from controller.kube import connect
    from controller.kube.cache import Cache

    try:
        kube = connect(kubeconfig)
    except Exception as exc:
        if kubeconfig is not None or os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise  # in a pod that cannot read the cluster: never store with fewer rules than its policies
        log.warning("no cluster and no --policy-file: batches get the built-in DLP only, no policy's rules",
                    extra=logs.fields(error=str(exc)))
        return (lambda ref: {}), None, None
    cache = Cache(kube, API_VERSION, "CapturePolicy").start(wait=10)

    def lookup(ref: str) -> Any:
        if not cache.ready:
            raise PoliciesUnavailable(cache.error)
        namespace, _, name = ref.rpartition("/")
        return cache.get(namespace or "default", name)

    seen: dict[tuple[str, str], tuple[float, Any]] = {}

    def pod(namespace: str, name: str, uid: str) -> Any:
        """The pod, as read in the last minute unless that was another pod of the same name."""
        hit = seen.get((namespace, name))
        if hit and hit[0] > time.monotonic() and hit[1]["metadata"].get("uid") == uid:
            return hit[1]
        got = kube.get("v1", "Pod", name, namespace)
        if len(seen) > 4096:
            seen.clear()
        if got is not None:
            seen[(namespace, name)] = (time.monotonic() + 60, got)
        return got

    return lookup, tokens.Reviewer(kube.create, [tokens.FORWARDER_AUDIENCE]), pod


def _forget_volume_key() -> None:
    """An install from before the key Secret kept the key on the store volume, which the inspector and
    replay Jobs mount: with the key from the Secret, that copy goes (tags made with it stay as stored)."""
    old = paths.home() / "dlp.key"
    if os.environ.get("REPLAYOPS_DLP_KEY") and old.is_file():
        old.unlink()
        log.warning("removed the DLP key an earlier version kept on the store volume; $REPLAYOPS_DLP_KEY is the "
                    "key now (redaction tags of new recordings differ from older ones)",
                    extra=logs.fields(path=str(old)))


def run_forwarder(args: argparse.Namespace) -> int:
    from waitress import serve

    from controller.capture.forwarder import create_app

    logs.setup()
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("REPLAYOPS_FORWARDER_TOKEN")
    if not token:
        print("replayops forwarder: no token: give --token-file or $REPLAYOPS_FORWARDER_TOKEN", file=sys.stderr)
        return 2
    try:
        policies, reviewer, pods = _cluster(args.policy_file, args.kubeconfig)
    except Exception as exc:  # no kubeconfig and not in a pod, or unreadable files: say so in one line
        print(f"replayops forwarder: cannot read CapturePolicies: {exc}", file=sys.stderr)
        return 2
    _forget_volume_key()
    store = FileStore(args.store)
    app = create_app(store, token, dlp_key(), policies, reviewer=reviewer, pods=pods)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a pod stopping: seal the open segments first
    try:
        serve(app, host=args.host, port=args.port, threads=8, max_request_body_size=16 * 1024 * 1024)
    finally:
        store.close()
    return 0


def summary(records: list[dict[str, Any]], redactions: Counter[str]) -> str:
    by_endpoint = Counter(f"{r['direction']:<8} {rrpair.endpoint(r)}" for r in records)
    lines = [f"{n:6d}  {ep}" for ep, n in sorted(by_endpoint.items())]
    red = ", ".join(f"{k} {v}" for k, v in sorted(redactions.items())) or "none"
    return "\n".join(["pairs by endpoint:", *lines, f"redactions: {red}"])


def run_capture(args: argparse.Namespace) -> int:
    from controller.capture.addon import Buffer, CaptureMetrics
    from controller.capture.proxy import CaptureProxy, ProxyConfig

    command = args.command
    if not command:
        print("replayops capture: give the app command after --", file=sys.stderr)
        return 2
    store = FileStore(args.store)
    name = args.name or f"capture-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    if store.exists(name):
        print(f"replayops capture: snapshot {name!r} already exists", file=sys.stderr)
        return 2
    records: list[dict[str, Any]] = []
    redactor = dlp.Redactor(dlp.Rules(), dlp_key())
    metrics = CaptureMetrics()
    buffer = Buffer(lambda batch: records.extend(redactor.record(r) for r in batch), metrics,
                    capacity=1_000_000, flush_interval=0.2)
    config = ProxyConfig(reverse=[(args.listen, args.upstream)], outbound=args.outbound, listen_host="127.0.0.1",
                         service=args.service)
    proxy = CaptureProxy(config, buffer, metrics)
    try:
        proxy.start()
    except RuntimeError as exc:
        print(f"replayops capture: {exc}", file=sys.stderr)
        return 1
    env = dict(os.environ)
    if args.outbound:
        url = f"http://127.0.0.1:{args.outbound}"
        # local dependencies usually listen on loopback too: proxy everything
        env.update(HTTP_PROXY=url, HTTPS_PROXY=url, http_proxy=url, https_proxy=url, NO_PROXY="", no_proxy="")
    print(f"replayops capture: recording {args.upstream} on 127.0.0.1:{args.listen} into snapshot {name}",
          file=sys.stderr, flush=True)
    app = subprocess.Popen(command, env=env)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while app.poll() is None and not stop.is_set():
        stop.wait(0.2)
    if app.poll() is None:
        app.terminate()
        try:
            app.wait(10)
        except subprocess.TimeoutExpired:
            app.kill()
    proxy.stop()
    store.write_snapshot(Manifest(name=name, service=args.service, source=f"replayops capture {args.upstream}",
                                  redactions=dict(redactor.counts)), records)
    print(f"snapshot {name}: {len(records)} pairs\n{summary(records, redactor.counts)}")
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    store = FileStore(args.store)
    try:
        if args.verb == "ls":
            for m in store.snapshots():
                window = f"{_fmt(m.start)} .. {_fmt(m.end)}" if m.count else "-"
                readers = ",".join([m.namespace or "-", *m.shared])
                print(f"{m.name:<40} {m.count:>8} pairs  {m.service or '-':<20} {window}  read by {readers}")
        elif args.verb == "show":
            m = store.manifest(args.name)
            problems: list[ReadProblem] = []
            records = list(store.read(args.name, strict=False, problems=problems))
            print(json.dumps(m.to_json(), indent=2))
            print(summary(records, Counter(m.redactions)))
            for p in problems:
                print(f"problem: {p}", file=sys.stderr)
            return 1 if problems else 0
        elif args.verb == "cut" and args.resource:
            return _cut_resource(store, args)
        elif args.verb == "cut":
            if not args.name:
                print("replayops snapshot cut: give a NAME or --resource NAMESPACE/NAME", file=sys.stderr)
                return 2
            problems = []
            m = store.cut(args.name, service=args.service, start=args.start, end=args.end, stream=args.stream,
                          problems=problems)
            print(f"snapshot {m.name}: {m.count} pairs")
            for p in problems:
                print(f"problem: {p} (skipped)", file=sys.stderr)
            return 1 if problems else 0
        elif args.verb == "rm":
            if not store.remove(args.name):
                print(f"no snapshot {args.name!r}", file=sys.stderr)
                return 1
            print(f"removed {args.name}")
        elif args.verb == "import":
            return _import(store, args)
        elif args.verb == "share":
            m = store.share(args.name, args.namespaces)
            print(f"snapshot {m.name} may be read by replays of: {', '.join(m.shared)}"
                  + (f" (and {m.namespace}, its own)" if m.namespace else ""))
        elif args.verb == "export":
            problems = []
            doc = har.to_har(store.read(args.name, strict=False, problems=problems))
            args.har.write_text(json.dumps(doc, indent=1))
            print(f"exported {len(doc['log']['entries'])} entries to {args.har}")
            for p in problems:
                print(f"problem: {p}", file=sys.stderr)
            return 1 if problems else 0
    except (StoreError, har.HarError) as exc:
        print(f"replayops snapshot {args.verb}: {exc}", file=sys.stderr)
        return 1
    return 0


def _cut_resource(store: FileStore, args: argparse.Namespace) -> int:
    """Cut the cluster's Snapshot ``--resource`` names and write its status."""
    from controller import snapshots
    from controller.kube import KubeError, connect

    namespace, name = args.resource
    try:
        ok, message = snapshots.cut(connect(args.kubeconfig), store, namespace, name, time.time())
    except (KubeError, OSError, ValueError) as exc:
        print(f"replayops snapshot cut: Snapshot {namespace}/{name}: {exc}", file=sys.stderr)
        return 1
    print(f"replayops snapshot cut: Snapshot {namespace}/{name}: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _import(store: FileStore, args: argparse.Namespace) -> int:
    har_file = args.file.suffix in (".har", ".zhar") or args.file.name.endswith(".har.gz")
    got = har.read_har(args.file, args.service) if har_file else har.read_flows(args.file, args.service)
    if args.direction:
        for record in got.records:
            record["direction"] = args.direction
    m = store.write_snapshot(Manifest(name=args.name, service=args.service, source=f"import {args.file.name}",
                                      namespace=args.namespace or ""),
                             got.records)
    print(f"snapshot {m.name}: {m.count} pairs imported from {args.file}")
    for warning in got.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in got.skipped:
        print(f"skipped {problem}", file=sys.stderr)
    return 1 if got.skipped else 0


def _fmt(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
