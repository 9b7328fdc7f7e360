"""Serve the webhook under gunicorn (threads, TLS with certificate reload)."""

from __future__ import annotations

import gc
import ssl
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from controller.admission.certs import CertPaths, Reloader


def _freeze_loaded(_worker: Any) -> None:
    """The loaded app lives as long as the worker: keep it out of the cyclic GC's full collections,
    which otherwise scan it all and stall the requests in flight."""
    gc.freeze()


class WebhookServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running one Flask app with the Reloader's TLS contexts."""

    def __init__(self, app_factory: Callable[[], Flask], *, host: str, port: int, certs: CertPaths,
                 workers: int = 1, threads: int = 8) -> None:
        self.app_factory = app_factory
        self.reloader = Reloader(certs)
        self.settings = {
            "bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
            "certfile": str(certs.cert), "keyfile": str(certs.key), "timeout": 30,
            "graceful_timeout": 10, "keepalive": 30, "accesslog": None, "loglevel": "warning",
            "ssl_context": self._ssl_context, "post_worker_init": _freeze_loaded,
        }
        super().__init__()

    def _ssl_context(self, _config: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return self.reloader.context()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.app_factory()
