"""The generator's lean HTTP/1.1 client against a real server: keep-alive, chunked, gzip, closes, timeouts."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from controller.devcluster.cluster import free_port
from controller.replay.client import Connection


async def _server(port: int) -> web.AppRunner:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/chunked-gzip":
            resp = web.StreamResponse()
            resp.enable_compression(web.ContentCoding.gzip)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b'{"parts": [', b'"a", ', b'"b"]}'):
                await resp.write(part)
            await resp.write_eof()
            return resp
        if request.path == "/close":
            return web.Response(text="bye", headers={"Connection": "close"})
        if request.path == "/slow":
            await asyncio.sleep(1)
        return web.json_response({"method": request.method, "path": request.path_qs, "body": body.decode(),
                                  "peer": request.transport.get_extra_info("peername")[1]})  # type: ignore[union-attr]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def test_keep_alive_chunked_gzip_close_and_timeout() -> None:
    async def scenario() -> None:
        port = free_port()
        runner = await _server(port)
        conn = Connection("127.0.0.1", port)
        try:
            s1, _, b1 = await conn.request("POST", "/a?x=1", [["Content-Type", "application/json"]], b'{"k":1}', 5)
            s2, _, b2 = await conn.request("GET", "/b", [], b"", 5)
            assert (s1, s2) == (200, 200)
            one, two = json.loads(b1), json.loads(b2)
            assert one["path"] == "/a?x=1" and one["body"] == '{"k":1}'
            assert one["peer"] == two["peer"], "the second request reused the connection"
            status, headers, body = await conn.request("GET", "/chunked-gzip", [["Accept-Encoding", "gzip"]], b"", 5)
            assert status == 200 and json.loads(body) == {"parts": ["a", "b"]}
            assert headers.get("Content-Encoding") == "gzip"
            assert (await conn.request("GET", "/close", [], b"", 5))[2] == b"bye"
            assert (await conn.request("GET", "/after-close", [], b"", 5))[0] == 200, "reconnects"
            with pytest.raises(TimeoutError):
                await conn.request("GET", "/slow", [], b"", 0.2)
            assert (await conn.request("GET", "/again", [], b"", 5))[0] == 200, "a timed-out connection is replaced"
        finally:
            conn.close()
            await runner.cleanup()
        closed = Connection("127.0.0.1", free_port())
        with pytest.raises(ConnectionRefusedError):
            await closed.request("GET", "/", [], b"", 2)

    asyncio.run(scenario())
