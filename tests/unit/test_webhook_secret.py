"""The webhook's certificate Secret: written and read back as cert-manager shapes it; bad ones named."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from controller import pki
from controller.admission.secret import KEYS, Material


def test_material_round_trips_through_a_tls_secret_and_writes_a_matching_pair(tmp_path: Path) -> None:
    made = Material.generated(("127.0.0.1",))
    secret = made.secret("replayops-system", "replayops-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == set(KEYS)
    assert Material.from_secret(secret, "x") == made
    paths = made.write(tmp_path / "certs")
    pair = pki.load(paths.cert, paths.key)  # the key belongs to the certificate
    assert pair.cert_pem == made.cert and paths.ca.read_bytes() == made.ca
    assert paths.key.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("key", "value", "message"), [
    ("ca.crt", None, "Secret ns/tls lacks ca.crt"),
    ("tls.key", base64.b64encode(b"not a key").decode(), "Secret ns/tls: tls.key is not PEM"),
    ("tls.crt", "***", "Secret ns/tls: tls.crt is not PEM"),
])
def test_a_bad_secret_is_refused_naming_it_and_the_key(key: str, value: str | None, message: str) -> None:
    secret = Material.generated(("127.0.0.1",)).secret("ns", "tls")
    data = dict(secret["data"])
    if value is None:
        del data[key]
    else:
        data[key] = value
    with pytest.raises(ValueError, match=message):
        Material.from_secret({**secret, "data": data}, "ns/tls")
