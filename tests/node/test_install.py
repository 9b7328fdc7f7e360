"""replayops installed from manifests/ as a user would (the dev overlay, the image built here), running in
pods with its real ServiceAccounts: the webhook, the controller (two replicas, one leader) and the forwarder."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import paths
from controller.api import INJECTED, PROXY, SYSTEM_NAMESPACE
from controller.devcluster import host
from controller.kube import KubeError
from tests.gitrepo import Repo, git_daemon
from tests.node.conftest import NodeCluster, job_outcome, python_job, wait_available


def kustomization(tmp: Path, image: str) -> Path:
    """What a user writes to install the dev overlay with their own image tag."""
    overlay = os.path.relpath(paths.source_dir("manifests") / "overlays" / "dev", tmp)
    name, _, tag = image.rpartition(":")
    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{overlay}]\n"
        f"images:\n  - name: localhost/replayops\n    newName: {name}\n    newTag: {tag}\n")
    return tmp


@pytest.fixture(scope="module")
def installed(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    base = tmp_path_factory.mktemp("git")
    repo = Repo(base / "repo")
    repo.commit("seed", {"README.md": "policies and replays\n"})
    with git_daemon(base, host.NODE_IP) as port:  # where pods reach it, as a git server
        node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}})
        node.kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "replayops-source", "namespace": SYSTEM_NAMESPACE},
                         "data": {"repo": f"git://{host.NODE_IP}:{port}/repo"}})
        out = node.kubectl("apply", "--server-side", "-k", str(kustomization(tmp_path_factory.mktemp("k"),
                                                                              node.image)))
        assert out.returncode == 0, out.stderr
        yield repo


@pytest.mark.parametrize(("name", "replicas"), [("replayops-webhook", 2), ("replayops-controller", 2),
                                                ("replayops-forwarder", 1)])
def test_each_component_runs_in_its_pods_from_the_manifests(node: NodeCluster, installed: Repo, name: str,
                                                            replicas: int) -> None:
    deployment = wait_available(node, SYSTEM_NAMESPACE, name, timeout=240)
    assert deployment["status"]["availableReplicas"] == replicas
    pods = [p for p in node.kube.list("v1", "Pod", SYSTEM_NAMESPACE)
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == name]
    assert {p["spec"]["serviceAccountName"] for p in pods} == {name}
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {node.image}


def test_the_controller_replicas_elect_one_leader(node: NodeCluster, installed: Repo) -> None:
    wait_available(node, SYSTEM_NAMESPACE, "replayops-controller", timeout=240)
    lease = node.kube.wait_for("the controller's lease held", lambda: (
        got if (got := node.kube.get("coordination.k8s.io/v1", "Lease", "replayops-controller-default",
                                   SYSTEM_NAMESPACE)) and got["spec"].get("holderIdentity") else None), timeout=60)
    pods = {p["metadata"]["name"] for p in node.kube.list("v1", "Pod", SYSTEM_NAMESPACE)
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "replayops-controller"}
    assert lease["spec"]["holderIdentity"] in pods



POLICY = """apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  inbound: {{mode: reverse, ports: [8080]}}
  filters: {{exclude: [{{paths: [/skip]}}]}}
  dlp: {{patterns: [{{type: custom, name: order, regex: "ORDER-[0-9]{{6}}"}}]}}
