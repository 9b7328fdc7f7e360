"""The node itself: pods are scheduled and run the replayops image, reach each other through Services
and CoreDNS, have no way out of the machine, and a second node beside it is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from controller.devcluster import host
from controller.devcluster.node import NODE_NAME
from tests.node.conftest import NodeCluster, job_outcome, python_job, wait_available


def test_the_node_is_ready_with_its_pod_range(node: NodeCluster) -> None:
    got = node.kube.get("v1", "Node", NODE_NAME)
    assert got is not None
    ready = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert {"type": "InternalIP", "address": host.NODE_IP} in got["status"]["addresses"]


def test_a_pod_reaches_a_service_by_its_dns_name_and_pods_have_no_route_out(node: NodeCluster, node_ns: str) -> None:
    labels = {"app": "web"}
    web = {"name": "web", "image": node.image, "imagePullPolicy": "Never",
           "command": ["python3", "-m", "http.server", "8080", "-d", "/opt/replayops"],
           "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}
    node.kube.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": node_ns},
                     "spec": {"selector": {"matchLabels": labels},
                              "template": {"metadata": {"labels": labels}, "spec": {"containers": [web]}}}})
    node.kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": node_ns},
                     "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}})
    wait_available(node, node_ns, "web")
    code = f"""
        import socket, time, urllib.error, urllib.request
        for attempt in range(60):  # kube-proxy programs a new Service's endpoints asynchronously
            try:
                body = urllib.request.urlopen("http://web.{node_ns}.svc.cluster.local/", timeout=10).read()
                break
            except urllib.error.URLError as e:
                if not isinstance(e.reason, ConnectionRefusedError) or attempt == 59:
                    raise
                time.sleep(1)
        assert b"share" in body, body[:200]
        routes = open("/proc/net/route").read().splitlines()[1:]
        assert not [r for r in routes if r.split()[1] == "00000000"], routes  # no default route
        try:
            socket.getaddrinfo("example.com", 80)
            raise SystemExit("a name outside the cluster resolved")
        except socket.gaierror:
            pass
        print("ok")
    """
    node.kube.apply(python_job("client", node_ns, node.image, code, ))
    ok, log = job_outcome(node, node_ns, "client", timeout=180)
    assert ok, log
    assert "ok" in log


def test_dev_up_beside_a_node_it_did_not_start_refuses_and_changes_nothing(node: NodeCluster, tmp_path: Path) -> None:
    state = tmp_path / "node.json"  # another replayops install: the session's node is foreign to it
    env = {**os.environ, "REPLAYOPS_NODE_STATE": str(state), "REPLAYOPS_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "dev", "up"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not start" in proc.stderr and "kubelet (pid" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not state.exists()
    assert host.run("ip", "link", "show", host.BRIDGE, check=False).returncode == 0  # our node is untouched
    test_the_node_is_ready_with_its_pod_range(node)


def test_the_dev_overlays_tag_names_the_image_imported_last(node: NodeCluster, node_ns: str) -> None:
    """``kubectl apply -k manifests/overlays/dev`` by hand: its ``localhost/replayops:dev`` is on the node,
    the same image as the content-hash tag built last."""
    from controller.devcluster.image import DEV_TAG

    ids = {}
    for name, image in (("dev-tag", DEV_TAG), ("hash-tag", node.image)):
        node.kube.apply(python_job(name, node_ns, image, "import controller; print('runs')"))
        ok, log = job_outcome(node, node_ns, name, timeout=120)
        assert ok and "runs" in log, f"{image}: {log}"
        ids[name] = {s["imageID"] for p in node.kube.list("v1", "Pod", node_ns)
                     if p["metadata"]["labels"].get("job-name") == name for s in p["status"]["containerStatuses"]}
    assert ids["dev-tag"] == ids["hash-tag"] and len(ids["dev-tag"]) == 1, ids
