"""The snapshot store: capture streams and named snapshots of RRPairs, on the filesystem by default.

Layout under ``$REPLAYOPS_HOME/store``::

    streams/<stream>/<time>-<writer>-<n>.open.jsonl.gz   the segment a writer appends to now
    streams/<stream>/<time>-<writer>-<n>.jsonl.gz        sealed: rolled by size or age
    streams/<stream>/.batches/<batch id>                 the batches a stream holds (retries stored once)
    snapshots/<name>/manifest.json                       service, time window, counts, policy, format version
    snapshots/<name>/segments/<n>.jsonl.gz               the snapshot's RRPairs

A capture stream's segment is a series of gzip members, one per batch, each on
disk before its batch is acknowledged; each writer (process) appends to its own
segment, so writers never share a file. A member a crash cut short was never
acknowledged: reading skips it while its segment is open, and sealing (by its
writer, or by any writer once the segment is abandoned) cuts it off. Snapshot
files are written to a temporary name and renamed into place. Reading reports a
corrupt segment or line by file and line and, unless ``strict``, goes on with
the rest. ``Store`` is the interface an object-store backend implements.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import gzip
import heapq
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from controller import paths
from controller.store import rrpair

NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
SEGMENT_RECORDS = 5000
ROLL_BYTES = 64 * 1024 * 1024  # a stream segment is sealed once this large...
ROLL_SECONDS = 300.0  # ...or this old
BATCHES_KEPT = 3600.0  # how long a stored batch id is remembered (a sender retries for 5 minutes)
DEDUP_SECONDS = 900.0  # a batch stored twice by a crash comes again within a sender's retries (5 minutes)
STALE_STAGING = 3600.0  # a temporary file this old is a crashed write's: removed
OPEN = ".open.jsonl.gz"
MEMBER_LIMIT = 256 * 1024 * 1024  # a stream segment's batch inflates to at most this (the forwarder's cap is 64 MiB)


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
    namespace: str = ""  # whose it is: the namespace it was cut for ("" when made outside the cluster)
    shared: list[str] = field(default_factory=list)  # namespaces that may read it besides ("*": every one)

    def readable_by(self, namespace: str) -> bool:
        """Whether replays of ``namespace`` may read it: it is that namespace's, or shared with it."""
        return namespace in (self.namespace, *self.shared) or "*" in self.shared

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
    def share(self, name: str, namespaces: Iterable[str]) -> Manifest: ...
    def remove(self, name: str) -> bool: ...
    def exists(self, name: str) -> bool: ...
    def expire(self, *, max_age_s: float | None = None, max_bytes: int | None = None, stream: str | None = None,
               now: float | None = None) -> list[str]: ...
    def tidy(self, *, now: float | None = None) -> list[str]: ...
    def close(self) -> None: ...


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


