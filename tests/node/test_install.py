"""replayops installed from manifests/ as a user would (the dev overlay, the image built here), running in
pods with its real ServiceAccounts: the webhook, the controller (two replicas, one leader) and the forwarder."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import paths
from controller.api import API_VERSION, CAPTURE, INJECTED, PROXY, SNAPSHOT, SYSTEM_NAMESPACE
from controller.capture.filters import Filter
from controller.devcluster import host, install
from controller.gitops.replayjobs import job_name
from controller.kube import KubeError
from controller.store import read_stream_segment
from tests.gitrepo import Repo, git_daemon
from tests.node.conftest import NodeCluster, job_outcome, python_job, wait_available


def kustomization(tmp: Path, image: str) -> Path:
    """What a user writes to install the dev overlay with their own image tag."""
    return install.kustomization(tmp, paths.source_dir("manifests") / "overlays" / "dev", image)


@pytest.fixture(scope="module")
def installed(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    base = tmp_path_factory.mktemp("git")
    repo = Repo(base / "repo")
    repo.commit("seed", {"README.md": "policies and replays\n",  # the team's namespace too, as a team's repo has
                         "namespace.yaml": f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"})
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")  # the inspector pushes its commits here
    with git_daemon(base, host.NODE_IP, push=True) as port:  # where pods reach it, as a git server
        node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}})
        node.kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "replayops-source", "namespace": SYSTEM_NAMESPACE},
                         "data": {"repo": f"git://{host.NODE_IP}:{port}/repo"}})
        out = node.kubectl("apply", "--server-side", "-k", str(kustomization(tmp_path_factory.mktemp("k"),
                                                                              node.image)))
        assert out.returncode == 0, out.stderr
        yield repo


@pytest.mark.parametrize(("name", "replicas"), [("replayops-webhook", 2), ("replayops-controller", 2),
                                                ("replayops-forwarder", 2)])
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
    leader = node.kube.get("v1", "Pod", lease["spec"]["holderIdentity"], SYSTEM_NAMESPACE) or {}
    metrics = urllib.request.urlopen(f"http://{leader['status']['podIP']}:9090/metrics", timeout=10).read().decode()
    assert "replayops_revisions_total" in metrics, "the metrics port the Service names is served"



def test_each_component_pod_is_selected_by_a_network_policy_opening_its_ports(node: NodeCluster,
                                                                            installed: Repo) -> None:
    for name in ("replayops-webhook", "replayops-controller", "replayops-forwarder"):
        wait_available(node, SYSTEM_NAMESPACE, name, timeout=240)
    policies = node.kube.list("networking.k8s.io/v1", "NetworkPolicy", SYSTEM_NAMESPACE)
    for pod in node.kube.list("v1", "Pod", SYSTEM_NAMESPACE, label_selector="app.kubernetes.io/part-of=replayops"):
        labels = pod["metadata"]["labels"]
        chosen = [p for p in policies if all(labels.get(k) == v for k, v in
                                             p["spec"]["podSelector"]["matchLabels"].items())]
        assert chosen, f"pod {pod['metadata']['name']} is selected by no NetworkPolicy"
        served = {port["containerPort"] for c in pod["spec"]["containers"] for port in c.get("ports") or []}
        opened = {port["port"] for p in chosen for rule in p["spec"].get("ingress") or []
                  for port in rule.get("ports") or []}
        assert served <= opened, f"{pod['metadata']['name']} serves {served}, its policies open {opened}"


POLICY = """apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {{name: demo-server, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: demo-server}}}}
  inbound: {{mode: reverse, ports: [8080]}}
  outbound: {{enabled: true}}
  filters: {{exclude: [{{paths: [/skip]}}]}}
  sampling: 0.5
  dlp: {{patterns: [{{type: custom, name: order, regex: "ORDER-[0-9]{{6}}"}}]}}
"""
NS = "team-web"


def apply_demo(node: NodeCluster, tmp: Path, namespace: str) -> None:
    """examples/demo/k8s/app in ``namespace`` with the image built here, applied by the team's own tool."""
    app = paths.source_dir("examples") / "demo" / "k8s" / "app"
    node.kubectl("apply", "--server-side", "-k", str(install.kustomization(tmp, app, node.image, namespace)),
                 check=True)


def rolled_with_sidecar(node: NodeCluster, namespace: str, app: str, timeout: float = 240) -> list[dict[str, Any]]:
    """Wait until every live pod of ``app`` carries the sidecar and is Ready, and its Service routes to
    exactly them; return them."""
    try:
        ready = node.kube.wait_for(f"the pods of {app} rolled with the sidecar and Ready",
                                   lambda: install.captured_pods(node.kube, namespace, app), timeout=timeout,
                                   interval=1)
    except KubeError:
        seen = [(p["metadata"]["name"], p["metadata"].get("annotations"), p.get("status"))
                for p in node.kube.list("v1", "Pod", namespace, label_selector=f"app={app}")]
        status = node.kube.get("v1", "ConfigMap", "replayops-status-default", SYSTEM_NAMESPACE)
        raise AssertionError(f"pods: {seen}\nsource status: {(status or {}).get('data')}") from None
    ips = {p["status"]["podIP"] for p in ready}

    def serving() -> set[str] | None:  # the Service routes to them (kube-proxy follows the slices)
        slices = node.kube.list("discovery.k8s.io/v1", "EndpointSlice", namespace,
                                label_selector=f"kubernetes.io/service-name={app}")
        got = {a for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
               for a in e["addresses"]}
        return got if got == ips else None
    node.kube.wait_for(f"the Service {app} routes to the injected pods", serving, timeout=60, interval=0.5)
    return ready


