"""Valid and invalid custom resources shared by the offline and the apiserver tests.

Each invalid case names the field path both validators must report.
"""

from __future__ import annotations

import copy
from typing import Any

API = "replayops.dev/v1alpha1"


def replay(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"snapshot": "checkout-2026-11-20", "target": {"url": "http://checkout:8080"}}
    base.update(spec)
    return {"apiVersion": API, "kind": "TrafficReplay", "metadata": {"name": "r1"}, "spec": base}


def policy(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"selector": {"matchLabels": {"app": "checkout"}}}
    base.update(spec)
    return {"apiVersion": API, "kind": "CapturePolicy", "metadata": {"name": "p1"}, "spec": base}


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    del out["spec"][key]
    return out


VALID: dict[str, dict[str, Any]] = {
    "replay-minimal-url": replay(),
    "replay-full": replay(
        target={"workloadRef": {"kind": "Deployment", "name": "checkout", "port": 8080}},
        mode="full",
        load={"copies": 4, "wait": {"mode": "fixedMs", "fixedMs": 50},
              "stages": [{"duration": "30s", "ramp": "linear", "targetRPS": 100}], "duration": "5m",
              "loop": True},
        transforms=[{"type": "timeShift"}, {"type": "header", "name": "X-Env", "value": "replay"},
                    {"type": "extractId", "name": "order", "path": "$.id", "from": "responseBody"},
                    {"type": "bearerRefresh", "secretRef": {"name": "tok", "key": "token"}},
                    {"type": "hostRewrite", "host": "checkout-canary"}],
        assertions={"status": True, "headers": ["content-type"],
                    "body": {"compare": "json", "ignorePaths": ["$.ts"], "numericTolerance": 0.01}},
        goals={"minSuccessRate": 0.99, "minRPS": 50, "maxLatencyMs": {"p99": 250},
               "endpoints": [{"method": "GET", "path": "/api/orders/*", "maxLatencyMs": {"p95": 100}}]},
        mocks={"match": {"ignoreHeaders": ["date"], "ignoreQueryKeys": ["ts"], "fuzzy": True},
               "onMiss": "passthrough", "timing": {"mode": "multiplier", "multiplier": 0.5}},
        cleanup="all", timeout="1h", ttlAfterFinished="24h", collectLogs=False, buildTag="v1.2.3",
    ),
    "replay-mocks-only": replay(mode="mocks-only"),
    "policy-minimal": policy(),
    "policy-full": policy(
        kinds=["Deployment"],
        inbound={"mode": "transparent", "ports": [8080], "proxyPort": 15001},
        outbound={"enabled": True, "tlsUnwrap": True, "excludeHosts": ["metadata.google.internal"]},
        filters={"include": [{"paths": ["/api/*"], "methods": ["GET", "POST"]}],
                 "exclude": [{"paths": ["/healthz"], "statuses": ["5xx", "404"]}]},
        sampling=0.25,
        dlp={"defaults": True, "redactKeys": {"headers": ["x-api-key"], "json": ["ssn"]},
             "patterns": [{"type": "creditCard"}, {"type": "custom", "name": "iban",
                                                    "regex": "[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}"}]},
        retention={"maxAge": "72h", "maxSizeMB": 512},
        sidecar={"workers": 4, "maxBodyBytes": 4 << 20, "bufferBytes": 64 << 20,
                 "resources": {"requests": {"cpu": "0.5", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}},
    ),
}

INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no snapshot": (_without(replay(), "snapshot"), "spec.snapshot"),
    "both workloadRef and url": (
        replay(target={"url": "http://a:1", "workloadRef": {"kind": "Deployment", "name": "a"}}),
        "spec.target"),
    "neither workloadRef nor url": (replay(target={}), "spec.target"),
    "bad mode enum": (replay(mode="everything"), "spec.mode"),
    "negative rate": (replay(load={"stages": [{"duration": "10s", "targetRPS": -5}]}),
                      "spec.load.stages[0].targetRPS"),
    "zero copies": (replay(load={"copies": 0}), "spec.load.copies"),
    "fixedMs without value": (replay(load={"wait": {"mode": "fixedMs"}}), "spec.load.wait"),
    "unknown field": (replay(colour="blue"), "spec.colour"),
    "sampling 1.5": (policy(sampling=1.5), "spec.sampling"),
    "seventeen workers": (policy(sidecar={"workers": 17}), "spec.sidecar.workers"),
    "a body limit past the forwarder's batch": (policy(sidecar={"maxBodyBytes": 32 << 20}),
                                                "spec.sidecar.maxBodyBytes"),
    "a buffer that cannot hold two bodies": (policy(sidecar={"maxBodyBytes": 12 << 20}), "spec.sidecar"),
    "memory not a quantity": (policy(sidecar={"resources": {"limits": {"memory": "lots"}}}),
                              "spec.sidecar.resources.limits.memory"),
    "custom pattern without regex": (policy(dlp={"patterns": [{"type": "custom"}]}),
                                     "spec.dlp.patterns[0]"),
    "empty selector": (policy(selector={}), "spec.selector"),
    "tlsUnwrap without outbound": (policy(outbound={"tlsUnwrap": True}), "spec.outbound"),
}
