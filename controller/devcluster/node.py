"""A real node beside the local control plane: containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS.

Settings are node.md's, each for a reason written there: cgroupfs on the host's cgroup v1,
``restrict_oom_score_adj`` (the VM's root lacks CAP_SYS_RESOURCE), netns mounts under our state
directory, kube-proxy in nftables mode on the bridge address only, CoreDNS with no ``forward`` (a
name outside the cluster gets no answer), pods with no default route. Everything lives under
``<workdir>/node``; what touches the host goes through ``host`` and its state file. ``stop``
tears down in node.md's order; ``teardown`` does the same from the state file alone (a crashed run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from controller import pki
from controller.devcluster import host, image
from controller.devcluster.build import NodeBinaries
from controller.devcluster.process import Proc, http_check, wait_until

NODE_NAME = "replayops-node"
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 10250
KUBELET_HEALTHZ = 10248
PROXY_HEALTHZ, PROXY_METRICS = 10256, 10249
DNS_HEALTH, DNS_READY = 18080, 18181
RUNC = "/usr/sbin/runc"
Spawn = Callable[[str, list[str], dict[str, str] | None], Proc]


class Node:
    """The node's processes and configuration files in ``workdir / "node"``."""

    def __init__(self, workdir: Path, binaries: NodeBinaries, *, kubeconfig: Path, pkidir: Path,
                 service_cidr: str, pause_image: str = "", images: tuple[Path, ...] = ()) -> None:
        self.dir = workdir / "node"
        self.binaries, self.kubeconfig, self.pkidir = binaries, kubeconfig, pkidir
        self.service_cidr = service_cidr
        self.pause_image, self.images = pause_image, images

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    # -- configuration -------------------------------------------------------------------------

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.dir / "kubelet.kubeconfig"

    def write_pki(self, ca: pki.KeyPair) -> pki.KeyPair:
        """The kubelet's serving certificate, and its client certificate (the Node authorizer's identity),
        which is returned for the kubelet's kubeconfig."""
        client = pki.issue(ca, f"system:node:{NODE_NAME}", orgs=("system:nodes",), server=False, client=True)
        client.write(self.pkidir / "kubelet-client.crt", self.pkidir / "kubelet-client.key")
        serving = pki.issue(ca, NODE_NAME, dns=(NODE_NAME,), ips=(host.NODE_IP,))
        serving.write(self.pkidir / "kubelet.crt", self.pkidir / "kubelet.key")
        return client

    def _containerd_config(self) -> Path:
        d = self.dir / "containerd"
        cri = "io.containerd.cri.v1"
        text = f"""version = 3
root = "{d / 'root'}"
state = "{d / 'state'}"
imports = []

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"

[plugins."{cri}.images"]
  snapshotter = "overlayfs"
  [plugins."{cri}.images".pinned_images]
    sandbox = "{self.pause_image}"

[plugins."{cri}.runtime"]
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."{cri}.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."{cri}.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."{cri}.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."{cri}.runtime".cni]
    bin_dirs = ["{self.binaries.cni_bin}"]
    conf_dir = "{self.dir / 'cni'}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
"""
        path = d / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _cni_config(self) -> None:
        conf = {"cniVersion": "1.0.0", "name": "replayops", "plugins": [
            {"type": "bridge", "bridge": host.BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": host.POD_CIDR, "gateway": host.NODE_IP}]],
                      # the pod and service ranges only: no default route, nothing leaves the machine
                      "routes": [{"dst": self.service_cidr}], "dataDir": str(self.dir / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}
        (self.dir / "cni").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "10-replayops.conflist").write_text(json.dumps(conf, indent=2))

    def _kubelet_config(self) -> Path:
        (self.dir / "resolv.conf").write_text("")  # pods get CoreDNS only; the host's resolvers stay out
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": host.NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": KUBELET_HEALTHZ,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.pkidir / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(self.pkidir / "kubelet.crt"), "tlsPrivateKeyFile": str(self.pkidir / "kubelet.key"),
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": [host.NODE_IP], "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self.dir / "resolv.conf"),
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 98,
            "serializeImagePulls": False, "maxPods": 110, "protectKernelDefaults": False,
            "containerLogMaxSize": "10Mi",
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _proxy_config(self) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "nftables", "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "hostnameOverride": NODE_NAME, "clusterCIDR": host.POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{PROXY_HEALTHZ}", "metricsBindAddress": f"127.0.0.1:{PROXY_METRICS}",
            "nodePortAddresses": [f"{host.NODE_IP}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _corefile(self) -> Path:
        text = f""".:53 {{
    bind {host.NODE_IP}
    errors
    health 127.0.0.1:{DNS_HEALTH}
    ready 127.0.0.1:{DNS_READY}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loop
}}
"""
        path = self.dir / "Corefile"
        path.write_text(text)
        return path

    # -- lifecycle -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        base["PATH"] = f"{self.binaries.containerd_bin}:{Path(RUNC).parent}:{base.get('PATH', '/usr/bin:/bin')}"
        return base

    def start(self, spawn: Spawn, state: host.HostState, timeout: float) -> None:
        """Start every part in order, waiting for each; the caller stops what started on failure."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cni_config()
        env = self.env()

        def run(name: str, argv: list[str], ready: Callable[[], str | None] | None, what: str = "",
                child_env: dict[str, str] | None = env) -> None:
            proc = spawn(name, argv, child_env)
            state.pids[name] = proc.pid  # recorded before waiting: a crash mid-start is still torn down
            state.save()
            if ready:
                wait_until(proc, what, ready, timeout)

        run("containerd", [str(self.binaries.containerd_bin / "containerd"), "--config",
                           str(self._containerd_config())], self._ctr_version, "containerd's socket")
        for archive in self.images:
            image.import_into(self.binaries.containerd_bin / "ctr", str(self.socket), archive)
        host.remember_sysctls(state, host.KERNEL_SYSCTLS)  # the kubelet rewrites them
        run("kubelet", [str(self.binaries.kubelet), f"--config={self._kubelet_config()}",
                        f"--kubeconfig={self.kubelet_kubeconfig}", f"--hostname-override={NODE_NAME}",
                        f"--node-ip={host.NODE_IP}", f"--root-dir={self.dir / 'kubelet'}", "--v=1"],
            http_check(f"http://127.0.0.1:{KUBELET_HEALTHZ}/healthz"), "kubelet health")
        host.restore_sysctls(state, host.KERNEL_SYSCTLS)
        state.cleanup = {"kube-proxy": str(self.binaries.kube_proxy), "crictl": str(self.binaries.crictl),
                         "socket": str(self.socket)}
        run("kube-proxy", [str(self.binaries.kube_proxy), f"--config={self._proxy_config()}", "--v=1"],
            http_check(f"http://127.0.0.1:{PROXY_HEALTHZ}/healthz"), "kube-proxy health")
        run("coredns", [str(self.binaries.coredns), "-conf", str(self._corefile())],
            http_check(f"http://127.0.0.1:{DNS_READY}/ready"), "CoreDNS ready")
        run("provisioner", [sys.executable, "-m", "controller.devcluster.provisioner", "--kubeconfig",
                            str(self.kubeconfig), "--root", str(self.dir / "volumes")], None, child_env=None)

    def _ctr_version(self) -> str | None:
        """A ``wait_until`` check: containerd answers on its socket (None), else ``ctr``'s error."""
        argv = [str(self.binaries.containerd_bin / "ctr"), "--address", str(self.socket), "version"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=self.env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def teardown(stop: Callable[[int], None]) -> list[str]:
    """Tear down the node the state file names, in node.md's order; return what was done. Idempotent."""
    state = host.HostState.load()
    if state is None:
        return []
    done: list[str] = []
    pids = dict(state.pids)
    for name in ("kubelet", "coredns", "kube-scheduler", "provisioner"):
        if name in pids:
            stop(pids.pop(name))
            done.append(name)
    socket, crictl = state.cleanup.get("socket"), state.cleanup.get("crictl")
    if socket and crictl and Path(socket).exists() and "containerd" in pids:  # while containerd still runs
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([crictl, "--runtime-endpoint", f"unix://{socket}", "rmp", "--all", "--force"],
                           capture_output=True, timeout=120)
            done.append("pod sandboxes")
    if "kube-proxy" in pids:
        stop(pids.pop("kube-proxy"))
    if state.cleanup.get("kube-proxy"):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([state.cleanup["kube-proxy"], "--cleanup"], capture_output=True, timeout=60)
            done.append("kube-proxy rules")
    shims = host.pids_with_arg(socket) if socket else set()
    for name, pid in pids.items():
        stop(pid)
        done.append(name)
    for pid in shims:  # shims outlive containerd by design
        stop(pid)
    host.teardown_host(state)
    if state.workdir:
        shutil.rmtree(Path(state.workdir) / "node", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        host.STATE_FILE.unlink()
    done.append("host (mounts, cgroups, chains, bridge, guards, sysctls)")
    return done
