"""The generator: replay a snapshot's inbound requests against a target and compare the answers.

Load model (from a TrafficReplay spec): ``copies`` virtual users, each walking
the snapshot in recorded order (streamed, so memory stays bounded), with a
wait of zero, the recorded gap, or fixed ms; ``stages`` hold a target request
rate (ramped linearly) with a shared token bucket; ``duration`` or
``iterations`` end it, ``loop`` restarts the snapshot. Virtual users are
spread over worker processes (all cores), each running aiohttp on asyncio.
Every response is compared with the recording (``compare``); workers return
small aggregates (histograms, counters, a few example diffs) that ``report``
turns into the summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import os
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from controller.durations import parse_duration
from controller.replay import compare, transforms
from controller.replay.client import Connection
from controller.store import FileStore, ReadProblem, rrpair

EXAMPLES = 3


@dataclass
class Plan:
    """What to run, from a TrafficReplay spec plus the command line."""

    snapshot: str
    target: str
    store_root: Path | None = None
    copies: int = 1
    wait: str = "zero"
    fixed_ms: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    duration: float | None = None
    iterations: int = 1
    loop: bool = False
    transforms: list[dict[str, Any]] = field(default_factory=list)
    rules: compare.Rules = field(default_factory=compare.Rules)
    detect_noise: bool = True
    timeout: float | None = None
    request_timeout: float = 10.0
    workers: int = 0
    secrets_dir: Path | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], target: str, **overrides: Any) -> Plan:
        load = spec.get("load") or {}
        wait = load.get("wait") or {}
        body = (spec.get("assertions") or {}).get("body") or {}
        plan = cls(snapshot=spec["snapshot"], target=target, copies=int(load.get("copies", 1)),
                   wait=wait.get("mode", "zero"), fixed_ms=int(wait.get("fixedMs", 0)),
                   stages=list(load.get("stages") or []), duration=parse_duration(load.get("duration")),
                   iterations=int(load.get("iterations", 1)), loop=bool(load.get("loop", False)),
                   transforms=list(spec.get("transforms") or []),
                   rules=compare.Rules.from_spec(spec.get("assertions")),
                   detect_noise=bool(body.get("detectNoise", True)), timeout=parse_duration(spec.get("timeout")))
        for key, value in overrides.items():
            if value is not None:
                setattr(plan, key, value)
        if plan.stages and plan.duration is None:
            plan.duration = sum(parse_duration(s["duration"]) or 0 for s in plan.stages)
        return plan

    def rate_at(self, t: float) -> float | None:
        """The target request rate ``t`` seconds in (None: as fast as the users go)."""
        start, previous = 0.0, 0.0
        for stage in self.stages:
            length = parse_duration(stage["duration"]) or 0
            target = float(stage["targetRPS"])
            if t < start + length:
                if stage.get("ramp", "linear") == "linear" and length:
                    return previous + (target - previous) * (t - start) / length
                return target
            start, previous = start + length, target
        return previous if self.stages else None


@dataclass
class Stats:
    """What one worker saw; merged by the parent."""

    latency: Counter[float] = field(default_factory=Counter)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeline: dict[int, list[Any]] = field(default_factory=dict)  # second -> [requests, errors, Counter]
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    failures: int = 0
    mismatches: int = 0

    def endpoint(self, name: str) -> dict[str, Any]:
        return self.endpoints.setdefault(name, {"requests": 0, "mismatches": 0, "errors": 0,
                                                "latency": Counter(), "examples": []})

    def add(self, name: str, ms: float, second: int, *, status: str, diff: list[str] | None, error: str | None) -> None:
        bucket = round(ms, 1) if ms < 100 else float(round(ms))
        ep = self.endpoint(name)
        ep["requests"] += 1
        self.requests += 1
        line = self.timeline.setdefault(second, [0, 0, Counter()])
        line[0] += 1
        self.statuses[status] += 1
        if error:
            ep["errors"] += 1
            self.failures += 1
            line[1] += 1
            self.errors[error] += 1
            return
        self.latency[bucket] += 1
        ep["latency"][bucket] += 1
        line[2][bucket] += 1
        if diff:
            ep["mismatches"] += 1
            self.mismatches += 1
            line[1] += 1
            if len(ep["examples"]) < EXAMPLES:
                ep["examples"].append(diff[:20])

    def merge(self, other: Stats) -> None:
        self.latency.update(other.latency)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.requests += other.requests
        self.failures += other.failures
        self.mismatches += other.mismatches
        for name, ep in other.endpoints.items():
            mine = self.endpoint(name)
            for key in ("requests", "mismatches", "errors"):
                mine[key] += ep[key]
            mine["latency"].update(ep["latency"])
            mine["examples"] = (mine["examples"] + ep["examples"])[:EXAMPLES]
        for second, (n, errors, lat) in other.timeline.items():
            line = self.timeline.setdefault(second, [0, 0, Counter()])
            line[0] += n
            line[1] += errors
            line[2].update(lat)


def inbound(store: FileStore, name: str, problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]:
    """The snapshot's inbound pairs to replay. One whose request body was recorded truncated is not sent (it
    would be a different request): it is named in ``problems``."""
    for record in store.read(name, strict=False, problems=problems):
        if record["direction"] != "inbound":
            continue
        cut = record["request"].get("truncated")
        if cut is not None:
            if problems is not None:
                problems.append(ReadProblem(f"snapshot {name}", 0, f"{rrpair.endpoint(record)} (pair {record['id']}):"
                                            f" its {cut}-byte request body was recorded truncated: not replayed"))
            continue
        yield record


def signature(record: Mapping[str, Any]) -> str:
    req = record["request"]
    return hashlib.sha256(f"{req['method']} {req['url']} ".encode() + rrpair.decode_body(req)).hexdigest()


NOISE_SIGNATURES = 20000  # distinct requests remembered for noise detection (bounds its memory)
VOLATILE_LOOKS = 50  # responses of each endpoint looked at for values made anew on every call


def detect_noise(store: FileStore, name: str, problems: list[ReadProblem] | None = None) -> dict[str, set[str]]:
    """Per endpoint, the JSON paths that differ between recordings of the same request (among the first
    ``NOISE_SIGNATURES`` distinct requests, so memory stays bounded on huge snapshots), and those whose
    values look made anew on every call (``compare.volatile``: a request recorded once has them too; the
    first ``VOLATILE_LOOKS`` responses of each endpoint are looked at)."""
    first: dict[str, dict[str, Any]] = {}
    found: dict[str, set[str]] = defaultdict(set)
    looked: dict[str, int] = defaultdict(int)
    for record in inbound(store, name, problems):
        endpoint, sig = rrpair.endpoint(record), signature(record)
        if looked[endpoint] < VOLATILE_LOOKS:
            looked[endpoint] += 1
            found[endpoint] |= compare.volatile(record["response"])
        if sig in first:
            found[endpoint] |= compare.noise(first[sig], record["response"])
        elif len(first) < NOISE_SIGNATURES:
            first[sig] = record["response"]
    return {endpoint: paths for endpoint, paths in found.items() if paths}


class Bucket:
    """A token bucket whose rate follows the plan's stages."""

    def __init__(self, plan: Plan, share: float, started: float) -> None:
        self.plan, self.share, self.started = plan, share, started
        self.tokens, self.last = 0.0, started

    async def take(self) -> None:
        if not self.plan.stages:
            return  # no rate to hold: as fast as the users go
        while True:
            now = time.monotonic()
            rate = self.plan.rate_at(now - self.started)
            if rate is None:
                return
            self.tokens = min(self.tokens + (now - self.last) * rate * self.share, max(rate * self.share, 1.0))
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep(max(0.001, (1 - self.tokens) / max(rate * self.share, 0.001)))


