"""Compare a replayed response with the recorded one: status, chosen headers, and bodies.

JSON bodies are compared leaf by leaf (with ignored or include-only paths and
a numeric tolerance); other bodies by hash. ``noise`` finds the fields that
differ between two recordings of the same request — timestamps, ids — so they
can be ignored and reported as such; ``volatile`` the fields that will differ on
every call by their look (UUIDs, ISO-8601 times, epoch times), for requests
recorded once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.replay import jsonpath
from controller.store import rrpair


@dataclass(frozen=True)
class Rules:
    status: bool = True
    headers: tuple[str, ...] = ()
    body: str = "json"  # json | hash | none
    ignore: tuple[str, ...] = ()
    include_only: tuple[str, ...] = ()
    tolerance: float = 0.0

    @classmethod
    def from_spec(cls, assertions: Mapping[str, Any] | None) -> Rules:
        a = assertions or {}
        body = a.get("body") or {}
        return cls(bool(a.get("status", True)), tuple(h.lower() for h in a.get("headers") or ()),
                   str(body.get("compare", "json")), tuple(body.get("ignorePaths") or ()),
                   tuple(body.get("includeOnly") or ()), float(body.get("numericTolerance", 0.0)))


@dataclass
class Diff:
    """Why a response did not match: one line per difference."""

    lines: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.lines)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _leaves(doc: Any, rules: Rules, noise: Iterable[str]) -> dict[str, Any]:
    ignored = (*rules.ignore, *noise)
    out = {}
    for path, value in jsonpath.flatten(doc):
        if any(jsonpath.matches(p, path) for p in ignored):
            continue
        if rules.include_only and not any(jsonpath.matches(p, path) for p in rules.include_only):
            continue
        out[path] = value
    return out


def _same(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-12) if tolerance else a == b
    return bool(a == b)


def compare(recorded: Mapping[str, Any], status: int, headers: Mapping[str, str], body: bytes,
            rules: Rules, noise: Iterable[str] = ()) -> Diff:
    """The differences between the recorded response and the live one (empty when they match)."""
    diff = Diff()
    if recorded["status"] == 0:  # a request-only pair: no response was recorded to compare with
        return diff
    if rules.status and recorded["status"] != status:
        diff.lines.append(f"status: recorded {recorded['status']}, got {status}")
    lowered = {k.lower(): v for k, v in headers.items()} if rules.headers else {}
    for name in rules.headers:
        recorded_value = rrpair.header(recorded, name)
        if recorded_value != lowered.get(name):
            diff.lines.append(f"header {name}: recorded {recorded_value!r}, got {lowered.get(name)!r}")
    if rules.body == "none":
        return diff
    want_body = rrpair.decode_body(recorded)
    if want_body == body and rules.body != "none":
        return diff  # identical bytes: nothing to look into
    if recorded.get("truncated") is not None:  # only the body's start was recorded: compare that
        if not body.startswith(want_body):
            diff.lines.append(f"body: the recorded first {len(want_body)} bytes (of {recorded['truncated']}) differ")
        return diff
    want_doc, got_doc = (_json(want_body), _json(body)) if rules.body == "json" else (None, None)
    if want_doc is not None and got_doc is not None:
        want, got = _leaves(want_doc, rules, noise), _leaves(got_doc, rules, noise)
        for path in sorted(set(want) | set(got)):
            if path not in got:
                diff.lines.append(f"{path}: missing (recorded {want[path]!r})")
            elif path not in want:
                diff.lines.append(f"{path}: unexpected {got[path]!r}")
            elif not _same(want[path], got[path], rules.tolerance):
                diff.lines.append(f"{path}: recorded {want[path]!r}, got {got[path]!r}")
    elif want_body != body:
        want_hash, got_hash = hashlib.sha256(want_body).hexdigest()[:12], hashlib.sha256(body).hexdigest()[:12]
        diff.lines.append(f"body: recorded {len(want_body)} bytes (sha256 {want_hash}), "
                          f"got {len(body)} bytes (sha256 {got_hash})")
    return diff


def noise(first: Mapping[str, Any], second: Mapping[str, Any]) -> set[str]:
    """JSON paths whose values differ between two recorded responses of the same request."""
    a, b = _json(rrpair.decode_body(first)), _json(rrpair.decode_body(second))
    if a is None or b is None:
        return set()
    left, right = dict(jsonpath.flatten(a)), dict(jsonpath.flatten(b))
    return {p for p in left.keys() & right.keys() if left[p] != right[p]}


UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")


def _looks_volatile(value: Any) -> bool:
    if isinstance(value, str):
        return bool(UUID.fullmatch(value) or ISO_TIME.fullmatch(value))
    if isinstance(value, int | float) and not isinstance(value, bool):  # epoch seconds or ms (2001 to 2286)
        return 1e9 <= value < 1e10 or 1e12 <= value < 1e13
    return False


def volatile(response: Mapping[str, Any]) -> set[str]:
    """JSON paths of a recorded response whose values are made anew on every call, by their look: UUIDs,
    ISO-8601 times, epoch times in seconds or milliseconds."""
    doc = _json(rrpair.decode_body(response))
    return set() if doc is None else {p for p, v in jsonpath.flatten(doc) if _looks_volatile(v)}
