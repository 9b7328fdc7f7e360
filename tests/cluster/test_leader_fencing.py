"""Leader election that fences, seen from the API server's audit log: a leader paused (SIGSTOP), one
partitioned from the API server (a TCP proxy between them), and one whose pass outlasts the lease —
never two writers. On a control plane of the test's own, with auditing on."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import schema
from controller.devcluster import DevCluster, ensure_binaries, stop_pid
from controller.kube import KubeError, connect
from tests.cluster.test_controller_process import wait
from tests.cluster.test_gitops import replay_yaml
from tests.conftest import Cluster
from tests.faultproxy import FaultProxy
from tests.gitrepo import Repo

API = "replayops.dev/v1alpha1"
TIMINGS = ("--lease-seconds", "4", "--renew-deadline", "2.5", "--retry-period", "0.5")
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
  verbs: [create, update, patch, delete]
- level: None
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    work = tmp_path_factory.mktemp("fencing")
    (work / "audit-policy.yaml").write_text(AUDIT_POLICY)
    dev = DevCluster(work / "cp", ensure_binaries(), controller_manager=False, apiserver_args=(
        f"--audit-policy-file={work / 'audit-policy.yaml'}", f"--audit-log-path={work / 'audit.log'}",
        "--audit-log-mode=blocking"))
    dev.start()
    try:
        connect(dev.kubeconfig).install_crds(schema.load_crds())
        yield dev
    finally:
        dev.stop()


def writers(dev: DevCluster, namespace: str) -> list[tuple[str, str]]:
    """(time the API server received it, controller identity) of every successful write a controller made
    in ``namespace``, in the server's order."""
    out = []
    for line in (dev.workdir.parent / "audit.log").read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # the line the API server is writing now
            continue
        agent, ref = event.get("userAgent", ""), event.get("objectRef") or {}
        if (event.get("stage") == "ResponseComplete" and agent.startswith("replayops-controller/")
                and ref.get("namespace") == namespace and (event.get("responseStatus") or {}).get("code", 500) < 300):
            out.append((event["requestReceivedTimestamp"], agent.rpartition("(")[2].rstrip(")")))
    return sorted(out)


class Scene:
    """Two controller replicas on one repository: ``a`` reaches the API server through a fault proxy,
    ``b`` directly; a drifter keeps editing a managed field, so whoever leads keeps writing."""

    def __init__(self, dev: DevCluster, tmp: Path, namespace: str) -> None:
        self.dev, self.tmp, self.ns = dev, tmp, namespace
        self.kube = connect(dev.kubeconfig)
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.repo = Repo(tmp / "repo")
        self.repo.commit("one", {"r1.yaml": replay_yaml("r1", copies=1)})
        self.proxy = FaultProxy(("127.0.0.1", dev.ports.apiserver))
        config = json.loads(json.dumps(_yaml(dev.kubeconfig)))
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.proxy.port}"
        (tmp / "via-proxy.kubeconfig").write_text(json.dumps(config))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._drifting = threading.Event()

    def start(self, identity: str, kubeconfig: Path) -> None:
        log = open(self.tmp / f"{identity}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[identity] = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "controller", "run", "--repo", self.repo.url, "--branch",
             "main", "--namespace", self.ns, "--status-namespace", self.ns, "--forwarder-namespace", self.ns,
             "--name", self.ns, "--kubeconfig",
             str(kubeconfig), "--cache", str(self.tmp / f"cache-{identity}"), "--interval", "1s", "--self-heal",
             "--no-replays", "--leader-elect", *TIMINGS, "--identity", identity],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def holder(self) -> str:
        try:
            lease = self.kube.get("coordination.k8s.io/v1", "Lease", f"replayops-controller-{self.ns}", self.ns)
        except KubeError:
            return ""
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def both_running_a_leading(self) -> None:
        self.start("a", self.tmp / "via-proxy.kubeconfig")
        wait("a to lead and apply", lambda: self.holder() == "a" and self._copies("r1") == 1)
        self.start("b", self.dev.kubeconfig)

    def _copies(self, name: str) -> int | None:
        try:
            tr = self.kube.get(API, "TrafficReplay", name, self.ns)
        except KubeError:
            return None
        return None if tr is None else int(tr["spec"]["load"]["copies"])

    def drift(self) -> None:
        """Edit r1's copies every 0.3 s from another client until ``stop_drift``."""
        def run() -> None:
            drifter = connect(self.dev.kubeconfig)
            while not self._drifting.wait(0.3):
                body = {"spec": {"load": {"copies": random.randint(2, 9)}}}
                path = f"/apis/{API}/namespaces/{self.ns}/trafficreplays/r1"
                with contextlib.suppress(KubeError):
                    drifter.call("PATCH", path, body=body, content_type="application/merge-patch+json",
                                 what="drift r1")
        threading.Thread(target=run, daemon=True).start()

    def stop_drift(self) -> None:
        self._drifting.set()

    def wrote(self, identity: str) -> bool:
        return any(who == identity for _, who in writers(self.dev, self.ns))

    def close(self) -> None:
        self.stop_drift()
        for proc in self.procs.values():
            with_signal(proc, signal.SIGCONT)
            stop_pid(proc.pid, timeout=10)
        self.proxy.close()


def _yaml(path: Path) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(path.read_text())


def with_signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


@pytest.fixture
def scene(audited: DevCluster, tmp_path: Path) -> Iterator[Scene]:
    s = Scene(audited, tmp_path, f"fence-{random.randrange(16**8):08x}")
    yield s
    s.close()


