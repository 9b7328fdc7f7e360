"""The responder: serve a snapshot's outbound calls as mocks (HTTP, HTTPS, and as a forward proxy).

An app pointed at it directly, or with ``HTTP_PROXY`` set to it (absolute-form
requests), gets the recorded responses. Timing is none, as recorded, or a
multiple of it. A miss is passed through to the real service, or answered 404
with what came closest and why it did not match; every miss is logged.
Chaos options inject errors, dropped connections and delays at a given
probability. ``/__replayops/metrics`` serves Prometheus metrics with the mock
match rate; ``/__replayops/misses`` lists recent misses.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from controller import logs
from controller.replay.matcher import Hit, Matcher, Miss
from controller.store import rrpair

log = logs.get("responder")
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "proxy-connection"}


@dataclass(frozen=True)
class Options:
    timing: str = "none"  # none | recorded | multiplier
    multiplier: float = 1.0
    on_miss: str = "notFound"  # notFound | passthrough
    error_rate: float = 0.0
    error_status: int = 503
    drop_rate: float = 0.0
    delay_rate: float = 0.0
    delay_ms: float = 0.0
    miss_log: Path | None = None
    seed: int | None = None


class Responder:
    def __init__(self, matcher: Matcher, options: Options) -> None:
        self.matcher, self.options = matcher, options
        self.random = random.Random(options.seed)
        self.misses: deque[dict[str, Any]] = deque(maxlen=200)
        self.registry = CollectorRegistry()
        self.served = Counter("replayops_mock_requests", "Requests by outcome", ["outcome"], registry=self.registry)
        self.rate = Gauge("replayops_mock_match_rate", "Matched (exact or fuzzy) / all requests",
                          registry=self.registry)
        self._counts = {"exact": 0, "fuzzy": 0, "miss": 0}
        self._client: aiohttp.ClientSession | None = None

    def _count(self, outcome: str) -> None:
        self._counts[outcome] += 1
        self.served.labels(outcome).inc()
        total = sum(self._counts.values())
        self.rate.set((self._counts["exact"] + self._counts["fuzzy"]) / total)

    def match_rate(self) -> float:
        total = sum(self._counts.values())
        return (self._counts["exact"] + self._counts["fuzzy"]) / total if total else 1.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/__replayops/"):
            return self._admin(request)
        body = await request.read()
        url = str(request.url)
        o = self.options
        if o.drop_rate and self.random.random() < o.drop_rate:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=499)
        if o.error_rate and self.random.random() < o.error_rate:
            return web.Response(status=o.error_status, text="replayops chaos: injected error")
        if o.delay_rate and self.random.random() < o.delay_rate:
            await asyncio.sleep(o.delay_ms / 1000)
        proxied = request.raw_path.startswith(("http://", "https://"))
        result = self.matcher.match(request.method, url, body, host_known=proxied)
        if isinstance(result, Miss):
            return await self._miss(request, url, body, result)
        self._count("fuzzy" if result.fuzzy else "exact")
        return await self._serve(result)

    async def _serve(self, hit: Hit) -> web.Response:
        record = hit.record
        if self.options.timing != "none":
            factor = self.options.multiplier if self.options.timing == "multiplier" else 1.0
            await asyncio.sleep(float(record.get("duration", 0)) / 1000 * factor)
        resp = record["response"]
        headers = [(k, v) for k, v in resp["headers"] if k.lower() not in HOP]
        out = web.Response(status=resp["status"], body=rrpair.decode_body(resp), headers=None)
        for k, v in headers:
            out.headers.add(k, v)
        out.headers["X-Replayops-Mock"] = "fuzzy" if hit.fuzzy else "exact"
        return out

    async def _miss(self, request: web.Request, url: str, body: bytes, miss: Miss) -> web.Response:
        self._count("miss")
        entry = {"method": request.method, "url": url, "reason": miss.reason}
        self.misses.append(entry)
        log.info("mock miss", extra=logs.fields(**entry))
        if self.options.miss_log:
            with open(self.options.miss_log, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        if self.options.on_miss == "passthrough" and request.url.is_absolute() and request.url.host:
            if self._client is None:
                self._client = aiohttp.ClientSession(trust_env=False)
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
            async with self._client.request(request.method, url, headers=headers, data=body or None) as upstream:
                data = await upstream.read()
                out = web.Response(status=upstream.status, body=data)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP:
                        out.headers.add(k, v)
                out.headers["X-Replayops-Mock"] = "passthrough"
                return out
        return web.json_response({"error": "no recorded response matches", "request": f"{request.method} {url}",
                                  "closest": miss.reason}, status=404, headers={"X-Replayops-Mock": "miss"})

    def _admin(self, request: web.Request) -> web.Response:
        if request.path == "/__replayops/metrics":
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")
        if request.path == "/__replayops/misses":
            return web.json_response(list(self.misses))
        return web.json_response({"status": "ok", "matchRate": self.match_rate()})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)

        async def close(_: web.Application) -> None:
            if self._client:
                await self._client.close()
        app.on_cleanup.append(close)
        return app


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(responder: Responder, *, host: str, port: int, tls: ssl.SSLContext | None = None,
                tls_port: int | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever)."""
    runner = web.AppRunner(responder.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=True).start()
    if tls and tls_port:
        await web.TCPSite(runner, host, tls_port, ssl_context=tls, reuse_port=True).start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
