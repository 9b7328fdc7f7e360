"""A Java truststore (JKS) of PEM certificates, so JVM apps trust the sidecar's CA when TLS is unwrapped.

The JVM ignores ``SSL_CERT_FILE``; it reads ``-Djavax.net.ssl.trustStore``. A
PKCS#12 truststore needs a JDK-specific trust attribute that ``cryptography``
cannot write, so this writes the JKS format every JVM reads (Java 8 to 21):

    0xFEEDFEED, version 2, entry count, then per trusted-certificate entry
    tag 2, alias (modified UTF-8), timestamp (ms), "X.509", DER length + bytes;
    finally SHA-1(password as UTF-16BE + b"Mighty Aphrodite" + everything before).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

MAGIC, VERSION, TRUSTED_CERT = 0xFEEDFEED, 2, 2
PASSWORD = "changeit"  # the JVM's conventional truststore password; it only guards integrity


def _utf(text: str) -> bytes:
    raw = text.encode()  # aliases are ASCII here: modified UTF-8 equals UTF-8
    return struct.pack(">H", len(raw)) + raw


def truststore(certs: Iterable[tuple[str, x509.Certificate]], password: str = PASSWORD) -> bytes:
    """The JKS bytes holding ``certs`` (alias, certificate) as trusted certificate entries."""
    entries = list(certs)
    out = bytearray(struct.pack(">III", MAGIC, VERSION, len(entries)))
    now = int(time.time() * 1000)
    for alias, cert in entries:
        der = cert.public_bytes(Encoding.DER)
        out += struct.pack(">I", TRUSTED_CERT) + _utf(alias.lower()) + struct.pack(">Q", now)
        out += _utf("X.509") + struct.pack(">I", len(der)) + der
    out += hashlib.sha1(password.encode("utf-16-be") + b"Mighty Aphrodite" + bytes(out)).digest()
    return bytes(out)


def from_pem(ours: bytes, roots: bytes) -> bytes:
    """Our CA (alias ``replayops-ca``) and the system roots (``root-N``) as one truststore."""
    certs = [("replayops-ca", x509.load_pem_x509_certificate(ours))]
    certs += [(f"root-{i}", c) for i, c in enumerate(x509.load_pem_x509_certificates(roots))]
    return truststore(certs)
