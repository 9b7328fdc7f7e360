"""The image build's pure parts: the OCI writer, the context hash, the step runner, the missing-tools message."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster import image, oci

REPO = Path(__file__).resolve().parents[2]


def _blob(tar: tarfile.TarFile, desc: dict[str, Any]) -> bytes:
    member = tar.extractfile("blobs/sha256/" + desc["digest"].removeprefix("sha256:"))
    assert member is not None
    data = member.read()
    assert len(data) == desc["size"], desc
    assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"], desc
    return data


def test_oci_archive_is_a_valid_layout_whose_digests_and_sizes_match(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    (root / "bin").symlink_to("usr/bin")
    (root / "dev").mkdir()
    (root / "dev/stray").write_text("runtime dirs are packed empty")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("")
    archive = tmp_path / "out" / "img.tar"

    manifest_digest = oci.write_oci_archive(archive, root, "localhost/test:1", {"Entrypoint": ["/usr/bin/tool"]})

    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names
        layout, index_file = tar.extractfile("oci-layout"), tar.extractfile("index.json")
        assert layout is not None and index_file is not None
        assert json.load(layout) == {"imageLayoutVersion": "1.0.0"}
        index = json.load(index_file)
        assert index["schemaVersion"] == 2 and index["mediaType"] == oci.INDEX
        (desc,) = index["manifests"]
        assert desc["digest"] == manifest_digest and desc["mediaType"] == oci.MANIFEST
        assert desc["annotations"][oci.REF_NAME] == "localhost/test:1"
        assert desc["platform"] == {"architecture": oci.oci_arch(), "os": "linux"}
        manifest = json.loads(_blob(tar, desc))
        assert manifest["config"]["mediaType"] == oci.CONFIG
        config = json.loads(_blob(tar, manifest["config"]))
        (layer_desc,) = manifest["layers"]
        assert layer_desc["mediaType"] == oci.LAYER_GZIP
        layer = gzip.decompress(_blob(tar, layer_desc))
        # every blob in the archive is one the manifest names, and nothing else
        blobs = {n for n in names if n.startswith("blobs/sha256/")}
        assert blobs == {"blobs/sha256/" + d["digest"].removeprefix("sha256:")
                         for d in (desc, manifest["config"], layer_desc)}

    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
    assert config["config"] == {"Entrypoint": ["/usr/bin/tool"]} and config["os"] == "linux"
    assert len(config["history"]) == 1
    with tarfile.open(fileobj=io.BytesIO(layer)) as files:
        members = {m.name: m for m in files.getmembers()}
    assert set(members) == {"bin", "dev", "etc", "etc/hostname", "usr", "usr/bin", "usr/bin/tool",
                            "usr/bin/tool-again"}
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["usr/bin/tool"].mode & 0o111
    assert {members["usr/bin/tool"].type, members["usr/bin/tool-again"].type} == {tarfile.REGTYPE, tarfile.LNKTYPE}
    assert all(m.uname == "" and m.gname == "" for m in members.values())
    assert oci.read_oci_archive(archive)["config"] == config
    assert [p.name for p in archive.parent.iterdir()] == ["img.tar"]  # no temporary files left


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def context_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "controller").mkdir(parents=True)
    (repo / "tests").mkdir()
    shutil.copy(REPO / ".dockerignore", repo / ".dockerignore")
    (repo / "Dockerfile").write_text("FROM scratch\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (repo / "controller/app.py").write_text("print('v1')\n")
    (repo / "tests/test_app.py").write_text("def test(): pass\n")
    (repo / ".gitignore").write_text(".venv/\n__pycache__/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return repo


def test_context_hash_follows_the_sent_files_and_nothing_else(context_repo: Path) -> None:
    repo = context_repo
    first = image.context_hash(repo)
    assert image.context_files(repo) == ["controller/app.py", "pyproject.toml"]
    app = repo / "controller/app.py"

    os.utime(app, (1, 1))
    (repo / "tests/test_app.py").write_text("def test(): assert True\n")  # tracked, not in the context
    (repo / ".venv/lib").mkdir(parents=True)
    (repo / ".venv/lib/x.py").write_text("ignored by git\n")
    (repo / "controller/__pycache__").mkdir()
    (repo / "controller/__pycache__/app.pyc").write_bytes(b"\0")
    assert image.context_hash(repo) == first

    app.write_text("print('v2')\n")  # an uncommitted change to a tracked file
    changed = image.context_hash(repo)
    assert changed != first
    app.write_text("print('v1')\n")
    assert image.context_hash(repo) == first

    app.chmod(0o755)
    assert image.context_hash(repo) != first
    app.chmod(0o644)

    (repo / "controller/new.py").write_text("")  # new and not ignored: the context sends it
    assert image.context_hash(repo) != first
    (repo / "controller/new.py").unlink()

    (repo / "Dockerfile").write_text("FROM scratch\nUSER 1\n")
    assert image.context_hash(repo) != first
    (repo / "Dockerfile").write_text("FROM scratch\n")
    assert image.context_hash(repo) == first
    assert image.context_hash(repo, extra=["localhost/replayops-base:other"]) != first


@pytest.mark.parametrize(("path", "ignored"), [
    ("pyproject.toml", False), ("controller/cli.py", False), ("crds/a.yaml", False),
    ("manifests/base/x.yaml", False), ("tests/unit/test_x.py", True), (".venv/bin/python", True),
    ("controller/__pycache__/cli.cpython-311.pyc", True), ("controller/x.pyc", True), ("Makefile", True),
    ("replayops.egg-info/PKG-INFO", True),
])
def test_dockerignore_rules_match_dockers(path: str, ignored: bool) -> None:
    rules = image.ignore_rules((REPO / ".dockerignore").read_text())
    assert image.is_ignored(path, rules) is ignored


def test_missing_buildah_says_what_to_install_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main
    from controller.devcluster import errors

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(errors, "SYSTEM_DIRS", ())  # debootstrap lives in /usr/sbin: no looking there
    assert main(["dev", "image"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install buildah debootstrap" in err
    assert "Traceback" not in err


def test_a_failed_step_names_itself_its_log_and_its_last_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from controller.devcluster import steps

    monkeypatch.setattr(steps, "PROGRESS_EVERY_S", 0.2)
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(image.DevClusterError) as err:
        image.run_step("frobnicate", ["sh", "-c", "sleep 0.5; echo the-cause; exit 3"], log, timeout_s=60)
    message = str(err.value)
    assert "frobnicate failed (exit 3)" in message and str(log) in message and "the-cause" in message
    progress = capsys.readouterr().err
    assert f"frobnicate (log {log})" in progress and "frobnicate: 0 s" in progress


def test_a_matching_archive_is_reused_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("buildah", "debootstrap"):  # present, and failing loudly if anything runs them
        (bindir / tool).write_text("#!/bin/sh\necho ran >&2\nexit 99\n")
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    base = image.image_dir() / f"base-{image.base_key()}.tar"
    base.parent.mkdir(parents=True)
    base.write_bytes(b"")
    digest = image.context_hash(REPO, extra=[f"localhost/replayops-base:{image.base_key()}"])[:16]
    (image.image_dir() / f"replayops-{digest}.tar").write_bytes(b"")

    ref = image.ensure_image()

    assert ref.tag == f"localhost/replayops:{digest}" and ref.archive.name == f"replayops-{digest}.tar"
    assert "reused" in capsys.readouterr().err


def test_trim_keeps_copyrights_dpkg_and_empties_host_files(tmp_path: Path) -> None:
    root = tmp_path
    for rel in ("usr/share/doc/pkg/copyright", "usr/share/doc/pkg/changelog.gz", "usr/share/man/man1/x.1.gz",
                "usr/share/locale/de/LC_MESSAGES/x.mo", "usr/share/locale/locale.alias",
                "var/lib/apt/lists/deb_Packages", "var/cache/apt/pkgcache.bin", "var/log/dpkg.log",
                "var/lib/dpkg/status", "var/lib/dpkg/status-old", "etc/resolv.conf", "etc/hostname"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    image.trim_rootfs(root)
    kept = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert kept == {"usr/share/doc/pkg/copyright", "usr/share/locale/locale.alias", "var/lib/dpkg/status",
                    "etc/resolv.conf", "etc/hostname"}
    assert (root / "etc/resolv.conf").read_text() == "" and (root / "var/lib/apt/lists/partial").is_dir()