@pytest.fixture(scope="module")
def captured(node: NodeCluster, installed: Repo, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[dict[str, Any]]]:
    """The demo app (applied with the team's own tool) that a CapturePolicy committed to git captures;
    yields the server's pods once they rolled with the sidecar and are Ready."""
    wait_available(node, SYSTEM_NAMESPACE, "replayops-webhook", timeout=240)
    node.kube.wait_for(f"namespace {NS} created by the controller from git", lambda: node.kube.get(
        "v1", "Namespace", NS), timeout=240, interval=1)
    apply_demo(node, tmp_path_factory.mktemp("demo"), NS)
    installed.commit(f"capture {NS}/demo-server", {f"policies/{NS}.yaml": POLICY.format(ns=NS)})
    yield rolled_with_sidecar(node, NS, "demo-server")
    node.kube.delete("v1", "Namespace", NS)


def test_a_policy_committed_to_git_gets_the_workload_captured_by_the_webhook_in_its_pods(
        node: NodeCluster, captured: list[dict[str, Any]]) -> None:
    sidecar = next(c for c in captured[0]["spec"]["initContainers"] if c["name"] == PROXY)
    assert sidecar["image"] == node.image  # the webhook's own image, as kustomize images: set it
    assert sidecar["restartPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in captured[0]["spec"]["containers"][0].get("env") or []}
    assert env["HTTP_PROXY"] == "http://127.0.0.1:15002", "the app's outbound calls go through the sidecar"


def _store_volume(node: NodeCluster) -> Path:
    """The store's volume on the node's disk (the hostPath of the volume bound to its claim)."""
    claim = node.kube.get("v1", "PersistentVolumeClaim", "replayops-store", SYSTEM_NAMESPACE) or {}
    volume = node.kube.get("v1", "PersistentVolume", claim.get("spec", {}).get("volumeName", "")) or {}
    return Path(volume["spec"]["hostPath"]["path"]) if volume else Path("/nonexistent")


def _store_records(node: NodeCluster) -> list[dict[str, Any]]:
    """Every record in the store's volume, read from the node's disk: each copy, of whole batches (a batch
    the forwarder is writing now is read once it is whole)."""
    return [record for segment in (_store_volume(node) / "store" / "streams").rglob("*.jsonl.gz")
            for record in read_stream_segment(segment)]


CLIENT = """
    import time, urllib.error, urllib.request

    def get(path):
        # kube-proxy programs the Service's endpoints shortly after the slice lists them: until then a
        # request may meet a removed pod's address and be refused (never reaching a sidecar, never recorded)
        for _ in range(60):
            try:
                return urllib.request.urlopen("http://demo-server.{ns}.svc" + path, timeout=10).read()
            except urllib.error.URLError as err:
                if isinstance(err, urllib.error.HTTPError) or not isinstance(err.reason, ConnectionRefusedError):
                    raise
                time.sleep(0.5)
        raise SystemExit("demo-server.{ns}.svc refused connections for 30 s")

    try:  # first (the sidecar sends in order): a path the policy filters out, and the app answers 404
        get("/skip?order=ORDER-999999")
        raise SystemExit("/skip answered 200")
    except urllib.error.HTTPError as err:
        assert err.code == 404, err.code
    for i in range({quotes}):
        get("/api/quote?item=apple&order=ORDER-12345" + str(i))
"""
QUOTES = 40  # each makes one outbound call: 2 x 40 pairs and /skip's, half of them sampled



@pytest.fixture(scope="module")
def traffic(node: NodeCluster, captured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A client pod's requests through the sidecar, once the forwarder stored them: the store's records."""
    node.kube.apply(python_job("client", NS, node.image, CLIENT.format(ns=NS, quotes=QUOTES)))
    ok, log = job_outcome(node, NS, "client", timeout=180)
    assert ok, log

    def judged() -> list[dict[str, Any]] | None:  # every pair sent is stored or counted filtered
        records = [r for r in _store_records(node) if r["service"].startswith("demo-server-")]
        return records if len(records) + _filtered(node) >= 2 * QUOTES + 1 else None
    return node.kube.wait_for("every pair sent stored or filtered", judged, timeout=120, interval=1)


def _metric(url: str, name: str) -> int:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(name))


def _forwarder_filtered(node: NodeCluster) -> int:
    """The forwarder pods' count of pairs their policies' filters and sampling dropped (their /metrics)."""
    return sum(_metric(f"http://{p['status']['podIP']}:8090/metrics",
                       'replayops_forwarder_records_total{outcome="filtered"}')
               for p in node.kube.list("v1", "Pod", SYSTEM_NAMESPACE, label_selector=(
                   "app.kubernetes.io/name=replayops-forwarder"))
               if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp"))


def _sidecars_filtered(node: NodeCluster) -> int:
    """What the demo server's sidecars dropped before recording, by the policy the forwarder answered with."""
    return sum(_metric(f"http://{p['status']['podIP']}:15020/metrics", "replayops_capture_pairs_filtered_total")
               for p in node.kube.list("v1", "Pod", NS, label_selector="app=demo-server")
               if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp"))


def _filtered(node: NodeCluster) -> int:
    return _forwarder_filtered(node) + _sidecars_filtered(node)


def test_traffic_through_the_sidecar_reaches_the_store_shaped_by_the_policy_the_forwarder_reads(
        node: NodeCluster, traffic: list[dict[str, Any]]) -> None:
    raw = urllib.parse.unquote(json.dumps(traffic))  # query values are stored percent-encoded
    assert "ORDER-12345" not in raw, "the policy's custom DLP pattern, read from the cluster, redacts it"
    assert (_store_volume(node) / "store").is_dir() and not (_store_volume(node) / "dlp.key").exists(), \
        "the DLP key is the forwarder's Secret, not on the volume the inspector and replay Jobs mount"
    assert "[redacted:order:" in raw
    # the /skip pair was sent before the others: it was filtered, not pending
    assert not [r for r in traffic if "/skip" in r["request"]["url"]], "the policy's filter drops /skip"
    calls = [r for r in traffic if r["direction"] == "outbound"]
    assert {r["request"]["url"] for r in calls} == {"http://demo-dependency:9090/price?item=apple"}
    sampled = Filter(sampling=0.5)  # deterministic by pair id: the forwarder kept exactly these
    assert all(sampled.sampled(r) for r in traffic), "a pair the policy's sampling drops was stored"
    assert 0 < len(traffic) < 2 * QUOTES, "the policy's sampling (0.5) kept some pairs and dropped others"
    assert _filtered(node) == 2 * QUOTES + 1 - len(traffic), "/skip and the sampled-out ones"
    assert _sidecars_filtered(node) > 0, "the sidecar applied the policy the forwarder answered with"
    by_pod = {seg.parent.name: {r["service"] for r in read_stream_segment(seg)}
              for seg in (_store_volume(node) / "store" / "streams").rglob("*.jsonl.gz")
              if seg.parent.name.startswith(f"{NS}.")}
    assert by_pod and all(pods == {stream.rpartition(".")[2]} and stream == f"{NS}.demo-server.{pods.pop()}"
                          for stream, pods in by_pod.items()), \
        f"the forwarder named each stream by the pod its ServiceAccount token is bound to: {by_pod}"


SNAPSHOT_YAML = """apiVersion: replayops.dev/v1alpha1
kind: Snapshot
metadata: {{name: {name}, namespace: {ns}}}
spec:
  policy: {policy}
  window: {{last: 1h}}
"""
REPLAY = """apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata: {{name: {name}, namespace: {ns}}}
spec:
  snapshot: quotes
  target: {{workloadRef: {{name: demo-server}}}}
  mode: {mode}
  assertions: {{body: {{compare: json, ignorePaths: [$.ts]}}}}
  goals: {{minSuccessRate: 1}}
  timeout: 3m
"""


def _finished(node: NodeCluster, kind: str, name: str, phases: tuple[str, ...], timeout: float = 180
              ) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = node.kube.get(API_VERSION, kind, name, NS) or {}
        return obj if (obj.get("status") or {}).get("phase") in phases else None
    try:
        return node.kube.wait_for(f"{kind} {NS}/{name} {'/'.join(phases)}", done, timeout=timeout, interval=1)
    except KubeError:
        obj = node.kube.get(API_VERSION, kind, name, NS) or {}
        jobs = [(j["metadata"]["name"], j.get("status")) for j in node.kube.list("batch/v1", "Job", SYSTEM_NAMESPACE)]
        raise AssertionError(f"{kind} {name}: {obj.get('status')}\njobs: {jobs}") from None


@pytest.fixture(scope="module")
def snapshot(node: NodeCluster, installed: Repo, traffic: list[dict[str, Any]]) -> dict[str, Any]:
    installed.commit("snapshot quotes", {f"snapshots/{NS}.yaml": SNAPSHOT_YAML.format(name="quotes", ns=NS,
                                                                                policy="demo-server")})
    return _finished(node, "Snapshot", "quotes", ("Ready", "Failed"))


def test_a_snapshot_committed_to_git_is_cut_in_a_job_pod_with_the_pairs_of_its_window(
        node: NodeCluster, snapshot: dict[str, Any]) -> None:
    status = snapshot["status"]
    assert status["phase"] == "Ready", status
    recorded = [r for r in _store_records(node) if r["service"].startswith("demo-server-")]
    assert status["pairs"] == len(recorded) >= 10, "every pair the policy recorded in the last hour"
    assert status["byDirection"]["outbound"] == len([r for r in recorded if r["direction"] == "outbound"])
    assert status["storeName"] == f"{NS}.quotes" and status["bytes"] > 0
    def cut_by_job() -> dict[str, Any] | None:  # the pod writes the status, then exits
        return next((j for j in node.kube.list("batch/v1", "Job", SYSTEM_NAMESPACE)
                     if j["metadata"]["annotations"].get(SNAPSHOT) == f"{NS}/quotes"
                     and (j.get("status") or {}).get("succeeded") == 1), None)
    node.kube.wait_for("the snapshot's Job succeeded (cut in its pod, on the store's volume)", cut_by_job,
                       timeout=60, interval=0.5)


def test_a_snapshot_naming_an_unknown_policy_is_refused_by_the_webhook_naming_the_field(
        node: NodeCluster, snapshot: dict[str, Any]) -> None:
    out = node.kubectl("apply", "-f", "-", input=SNAPSHOT_YAML.format(name="nothing", ns=NS, policy="no-such-policy"))
    assert out.returncode != 0
    assert "spec.policy" in out.stderr and "CapturePolicy team-web/no-such-policy does not exist" in out.stderr


def test_a_replay_committed_to_git_runs_as_a_job_pod_against_the_service_and_succeeds(
        node: NodeCluster, installed: Repo, snapshot: dict[str, Any]) -> None:
    installed.commit("replay smoke", {f"replays/{NS}-smoke.yaml": REPLAY.format(name="smoke", ns=NS,
                                                                               mode="tests-only")})
    done = _finished(node, "TrafficReplay", "smoke", ("Succeeded", "Failed"))
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    inbound = snapshot["status"]["byDirection"]["inbound"]
    assert status["summary"]["requests"] == inbound and status["summary"]["successRate"] == 1
    assert status["reportRef"]["id"] and status["reportRef"]["path"].startswith("/var/lib/replayops/")
    node.kube.wait_for("the replay's Job succeeded (it ran in the Job's pod)", lambda: (
        (node.kube.get("batch/v1", "Job", job_name(done), SYSTEM_NAMESPACE) or {}).get("status") or {}
    ).get("succeeded") == 1 or None, timeout=60, interval=0.5)


def test_a_changed_build_makes_the_replay_fail_naming_the_differing_field(
        node: NodeCluster, installed: Repo, snapshot: dict[str, Any]) -> None:
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/command/-", "value": v}
             for v in ("--variant", "discount")]
    node.kubectl("-n", NS, "patch", "deployment", "demo-server", "--type=json", "-p", json.dumps(patch), check=True)
    node.kubectl("-n", NS, "rollout", "status", "deployment/demo-server", "--timeout=180s", check=True)
    rolled_with_sidecar(node, NS, "demo-server")
    installed.commit("replay discount", {f"replays/{NS}-discount.yaml": REPLAY.format(name="discount", ns=NS,
                                                                                     mode="tests-only")})
    status = _finished(node, "TrafficReplay", "discount", ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Failed", status
    message = status["conditions"][0]["message"]
    assert "minSuccessRate" in message and "$.total: recorded 3, got 2.7" in message


def test_a_mocks_only_replay_serves_the_recorded_calls_through_its_service_to_a_client_pod(
        node: NodeCluster, installed: Repo, snapshot: dict[str, Any]) -> None:
    installed.commit("mocks", {f"replays/{NS}-mocks.yaml": REPLAY.format(name="mocks", ns=NS, mode="mocks-only")})
    served = _finished(node, "TrafficReplay", "mocks", ("Running", "Succeeded", "Failed"))
    assert served["status"]["phase"] == "Running", served["status"]
    url = f"http://{job_name(served)}.{SYSTEM_NAMESPACE}.svc:9300/price?item=apple"
    code = f"""
        import json, time, urllib.request
        for _ in range(60):  # the Service answers once the responder's pod is Ready
            try:
                body = json.load(urllib.request.urlopen({url!r}, timeout=5))
                break
            except OSError:
                time.sleep(1)
        else:
            raise SystemExit("the mocks never answered")
        assert body == {{"item": "apple", "price": 3}}, body
    """
    node.kube.apply(python_job("mock-client", NS, node.image, code))
    ok, log = job_outcome(node, NS, "mock-client", timeout=120)
    assert ok, log


TRANSPARENT = """apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {{name: demo-server, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: demo-server}}}}
  inbound: {{mode: transparent, ports: [8080]}}
"""


BULK_POLICY = """apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {{name: bulk, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: bulk}}}}
  inbound: {{mode: reverse, ports: [8080]}}
"""
BULK_SERVER = """
    import http.server, threading
    CHUNK = bytes(range(256)) * 256
    acked = threading.Event()

    class Bulk(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path == "/ack":
                acked.set()
                return self._small(b"ok")
            if self.path == "/healthz" or self.path.startswith("/hello/"):
                return self._small(b"ok")
            if self.path == "/events":  # one event; the second only once the client says it has the first
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"data: first\\n\\n")
                self.wfile.flush()
                if acked.wait(60):
                    self.wfile.write(b"data: second\\n\\n")
                self.close_connection = True
                return
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for _ in range(size // len(CHUNK)):
                self.wfile.write(CHUNK)

        def _small(self, body):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Bulk).serve_forever()
"""
BULK_CLIENT = """
    import hashlib, http.client
    CHUNK = bytes(range(256)) * 256
    SIZE = 1 << 30
    conn = http.client.HTTPConnection("bulk.{ns}.svc", 80, timeout=60)
    conn.request("GET", f"/download/{{SIZE}}")
    resp = conn.getresponse()
    want, got, size = hashlib.sha256(), hashlib.sha256(), 0
    for _ in range(SIZE // len(CHUNK)):
        want.update(CHUNK)
    while piece := resp.read(1 << 20):
        got.update(piece)
        size += len(piece)
    assert resp.status == 200 and size == SIZE and got.digest() == want.digest(), (resp.status, size)
    print("download: 1 GiB byte for byte")
    events = http.client.HTTPConnection("bulk.{ns}.svc", 80, timeout=30)
    events.request("GET", "/events")
    stream = events.getresponse()
    assert stream.readline() == b"data: first\\n", "the first event did not come before the stream ended"
    ack = http.client.HTTPConnection("bulk.{ns}.svc", 80, timeout=30)
    ack.request("GET", "/ack")
    assert ack.getresponse().read() == b"ok"
    assert stream.read() == b"\\ndata: second\\n\\n"
    print("events: each as it was sent")
"""


def _container_memory_peak(pod: dict[str, Any], container: str) -> int:
    """The most memory the container's cgroup (v1, cgroupfs: this node's) ever used, in bytes."""
    status = next(s for s in (pod["status"].get("initContainerStatuses") or []) + pod["status"]["containerStatuses"]
                  if s["name"] == container)
    cid = status["containerID"].rpartition("/")[2]
    found = list(Path("/sys/fs/cgroup/memory").glob(f"kubepods*/**/pod{pod['metadata']['uid']}/{cid}"))
    assert len(found) == 1, f"the cgroup of {container} in pod {pod['metadata']['name']}: {found}"
    return int((found[0] / "memory.max_usage_in_bytes").read_text())


@pytest.fixture(scope="module")
def bulk(node: NodeCluster, installed: Repo, captured: list[dict[str, Any]]) -> dict[str, Any]:
    """A workload that serves a 1 GiB download, an event stream and small answers, captured as a policy
    committed to git asks (no filters, no sampling); its pod once rolled with the sidecar."""
    server = python_job("unused", NS, node.image, BULK_SERVER)["spec"]["template"]["spec"]
    server["restartPolicy"] = "Always"
    server["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    server["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
    team = "team-web-deploy"  # the team's own tool (the converger's manager owns only what it sets)
    node.kube.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bulk", "namespace": NS},
                     "spec": {"selector": {"matchLabels": {"app": "bulk"}},
                              "template": {"metadata": {"labels": {"app": "bulk"}}, "spec": server}}},
                    field_manager=team)
    node.kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bulk", "namespace": NS},
                     "spec": {"selector": {"app": "bulk"}, "ports": [{"port": 80, "targetPort": 15001}]}},
                    field_manager=team)
    installed.commit(f"capture {NS}/bulk", {f"policies/{NS}-bulk.yaml": BULK_POLICY.format(ns=NS)})
    return rolled_with_sidecar(node, NS, "bulk")[0]