def _members(path: Path, fh: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(end offset, data) of each complete gzip member of ``fh``; a member cut short raises EOFError."""
    inflate, out, offset, pending, started = zlib.decompressobj(31), bytearray(), 0, b"", False
    while True:
        chunk, pending = pending or fh.read(1 << 20), b""
        if not chunk:
            if started:
                raise EOFError(f"a batch cut short after byte {offset}")
            return
        started = True
        out += inflate.decompress(chunk)
        if len(out) > MEMBER_LIMIT:
            raise zlib.error(f"a batch inflates past {MEMBER_LIMIT} bytes after byte {offset}")
        if inflate.eof:
            pending = inflate.unused_data
            offset += len(chunk) - len(pending)
            yield offset, bytes(out)
            inflate, started = zlib.decompressobj(31), False
            out.clear()
        else:
            offset += len(chunk)


def whole_batches(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of each whole batch of a stream segment, as stored (a batch being written,
    or cut short, is left out)."""
    try:
        with open(path, "rb") as fh:
            for _, data in _members(path, fh):
                yield data
    except (FileNotFoundError, EOFError):
        return


def read_stream_segment(path: Path, *, problems: list[ReadProblem] | None = None) -> Iterator[dict[str, Any]]:
    """The records of a capture stream's segment, batch by batch: only whole batches (a batch being
    written, or cut short by a crash, was never acknowledged; in a sealed segment it is reported)."""
    line = 0
    try:
        with open(path, "rb") as fh:
            for _, data in _members(path, fh):
                for text in data.decode("utf-8").splitlines():
                    line += 1
                    if text.strip():
                        try:
                            yield rrpair.migrate(json.loads(text))
                        except (ValueError, rrpair.RecordError) as exc:
                            if problems is not None:
                                problems.append(ReadProblem(str(path), line, f"not an RRPair: {exc}"))
    except FileNotFoundError:  # sealed (renamed) or expired meanwhile: sealed, it is read under its new name
        if path.name.endswith(OPEN) and (sealed := path.with_name(path.name[:-len(OPEN)] + ".jsonl.gz")).exists():
            yield from read_stream_segment(sealed, problems=problems)
    except EOFError as exc:
        if not path.name.endswith(OPEN) and problems is not None:
            problems.append(ReadProblem(str(path), line + 1, f"corrupt or truncated segment: {exc}"))
    except (OSError, zlib.error, UnicodeDecodeError) as exc:
        if problems is not None:
            problems.append(ReadProblem(str(path), line + 1, f"corrupt or truncated segment: {exc}"))


def _whole(path: Path) -> int:
    """The length of ``path``'s complete gzip members (what a crash left after them is cut off on sealing)."""
    end = 0
    try:
        with open(path, "rb") as fh:
            for offset, _ in _members(path, fh):
                end = offset
    except (EOFError, zlib.error):
        pass
    return end


@dataclass
class _Segment:
    path: Path
    fh: BinaryIO
    opened: float
    size: int = 0


class FileStore:
    """The filesystem backend."""

    def __init__(self, root: Path | None = None, *, roll_bytes: int = ROLL_BYTES,
                 roll_seconds: float = ROLL_SECONDS) -> None:
        self.root = root or paths.home() / "store"
        self.roll_bytes, self.roll_seconds = roll_bytes, roll_seconds
        self.writer = f"{_safe(socket.gethostname())[:40]}-{uuid.uuid4().hex[:6]}"
        self._open: dict[str, _Segment] = {}  # stream -> the segment this writer appends to
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._made = 0

    def _snapdir(self, name: str) -> Path:
        if not NAME.match(name):
            raise StoreError(f"snapshot name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
        return self.root / "snapshots" / name

    def append(self, stream: str, records: Iterable[dict[str, Any]], *, batch: str | None = None,
               at: float | None = None) -> int:
        """Append ``records`` to ``stream`` as one batch, on disk before it returns; return how many.

        With ``batch`` (its id) the batch is stored at most once, whichever writer gets it: a retry raises
        ``DuplicateBatch``. ``at`` (when its sender made it) is not needed by this backend."""
        data, count = encode_segment(records)
        if not count:
            return 0
        directory = self.root / "streams" / _safe(stream)
        marker = directory / ".batches" / _safe(batch) if batch else None
        with self._lock(stream):
            if marker is not None and marker.exists():  # a retry, or its first copy stored while this one waited
                raise DuplicateBatch(f"batch {batch} of stream {stream} is stored already")
            segment = self._segment(stream, directory)
            start = segment.size
            try:
                segment.fh.write(data)
                segment.fh.flush()
                os.fsync(segment.fh.fileno())
                if marker is not None and not _mark(marker):  # another writer stored it meanwhile
                    raise DuplicateBatch(f"batch {batch} of stream {stream} is stored already")
            except BaseException:
                self._undo(stream, segment, start)  # nothing of a batch not acknowledged stays
                raise
            segment.size += len(data)
            if segment.size >= self.roll_bytes:
                self._seal(stream)
        return count

    def _undo(self, stream: str, segment: _Segment, start: int) -> None:
        """Cut ``segment`` back to ``start`` bytes, writing on from there; a segment that cannot be cut back
        is sealed as it is (its last batch cut off then) and the next batch goes to a new one."""
        try:
            segment.fh.truncate(start)
            segment.fh.seek(start)  # truncate leaves the position where the write ended: no gap of zeros
        except OSError:
            with self._guard:
                self._open.pop(stream, None)
            with contextlib.suppress(OSError):
                segment.fh.close()
                _seal_file(segment.path, cut=True)

    def _lock(self, stream: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(stream, threading.Lock())

    def _segment(self, stream: str, directory: Path) -> _Segment:
        """This writer's open segment of ``stream``: a new one when it has none, or when it was sealed under
        it (by a writer that took it for abandoned), or once it is old enough to roll."""
        segment = self._open.get(stream)
        if segment is not None and (not segment.path.exists() or time.time() - segment.opened >= self.roll_seconds):
            self._seal(stream)
            segment = None
        if segment is None:
            directory.mkdir(parents=True, exist_ok=True)
            self._made += 1
            when = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            path = directory / f"{when}-{self.writer}-{self._made:04d}{OPEN}"
            segment = _Segment(path, open(path, "xb"), time.time())  # noqa: SIM115 - closed on sealing
            _sync_dir(directory)
            with self._guard:
                self._open[stream] = segment
        return segment

    def _seal(self, stream: str) -> None:
        with self._guard:
            segment = self._open.pop(stream)
        segment.fh.close()
        if segment.size == 0:
            segment.path.unlink(missing_ok=True)
        elif segment.path.exists():
            _seal_file(segment.path)

    def close(self) -> None:
        """Seal every segment this writer has open (at shutdown)."""
        for stream in list(self._open):
            with self._lock(stream):
                if stream in self._open:
                    self._seal(stream)

    def tidy(self, *, now: float | None = None) -> list[str]:
        """Housekeeping, off the request path: roll this writer's idle segments; seal segments their
        writer abandoned (a crash), cutting off a batch it left half written; forget batch ids older than
        a sender retries; remove temporary files a crashed write left. Return what was sealed or removed."""
        now = now or time.time()
        for stream in list(self._open):
            with self._lock(stream):
                if stream in self._open and now - self._open[stream].opened >= self.roll_seconds:
                    self._seal(stream)
        with self._guard:  # request threads open segments meanwhile
            ours = {s.path for s in self._open.values()}
        done = []
        for path in self.root.glob(f"streams/*/*{OPEN}"):
            if path not in ours and (stat := _stat(path)) and now - stat.st_mtime > 2 * self.roll_seconds + 60:
                _seal_file(path, cut=True)
                done.append(str(path))
        for path in self.root.glob("streams/*/.batches/*"):
            if (stat := _stat(path)) and now - stat.st_mtime > BATCHES_KEPT:
                path.unlink(missing_ok=True)
        for path in [*self.root.glob("streams/*/.*.tmp"), *self.root.glob("snapshots/.*.tmp"),
                     *self.root.glob("snapshots/.*.rm")]:
            if (stat := _stat(path)) and now - stat.st_mtime > STALE_STAGING:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                done.append(str(path))
        return done

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
        """A stream's records (sealed and open segments) in the order they were recorded: segments whose
        time spans overlap (two writers took the stream at once) are merged by request time. Each record
        comes once: a batch a crash let a writer store but not acknowledge, stored again on its retry
        (within minutes), is read once by record id."""
        seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        for group in _overlapping(sorted((self.root / "streams" / _safe(stream)).glob("*.jsonl.gz"))):
            readers = [read_stream_segment(segment, problems=problems) for segment in group]
            for record in heapq.merge(*readers, key=_recorded) if len(readers) > 1 else readers[0]:
                at = _recorded(record)
                while seen and next(iter(seen.values())) < at - DEDUP_SECONDS:  # memory: minutes of ids
                    seen.popitem(last=False)
                if record["id"] not in seen:
                    seen[record["id"]] = at
                    yield record

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

    def share(self, name: str, namespaces: Iterable[str]) -> Manifest:
        """Let replays of ``namespaces`` read snapshot ``name`` (its manifest rewritten in one rename)."""
        manifest = self.manifest(name)
        manifest.shared = sorted(set(manifest.shared) | set(namespaces))
        _write_atomic(self._snapdir(name) / "manifest.json", json.dumps(manifest.to_json(), indent=2).encode())
        return manifest

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
        """Retention for capture streams (one, or all): delete sealed segments last written more than
        ``max_age_s`` ago, then the oldest until the stream fits ``max_bytes``; return what was deleted."""
        now = now or time.time()
        base = self.root / "streams"
        every = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
        dirs = [base / _safe(stream)] if stream else every
        removed = []
        for directory in dirs:
            segments = sorted((stat.st_mtime, stat.st_size, path) for path in directory.glob("*.jsonl.gz")
                              if not path.name.endswith(OPEN)  # a writer appends to it: sealed first
                              and (stat := _stat(path)) is not None)  # another replica may delete meanwhile
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


def _recorded(record: Mapping[str, Any]) -> float:
    return float((record.get("timestamps") or {}).get("request") or 0)


def _span(segment: Path) -> tuple[float, float]:
    """When a stream segment was begun (its name: ``<%Y%m%dT%H%M%S>-...``) and last written (its mtime)."""
    try:
        begun = float(calendar.timegm(time.strptime(segment.name[:15], "%Y%m%dT%H%M%S")))
    except ValueError:
        begun = 0.0
    stat = _stat(segment)
    return begun, max(begun, stat.st_mtime) if stat else begun


def _overlapping(segments: list[Path]) -> Iterator[list[Path]]:
    """``segments`` (sorted by name: by when they were begun) in groups whose time spans overlap."""
    group: list[Path] = []
    end = -1.0
    for segment in segments:
        begun, last = _span(segment)
        if group and begun > end:
            yield group
            group = []
        group.append(segment)
        end = max(end, last)
    if group:
        yield group


def _mark(marker: Path) -> bool:
    """Create ``marker`` unless it exists (atomic on every filesystem); False when it did."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _seal_file(path: Path, *, cut: bool = False) -> None:
    """Rename an open segment to its sealed name; with ``cut``, first cut off a batch left half written."""
    if cut:
        whole = _whole(path)
        if whole < path.stat().st_size:
            os.truncate(path, whole)
    if path.stat().st_size == 0:
        path.unlink(missing_ok=True)
    else:
        os.replace(path, path.with_name(path.name[:-len(OPEN)] + ".jsonl.gz"))
    _sync_dir(path.parent)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _safe(stream: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stream) or "_"
