"""Capped exponential backoff with jitter; the API client's errors said as transient or not."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controller.kube import Kube, KubeError, connect
from controller.kube.backoff import Backoff


def test_delays_double_up_to_the_cap_within_their_upper_half() -> None:
    low, high = Backoff(base=1, cap=8, rand=lambda: 0.0), Backoff(base=1, cap=8, rand=lambda: 0.999999)
    assert [round(low.next(), 3) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert [round(high.next(), 3) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    low.reset()
    assert low.next() == 0.5


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    b = Backoff(base=1, cap=8, rand=lambda: 0.0)
    assert b.next(retry_after=3) == 3
    assert b.next(retry_after=30) == 30
    assert b.next(retry_after=None) == 2
    assert b.next(retry_after=86400) == Backoff.MAX_RETRY_AFTER, "a server asking for a day is asked again sooner"


@pytest.fixture
def answering() -> Iterator[dict[str, tuple[int, dict[str, str]]]]:
    """A local HTTP server answering every request with the status and headers the test sets."""
    reply: dict[str, tuple[int, dict[str, str]]] = {"now": (200, {}), "requests": (0, {})}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status, headers = reply["now"]
            reply["requests"] = (reply["requests"][0] + 1, {})
            body = b'{"kind":"Status","message":"slow down","reason":"TooManyRequests"}'
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reply["port"] = (server.server_address[1], {})
    yield reply
    server.shutdown()


def _kube(port: int, tmp_path: Path) -> Kube:
    """A client as ``connect`` makes it, from a kubeconfig naming ``port``."""
    (tmp_path / "kubeconfig").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return connect(tmp_path / "kubeconfig")


def test_429_with_retry_after_and_5xx_are_transient_4xx_are_not(
        answering: dict[str, tuple[int, dict[str, str]]], tmp_path: Path) -> None:
    kube = _kube(answering["port"][0], tmp_path)
    for status, headers, transient, after in [(429, {"Retry-After": "7"}, True, 7.0), (503, {}, True, None),
                                              (500, {}, True, None), (403, {}, False, None)]:
        answering["now"] = (status, headers)
        with pytest.raises(KubeError) as err:
            kube.call("GET", "/api/v1/namespaces/default/configmaps/x", what="get ConfigMap default/x")
        assert (err.value.status, err.value.transient, err.value.retry_after) == (status, transient, after)
        assert answering["requests"][0] == 1, "the client itself retried: the caller's backoff is bypassed"
        answering["requests"] = (0, {})
        assert str(err.value).startswith("get ConfigMap default/x: ")


def test_no_answer_is_transient_and_names_the_call(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens
    with pytest.raises(KubeError) as err:
        _kube(port, tmp_path).call("GET", "/api/v1/namespaces", what="list Namespace")
    assert err.value.transient and err.value.status == 0
    assert str(err.value).startswith("list Namespace: the API server did not answer")
