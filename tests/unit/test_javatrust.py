"""The JKS truststore writer: structure and integrity digest (a real JVM reads it in tests/capture/test_proxy.py)."""

from __future__ import annotations

import hashlib
import struct

from controller import pki
from controller.capture import javatrust


def test_truststore_has_one_trusted_entry_per_certificate_and_a_keyed_digest() -> None:
    ours, root = pki.make_ca("ours"), pki.make_ca("root")
    data = javatrust.from_pem(ours.cert_pem, root.cert_pem + b"\n")
    magic, version, count = struct.unpack(">III", data[:12])
    assert (magic, version, count) == (0xFEEDFEED, 2, 2)
    body, digest = data[:-20], data[-20:]
    assert digest == hashlib.sha1("changeit".encode("utf-16-be") + b"Mighty Aphrodite" + body).digest()
    assert digest != hashlib.sha1("other".encode("utf-16-be") + b"Mighty Aphrodite" + body).digest()
    tag, alias_len = struct.unpack(">IH", data[12:18])
    assert tag == 2 and data[18:18 + alias_len] == b"replayops-ca"
    assert b"root-0" in body
