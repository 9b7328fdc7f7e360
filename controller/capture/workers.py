"""Run the capturing proxy as several processes sharing its ports (``replayops proxy --workers N``).

mitmproxy serves every connection on one asyncio loop, so one process tops
out at one core. With N workers each is a whole proxy (its own buffer and
sender) listening on the same ports with ``SO_REUSEPORT``: the kernel
spreads new connections across them. The supervisor starts the first worker
alone (it writes the CA the others then load), serves ``/healthz`` and an
aggregated ``/metrics`` (Prometheus multiprocess mode), restarts a worker
that dies, and on SIGTERM stops them all, each delivering what it buffered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from controller import logs
from controller.capture.addon import Sink
from controller.capture.proxy import ProxyConfig

log = logs.get("proxy")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_ports() -> None:
    """Make this process's mitmproxy listeners bind with ``SO_REUSEPORT``.

    mitmproxy has no option for it; its TCP listeners all come from
    ``AsyncioServerInstance.listen``, which this replaces for TCP modes.
    """
    from mitmproxy.proxy.mode_servers import AsyncioServerInstance

    original = AsyncioServerInstance.listen

    async def listen(self: Any, host: str, port: int) -> list[Any]:
        if self.mode.transport_protocol != "tcp" or port == 0:
            return await original(self, host, port)
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    AsyncioServerInstance.listen = listen  # type: ignore[method-assign]


def _worker(config: ProxyConfig, sink: Sink, ready: Connection) -> None:
    """One proxy process: says ready on ``ready``, runs until SIGTERM (SIGINT is the supervisor's)."""
    from controller.capture.addon import CaptureMetrics
    from controller.capture.proxy import CaptureProxy

    terminated = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    logs.setup()
    share_ports()
    metrics = CaptureMetrics()
    proxy = CaptureProxy(config, sink.buffer(metrics), metrics)
    try:
        proxy.start()
    except RuntimeError as exc:
        ready.send(str(exc))
        raise SystemExit(1) from exc
    gc.freeze()
    ready.send("")
    terminated.wait()
    proxy.stop()


class Supervisor:
    """N worker processes behind one health and metrics endpoint.

    Workers are told to stop by SIGTERM and report readiness over a pipe: both
    survive a worker killed at any instant (a shared lock would not).
    """

    def __init__(self, config: ProxyConfig, sink: Sink, workers: int) -> None:
        self.config, self.sink, self.count = config, sink, workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="replayops-proxy-metrics-")
        self._health: Any = None

    def _spawn(self, timeout: float) -> BaseProcess:
        receive, send = self.ctx.Pipe(duplex=False)
        worker_config = dataclasses.replace(self.config, health=None)  # the supervisor serves health
        proc = self.ctx.Process(target=_worker, args=(worker_config, self.sink, send),
                                name="replayops-proxy-worker")
        proc.start()
        send.close()
        error = f"did not start within {timeout:.0f}s"
        try:
            if receive.poll(timeout):
                error = receive.recv()
        except EOFError:
            error = "exited while starting"
        finally:
            receive.close()
        if error:
            proc.kill()
            proc.join()
            raise RuntimeError(f"proxy worker for {self.config.modes()}: {error} (exit code {proc.exitcode})")
        return proc

    def start(self, timeout: float = 30.0) -> None:
        """Start the workers (the first alone: it creates the CA), then the health endpoint."""
        os.environ[MULTIPROC_ENV] = self._metrics_dir.name
        for _ in range(self.count):
            self.procs.append(self._spawn(timeout))
        if self.config.health:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            from controller.capture.proxy import serve_health

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._metrics_dir.name)
            self._health = serve_health(self.config.health, self.healthy, registry)

    def healthy(self) -> bool:
        return len(self.procs) == self.count and all(p.is_alive() for p in self.procs)

    def run(self, stopping: Callable[[], bool], interval: float = 0.5) -> None:
        """Restart workers that die until ``stopping()``."""
        from prometheus_client.multiprocess import mark_process_dead

        while not stopping():
            for i, proc in enumerate(self.procs):
                if proc.is_alive():
                    continue
                log.error("proxy worker died; restarting",
                          extra=logs.fields(pid=proc.pid, exit_code=proc.exitcode))
                if proc.pid is not None:
                    mark_process_dead(proc.pid, self._metrics_dir.name)
                try:
                    self.procs[i] = self._spawn(30.0)
                except RuntimeError as exc:
                    log.error("proxy worker restart failed", extra=logs.fields(error=str(exc)))
            time.sleep(interval)

    def close(self, timeout: float = 15.0) -> None:
        """Stop every worker (each delivers what it buffered), then the health endpoint."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self._health:
            self._health.close()
        os.environ.pop(MULTIPROC_ENV, None)
        self._metrics_dir.cleanup()
