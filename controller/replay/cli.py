"""``replayops replay | mock | report show``: the replay commands. Local by default; with
``--resource NS/NAME`` (how the controller's Jobs run it) the TrafficReplay comes from the cluster
and the outcome goes into its status."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller import api, argtypes, logs, schema
from controller.api import SERVING_MOCKS
from controller.durations import parse_duration
from controller.replay import generator, report, resource_status
from controller.replay.matcher import Ignore, Matcher
from controller.replay.responder import Options, Responder, serve, tls_context
from controller.store import FileStore, StoreError


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("replay", help="replay a snapshot's inbound requests against a target and compare")
    r.add_argument("snapshot", nargs="?", help="the snapshot (default with --resource: its spec.snapshot)")
    r.add_argument("--target", help="base URL of the service under test (default with --resource: its target)")
    r.add_argument("--resource", metavar="NAMESPACE/NAME", type=argtypes.resource,
                   help="run this TrafficReplay from the cluster and write the outcome into its status")
    r.add_argument("--kubeconfig", type=Path, help="cluster access for --resource (default: $KUBECONFIG or "
                   "in-cluster)")
    r.add_argument("--report-dir", type=Path, help="where reports go (default $REPLAYOPS_HOME/reports)")
    r.add_argument("--spec", type=Path, help="a TrafficReplay YAML whose spec drives load, transforms, goals")
    r.add_argument("--copies", type=int, help="virtual users")
    r.add_argument("--iterations", type=int)
    r.add_argument("--duration", help="e.g. 30s, 5m")
    r.add_argument("--rate", type=_positive, help="hold this many requests per second")
    r.add_argument("--wait", choices=["zero", "recorded", "fixedMs"])
    r.add_argument("--fixed-ms", type=int)
    r.add_argument("--loop", action="store_true", default=None)
    r.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    r.add_argument("--request-timeout", type=_positive, default=10.0)
    r.add_argument("--min-success-rate", type=_fraction)
    r.add_argument("--min-rps", type=_positive)
    r.add_argument("--max-p99", type=_positive, help="ms")
    r.add_argument("--ignore-path", action="append", default=[], help="JSON path left out of the comparison")
    r.add_argument("--no-detect-noise", dest="detect_noise", action="store_false",
                   help="compare every field, even those found to differ on every call (timestamps, ids)")
    r.add_argument("--secrets-dir", type=Path, help="mounted secrets for bearerRefresh (dir/name/key)")
    r.add_argument("--store", type=Path)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_replay)

    m = sub.add_parser("mock", help="serve a snapshot's outbound calls as mocks")
    m.add_argument("snapshot", nargs="?", help="the snapshot (default with --resource: its spec.snapshot)")
    m.add_argument("--resource", metavar="NAMESPACE/NAME", type=argtypes.resource,
                   help="serve a mocks-only TrafficReplay from the cluster for its duration, with its status")
    m.add_argument("--url", help="with --resource: the address others reach these mocks at (for the status)")
    m.add_argument("--kubeconfig", type=Path, help="cluster access for --resource")
    m.add_argument("--listen", type=int, required=True)
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--tls-listen", type=int)
    m.add_argument("--tls-cert", type=Path)
    m.add_argument("--tls-key", type=Path)
    m.add_argument("--timing", choices=["none", "recorded", "multiplier"], default="none")
    m.add_argument("--multiplier", type=_positive, default=1.0)
    m.add_argument("--on-miss", choices=["notFound", "passthrough"], default="notFound")
    m.add_argument("--direction", choices=["outbound", "inbound"], default="outbound",
                   help="serve the calls the service made (outbound), or the answers it gave (inbound: a HAR "
                        "imported from a browser, to mock that API)")
    m.add_argument("--no-fuzzy", action="store_true")
    m.add_argument("--ignore-header", action="append", default=[])
    m.add_argument("--ignore-query", action="append", default=[])
    m.add_argument("--ignore-json-path", action="append", default=[])
    m.add_argument("--chaos-error-rate", type=_fraction, default=0.0)
    m.add_argument("--chaos-drop-rate", type=_fraction, default=0.0)
    m.add_argument("--chaos-delay-rate", type=_fraction, default=0.0)
    m.add_argument("--chaos-delay-ms", type=_positive, default=0.0)
    m.add_argument("--miss-log", type=Path)
    m.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    m.add_argument("--store", type=Path)
    m.set_defaults(func=run_mock)

    rep = sub.add_parser("report", help="replay reports")
    verbs = rep.add_subparsers(dest="verb", required=True)
    show = verbs.add_parser("show", help="a terminal summary of a report")
    show.add_argument("id")
    show.add_argument("--report-dir", type=Path)
    show.add_argument("--json", action="store_true")
    rep.set_defaults(func=run_report)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    if not args.spec:
        return {"snapshot": args.snapshot}
    doc = YAML(typ="safe").load(args.spec.read_text())
    errors = schema.validate(doc)
    if errors:
        raise ValueError("; ".join(f"{args.spec}: {e}" for e in errors))
    spec = dict(doc["spec"])
    spec["snapshot"] = args.snapshot
    return spec


def _start_target(command: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], Any]:
    out = open(log_path, "wb")  # noqa: SIM115 - closed after the run
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True), out


def _address(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def _accepts(address: tuple[str, int]) -> bool:
    import socket

    try:
        socket.create_connection(address, timeout=1).close()
        return True
    except OSError:
        return False


def _wait_listening(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Until the target accepts connections (True), or its command exits or ``timeout`` passes (False)."""
    address = _address(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _accepts(address):
            return proc.poll() is None  # still running: it is the command that answers
        time.sleep(0.1)
    return False


@dataclass
class Outcome:
    """How a replay ended: the exit code, its report when it ran, and what stopped it otherwise."""

    code: int
    report: dict[str, Any] | None = None
    error: str = ""
    where: Path | None = None  # the report's directory


def run_replay(args: argparse.Namespace) -> int:
    logs.setup("WARNING")
    if args.resource:
        return _run_resource(args)
    if not args.snapshot or not args.target:
        print("replayops replay: give SNAPSHOT and --target, or --resource NAMESPACE/NAME", file=sys.stderr)
        return 2
    try:
        spec = _spec(args)
    except (OSError, ValueError) as exc:
        print(f"replayops replay: {exc}", file=sys.stderr)
        return 2
    outcome = _replay(args, spec, args.snapshot, args.target)
    if outcome.error:
        print(f"replayops replay: {outcome.error}", file=sys.stderr)
    return outcome.code


def _fetch_resource(args: argparse.Namespace, command: str) -> tuple[Any, dict[str, Any]] | None:
    """A client and the TrafficReplay ``--resource`` names; None (the reason printed) when unreachable."""
    from controller.kube import KubeError, connect

    namespace, name = args.resource
    try:
        kube = connect(args.kubeconfig)
        replay = kube.get(api.API_VERSION, "TrafficReplay", name, namespace)
    except (KubeError, OSError, ValueError) as exc:
        print(f"replayops {command}: {exc}", file=sys.stderr)
        return None
    if replay is None:
        print(f"replayops {command}: TrafficReplay {namespace}/{name} does not exist", file=sys.stderr)
        return None
    return kube, replay


def _run_resource(args: argparse.Namespace) -> int:
    """Run a TrafficReplay from the cluster; its status says Running, then how it ended."""
    from controller import snapshots
    from controller.kube import KubeError
    from controller.replay import collect
    from controller.replay import target as targets

    namespace, name = args.resource
    status = resource_status.Writer(namespace, name)
    found = _fetch_resource(args, "replay")
    if found is None:
        return 2
    kube, replay = found
    spec = dict(replay.get("spec") or {})
    generation = int(replay["metadata"].get("generation", 1))
    try:
        snapshot = args.snapshot or snapshots.resolve(kube, namespace, spec.get("snapshot", ""),
                                                      FileStore(args.store))
        spec["snapshot"] = snapshot
        target = args.target or targets.resolve(kube, namespace, spec)
        kube.apply_status(status.running(generation, f"replaying {snapshot} against {target}"))
        outcome = _replay(args, spec, snapshot, target,
                          events=lambda since, until: collect.events(kube, namespace, spec, since, until))
        kube.apply_status(status.finished(generation, outcome))
    except (targets.TargetError, snapshots.SnapshotNotReady) as exc:
        outcome = Outcome(2, error=str(exc))
        kube.apply_status(status.finished(generation, outcome))
    except KubeError as exc:
        outcome = Outcome(2, error=f"status not written: {exc}")
    if outcome.error:
        print(f"replayops replay: {outcome.error}", file=sys.stderr)
    # a replay that ran has its verdict in the status (goals met or not): the Job succeeded
    return 0 if outcome.report is not None else outcome.code


def _replay(args: argparse.Namespace, spec: dict[str, Any], snapshot: str, target: str,
            events: Callable[[float, float], list[dict[str, str]]] | None = None) -> Outcome:
    """Replay ``snapshot`` against ``target``; ``events(started, finished)`` adds the cluster's events."""
    goals = dict(spec.get("goals") or {})
    if args.min_success_rate is not None:
        goals["minSuccessRate"] = args.min_success_rate
    if args.min_rps is not None:
        goals["minRPS"] = args.min_rps
    if args.max_p99 is not None:
        goals.setdefault("maxLatencyMs", {})["p99"] = args.max_p99
    stages = [{"duration": args.duration or "1h", "targetRPS": args.rate, "ramp": "step"}] if args.rate else None
    plan = generator.Plan.from_spec(
        spec, target, store_root=args.store, copies=args.copies, iterations=args.iterations,
        duration=parse_duration(args.duration), wait=args.wait, fixed_ms=args.fixed_ms, loop=args.loop,
        workers=args.workers, request_timeout=args.request_timeout, secrets_dir=args.secrets_dir, stages=stages)
    if args.ignore_path:
        plan.rules = generator.compare.Rules(**{**plan.rules.__dict__,
                                                "ignore": (*plan.rules.ignore, *args.ignore_path)})
    plan.detect_noise = plan.detect_noise and args.detect_noise
    command = args.command
    report_id = report.new_id(snapshot)
    target_proc, target_log, log_path = None, None, None
    if command:
        if _accepts(_address(target)):  # the command could not listen there: the replay would hit another app
            host, port = _address(target)
            return Outcome(2, error=f"something already listens on {host}:{port} before the target command "
                                    "started; stop it or give --target another port")
        log_path = (args.report_dir or report.reports_dir()) / f"{report_id}.target.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        target_proc, target_log = _start_target(command, log_path)
        if not _wait_listening(target, target_proc):
            with contextlib.suppress(ProcessLookupError):  # it exited: its group may be gone too
                os.killpg(target_proc.pid, signal.SIGTERM)
            target_log.close()
            code = target_proc.poll()
            why = f"exited with {code} before it listened" if code is not None else "never listened (30 s)"
            return Outcome(2, error=f"the target command {why} on {target}; its output is in {log_path}")
    started = time.time()
    try:
        total = FileStore(args.store).manifest(snapshot).count
    except StoreError as exc:
        return Outcome(2, error=str(exc))
    progress = None if args.no_progress or not sys.stderr.isatty() else _progress(total * plan.copies)
    problems: list[Any] = []
    try:
        stats, noise, errors = generator.run(plan, on_progress=progress, problems=problems)
    except StoreError as exc:
        return Outcome(2, error=str(exc))
    finally:
        if target_proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(target_proc.pid, signal.SIGTERM)
            target_proc.wait(10)
            target_log.close()  # type: ignore[union-attr]
    finished = time.time()
    collected = log_path.read_text(errors="replace") if log_path else ""
    rep = report.build(stats, report_id=report_id, snapshot=snapshot, target=target, started=started,
                       finished=finished, goals=goals, noise=noise, errors=errors, logs=collected,
                       read_problems=[str(p) for p in problems],
                       events=events(started, finished) if events else None)
    where = report.save(rep, args.report_dir)
    print(report.terminal_summary(rep))
    print(f"report: {where / 'report.html'}")
    error = ""
    if stats.requests and stats.failures == stats.requests:
        error = f"every request to {target} failed: {next(iter(rep['errors']), 'no answer')}"
    return Outcome(0 if rep["goalsMet"] else 1, rep, error, where)


def _progress(total: int) -> Any:
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("replaying", total=total or None)
    bar.start()

    def update(done: int) -> None:
        bar.update(task, completed=done)
        if total and done >= total:
            bar.stop()
    return update


def _mock_process(args: argparse.Namespace, ready: Any) -> None:
    store = FileStore(args.store)
    matcher = Matcher(Ignore(frozenset(h.lower() for h in args.ignore_header), frozenset(args.ignore_query),
                             tuple(args.ignore_json_path)), fuzzy=not args.no_fuzzy, direction=args.direction)
    matcher.load(store.read(args.snapshot, strict=False))
    options = Options(args.timing, args.multiplier, args.on_miss, args.chaos_error_rate, 503, args.chaos_drop_rate,
                      args.chaos_delay_rate, args.chaos_delay_ms, args.miss_log)
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_listen else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.call_soon(ready.set)
        await serve(Responder(matcher, options), host=args.host, port=args.listen, tls=tls,
                    tls_port=args.tls_listen, stop=stop)
    asyncio.run(main())


def run_mock(args: argparse.Namespace) -> int:
    logs.setup("WARNING")
    if args.resource:
        return _mock_resource(args)
    if not args.snapshot:
        print("replayops mock: give SNAPSHOT, or --resource NAMESPACE/NAME", file=sys.stderr)
        return 2
    return _serve_mocks(args)


def _serve_mocks(args: argparse.Namespace, serve_for: float | None = None,
                 before_stop: Callable[[], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, or for ``serve_for`` seconds (then ``before_stop`` runs first)."""
    try:
        manifest = FileStore(args.store).manifest(args.snapshot)
    except StoreError as exc:
        print(f"replayops mock: {exc}", file=sys.stderr)
        return 2
    if args.tls_listen and not (args.tls_cert and args.tls_key):
        print("replayops mock: --tls-listen needs --tls-cert and --tls-key", file=sys.stderr)
        return 2
    ctx = mp.get_context("fork")
    events = [ctx.Event() for _ in range(max(1, args.workers))]
    procs = [ctx.Process(target=_mock_process, args=(args, e)) for e in events]
    for p in procs:
        p.start()
    for e in events:
        e.wait(30)
    served = manifest.by_direction.get(args.direction, 0)
    print(f"replayops mock: serving {served} recorded {args.direction} pairs of {args.snapshot} on "
          f"http://{args.host}:{args.listen}" + (f" and https://{args.host}:{args.tls_listen}" if args.tls_listen
                                                 else ""), file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    until = time.monotonic() + serve_for if serve_for is not None else None
    try:
        while not stop.is_set() and any(p.is_alive() for p in procs):
            if until is not None and time.monotonic() >= until:
                if before_stop:
                    before_stop()
                break
            stop.wait(0.5 if until is None else max(0.0, min(0.5, until - time.monotonic())))
    finally:  # the workers stop whatever ``before_stop`` did
        for p in procs:
            if p.pid:
                os.kill(p.pid, signal.SIGTERM)
            p.join(10)
    return 0


def _mock_resource(args: argparse.Namespace) -> int:
    """A mocks-only TrafficReplay: its snapshot's outbound calls, served with its mocks settings for its
    timeout; Running, then Succeeded with the match rate."""
    import urllib.request

    from controller import snapshots

    namespace, name = args.resource
    status = resource_status.Writer(namespace, name)
    found = _fetch_resource(args, "mock")
    if found is None:
        return 2
    kube, replay = found
    spec, generation = replay.get("spec") or {}, int(replay["metadata"].get("generation", 1))
    mocks = spec.get("mocks") or {}
    match, timing = mocks.get("match") or {}, mocks.get("timing") or {}
    try:
        args.snapshot = args.snapshot or snapshots.resolve(kube, namespace, str(spec.get("snapshot", "")),
                                                           FileStore(args.store))
    except snapshots.SnapshotNotReady as exc:
        kube.apply_status(status.finished(generation, Outcome(2, error=str(exc))))
        print(f"replayops mock: {exc}", file=sys.stderr)
        return 2
    args.ignore_header += match.get("ignoreHeaders") or []
    args.ignore_query += match.get("ignoreQueryKeys") or []
    args.ignore_json_path += match.get("ignoreJsonPaths") or []
    args.no_fuzzy = args.no_fuzzy or match.get("fuzzy") is False
    args.on_miss = mocks.get("onMiss", args.on_miss)
    args.timing, args.multiplier = timing.get("mode", args.timing), timing.get("multiplier", args.multiplier)
    serve_for = parse_duration(spec.get("timeout") or "30m") or 1800.0  # the Job's deadline leaves a margin
    where = args.url or f"http://{args.host}:{args.listen}"
    rate: list[float] = []

    def measure() -> None:
        """The match rate the mocks saw; without it the replay still served (the status just lacks it)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.listen}/__replayops/status", timeout=5) as resp:
                rate.append(float(json.load(resp)["matchRate"]))
        except (OSError, ValueError, KeyError) as exc:
            print(f"replayops mock: match rate not read: {exc}", file=sys.stderr)

    kube.apply_status(status.running(generation, f"serving the recorded outbound calls of {args.snapshot} at "
                                                 f"{where} for {serve_for:g}s", reason=SERVING_MOCKS))
    code = _serve_mocks(args, serve_for, measure)
    kube.apply_status(status.mocks_served(generation, serve_for, rate[0] if rate else None) if code == 0 else
                      status.finished(generation, Outcome(code, error=f"snapshot {args.snapshot} not served")))
    return code


def run_report(args: argparse.Namespace) -> int:
    try:
        rep = report.load(args.id, args.report_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"replayops report show: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rep, indent=2) if args.json else report.terminal_summary(rep))
    return 0
