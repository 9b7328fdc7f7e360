"""The forwarder: receives RRPair batches from sidecars, applies the CapturePolicy, writes the store.

``POST /v1/batches`` (bearer token, compared in constant time; gzip bodies are
capped before and after decompression) carries ``{"policy", "stream",
"records"}``. Each record is migrated and checked (bad ones are counted and
reported, the rest kept), filtered and sampled, redacted, then appended to
the stream in the store as one atomic segment.
"""

from __future__ import annotations

import gzip
import hmac
import json
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from controller import logs
from controller.capture import dlp
from controller.capture.filters import Filter
from controller.durations import parse_duration
from controller.policy import max_body
from controller.store import Store, rrpair

MAX_BODY = 16 * 1024 * 1024
RETENTION_EVERY = 60.0
MAX_INFLATED = 64 * 1024 * 1024
log = logs.get("forwarder")
PolicyGetter = Callable[[str], Mapping[str, Any] | None]  # None: no such policy; raises PoliciesUnavailable


class PoliciesUnavailable(Exception):
    """The policies cannot be read (no permission, no apiserver): nothing may be stored unfiltered."""


def _inflate(body: bytes) -> bytes:
    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, MAX_INFLATED + 1)
    if len(out) > MAX_INFLATED:
        raise ValueError(f"inflated body exceeds {MAX_INFLATED} bytes")
    return out


def create_app(store: Store, token: str, key: bytes, policies: PolicyGetter) -> Flask:
    app = Flask("replayops-forwarder")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    registry = CollectorRegistry()
    received = Counter("replayops_forwarder_records", "Records by outcome", ["outcome"], registry=registry)
    redactions = Counter("replayops_forwarder_redactions", "Values redacted", ["kind"], registry=registry)

    def reply(code: int, **body: Any) -> Response:
        return Response(json.dumps(body), status=code, mimetype="application/json")

    last_expiry: dict[str, float] = {}

    def _retain(stream: str, retention: Mapping[str, Any]) -> None:
        """Apply the policy's retention to the stream, at most once a minute."""
        if not retention or time.monotonic() - last_expiry.get(stream, -RETENTION_EVERY) < RETENTION_EVERY:
            return
        last_expiry[stream] = time.monotonic()
        max_mb = retention.get("maxSizeMB")
        removed = store.expire(stream=stream, max_age_s=parse_duration(retention.get("maxAge")),
                               max_bytes=int(max_mb) * 1024 * 1024 if max_mb else None)
        if removed:
            log.info("retention expired segments", extra=logs.fields(stream=stream, count=len(removed)))

    @app.post("/v1/batches")
    def batches() -> Response:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return reply(401, error="missing or wrong bearer token")
        raw = request.get_data(cache=False)
        try:
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                raw = _inflate(raw)
            batch = json.loads(raw)
            if not isinstance(batch, dict) or not isinstance(batch.get("records"), list):
                raise ValueError("expected an object with a records list")
            stream, policy_ref = str(batch.get("stream") or "default"), str(batch.get("policy") or "")
        except (ValueError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
            return reply(400, error=f"not a batch: {exc}")
        try:
            policy = policies(policy_ref)
        except PoliciesUnavailable as exc:  # never store what the policy was not applied to
            received.labels("refused_policies_unavailable").inc(len(batch["records"]))
            log.error("batch refused: policies unavailable", extra=logs.fields(policy=policy_ref, error=str(exc)))
            return reply(503, error=f"CapturePolicies cannot be read ({exc}); nothing stored")
        if policy is None and not policy_ref:
            policy = {}  # a batch naming no policy: the built-in DLP only
        if policy is None:
            received.labels("refused_unknown_policy").inc(len(batch["records"]))
            return reply(422, error=f"unknown CapturePolicy {policy_ref!r}; nothing stored")
        spec = policy.get("spec") or {}
        keep = Filter.from_policy(spec)
        redactor = dlp.Redactor(dlp.Rules.from_policy(spec.get("dlp")), key, limit=max_body(spec))
        good, rejected, filtered = [], [], 0
        for i, item in enumerate(batch["records"]):
            try:
                record = rrpair.migrate(item)
            except rrpair.RecordError as exc:
                rejected.append(f"records[{i}]: {exc}")
                continue
            if not keep.keep(record):
                filtered += 1
                continue
            good.append(redactor.record(record))
        store.append(stream, good)
        _retain(stream, spec.get("retention") or {})
        received.labels("stored").inc(len(good))
        received.labels("filtered").inc(filtered)
        received.labels("rejected").inc(len(rejected))
        for kind, n in redactor.counts.items():
            redactions.labels(kind).inc(n)
        if rejected:
            log.warning("records rejected", extra=logs.fields(stream=stream, count=len(rejected), first=rejected[:3]))
        # what the sidecar applies early, so the pairs the policy drops cost it no recording (read at run
        # time: changing them rolls no pod); this forwarder still applies them to what arrives
        early = {"filters": spec.get("filters") or {}, "sampling": float(spec.get("sampling", 1.0))}
        return reply(202, stored=len(good), filtered=filtered, rejected=rejected, policy=early)

    @app.errorhandler(413)
    def too_large(_: Exception) -> Response:
        return reply(400, error=f"body exceeds {MAX_BODY} bytes")

    @app.get("/healthz")
    def healthz() -> Response:  # liveness: the process serves
        return reply(200, status="ok")

    @app.get("/readyz")
    def readyz() -> Response:
        """Readiness: batches would be stored — the CapturePolicies can be read (until then every batch is
        refused, and a Service should send them to a replica that can)."""
        try:
            policies("replayops-system/readyz")
        except PoliciesUnavailable as exc:
            return reply(503, status="policies unavailable", error=str(exc))
        return reply(200, status="ready")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app