IN_MEMORY = 20000  # snapshots up to this many requests are parsed once per worker; larger ones are streamed


def records_of(store: FileStore, plan: Plan, cached: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    return iter(cached) if cached is not None else inbound(store, plan.snapshot)


async def _user(plan: Plan, store: FileStore, session: aiohttp.ClientSession, bucket: Bucket, stats: Stats,
                started: float, deadline: float | None, progress: Any, cached: list[dict[str, Any]] | None) -> None:
    state = transforms.Session(plan.transforms, plan.secrets_dir)
    base = urlsplit(plan.target)
    conn = Connection(base.hostname or "127.0.0.1", base.port or 80) if base.scheme == "http" else None
    iteration = sent = 0
    try:
        while True:
            previous_at: float | None = None
            for record in records_of(store, plan, cached):
                if deadline and time.monotonic() >= deadline:
                    return
                recorded_at = float(record["timestamps"]["request"])
                if plan.wait == "recorded" and previous_at is not None:
                    await asyncio.sleep(min(max(recorded_at - previous_at, 0), 60))
                elif plan.wait == "fixedMs":
                    await asyncio.sleep(plan.fixed_ms / 1000)
                previous_at = recorded_at
                if plan.stages:
                    await bucket.take()
                await _send(plan, base, record, session, conn, state, stats, started)
                sent += 1
                if progress is not None and sent % 100 == 0:
                    _advance(progress, 100)
            iteration += 1
            if not (plan.loop and deadline) and iteration >= plan.iterations:
                return
    finally:
        if conn is not None:
            conn.close()
        if progress is not None:
            _advance(progress, sent % 100)


def _advance(progress: Any, n: int) -> None:
    """Add to the shared progress counter (in steps, so its lock is rarely taken)."""
    with progress.get_lock():
        progress.value += n


SKIP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "accept-encoding"})


