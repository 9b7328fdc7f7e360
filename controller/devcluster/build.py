"""Build the local cluster's parts from the Go module proxy: the control plane and the node.

The published ``k8s.io/kubernetes`` module cannot be ``go install``-ed (its
go.mod replaces every staging module with a local path), so we make a small
wrapper module that requires it and replaces each staging module with its
published ``v0.<minor>.<patch>`` tag. etcd is built in a wrapper of its own so
the two dependency graphs never mix. Binaries are cached per version under the
user's cache directory and reused when ``--version`` already matches. The node's own parts
(containerd, the CNI plugins, CoreDNS, crictl) are ``go install``-ed at pinned versions into a
directory per part and version, stamped when the install succeeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster import steps
from controller.devcluster.errors import DevClusterError

K8S_VERSION = "v1.36.3"
K8S_COMMANDS = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
)
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
# The node's parts: (module, version, packages). containerd 2.x because Kubernetes 1.36 needs it.
NODE_PARTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "containerd": ("github.com/containerd/containerd/v2", "v2.4.2",
                   ("cmd/containerd", "cmd/ctr", "cmd/containerd-shim-runc-v2")),
    "cni-plugins": ("github.com/containernetworking/plugins", "v1.10.0",
                    ("plugins/main/bridge", "plugins/main/loopback", "plugins/ipam/host-local",
                     "plugins/meta/portmap")),
    "coredns": ("github.com/coredns/coredns", "v1.15.0", ("",)),
    "crictl": ("sigs.k8s.io/cri-tools", "v1.37.0", ("cmd/crictl",)),
}
BUILD_TIMEOUT_S = 60 * 60


def cache_root() -> Path:
    """The per-user cache directory of replayops (``$XDG_CACHE_HOME/replayops``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "replayops"


@dataclass(frozen=True)
class Binaries:
    """Paths of the three control-plane binaries."""

    kube_apiserver: Path
    kube_controller_manager: Path
    etcd: Path


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    return env


ALTERNATIVES = "set KUBEBUILDER_ASSETS to binaries from setup-envtest, or KUBECONFIG to an existing cluster"


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    """Run a quick go command (its output is its answer); raise DevClusterError naming the step and the
    tail of its output."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
    except FileNotFoundError as exc:
        raise DevClusterError(f"{what} failed: {cmd[0]} not found; install Go, or {ALTERNATIVES}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DevClusterError(f"{what} timed out after {BUILD_TIMEOUT_S}s in {cwd}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise DevClusterError(f"{what} failed (exit {proc.returncode}) in {cwd}:\n{tail}\nnext step: {ALTERNATIVES}")
    return proc.stdout


def _step(cmd: list[str], cwd: Path, what: str, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a long go command (a build, a module download) with progress and its output in ``log``."""
    try:
        steps.run_step(what, cmd, log, timeout_s=BUILD_TIMEOUT_S, cwd=cwd, env=env or _go_env(), who="devcluster")
    except DevClusterError as exc:
        raise DevClusterError(f"{exc}\nnext step: {ALTERNATIVES}") from exc


def _version_matches(binary: Path, version: str) -> bool:
    if not binary.is_file():
        return False
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return version.lstrip("v") in (out.stdout + out.stderr)


def _module_gomod(module: str, version: str, workdir: Path) -> tuple[Path, str]:
    """Download a module's go.mod via the proxy; return its path and text."""
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], workdir,
               f"download {module}@{version}")
    info = json.loads(out)
    gomod = Path(info["GoMod"])
    return gomod, gomod.read_text()


def staging_replaces(gomod_text: str, version: str) -> list[str]:
    """Replace lines mapping each ``k8s.io/<x> v0.0.0`` requirement to its published tag."""
    minor_patch = version.lstrip("v").split(".", 1)[1]
    staged = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+) v0\.0\.0\s*$", gomod_text, re.M)))
    return [f"replace {m} => {m} v0.{minor_patch}" for m in staged]


def _directive(gomod_text: str, name: str) -> str:
    match = re.search(rf"^{name} (.+)$", gomod_text, re.M)
    return f"{name} {match.group(1).strip()}\n" if match else ""


def _ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def build_kubernetes(version: str = K8S_VERSION) -> tuple[Path, ...]:
    """Build (or reuse) the K8S_COMMANDS of one release; return their paths in that order."""
    root = cache_root() / "k8s" / version
    bindir, src = root / "bin", root / "src"
    targets = tuple(bindir / c for c in K8S_COMMANDS)
    if all(_version_matches(t, version) for t in targets):
        return targets
    src.mkdir(parents=True, exist_ok=True)
    _, upstream = _module_gomod("k8s.io/kubernetes", version, src)
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS]
    gomod = (
        "module replayops.local/k8sbuild\n\n"
        + _directive(upstream, "go") + _directive(upstream, "godebug") + "\n"
        + f"require k8s.io/kubernetes {version}\n\n"
        + "".join(f"tool {p}\n" for p in pkgs) + "\n"
        + "\n".join(staging_replaces(upstream, version)) + "\n"
    )
    (src / "go.mod").write_text(gomod)
    _step(["go", "mod", "tidy"], src, f"resolve kubernetes {version} modules", root / "logs" / "tidy.log")
    bindir.mkdir(parents=True, exist_ok=True)
    _step(["go", "build", "-trimpath", "-buildvcs=false", "-ldflags", _ldflags(version),
           "-o", str(bindir) + "/", *pkgs], src, f"build kubernetes {version} ({', '.join(K8S_COMMANDS)})",
          root / "logs" / "build.log")
    return targets


