"""Make the apiserver call us: our webhook configurations with the CA bundle patched in.

The objects come from ``manifests/base/webhook-configurations.yaml`` (one
source). In a cluster they are installed with the manifests and the webhook
patches only their ``caBundle`` (``patch_ca_bundle``); for local development
``register`` applies them whole with ``clientConfig`` rewritten from the
in-cluster Service to ``<url><path>``, as envtest does.
"""

from __future__ import annotations

import base64
import copy
import time
from typing import Any

from ruamel.yaml import YAML

from controller import logs, paths
from controller.kube import Kube, KubeError

log = logs.get("webhook")

ADMISSION_API = "admissionregistration.k8s.io/v1"
MANAGER = "replayops-webhook"  # the field manager of caBundle


def configurations(ca_pem: bytes, url: str | None = None) -> list[dict[str, Any]]:
    """Our Mutating/ValidatingWebhookConfigurations with ``caBundle`` (and a URL when given)."""
    source = paths.source_dir("manifests") / "base" / "webhook-configurations.yaml"
    docs = [d for d in YAML(typ="safe").load_all(source.read_text()) if d]
    bundle = base64.b64encode(ca_pem).decode()
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        for hook in doc["webhooks"]:
            client = hook["clientConfig"]
            if url:
                client = {"url": url.rstrip("/") + client["service"]["path"]}
            client["caBundle"] = bundle
            hook["clientConfig"] = client
        out.append(doc)
    return out


def register(kube: Kube, ca_pem: bytes, url: str | None = None) -> list[str]:
    """Apply our webhook configurations; return their kinds and names."""
    applied = []
    for doc in configurations(ca_pem, url):
        kube.apply(doc)
        applied.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return applied


def patch_ca_bundle(kube: Kube, ca_pem: bytes) -> list[str]:
    """Set ``caBundle`` on every webhook of our installed configurations and change nothing else of them:
    an overlay's namespace, timeouts or selectors stay, and ``kubectl apply`` of the manifests never meets
    a field of ours. Return what was patched; one not installed (yet: applied after the webhook starts) is
    logged and patched by a later call."""
    bundle = base64.b64encode(ca_pem).decode()
    patched = []
    for doc in configurations(ca_pem):
        kind, name = doc["kind"], doc["metadata"]["name"]
        live = kube.get(ADMISSION_API, kind, name)
        if live is None:
            log.warning("webhook configuration not installed: its caBundle is set once it is (kubectl apply -k "
                        "manifests/base installs it)", extra=logs.fields(kind=kind, name=name))
            continue
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(live.get("webhooks") or []):
            if (hook.get("clientConfig") or {}).get("caBundle") != bundle:  # the name tested: no index race
                ops += [{"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]},
                        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}]
        if ops:
            path = kube.resource(ADMISSION_API, kind).path(name=name)
            kube.call("PATCH", path, body=ops, content_type="application/json-patch+json",
                      query=[("fieldManager", MANAGER)], what=f"patch caBundle of {kind} {name}")
            patched.append(f"{kind}/{name}")
    return patched


def unregister(kube: Kube) -> None:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        kube.delete(ADMISSION_API, kind, "replayops-webhook")


def wait_until_called(kube: Kube, timeout: float = 60.0) -> None:
    """New webhook configurations take effect after a delay: dry-run a probe until our rule answers."""
    probe = {"apiVersion": "replayops.dev/v1alpha1", "kind": "TrafficReplay",
             "metadata": {"name": "replayops-probe", "namespace": "default"},
             "spec": {"snapshot": "probe", "target": {"workloadRef": {"kind": "Deployment",
                                                                      "name": "replayops-no-such-workload"}}}}
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            kube.apply(probe, dry_run=True)
            last = "the probe was admitted"
        except KubeError as err:
            if "target-exists" in str(err):
                return
            last = str(err)
        time.sleep(0.25)
    raise KubeError(f"timed out after {timeout:.0f}s waiting for the apiserver to call the webhook (last: {last})")
