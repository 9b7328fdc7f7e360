"""`replayops controller run` as a process: watches heal drift, pushes trigger fetches, kills are survived,
and two replicas elect one leader."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster import pid_alive, stop_pid
from controller.devcluster.cluster import free_port
from controller.gitops.leader import LeaderElector, NotLeader, Timings
from tests.cluster.test_gitops import replay_yaml
from tests.conftest import Cluster
from tests.gitrepo import Repo, git_daemon

API = "replayops.dev/v1alpha1"


def wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Controllers:
    def __init__(self, cluster: Cluster, namespace: str, tmp: Path) -> None:
        self.cluster, self.ns, self.tmp = cluster, namespace, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, repo_url: str, *extra: str, name: str | None = None) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = open(self.tmp / f"controller-{n}.log", "ab")  # noqa: SIM115 - closed with the process
        argv = [sys.executable, "-m", "controller.cli", "controller", "run", "--repo", repo_url,
                "--branch", "main", "--namespace", self.ns, "--status-namespace", self.ns,
                "--name", name or self.ns, "--forwarder-namespace", self.ns, "--kubeconfig",
                str(self.cluster.kubeconfig),
                "--cache", str(self.tmp / f"cache-{n}"), *extra]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, n: int = 0) -> str:
        return (self.tmp / f"controller-{n}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_pid(proc.pid, timeout=10)
            proc.wait(timeout=5)


@pytest.fixture
def controllers(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Controllers]:
    ctl = Controllers(cluster, namespace, tmp_path)
    yield ctl
    ctl.stop_all()


def copies(cluster: Cluster, ns: str, name: str) -> int | None:
    tr = cluster.kube.get(API, "TrafficReplay", name, ns)
    return None if tr is None else int(tr["spec"]["load"]["copies"])


def test_watch_reverts_a_manual_edit_without_waiting_for_the_poll(
        cluster: Cluster, namespace: str, controllers: Controllers, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit("r", {"r1.yaml": replay_yaml("r1", copies=2)})
    controllers.start(repo.url, "--interval", "10m", "--self-heal", "--prune")
    wait("the replay", lambda: copies(cluster, namespace, "r1") == 2)
    cluster.kubectl("patch", "tr", "r1", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"load": {"copies": 7}}}), check=True)
    wait("the edit to be reverted", lambda: copies(cluster, namespace, "r1") == 2, timeout=30)


def _push(port: int, secret: bytes) -> int:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/github", data=body, method="POST", headers={
        "X-GitHub-Event": "push", "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def test_push_webhook_over_git_daemon_converges_without_polling(
        cluster: Cluster, namespace: str, controllers: Controllers, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "served" / "repo")
    repo.commit("one", {"r1.yaml": replay_yaml("r1", copies=1)})
    push_port = free_port()
    with git_daemon(tmp_path / "served") as git_port:
        secret_file = tmp_path / "secret"
        secret_file.write_bytes(b"hush")
        metrics_port = free_port()
        controllers.start(f"git://127.0.0.1:{git_port}/repo", "--interval", "10m", "--push-port", str(push_port),
                          "--push-secret-file", str(secret_file), "--metrics-port", str(metrics_port))
        wait("the first revision", lambda: copies(cluster, namespace, "r1") == 1)
        repo.commit("two", {"r1.yaml": replay_yaml("r1", copies=3)})
        bad = urllib.request.Request(f"http://127.0.0.1:{push_port}/hooks/github", data=b"{}", method="POST",
                                     headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=5)
        assert err.value.code == 401
        time.sleep(1)
        assert copies(cluster, namespace, "r1") == 1, "a rejected push fetches nothing"
        assert _push(push_port, b"hush") == 202
        wait("the pushed revision", lambda: copies(cluster, namespace, "r1") == 3, timeout=20)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'replayops_revisions_total{outcome="applied"}' in text
        assert "replayops_objects_applied_total 2.0" in text and "replayops_reconcile_duration_seconds_count" in text


def test_killed_mid_apply_and_restarted_converges_with_nothing_lost_or_doubled(
        cluster: Cluster, namespace: str, controllers: Controllers, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    count = 60
    repo.commit("many", {f"r{i:03d}.yaml": replay_yaml(f"r{i:03d}", f"http://t{i}:80") for i in range(count)})

    def present() -> int:
        return len(cluster.kube.list(API, "TrafficReplay", namespace))

    first = controllers.start(repo.url, "--interval", "10m", "--prune")
    wait("the apply to begin", lambda: present() >= 5, timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert present() < count, "killed before the apply finished"
    controllers.start(repo.url, "--interval", "10m", "--prune")
    wait("all replays", lambda: present() == count, timeout=120)
    names = sorted(tr["metadata"]["name"] for tr in cluster.kube.list(API, "TrafficReplay", namespace))
    assert names == [f"r{i:03d}" for i in range(count)]


class Clock:
    """A candidate's own monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_two_replicas_elect_one_leader_and_the_standby_takes_over(cluster: Cluster, namespace: str) -> None:
    timings = Timings(lease_duration=15, renew_deadline=10, retry_period=2)
    ca, cb = Clock(), Clock()
    a = LeaderElector(cluster.kube, namespace=namespace, name="lease", identity="a", timings=timings, clock=ca)
    b = LeaderElector(cluster.kube, namespace=namespace, name="lease", identity="b", timings=timings, clock=cb)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    ca.now += 9
    assert a.leading(), "within the renew deadline"
    ca.now += 2
    assert not a.leading(), "past the renew deadline a leader stops writing, before anyone may take over"
    with pytest.raises(NotLeader):
        a.check()
    assert a.try_acquire_or_renew() and a.leading(), "the leader renews"
    cb.now += 14
    assert not b.try_acquire_or_renew(), "the record changed 14s ago on b's clock: not expired"
    cb.now += 16
    assert b.try_acquire_or_renew(), "unchanged for a whole lease duration on b's clock: b takes over"
    assert not a.try_acquire_or_renew() and not a.leading()
    b.release()
    assert a.try_acquire_or_renew(), "a released lease is taken at once"


