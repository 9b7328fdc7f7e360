"""Matching live requests to recorded outbound calls, as a pure function (mitmproxy's server replay, kept).

A request's signature is its method, host, path, normalised query (sorted,
ignored keys dropped) and body (canonical JSON with ignored paths dropped, or
the raw bytes). Recorded responses queue per signature: the nth identical
request gets the nth response, then the last one again. With ``fuzzy``, a
request with no exact match gets the closest recording of the same method and
path; with none at all, ``Miss`` says what came closest and why it differed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from controller.replay import jsonpath
from controller.store import rrpair


@dataclass(frozen=True)
class Ignore:
    headers: frozenset[str] = frozenset()
    query: frozenset[str] = frozenset()
    json_paths: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, match: Mapping[str, Any] | None) -> Ignore:
        m = match or {}
        return cls(frozenset(h.lower() for h in m.get("ignoreHeaders") or ()),
                   frozenset(m.get("ignoreQueryKeys") or ()), tuple(m.get("ignoreJsonPaths") or ()))


@dataclass(frozen=True)
class Key:
    method: str
    host: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: str

    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()


def _body_key(body: bytes, ignore: Ignore) -> tuple[str, Any]:
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if doc is not None:
        leaves = {p: v for p, v in jsonpath.flatten(doc) if not any(jsonpath.matches(i, p) for i in ignore.json_paths)}
        return json.dumps(leaves, sort_keys=True), leaves
    return hashlib.sha256(body).hexdigest(), None


def key_of(method: str, url: str, body: bytes, ignore: Ignore) -> tuple[Key, Any]:
    parts = urlsplit(url)
    query = tuple(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ignore.query))
    body_key, leaves = _body_key(body, ignore)
    return Key(method.upper(), (parts.hostname or "").lower(), parts.path or "/", query, body_key), leaves


@dataclass
class Miss:
    """No recording matched; ``reason`` says what was closest and how it differed."""

    reason: str


@dataclass
class Hit:
    record: dict[str, Any]
    fuzzy: bool = False


@dataclass
class _Entry:
    key: Key
    leaves: Any
    records: list[dict[str, Any]]
    served: int = 0


@dataclass
class Matcher:
    ignore: Ignore = field(default_factory=Ignore)
    fuzzy: bool = True
    direction: str = "outbound"  # the pairs served: the calls a service made, or (inbound) those it answered
    _exact: dict[Key, _Entry] = field(default_factory=dict)
    _hostless: dict[Key, _Entry] = field(default_factory=dict)
    _by_route: dict[tuple[str, str], list[_Entry]] = field(default_factory=lambda: defaultdict(list))

    def load(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Index the records of ``direction`` that have a response; return how many."""
        n = 0
        for record in records:
            if record["direction"] != self.direction or rrpair.request_only(record):
                continue
            req = record["request"]
            key, leaves = key_of(req["method"], req["url"], rrpair.decode_body(req), self.ignore)
            if key not in self._exact:
                entry = _Entry(key, leaves, [])
                self._exact[key] = entry
                self._by_route[(key.method, key.path)].append(entry)
                self._hostless.setdefault(dataclasses.replace(key, host=""), entry)
            self._exact[key].records.append(dict(record))
            n += 1
        return n

    def match(self, method: str, url: str, body: bytes, *, host_known: bool = True) -> Hit | Miss:
        """The recording for a request; without ``host_known`` (a request sent straight to the
        responder, not through it as a proxy) the host is not part of the match."""
        key, leaves = key_of(method, url, body, self.ignore)
        if not host_known:
            key = dataclasses.replace(key, host="")
        entry = (self._exact if host_known else self._hostless).get(key)
        if entry is None:
            same_route = self._by_route.get((key.method, key.path), [])
            if not same_route:
                return Miss(self._closest_route(key))
            best = max(same_route, key=lambda e: _similarity(key, leaves, e))
            if not self.fuzzy:
                return Miss(f"closest recording {best.key.method} {best.key.path} differs: "
                            + "; ".join(_differences(key, leaves, best)))
            return Hit(best.records[min(best.served, len(best.records) - 1)], fuzzy=True)
        record = entry.records[min(entry.served, len(entry.records) - 1)]
        entry.served += 1
        return Hit(record)

    def _closest_route(self, key: Key) -> str:
        routes = sorted(self._by_route, key=lambda r: (r[1] != key.path, r[0] != key.method,
                                                       -_common_prefix(r[1], key.path)))
        if not routes:
            return f"no {self.direction} pairs were recorded"
        method, path = routes[0]
        return f"no recording of {key.method} {key.path}; closest is {method} {path}"


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _similarity(key: Key, leaves: Any, entry: _Entry) -> float:
    q1, q2 = set(key.query), set(entry.key.query)
    score = len(q1 & q2) - 0.5 * len(q1 ^ q2) + (2 if key.host in (entry.key.host, "") else 0)
    if isinstance(leaves, dict) and isinstance(entry.leaves, dict):
        score += sum(1 for p, v in leaves.items() if entry.leaves.get(p) == v)
    elif key.body == entry.key.body:
        score += 1
    return score


def _differences(key: Key, leaves: Any, entry: _Entry) -> list[str]:
    out = []
    if key.host and key.host != entry.key.host:
        out.append(f"host {key.host!r} vs recorded {entry.key.host!r}")
    mine, theirs = dict(key.query), dict(entry.key.query)
    for k in sorted(set(mine) | set(theirs)):
        if mine.get(k) != theirs.get(k):
            out.append(f"query {k}={mine.get(k)!r} vs recorded {theirs.get(k)!r}")
    if key.body != entry.key.body:
        if isinstance(leaves, dict) and isinstance(entry.leaves, dict):
            for p in sorted(set(leaves) | set(entry.leaves)):
                if leaves.get(p) != entry.leaves.get(p):
                    out.append(f"body {p}={leaves.get(p)!r} vs recorded {entry.leaves.get(p)!r}")
        else:
            out.append("body differs")
    return out or ["(identical)"]
