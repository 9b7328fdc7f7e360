"""A CapturePolicy's filters and sampling, as a pure predicate over RRPairs."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def _rule_matches(rule: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """All the fields a rule names must match (a rule naming nothing matches everything)."""
    req, resp = record["request"], record["response"]
    parts = urlsplit(req["url"])
    host = (parts.hostname or "").lower()
    if rule.get("hosts") and not any(fnmatch.fnmatch(host, h.lower()) for h in rule["hosts"]):
        return False
    if rule.get("paths") and not any(fnmatch.fnmatchcase(parts.path or "/", p) for p in rule["paths"]):
        return False
    if rule.get("methods") and req["method"].upper() not in rule["methods"]:
        return False
    if rule.get("statuses"):
        status = str(resp["status"])
        if not any(s == status or (s.endswith("xx") and status[:1] == s[:1]) for s in rule["statuses"]):
            return False
    return True


@dataclass(frozen=True)
class Filter:
    include: list[Mapping[str, Any]] = field(default_factory=list)
    exclude: list[Mapping[str, Any]] = field(default_factory=list)
    sampling: float = 1.0

    @classmethod
    def from_policy(cls, spec: Mapping[str, Any]) -> Filter:
        filters = spec.get("filters") or {}
        return cls(list(filters.get("include") or []), list(filters.get("exclude") or []),
                   float(spec.get("sampling", 1.0)))

    @property
    def everything(self) -> bool:
        """Whether it keeps every pair (no filter, no sampling): nothing to judge."""
        return not self.include and not self.exclude and self.sampling >= 1

    def sampled(self, record: Mapping[str, Any]) -> bool:
        """Deterministic by record id, so the same pair is kept or dropped wherever it is judged."""
        if self.sampling >= 1:
            return True
        bucket = int.from_bytes(hashlib.sha256(str(record["id"]).encode()).digest()[:8], "big") / 2**64
        return bucket < self.sampling

    def keep(self, record: Mapping[str, Any]) -> bool:
        if self.include and not any(_rule_matches(r, record) for r in self.include):
            return False
        if any(_rule_matches(r, record) for r in self.exclude):
            return False
        return self.sampled(record)