def test_expiry_never_compares_clocks_across_candidates(cluster: Cluster, namespace: str) -> None:
    """The holder's renewTime, written by another machine's clock, is never read for a decision: a lease
    whose renewTime is a year old but whose record keeps changing is not taken."""
    timings = Timings(lease_duration=15, renew_deadline=10, retry_period=2)
    cb = Clock()
    b = LeaderElector(cluster.kube, namespace=namespace, name="skewed", identity="b", timings=timings, clock=cb)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "skewed", "namespace": namespace},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z",
                      "acquireTime": "2025-01-01T00:00:00.000000Z", "leaseTransitions": 0}}
    cluster.kube.apply(lease)
    for second in range(1, 4):  # a renews every 10 s of b's clock, with a clock a year slow
        assert not b.try_acquire_or_renew()
        cb.now += 10
        lease["spec"]["renewTime"] = f"2025-01-01T00:00:{second:02d}.000000Z"
        cluster.kube.apply(lease)
    assert not b.try_acquire_or_renew()
    cb.now += 15
    assert b.try_acquire_or_renew(), "once a stops renewing, b takes over after one lease duration"


def test_a_candidate_no_longer_eligible_stops_leading_and_lets_the_lease_lapse(cluster: Cluster,
                                                                              namespace: str) -> None:
    """The converger's lease, when its holder stops leading its source: it writes nothing more at once, and
    does not hand the lease over (a write of its still in flight lands before another can lead)."""
    eligible = [True]
    converger = LeaderElector(cluster.kube, namespace=namespace, name="converger", identity="a",
                              timings=Timings(lease_duration=3, renew_deadline=2, retry_period=0.1),
                              eligible=lambda: eligible[0])
    converger.start()
    try:
        wait("a leads", converger.leading, timeout=10)
        eligible[0] = False
        wait("a stops leading", lambda: not converger.leading(), timeout=10)
        with pytest.raises(NotLeader):
            converger.check()
        lease = cluster.kube.get("coordination.k8s.io/v1", "Lease", "converger", namespace) or {}
        assert lease["spec"]["holderIdentity"] == "a", "not released: it lapses"
        eligible[0] = True
        wait("a leads again", converger.leading, timeout=10)
    finally:
        converger.stop()


def test_a_dry_run_never_takes_the_cluster_wide_leases(cluster: Cluster, namespace: str,
                                                       controllers: Controllers, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit("r", {"r1.yaml": replay_yaml("r1", copies=1)})
    controllers.start(repo.url, "--dry-run", "--leader-elect", "--lease-seconds", "3", "--renew-deadline", "2",
                      "--retry-period", "0.2", "--forwarder-namespace", namespace, "--identity", "preview")
    lease = ("coordination.k8s.io/v1", "Lease")
    wait("its source's lease", lambda: cluster.kube.get(*lease, f"replayops-controller-{namespace}", namespace))
    wait("a few dry-run passes", lambda: "reconciled" in controllers.log() or "revision" in controllers.log())
    time.sleep(2)  # ten retry periods as the source's leader
    assert cluster.kube.get(*lease, "replayops-converger", namespace) is None
    assert cluster.kube.get(*lease, "replayops-replays", namespace) is None


def test_leader_election_timings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"retry period \(2s\) < renew deadline \(15s\) < lease duration \(15s\)"):
        Timings(lease_duration=15, renew_deadline=15, retry_period=2)
    out = subprocess.run([sys.executable, "-m", "controller.cli", "controller", "run", "--repo", "file:///x",
                          "--leader-elect", "--lease-seconds", "5", "--renew-deadline", "6", "--kubeconfig",
                          str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("replayops controller run: leader election needs retry period (2s) < renew "
                                  "deadline (6s) < lease duration (5s)")


def test_two_controller_processes_only_the_leader_applies(
        cluster: Cluster, namespace: str, controllers: Controllers, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit("r", {"r1.yaml": replay_yaml("r1", copies=1)})
    args = ("--interval", "1s", "--leader-elect", "--lease-seconds", "3", "--renew-deadline", "2", "--retry-period",
            "0.5")
    first = controllers.start(repo.url, *args, "--identity", "one")
    wait("the replay", lambda: copies(cluster, namespace, "r1") == 1)
    controllers.start(repo.url, *args, "--identity", "two")
    lease = cluster.kube.get("coordination.k8s.io/v1", "Lease", f"replayops-controller-{namespace}", namespace)
    assert lease is not None and lease["spec"]["holderIdentity"] == "one"
    first.send_signal(signal.SIGKILL)  # no release: the standby must wait out the lease
    first.wait(timeout=10)
    assert not pid_alive(first.pid)
    repo.commit("r2", {"r1.yaml": replay_yaml("r1", copies=4)})
    wait("the standby to lead and apply", lambda: copies(cluster, namespace, "r1") == 4, timeout=30)
    lease = cluster.kube.get("coordination.k8s.io/v1", "Lease", f"replayops-controller-{namespace}", namespace)
    assert lease is not None and lease["spec"]["holderIdentity"] == "two"