def _one_handover(order: list[tuple[str, str]], first: str, then: str) -> None:
    """The writers, in the API server's order, are ``first``… then ``then``… and nobody else."""
    names = [who for _, who in order]
    assert set(names) == {first, then}, order
    handover = names.index(then)
    assert names[:handover] == [first] * handover and names[handover:] == [then] * (len(names) - handover), (
        f"two writers: {first} wrote after {then} took over: {order}")


def test_a_paused_leader_writes_nothing_after_another_took_over(scene: Scene) -> None:
    scene.both_running_a_leading()
    scene.drift()
    wait("a reverting the drift", lambda: scene.wrote("a"))
    with_signal(scene.procs["a"], signal.SIGSTOP)
    wait("b to take over and write", lambda: scene.wrote("b"), timeout=60)
    time.sleep(1)  # b keeps writing while a is still stopped
    with_signal(scene.procs["a"], signal.SIGCONT)
    time.sleep(6)  # longer than the lease: a, woken mid-pass with a stale lease, must write nothing
    scene.stop_drift()
    assert scene.holder() == "b"
    _one_handover(writers(scene.dev, scene.ns), "a", "b")


def test_a_partitioned_leader_writes_nothing_after_another_took_over(scene: Scene) -> None:
    scene.both_running_a_leading()
    scene.drift()
    wait("a reverting the drift", lambda: scene.wrote("a"))
    scene.proxy.partition()
    wait("b to take over and write", lambda: scene.wrote("b"), timeout=60)
    time.sleep(1)
    scene.proxy.heal()
    time.sleep(6)
    scene.stop_drift()
    assert scene.holder() == "b"
    assert "leadership lost" in (scene.tmp / "a.log").read_text()
    _one_handover(writers(scene.dev, scene.ns), "a", "b")


def test_a_pass_longer_than_the_lease_keeps_one_writer(scene: Scene) -> None:
    scene.both_running_a_leading()
    scene.proxy.delay = 0.1  # every request of a's takes a few tenths of a second: 30 objects outlast the lease
    files = {f"many/r{i:02d}.yaml": replay_yaml(f"r{i:02d}", target=f"http://svc-{i}:8080") for i in range(30)}
    scene.repo.commit("thirty more", files)
    wait("the thirty applied", lambda: all(scene._copies(f"r{i:02d}") == 1 for i in range(30)), timeout=180)
    order = writers(scene.dev, scene.ns)
    assert {who for _, who in order} == {"a"}, f"b wrote while a's long pass held the lease: {order}"
    times = [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t, _ in order[-30:]]
    assert (times[-1] - times[0]).total_seconds() > 4, "the pass was not longer than the lease: raise the delay"
    assert scene.holder() == "a"


def test_a_fenced_write_gives_up_by_the_renew_deadline(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """A write that the network holds (a partition) times out by the fence's deadline, never after the
    client's own 60 s read timeout: sent by a leader, it cannot land long after another took over."""
    proxy = FaultProxy(("127.0.0.1", cluster.dev.ports.apiserver))
    config = json.loads(json.dumps(_yaml(cluster.kubeconfig)))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    (tmp_path / "via-proxy.kubeconfig").write_text(json.dumps(config))
    kube = connect(tmp_path / "via-proxy.kubeconfig")
    kube.get("v1", "Namespace", namespace)  # connected, discovery read
    kube.fence = lambda: 0.8  # what LeaderElector.check says: 0.8 s left before the renew deadline
    proxy.partition()
    failed: list[KubeError] = []

    def write() -> None:
        try:
            kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "namespace": namespace}})
        except KubeError as exc:
            failed.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(30)
    proxy.heal()
    proxy.close()
    assert not writer.is_alive(), "the write waited on the partition"
    assert failed and failed[0].transient and "timeout=0.2" in str(failed[0]), failed


@pytest.mark.parametrize("verb", ["apply", "delete"])
def test_a_fence_that_lapses_after_the_write_began_stops_it_before_it_is_sent(
        cluster: Cluster, namespace: str, verb: str) -> None:
    """A leader paused after its write passed the fence, and woken after the renew deadline, sends
    nothing: the fence is asked again right before the request's bytes leave, and then refuses."""
    from controller.gitops.leader import NotLeader

    kube = connect(cluster.kubeconfig)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late", "namespace": namespace}}
    if verb == "delete":
        kube.apply(cm)
    asked: list[str] = []

    def fence() -> float:  # leading when the write starts; past the renew deadline when it goes out
        asked.append("ask")
        if len(asked) > 1:
            raise NotLeader("not the leader (paused past the renew deadline)", reason="NotLeader")
        return 5.0

    kube.fence = fence
    with pytest.raises(NotLeader):
        if verb == "apply":
            kube.apply({**cm, "data": {"late": "yes"}})
        else:
            kube.delete("v1", "ConfigMap", "late", namespace)
    assert len(asked) == 2
    stored = connect(cluster.kubeconfig).get("v1", "ConfigMap", "late", namespace)
    assert (stored is None) == (verb == "apply") and "data" not in (stored or {})
    kube.fence = None  # the connection the refused write had opened was discarded: the next one works
    kube.apply({**cm, "data": {"next": "yes"}})
    assert connect(cluster.kubeconfig).get("v1", "ConfigMap", "late", namespace)["data"] == {"next": "yes"}
