"""Sidecar injection as pure functions, Istio's way: decide → render → merge → diff.

``decide`` says whether a pod gets the capture sidecar and why not; ``inject``
strips whatever an earlier injection added (listed in the status annotation),
renders the sidecar for the pod's CapturePolicy onto a copy, and ``patch``
diffs original against mutated into an RFC 6902 JSONPatch. Injecting an
injected pod therefore yields an empty patch.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller import __version__, tokens
from controller.api import CAPTURE, EXCLUDED_NAMESPACES, INIT, INJECTED, OPT_OUT, PROXY, STATUS, SYSTEM_NAMESPACE

CA_VOLUME = "replayops-ca"
CA_DIR = "/etc/replayops/ca"
RUN_VOLUME = "replayops-run"  # the sidecar's writable state: its root filesystem is read-only
RUN_DIR = "/var/run/replayops"
TOKEN_VOLUME = "replayops-token"  # the sidecar's ServiceAccount token for the forwarder (renewed by the kubelet)
TOKEN_DIR = "/var/run/secrets/replayops.dev/forwarder"
HEALTH_PORT = 15020
PROXY_UID = 1337


@dataclass(frozen=True)
class InjectConfig:
    """Cluster-wide injection settings (from the webhook's flags)."""

    image: str = f"ghcr.io/replayops/replayops:{__version__}"
    version: str = __version__
    forwarder_url: str = f"http://replayops-forwarder.{SYSTEM_NAMESPACE}.svc:8090"
    excluded_namespaces: frozenset[str] = EXCLUDED_NAMESPACES
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class Decision:
    """Whether to inject, with the reason a skipped pod can be told."""

    inject: bool
    reason: str
    policy: str = ""


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return pod.get("metadata", {}).get("annotations") or {}


def decide(pod: Mapping[str, Any], namespace: str, config: InjectConfig) -> Decision:
    """Whether ``pod`` (being created in ``namespace``) gets the sidecar."""
    notes = _annotations(pod)
    labels = pod.get("metadata", {}).get("labels") or {}
    if namespace in config.excluded_namespaces:
        return Decision(False, f"namespace {namespace} is never injected")
    if str(notes.get(OPT_OUT, labels.get(OPT_OUT, ""))).lower() == "false":
        return Decision(False, f"opted out by {OPT_OUT}=false")
    policy = notes.get(CAPTURE)
    if not policy:
        return Decision(False, f"no {CAPTURE} annotation")
    if pod.get("spec", {}).get("hostNetwork"):
        return Decision(False, "hostNetwork pods are not injected: the proxy's ports and iptables "
                               "rules would act on the node")
    return Decision(True, f"captured by CapturePolicy {namespace}/{policy}", policy)


def _app_ports(pod: Mapping[str, Any], spec: Mapping[str, Any]) -> list[int]:
    wanted = list(spec.get("inbound", {}).get("ports") or [])
    if wanted:
        return wanted
    ports = []
    for container in pod.get("spec", {}).get("containers", []):
        if container.get("name") == PROXY:
            continue
        for port in container.get("ports") or []:
            if port.get("protocol", "TCP") == "TCP" and port["containerPort"] not in ports:
                ports.append(int(port["containerPort"]))
    return ports


def _reverse_ports(spec: Mapping[str, Any], count: int) -> list[int]:
    """Listen ports of the reverse proxies: from inbound.proxyPort up, skipping the outbound and health ports."""
    reserved = {HEALTH_PORT, int(spec.get("outbound", {}).get("proxyPort", 15002))}
    port = int(spec.get("inbound", {}).get("proxyPort", 15001))
    out: list[int] = []
    while len(out) < count:
        if port not in reserved:
            out.append(port)
        port += 1
    return out


def _reverse_pairs(spec: Mapping[str, Any], ports: list[int]) -> list[tuple[int, int]]:
    """(proxy port, app port) for each app port a reverse-mode sidecar fronts."""
    return list(zip(_reverse_ports(spec, len(ports)), ports, strict=True))


def reverse_pairs(pod: Mapping[str, Any], spec: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Where a reverse-mode sidecar for ``spec`` (a defaulted CapturePolicy spec) listens in ``pod``:
    (proxy port, app port) pairs."""
    return _reverse_pairs(spec, _app_ports(pod, spec))


def _unwraps_tls(spec: Mapping[str, Any]) -> bool:
    """Whether the policy captures outbound traffic with TLS unwrapping (the pod then gets our CA)."""
    outbound = spec.get("outbound", {})
    return bool(outbound.get("enabled") and outbound.get("tlsUnwrap"))


def _times(quantity: str, n: int) -> str:
    """``quantity`` (one of our defaults: digits and a unit) times ``n``."""
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", quantity)
    if match is None:
        raise ValueError(f"default quantity {quantity!r} is not digits and a unit")
    return f"{int(match[1]) * n}{match[2]}"


def _workers(spec: Mapping[str, Any]) -> int:
    return int((spec.get("sidecar") or {}).get("workers", 1))


def _resources(spec: Mapping[str, Any], config: InjectConfig) -> dict[str, dict[str, str]]:
    """The sidecar's requests and limits: the policy's, else the defaults scaled by its workers."""
    workers = _workers(spec)
    given = (spec.get("sidecar") or {}).get("resources") or {}
    default = {"requests": {"cpu": _times(config.cpu_request, workers),
                            "memory": _times(config.memory_request, workers)},
               "limits": {"memory": _times(config.memory_limit, workers)}}
    return {kind: {**default[kind], **(given.get(kind) or {})} for kind in ("requests", "limits")}


def _proxy_args(policy_ref: str, spec: Mapping[str, Any], ports: list[int], config: InjectConfig) -> list[str]:
    inbound = spec.get("inbound", {})
    outbound = spec.get("outbound", {})
    mode = inbound.get("mode", "reverse")
    listen = int(inbound.get("proxyPort", 15001))
    args = ["proxy", "--policy", policy_ref, "--forwarder", config.forwarder_url,
            "--token-file", f"{TOKEN_DIR}/token", "--health-port", str(HEALTH_PORT)]
    if mode == "transparent":
        args += ["--transparent", str(listen)]
    else:
        args += [a for lp, p in _reverse_pairs(spec, ports) for a in ("--reverse", f"{lp}:{p}")]
    if outbound.get("enabled"):
        args += ["--outbound", str(outbound.get("proxyPort", 15002))]
    args += ["--ca-dir", f"{RUN_DIR}/mitmproxy"]  # the CA's private key: on the sidecar's own volume
    if _unwraps_tls(spec):  # the app's containers mount only the certificates
        args += ["--tls-unwrap", "--trust-dir", CA_DIR]
    if _workers(spec) > 1:
        args += ["--workers", str(_workers(spec))]
    sizes = spec.get("sidecar") or {}
    args += [a for field, flag in (("maxBodyBytes", "--max-body"), ("bufferBytes", "--buffer-bytes"))
             if field in sizes for a in (flag, str(sizes[field]))]
    return args


def _holds_app(spec: Mapping[str, Any]) -> bool:
    """Whether the app must start after the proxy: its outbound calls go through it (HTTP_PROXY, and the CA
    it trusts is written by the proxy when TLS is unwrapped). Inbound alone needs no wait — the pod is not
    Ready, so it gets no traffic, until the proxy is (as Istio's holdApplicationUntilProxyStarts: false) —
    and the proxy's start then overlaps the app's instead of preceding it."""
    return bool(spec.get("outbound", {}).get("enabled")) or _unwraps_tls(spec)


def _sidecar(policy_ref: str, spec: Mapping[str, Any], ports: list[int], config: InjectConfig) -> dict[str, Any]:
    inbound = spec.get("inbound", {})
    container_ports = [{"name": "rops-health", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
    if inbound.get("mode", "reverse") == "reverse":
        container_ports += [{"name": f"rops-in-{i}", "containerPort": lp, "protocol": "TCP"}
                            for i, lp in enumerate(_reverse_ports(spec, len(ports)))]

    def probe(**overrides: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/healthz", "port": HEALTH_PORT}, "periodSeconds": 10, "timeoutSeconds": 2,
                **overrides}

    sidecar: dict[str, Any] = {
        "name": PROXY,
        "image": config.image,
        "restartPolicy": "Always",
        "args": _proxy_args(policy_ref, spec, ports, config),
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TMPDIR", "value": RUN_DIR},
        ],
        "ports": container_ports,
        "resources": _resources(spec, config),
        # the pod is Ready once the proxy is: its readiness is probed every second until then, and a
        # probe that comes while the proxy loads waits (the health port listens first) up to 5 s
        "readinessProbe": probe(periodSeconds=1, timeoutSeconds=5, failureThreshold=3),
        "livenessProbe": probe(failureThreshold=3),
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if _holds_app(spec):  # a startup probe holds the app's containers until the proxy listens
        sidecar["startupProbe"] = probe(periodSeconds=1, timeoutSeconds=5, failureThreshold=30)
    sidecar["volumeMounts"] = [{"name": RUN_VOLUME, "mountPath": RUN_DIR},
                               {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]
    if _unwraps_tls(spec):
        sidecar["volumeMounts"].append({"name": CA_VOLUME, "mountPath": CA_DIR})
    return sidecar


def _init_container(spec: Mapping[str, Any], ports: list[int], config: InjectConfig) -> dict[str, Any]:
    listen = str(spec.get("inbound", {}).get("proxyPort", 15001))
    return {
        "name": INIT,
        "image": config.image,
        "args": ["iptables", "--proxy-port", listen, "--ports", ",".join(map(str, ports))],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
    }


def _app_env(spec: Mapping[str, Any]) -> list[dict[str, str]]:
    outbound = spec.get("outbound", {})
    if not outbound.get("enabled"):
        return []
    proxy = f"http://127.0.0.1:{outbound.get('proxyPort', 15002)}"
    no_proxy = ",".join(["127.0.0.1", "localhost", "::1", "kubernetes.default.svc", "kubernetes.default",
                         *outbound.get("excludeHosts", [])])
    env = [{"name": n, "value": proxy} for n in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")]
    env += [{"name": n, "value": no_proxy} for n in ("NO_PROXY", "no_proxy")]
    if outbound.get("tlsUnwrap"):
        bundle = f"{CA_DIR}/ca-bundle.pem"
        env += [{"name": "SSL_CERT_FILE", "value": bundle}, {"name": "REQUESTS_CA_BUNDLE", "value": bundle},
                {"name": "NODE_EXTRA_CA_CERTS", "value": f"{CA_DIR}/ca.pem"},
                {"name": "JAVA_TOOL_OPTIONS", "value": f"-Djavax.net.ssl.trustStore={CA_DIR}/truststore.jks "
                 "-Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=JKS"}]
    return env


@dataclass
class Injected:
    """What one injection added (kept in the status annotation, so it can be stripped)."""

    init_containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    env: dict[str, list[str]] = field(default_factory=dict)
    mounts: dict[str, list[str]] = field(default_factory=dict)
    service_account: bool = False  # the pod named no ServiceAccount: it was given ``default``

    def to_json(self) -> str:
        raw: dict[str, Any] = {"initContainers": self.init_containers, "volumes": self.volumes, "env": self.env,
                               "mounts": self.mounts}
        if self.service_account:
            raw["serviceAccount"] = True
        return json.dumps(raw, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Injected:
        try:
            raw = json.loads(text or "{}")
            return cls(list(raw.get("initContainers", [])), list(raw.get("volumes", [])),
                       dict(raw.get("env", {})), dict(raw.get("mounts", {})), raw.get("serviceAccount") is True)
        except (ValueError, AttributeError, TypeError):
            return cls([PROXY, INIT], [RUN_VOLUME, CA_VOLUME, TOKEN_VOLUME])


def strip(pod: dict[str, Any]) -> dict[str, Any]:
    """Remove in place what an earlier injection added (per its status annotation)."""
    meta = pod.setdefault("metadata", {})
    notes = meta.get("annotations") or {}
    if STATUS not in notes and INJECTED not in notes:
        return pod
    done = Injected.from_json(notes.get(STATUS))
    spec = pod.setdefault("spec", {})
    for key, names in (("initContainers", done.init_containers), ("volumes", done.volumes)):
        if key in spec:
            spec[key] = [x for x in spec[key] if x.get("name") not in names]
            if not spec[key]:
                del spec[key]
    for container in spec.get("containers", []):
        name = container.get("name", "")
        for key, field_, names in (("env", "name", done.env.get(name, [])),
                                   ("volumeMounts", "mountPath", done.mounts.get(name, []))):
            if key in container:
                container[key] = [x for x in container[key] if x.get(field_) not in names]
                if not container[key]:
                    del container[key]
    if done.service_account:
        spec.pop("serviceAccountName", None)
    for key in (STATUS, INJECTED):
        notes.pop(key, None)
    return pod


def inject(pod: Mapping[str, Any], namespace: str, policy_spec: Mapping[str, Any],
           config: InjectConfig) -> dict[str, Any]:
    """A copy of ``pod`` with the capture sidecar for ``policy_spec`` (a defaulted CapturePolicy spec)."""
    out = strip(copy.deepcopy(dict(pod)))
    policy = _annotations(out)[CAPTURE]
    spec = out["spec"]
    ports = _app_ports(out, policy_spec)
    done = Injected()
    ours = []
    if policy_spec.get("inbound", {}).get("mode") == "transparent":
        ours.append(_init_container(policy_spec, ports, config))
    ours.append(_sidecar(f"{namespace}/{policy}", policy_spec, ports, config))
    spec["initContainers"] = ours + list(spec.get("initContainers") or [])
    done.init_containers = [c["name"] for c in ours]
    env = _app_env(policy_spec)
    tls = _unwraps_tls(policy_spec)
    volumes: list[dict[str, Any]] = [
        {"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        # who the sidecar is, for the forwarder (TokenReview names this pod): bound to the pod, an hour at most
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": tokens.FORWARDER_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}]
    if tls:
        volumes.append({"name": CA_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    spec["volumes"] = list(spec.get("volumes") or []) + volumes
    if not spec.get("serviceAccountName"):  # the token needs one: what the ServiceAccount admission plugin gives
        spec["serviceAccountName"] = "default"
        done.service_account = True
    done.volumes = [v["name"] for v in volumes]
    for container in spec.get("containers", []):
        name = container["name"]
        existing = {e["name"] for e in container.get("env") or []}
        added = [e for e in env if e["name"] not in existing]
        if added:
            container["env"] = list(container.get("env") or []) + added
            done.env[name] = [e["name"] for e in added]
        if tls:
            container["volumeMounts"] = list(container.get("volumeMounts") or []) + [
                {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True}]
            done.mounts[name] = [CA_DIR]
    notes = out["metadata"].setdefault("annotations", {})
    notes[INJECTED] = config.version
    notes[STATUS] = done.to_json()
    return out


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def patch(original: Mapping[str, Any], mutated: Mapping[str, Any], path: str = "") -> list[dict[str, Any]]:
    """The RFC 6902 operations turning ``original`` into ``mutated``: objects are diffed key by key,
    anything else (lists included) is replaced whole, so every op applies to the object as we saw it."""
    ops: list[dict[str, Any]] = []
    for key in original:
        if key not in mutated:
            ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
    for key, value in mutated.items():
        where = f"{path}/{_escape(key)}"
        if key not in original:
            ops.append({"op": "add", "path": where, "value": value})
        elif original[key] != value:
            if isinstance(value, dict) and isinstance(original[key], dict):
                ops.extend(patch(original[key], value, where))
            else:
                ops.append({"op": "replace", "path": where, "value": value})
    return ops
