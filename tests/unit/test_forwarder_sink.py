"""The sidecar's delivery to the forwarder: one kept-alive connection, replaced when the forwarder closed it."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.capture.addon import forwarder_sink


class Forwarder(ThreadingHTTPServer):
    """Answers 202 and, when ``hang_up``, closes each connection without saying so (an idle timeout)."""

    def __init__(self, hang_up: bool, status: int = 202) -> None:
        self.hang_up, self.status = hang_up, status
        self.bodies: list[dict[str, object]] = []
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802
                assert self.headers["Authorization"] == "Bearer t0k"
                outer.bodies.append(json.loads(gzip.decompress(self.rfile.read(int(self.headers["Content-Length"])))))
                reply = b"no" if outer.status != 202 else b""
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                self.close_connection = outer.hang_up

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(params=[False, True], ids=["kept-alive", "closed-while-idle"])
def forwarder(request: pytest.FixtureRequest) -> Iterator[Forwarder]:
    server = Forwarder(hang_up=request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_batches_arrive_whole_whether_or_not_the_forwarder_keeps_the_connection(forwarder: Forwarder) -> None:
    deliver = forwarder_sink(f"http://127.0.0.1:{forwarder.server_address[1]}/", "t0k", policy="shop/p", stream="s")
    for i in range(3):
        deliver([json.dumps({"n": i}).encode()])
    assert [b["records"] for b in forwarder.bodies] == [[{"n": 0}], [{"n": 1}], [{"n": 2}]]
    assert forwarder.bodies[0]["policy"] == "shop/p" and forwarder.bodies[0]["stream"] == "s"
    assert forwarder.connections == (3 if forwarder.hang_up else 1)


def test_a_refused_batch_and_a_missing_token_raise_with_the_reason() -> None:
    server = Forwarder(hang_up=False, status=401)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(RuntimeError, match="forwarder answered 401: no"):
            forwarder_sink(url, "t0k", policy="p", stream="s")([b"{}"])
        with pytest.raises(RuntimeError, match="no forwarder token"):
            forwarder_sink(url, "", policy="p", stream="s")([b"{}"])
    finally:
        server.shutdown()
