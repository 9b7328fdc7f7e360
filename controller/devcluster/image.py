"""The replayops image and the node's pause image, built here with no Docker engine and no registry.

``ensure_image`` builds the repository's one ``Dockerfile`` with buildah on a Debian base made by
debootstrap (packed with :mod:`controller.devcluster.oci`), tags it ``localhost/replayops:<hash>``
where the hash covers the Dockerfile, ``.dockerignore``, every file the build context sends and the
base, and leaves an OCI archive for ``ctr images import``; an archive whose hash matches is reused.
``ensure_pause_image`` compiles a static pause program and packs it the same way. The only network
used is Debian's mirror (debootstrap, for a base not yet cached) and PyPI (pip, during the build);
buildah never pulls (``--pull=never``), and its storage, config and logs live under
``cache_root()/image``. Every long step prints its elapsed time and log path; a failed step raises
``DevClusterError`` naming the step, its log and its last lines; missing tools raise
``MissingTools`` saying what to install.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.devcluster import host, steps
from controller.devcluster.build import cache_root
from controller.devcluster.errors import DevClusterError, MissingTools, require_tools
from controller.devcluster.oci import write_oci_archive

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
# git, openssh-client: the inspector's commits
BASE_PACKAGES = ("python3", "python3-venv", "iptables", "ca-certificates", "git", "openssh-client")
BASE_RECIPE = "minbase-trim-1"  # change when debootstrap's options or the trimming change
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_NAME = "localhost/replayops"
DEV_TAG = f"{IMAGE_NAME}:dev"  # manifests/overlays/dev names it; the last image imported carries it
PAUSE_NAME = "localhost/pause"
# overlay works as root on this VM's ext4 (vfs copies every layer whole); chroot isolation runs
# RUN steps without runc, whose OCI isolation this VM's cgroup v1 and missing CAP_SYS_RESOURCE break.
STORAGE_DRIVER = os.environ.get("REPLAYOPS_BUILDAH_DRIVER", "overlay")
ISOLATION = os.environ.get("REPLAYOPS_BUILDAH_ISOLATION", "chroot")
KEEP_ARCHIVES = 2
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PAUSE_C = r"""
/* The pod sandbox's process: sleeps until told to stop, reaps orphans when it is PID 1. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (replayops)");
        return 0;
    }
    struct sigaction stop = {0}, child = {0};
    stop.sa_handler = on_stop;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) pause();
}
"""
PAUSE_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Werror")


@dataclass(frozen=True)
class ImageRef:
    """A built image: its local tag and the OCI archive ``ctr images import`` reads."""

    tag: str
    archive: Path


def image_dir() -> Path:
    """Where images, their bases, buildah's storage and the build logs are kept."""
    return cache_root() / "image"


def _say(message: str) -> None:
    steps.say("replayops image", message)


def run_step(what: str, cmd: list[str], log: Path, *, timeout_s: float, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> float:
    """``steps.run_step`` as the image build reports it."""
    return steps.run_step(what, cmd, log, timeout_s=timeout_s, cwd=cwd, env=env, who="replayops image")


def _quick(cmd: list[str], *, env: dict[str, str] | None = None,
           timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One image build at a time per cache directory (pytest and a CLI may race)."""
    image_dir().mkdir(parents=True, exist_ok=True)
    with (image_dir() / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another image build to finish (lock {lock.name})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _digest(*parts: bytes | str) -> str:
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        sha.update(len(data).to_bytes(8, "big") + data)
    return sha.hexdigest()


# --- the build context and its hash ---------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex (``**`` any depth, ``*``/``?`` within one segment)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """The rules of a ``.dockerignore``, in order: (is an exception ``!``, pattern)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _ignore_regex(pattern)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def _candidate_files(root: Path) -> list[str]:
    """Files git knows (tracked, or new and not ignored), as in the work tree; all files without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, timeout=60, check=True).stdout
        return sorted({p for p in out.decode().split("\0") if p})
    except (OSError, subprocess.SubprocessError):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            found += [str((Path(dirpath) / f).relative_to(root)) for f in filenames]
        return sorted(found)


def context_files(root: Path = REPO) -> list[str]:
    """The files of ``root`` the build context sends (after ``.dockerignore``), sorted."""
    ignore = root / ".dockerignore"
    rules = ignore_rules(ignore.read_text()) if ignore.is_file() else []
    return [p for p in _candidate_files(root)
            if (root / p).is_symlink() or (root / p).is_file()
            if not is_ignored(p, rules)]


def context_hash(root: Path = REPO, extra: Iterable[str] = ()) -> str:
    """sha256 of the Dockerfile, ``.dockerignore``, each sent file's path, mode and content, and ``extra``."""
    parts: list[bytes | str] = list(extra)
    for name in sorted({"Dockerfile", ".dockerignore", *context_files(root)}):
        path = root / name
        if path.is_symlink():
            parts += [name, "link", os.readlink(path)]
        elif path.is_file():
            parts += [name, "x" if os.access(path, os.X_OK) else "-", path.read_bytes()]
    return _digest(*parts)


# --- the Debian base --------------------------------------------------------------------------------

def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (sources.list or deb822 sources), else deb.debian.org."""
    env = os.environ.get("REPLAYOPS_DEBIAN_MIRROR")
    if env:
        return env
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and SUITE in words[2:] and not words[1].startswith("["):
                return words[1]
    for deb822 in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in deb822.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith("#"))
            if SUITE in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    return DEFAULT_MIRROR


def base_key(packages: Iterable[str] = BASE_PACKAGES) -> str:
    """The base's cache key: suite, variant/trim recipe and the sorted package list."""
    return _digest(SUITE, BASE_RECIPE, *sorted(packages))[:16]


def _remove_tree(root: Path) -> None:
    if root.exists():
        host.unmount_under(root)  # what a crashed debootstrap left mounted
        shutil.rmtree(root)


def trim_rootfs(root: Path) -> None:
    """Drop what a runtime image never reads: docs (copyright notices stay), man pages, locales, apt
    lists and caches, logs, and the host's resolv.conf and hostname that debootstrap copied."""
    for rel in ("usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/groff", "usr/share/linda",
                "var/lib/apt/lists", "var/cache/apt", "var/log"):
        top = root / rel
        for path in sorted(top.rglob("*"), reverse=True) if top.is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink()
    for path in sorted((root / "usr/share/doc").rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
        elif path.name != "copyright":
            path.unlink()
    locales = root / "usr/share/locale"
    for path in locales.iterdir() if locales.is_dir() else []:
        if path.name != "locale.alias":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in [*root.glob("var/cache/debconf/*-old"), *root.glob("var/lib/dpkg/*-old")]:
        path.unlink()
    for name in ("etc/resolv.conf", "etc/hostname"):
        path = root / name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text("")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def ensure_base(packages: Iterable[str] = BASE_PACKAGES) -> ImageRef:
    """The Debian base as an OCI archive, made with debootstrap once per package list and reused."""
    packages = tuple(sorted(packages))
    key = base_key(packages)
    ref = ImageRef(f"localhost/replayops-base:{key}", image_dir() / f"base-{key}.tar")
    if ref.archive.is_file():
        _say(f"base {ref.tag}: reused {ref.archive}")
        return ref
    require_tools({"debootstrap": "debootstrap"})
    if os.geteuid() != 0:
        raise DevClusterError("debootstrap needs root to make the Debian base; run `replayops dev image` as root")
    rootfs = image_dir() / "work" / f"rootfs-{key}"
    debs = image_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _remove_tree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_step(f"debootstrap {SUITE} base ({', '.join(packages)})",
                 ["debootstrap", "--variant=minbase", *([f"--include={','.join(packages)}"] if packages else []),
                  f"--cache-dir={debs}", SUITE, str(rootfs), debian_mirror()],
                 image_dir() / "logs" / f"debootstrap-{key}.log", timeout_s=30 * 60)
        trim_rootfs(rootfs)
        start = time.monotonic()
        write_oci_archive(ref.archive, rootfs, ref.tag, {"Env": [PATH_ENV], "Cmd": ["/bin/bash"]},
                          history=f"debootstrap --variant=minbase --include={','.join(packages)} {SUITE}")
        _say(f"base packed in {time.monotonic() - start:.0f} s: {ref.archive} "
             f"({ref.archive.stat().st_size / 1e6:.0f} MB)")
    finally:
        _remove_tree(rootfs)
    return ref


# --- buildah ----------------------------------------------------------------------------------------

def _ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts (a proxy's CA may be in it), given to the build's pip."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


class Buildah:
    """buildah with storage, config and temporary files of our own under ``image_dir()``."""

    def __init__(self, root: Path | None = None) -> None:
        self.home = root or image_dir() / "buildah"
        self.storage = self.home / STORAGE_DRIVER
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "tmp").mkdir(exist_ok=True)
        (self.home / "storage.conf").write_text(
            f'[storage]\ndriver = "{STORAGE_DRIVER}"\n'
            f'graphroot = "{self.storage / "root"}"\nrunroot = "{self.storage / "runroot"}"\n')
        (self.home / "registries.conf").write_text("unqualified-search-registries = []\n")
        (self.home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CONTAINERS_STORAGE_CONF=str(self.home / "storage.conf"),
                   CONTAINERS_REGISTRIES_CONF=str(self.home / "registries.conf"),
                   TMPDIR=str(self.home / "tmp"), BUILDAH_ISOLATION=ISOLATION)
        return env

    def cmd(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.storage / "root"), "--runroot", str(self.storage / "runroot"),
                "--storage-driver", STORAGE_DRIVER, *args]

    def has_image(self, name: str) -> bool:
        return _quick(self.cmd("inspect", "--type", "image", name), env=self.env).returncode == 0

    def images(self) -> list[dict[str, Any]]:
        """Every image in the storage, intermediate ones too (``id``, ``names``, ``created``)."""
        out = _quick(self.cmd("images", "--all", "--json"), env=self.env)
        return list(json.loads(out.stdout)) if out.returncode == 0 and out.stdout.strip() else []

    def load(self, ref: ImageRef, log: Path) -> None:
        """Make ``ref.tag`` available from its archive (no registry)."""
        if self.has_image(ref.tag):
            return
        run_step(f"load {ref.tag}", self.cmd("pull", "--policy", "always", "--signature-policy",
                                             str(self.home / "policy.json"), f"oci-archive:{ref.archive}"),
                 log, timeout_s=15 * 60, env=self.env)
        pulled = steps.tail(log, 1).strip()
        if not re.fullmatch(r"[0-9a-f]{64}", pulled):
            raise DevClusterError(f"buildah pull printed no image id; log {log}:\n{steps.tail(log)}")
        tagged = _quick(self.cmd("tag", pulled, ref.tag), env=self.env)
        if tagged.returncode != 0:
            raise DevClusterError(f"buildah tag {pulled} {ref.tag} failed: {tagged.stderr.strip()}")


def ensure_image(root: Path = REPO) -> ImageRef:
    """Build (or reuse) the replayops image from ``root/Dockerfile``; return its tag and OCI archive."""
    require_tools({"buildah": "buildah", "debootstrap": "debootstrap"})
    if not (root / "Dockerfile").is_file():
        raise DevClusterError(f"no Dockerfile in {root}")
    with _locked():
        base = ensure_base()
        digest = context_hash(root, extra=[base.tag])[:16]
        ref = ImageRef(f"{IMAGE_NAME}:{digest}", image_dir() / f"replayops-{digest}.tar")
        if ref.archive.is_file():
            _say(f"{ref.tag}: reused {ref.archive} ({ref.archive.stat().st_size / 1e6:.0f} MB)")
            return ref
        if os.geteuid() != 0:
            raise DevClusterError("buildah here runs as root (chroot isolation, overlay storage); run as root")
        buildah = Buildah()
        logs = image_dir() / "logs"
        buildah.load(base, logs / f"load-base-{base_key()}.log")
        bud = ["bud", "--pull=never", "--layers", "--force-rm", f"--isolation={ISOLATION}", "--network=host",
               "--signature-policy", str(buildah.home / "policy.json"),
               "--build-arg", f"BASE={base.tag}", "-t", ref.tag, "-f", "Dockerfile"]
        bundle = _ca_bundle()
        if bundle:
            bud += ["--secret", f"id=pip-ca,src={bundle}"]
        run_step(f"build {ref.tag}", buildah.cmd(*bud, "."), logs / f"build-{digest}.log",
                 timeout_s=60 * 60, cwd=root, env=buildah.env)
        tmp = ref.archive.with_name(f".{ref.archive.name}.tmp")
        tmp.unlink(missing_ok=True)
        run_step(f"export {ref.tag}", buildah.cmd("push", "--signature-policy", str(buildah.home / "policy.json"),
                                                  ref.tag, f"oci-archive:{tmp}:{ref.tag}"),
                 logs / f"push-{digest}.log", timeout_s=20 * 60, env=buildah.env)
        tmp.rename(ref.archive)
        _say(f"{ref.tag}: {ref.archive} ({ref.archive.stat().st_size / 1e6:.0f} MB)")
        _prune(buildah, ref, logs / f"build-{digest}.log")
        return ref


def _prune(buildah: Buildah, keep: ImageRef, build_log: Path) -> None:
    """Keep the newest KEEP_ARCHIVES archives and, in buildah's storage, the base, the current tag and
    the layers its build used (so the dependency layer stays cached); remove every other image."""
    archives = sorted(image_dir().glob("replayops-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[KEEP_ARCHIVES:]:
        if old != keep.archive:
            old.unlink()
    used = set(re.findall(r"^--> (?:Using cache )?([0-9a-f]{11})", build_log.read_text(), re.M))
    for found in sorted(buildah.images(), key=lambda i: int(i.get("created") or 0), reverse=True):
        names = found.get("names") or []
        stale = [n for n in names if n.rsplit(":", 1)[0] == IMAGE_NAME and n != keep.tag]
        for name in stale:
            _quick(buildah.cmd("rmi", name), env=buildah.env)
        if (not names or stale == names) and str(found["id"])[:11] not in used:
            _quick(buildah.cmd("rmi", str(found["id"])), env=buildah.env)


# --- the pause image --------------------------------------------------------------------------------

def ensure_pause_image() -> ImageRef:
    """Compile the static pause program (``gcc -static -Os``) and pack it as ``localhost/pause:replayops-<hash>``."""
    require_tools({"gcc": "gcc"})
    gcc = _quick(["gcc", "-dumpfullversion"])
    digest = _digest(PAUSE_C, *PAUSE_CFLAGS, gcc.stdout.strip())[:16]
    ref = ImageRef(f"{PAUSE_NAME}:replayops-{digest}", image_dir() / f"pause-{digest}.tar")
    with _locked():
        if ref.archive.is_file():
            _say(f"{ref.tag}: reused {ref.archive}")
            return ref
        work = image_dir() / "work" / f"pause-{digest}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "rootfs").mkdir(parents=True)
        try:
            (work / "pause.c").write_text(PAUSE_C)
            compiled = _quick(["gcc", *PAUSE_CFLAGS, "-o", str(work / "rootfs" / "pause"), str(work / "pause.c")])
            if compiled.returncode != 0:
                raise DevClusterError(f"compiling the pause program failed (gcc {' '.join(PAUSE_CFLAGS)}):\n"
                                      f"{compiled.stderr.strip()}\nstatic linking needs libc6-dev: "
                                      "apt-get install gcc libc6-dev")
            write_oci_archive(ref.archive, work / "rootfs", ref.tag,
                              {"Entrypoint": ["/pause"], "User": "65535:65535", "Env": [PATH_ENV]},
                              history="gcc -static -Os pause.c")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _say(f"{ref.tag}: {ref.archive} ({ref.archive.stat().st_size / 1e3:.0f} kB)")
        return ref


# --- into the node ----------------------------------------------------------------------------------

def import_into(ctr: Path, address: str, archive: Path, *, snapshotter: str | None = None,
                timeout_s: float = 600) -> None:
    """Import an OCI archive into a containerd's ``k8s.io`` namespace (unpacked, so the CRI can run it)."""
    cmd = [str(ctr), "--address", address, "-n", "k8s.io", "images", "import", "--no-unpack=false"]
    if snapshotter:
        cmd.append(f"--snapshotter={snapshotter}")
    log = image_dir() / "logs" / f"import-{archive.stem}.log"
    run_step(f"import {archive.name} into {address}", [*cmd, str(archive)], log, timeout_s=timeout_s)
    if archive.name.startswith("replayops-"):  # the dev overlay's tag: `kubectl apply -k` of it works by hand
        tag = f"{IMAGE_NAME}:{archive.stem.removeprefix('replayops-')}"
        run_step(f"tag {tag} as {DEV_TAG}", [str(ctr), "--address", address, "-n", "k8s.io", "images", "tag",
                                             "--force", tag, DEV_TAG], log.with_name(f"tag-{archive.stem}.log"),
                 timeout_s=60)


if __name__ == "__main__":
    try:
        print(ensure_image())
        print(ensure_pause_image())
    except MissingTools as err:
        print(f"replayops image: {err}", file=sys.stderr)
        sys.exit(2)
    except DevClusterError as err:
        print(f"replayops image: {err}", file=sys.stderr)
        sys.exit(1)