def test_a_1_gib_download_and_server_sent_events_pass_the_injected_sidecar_within_half_its_memory_limit(
        node: NodeCluster, bulk: dict[str, Any]) -> None:
    """Through the bulk workload's sidecar (as injected, with its memory limit) a 1 GiB download and an event
    stream reach a client pod whole and as sent, and the sidecar's container used less than half its
    memory limit."""
    pod = bulk
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == PROXY)
    limit = sidecar["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit

    node.kube.apply(python_job("bulk-client", NS, node.image, BULK_CLIENT.format(ns=NS)))
    ok, log = job_outcome(node, NS, "bulk-client", timeout=300)
    assert ok, log
    assert "download: 1 GiB byte for byte" in log and "events: each as it was sent" in log
    pod = node.kube.get("v1", "Pod", pod["metadata"]["name"], NS)
    peak = _container_memory_peak(pod, PROXY)
    assert peak < (int(limit[:-2]) << 20) // 2, f"the sidecar used {peak >> 20} MiB of its {limit}"
    stored = node.kube.wait_for("the download's pair stored", lambda: [
        r for r in _store_records(node) if r["request"]["url"].endswith("/download/1073741824")], timeout=60)
    assert stored[0]["response"]["truncated"] == 1 << 30


HELLO_CLIENT = """
    import time, urllib.request
    for i in range({n}):
        assert urllib.request.urlopen(f"http://bulk.{ns}.svc/hello/{{i}}", timeout=10).read() == b"ok"
        time.sleep(0.02)
    print("sent")
"""


def test_the_forwarder_gone_mid_traffic_loses_no_pair_and_stores_none_twice(
        node: NodeCluster, bulk: dict[str, Any]) -> None:
    """Every forwarder replica gone (scaled to zero) while a client's requests flow through the sidecar,
    then back: the sidecar keeps what it could not deliver and retries it with backoff, and every pair is
    stored exactly once."""
    n = 400
    sidecar = node.kube.get("v1", "Pod", bulk["metadata"]["name"], NS) or {}
    metrics = f"http://{sidecar['status']['podIP']}:15020/metrics"
    scale = ("-n", SYSTEM_NAMESPACE, "scale", "deploy/replayops-forwarder")
    node.kubectl(*scale, "--replicas=0", check=True)
    try:
        node.kube.wait_for("every forwarder pod gone", lambda: not node.kube.list(
            "v1", "Pod", SYSTEM_NAMESPACE, label_selector="app.kubernetes.io/name=replayops-forwarder"),
            timeout=120, interval=0.5)
        node.kube.apply(python_job("hello-client", NS, node.image, HELLO_CLIENT.format(n=n, ns=NS)))
        node.kube.wait_for("the sidecar retrying while no forwarder answers", lambda: _metric(
            metrics, "replayops_capture_batch_retries_total") > 0, timeout=90, interval=0.5)
    finally:
        node.kubectl(*scale, "--replicas=2", check=True)
        wait_available(node, SYSTEM_NAMESPACE, "replayops-forwarder", timeout=180)
    ok, log = job_outcome(node, NS, "hello-client", timeout=180)
    assert ok and "sent" in log, log

    def hellos() -> list[dict[str, Any]] | None:
        got = [r for r in _store_records(node) if "/hello/" in r["request"]["url"]]
        return got if len(got) >= n else None
    try:
        stored = node.kube.wait_for(f"all {n} pairs stored", hellos, timeout=120, interval=1)
    except KubeError:
        got = {r["request"]["url"].rpartition("/")[2] for r in _store_records(node) if "/hello/" in r["request"]["url"]}
        raise AssertionError(f"{n - len(got)} pairs lost: {sorted(set(map(str, range(n))) - got)[:20]}") from None
    assert sorted(int(r["request"]["url"].rpartition("/")[2]) for r in stored) == list(range(n)), "each once"
    assert _metric(metrics, "replayops_capture_pairs_dropped_total") == 0, "nothing dropped"


def test_transparent_capture_redirects_the_apps_port_with_the_init_containers_iptables(
        node: NodeCluster, installed: Repo, captured: list[dict[str, Any]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    ns = "team-tp"
    node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    apply_demo(node, tmp_path_factory.mktemp("demo-tp"), ns)
    direct = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo-direct", "namespace": ns},
              "spec": {"selector": {"app": "demo-server"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    node.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(direct), check=True)
    installed.commit(f"capture {ns} transparently", {f"policies/{ns}.yaml": TRANSPARENT.format(ns=ns)})
    pods = rolled_with_sidecar(node, ns, "demo-server")
    sidecar = next(c for c in pods[0]["spec"]["initContainers"] if c["name"] == PROXY)
    assert "startupProbe" not in sidecar, "inbound only: the app starts beside the proxy, not after it"
    init = next(c for c in pods[0]["spec"]["initContainers"] if c["name"] == "replayops-init")
    assert init["args"] == ["iptables", "--proxy-port", "15001", "--ports", "8080"]
    assert "NET_ADMIN" in init["securityContext"]["capabilities"]["add"]
    done = next(s for s in pods[0]["status"]["initContainerStatuses"] if s["name"] == "replayops-init")
    assert done["state"]["terminated"]["exitCode"] == 0, "its iptables ran in the pod's network namespace"
    code = f"""
        import time, urllib.request
        served = 0
        for i in range(60):  # the app's own port: the pod's nat table sends it to the sidecar
            try:
                urllib.request.urlopen("http://demo-direct.{ns}.svc/api/quote?item=fig&n=" + str(i), timeout=5).read()
                served += 1
                if served >= 20:  # spread over 10 s: a replaced pod kube-proxy still routes to answers
                    break         # unrecorded for a moment, the rest go through the sidecar
            except OSError as err:
                print("request", i, err)
            time.sleep(0.5)
        assert served >= 20, "demo-direct answered " + str(served) + " of 60"
    """
    node.kube.apply(python_job("client", ns, node.image, code))
    ok, log = job_outcome(node, ns, "client", timeout=180)
    assert ok, log
    try:
        node.kube.wait_for("the redirected requests in the store", lambda: [
            r for r in _store_records(node) if "item=fig" in r["request"]["url"]
            and r["tags"].get("mode") == "transparent"], timeout=120, interval=1)
    except KubeError:
        forwarder = node.kubectl("-n", SYSTEM_NAMESPACE, "logs", "deploy/replayops-forwarder", "--tail=30").stdout
        proxy = node.logs(ns, pods[0]["metadata"]["name"], PROXY)[-3000:]
        raise AssertionError(f"client: {log}\nsidecar: {proxy}\nforwarder: {forwarder}") from None


def _owner_events(node: NodeCluster, ns: str, reason: str) -> list[dict[str, Any]]:
    return node.kube.wait_for(f"a {reason} Event in {ns}", lambda: [  # type: ignore[no-any-return]
        e for e in node.kube.list("v1", "Event", ns) if e.get("reason") == reason], timeout=60, interval=1)


def test_a_restricted_namespace_gets_transparent_capture_in_reverse_mode_and_its_pods_run(
        node: NodeCluster, installed: Repo, captured: list[dict[str, Any]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    ns = "team-psa"
    node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    apply_demo(node, tmp_path_factory.mktemp("demo-psa"), ns)
    installed.commit(f"capture {ns} transparently", {f"policies/{ns}.yaml": TRANSPARENT.format(ns=ns)})
    pods = rolled_with_sidecar(node, ns, "demo-server")
    names = [c["name"] for c in pods[0]["spec"]["initContainers"]]
    assert names == [PROXY], "no NET_ADMIN init container where the namespace forbids it"
    assert "--reverse" in pods[0]["spec"]["initContainers"][0]["args"]
    event = _owner_events(node, ns, "CaptureDegraded")[0]
    assert event["involvedObject"]["kind"] == "ReplicaSet" and "Pod Security level restricted" in event["message"]
    code = f"""
        import urllib.request
        for i in range(3):  # the demo's Service targets the proxy port, so reverse mode still records
            urllib.request.urlopen("http://demo-server.{ns}.svc/api/quote?item=fig&psa=" + str(i), timeout=10).read()
    """
    node.kube.apply(python_job("client", ns, node.image, code, backoff=3))
    ok, log = job_outcome(node, ns, "client", timeout=180)
    assert ok, log
    node.kube.wait_for("the reverse-mode requests in the store", lambda: [
        r for r in _store_records(node) if "psa=" in r["request"]["url"]], timeout=120, interval=1)


def test_a_quota_too_small_for_the_sidecar_gets_the_pods_created_without_it_and_an_event(
        node: NodeCluster, installed: Repo, captured: list[dict[str, Any]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    ns = "team-quota"
    node.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # the demo's two pods ask 32Mi each: a third fits alone, not with the sidecar's 64Mi
    node.kube.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "tight", "namespace": ns},
                     "spec": {"hard": {"requests.memory": "150Mi"}}})
    node.kube.wait_for("quota tight observed", lambda: ((node.kube.get("v1", "ResourceQuota", "tight", ns) or {})
                                                        .get("status") or {}).get("hard"), timeout=60)
    apply_demo(node, tmp_path_factory.mktemp("demo-quota"), ns)
    wait_available(node, ns, "demo-server")
    installed.commit(f"capture {ns}", {f"policies/{ns}.yaml": TRANSPARENT.format(ns=ns)})

    def rolled() -> list[dict[str, Any]] | None:
        pods = [p for p in node.kube.list("v1", "Pod", ns, label_selector="app=demo-server")
                if CAPTURE in (p["metadata"].get("annotations") or {})]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in (p.get("status") or {}).get("conditions") or [])]
        return ready or None
    pod = node.kube.wait_for("the demo's pod rolled for the policy and Ready", rolled, timeout=240, interval=1)[0]
    assert INJECTED not in pod["metadata"]["annotations"] and not pod["spec"].get("initContainers")
    event = _owner_events(node, ns, "CaptureSkipped")[0]
    assert "ResourceQuota tight has requests.memory 150Mi" in event["message"], event["message"]
    assert event["source"]["component"] == "replayops-webhook"


def _leader(node: NodeCluster) -> str:
    lease = node.kube.get("coordination.k8s.io/v1", "Lease", "replayops-controller-default", SYSTEM_NAMESPACE) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_when_the_leader_pod_goes_the_other_replica_takes_over_and_applies_the_next_commit_once(
        node: NodeCluster, installed: Repo, snapshot: dict[str, Any]) -> None:
    before = node.kube.wait_for("a leader", lambda: _leader(node), timeout=60)
    node.kubectl("-n", SYSTEM_NAMESPACE, "delete", "pod", before, "--wait=false", check=True)
    after = node.kube.wait_for("another replica holding the lease", lambda: (
        who if (who := _leader(node)) and who != before else None), timeout=90, interval=0.5)
    assert after.startswith("replayops-controller-")
    installed.commit("snapshot after failover", {f"snapshots/{NS}-ha.yaml": SNAPSHOT_YAML.format(
        name="after-failover", ns=NS, policy="demo-server")})
    assert _finished(node, "Snapshot", "after-failover", ("Ready", "Failed"))["status"]["phase"] == "Ready"
    later = installed.commit("a later commit")  # once applied, the leader has passed over the Snapshot again

    def applied() -> bool:
        data = (node.kube.get("v1", "ConfigMap", "replayops-status-default", SYSTEM_NAMESPACE) or {}).get("data") or {}
        return later in data.get("lastAppliedRevision", "")
    node.kube.wait_for("the later commit applied", applied, timeout=120, interval=0.5)
    jobs = [j for j in node.kube.list("batch/v1", "Job", SYSTEM_NAMESPACE)
            if j["metadata"]["annotations"].get(SNAPSHOT) == f"{NS}/after-failover"]
    assert len(jobs) == 1, "one Job: one writer"


def _scale_webhook(node: NodeCluster, replicas: int) -> None:
    node.kubectl("-n", SYSTEM_NAMESPACE, "scale", "deployment/replayops-webhook", f"--replicas={replicas}", check=True)
    if replicas:
        wait_available(node, SYSTEM_NAMESPACE, "replayops-webhook", timeout=180)
    else:
        node.kube.wait_for("no webhook pods", lambda: not node.kube.list(
            "v1", "Pod", SYSTEM_NAMESPACE, label_selector="app.kubernetes.io/name=replayops-webhook"), timeout=120)


def _captured_pod(node: NodeCluster, name: str) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": {"app": "outage-probe"},
                        "annotations": {CAPTURE: "demo-server"}},
           "spec": {"containers": [{"name": "app", "image": node.image, "imagePullPolicy": "Never",
                                    "command": ["sleep", "600"], "ports": [{"containerPort": 8080}]}]}}
    out = node.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(pod))
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_a_webhook_outage_admits_pods_without_the_sidecar_and_refuses_our_objects_clearly(
        node: NodeCluster, installed: Repo, captured: list[dict[str, Any]]) -> None:
    _scale_webhook(node, 0)
    try:
        down = _captured_pod(node, "during-outage")
        assert INJECTED not in (down["metadata"].get("annotations") or {}), "admitted, without the sidecar"
        refused = node.kubectl("apply", "-f", "-", input=REPLAY.format(name="outage", ns=NS, mode="tests-only"))
        assert refused.returncode != 0
        assert "replayops.dev" in refused.stderr and "replayops-webhook" in refused.stderr, refused.stderr
    finally:
        _scale_webhook(node, 2)
    up = node.kube.wait_for("injection back", lambda: (
        p if INJECTED in ((p := _captured_pod(node, f"after-outage-{int(time.time() * 1000) % 100000}"))
                          ["metadata"].get("annotations") or {}) else None), timeout=60, interval=2)
    assert any(c["name"] == PROXY for c in up["spec"]["initContainers"])


