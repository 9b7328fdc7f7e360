"""The admission webhook as a Flask application factory.

Routes: ``/mutate/pods`` (sidecar injection), ``/mutate/trafficreplays`` and
``/mutate/capturepolicies`` (defaulting), ``/validate/trafficreplays``, ``/validate/snapshots`` and
``/validate/capturepolicies`` (schema + cross-object rules), ``/healthz``,
``/readyz``, ``/metrics``. A body that is not an AdmissionReview gets a 400
with the reason; a review always gets an answer echoing its ``uid`` — a
failure inside a handler fails open for pods and closed for our resources,
never as a 500.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from controller import api, logs, schema
from controller.admission import admissible, defaults, inject, review, rules
from controller.api import INIT, STATUS
from controller.kube import KubeError

log = logs.get("webhook")

PolicyGetter = Callable[[str, str], Mapping[str, Any] | None]
Notify = Callable[[Mapping[str, Any], str, str, str], None]  # (pod, namespace, reason, message)


@dataclass
class Deps:
    """What the handlers need from the world."""

    lookup: rules.Lookup
    policies: PolicyGetter
    limits: rules.Limits = field(default_factory=rules.Limits)
    inject_config: inject.InjectConfig = field(default_factory=inject.InjectConfig)
    ready: Callable[[], bool] = lambda: True
    quotas: Callable[[str], list[Mapping[str, Any]]] = lambda _: []  # a namespace's ResourceQuotas
    limit_ranges: Callable[[str], list[Mapping[str, Any]]] = lambda _: []  # a namespace's LimitRanges
    notify: Notify = lambda *_: None
    pod_security_default: str = "privileged"  # the level of namespaces without an enforce label


@dataclass(frozen=True)
class Route:
    group: str
    kind: str
    fail_open: bool
    handler: Callable[[review.Request, Deps], dict[str, Any]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("replayops_webhook_requests", "Admission reviews answered",
                                ["endpoint", "allowed"], registry=self.registry)
        self.latency = Histogram("replayops_webhook_latency_seconds", "Time to answer a review",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
        self.denials = Counter("replayops_webhook_denials", "Reviews denied", ["endpoint"],
                               registry=self.registry)
        self.patch_bytes = Histogram("replayops_webhook_patch_bytes", "Size of JSONPatches returned",
                                     registry=self.registry, buckets=(0, 256, 1024, 4096, 16384, 65536))
        self.errors = Counter("replayops_webhook_errors", "Bad requests and handler failures",
                              ["endpoint", "kind"], registry=self.registry)


def _pod_shape_problem(pod: Mapping[str, Any]) -> str | None:
    """What makes ``pod`` unlike anything the apiserver sends (checked before we render onto it)."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return "spec is not an object"
    for key in ("containers", "initContainers", "volumes"):
        items = spec.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                  for i in items):
            return f"spec.{key} is not a list of named objects"
    for i, container in enumerate(spec.get("containers", [])):
        for key in ("env", "ports", "volumeMounts"):
            items = container.get(key, [])
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                return f"spec.containers[{i}].{key} is not a list of objects"
        if not all(isinstance(p.get("containerPort"), int) for p in container.get("ports", [])):
            return f"spec.containers[{i}].ports has a port without an integer containerPort"
    return None


def _mutate_pod(req: review.Request, deps: Deps) -> dict[str, Any]:
    pod = req.object or {}
    if req.operation != "CREATE":
        return review.response(req.uid)
    problem = _pod_shape_problem(pod)
    if problem:
        return review.response(req.uid, warnings=[f"replayops: not injected: malformed pod: {problem}"])
    decision = inject.decide(pod, req.namespace, deps.inject_config)
    if not decision.inject:
        warn = [f"replayops: not injected: {decision.reason}"] if "hostNetwork" in decision.reason else None
        return review.response(req.uid, warnings=warn)
    policy = deps.policies(req.namespace, decision.policy)
    if policy is None:
        return review.response(req.uid, warnings=[
            f"replayops: not injected: CapturePolicy {req.namespace}/{decision.policy} not found"])
    notify = deps.notify if not req.dry_run else lambda *_: None
    level = _level(req.namespace, deps)
    policy, degraded = _admissible_policy(policy, level)
    unnamed = {**pod, "metadata": {k: v for k, v in (pod.get("metadata") or {}).items() if k != "name"}}
    policy_json = json.dumps(policy)
    limit_ranges = deps.limit_ranges(req.namespace)
    rendered = _within_limit_ranges(limit_ranges, unnamed, _render(req.namespace, json.dumps(unnamed), policy_json,
                                                                   deps.inject_config))
    before, after = pod["spec"], rendered.pod["spec"]
    refused = (admissible.limit_range_problem(limit_ranges, before, after, rendered.added)
               or admissible.quota_overrun(deps.quotas(req.namespace), before, after, rendered.added))
    if refused:
        message = f"not injected: {refused}"
        notify(pod, req.namespace, api.CAPTURE_SKIPPED, message)
        return review.response(req.uid, warnings=[f"replayops: {message}"])
    if not degraded:
        return review.response(req.uid, patch=rendered.patch)
    message = _degraded_message(level, inject.reverse_pairs(pod, _policy_spec(policy_json)))
    notify(pod, req.namespace, api.CAPTURE_DEGRADED, message)
    return review.response(req.uid, patch=rendered.patch, warnings=[f"replayops: {message}"])


