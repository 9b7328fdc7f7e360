"""The snapshot store: capture streams and named snapshots of RRPairs, on the filesystem by default.

Layout under ``$REPLAYOPS_HOME/store``::

    streams/<stream>/<time>-<n>.jsonl.gz     what the forwarder wrote, per capture stream
    snapshots/<name>/manifest.json           service, time window, counts, policy, format version
    snapshots/<name>/segments/<n>.jsonl.gz   the snapshot's RRPairs

Every file is written to a temporary name and renamed into place, so a crash
never leaves a torn segment. Reading reports a corrupt segment or line by file
and line and, unless ``strict``, goes on with the rest. ``Store`` is the
interface an object-store backend implements.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller import paths
from controller.store import rrpair

NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
SEGMENT_RECORDS = 5000


class StoreError(RuntimeError):
    """A store operation failed; the message names the snapshot, file and line."""


class DuplicateBatch(StoreError):
    """A batch the store already holds (a retry of one whose answer was lost): it is stored once."""


@dataclass(frozen=True)
class ReadProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Manifest:
    name: str
    service: str = ""
    start: float = 0.0
    end: float = 0.0
    count: int = 0
    by_direction: dict[str, int] = field(default_factory=dict)
    policy: str = ""
    source: str = ""
    version: int = rrpair.VERSION
    created: float = field(default_factory=time.time)
    redactions: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what a cut could not read (file:line: why)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Store(Protocol):
    def append(self, stream: str, records: Iterable[dict[str, Any]], *, batch: str | None = None,
               at: float | None = None) -> int: ...
    def write_snapshot(self, manifest: Manifest, records: Iterable[dict[str, Any]]) -> Manifest: ...
    def snapshots(self) -> list[Manifest]: ...
    def manifest(self, name: str) -> Manifest: ...
    def read(self, name: str, *, strict: bool = True,
             problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]: ...
    def cut(self, name: str, *, service: str, start: float, end: float, stream: str | None = None,
            problems: list[ReadProblem] | None = None) -> Manifest: ...
    def remove(self, name: str) -> bool: ...
    def exists(self, name: str) -> bool: ...
    def expire(self, *, max_age_s: float | None = None, max_bytes: int | None = None, stream: str | None = None,
               now: float | None = None) -> list[str]: ...


def _staged(path: Path, data: bytes) -> Path:
    """``data`` in a temporary file beside ``path``, on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sync_dir(directory: Path) -> None:
    """The directory's entries on disk too (a new file's name survives a crash)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    os.replace(_staged(path, data), path)
    _sync_dir(path.parent)


def _write_once(path: Path, data: bytes) -> bool:
    """Write ``path`` unless it exists (atomically, whoever else writes it at once); False when it did."""
    tmp = _staged(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def encode_segment(records: Iterable[dict[str, Any]]) -> tuple[bytes, int]:
    lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records]
    return gzip.compress(("\n".join(lines) + "\n").encode() if lines else b"", mtime=0), len(lines)


def read_segment(path: Path, *, strict: bool = True,
                 problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]:
    """The records of one segment, migrated; a bad line raises (strict) or is reported and skipped."""
    def bad(line: int, message: str) -> None:
        problem = ReadProblem(str(path), line, message)
        if strict:
            raise StoreError(str(problem))
        if problems is not None:
            problems.append(problem)

    lineno = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for lineno, text in enumerate(fh, 1):  # noqa: B007 - lineno is reported after the loop
                if not text.strip():
                    continue
                try:
                    yield rrpair.migrate(json.loads(text))
                except (ValueError, rrpair.RecordError) as exc:
                    bad(lineno, f"not an RRPair: {exc}")
    except FileNotFoundError:  # retention (another replica's too) removed it meanwhile: not a problem
        return
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        bad(lineno + 1, f"corrupt or truncated segment: {exc}")


class FileStore:
    """The filesystem backend."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.home() / "store"

    def _snapdir(self, name: str) -> Path:
        if not NAME.match(name):
            raise StoreError(f"snapshot name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
        return self.root / "snapshots" / name

    def append(self, stream: str, records: Iterable[dict[str, Any]], *, batch: str | None = None,
               at: float | None = None) -> int:
        """Write ``records`` as one new segment of ``stream``, on disk before it returns; return how many.

        With ``batch`` (its id, and ``at``: when its sender made it) the segment is named by it and written
        at most once, whichever writer gets it: a retry raises ``DuplicateBatch``."""
        data, count = encode_segment(records)
        if count:
            when = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
            path = self.root / "streams" / _safe(stream) / f"{when}-{batch or uuid.uuid4().hex}.jsonl.gz"
            if not _write_once(path, data):
                raise DuplicateBatch(f"batch {batch} of stream {stream} is stored already ({path.name})")
        return count

    def write_snapshot(self, manifest: Manifest, records: Iterable[dict[str, Any]]) -> Manifest:
        """Write a snapshot (segments, then the manifest last: a snapshot without one is incomplete)."""
        target = self._snapdir(manifest.name)
        if target.exists():
            raise StoreError(f"snapshot {manifest.name!r} already exists; remove it first")
        staging = target.with_name(f".{manifest.name}.{uuid.uuid4().hex[:8]}.tmp")
        counts: dict[str, int] = {}
        batch: list[dict[str, Any]] = []
        n, first, last = 0, float("inf"), 0.0

        def flush() -> None:
            nonlocal n
            if batch:
                n += 1
                _write_atomic(staging / "segments" / f"{n:06d}.jsonl.gz", encode_segment(batch)[0])
                batch.clear()

        try:
            for record in records:
                batch.append(record)
                counts[record["direction"]] = counts.get(record["direction"], 0) + 1
                stamps = record.get("timestamps") or {}
                first = min(first, float(stamps.get("request", 0)))
                last = max(last, float(stamps.get("response", 0)))
                if len(batch) >= SEGMENT_RECORDS:
                    flush()
            flush()
            manifest.count = sum(counts.values())
            manifest.by_direction = counts
            if manifest.count:
                manifest.start = manifest.start or first
                manifest.end = manifest.end or last
            _write_atomic(staging / "manifest.json", json.dumps(manifest.to_json(), indent=2).encode())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
        except BaseException:  # a failed write leaves nothing behind: no half snapshot, no staging
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _sync_dir(target.parent)
        return manifest

    def exists(self, name: str) -> bool:
        return (self._snapdir(name) / "manifest.json").is_file()

    def manifest(self, name: str) -> Manifest:
        path = self._snapdir(name) / "manifest.json"
        try:
            return Manifest.from_json(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise StoreError(f"no snapshot {name!r} in {self.root}") from exc
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable manifest: {exc}") from exc

    def snapshots(self) -> list[Manifest]:
        base = self.root / "snapshots"
        names = sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) if base.is_dir() else []
        return [self.manifest(n) for n in names if (base / n / "manifest.json").is_file()]

    def segments(self, name: str) -> list[Path]:
        self.manifest(name)
        return sorted((self._snapdir(name) / "segments").glob("*.jsonl.gz"))

    def read(self, name: str, *, strict: bool = True,
             problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]:
        """Stream a snapshot's records (bounded memory), in recorded order per segment."""
        for segment in self.segments(name):
            yield from read_segment(segment, strict=strict, problems=problems)

    def stream_records(self, stream: str, *, problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]:
        for segment in sorted((self.root / "streams" / _safe(stream)).glob("*.jsonl.gz")):
            yield from read_segment(segment, strict=False, problems=problems)

    def streams(self) -> list[str]:
        base = self.root / "streams"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def cut(self, name: str, *, service: str, start: float, end: float, stream: str | None = None,
            problems: list[ReadProblem] | None = None) -> Manifest:
        """A named snapshot of ``service``'s records between ``start`` and ``end`` (epoch seconds). What
        cannot be read (a corrupt segment, a bad line) is skipped, appended to ``problems`` and named in
        the manifest's ``problems``."""
        found: list[ReadProblem] = problems if problems is not None else []

        def wanted() -> Iterator[dict[str, Any]]:
            for s in [stream] if stream else self.streams():
                for record in self.stream_records(s, problems=found):
                    at = float((record.get("timestamps") or {}).get("request", 0))
                    if (not service or record.get("service") == service) and start <= at <= end:
                        yield record
            manifest.problems = [str(p) for p in found]  # read to the end: before the manifest is written
        manifest = Manifest(name=name, service=service, start=start, end=end,
                            source=f"cut from {stream or 'all streams'}")
        return self.write_snapshot(manifest, wanted())

    def remove(self, name: str) -> bool:
        target = self._snapdir(name)
        if not target.exists():
            return False
        trash = target.with_name(f".{name}.{uuid.uuid4().hex[:8]}.rm")
        os.replace(target, trash)
        shutil.rmtree(trash)
        return True

    def expire(self, *, max_age_s: float | None = None, max_bytes: int | None = None, stream: str | None = None,
               now: float | None = None) -> list[str]:
        """Retention for capture streams (one, or all): delete segments older than ``max_age_s``, then the
        oldest until the stream fits ``max_bytes``; return what was deleted."""
        now = now or time.time()
        base = self.root / "streams"
        every = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
        dirs = [base / _safe(stream)] if stream else every
        removed = []
        for directory in dirs:
            segments = sorted((stat.st_mtime, stat.st_size, path) for path in directory.glob("*.jsonl.gz")
                              if (stat := _stat(path)) is not None)  # another replica may delete meanwhile
            keep = []
            for mtime, size, segment in segments:
                if max_age_s is not None and now - mtime > max_age_s:
                    segment.unlink(missing_ok=True)
                    removed.append(str(segment))
                else:
                    keep.append((size, segment))
            total = sum(size for size, _ in keep)
            while max_bytes is not None and keep and total > max_bytes:
                size, oldest = keep.pop(0)
                total -= size
                oldest.unlink(missing_ok=True)
                removed.append(str(oldest))
        return removed


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _safe(stream: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stream) or "_"