@pytest.fixture(scope="module")
def inspector(node: NodeCluster, installed: Repo, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The optional inspector component added to the installation; its pod's URL."""
    manifests = paths.source_dir("manifests")
    where = install.kustomization(tmp_path_factory.mktemp("k-inspector"), manifests / "overlays" / "dev",
                                  node.image, components=(manifests / "components" / "inspector",))
    node.kubectl("apply", "--server-side", "-k", str(where), check=True)
    wait_available(node, SYSTEM_NAMESPACE, "replayops-inspector", timeout=240)
    pod, = [p for p in node.kube.list("v1", "Pod", SYSTEM_NAMESPACE,
                                      label_selector="app.kubernetes.io/name=replayops-inspector")
            if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]
    return f"http://{pod['status']['podIP']}:8088"


def _press(url: str, action: str, fields: dict[str, str]) -> None:
    """Press a button of the inspector as a browser does: the page's CSRF token, a form POST."""
    import http.cookiejar
    import re
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{url}/workloads", timeout=30).read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token, page[:2000]
    body = urllib.parse.urlencode({**fields, "csrf": token[1]}).encode()
    with opener.open(urllib.request.Request(f"{url}{action}", data=body), timeout=60) as resp:
        answer = resp.read().decode()
        flashed = re.findall(r'class="flash[^"]*"[^>]*>([^<]*)<', answer)
        assert resp.status == 200 and "committed" in answer, flashed or answer[:2000]


def test_the_inspector_component_runs_in_its_pod_and_its_buttons_commit_to_git(
        node: NodeCluster, installed: Repo, captured: list[dict[str, Any]], inspector: str) -> None:
    import urllib.request

    page = urllib.request.urlopen(f"{inspector}/workloads?namespace={NS}", timeout=30).read().decode()
    assert "demo-server" in page and "demo-dependency" in page  # read with its own ServiceAccount
    secrets = urllib.request.Request(f"{inspector}/secrets")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(secrets, timeout=30)
    assert denied.value.code == 502 and "forbidden" in denied.value.read().decode().lower()
    form = {"namespace": NS, "kind": "Deployment", "name": "demo-dependency"}
    _press(inspector, "/actions/capture", {**form, "capture": "on"})
    assert installed.git("log", "-1", "--format=%an: %s") == \
        f"replayops inspector: Capture traffic of Deployment {NS}/demo-dependency"
    assert (installed.path / "policies" / NS / "demo-dependency.yaml").is_file(), "pushed into the repository"
    node.kube.wait_for("the controller marking demo-dependency captured by the inspector's policy", lambda: (
        ((node.kube.get("apps/v1", "Deployment", "demo-dependency", NS) or {}).get("spec", {}).get("template", {})
         .get("metadata", {}).get("annotations") or {}).get(CAPTURE) == "demo-dependency"), timeout=120, interval=1)
    _press(inspector, "/actions/capture", {**form, "capture": "off"})
    assert not (installed.path / "policies" / NS / "demo-dependency.yaml").exists()
    node.kube.wait_for("the CapturePolicy pruned after the inspector's second commit", lambda: node.kube.get(
        API_VERSION, "CapturePolicy", "demo-dependency", NS) is None, timeout=120, interval=1)
