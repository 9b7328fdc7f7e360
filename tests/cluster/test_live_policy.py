"""The policy reaches the sidecar at run time: the real forwarder reads the CapturePolicy from the real API
server and answers each batch with its filters and sampling; the real sidecar process applies them before
recording, so a changed sampling rate or filter takes effect with no restart (no pod rolls)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import requests

from controller.api import API_VERSION
from controller.devcluster import stop_pid
from controller.devcluster.cluster import free_port
from tests.capture.servers import serve
from tests.capture.test_processes import cli, metric
from tests.conftest import Cluster
from tests.helpers import wait_200


def _policy(namespace: str, sampling: float, exclude: list[str]) -> dict[str, object]:
    return {"apiVersion": API_VERSION, "kind": "CapturePolicy",
            "metadata": {"name": "checkout", "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": "checkout"}}, "sampling": sampling,
                     "filters": {"exclude": [{"paths": exclude}]} if exclude else {}}}


def _counts(health: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=5).read().decode()
    return (metric(text, "replayops_capture_pairs_captured_total"),
            metric(text, "replayops_capture_pairs_filtered_total"))


def test_a_changed_sampling_rate_and_filter_reach_the_running_sidecar(cluster: Cluster, namespace: str,
                                                                     tmp_path: Path) -> None:
    cluster.kube.apply(_policy(namespace, 1.0, ["/health*"]))
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home"), "REPLAYOPS_FORWARDER_TOKEN": "tok",
           "REPLAYOPS_DLP_KEY": "k", "KUBECONFIG": str(cluster.kubeconfig)}
    fwd, listen, health = free_port(), free_port(), free_port()
    with serve() as app:
        forwarder = cli("forwarder", "--port", str(fwd), "--host", "127.0.0.1", "--kubeconfig",
                        str(cluster.kubeconfig), env=env)
        proxy = cli("proxy", "--reverse", f"{listen}:{app}", "--forwarder", f"http://127.0.0.1:{fwd}",
                    "--policy", f"{namespace}/checkout", "--service", "checkout", "--health-port", str(health),
                    env=env)
        try:
            wait_200(f"http://127.0.0.1:{fwd}/readyz")
            wait_200(f"http://127.0.0.1:{health}/healthz")
            session = requests.Session()

            def send(paths: list[str]) -> None:
                for path in paths:
                    assert session.get(f"http://127.0.0.1:{listen}{path}", timeout=5).status_code == 200

            def settled(want_filtered: float) -> tuple[float, float]:
                deadline = time.monotonic() + 30
                while (got := _counts(health))[1] < want_filtered and time.monotonic() < deadline:
                    time.sleep(0.2)
                return got

            # the sidecar learns the policy (an empty batch at start), then drops /health* before recording
            deadline = time.monotonic() + 30
            while _counts(health)[1] == 0 and time.monotonic() < deadline:
                send(["/healthz"])
                time.sleep(0.5)
            captured, filtered = _counts(health)
            assert filtered > 0, "the sidecar never applied the forwarder's filter"
            send([f"/orders/{i}" for i in range(20)])
            assert settled(filtered) == (captured + 20, filtered), "sampling 1.0: every order recorded"

            # a new sampling rate and filter, applied to the cluster: the running sidecar follows
            cluster.kube.apply(_policy(namespace, 0.25, ["/orders/9*"]))
            time.sleep(2)  # the forwarder's watch brings it; the next batch's answer carries it
            send(["/warmup"])
            time.sleep(2)  # that batch goes out within a flush interval; its answer is the new policy
            before_captured, before_filtered = _counts(health)
            send([f"/items/{i}" for i in range(200)] + ["/orders/91"])
            after_captured, after_filtered = settled(before_filtered + 1)
        finally:
            stop_pid(proxy.pid)
            stop_pid(forwarder.pid)
    kept = after_captured - before_captured
    assert kept + (after_filtered - before_filtered) == 201
    assert 20 < kept < 90, f"sampling 0.25 kept {kept} of 200, in the same sidecar process throughout"