def _within_limit_ranges(limit_ranges: list[Mapping[str, Any]], pod: Mapping[str, Any],
                         rendered: Rendered) -> Rendered:
    """``rendered`` with the namespace's LimitRange defaults given to our containers where they leave a
    resource unset — LimitRanger gives them to the app's containers before the webhook runs, and does not
    run again for ours — so a quota on limits.cpu, say, counts the sidecar as it counts the app."""
    spec = admissible.with_limit_defaults(limit_ranges, rendered.pod["spec"], rendered.added)
    if spec == rendered.pod["spec"]:
        return rendered
    mutated = {**rendered.pod, "spec": spec}
    return Rendered(review.encode_patch(inject.patch(pod, mutated)), mutated, rendered.added)


def _level(namespace: str, deps: Deps) -> str:
    """The Pod Security level ``namespace`` enforces (the default when it is unlabelled; ``unknown``, which
    forbids what restricted does, when its labels cannot be read)."""
    try:
        labels = deps.lookup.namespace_labels(namespace)
    except KubeError as err:
        log.warning("namespace labels not read", extra=logs.fields(namespace=namespace, error=str(err)))
        return admissible.UNKNOWN
    return admissible.pod_security_level(labels, deps.pod_security_default)


def _admissible_policy(policy: Mapping[str, Any], level: str) -> tuple[Mapping[str, Any], bool]:
    """``policy`` as a pod at Pod Security ``level`` can be injected with it, and whether it was changed: a
    transparent policy falls back to reverse mode where the init container's NET_ADMIN is forbidden."""
    inbound = (policy.get("spec") or {}).get("inbound") or {}
    if inbound.get("mode") != "transparent" or level not in admissible.FORBID_NET_ADMIN:
        return policy, False
    return {**policy, "spec": {**policy["spec"], "inbound": {**inbound, "mode": "reverse"}}}, True


def _degraded_message(level: str, pairs: list[tuple[int, int]]) -> str:
    """What a pod captured in reverse mode instead of transparent loses, with the ports to send to."""
    why = (f"the namespace's Pod Security level could not be read, so the {INIT} init container's NET_ADMIN "
           f"is not asked for" if level == admissible.UNKNOWN
           else f"Pod Security level {level} forbids the {INIT} init container's NET_ADMIN")
    ports = ", ".join(f"{proxy} (for {app})" for proxy, app in pairs) or "none (the pod declares no ports)"
    return (f"captured in reverse mode, not transparent: {why}; inbound traffic is recorded only when sent to "
            f"ports {ports} (point the Service's targetPort at them), outbound as configured")


@dataclass(frozen=True)
class Rendered:
    """An injection: the encoded patch, the injected pod (read-only: it is shared) and the containers added."""

    patch: str | None
    pod: Mapping[str, Any]
    added: tuple[str, ...]


@functools.lru_cache(maxsize=1024)
def _render(namespace: str, pod_json: str, policy_json: str, config: inject.InjectConfig) -> Rendered:
    """The injection of a pod (given as JSON without its name, which no patch touches) under a CapturePolicy.
    Keyed by that JSON: a ReplicaSet's pods reach admission identical (their names are generated after it),
    so a rollout of any size renders its sidecar once."""
    pod = json.loads(pod_json)
    mutated = inject.inject(pod, namespace, _policy_spec(policy_json), config)
    added = tuple(inject.Injected.from_json(mutated["metadata"]["annotations"][STATUS]).init_containers)
    return Rendered(review.encode_patch(inject.patch(pod, mutated)), mutated, added)


@functools.lru_cache(maxsize=256)
def _policy_spec(policy_json: str) -> Mapping[str, Any]:
    """The defaulted spec of a CapturePolicy given as JSON (read-only: it is shared)."""
    return defaults.default_policy(json.loads(policy_json)).get("spec", {})  # type: ignore[no-any-return]