def _prepared(base: Any, record: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...], bytes, str]:
    """What is sent for ``record`` before transforms (URL on the target, headers, body, endpoint name);
    kept on the record, so a snapshot held in memory is prepared once per worker."""
    prep = record.get("_prepared")
    if prep is None:
        rec_req = record["request"]
        parts = urlsplit(rec_req["url"])
        url = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{parts.path or '/'}"
        url += f"?{parts.query}" if parts.query else ""
        headers = tuple((k, v) for k, v in rec_req["headers"] if k.lower() not in SKIP_HEADERS)
        prep = record["_prepared"] = (url, headers, rrpair.decode_body(rec_req), rrpair.endpoint(record))
    return prep  # type: ignore[no-any-return]


async def _send(plan: Plan, base: Any, record: dict[str, Any], session: aiohttp.ClientSession,
                conn: Connection | None, state: transforms.Session, stats: Stats, started: float) -> None:
    rec_req = record["request"]
    url, headers_out, body_out, name = _prepared(base, record)
    req = transforms.Request(rec_req["method"], url, headers_out, body_out)  # type: ignore[arg-type]
    t0 = time.monotonic()
    try:
        login = state.needs_login() if state.transforms else None
        if login:
            async with session.request(login.get("method", "POST"), f"{base.scheme}://{base.netloc}{login['path']}",
                                       data=str(login.get("body", "")).encode()) as resp:
                state.login_done(login, await resp.read())
        if state.transforms or state.ids:
            req.headers = [list(h) for h in headers_out]  # transforms edit a copy of the prepared headers
            req = state.apply(req, float(record["timestamps"]["request"]), time.time())
            sent_to = urlsplit(req.url)
            netloc, target = sent_to.netloc, (sent_to.path or "/") + (f"?{sent_to.query}" if sent_to.query else "")
        else:  # sent as recorded: the prepared request is the request
            netloc, target = base.netloc, url[len(f"{base.scheme}://{base.netloc}"):]
        t0 = time.monotonic()
        if conn is not None and netloc == base.netloc:
            status, headers, body = await conn.request(req.method, target, req.headers, req.body,
                                                       plan.request_timeout)
        else:
            async with session.request(req.method, req.url, headers=[(k, v) for k, v in req.headers],
                                       data=req.body or None, allow_redirects=False) as resp:
                status, headers, body = resp.status, {k: v for k, v in resp.headers.items()}, await resp.read()
        ms = (time.monotonic() - t0) * 1000
        diff = compare.compare(record["response"], status, headers, body, plan.rules, plan_noise(plan, name))
        if state.transforms:
            state.learn(record["response"], rec_req, status, headers, body)
        stats.add(name, ms, int(time.monotonic() - started), status=str(status),
                  diff=[f"{name}: {line}" for line in diff.lines] or None, error=None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, zlib.error) as exc:
        ms = (time.monotonic() - t0) * 1000
        message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")[:200] or type(exc).__name__
        stats.add(name, ms, int(time.monotonic() - started), status="error", diff=None, error=message)


