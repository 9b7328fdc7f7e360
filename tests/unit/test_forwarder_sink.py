"""The sidecar's delivery to the forwarder: one kept-alive connection, replaced when the forwarder closed it,
never resent after a timeout, used by one batch at a time."""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controller.capture.addon import bearer, forwarder_sink


class Forwarder(ThreadingHTTPServer):
    """Answers 202 and, when ``hang_up``, closes each connection without saying so (an idle timeout)."""

    def __init__(self, hang_up: bool, status: int = 202, stall: set[int] | None = None) -> None:
        self.hang_up, self.status, self.stall = hang_up, status, stall or set()
        self.stalled = threading.Event()
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
                if len(outer.bodies) in outer.stall:  # answer late: the client has timed out
                    outer.stalled.wait(5)
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
    deliver = forwarder_sink(f"http://127.0.0.1:{forwarder.server_address[1]}/", bearer("t0k"), policy="shop/p",
                             stream="s")
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
            forwarder_sink(url, bearer("t0k"), policy="p", stream="s")([b"{}"])
        with pytest.raises(RuntimeError, match="no forwarder token"):
            forwarder_sink(url, bearer(""), policy="p", stream="s")([b"{}"])
    finally:
        server.shutdown()


def test_a_timed_out_batch_is_not_sent_again() -> None:
    server = Forwarder(hang_up=False, stall={2})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deliver = forwarder_sink(f"http://127.0.0.1:{server.server_address[1]}", bearer("t0k"), policy="p",
                                 stream="s",
                                 timeout=0.3)
        deliver([b'{"n": 0}'])
        with pytest.raises(TimeoutError):
            deliver([b'{"n": 1}'])  # on the kept-alive connection: a reused one, and still not resent
        server.stalled.set()
        deliver([b'{"n": 2}'])
        assert [b["records"] for b in server.bodies] == [[{"n": 0}], [{"n": 1}], [{"n": 2}]]
    finally:
        server.stalled.set()
        server.shutdown()


def test_batches_from_two_threads_share_the_connection_one_at_a_time(forwarder: Forwarder) -> None:
    deliver = forwarder_sink(f"http://127.0.0.1:{forwarder.server_address[1]}", bearer("t0k"), policy="p",
                             stream="s")
    errors: list[BaseException] = []

    def send(first: int) -> None:
        try:
            for i in range(first, first + 50):
                deliver([json.dumps({"n": i}).encode()])
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(first,)) for first in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(b["records"][0]["n"] for b in forwarder.bodies) == [*range(50), *range(100, 150)]


def test_the_token_file_is_read_again_when_the_kubelet_renews_it(tmp_path: Path) -> None:
    """The kubelet renews a projected token by swapping a symlink (``..data``): the next batch sends the new
    one; while the file is absent the fixed token is sent."""
    link = tmp_path / "token"
    current = bearer("fallback", str(link))
    assert current() == "fallback"
    for i in range(2):
        (tmp_path / f"v{i}").write_text(f"jwt-{i}\n")
        (tmp_path / "next").symlink_to(f"v{i}")
        os.replace(tmp_path / "next", link)
        assert current() == f"jwt-{i}"
