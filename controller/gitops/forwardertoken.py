"""The forwarder's token, where the sidecars can read it.

Sidecars authenticate to the forwarder with a shared token, read from the Secret
``replayops-forwarder-token`` of their own pod's namespace (a pod can only reference Secrets of
its namespace). The controller keeps that Secret in every namespace that has a CapturePolicy, as
a copy of the one in its own namespace, which it creates with a random token when there is none
(the forwarder reads that one). A rotated token (the source Secret edited) reaches every copy on
the next pass; sidecars read it when their pods restart.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable

from controller import logs
from controller.admission.inject import InjectConfig
from controller.kube import Kube, KubeError

log = logs.get("forwarder-token")
NAME = InjectConfig.forwarder_token_secret


def _secret(namespace: str, token_b64: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": NAME, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "replayops"}},
            "data": {"token": token_b64}}


def source_token(kube: Kube, namespace: str) -> str:
    """The token (base64, as Secrets hold it) of ``namespace``'s Secret, created when absent."""
    found = kube.get("v1", "Secret", NAME, namespace)
    if found is None:
        try:
            made = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
            kube.create(_secret(namespace, made))
            log.info("forwarder token created", extra=logs.fields(secret=f"{namespace}/{NAME}"))
            return made
        except KubeError as exc:
            if exc.status != 409:
                raise
            found = kube.get("v1", "Secret", NAME, namespace)
    token = ((found or {}).get("data") or {}).get("token")
    if not token:
        raise KubeError(f"Secret {namespace}/{NAME} has no key 'token'")
    return str(token)


def share(kube: Kube, source_namespace: str, namespaces: Iterable[str]) -> list[str]:
    """Make sure the source token exists (the forwarder's pod cannot start without it, policies or not),
    then bring the copy in each of ``namespaces`` up to it; return the namespaces written."""
    wanted = sorted(set(namespaces) - {source_namespace})
    try:
        token = source_token(kube, source_namespace)
    except KubeError as exc:
        if wanted:
            raise
        log.warning("forwarder token not ensured", extra=logs.fields(namespace=source_namespace, error=str(exc)))
        return []
    written = []
    for ns in wanted:
        live = kube.get("v1", "Secret", NAME, ns)
        if live is not None and (live.get("data") or {}).get("token") == token:
            continue
        kube.apply(_secret(ns, token))
        written.append(ns)
    if written:
        log.info("forwarder token shared", extra=logs.fields(namespaces=written))
    return written
