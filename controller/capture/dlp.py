"""Data-loss prevention: redact secrets and personal data from RRPairs before they are stored.

Two ways to find what to redact: by **key** (header, cookie, query parameter,
form field and JSON key names — defaults: authorization, cookie, set-cookie,
password, token, secret — matched case-insensitively as substrings, so
``access_token`` and ``X-Client-Secret`` are caught) and by **value pattern**
anywhere in text (credit-card numbers that pass the Luhn check, emails, bearer
tokens and JWTs, AWS access keys, custom regexes). A redacted value becomes
``[redacted:<kind>:<tag>]`` where the tag is a keyed hash (HMAC-SHA256) of the
value: the same secret maps to the same tag, so replays still correlate, and
the tag reveals nothing without the key.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from controller.store import rrpair

DEFAULT_KEYS = ("authorization", "cookie", "set-cookie", "password", "passwd", "token", "secret", "api-key",
                "apikey", "api_key")
PATTERNS: dict[str, str] = {
    "creditCard": r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])",
    "email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}",
    "bearerToken": r"(?i:bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
    "awsKey": r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}(?![A-Z0-9])",
}
TAG = re.compile(r"\[redacted:[A-Za-z]+:[0-9a-f]{12}\]")


def luhn(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass
class Rules:
    """What to redact: key names per place, and value patterns (name → regex)."""

    headers: set[str] = field(default_factory=set)
    cookies: set[str] = field(default_factory=set)
    query: set[str] = field(default_factory=set)
    form: set[str] = field(default_factory=set)
    json: set[str] = field(default_factory=set)
    patterns: dict[str, str] = field(default_factory=lambda: dict(PATTERNS))
    defaults: bool = True

    @classmethod
    def from_policy(cls, dlp: Mapping[str, Any] | None) -> Rules:
        """Rules from a CapturePolicy's ``spec.dlp`` (the defaults when absent)."""
        dlp = dlp or {}
        keys = dlp.get("redactKeys") or {}
        patterns: dict[str, str] = {}
        for i, pattern in enumerate(dlp.get("patterns") or []):
            kind = pattern["type"]
            if kind == "custom":
                patterns[pattern.get("name") or f"custom{i}"] = pattern["regex"]
            else:
                patterns[kind] = PATTERNS[kind]
        return cls({k.lower() for k in keys.get("headers", [])}, {k.lower() for k in keys.get("cookies", [])},
                   {k.lower() for k in keys.get("query", [])}, {k.lower() for k in keys.get("form", [])},
                   {k.lower() for k in keys.get("json", [])}, patterns or dict(PATTERNS),
                   bool(dlp.get("defaults", True)))


class Redactor:
    """Applies ``Rules`` with a tagging key; counts what it redacted."""

    def __init__(self, rules: Rules, key: bytes) -> None:
        self.rules = rules
        self.key = key
        self.counts: Counter[str] = Counter()
        self._patterns = [(name, re.compile(rx)) for name, rx in rules.patterns.items()]

    def tag(self, kind: str, value: str) -> str:
        digest = hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:12]
        self.counts[kind] += 1
        return f"[redacted:{kind}:{digest}]"

    def _sensitive(self, name: str, place: set[str]) -> bool:
        lowered = name.lower()
        return lowered in place or (self.rules.defaults and any(k in lowered for k in DEFAULT_KEYS))

    def text(self, value: str) -> str:
        """``value`` with every pattern match replaced by its tag."""
        for name, rx in self._patterns:
            def sub(m: re.Match[str], name: str = name) -> str:
                found = m.group(0)
                if TAG.fullmatch(found):
                    return found
                if name == "creditCard" and not luhn(re.sub(r"\D", "", found)):
                    return found
                return self.tag(name, found)
            value = rx.sub(sub, value)
        return value

    def _json(self, node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: self._json_value(k, v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._json(v, key) for v in node]
        if isinstance(node, str):
            return self.text(node)
        return node

    def _json_value(self, key: str, value: Any) -> Any:
        if self._sensitive(key, self.rules.json) and not isinstance(value, dict | list):
            return self.tag("key", value if isinstance(value, str) else json.dumps(value))
        return self._json(value, key)

    def _pairs(self, pairs: Iterable[tuple[str, str]], place: set[str]) -> list[tuple[str, str]]:
        return [(k, self.tag("key", v) if self._sensitive(k, place) else self.text(v)) for k, v in pairs]

    def _cookies(self, value: str) -> str:
        """Every cookie value of a Cookie header, tagged; names kept."""
        parts = []
        for item in value.split(";"):
            name, eq, val = item.strip().partition("=")
            parts.append(f"{name}={self.tag('cookie', val)}" if eq else item.strip())
        return "; ".join(parts)

    def _headers(self, headers: list[list[str]]) -> list[list[str]]:
        out = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == "cookie":
                out.append([name, self._cookies(value)])
            elif lowered == "set-cookie":
                out.append([name, self._set_cookie(value)])
            elif self._sensitive(name, self.rules.headers):
                out.append([name, self.tag("key", value)])
            else:
                out.append([name, self.text(value)])
        return out

    def _set_cookie(self, value: str) -> str:
        """A Set-Cookie header with its cookie value tagged and its attributes kept."""
        first, _, attrs = value.partition(";")
        name, eq, val = first.strip().partition("=")
        head = f"{name}={self.tag('cookie', val)}" if eq else first
        return head + (";" + attrs if attrs else "")

    def _body(self, message: dict[str, Any]) -> None:
        if message.get("body") is None or message.get("bodyEncoding") == "base64":
            return
        body = str(message["body"])
        ctype = (rrpair.header(message, "content-type") or "").lower()
        if "json" in ctype or body.lstrip()[:1] in ("{", "["):
            try:
                message["body"] = json.dumps(self._json(json.loads(body)), separators=(",", ":"))
                return
            except ValueError:
                pass
        if "x-www-form-urlencoded" in ctype:
            message["body"] = urlencode(self._pairs(parse_qsl(body, keep_blank_values=True), self.rules.form))
            return
        message["body"] = self.text(body)

    def record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted copy of ``record``."""
        out = copy.deepcopy(dict(record))
        req, resp = out["request"], out["response"]
        parts = urlsplit(req["url"])
        if parts.query:
            query = urlencode(self._pairs(parse_qsl(parts.query, keep_blank_values=True), self.rules.query))
            req["url"] = urlunsplit(parts._replace(query=query))
        for message in (req, resp):
            message["headers"] = self._headers(message.get("headers") or [])
            self._body(message)
        return out