def _mutator(default: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def handle(req: review.Request, deps: Deps) -> dict[str, Any]:
        if req.operation not in ("CREATE", "UPDATE") or req.object is None:
            return review.response(req.uid)
        if schema.validate(req.object):  # defaults only for well-formed objects; validation says why not
            return review.response(req.uid)
        return review.response(req.uid, patch=review.encode_patch(inject.patch(req.object, default(req.object))))
    return handle


def _validator(check: rules.Check) -> Callable[..., dict[str, Any]]:
    def handle(req: review.Request, deps: Deps) -> dict[str, Any]:
        if req.operation not in ("CREATE", "UPDATE") or req.object is None:
            return review.response(req.uid)
        obj = dict(req.object)
        obj["metadata"] = {**(obj.get("metadata") or {}), "namespace": req.namespace}
        problems = [str(e) for e in schema.validate(obj)]
        old = req.old_object if req.operation == "UPDATE" else None
        findings = check(obj, deps.lookup, deps.limits, old) if not problems else []
        problems += [str(f) for f in findings if not f.warning]
        warnings = [str(f) for f in findings if f.warning]
        if problems:
            kind = obj.get("kind", "object")
            name = (obj.get("metadata") or {}).get("name", "")
            return review.response(req.uid, allowed=False, code=422, warnings=warnings,
                                   message=f"{kind} {req.namespace}/{name} is invalid: " + "; ".join(problems))
        return review.response(req.uid, warnings=warnings)
    return handle


ROUTES: dict[str, Route] = {
    "/mutate/pods": Route("", "Pod", True, _mutate_pod),
    "/mutate/trafficreplays": Route(api.GROUP, "TrafficReplay", False, _mutator(defaults.default_replay)),
    "/mutate/capturepolicies": Route(api.GROUP, "CapturePolicy", False, _mutator(defaults.default_policy)),
    "/validate/trafficreplays": Route(api.GROUP, "TrafficReplay", False, _validator(rules.check_replay)),
    "/validate/capturepolicies": Route(api.GROUP, "CapturePolicy", False, _validator(rules.check_policy)),
    "/validate/snapshots": Route(api.GROUP, "Snapshot", False, _validator(rules.check_snapshot)),
}


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def create_app(deps: Deps) -> Flask:
    """The webhook application for ``deps``."""
    app = Flask("replayops-webhook")
    app.config["MAX_CONTENT_LENGTH"] = review.MAX_BODY
    metrics = Metrics()
    app.extensions["replayops_metrics"] = metrics

    def admit(path: str) -> Response:
        route = ROUTES[path]
        started = time.perf_counter()
        try:
            body = request.get_data(cache=False)
            req = review.parse(body)
        except review.BadReview as exc:
            metrics.errors.labels(path, "bad-request").inc()
            log.info("bad admission request", extra=logs.fields(endpoint=path, reason=str(exc)))
            return _json({"error": str(exc)}, 400)
        if (req.group, req.kind) != (route.group, route.kind):
            answer = review.response(req.uid, allowed=False, code=400, message=(
                f"{path} admits {route.kind} in group {route.group or 'core'!r}, "
                f"got {req.kind} in group {req.group!r}"))
        else:
            try:
                answer = route.handler(req, deps)
            except Exception as exc:  # one bad review must never take the webhook down
                metrics.errors.labels(path, "handler").inc()
                log.exception("admission handler failed", extra=logs.fields(endpoint=path, uid=req.uid))
                answer = review.response(req.uid, allowed=route.fail_open, code=500,
                                         message=f"replayops webhook failed: {type(exc).__name__}: {exc}",
                                         warnings=[f"replayops: webhook error: {exc}"] if route.fail_open else None)
        resp = answer["response"]
        metrics.requests.labels(path, str(resp["allowed"]).lower()).inc()
        if not resp["allowed"]:
            metrics.denials.labels(path).inc()
        if "patch" in resp:
            metrics.patch_bytes.observe(len(resp["patch"]))
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        log.debug("admission", extra=logs.fields(endpoint=path, uid=req.uid, allowed=resp["allowed"]))
        return _json(answer)

    for path in ROUTES:
        app.add_url_rule(path, path, lambda path=path: admit(path), methods=["POST"])

    @app.errorhandler(413)
    def too_large(_: Exception) -> Response:
        metrics.errors.labels(request.path, "too-large").inc()
        return _json({"error": f"body exceeds the {review.MAX_BODY}-byte limit"}, 400)

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> Response:
        return _json({"error": f"{request.method} is not allowed; POST an AdmissionReview"}, 405)

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        ok = deps.ready()
        return _json({"status": "ok" if ok else "not ready"}, 200 if ok else 503)

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
