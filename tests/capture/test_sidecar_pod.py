"""The sidecar exactly as the injector renders it, under a pod's constraints.

A holder process gets its own mount and network namespaces (a "pod"): the root filesystem is
remounted read-only (the sidecar's ``readOnlyRootFilesystem: true``) and a tmpfs at /run stands
for the emptyDir volumes. The rendered args and env are run there with ``nsenter``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import api
from controller.admission import defaults, inject
from controller.devcluster import stop_pid

ROOT = Path(__file__).resolve().parents[2]
SETUP = """set -e
ip link set lo up
mount -t tmpfs -o size=64m tmpfs /run
mkdir -p /run/replayops /run/forwarder
mount -o remount,bind,ro /
touch /ro-check 2>/dev/null && exit 3
echo ready
exec sleep infinity
"""


@pytest.fixture
def pod() -> Iterator[int]:
    """The holder's pid; skipped (reason printed) where namespaces or mounts are refused."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("a pod's filesystem needs root, unshare and nsenter")
    holder = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", SETUP],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout
    if holder.stdout.readline().strip() != "ready":
        holder.wait(10)
        pytest.skip(f"the kernel refused the pod's namespaces or mounts: {holder.stderr.read().strip()!r}")
    try:
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _in(pid: int, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(["nsenter", "-t", str(pid), "-m", "-n", *argv], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _curl(pid: int, url: str) -> str:
    done = _in(pid, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url)
    return done.communicate(timeout=10)[0]


def _wait_200(pid: int, url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while _curl(pid, url) != "200":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{url} never answered 200; the process said: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)


def _rendered_sidecar(workers: int) -> tuple[list[str], dict[str, str]]:
    policy = {"apiVersion": "replayops.dev/v1alpha1", "kind": "CapturePolicy", "metadata": {"name": "checkout"},
              "spec": {"selector": {"matchLabels": {"app": "checkout"}}, "outbound": {"enabled": True},
                       "sidecar": {"workers": workers}}}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "checkout-1", "annotations": {api.CAPTURE: "checkout"}},
           "spec": {"containers": [{"name": "app", "image": "shop/checkout", "ports": [{"containerPort": 8080}]}]}}
    config = inject.InjectConfig(forwarder_url="http://127.0.0.1:8090")
    out = inject.inject(pod, "shop", defaults.default_policy(policy)["spec"], config)
    sidecar = next(c for c in out["spec"]["initContainers"] if c["name"] == api.PROXY)
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    assert inject.RUN_DIR in mounts and sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    env |= {"POD_NAME": "checkout-1", "REPLAYOPS_FORWARDER_TOKEN": "tok", "PATH": os.environ["PATH"],
            "HOME": "/root"}
    assert ("--workers" in sidecar["args"]) == (workers > 1), "the policy's workers reach the sidecar's args"
    return sidecar["args"], env


@pytest.mark.parametrize("workers", [1, 2])
def test_the_injected_sidecar_runs_on_a_read_only_root_filesystem(pod: int, workers: int) -> None:
    args, env = _rendered_sidecar(workers)
    py = [sys.executable, "-m", "controller.cli"]
    app = _in(pod, sys.executable, str(ROOT / "examples" / "demo" / "dependency.py"), "8080")
    forwarder = _in(pod, *py, "forwarder", "--host", "127.0.0.1", "--port", "8090",
                    env={**env, "REPLAYOPS_HOME": "/run/forwarder", "REPLAYOPS_DLP_KEY": "k"})
    sidecar = _in(pod, *py, *args, env=env)
    try:
        _wait_200(pod, "http://127.0.0.1:8090/healthz", forwarder)
        _wait_200(pod, f"http://127.0.0.1:{inject.HEALTH_PORT}/healthz", sidecar)
        statuses = [_curl(pod, f"http://127.0.0.1:15001/price?item=apple&n={i}") for i in range(5)]
        sidecar.terminate()
        _, stderr = sidecar.communicate(timeout=30)
    finally:
        for proc in (sidecar, forwarder, app):
            stop_pid(proc.pid)
    assert statuses == ["200"] * 5
    assert sidecar.returncode == 0, stderr[-2000:]
    # the CA mitmproxy always keeps, and any temporary files, went to the emptyDir
    run_dir = inject.RUN_DIR.replace("/var/run/", "run/", 1)  # /var/run -> /run: resolve inside the pod's root
    assert (Path(f"/proc/{pod}/root") / run_dir / "mitmproxy" / "mitmproxy-ca.pem").is_file()
    store = Path(f"/proc/{pod}/root/run/forwarder/store/streams")
    records = [json.loads(line) for seg in store.rglob("*.jsonl.gz") for line in gzip.decompress(seg.read_bytes())
               .splitlines()]
    assert sorted(r["request"]["url"].split("/", 3)[3] for r in records) == sorted(
        f"price?item=apple&n={i}" for i in range(5))