def etcd_version_for(k8s_version: str = K8S_VERSION) -> str:
    """The etcd server version the Kubernetes release's go.mod pins."""
    root = cache_root() / "k8s" / k8s_version
    known = root / "etcd-version"
    if known.is_file():
        return known.read_text().strip()
    (root / "src").mkdir(parents=True, exist_ok=True)
    _, upstream = _module_gomod("k8s.io/kubernetes", k8s_version, root / "src")
    match = re.search(r"go\.etcd\.io/etcd/server/v3 (v[\d.]+)", upstream)
    if not match:
        raise DevClusterError(f"kubernetes {k8s_version} go.mod names no etcd server version")
    known.write_text(match.group(1))
    return match.group(1)


def build_etcd(version: str) -> Path:
    """Build (or reuse) etcd in its own wrapper module; return its path."""
    root = cache_root() / "etcd" / version
    binary, src = root / "bin" / "etcd", root / "src"
    if _version_matches(binary, version):
        return binary
    src.mkdir(parents=True, exist_ok=True)
    _, upstream = _module_gomod(ETCD_PACKAGE, version, src)
    (src / "go.mod").write_text(
        "module replayops.local/etcdbuild\n\n" + _directive(upstream, "go")
        + f"\nrequire {ETCD_PACKAGE} {version}\n\ntool {ETCD_PACKAGE}\n"
    )
    _step(["go", "mod", "tidy"], src, f"resolve etcd {version} modules", root / "logs" / "tidy.log")
    binary.parent.mkdir(parents=True, exist_ok=True)
    _step(["go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w",
           "-o", str(binary), ETCD_PACKAGE], src, f"build etcd {version}", root / "logs" / "build.log")
    return binary


def build_node_part(name: str) -> Path:
    """``go install`` one node part (NODE_PARTS) at its pinned version, or reuse it; return its bin dir."""
    module, version, pkgs = NODE_PARTS[name]
    bindir = cache_root() / "node" / name / version / "bin"
    stamp = bindir / ".installed"
    if stamp.is_file():
        return bindir
    bindir.mkdir(parents=True, exist_ok=True)
    targets = [f"{module}/{p}@{version}" if p else f"{module}@{version}" for p in pkgs]
    _step(["go", "install", "-trimpath", "-ldflags", "-s -w", *targets], bindir, f"build {name} {version}",
          bindir.parent / "build.log", env={**_go_env(), "GOBIN": str(bindir)})
    stamp.write_text(f"{module} {version}\n")
    return bindir


@dataclass(frozen=True)
class NodeBinaries:
    """Paths of the node's binaries (the Kubernetes ones come from the control plane's build)."""

    kubelet: Path
    kube_scheduler: Path
    kube_proxy: Path
    containerd_bin: Path  # containerd, ctr, containerd-shim-runc-v2
    cni_bin: Path
    coredns: Path
    crictl: Path


def ensure_node_binaries() -> NodeBinaries:
    """Build (or reuse) every node part; the Kubernetes ones with the control plane, in one go build."""
    k8s = dict(zip(K8S_COMMANDS, build_kubernetes(), strict=True))
    bins = {name: build_node_part(name) for name in NODE_PARTS}
    return NodeBinaries(kubelet=k8s["kubelet"], kube_scheduler=k8s["kube-scheduler"],
                        kube_proxy=k8s["kube-proxy"], containerd_bin=bins["containerd"],
                        cni_bin=bins["cni-plugins"], coredns=bins["coredns"] / "coredns",
                        crictl=bins["crictl"] / "crictl")


def _asset(name: str) -> Path | None:
    """A binary named by TEST_ASSET_<NAME> or found in $KUBEBUILDER_ASSETS."""
    explicit = os.environ.get("TEST_ASSET_" + name.upper().replace("-", "_"))
    if explicit:
        return Path(explicit)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / name).is_file():
        return Path(assets) / name
    return None


def ensure_binaries(*, build: bool = True) -> Binaries:
    """Find the binaries (env overrides first), building what is missing when ``build``."""
    found = {n: _asset(n) for n in ("kube-apiserver", "kube-controller-manager", "etcd")}
    if all(found.values()):
        return Binaries(*(found[n] for n in ("kube-apiserver", "kube-controller-manager", "etcd")))  # type: ignore[arg-type]
    if not build:
        missing = [n for n, p in found.items() if p is None]
        raise DevClusterError(f"no binaries for {', '.join(missing)}; run `replayops dev build`")
    if shutil.which("go") is None and not all(found[n] for n in K8S_COMMANDS):
        raise DevClusterError(
            "no Go toolchain to build the control plane: install Go, or set KUBEBUILDER_ASSETS "
            "to binaries from setup-envtest, or KUBECONFIG to an existing cluster"
        )
    etcd = found["etcd"] or build_etcd(etcd_version_for())
    if found["kube-apiserver"] and found["kube-controller-manager"]:
        apiserver, kcm = found["kube-apiserver"], found["kube-controller-manager"]
    else:
        apiserver, kcm = build_kubernetes()[:2]
    return Binaries(apiserver, kcm, etcd)  # type: ignore[arg-type]


if __name__ == "__main__":
    try:
        print(ensure_binaries())
    except DevClusterError as err:
        print(f"devcluster: {err}", file=sys.stderr)
        sys.exit(1)
