"""Transparent inbound capture: iptables REDIRECT in a network namespace this test makes (a "pod")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import stored_lines

ROOT = Path(__file__).resolve().parents[2]
HOST_IP, POD_IP = "10.250.77.1", "10.250.77.2"


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """A namespace with a veth to the host namespace; skipped (reason printed) where the kernel refuses."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        pytest.skip("transparent capture needs root, iproute2 and iptables")
    name = f"ro-{uuid.uuid4().hex[:6]}"
    host_if, pod_if = f"h{name[3:]}", f"p{name[3:]}"
    steps = [["ip", "netns", "add", name], ["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if],
             ["ip", "link", "set", pod_if, "netns", name],
             ["ip", "addr", "add", f"{HOST_IP}/30", "dev", host_if], ["ip", "link", "set", host_if, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", f"{POD_IP}/30", "dev", pod_if],
             ["ip", "netns", "exec", name, "ip", "link", "set", pod_if, "up"],
             ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            done = _sh(*step)
            if done.returncode:
                pytest.skip(f"the kernel refused `{' '.join(step)}`: {done.stderr.strip()}")
        yield name
    finally:
        _sh("ip", "link", "del", host_if)
        _sh("ip", "netns", "del", name)


def test_redirected_inbound_traffic_is_recorded_with_its_original_destination(pod_netns: str, tmp_path: Path) -> None:
    env = {**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home"), "REPLAYOPS_FORWARDER_TOKEN": "tok",
           "REPLAYOPS_DLP_KEY": "k", "NO_PROXY": "*"}
    inside = ["ip", "netns", "exec", pod_netns]
    py = [sys.executable, "-m", "controller.cli"]
    iptables = subprocess.run([*inside, *py, "iptables", "--proxy-port", "15001", "--ports", "8080"], env=env,
                              cwd=ROOT, capture_output=True, text=True)
    if iptables.returncode and "Permission denied" in iptables.stderr:
        pytest.skip(f"the kernel refused iptables in the namespace: {iptables.stderr.strip()}")
    assert iptables.returncode == 0, iptables.stderr
    procs = [
        subprocess.Popen([*inside, sys.executable, str(ROOT / "examples" / "demo" / "dependency.py"), "8080",
                          "0.0.0.0"], cwd=ROOT),
        subprocess.Popen([*inside, *py, "forwarder", "--host", "127.0.0.1", "--port", "8090"], env=env, cwd=ROOT),
        subprocess.Popen([*inside, *py, "proxy", "--transparent", "15001", "--forwarder", "http://127.0.0.1:8090",
                          "--service", "prices", "--health-port", "15020"], env=env, cwd=ROOT),
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = _sh(*inside, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15020/healthz")
            if probe.stdout == "200":
                break
            assert time.monotonic() < deadline, "proxy never became healthy"
            time.sleep(0.2)
        session = requests.Session()
        session.trust_env = False
        for item in ("apple", "fig"):
            r = session.get(f"http://{POD_IP}:8080/price?item={item}", timeout=5)
            assert r.status_code == 200 and r.json()["item"] == item
        records: list[dict] = []  # type: ignore[type-arg]
        deadline = time.monotonic() + 15
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            records = [json.loads(line) for line in stored_lines(tmp_path / "home" / "store")]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    assert len(records) == 2, "both requests went through the transparent proxy"
    assert {r["tags"]["mode"] for r in records} == {"transparent"}
    assert all(r["direction"] == "inbound" for r in records)
    assert sorted(r["request"]["url"] for r in records) == [
        f"http://{POD_IP}:8080/price?item=apple", f"http://{POD_IP}:8080/price?item=fig"]
