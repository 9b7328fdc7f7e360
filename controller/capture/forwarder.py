"""The forwarder: receives RRPair batches from sidecars, applies the CapturePolicy, writes the store.

``POST /v1/batches`` (bearer token: the master, or a namespace's, which writes only
under that namespace's policies and streams — ``controller.tokens``; gzip bodies are
capped before and after decompression) carries ``{"policy", "stream",
"records"}``, and from sidecars its ``id`` and ``created`` (when the sidecar made
it). Each record is migrated and checked (bad ones are counted and reported,
the rest kept), filtered and sampled, redacted, then appended to the stream in
the store as one atomic segment named by the batch id, on disk before the 202:
a batch is acknowledged only once durable, and a retried one (its answer lost)
is stored once, whichever replica gets it. Retention runs in the background,
off the request path.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from controller import logs, tokens
from controller.capture import codecs, dlp
from controller.capture.filters import Filter
from controller.durations import parse_duration
from controller.policy import max_body
from controller.store import DuplicateBatch, Store, rrpair

MAX_BODY = 16 * 1024 * 1024
RETENTION_EVERY = 60.0
MAX_INFLATED = 64 * 1024 * 1024
BATCH_ID = re.compile(r"[0-9a-f]{32}")
log = logs.get("forwarder")
PolicyGetter = Callable[[str], Mapping[str, Any] | None]  # None: no such policy; raises PoliciesUnavailable


class PoliciesUnavailable(Exception):
    """The policies cannot be read (no permission, no apiserver): nothing may be stored unfiltered."""


def _batch_id(batch: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """A sidecar's batch id (32 hex digits) and when it made the batch; (None, None) from older senders."""
    batch_id, created = batch.get("id"), batch.get("created")
    if batch_id is None:
        return None, None
    if not isinstance(batch_id, str) or not BATCH_ID.fullmatch(batch_id):
        raise ValueError(f"id must be 32 lowercase hex digits, got {str(batch_id)[:40]!r}")
    if isinstance(created, bool) or not isinstance(created, int | float) or not (
            math.isfinite(created) and 0 <= created < 2**34):
        raise ValueError(f"created must be the batch's time in epoch seconds, got {str(created)[:40]!r}")
    return batch_id, float(created)


def _of_namespace(namespace: str, policy_ref: str, stream: str) -> bool:
    """Whether a batch naming ``policy_ref`` and ``stream`` stays in ``namespace``: the policy is one of its
    own, and the stream that policy's (``<namespace>.<policy>.<pod>``, as the sidecar names it)."""
    policy_ns, _, name = policy_ref.partition("/")
    return policy_ns == namespace and bool(name) and stream.startswith(f"{namespace}.{name}.")


def _early(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the sidecar applies early, so the pairs the policy drops cost it no recording (read at run time:
    changing them rolls no pod); the forwarder still applies them to what arrives."""
    return {"filters": spec.get("filters") or {}, "sampling": float(spec.get("sampling", 1.0))}


def create_app(store: Store, token: str, key: bytes, policies: PolicyGetter) -> Flask:
    app = Flask("replayops-forwarder")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    registry = CollectorRegistry()
    received = Counter("replayops_forwarder_records", "Records by outcome", ["outcome"], registry=registry)
    redactions = Counter("replayops_forwarder_redactions", "Values redacted", ["kind"], registry=registry)

    def reply(code: int, **body: Any) -> Response:
        return Response(json.dumps(body), status=code, mimetype="application/json")

    retention: dict[str, Mapping[str, Any]] = {}  # stream -> the retention its policy last named
    changed = threading.Event()  # a stream's retention is new or changed: apply it now, not in a minute

    def _retain_all() -> None:
        """Apply each stream's retention once a minute, in the background (never on a batch's time)."""
        while True:
            changed.clear()
            for stream, spec in list(retention.items()):
                max_mb = spec.get("maxSizeMB")
                try:
                    removed = store.expire(stream=stream, max_age_s=parse_duration(spec.get("maxAge")),
                                           max_bytes=int(max_mb) * 1024 * 1024 if max_mb else None)
                except (OSError, ValueError) as exc:
                    log.warning("retention failed", extra=logs.fields(stream=stream, error=str(exc)))
                    continue
                if removed:
                    log.info("retention expired segments", extra=logs.fields(stream=stream, count=len(removed)))
            changed.wait(RETENTION_EVERY)

    threading.Thread(target=_retain_all, name="retention", daemon=True).start()

    def _retain(stream: str, spec: Mapping[str, Any]) -> None:
        if not spec:  # the policy no longer names one: its stream is kept
            retention.pop(stream, None)
        elif retention.get(stream) != spec:
            retention[stream] = spec
            changed.set()

    @app.post("/v1/batches")
    def batches() -> Response:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        try:
            if scheme != "Bearer":
                raise tokens.TokenError("missing or wrong bearer token")
            writes_for = tokens.namespace_of(token, given.strip())
        except tokens.TokenError as exc:
            return reply(401, error=str(exc))
        raw = request.get_data(cache=False)
        try:
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                raw = codecs.decompress(raw, "gzip", MAX_INFLATED)
            batch = json.loads(raw)
            if not isinstance(batch, dict) or not isinstance(batch.get("records"), list):
                raise ValueError("expected an object with a records list")
            stream, policy_ref = str(batch.get("stream") or "default"), str(batch.get("policy") or "")
            batch_id, created = _batch_id(batch)
        except (ValueError, *codecs.ERRORS) as exc:
            return reply(400, error=f"not a batch: {exc}")
        if writes_for != tokens.ANY and not _of_namespace(writes_for, policy_ref, stream):
            received.labels("refused_other_namespace").inc(len(batch["records"]))
            return reply(403, error=f"a token of namespace {writes_for} writes only under its own policies and "
                                    f"streams ({writes_for}/<policy>, {writes_for}.<policy>.<pod>), not policy "
                                    f"{policy_ref!r} and stream {stream!r}; nothing stored")
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
            try:
                good.append(redactor.record(record))
            except Exception as exc:  # a record DLP cannot read is refused, never stored unredacted; the
                log.exception("record not redacted", extra=logs.fields(stream=stream, record=i))  # others are
                rejected.append(f"records[{i}]: could not be redacted ({type(exc).__name__}: {exc})"[:300])
        try:
            store.append(stream, good, batch=batch_id, at=created)
        except DuplicateBatch:  # a retry of a batch stored before its answer was lost: stored once
            received.labels("duplicate").inc(len(good))
            return reply(202, stored=0, duplicate=True, filtered=filtered, rejected=rejected,
                         policy=_early(spec))
        _retain(stream, spec.get("retention") or {})
        received.labels("stored").inc(len(good))
        received.labels("filtered").inc(filtered)
        received.labels("rejected").inc(len(rejected))
        for kind, n in redactor.counts.items():
            redactions.labels(kind).inc(n)
        if rejected:
            log.warning("records rejected", extra=logs.fields(stream=stream, count=len(rejected), first=rejected[:3]))
        return reply(202, stored=len(good), filtered=filtered, rejected=rejected, policy=_early(spec))

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
