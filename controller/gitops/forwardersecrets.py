"""The forwarder's Secrets: its token, where the sidecars can read it, and its DLP key, where only it can.

Sidecars injected now authenticate to the forwarder with their pod's ServiceAccount token (projected,
checked with TokenReview: the forwarder then decides their policy and stream from the pod). Sidecars
injected by earlier versions read a token from the Secret ``replayops-forwarder-token`` of their own
pod's namespace: until no such pod remains, the controller keeps that Secret in every namespace that has
a CapturePolicy, holding that namespace's token (``controller.tokens``: derived from the master token in
the controller's own namespace, which it creates random when there is none, and which the forwarder
reads), so such a sidecar can write only under its own namespace's policies. A rotated master (the
source Secret edited) reaches every namespace's token on the next pass.

The DLP key (``replayops-dlp-key``) makes redaction tags stable (one value, one tag, across restarts):
it is created once, random, in the controller's namespace and mounted only into the forwarder's pod —
never kept on the store's volume, which the inspector and replay Jobs mount.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable

from controller import logs, tokens
from controller.api import DLP_KEY_SECRET, FORWARDER_TOKEN_SECRET
from controller.kube import Kube, KubeError

log = logs.get("forwarder-secrets")
NAME = FORWARDER_TOKEN_SECRET


def _secret(namespace: str, name: str, key: str, value_b64: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "replayops"}},
            "data": {key: value_b64}}


def _ensure(kube: Kube, namespace: str, name: str, key: str) -> str:
    """``key`` of Secret ``namespace/name`` (base64, as Secrets hold it), created random when absent (the
    loser of a race reads the winner's)."""
    found = kube.get("v1", "Secret", name, namespace)
    if found is None:
        try:
            made = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
            kube.create(_secret(namespace, name, key, made))
            log.info("secret created", extra=logs.fields(secret=f"{namespace}/{name}"))
            return made
        except KubeError as exc:
            if exc.status != 409:
                raise
            found = kube.get("v1", "Secret", name, namespace)
    value = ((found or {}).get("data") or {}).get(key)
    if not value:
        raise KubeError(f"Secret {namespace}/{name} has no key {key!r}")
    return str(value)


def source_token(kube: Kube, namespace: str) -> str:
    """The token of ``namespace``'s Secret, created when absent."""
    return _ensure(kube, namespace, NAME, "token")


def dlp_key(kube: Kube, namespace: str) -> str:
    """The forwarder's DLP key Secret of ``namespace``, created when absent, never changed."""
    return _ensure(kube, namespace, DLP_KEY_SECRET, "key")


def share(kube: Kube, source_namespace: str, namespaces: Iterable[str],
          failed: dict[str, str] | None = None) -> list[str]:
    """Make sure the master token and the DLP key exist (the forwarder's pod cannot start without them,
    policies or not), then bring each of ``namespaces``' own token up to the master; return the
    namespaces written. With ``failed``, a namespace whose copy cannot be written is recorded there
    (namespace → error) and the others still get theirs; without it, the first failure raises."""
    wanted = sorted(set(namespaces) - {source_namespace})
    try:
        token = source_token(kube, source_namespace)
        dlp_key(kube, source_namespace)
    except KubeError as exc:
        if wanted:
            raise
        log.warning("forwarder secrets not ensured", extra=logs.fields(namespace=source_namespace, error=str(exc)))
        return []
    master = base64.b64decode(token).decode()
    written = []
    for ns in wanted:
        try:
            own = base64.b64encode(tokens.for_namespace(master, ns).encode()).decode()
            live = kube.get("v1", "Secret", NAME, ns)
            if live is not None and (live.get("data") or {}).get("token") == own:
                continue
            kube.apply(_secret(ns, NAME, "token", own))
        except KubeError as exc:
            if "because it is being terminated" in str(exc):  # NamespaceTerminating: its pods go too
                continue
            if failed is None or exc.transient or exc.reason == "NotLeader":
                raise
            failed[ns] = str(exc)
            continue
        written.append(ns)
    if written:
        log.info("forwarder token shared", extra=logs.fields(namespaces=written))
    return written
