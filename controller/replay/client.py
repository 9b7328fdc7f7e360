"""A lean HTTP/1.1 keep-alive client for the generator's plain-HTTP hot path.

One ``Connection`` per virtual user, like a load tool's connection: requests
go out one after another on a kept-alive socket; responses are parsed by
httptools (the C parser uvicorn uses), chunked and gzip bodies included. It
reconnects when the server closes. HTTPS targets use aiohttp instead.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

import httptools


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the response was complete."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done: asyncio.Future[None] | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done and not self.done.done():
                self.done.set_exception(ConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done and not self.done.done():
            self.done.set_exception(ConnectionClosed("server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.done and not self.done.done():
            self.done.set_result(None)


def _expire(done: asyncio.Future[None], timeout: float) -> None:
    if not done.done():
        done.set_exception(TimeoutError(f"no complete response within {timeout:g}s"))


class Connection:
    """Sequential requests to one host:port over a kept-alive connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._proto: _Protocol | None = None

    async def request(self, method: str, target: str, headers: Sequence[Sequence[str]], body: bytes,
                      timeout: float) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, decoded body); raises ConnectionError or TimeoutError."""
        loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is None or proto.transport is None:
            _, proto = await asyncio.wait_for(loop.create_connection(_Protocol, self.host, self.port), timeout)
            self._proto = proto
        assert proto is not None
        proto.headers, proto.body = {}, []
        proto.parser = httptools.HttpResponseParser(proto)
        done = proto.done = loop.create_future()
        timer = loop.call_later(timeout, _expire, done, timeout)  # cheaper than a wait_for task per request
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("host", "content-length")]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        if proto.transport is None:  # closed by the server between connecting and sending
            timer.cancel()
            self.close()
            raise ConnectionClosed("server closed the connection before the request was sent")
        proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            await done
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
        status = proto.parser.get_status_code()
        data = b"".join(proto.body)
        encoding = next((v for k, v in proto.headers.items() if k.lower() == "content-encoding"), "")
        if encoding in ("gzip", "deflate"):
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        if not proto.keep_alive:
            self.close()
        return status, proto.headers, data

    def close(self) -> None:
        if self._proto and self._proto.transport:
            self._proto.transport.close()
        self._proto = None
