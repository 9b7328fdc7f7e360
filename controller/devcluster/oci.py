"""Write an OCI image archive from a directory, with nothing but the standard library.

``write_oci_archive`` packs one root filesystem as one gzip layer and writes an
``oci-archive`` tar (``oci-layout``, ``index.json``, ``blobs/sha256/…``) that
``buildah pull oci-archive:FILE`` and ``ctr images import`` read: every blob is
named by the sha256 of its bytes, the manifest's sizes and digests are those of
the blobs, the config's ``diff_id`` is the digest of the uncompressed layer, and
the index names the image (``org.opencontainers.image.ref.name``). File owners
are written as numbers only; the archive appears (renamed into place) only when
complete.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
# Directories whose contents belong to the runtime, never to a layer (kept, empty).
RUNTIME_DIRS = ("dev", "proc", "sys", "run")


def oci_arch() -> str:
    """This machine's architecture in OCI terms (``amd64``, ``arm64``)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


class _Hashing(io.RawIOBase):
    """A write-only stream that counts and hashes what passes through to ``out``."""

    def __init__(self, out: Any) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` in a stable order, parents first; runtime dirs' contents skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        if rel.parts and rel.parts[0] in RUNTIME_DIRS and len(rel.parts) == 1:
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
            yield here / name
        for name in dirnames:
            if not (here / name).is_symlink():
                yield here / name


def _numeric_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    return info


def write_layer(rootfs: Path, blob_dir: Path) -> tuple[str, int, str]:
    """Tar and gzip ``rootfs`` into ``blob_dir``; return (blob digest, blob size, diff_id)."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    tmp = blob_dir / f".layer-{os.getpid()}.tmp"
    with tmp.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as gz:  # type: ignore[arg-type]
            plain = _Hashing(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for path in _walk(rootfs):
                    tar.add(str(path), arcname=str(path.relative_to(rootfs)), recursive=False,
                            filter=_numeric_owner)
    digest = compressed.digest
    tmp.rename(blob_dir / digest.split(":", 1)[1])
    return digest, compressed.size, plain.digest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(archive: Path, rootfs: Path, ref: str, config: dict[str, Any],
                      history: str = "replayops") -> str:
    """Pack ``rootfs`` as a one-layer image named ``ref`` into ``archive``; return the manifest digest.

    ``config`` is the image's runtime config (``Env``, ``Entrypoint``, ``Cmd``, ``User``…).
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    work = archive.parent / f".{archive.name}.blobs"
    work.mkdir(exist_ok=True)
    try:
        layer_digest, layer_size, diff_id = write_layer(rootfs, work)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        image_config = json.dumps({
            "created": created, "architecture": oci_arch(), "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": history}],
        }, sort_keys=True).encode()
        config_digest = "sha256:" + hashlib.sha256(image_config).hexdigest()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(image_config)},
            "layers": [{"mediaType": LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
        }, sort_keys=True).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = json.dumps({
            "schemaVersion": 2, "mediaType": INDEX,
            "manifests": [{
                "mediaType": MANIFEST, "digest": manifest_digest, "size": len(manifest),
                "annotations": {REF_NAME: ref, CONTAINERD_NAME: ref},
                "platform": {"architecture": oci_arch(), "os": "linux"},
            }],
        }, sort_keys=True).encode()
        tmp = archive.with_name(f".{archive.name}.tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            _add_bytes(tar, "index.json", index)
            for name, data in ((config_digest, image_config), (manifest_digest, manifest)):
                _add_bytes(tar, "blobs/sha256/" + name.split(":", 1)[1], data)
            layer = work / layer_digest.split(":", 1)[1]
            tar.add(str(layer), arcname="blobs/sha256/" + layer.name, filter=_numeric_owner)
        tmp.rename(archive)
        return manifest_digest
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()


def read_oci_archive(archive: Path) -> dict[str, Any]:
    """The index, manifest and config of a one-image archive, each checked against its digest and size."""
    with tarfile.open(archive) as tar:
        def blob(desc: dict[str, Any]) -> bytes:
            member = tar.extractfile("blobs/sha256/" + desc["digest"].split(":", 1)[1])
            assert member is not None
            data = member.read()
            if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"] or len(data) != desc["size"]:
                raise ValueError(f"{archive}: blob {desc['digest']} does not match its descriptor")
            return data

        layout = tar.extractfile("oci-layout")
        index_file = tar.extractfile("index.json")
        assert layout is not None and index_file is not None
        if json.load(layout).get("imageLayoutVersion") != "1.0.0":
            raise ValueError(f"{archive}: not an OCI layout")
        index = json.load(index_file)
        (desc,) = index["manifests"]
        manifest = json.loads(blob(desc))
        config = json.loads(blob(manifest["config"]))
        for layer in manifest["layers"]:
            blob(layer)
        return {"index": index, "manifest": manifest, "config": config}
