"""The webhook's certificate kept in a Secret, so that every replica serves the same one.

Each replica generating its own CA would leave the webhook configurations trusting whichever
replica patched ``caBundle`` last, and the apiserver failing TLS with the others. So replicas
share one ``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``, ``ca.crt`` — cert-manager's
shape, so cert-manager may own it instead): ``fetch_or_create`` reads it, or generates a pair
and creates it; creation is atomic, and a replica that loses the race reads the winner's.
``CertSync`` writes it into the cert dir (where ``certs.Reloader`` picks it up) and re-reads it
every interval, so a rotated certificate is served — and its CA patched into our webhook
configurations, beside the previous one while replicas catch up — without a restart.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller import logs, pki
from controller.admission import certs
from controller.kube import Kube, KubeError

log = logs.get("webhook.certs")
KEYS = ("tls.crt", "tls.key", "ca.crt")


@dataclass(frozen=True)
class Material:
    """The PEM files the webhook serves with, as the Secret holds them."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def generated(cls, ips: tuple[str, ...]) -> Material:
        ca, serving = certs.generate(ips=ips)
        return cls(serving.cert_pem, serving.key_pem, ca.cert_pem)

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any], where: str) -> Material:
        """Decode and check the Secret's three keys; ValueError names the Secret and the key at fault."""
        data = secret.get("data") or {}
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise ValueError(f"Secret {where} lacks {', '.join(missing)} (needs {', '.join(KEYS)})")
        pems = {}
        for key in KEYS:
            try:
                pems[key] = base64.b64decode(str(data[key]), validate=True)
                if key == "tls.key":
                    serialization.load_pem_private_key(pems[key], password=None)
                else:
                    x509.load_pem_x509_certificates(pems[key])
            except ValueError as exc:
                raise ValueError(f"Secret {where}: {key} is not PEM: {exc}") from exc
        return cls(pems["tls.crt"], pems["tls.key"], pems["ca.crt"])

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        data = dict(zip(KEYS, (base64.b64encode(v).decode() for v in (self.cert, self.key, self.ca)), strict=True))
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "replayops"}},
                "data": data}

    def write(self, cert_dir: Path) -> certs.CertPaths:
        """Write into ``cert_dir``: the key before the certificate, so the Reloader never pairs a new
        certificate with an old key (it skips a pair that does not match and retries)."""
        paths = certs.CertPaths.in_dir(cert_dir)
        cert_dir.mkdir(parents=True, exist_ok=True)
        pki.write_atomic(paths.ca, self.ca)
        pki.write_atomic(paths.key, self.key, mode=0o600)
        pki.write_atomic(paths.cert, self.cert)
        return paths


def fetch_or_create(kube: Kube, namespace: str, name: str, *, ips: tuple[str, ...] = ("127.0.0.1",),
                    generate: Callable[[], Material] | None = None) -> Material:
    """The Secret's material; when there is no Secret, a generated pair that is then stored in it."""
    where = f"{namespace}/{name}"
    found = kube.get("v1", "Secret", name, namespace)
    if found is not None:
        return Material.from_secret(found, where)
    made = (generate or (lambda: Material.generated(ips)))()
    try:
        kube.create(made.secret(namespace, name))
        log.info("webhook certificate generated", extra=logs.fields(secret=where))
        return made
    except KubeError as exc:
        if exc.status != 409:
            raise
    log.info("another replica created the webhook certificate first", extra=logs.fields(secret=where))
    stored = kube.get("v1", "Secret", name, namespace)
    if stored is None:
        raise KubeError(f"Secret {where} was created and deleted while we read it")
    return Material.from_secret(stored, where)


class CertSync:
    """Keeps ``cert_dir`` and (optionally) our webhook configurations' caBundle on the Secret's material."""

    def __init__(self, kube: Kube, namespace: str, name: str, cert_dir: Path, *,
                 on_ca: Callable[[bytes], None] | None = None, ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.kube, self.namespace, self.name, self.cert_dir = kube, namespace, name, cert_dir
        self.on_ca, self.ips = on_ca, ips
        self.current: Material | None = None
        self.bundle = b""  # what the configurations are given

    def sync(self) -> certs.CertPaths:
        """Fetch (or create) the Secret and bring the cert dir and caBundle up to it. The bundle is given
        on every sync, changed or not: a configuration re-created since (a re-apply, an Argo CD replace)
        gets it back within one interval (``on_ca`` writes nothing where it is current)."""
        material = fetch_or_create(self.kube, self.namespace, self.name, ips=self.ips)
        paths = certs.CertPaths.in_dir(self.cert_dir)
        previous = self.current
        if material != previous:
            material.write(self.cert_dir)
            if previous is None or previous.ca != material.ca:
                # trust the previous CA too: replicas not yet past their next sync still serve its certificate
                self.bundle = material.ca + (previous.ca if previous is not None else b"")
        if self.on_ca is not None:
            self.on_ca(self.bundle)
        if material == previous:
            return paths
        if previous is not None:
            log.info("webhook certificate rotated", extra=logs.fields(secret=f"{self.namespace}/{self.name}"))
        self.current = material
        return paths

    def run(self, interval: float) -> None:
        """Re-sync every ``interval`` seconds for the life of the process; a failed sync keeps the last
        good files."""
        while True:
            time.sleep(interval)
            try:
                self.sync()
            except (KubeError, ValueError, OSError) as exc:
                log.error("webhook certificate not synced", extra=logs.fields(
                    secret=f"{self.namespace}/{self.name}", error=str(exc)))

    def start(self, interval: float) -> None:
        threading.Thread(target=self.run, args=(interval,), name="cert-sync", daemon=True).start()
