"""TrafficReplays run as Jobs the controller creates and follows, against the real apiserver (with
kube-controller-manager's Job controller). There is no kubelet here: the Job's pod is run as the kubelet
would run it — its container's arguments, as a process with the cluster's kubeconfig — against a real
HTTP service, and the outcome is read back from the replay's status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.admission import register
from controller.api import API_VERSION, GROUP
from controller.devcluster.cluster import free_port
from controller.gitops.replayjobs import JobConfig, ReplayJobs, job_name
from controller.replay import target as targets
from controller.store import FileStore, Manifest, rrpair
from tests.argo_health import health, script
from tests.conftest import Cluster
from tests.helpers import wait_200

ROOT = Path(__file__).resolve().parents[2]


class Quote(BaseHTTPRequestHandler):
    """Answers as recorded; with ``?changed`` in the path, differently."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"price": 3 if "changed" in self.path else 2}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Quote)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def home(tmp_path: Path, namespace: str) -> Path:
    """REPLAYOPS_HOME with snapshot `quotes` of ``namespace``: five recorded GET /api/quote answered
    {"price": 2}; and its outbound call to pricing."""
    now = time.time()
    records = [rrpair.make(method="GET", url=f"http://svc/api/quote?n={i}", request_headers=[],
                           request_body=None, status=200, response_headers=[["Content-Type", "application/json"]],
                           response_body=b'{"price": 2}', started=now + i, finished=now + i, direction="inbound",
                           service="svc") for i in range(5)]
    FileStore(tmp_path / "store").write_snapshot(Manifest(name="quotes", namespace=namespace), records)
    calls = [rrpair.make(method="GET", url="http://pricing/api/price?item=apple", request_headers=[],
                         request_body=None, status=200, response_headers=[["Content-Type", "application/json"]],
                         response_body=b'{"price": 2}', started=now, finished=now, direction="outbound",
                         service="svc")]
    FileStore(tmp_path / "store").write_snapshot(Manifest(name="pricing", namespace=namespace), calls)
    return tmp_path


@pytest.fixture
def jobs(cluster: Cluster) -> Iterator[ReplayJobs]:
    register.unregister(cluster.kube)  # no webhook from an earlier test refusing our objects
    cluster.settle()  # a sync reads every replay in the cluster: none of an earlier test's may be going
    ns = f"rj-{uuid.uuid4().hex[:8]}"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    yield ReplayJobs(cluster.kube, JobConfig(namespace=ns))
    cluster.kube.delete("v1", "Namespace", ns)


def replay(cluster: Cluster, ns: str, name: str, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return cluster.kube.create({"apiVersion": API_VERSION, "kind": "TrafficReplay",
                                "metadata": {"name": name, "namespace": ns},
                                "spec": {"snapshot": "quotes", "target": target, **spec}})


def sync(jobs: ReplayJobs, ns: str) -> list[str]:
    """One pass; what it did about replays in ``ns`` (the cluster is shared with other tests' replays)."""
    return [line for line in jobs.sync() if f" {ns}/" in line]


def get(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.kube.get(API_VERSION, "TrafficReplay", name, ns) or {}


def event(cluster: Cluster, ns: str, pod: str, reason: str, when: float) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    cluster.kube.create({"apiVersion": "v1", "kind": "Event",
                         "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:8]}", "namespace": ns},
                         "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns}, "reason": reason,
                         "message": f"{reason} of {pod}", "type": "Warning", "count": 1,
                         "firstTimestamp": stamp, "lastTimestamp": stamp})


def run_pod(cluster: Cluster, job: dict[str, Any], home: Path) -> subprocess.CompletedProcess[str]:
    """Run the Job's container as the kubelet would: its args, its env (the store volume is ``home``)."""
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "REPLAYOPS_HOME": str(home),
           "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "controller.cli", *container["args"]], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_replay_runs_as_a_job_and_its_outcome_lands_in_its_status(
        cluster: Cluster, namespace: str, jobs: ReplayJobs, service: str, home: Path) -> None:
    created = replay(cluster, namespace, "smoke", {"url": service}, goals={"minSuccessRate": 1}, timeout="5m")
    assert sync(jobs, namespace) == [f"created Job {job_name(created)} for TrafficReplay {namespace}/smoke"]
    job = cluster.kube.get("batch/v1", "Job", job_name(created), jobs.config.namespace) or {}
    pod = job["spec"]["template"]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 300
    assert pod["spec"]["containers"][0]["args"] == ["replay", "--resource", f"{namespace}/smoke", "--no-progress"]
    assert pod["spec"]["serviceAccountName"] == "replayops-replay"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "replayops-store"
    assert pod["metadata"]["annotations"]["sidecar.replayops.dev/inject"] == "false"
    pending = get(cluster, namespace, "smoke")
    assert pending["status"]["phase"] == "Pending"
    assert health(script(GROUP, "TrafficReplay"), pending)["status"] == "Progressing"
    assert sync(jobs, namespace) == [], "a pass with nothing to do does nothing"

    event(cluster, namespace, "crash", "BackOff", time.time())
    event(cluster, namespace, "long-ago", "Pulled", time.time() - 600)
    ran = run_pod(cluster, job, home)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    status = get(cluster, namespace, "smoke")["status"]
    report = json.loads(Path(status["reportRef"]["path"]).read_text())
    assert [(e["object"], e["reason"]) for e in report["events"]] == [("Pod/crash", "BackOff")], \
        "the collector keeps the events of the minute before the run and of the run"
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == 1
    assert status["summary"]["requests"] == 5 and status["summary"]["successRate"] == 1
    assert status["summary"]["goalsMet"] is True
    assert Path(status["reportRef"]["path"]).is_file() and str(status["reportRef"]["path"]).startswith(str(home))
    verdict = health(script(GROUP, "TrafficReplay"), get(cluster, namespace, "smoke"))
    assert verdict["status"] == "Healthy" and verdict["message"].startswith("Replay finished: 5 requests, 100.0%")
    assert sync(jobs, namespace) == [], "a finished replay is not run again"

    cluster.kube.delete(API_VERSION, "TrafficReplay", "smoke", namespace)
    assert sync(jobs, namespace) == [f"deleted Job {job_name(created)} of {namespace}/smoke"]


