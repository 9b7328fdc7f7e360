"""Every container replayops ships runs with a read-only root filesystem, so every path it writes must
be a volume: /tmp always (gunicorn's heartbeat files, waitress's spooled bodies, tempfile), and
$REPLAYOPS_HOME where it is set. Checked over the rendered manifests and the replay Job; and the webhook
is run under a read-only root as its pod would: it fails without the /tmp volume and serves with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from controller.gitops.replayjobs import JobConfig, render
from tests.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]


def containers(cluster: Cluster) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(owner, container, pod spec) of every workload in manifests/base, and of a replay Job."""
    out = cluster.kubectl("kustomize", str(ROOT / "manifests" / "base"), check=True).stdout
    pods = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in YAML(typ="safe").load_all(out)
            if d and d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    replay = {"metadata": {"name": "r", "namespace": "shop", "uid": "u", "generation": 1}, "spec": {}}
    pods.append(("replay Job", render(replay, JobConfig())["spec"]["template"]["spec"]))
    return [(owner, c, spec) for owner, spec in pods for c in spec["containers"]]


def test_every_path_a_read_only_container_writes_is_a_volume(cluster: Cluster) -> None:
    checked = 0
    for owner, container, spec in containers(cluster):
        if not (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            continue
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}
        assert "/tmp" in mounts and "emptyDir" in mounts["/tmp"], f"{owner}: no writable /tmp"
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        home = env.get("REPLAYOPS_HOME")
        assert home is None or home in mounts, f"{owner}: REPLAYOPS_HOME {home} is not a volume"
        if "controller" in (container.get("args") or [""])[0]:
            assert home, f"{owner}: the controller's git cache would go to a read-only home"
        checked += 1
    assert checked >= 4  # controller, webhook, forwarder, replay Job


SETUP = """set -e
mount -t tmpfs -o size=16m tmpfs /run
mkdir -p /run/certs /run/src
cp {kubeconfig} /run/kubeconfig
mount --bind {root} /run/src
mount -o remount,bind,ro /
{tmp}
echo ready
exec sleep infinity
"""
# an emptyDir at /tmp, as the manifests mount it; the source tree (and its virtualenv) stays visible
# where it is, even when it lives under /tmp (as in CI's clean clone)
TMP_VOLUME = "mount -t tmpfs -o size=16m tmpfs /tmp\nmkdir -p {root}\nmount --bind /run/src {root}"


def _webhook_in_read_only_root(cluster: Cluster, *, tmp_volume: bool) -> tuple[bool, str]:
    """Start the webhook in a mount namespace whose root is read-only; whether /healthz answered, and its log."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("a pod's filesystem needs root, unshare and nsenter")
    script = SETUP.format(kubeconfig=cluster.kubeconfig, root=ROOT,
                          tmp=TMP_VOLUME.format(root=ROOT) if tmp_volume else "")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout and holder.stdout.readline().strip() == "ready", holder.stderr
    from controller.devcluster.cluster import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")} | {"HOME": "/nonexistent"}
    hook = subprocess.Popen(["nsenter", "-t", str(holder.pid), "-m", sys.executable, "-m", "controller.cli",
                             "webhook", "serve", "--port", str(port), "--host", "127.0.0.1", "--cert-dir",
                             "/run/certs", "--kubeconfig", "/run/kubeconfig"],
                            cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = False
    try:
        deadline = time.monotonic() + 30
        while not served and hook.poll() is None and time.monotonic() < deadline:
            probe = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
                                    f"https://127.0.0.1:{port}/healthz"], capture_output=True, text=True)
            served = probe.stdout == "200"
            time.sleep(0.3)
    finally:
        hook.kill()
        log = hook.communicate()[0]
        holder.kill()
        holder.wait()
    return served, log


def test_the_webhook_needs_its_tmp_volume_under_a_read_only_root(cluster: Cluster) -> None:
    served, log = _webhook_in_read_only_root(cluster, tmp_volume=False)
    assert not served and "No usable temporary directory" in log, log
    served, log = _webhook_in_read_only_root(cluster, tmp_volume=True)
    assert served, log