_NOISE: dict[str, set[str]] = {}


def plan_noise(plan: Plan, endpoint: str) -> set[str]:
    return _NOISE.get(endpoint, set()) if plan.detect_noise else set()


async def _worker_main(plan: Plan, users: int, share: float, started_wall: float, progress: Any) -> Stats:
    store = FileStore(plan.store_root)
    stats = Stats()
    started = time.monotonic() - (time.time() - started_wall)
    deadline = None
    limit = min(x for x in (plan.duration, plan.timeout, 1e12) if x)
    if limit < 1e12:
        deadline = started + limit
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=plan.request_timeout)
    bucket = Bucket(plan, share, started)
    cached = None
    if store.manifest(plan.snapshot).by_direction.get("inbound", 0) <= IN_MEMORY:
        cached = list(inbound(store, plan.snapshot))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                     auto_decompress=True) as session:
        await asyncio.gather(*(_user(plan, store, session, bucket, stats, started, deadline, progress, cached)
                               for _ in range(users)))
    return stats


def _worker(plan: Plan, users: int, share: float, started_wall: float, progress: Any, noise: dict[str, set[str]],
            out: Any) -> None:
    _NOISE.clear()
    _NOISE.update(noise)
    try:
        try:
            import uvloop  # a faster event loop when installed

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        out.put(("ok", runner(_worker_main(plan, users, share, started_wall, progress))))
    except BaseException as exc:  # report, never hang the parent
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def run(plan: Plan, *, on_progress: Any = None,
        problems: list[ReadProblem] | None = None) -> tuple[Stats, dict[str, set[str]], list[str]]:
    """Run the plan on worker processes; return the merged stats, the noise found, and run errors.
    One streamed pass before the load detects noise and collects the snapshot's read ``problems``."""
    store = FileStore(plan.store_root)
    store.manifest(plan.snapshot)  # a missing snapshot is an error before any load
    if plan.detect_noise:
        noise = detect_noise(store, plan.snapshot, problems)
    else:
        noise = {}
        for _ in inbound(store, plan.snapshot, problems):
            pass
    workers = max(1, min(plan.workers or os.cpu_count() or 1, plan.copies))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    progress = ctx.Value("q", 0)
    per = [plan.copies // workers + (1 if i < plan.copies % workers else 0) for i in range(workers)]
    started_wall = time.time()
    procs = [ctx.Process(target=_worker, args=(plan, n, n / plan.copies, started_wall, progress, noise, out),
                         daemon=True) for n in per]
    for p in procs:
        p.start()
    results: list[Stats] = []
    errors: list[str] = []
    while len(results) + len(errors) < len(procs):
        if on_progress:
            on_progress(progress.value)
        try:
            kind, value = out.get(timeout=0.2)
        except Exception:  # queue.Empty: keep polling, but notice dead workers
            if not any(p.is_alive() for p in procs) and out.empty():
                errors.append("a worker process died without reporting")
                break
            continue
        (results if kind == "ok" else errors).append(value)
    for p in procs:
        p.join(5)
    total = Stats()
    for s in results:
        total.merge(s)
    if on_progress:
        on_progress(progress.value)
    return total, noise, errors
