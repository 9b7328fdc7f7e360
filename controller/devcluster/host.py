"""What the node changes on the host, recorded so that teardown undoes exactly that and nothing else.

A node needs a bridge, two sysctls, guard rules, and leaves mounts, cgroups and the kubelet's
chains behind. Every change is recorded in one state file (``/run/replayops/node.json``: the
host's state is gone after a reboot, and so is the file) before it is made; ``teardown`` undoes
what the file names, in node.md's order, is idempotent, and runs before every start. ``foreign``
lists a kubelet, containerd or kube-proxy table that the file does not account for, so a start
never wrecks somebody else's cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from controller import pki

STATE_FILE = Path(os.environ.get("REPLAYOPS_NODE_STATE", "/run/replayops/node.json"))
BRIDGE = "replayops0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
GUARD_COMMENT = "replayops-node guard: pods never leave the machine"
GUARD_RULE = ("FORWARD", "-s", POD_CIDR, "!", "-o", BRIDGE, "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP")
# Chains the kubelet (and kube-proxy's canary) create in iptables; kube-proxy's own nft table is
# removed by ``kube-proxy --cleanup``.
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-PROXY-CANARY")
KERNEL_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")  # the kubelet rewrites them
MNT_DETACH = 2


@dataclass
class HostState:
    """What this tool did to the host (and where the node's own directories are)."""

    workdir: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    bridge: bool = False
    guards: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)  # name -> value before we (or the kubelet) touched it
    cleanup: dict[str, str] = field(default_factory=dict)  # kube-proxy binary and config, crictl and socket

    @classmethod
    def load(cls) -> HostState | None:
        try:
            return cls(**json.loads(STATE_FILE.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        pki.write_atomic(STATE_FILE, json.dumps(asdict(self), indent=2).encode(), mode=0o600)


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str:
    return sysctl_path(name).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    sysctl_path(name).write_text(value)


def remember_sysctls(state: HostState, names: tuple[str, ...]) -> None:
    """Record the current values of ``names`` (once: the first value seen is the host's own)."""
    for name in names:
        state.sysctls.setdefault(name, read_sysctl(name))
    state.save()


def restore_sysctls(state: HostState, names: tuple[str, ...] | None = None) -> None:
    for name, value in state.sysctls.items():
        if names is None or name in names:
            with contextlib.suppress(OSError):
                if read_sysctl(name) != value:
                    write_sysctl(name, value)


# -- what is there that is not ours ------------------------------------------------------------

def _process_names() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (entry / "comm").read_text().strip()
    return out


def _descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found = set(roots)
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def pids_with_arg(arg: str) -> set[int]:
    """Processes whose command line names ``arg`` (containerd's shims name its socket)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if arg in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0"):
                    found.add(int(entry.name))
    return found


def foreign(state: HostState | None) -> list[str]:
    """A kubelet, containerd or kube-proxy nft table on this host that ``state`` does not account for."""
    ours = _descendants(set((state.pids if state else {}).values()))
    found = [f"{name} (pid {pid})" for pid, name in _process_names().items()
             if name in ("kubelet", "containerd", "kube-proxy") and pid not in ours]
    if state is None and run("nft", "list", "table", "ip", "kube-proxy", check=False).returncode == 0:
        found.append("the nft table 'ip kube-proxy'")
    if state is None and Path("/sys/fs/cgroup/memory/kubepods").exists():
        found.append("the cgroup /kubepods")
    return found


# -- changes -------------------------------------------------------------------------------------

def make_bridge(state: HostState) -> None:
    """Our bridge holding the node IP (the CNI bridge plugin attaches pods to it)."""
    state.bridge = True
    state.save()
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")


def add_guards(state: HostState) -> None:
    """FORWARD drops anything from the pod range that would leave by another interface than our bridge."""
    state.guards = True
    state.save()
    if run("iptables", "-C", *GUARD_RULE, check=False).returncode != 0:
        run("iptables", "-I", *GUARD_RULE)


def _remove_guards() -> None:
    while run("iptables", "-C", *GUARD_RULE, check=False).returncode == 0:
        run("iptables", "-D", *GUARD_RULE, check=False)


def _remove_kubelet_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listing = run(tool, "-t", table, "-S", check=False)
            if listing.returncode != 0:
                continue
            for line in listing.stdout.splitlines():  # the jumps into the chains first
                parts = line.split()
                if parts[:1] == ["-A"] and any(f"-j {c}" in line for c in KUBELET_CHAINS):
                    run(tool, "-t", table, "-D", *parts[1:], check=False)
            for chain in KUBELET_CHAINS:
                if f"-N {chain}" in listing.stdout:
                    run(tool, "-t", table, "-F", chain, check=False)
                    run(tool, "-t", table, "-X", chain, check=False)


def unmount_under(*roots: Path) -> None:
    """Detach every mount at or below ``roots``, deepest first."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    prefixes = [str(r.resolve()) for r in roots if str(r)]
    for _ in range(3):  # a detached mount can reveal another beneath it
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                points.append(point)
        if not points:
            return
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            libc.umount2(point.encode(), MNT_DETACH)


def remove_kubepods_cgroups() -> None:
    """Kill what is left in the ``kubepods`` trees (a crashed run's containers), then rmdir them in every
    cgroup v1 hierarchy (and the unified one), deepest first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for path in [*dirs, top]:
            with contextlib.suppress(OSError, ValueError):
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)
        for path in [*dirs, top]:
            with contextlib.suppress(OSError):
                path.rmdir()


def teardown_host(state: HostState) -> None:
    """Undo the host changes ``state`` records (the processes are stopped by the caller first)."""
    if state.workdir:
        unmount_under(Path(state.workdir))
    remove_kubepods_cgroups()
    _remove_kubelet_chains()
    if state.bridge:
        run("ip", "link", "delete", BRIDGE, check=False)
    if state.guards:
        _remove_guards()
    restore_sysctls(state)
