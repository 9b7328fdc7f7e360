"""The webhook's serving certificate: generated when absent, reloaded when rotated.

``ensure`` writes a CA and a serving certificate (IP and DNS SANs) into the
cert directory unless ``tls.crt``/``tls.key`` are already there. ``Reloader``
hands every new TLS connection the newest certificate (through the SNI
callback, which OpenSSL calls on every handshake), so a rotated certificate
takes effect without a restart and without dropping a request.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from controller import pki
from controller.api import SYSTEM_NAMESPACE


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_dir(cls, cert_dir: Path) -> CertPaths:
        return cls(cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt")


def generate(*, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[pki.KeyPair, pki.KeyPair]:
    """A new CA and a serving certificate it signed, for the webhook's Service names, ``dns`` and ``ips``."""
    default_dns = ("replayops-webhook", f"replayops-webhook.{SYSTEM_NAMESPACE}",
                   f"replayops-webhook.{SYSTEM_NAMESPACE}.svc", "localhost")
    ca = pki.make_ca("replayops-webhook-ca")
    return ca, pki.issue(ca, "replayops-webhook", dns=tuple(dict.fromkeys(default_dns + dns)), ips=ips)


def ensure(cert_dir: Path, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",)) -> CertPaths:
    """Generate a CA and serving certificate in ``cert_dir`` when none is there."""
    paths = CertPaths.in_dir(cert_dir)
    if paths.cert.is_file() and paths.key.is_file():
        return paths
    ca, serving = generate(dns=dns, ips=ips)
    pki.write_atomic(paths.ca, ca.cert_pem)
    pki.write_atomic(cert_dir / "ca.key", ca.key_pem, mode=0o600)
    serving.write(paths.cert, paths.key)
    return paths


def ca_bundle(paths: CertPaths) -> bytes:
    """The PEM the apiserver must trust: ca.crt, or the serving cert itself when no CA is given."""
    return paths.ca.read_bytes() if paths.ca.is_file() else paths.cert.read_bytes()


class Reloader:
    """Keeps an SSLContext for the newest cert/key on disk; checks at most every ``interval`` s."""

    def __init__(self, paths: CertPaths, interval: float = 1.0) -> None:
        self.paths = paths
        self.interval = interval
        self._lock = threading.Lock()
        self._stamp: tuple[float, float] = (0.0, 0.0)
        self._checked = 0.0
        self._context = self._load()

    def _mtimes(self) -> tuple[float, float]:
        return (os.stat(self.paths.cert).st_mtime, os.stat(self.paths.key).st_mtime)

    def _load(self) -> ssl.SSLContext:
        stamp = self._mtimes()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.paths.cert), str(self.paths.key))
        ctx.sni_callback = self._on_handshake
        self._stamp = stamp
        return ctx

    def context(self) -> ssl.SSLContext:
        """The current context, reloaded first if the files changed (a half-written pair is skipped)."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._context
        with self._lock:
            self._checked = now
            try:
                if self._mtimes() != self._stamp:
                    self._context = self._load()
            except (OSError, ssl.SSLError):
                pass  # keep serving the last good certificate until the new pair is complete
        return self._context

    def _on_handshake(self, sock: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
        current = self.context()
        if sock.context is not current:
            sock.context = current
