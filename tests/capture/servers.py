"""Real servers on loopback for the capture and replay tests."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller import pki


class Echo(BaseHTTPRequestHandler):
    """Answers every request with JSON describing it (and a Set-Cookie, to exercise DLP)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        data = json.dumps({"method": self.command, "path": self.path, "body": body,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", "session=s3cr3t-session-id; Path=/; HttpOnly")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


async def ws_echo(request: Any) -> Any:
    """An aiohttp WebSocket handler answering each text or binary message with ``echo:`` and the message."""
    from aiohttp import WSMsgType, web

    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(f"echo:{msg.data}")
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(b"echo:" + msg.data)
    return ws


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler] = Echo, *, tls: pki.KeyPair | None = None,
          cert_dir: Path | None = None) -> Iterator[int]:
    """Run ``handler`` on a free loopback port (with TLS when ``tls`` is given); yield the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None and cert_dir is not None:
        tls.write(cert_dir / "server.crt", cert_dir / "server.key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_dir / "server.crt", cert_dir / "server.key")
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_h2(tls: pki.KeyPair, cert_dir: Path) -> Iterator[int]:
    """An HTTP/2-only TLS server (ALPN h2) built on the h2 library: echoes the request body; answers
    ``application/grpc`` requests with gRPC framing and a ``grpc-status`` trailer."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    tls.write(cert_dir / "h2.crt", cert_dir / "h2.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_dir / "h2.crt", cert_dir / "h2.key")
    ctx.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def handle(raw: socket.socket) -> None:
        try:
            sock = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        headers: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytes] = {}
        with sock:
            while not stop.is_set():
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers[event.stream_id] = dict(event.headers)
                        bodies[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id
                        grpc = headers[sid].get("content-type", "").startswith("application/grpc")
                        body = bodies[sid] if grpc else json.dumps(
                            {"path": headers[sid].get(":path"), "protocol": "h2"}).encode()
                        ctype = "application/grpc" if grpc else "application/json"
                        conn.send_headers(sid, [(":status", "200"), ("content-type", ctype)])
                        conn.send_data(sid, body, end_stream=not grpc)
                        if grpc:
                            conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                sock.sendall(conn.data_to_send())

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(raw,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        listener.close()
