"""Writes fenced at the socket: a write's fence is asked again right before each of its bytes leave.

A fence asked only when a write starts leaves a gap: a process paused (SIGSTOP, a long GC, a frozen VM)
after the check and before the request goes out sends it on waking, after another leader took over.
Here the fence of the write in progress (``current``, set by ``Kube`` around the call) is asked again
in the connection's ``send``, after the connection is made and before every chunk (headers, body), so
what is left of the gap is the few instructions between that check and the ``send`` system call. A
refusal raises out of urllib3, which discards the connection: the server never sees a whole request.
(No fencing token reaches the API server — Kubernetes has none — so those few instructions stay.)
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# the fence of the write this thread is sending (None: not a fenced write)
current: contextvars.ContextVar[Callable[[], object] | None] = contextvars.ContextVar("fence", default=None)


def _ask(conn: HTTPConnection) -> None:
    fence = current.get()
    if fence is not None:
        if conn.sock is None:  # connect first: the check belongs right before the bytes
            conn.connect()
        fence()


class _FencedHTTPConnection(HTTPConnection):
    def send(self, data: Any) -> None:
        _ask(self)
        super().send(data)


class _FencedHTTPSConnection(_FencedHTTPConnection, HTTPSConnection):
    """HTTPS, fenced as above (``send`` comes first in its order)."""


class _FencedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _FencedHTTPConnection


class _FencedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _FencedHTTPSConnection


def install(pools: urllib3.PoolManager) -> None:
    """Make ``pools`` open fenced connections (before its first request: pools are made on first use)."""
    pools.pool_classes_by_scheme = {"http": _FencedHTTPConnectionPool, "https": _FencedHTTPSConnectionPool}
