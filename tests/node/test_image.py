"""The real images: ``ensure_image()`` builds the Dockerfile with buildah (minutes when cold, seconds when
reused), and the archive the node imports runs ``replayops`` as user 65532 in a chroot; the pause image
exits on SIGTERM. These build for real; they skip, saying why, only without root or the tools."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster import image, oci

pytestmark = pytest.mark.timeout(3600)  # a cold build: debootstrap, pip from PyPI, export (~3-5 min here)
SIZE_BUDGET_MB = 700  # uncompressed; the base is ~140 MB, the venv (kubernetes, numpy, matplotlib...) the rest


def _require_build_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("building images needs root (debootstrap, buildah with chroot isolation)")
    missing = [t for t in ("buildah", "debootstrap", "unshare", "chroot") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: apt-get install buildah debootstrap (make system-deps)")


def unpack(archive: Path, root: Path) -> dict[str, Any]:
    """Apply an OCI archive's layers in order under ``root`` (whiteouts honoured); return its config."""
    parts = oci.read_oci_archive(archive)
    with tarfile.open(archive) as outer:
        for layer in parts["manifest"]["layers"]:
            blob = outer.extractfile("blobs/sha256/" + layer["digest"].removeprefix("sha256:"))
            assert blob is not None
            data = blob.read()
            if layer["mediaType"].endswith("gzip"):
                data = gzip.decompress(data)
            tmp = root.parent / "layer.tar"
            tmp.write_bytes(data)
            with tarfile.open(tmp) as tar:
                members = tar.getmembers()
                for member in members:
                    path, name = Path(member.name), Path(member.name).name
                    if name == ".wh..wh..opq":
                        for child in (root / path.parent).iterdir():
                            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                    elif name.startswith(".wh."):
                        gone = root / path.parent / name.removeprefix(".wh.")
                        shutil.rmtree(gone) if gone.is_dir() and not gone.is_symlink() else gone.unlink(missing_ok=True)
                tar.extractall(root, members=[m for m in members if not Path(m.name).name.startswith(".wh.")],
                               numeric_owner=True, filter="fully_trusted")
            tmp.unlink()
    return parts["config"]


@dataclass(frozen=True)
class Built:
    """The image as built, and its archive unpacked."""

    ref: image.ImageRef
    root: Path
    config: dict[str, Any]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    _require_build_tools()
    start = time.monotonic()
    ref = image.ensure_image()
    print(f"ensure_image: {ref.tag} in {time.monotonic() - start:.0f} s, "
          f"archive {ref.archive.stat().st_size / 1e6:.0f} MB")
    root = tmp_path_factory.mktemp("image") / "rootfs"
    root.mkdir()
    config = unpack(ref.archive, root)
    yield Built(ref, root, config)
    shutil.rmtree(root.parent, ignore_errors=True)


def in_image(root: Path, config: dict[str, Any], *argv: str,
             user: str = "65532:65532") -> subprocess.CompletedProcess[str]:
    """Run ``argv`` chrooted in ``root`` as ``user`` with the image's environment, in a private mount
    and PID namespace (its /proc and /dev mounts vanish with it)."""
    script = (f'mount -t proc proc "{root}/proc" && mount --bind /dev "{root}/dev" && '
              f'exec chroot --userspec={user} "{root}" env -i "$@"')
    env = list(config["config"].get("Env", []))
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "sh", "-c", script, "in-image", *env, *argv],
                          capture_output=True, text=True, timeout=120, cwd="/")


def test_image_config_is_the_dockerfiles(built: Built) -> None:
    ref, config = built.ref, built.config
    assert ref.tag.startswith("localhost/replayops:") and ref.archive.is_file()
    cfg = config["config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["/opt/replayops/bin/replayops"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["REPLAYOPS_ROOT"] == "/opt/replayops/share" and env["REPLAYOPS_HOME"] == "/var/lib/replayops"
    index = oci.read_oci_archive(ref.archive)["index"]
    assert index["manifests"][0]["annotations"][oci.REF_NAME] == ref.tag  # the name ctr import gives it


def test_replayops_runs_as_65532_with_its_crds_and_iptables(built: Built) -> None:
    root, config = built.root, built.config
    entry = config["config"]["Entrypoint"]
    for argv in ([*entry, "--help"], [*entry, "iptables", "--help"]):
        out = in_image(root, config, *argv)
        assert out.returncode == 0, (argv, out.stderr[-2000:])
        assert "usage: replayops" in out.stdout
    dry = in_image(root, config, *entry, "iptables", "--proxy-port", "15001", "--ports", "8080", "--dry-run")
    assert dry.returncode == 0 and "REDIRECT" in dry.stdout, dry.stderr[-2000:]
    probe = in_image(root, config, "python3", "-c", (
        "import os, shutil; from controller import schema; "
        "print(os.getuid(), len(schema.load_crds()), shutil.which('iptables')); "
        "open(os.environ['REPLAYOPS_HOME'] + '/probe', 'w').write('ok')"))
    assert probe.returncode == 0, probe.stderr[-2000:]
    uid, crds, iptables = probe.stdout.split()
    assert uid == "65532" and int(crds) >= 2 and iptables.endswith("/iptables")
    version = in_image(root, config, "iptables", "--version")
    assert version.returncode == 0 and "iptables v1.8" in version.stdout, version.stderr


def test_no_compiler_and_the_size_budget(built: Built) -> None:
    root = built.root
    patterns = ("usr/bin/*gcc*", "usr/bin/cc", "usr/bin/c++", "usr/bin/*g++*", "usr/lib/gcc/*/*/cc1", "usr/bin/ld",
                "usr/bin/as", "usr/bin/clang*")
    compilers = [p for pattern in patterns for p in root.glob(pattern)]
    assert not compilers
    size_mb = sum(p.lstat().st_size for p in root.rglob("*")) / 1e6
    print(f"unpacked image: {size_mb:.0f} MB")
    assert size_mb < SIZE_BUDGET_MB, f"the image grew to {size_mb:.0f} MB (budget {SIZE_BUDGET_MB} MB)"


def test_a_second_ensure_image_reuses_the_archive(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert image.ensure_image() == built.ref
    assert "reused" in capsys.readouterr().err and time.monotonic() - start < 30


def test_pause_image_is_static_and_exits_on_sigterm(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the pause program: apt-get install gcc libc6-dev")
    ref = image.ensure_pause_image()
    assert ref.tag.startswith("localhost/pause:replayops-")
    root = tmp_path / "rootfs"
    root.mkdir()
    config = unpack(ref.archive, root)
    assert config["config"]["Entrypoint"] == ["/pause"]
    pause = root / "pause"
    assert "statically linked" in subprocess.run(["file", str(pause)], capture_output=True, text=True,
                                                 timeout=30).stdout or not shutil.which("file")
    assert pause.stat().st_size < 1_000_000
    proc = subprocess.Popen([str(pause)])
    try:
        time.sleep(0.3)
        assert proc.poll() is None  # it waits
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
