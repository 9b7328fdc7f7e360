"""The fastest mutating webhook this machine can run: the floor that ours is measured against.

An asyncio HTTPS server (keep-alive, HTTP/1.1) that answers every AdmissionReview on
``/mutate/pods`` with a fixed JSONPatch — the one our webhook returned for the benchmark's pod,
so the apiserver does exactly the same work after the call — and allows everything else. It
parses nothing but the ``uid``. No real webhook can be faster; the gap to it is ours.

Without ``--patch`` it allows every pod unchanged: the floor of the call alone.

Run: python bench/floor_webhook.py --port P --cert-dir DIR [--patch FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
from pathlib import Path

UID = re.compile(rb'"uid":"([^"]+)"')


def answer(uid: bytes, patch: str | None) -> bytes:
    resp: dict[str, object] = {"uid": uid.decode(), "allowed": True}
    if patch:
        resp.update(patchType="JSONPatch", patch=patch)
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "response": resp}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)


async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, patch: str | None) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            uid = UID.search(body)
            writer.write(answer(uid.group(1) if uid else b"", patch if head.startswith(b"POST /mutate/pods") else None))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve(port: int, cert_dir: Path, patch: str | None) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_dir / "tls.crt"), str(cert_dir / "tls.key"))
    server = await asyncio.start_server(lambda r, w: connection(r, w, patch), "127.0.0.1", port, ssl=ctx)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--patch", type=Path, default=None,
                        help="file holding the base64 JSONPatch to return (default: allow unchanged)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.cert_dir, args.patch.read_text().strip() if args.patch else None))


if __name__ == "__main__":
    main()