def test_missed_goals_fail_the_replay_naming_the_differing_field(
        cluster: Cluster, namespace: str, jobs: ReplayJobs, service: str, home: Path) -> None:
    created = replay(cluster, namespace, "changed", {"url": f"{service}/changed"}, goals={"minSuccessRate": 1})
    jobs.sync()
    ran = run_pod(cluster, cluster.kube.get("batch/v1", "Job", job_name(created), jobs.config.namespace) or {}, home)
    assert ran.returncode == 0, "the replay ran: its verdict is in the status, the Job succeeded"
    done = get(cluster, namespace, "changed")
    assert done["status"]["phase"] == "Failed" and done["status"]["summary"]["goalsMet"] is False
    assert done["status"]["reportRef"]["id"], "a replay that ran keeps its report"
    condition = done["status"]["conditions"][0]
    assert condition["reason"] == "GoalsNotMet" and "minSuccessRate" in condition["message"]
    assert "GET /api/quote: $.price: recorded 2, got 3" in condition["message"], "it names the differing field"
    assert health(script(GROUP, "TrafficReplay"), done)["status"] == "Degraded"
    assert jobs.sync() == [], "Failed is final: no second Job"


def test_a_job_past_its_deadline_fails_the_replay_and_a_new_generation_runs_again(
        cluster: Cluster, namespace: str, jobs: ReplayJobs, service: str) -> None:
    first = replay(cluster, namespace, "slow", {"url": service}, timeout="1s")
    jobs.sync()
    deadline = time.monotonic() + 60
    while get(cluster, namespace, "slow")["status"]["phase"] != "Failed":  # the Job controller fails the Job
        assert time.monotonic() < deadline, "the Job never failed"
        jobs.sync()
        time.sleep(0.5)
    failed = get(cluster, namespace, "slow")
    condition = failed["status"]["conditions"][0]
    assert condition["reason"] == "DeadlineExceeded" and job_name(first) in condition["message"]
    assert health(script(GROUP, "TrafficReplay"), failed) == {"status": "Degraded", "message": condition["message"]}

    failed["spec"]["timeout"] = "10m"
    cluster.kube.apply({"apiVersion": API_VERSION, "kind": "TrafficReplay",
                        "metadata": {"name": "slow", "namespace": namespace}, "spec": failed["spec"]})
    second = get(cluster, namespace, "slow")
    assert second["metadata"]["generation"] == 2
    assert sorted(sync(jobs, namespace)) == sorted([
        f"created Job {job_name(second)} for TrafficReplay {namespace}/slow",
        f"deleted Job {job_name(first)} of {namespace}/slow"])
    assert get(cluster, namespace, "slow")["status"]["phase"] == "Pending"


