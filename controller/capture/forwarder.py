"""The forwarder: receives RRPair batches from sidecars, applies the CapturePolicy, writes the store.

``POST /v1/batches`` carries ``{"policy", "stream", "records"}``, and from
sidecars its ``id`` and ``created`` (when the sidecar made it); gzip bodies are
capped before and after decompression. Its bearer token decides where it may
write (``controller.tokens``): a sidecar's ServiceAccount token, checked with
TokenReview, names its pod, and the pod's CapturePolicy annotation then decides
the policy and the stream (``<namespace>.<policy>.<pod>``) — what the batch
claims is not read; a namespace's token writes only under that namespace's
policies and streams; the master token anywhere. Each record is migrated and
checked (bad ones are counted and reported, the rest kept), filtered and
sampled, redacted, then appended to the stream as one batch, on disk before the
202: a batch is acknowledged only once durable, and a retried one (its answer
lost) is stored once, whichever replica gets it. Retention and the store's
housekeeping run in the background, off the request path.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from controller import logs, tokens
from controller.api import CAPTURE
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
PodGetter = Callable[[str, str, str], Mapping[str, Any] | None]  # (namespace, name, uid) -> the pod or None


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


class Forbidden(Exception):
    """A token that is someone's, but not one that may write batches."""


@dataclass(frozen=True)
class Writer:
    """Who may write a batch and where: its namespace (``tokens.ANY`` for the master token); for a sidecar
    known by its pod, the policy and the stream too."""

    namespace: str
    policy: str = ""
    stream: str = ""


def identify(master: str, token: str, reviewer: tokens.Reviewer | None, pods: PodGetter | None) -> Writer:
    """The writer ``token`` is: the master's or a namespace's token, else (with a ``reviewer``) a sidecar's
    ServiceAccount token bound to its pod, whose ``replayops.dev/capture`` annotation names its policy.
    ``TokenError``: nobody's token (401); ``Forbidden``: a token that may not write (403)."""
    try:
        return Writer(tokens.namespace_of(master, token))
    except tokens.TokenError:
        if reviewer is None or pods is None:
            raise
    who = reviewer.identify(token)
    if not who.namespace or not who.pod:
        raise Forbidden(f"{who.user or 'this token'} is not a pod's ServiceAccount token (the sidecar sends its "
                        f"projected token, audience {tokens.FORWARDER_AUDIENCE})")
    pod = pods(who.namespace, who.pod, who.pod_uid)
    meta = (pod or {}).get("metadata") or {}
    if pod is None or meta.get("uid") != who.pod_uid:
        raise Forbidden(f"pod {who.namespace}/{who.pod} of this token no longer exists")
    policy = (meta.get("annotations") or {}).get(CAPTURE)
    if not policy:
        raise Forbidden(f"pod {who.namespace}/{who.pod} is not captured: it has no {CAPTURE} annotation")
    return Writer(who.namespace, f"{who.namespace}/{policy}", f"{who.namespace}.{policy}.{who.pod}")


def _of_namespace(namespace: str, policy_ref: str, stream: str) -> bool:
    """Whether a batch naming ``policy_ref`` and ``stream`` stays in ``namespace``: the policy is one of its
    own, and the stream that policy's (``<namespace>.<policy>.<pod>``, as the sidecar names it)."""
    policy_ns, _, name = policy_ref.partition("/")
    return policy_ns == namespace and bool(name) and stream.startswith(f"{namespace}.{name}.")


def _early(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the sidecar applies early, so the pairs the policy drops cost it no recording (read at run time:
    changing them rolls no pod); the forwarder still applies them to what arrives."""
    return {"filters": spec.get("filters") or {}, "sampling": float(spec.get("sampling", 1.0))}


def create_app(store: Store, token: str, key: bytes, policies: PolicyGetter, *,
               reviewer: tokens.Reviewer | None = None, pods: PodGetter | None = None) -> Flask:
    """The forwarder's app; with ``reviewer`` and ``pods`` (in a cluster) sidecars are known by their pod."""
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
        """Apply each stream's retention and tidy the store once a minute, in the background (never on a
        batch's time)."""
        while True:
            changed.clear()
            try:
                tidied = store.tidy()
            except Exception as exc:  # never the end of housekeeping: tried again in a minute
                log.warning("store housekeeping failed", extra=logs.fields(error=f"{type(exc).__name__}: {exc}"))
            else:
                if tidied:
                    log.info("store tidied", extra=logs.fields(count=len(tidied), first=tidied[:3]))
            for stream, spec in list(retention.items()):
                max_mb = spec.get("maxSizeMB")
                try:
                    removed = store.expire(stream=stream, max_age_s=parse_duration(spec.get("maxAge")),
                                           max_bytes=int(max_mb) * 1024 * 1024 if max_mb else None)
                except Exception as exc:  # noqa: BLE001 - never the end of retention: tried again in a minute
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
            writer = identify(token, given.strip(), reviewer, pods)
        except tokens.TokenError as exc:
            return reply(401, error=str(exc))
        except Forbidden as exc:
            received.labels("refused_forbidden").inc()
            return reply(403, error=f"{exc}; nothing stored")
        except Exception as exc:  # the apiserver cannot say who it is: the sidecar retries later
            log.error("batch refused: token not checked", extra=logs.fields(error=str(exc)))
            return reply(503, error=f"the token cannot be checked now ({type(exc).__name__}); nothing stored")
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
        if writer.policy:  # a sidecar known by its pod: its pod decides, whatever the batch claims
            policy_ref, stream = writer.policy, writer.stream
        elif writer.namespace != tokens.ANY and not _of_namespace(writer.namespace, policy_ref, stream):
            received.labels("refused_other_namespace").inc(len(batch["records"]))
            return reply(403, error=f"a token of namespace {writer.namespace} writes only under its own policies "
                                    f"and streams ({writer.namespace}/<policy>, {writer.namespace}.<policy>.<pod>), "
                                    f"not policy {policy_ref!r} and stream {stream!r}; nothing stored")
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
        """Readiness: batches would be stored — the CapturePolicies can be read and, in a cluster, sidecars'
        tokens reviewed (until then every batch is refused, and a Service should send them to a replica that
        can). The review of a token nobody has is remembered seconds: probes cost the apiserver little."""
        try:
            policies("replayops-system/readyz")
        except PoliciesUnavailable as exc:
            return reply(503, status="policies unavailable", error=str(exc))
        if reviewer is not None:
            try:
                reviewer.identify("replayops-forwarder-readiness")
            except tokens.TokenError:
                pass  # the apiserver reviewed it (and refused it, as it should): reviews work
            except Exception as exc:  # no permission to create TokenReviews, or no apiserver
                return reply(503, status="token reviews unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        return reply(200, status="ready")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app
