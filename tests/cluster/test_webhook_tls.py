"""The webhook reloads a rotated serving certificate without dropping a request."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

from cryptography import x509

from controller import pki
from tests.conftest import Cluster, start_webhook


def _served_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = tls.recv(64)
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_rotated_certificate_is_served_with_no_failed_request(cluster: Cluster, tmp_path: Path) -> None:
    hook = start_webhook(cluster, tmp_path, register=False)
    ca_file = hook.cert_dir / "ca.crt"
    try:
        before = _served_serial(hook.port, ca_file)
        failures: list[str] = []
        served: set[int] = set()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    served.add(_served_serial(hook.port, ca_file))
                except (OSError, AssertionError) as exc:
                    failures.append(repr(exc))

        worker = threading.Thread(target=hammer)
        worker.start()
        warmup = time.monotonic() + 30
        while before not in served and time.monotonic() < warmup and not failures:
            time.sleep(0.05)
        ca = pki.load(ca_file, hook.cert_dir / "ca.key")
        fresh = pki.issue(ca, "replayops-webhook", dns=("localhost",), ips=("127.0.0.1",))
        fresh.write(hook.cert_dir / "tls.crt", hook.cert_dir / "tls.key")
        deadline = time.monotonic() + 30
        while fresh.cert.serial_number not in served and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        worker.join()
        assert fresh.cert.serial_number in served, "the new certificate was never served"
        assert before in served and before != fresh.cert.serial_number
        assert failures == []
    finally:
        hook.stop()