def test_a_mocks_only_replay_serves_its_snapshot_behind_a_service_until_its_timeout(
        cluster: Cluster, namespace: str, jobs: ReplayJobs, home: Path) -> None:
    created = replay(cluster, namespace, "mocks", {"url": "http://unused"}, snapshot="pricing", mode="mocks-only",
                     timeout="4s")
    name = job_name(created)
    assert sync(jobs, namespace) == [f"created Job {name} for TrafficReplay {namespace}/mocks",
                                     f"created Service {name} for the mocks of TrafficReplay {namespace}/mocks"]
    job = cluster.kube.get("batch/v1", "Job", name, jobs.config.namespace) or {}
    assert job["spec"]["activeDeadlineSeconds"] == 4 + 300, "the mocks stop at the timeout; the deadline is later"
    svc = cluster.kube.get("v1", "Service", name, jobs.config.namespace) or {}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"], "deleted with its Job"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == svc["spec"]["ports"][0]["port"] == 9300
    url = f"http://{name}.{jobs.config.namespace}.svc:9300"
    assert container["args"][:2] == ["mock", "--resource"] and container["args"][-1] == url

    port = free_port()
    args = [str(port) if a == "9300" else a for a in container["args"]]
    env = {**os.environ, "REPLAYOPS_HOME": str(home), "KUBECONFIG": str(cluster.kubeconfig)}
    pod = subprocess.Popen([sys.executable, "-m", "controller.cli", *args], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while get(cluster, namespace, "mocks")["status"].get("phase") != "Running":
            assert time.monotonic() < deadline and pod.poll() is None, pod.stdout.read() if pod.stdout else ""
            time.sleep(0.1)
        assert url in get(cluster, namespace, "mocks")["status"]["conditions"][0]["message"]
        wait_200(f"http://127.0.0.1:{port}/__replayops/status")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/price?item=apple", timeout=5) as answer:
            assert json.load(answer) == {"price": 2}
        assert pod.wait(30) == 0
    finally:
        pod.kill()
    done = get(cluster, namespace, "mocks")
    assert done["status"]["phase"] == "Succeeded" and done["status"]["summary"]["mockMatchRate"] == 1
    assert health(script(GROUP, "TrafficReplay"), done) == {
        "status": "Healthy", "message": "Replay finished: 100.0% of mock requests matched"}


def test_a_workload_target_resolves_to_the_service_selecting_it_or_fails_the_replay_naming_it(
        cluster: Cluster, namespace: str, jobs: ReplayJobs, home: Path) -> None:
    labels = {"app": "quote"}
    cluster.kube.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "quote",
                                                                                     "namespace": namespace},
                         "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                                      {"name": "app", "image": "shop/quote:1",
                                       "ports": [{"name": "http", "containerPort": 8080}]}]}}}})
    lonely = replay(cluster, namespace, "lonely", {"workloadRef": {"kind": "Deployment", "name": "quote"}})
    jobs.sync()
    ran = run_pod(cluster, cluster.kube.get("batch/v1", "Job", job_name(lonely), jobs.config.namespace) or {}, home)
    assert ran.returncode == 2
    failed = get(cluster, namespace, "lonely")["status"]
    assert failed["phase"] == "Failed" and failed["conditions"][0]["reason"] == "ReplayFailed"
    assert f"no Service in {namespace} selects Deployment quote" in failed["conditions"][0]["message"]

    cluster.kube.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "quote", "namespace": namespace},
                         "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}})
    spec = {"target": {"workloadRef": {"kind": "Deployment", "name": "quote", "port": 8080}}}
    assert targets.resolve(cluster.kube, namespace, spec) == f"http://quote.{namespace}.svc:80"
    with pytest.raises(targets.TargetError, match="on port 9999"):
        targets.resolve(cluster.kube, namespace, {"target": {"workloadRef": {"name": "quote", "port": 9999}}})
    with pytest.raises(targets.TargetError, match=f"Deployment {namespace}/gone does not exist"):
        targets.resolve(cluster.kube, namespace, {"target": {"workloadRef": {"name": "gone"}}})


def test_a_replay_reads_only_its_namespaces_snapshots_unless_one_is_shared_with_it(
        cluster: Cluster, namespace: str, jobs: ReplayJobs, service: str, home: Path) -> None:
    from controller import snapshots
    store = FileStore(home / "store")
    store.write_snapshot(Manifest(name="theirs", namespace="payments"), store.read("quotes"))
    store.write_snapshot(Manifest(name="imported", source="import calls.har"), store.read("quotes"))
    created = replay(cluster, namespace, "peek", {"url": service}, snapshot="theirs")
    jobs.sync()
    ran = run_pod(cluster, cluster.kube.get("batch/v1", "Job", job_name(created), jobs.config.namespace) or {}, home)
    status = get(cluster, namespace, "peek")["status"]
    assert ran.returncode != 0 and status["phase"] == "Failed", ran.stderr
    assert "snapshot 'theirs' in the store is namespace payments's and not shared with namespace " \
        f"{namespace}; share it with: replayops snapshot share theirs --with {namespace}" \
        in status["conditions"][0]["message"]
    with pytest.raises(snapshots.SnapshotNotReady, match="made outside the cluster and not shared"):
        snapshots.resolve(cluster.kube, namespace, "imported", store)
    assert snapshots.resolve(cluster.kube, namespace, "quotes", store) == "quotes", "its own namespace's"
    shared = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "--store", str(home / "store"),
                             "share", "theirs", "--with", namespace], capture_output=True, text=True, timeout=60)
    assert shared.returncode == 0 and f"replays of: {namespace} (and payments, its own)" in shared.stdout
    assert snapshots.resolve(cluster.kube, namespace, "theirs", store) == "theirs"
    with pytest.raises(snapshots.SnapshotNotReady, match="not shared with namespace other"):
        snapshots.resolve(cluster.kube, "other", "theirs", store)
    store.share("imported", ["*"])
    assert snapshots.resolve(cluster.kube, "other", "imported", store) == "imported"
    bad = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "--store", str(home / "store"),
                          "share", "theirs", "--with", "../x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'../x' is not a DNS-1123 label" in bad.stderr