"""


@pytest.fixture(scope="module")
def captured(node: NodeCluster, installed: Repo) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A team's workload (applied with its own tool) that a CapturePolicy committed to git captures;
    yields its namespace and its pods once they rolled with the sidecar and are Ready."""
    ns = "team-web"
    node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    wait_available(node, SYSTEM_NAMESPACE, "replayops-webhook", timeout=240)
    labels = {"app": "web"}
    web = {"name": "web", "image": node.image, "imagePullPolicy": "Never",
           "command": ["python3", "-m", "http.server", "8080", "-d", "/opt/replayops"],
           "ports": [{"containerPort": 8080}], "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
                  "spec": {"selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels}, "spec": {"containers": [web]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 15001}]}}  # the reverse proxy
    # the team's own deployment tool (its own field manager), not the controller's
    for obj in (deployment, service):
        node.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj), check=True)
    installed.commit(f"capture {ns}/web", {f"policies/{ns}.yaml": POLICY.format(ns=ns)})

    def pods() -> list[dict[str, Any]]:
        return [p for p in node.kube.list("v1", "Pod", ns) if not p["metadata"].get("deletionTimestamp")]

    def injected_and_ready() -> list[dict[str, Any]] | None:
        live = pods()
        ok = [p for p in live if p["metadata"].get("annotations", {}).get(INJECTED)
              and (p.get("status") or {}).get("containerStatuses")
              and all(s.get("ready") for s in p["status"]["containerStatuses"] +
                      p["status"].get("initContainerStatuses", []))]
        return ok if ok and len(ok) == len(live) else None

    try:
        ready = node.kube.wait_for("the workload's pods rolled with the sidecar and Ready", injected_and_ready,
                                   timeout=240, interval=1)
    except KubeError:
        seen = [(p["metadata"]["name"], p["metadata"].get("annotations"), p.get("status")) for p in pods()]
        status = node.kube.get("v1", "ConfigMap", "replayops-status-default", SYSTEM_NAMESPACE)
        raise AssertionError(f"pods: {seen}\nsource status: {(status or {}).get('data')}") from None
    ips = {p["status"]["podIP"] for p in ready}

    def serving() -> set[str] | None:  # the Service routes to them (kube-proxy follows the slices)
        slices = node.kube.list("discovery.k8s.io/v1", "EndpointSlice", ns)
        got = {a for s in slices if s["metadata"].get("labels", {}).get("kubernetes.io/service-name") == "web"
               for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
               for a in e["addresses"]}
        return got if got == ips else None
    node.kube.wait_for("the Service's endpoints are the injected pods", serving, timeout=60, interval=0.5)
    yield ns, ready
    node.kube.delete("v1", "Namespace", ns)


def test_a_policy_committed_to_git_gets_the_workload_captured_by_the_webhook_in_its_pods(
        node: NodeCluster, captured: tuple[str, list[dict[str, Any]]]) -> None:
    _, pods = captured
    sidecar = next(c for c in pods[0]["spec"]["initContainers"] if c["name"] == PROXY)
    assert sidecar["image"] == node.image  # the webhook's own image, as kustomize images: set it
    assert sidecar["restartPolicy"] == "Always"


def _store_records(node: NodeCluster) -> list[dict[str, Any]]:
    """Every record in the store's volume, read from the node's disk (segments decompressed)."""
    claim = node.kube.get("v1", "PersistentVolumeClaim", "replayops-store", SYSTEM_NAMESPACE) or {}
    volume = node.kube.get("v1", "PersistentVolume", claim.get("spec", {}).get("volumeName", ""))
    if not volume:
        return []
    records = []
    for segment in Path(volume["spec"]["hostPath"]["path"]).rglob("*.jsonl.gz"):
        with contextlib.suppress(OSError, EOFError):
            records += [json.loads(line) for line in gzip.decompress(segment.read_bytes()).splitlines() if line]
    return records


def test_traffic_through_the_sidecar_reaches_the_store_shaped_by_the_policy_the_forwarder_reads(
        node: NodeCluster, captured: tuple[str, list[dict[str, Any]]]) -> None:
    ns, _ = captured
    code = f"""
        import time, urllib.error, urllib.request
        for _ in range(60):  # kube-proxy programs the Service's new endpoints shortly after the slice lists them
            try:  # first (the sidecar sends in order): a path the policy filters out, and the app answers 404
                urllib.request.urlopen("http://web.{ns}.svc/skip?order=ORDER-999999", timeout=10)
                raise SystemExit("/skip answered 200")
            except urllib.error.HTTPError as err:
                assert err.code == 404, err.code
                break
            except urllib.error.URLError as err:
                if not isinstance(err.reason, ConnectionRefusedError):
                    raise
                time.sleep(0.5)
        else:
            raise SystemExit("web.{ns}.svc refused connections for 30 s")
        for i in range(5):
            urllib.request.urlopen("http://web.{ns}.svc/?order=ORDER-12345" + str(i), timeout=10).read()
    """
    node.kube.apply(python_job("client", ns, node.image, code))
    ok, log = job_outcome(node, ns, "client", timeout=180)
    assert ok, log
    records = node.kube.wait_for("five pairs in the store", lambda: (
        r if len(r := [x for x in _store_records(node) if "order=" in x["request"]["url"]]) >= 5 else None),
        timeout=120, interval=1)
    raw = json.dumps(records)
    assert "ORDER-12345" not in raw, "the policy's custom DLP pattern, read from the cluster, redacts it"
    assert "[redacted:order:" in raw
    stored = _store_records(node)  # the /skip pair was sent before these: it was filtered, not pending
    assert not [r for r in stored if "/skip" in r["request"]["url"]], "the policy's filter drops /skip"
