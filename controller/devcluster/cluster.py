"""Start and stop a local cluster: etcd, kube-apiserver, kube-controller-manager, and optionally a node.

Without a node everything listens on free loopback ports with TLS; RBAC is on and an admin
client certificate (group ``system:masters``) goes into the kubeconfig. With a node
(``node=NodeBinaries``) the apiserver listens on the node's bridge address instead, so pods reach
it, with Node,RBAC authorization, NodeRestriction, ServiceAccount tokens, kubelet client
certificates and the in-cluster names on its certificate; kube-scheduler, the storage provisioner
and the node's parts (``node.Node``) start after it. Every
wait has a timeout and says what it waited for. Children started attached die
with their parent (``PR_SET_PDEATHSIG``), and ``stop()`` terminates, then
kills, every process group it started, so no process or port is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from controller import pki
from controller.devcluster import host
from controller.devcluster import node as nodes
from controller.devcluster.build import Binaries, NodeBinaries
from controller.devcluster.errors import DevClusterError, require_tools
from controller.devcluster.process import STOP_TIMEOUT_S, Proc, http_check, pid_alive, stop_pid, wait_until

START_TIMEOUT_S = 120.0
NODE_TOOLS = {"nft": "nftables", "iptables": "iptables", "ip": "iproute2", "runc": "runc"}  # command -> package
SERVICE_CIDR = "10.0.0.0/24"
ADMIN_USER = "replayops-admin"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Endpoints:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> Endpoints:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


class DevCluster:
    """A local control plane living in ``workdir`` (certs, etcd data, logs, kubeconfig)."""

    def __init__(self, workdir: Path, binaries: Binaries, *, controller_manager: bool = True,
                 detached: bool = False, apiserver_args: tuple[str, ...] = (), durable: bool = False,
                 node: NodeBinaries | None = None, pause_image: str = "", images: tuple[Path, ...] = ()) -> None:
        self.workdir = workdir
        self.durable = durable  # etcd fsyncs its WAL as in production (off by default: tests need speed)
        self.binaries = binaries
        self.with_controller_manager = controller_manager
        self.detached = detached
        self.apiserver_args = apiserver_args
        self.procs: list[Proc] = []
        self.ports = Endpoints.pick()
        self.node = nodes.Node(workdir, node, kubeconfig=self.kubeconfig, pkidir=workdir / "pki",
                               service_cidr=SERVICE_CIDR, pause_image=pause_image, images=images) if node else None

    @property
    def address(self) -> str:
        """Where the apiserver listens: loopback, or the node's bridge address (reachable from pods)."""
        return host.NODE_IP if self.node else "127.0.0.1"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports.apiserver}"

    # -- certificates --------------------------------------------------------------------------

    def _write_pki(self) -> None:
        pkidir = self.workdir / "pki"
        ca = pki.make_ca("replayops-dev-ca")
        ca.write(pkidir / "ca.crt", pkidir / "ca.key")
        pki.issue(ca, "kube-apiserver", dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                             "kubernetes.default.svc.cluster.local"),
                  ips=("127.0.0.1", "10.0.0.1", host.NODE_IP)).write(pkidir / "apiserver.crt", pkidir / "apiserver.key")
        pki.issue(ca, "kube-apiserver-kubelet-client", orgs=("system:masters",), server=False, client=True).write(
            pkidir / "apiserver-kubelet-client.crt", pkidir / "apiserver-kubelet-client.key")
        admin = pki.issue(ca, ADMIN_USER, orgs=("system:masters",), server=False, client=True)
        admin.write(pkidir / "admin.crt", pkidir / "admin.key")
        sa = pki.new_key()
        pki.write_atomic(pkidir / "sa.key", pki.key_pem(sa), mode=0o600)
        pki.write_atomic(pkidir / "sa.pub", pki.public_pem(sa))
        self._write_kubeconfig(self.kubeconfig, ca, admin, ADMIN_USER)
        if self.node:
            kubelet = self.node.write_pki(ca)
            self._write_kubeconfig(self.node.kubelet_kubeconfig, ca, kubelet, f"system:node:{nodes.NODE_NAME}")

    def _write_kubeconfig(self, path: Path, ca: pki.KeyPair, user: pki.KeyPair, user_name: str) -> None:
        """A kubeconfig for ``user`` (its client certificate) on this cluster's apiserver."""
        import base64

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "replayops-dev", "cluster": {
                "server": self.server, "certificate-authority-data": b64(ca.cert_pem)}}],
            "users": [{"name": user_name, "user": {
                "client-certificate-data": b64(user.cert_pem),
                "client-key-data": b64(user.key_pem)}}],
            "contexts": [{"name": "replayops-dev",
                          "context": {"cluster": "replayops-dev", "user": user_name}}],
            "current-context": "replayops-dev",
        }
        pki.write_atomic(path, json.dumps(config, indent=2).encode(), mode=0o600)

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        logdir = self.workdir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        log = logdir / f"{name}.log"
        env = dict(env or {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")})
        env["NO_PROXY"] = env["no_proxy"] = f"127.0.0.1,localhost,{host.NODE_IP}"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=None if self.detached else _die_with_parent,
            )
        proc = Proc(name, popen.pid, log, popen)
        self.procs.append(proc)
        return proc

    def _etcd_argv(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [str(self.binaries.etcd), "--name", "default", "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"default={peer}", f"--unsafe-no-fsync={str(not self.durable).lower()}",
                "--log-level", "warn"]

    def _apiserver_argv(self) -> list[str]:
        p = self.workdir / "pki"
        if self.node:  # pods use the API with their own ServiceAccount; logs/exec go through the kubelet
            mode = ["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                    f"--kubelet-certificate-authority={p / 'ca.crt'}",
                    "--kubelet-preferred-address-types=InternalIP,Hostname"]
        else:
            mode = ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
                    f"--service-account-issuer=https://127.0.0.1:{self.ports.apiserver}/",
                    "--endpoint-reconciler-type=none"]
        return [str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                f"--secure-port={self.ports.apiserver}", f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true", *mode,
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--cert-dir={p}", "-v=1", *self.apiserver_args]

    def _kcm_argv(self) -> list[str]:
        p = self.workdir / "pki"
        return [str(self.binaries.kube_controller_manager), f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false", f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}", f"--secure-port={self.ports.controller_manager}",
                "--bind-address=127.0.0.1", f"--cert-dir={p / 'kcm'}",
                "--controllers=*,-serviceaccount-token-controller", "-v=1"]

    def _scheduler_argv(self, binary: Path) -> list[str]:
        return [str(binary),
                f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}", "--leader-elect=false",
                f"--secure-port={self.ports.scheduler}", "--bind-address=127.0.0.1", "-v=1"]

    # -- waiting ----------------------------------------------------------------------------------

    def _wait(self, proc: Proc, what: str, probe: ssl.SSLContext | None, url: str,
              timeout: float) -> None:
        wait_until(proc, f"{what} at {url}", http_check(url, probe), timeout)

    def _tls(self, *, verify: bool = True) -> ssl.SSLContext:
        p = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(p / "ca.crt"))
        ctx.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start all components and wait until each is healthy; on failure stop what started."""
        if self.node:
            if os.geteuid() != 0:
                raise DevClusterError("the node needs root (a bridge, network namespaces, mounts, nftables): run "
                                      "as root, or use --no-node (the control plane only)")
            require_tools(NODE_TOOLS)
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self._prepare_host() if self.node else None
        try:
            self._write_pki()
            etcd = self._spawn("etcd", self._etcd_argv())
            self._wait(etcd, "etcd health", None,
                       f"http://127.0.0.1:{self.ports.etcd_client}/health", timeout)
            self.start_apiserver(timeout)
            if self.with_controller_manager:
                kcm = self._spawn("kube-controller-manager", self._kcm_argv())
                self._wait(kcm, "kube-controller-manager health", self._tls(verify=False),
                           f"https://127.0.0.1:{self.ports.controller_manager}/healthz", timeout)
            if self.node and state:
                sched = self._spawn("kube-scheduler", self._scheduler_argv(self.node.binaries.kube_scheduler))
                self._wait(sched, "kube-scheduler health", self._tls(verify=False),
                           f"https://127.0.0.1:{self.ports.scheduler}/healthz", timeout)
                state.pids[sched.name] = sched.pid
                self._write_state()  # so that `dev status` shows the parts while the node comes up
                self.node.start(self._spawn, state, timeout)
                self._wait_node_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def start_apiserver(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the apiserver (again: after ``stop_apiserver``, on the same port) and wait until it is ready."""
        api = self._spawn("kube-apiserver", self._apiserver_argv())
        self._wait(api, "kube-apiserver readiness", self._tls(), f"{self.server}/readyz", timeout)

    def stop_apiserver(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the apiserver alone (a fault for the tests of its clients); etcd and the rest keep running."""
        for proc in [p for p in self.procs if p.name == "kube-apiserver"]:
            stop_pid(proc.pid, timeout)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=1)
            self.procs.remove(proc)

    def _prepare_host(self) -> host.HostState:
        """Refuse beside a cluster we did not start; undo a crashed run of ours; then claim the host."""
        old = host.HostState.load()
        if old and old.workdir != str(self.workdir) and any(pid_alive(p) for p in old.pids.values()):
            raise DevClusterError(f"a replayops node of {old.workdir} is running on this machine (one node per "
                                  "machine): stop it first with `replayops dev down`")
        found = host.foreign(old)
        if found:
            raise DevClusterError("refusing to start a node: this machine runs a cluster replayops did not start: "
                                  + ", ".join(found) + "; nothing was changed")
        nodes.teardown(stop_pid)
        state = host.HostState(workdir=str(self.workdir))
        host.remember_sysctls(state, ("net.ipv4.ip_forward",))
        try:
            host.make_bridge(state)
            host.add_guards(state)
            host.write_sysctl("net.ipv4.ip_forward", "1")  # pods reach services through the host
        except (OSError, RuntimeError) as exc:
            nodes.teardown(stop_pid)
            raise DevClusterError(f"preparing the host for the node failed: {exc}") from exc
        return state

    def _wait_node_ready(self, timeout: float) -> None:
        def ready() -> str | None:
            try:
                with urllib.request.urlopen(f"{self.server}/api/v1/nodes/{nodes.NODE_NAME}", timeout=3,
                                            context=self._tls()) as resp:
                    conds = {c["type"]: c for c in json.load(resp).get("status", {}).get("conditions", [])}
            except OSError as exc:
                return str(exc)
            got = conds.get("Ready", {})
            return None if got.get("status") == "True" else f"Ready={got.get('status')}: {got.get('message', '')}"

        kubelet = next(p for p in self.procs if p.name == "kubelet")
        wait_until(kubelet, f"node {nodes.NODE_NAME} Ready", ready, timeout, interval=0.5)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Tear the node down in node.md's order, then terminate every other component (reverse order),
        killing what outlives ``timeout``."""
        if self.node:
            state = host.HostState.load()
            if state and state.workdir == str(self.workdir):
                nodes.teardown(lambda pid: stop_pid(pid, timeout))
        for proc in reversed(self.procs):
            stop_pid(proc.pid, timeout)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=1)
        self.procs.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "state.json").unlink()

    def _write_state(self) -> None:
        state = {"kubeconfig": str(self.kubeconfig), "server": self.server, "node": bool(self.node),
                 "procs": [{"name": p.name, "pid": p.pid, "log": str(p.log)} for p in self.procs]}
        pki.write_atomic(self.workdir / "state.json", json.dumps(state, indent=2).encode())

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def read_state(workdir: Path) -> dict[str, object] | None:
    """The state a detached cluster in ``workdir`` wrote, or None."""
    try:
        return json.loads((workdir / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def recorded_service(workdir: Path, name: str) -> int | None:
    """The pid ``spawn_service`` recorded for ``name`` (alive or not), or None."""
    state = read_state(workdir) or {"procs": []}
    return next((int(p["pid"]) for p in state["procs"] if p["name"] == name), None)  # type: ignore[attr-defined]


def spawn_service(workdir: Path, name: str, argv: list[str]) -> Proc:
    """Start a detached long-running process beside a cluster (the webhook, the controller) and record
    it in the cluster's state, so ``replayops dev down`` stops it too."""
    log = workdir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    state = read_state(workdir) or {"procs": []}
    procs = [p for p in state["procs"] if p["name"] != name]  # type: ignore[attr-defined, index]
    state["procs"] = [*procs, {"name": name, "pid": popen.pid, "log": str(log)}]
    pki.write_atomic(workdir / "state.json", json.dumps(state, indent=2).encode())
    return Proc(name, popen.pid, log)
