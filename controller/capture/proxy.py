"""Run the capturing proxy: mitmproxy with the replayops addon, in all the modes the sidecar needs at once.

``ProxyConfig`` names the listeners (reverse ``LISTEN:APPPORT`` pairs, a
transparent port, an outbound forward-proxy port); ``CaptureProxy`` runs
mitmproxy on its own event loop thread, serves ``/healthz`` and ``/metrics``
on the health port, and writes the CA the application must trust (PEM, and a
bundle with the system roots) when TLS unwrapping is on.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import options
from prometheus_client import CollectorRegistry, make_wsgi_app

from controller import logs, policy
from controller.capture import javatrust, mitm
from controller.capture.addon import Buffer, CaptureMetrics, Recorder

log = logs.get("proxy")


@dataclass
class ProxyConfig:
    reverse: list[tuple[int, str]] = field(default_factory=list)  # (listen port, upstream URL)
    transparent: int | None = None
    outbound: int | None = None
    tls_unwrap: bool = False
    ca_dir: Path | None = None  # mitmproxy's confdir: the CA with its private key (the sidecar's alone)
    trust_dir: Path | None = None  # where the app's trust goes, certificates only (default: ca_dir)
    upstream_ca: Path | None = None
    listen_host: str = "0.0.0.0"
    outbound_host: str = "127.0.0.1"
    service: str = ""
    max_body: int = policy.MAX_BODY_BYTES  # longer bodies stream through, recorded truncated
    health: socket.socket | None = None  # listening for /healthz and /metrics (see ``listen_health``)

    def modes(self) -> list[str]:
        out = [f"reverse:{url}@{self.listen_host}:{port}" for port, url in self.reverse]
        if self.transparent:
            out.append(f"transparent@{self.listen_host}:{self.transparent}")
        if self.outbound:
            out.append(f"regular@{self.outbound_host}:{self.outbound}")
        return out


def parse_reverse(spec: str) -> tuple[int, str]:
    """``LISTEN:APPPORT`` or ``LISTEN:URL`` → (listen port, upstream URL)."""
    listen, _, target = spec.partition(":")
    if not listen.isdigit() or not target:
        raise ValueError(f"--reverse {spec!r}: expected LISTEN:APPPORT or LISTEN:URL")
    url = f"http://127.0.0.1:{target}" if target.isdigit() else target
    return int(listen), url


def serve_health(listening: socket.socket, healthy: Callable[[], bool], registry: CollectorRegistry) -> Any:
    """``/healthz`` (200 while ``healthy()``, else 503) and ``/metrics`` on ``listening``, in a thread."""
    from waitress import create_server

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            ok = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok" if ok else b"not listening"]
        return metrics_app(environ, start_response)

    server = create_server(app, sockets=[listening], threads=2)
    threading.Thread(target=server.run, name="health", daemon=True).start()
    return server


def sidecar_addons() -> list[Any]:
    """The mitmproxy addons a capturing sidecar needs, and no more.

    mitmdump loads ~30 addons (playback, scripts, map-local, blocklists...) and
    calls every one of them for each hook of each flow: that dispatch is most
    of its per-request cost. It also loads ``Block``, which kills connections
    from public IP addresses — wrong for a sidecar in front of an app that
    serves the internet (capture must never block the app's traffic).
    """
    return [mitm.core.Core(), mitm.proxyserver.Proxyserver(), mitm.next_layer.NextLayer(), mitm.tlsconfig.TlsConfig(),
            mitm.disable_h2c.DisableH2C(), mitm.update_alt_svc.UpdateAltSvc(), mitm.errorcheck.ErrorCheck()]


class CaptureProxy:
    def __init__(self, config: ProxyConfig, buffer: Buffer, metrics: CaptureMetrics) -> None:
        self.config, self.buffer, self.metrics = config, buffer, metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self.master: mitm.Master | None = None
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._health: Any = None

    async def _main(self) -> None:
        opts = options.Options()
        self.master = mitm.Master(opts, with_termlog=False)
        self.master.addons.add(*sidecar_addons(), Recorder(self.buffer, self.metrics, self.config.service,
                                                           tls_unwrap=self.config.tls_unwrap,
                                                           max_body=self.config.max_body))
        settings: dict[str, Any] = {"mode": self.config.modes(),
                                    "keep_host_header": True}
        if self.config.ca_dir:
            self.config.ca_dir.mkdir(parents=True, exist_ok=True)
            settings["confdir"] = str(self.config.ca_dir)
        if self.config.upstream_ca:
            settings["ssl_verify_upstream_trusted_ca"] = str(self.config.upstream_ca)
        opts.update(**settings)
        task = asyncio.create_task(self.master.run())
        while not self._listening():
            if task.done():
                await task
                return
            await asyncio.sleep(0.02)
        self._write_ca()
        self.ready.set()
        await task

    def _listening(self) -> bool:
        servers = self.master.addons.get("proxyserver").servers if self.master else None
        return servers is not None and bool(servers) and all(s.is_running for s in servers)

    def _write_ca(self) -> None:
        """ca.pem, ca-bundle.pem (system roots + ours) and truststore.jks (the same, for JVMs) in the trust
        directory, when unwrapping TLS: certificates only — the CA's private key stays in the confdir."""
        if not (self.config.tls_unwrap and self.config.ca_dir):
            return
        ours = (self.config.ca_dir / "mitmproxy-ca-cert.pem").read_bytes()
        roots = Path(certifi.where()).read_bytes()
        trust = self.config.trust_dir or self.config.ca_dir
        trust.mkdir(parents=True, exist_ok=True)
        (trust / "ca.pem").write_bytes(ours)
        (trust / "ca-bundle.pem").write_bytes(roots + b"\n" + ours)
        (trust / "truststore.jks").write_bytes(javatrust.from_pem(ours, roots))

    def start(self, timeout: float = 30.0) -> None:
        """Start listening; raise RuntimeError naming the listeners when they do not come up."""
        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._main())
            except Exception as exc:
                log.error("proxy stopped", extra=logs.fields(error=str(exc)))
            finally:  # end open connections' tasks before the loop goes
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.close()
        self._thread = threading.Thread(target=run, name="mitmproxy", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            raise RuntimeError(f"proxy listeners {self.config.modes()} did not start within {timeout:.0f}s "
                               "(port in use?)")
        if self.config.health:
            self._health = serve_health(self.config.health, self.healthy, self.metrics.registry)

    def healthy(self) -> bool:
        return self.ready.is_set() and self._listening()

    def stop(self) -> None:
        """Stop listening, then deliver what is still buffered."""
        if self.master and self.loop:
            self.loop.call_soon_threadsafe(self.master.shutdown)
        if self._thread:
            self._thread.join(10)
        if self._health:
            self._health.close()
        self.buffer.close()
