"""Data-loss prevention: redact secrets and personal data from RRPairs before they are stored.

Two ways to find what to redact: by **key** (header, cookie, query parameter,
form field and JSON key names — defaults: authorization, cookie, set-cookie,
password, token, secret — matched case-insensitively as substrings, so
``access_token`` and ``X-Client-Secret`` are caught) and by **value pattern**
anywhere in text (credit-card numbers that pass the Luhn check, emails, bearer
tokens and JWTs, AWS access keys, custom regexes — a policy's add to these unless it
says ``replacePatterns``). A redacted value becomes ``[redacted:<kind>:<tag>]``
where the tag is a keyed hash (HMAC-SHA256) of the value: the same secret maps to
the same tag, so replays still correlate, and the tag reveals nothing without the key.

Every place a pair carries text is scanned: headers, cookies, query, URL path
segments, bodies (JSON, forms, multipart parts, plain text), WebSocket messages
in both directions. Binary bodies (base64 in the record: protobuf, gRPC frames)
have matches masked in place with as many bytes (a keyed digest), so the message
still parses and replays; bodies the app compressed (gzip, deflate, zstd, br, and
gRPC's per-message ``grpc-encoding``) are decompressed (at most the policy's body
limit: what would decompress to more is not kept), redacted and compressed again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from controller import policy
from controller.capture import codecs
from controller.capture.codecs import TooLarge
from controller.store import rrpair

DEFAULT_KEYS = ("authorization", "cookie", "set-cookie", "password", "passwd", "token", "secret", "api-key",
                "apikey", "api_key")
PATTERNS: dict[str, str] = {
    # the look behind follows the first digit: the engine then tries only where a digit is (twice as fast)
    "creditCard": r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])",
    "email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}",
    "bearerToken": r"(?i:bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
    "awsKey": r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}(?![A-Z0-9])",
}
# what a text must hold for a built-in pattern to match there: a cheap test saves most searches
GUARDS: dict[str, Callable[[str], bool]] = {
    "email": lambda s: "@" in s,
    "awsKey": lambda s: any(p in s for p in ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA")),
    "bearerToken": lambda s: "eyJ" in s or "bearer" in s.lower(),
}
TAG = re.compile(r"\[redacted:[A-Za-z0-9]+:[0-9a-f]{12}\]")
CHAR_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]")  # a regex's [...] (its ^ negates, anchors nothing)
BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4}){3,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# a run of URL-encoded text (a query or form value inside other text): percent escapes or '+' for spaces
URL_ENCODED = re.compile(r"[A-Za-z0-9._~!*'()%+@-]*(?:%[0-9A-Fa-f]{2}|\+)[A-Za-z0-9._~!*'()%+@-]*")
PATH_SAFE = "!$&'()*+,;=:@-._~"  # what a path segment keeps unquoted


def _binary_type(ctype: str) -> bool:
    """Content the app sends as bytes (gRPC, protobuf, octet streams): masked in place, never tagged."""
    low = ctype.lower()
    return low.startswith("application/grpc") or "protobuf" in low or low.startswith("application/octet-stream")


def _varint(data: bytes, at: int) -> tuple[int, int] | None:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def _protobuf_fields(data: bytes) -> list[tuple[int, int]] | None:
    """The (start, end) of each length-delimited field's payload when ``data`` parses wholly as a protobuf
    message; None when it does not."""
    spans, at = [], 0
    while at < len(data):
        tag = _varint(data, at)
        if tag is None or tag[0] >> 3 == 0:
            return None
        at, wire = tag[1], tag[0] & 7
        if wire == 0:
            got = _varint(data, at)
            if got is None:
                return None
            at = got[1]
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        elif wire == 2:
            got = _varint(data, at)
            if got is None or got[1] + got[0] > len(data):
                return None
            spans.append((got[1], got[1] + got[0]))
            at = got[1] + got[0]
        else:
            return None
    return spans if at == len(data) else None


def _parses(doc: str) -> bool:
    try:
        json.loads(doc)
    except ValueError:
        return False
    return True


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
        patterns: dict[str, str] = {} if dlp.get("replacePatterns") else dict(PATTERNS)  # a policy's add to them
        for i, pattern in enumerate(dlp.get("patterns") or []):
            kind = pattern["type"]
            if kind == "custom":
                patterns[pattern.get("name") or f"custom{i}"] = pattern["regex"]
            else:
                patterns[kind] = PATTERNS[kind]
        return cls({k.lower() for k in keys.get("headers", [])}, {k.lower() for k in keys.get("cookies", [])},
                   {k.lower() for k in keys.get("query", [])}, {k.lower() for k in keys.get("form", [])},
                   {k.lower() for k in keys.get("json", [])}, patterns, bool(dlp.get("defaults", True)))


class Redactor:
    """Applies ``Rules`` with a tagging key; counts what it redacted."""

    def __init__(self, rules: Rules, key: bytes, *, limit: int = policy.MAX_BODY_BYTES) -> None:
        self.rules = rules
        self.key = key
        self.limit = limit  # a compressed body is decompressed for scanning up to this many bytes
        self.counts: Counter[str] = Counter()
        self._patterns = [(name, re.compile(rx), GUARDS.get(name) if rx == PATTERNS.get(name) else None)
                          for name, rx in rules.patterns.items()]
        self._keys = re.compile("|".join(map(re.escape, DEFAULT_KEYS)))
        self._seen: dict[tuple[str, int], bool] = {}  # (name, place) -> sensitive: names repeat a lot
        # a pattern anchored to a value's start or end cannot be judged on a whole document's text
        self._anchored = any(re.search(r"(?<!\\)[\^$]|\\[AZ]", CHAR_CLASS.sub("", rx))
                             for rx in rules.patterns.values())

    def _digest(self, kind: str, value: str) -> str:
        """The keyed hash of ``value`` (12 hex digits), counted as one ``kind`` redacted."""
        self.counts[kind] += 1
        return hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:12]

    def tag(self, kind: str, value: str) -> str:
        return f"[redacted:{kind}:{self._digest(kind, value)}]"

    def _mask(self, kind: str, value: str) -> str:
        """``value``'s keyed hash repeated to its length: what stands in its place where lengths matter."""
        digest = self._digest(kind, value)
        return (digest * (len(value) // len(digest) + 1))[:len(value)]

    def _sensitive(self, name: str, place: set[str]) -> bool:
        known = self._seen.get((name, id(place)))
        if known is None:
            lowered = name.lower()
            known = lowered in place or (self.rules.defaults and self._keys.search(lowered) is not None)
            if len(self._seen) < 10_000:
                self._seen[(name, id(place))] = known
        return known

    def _replace(self, value: str, mask: bool) -> str:
        """``value`` with every pattern match replaced: by its tag, or (``mask``) by as many characters —
        also where the text carries it URL-encoded (``jane%40example.com``, ``4111+1111+...``)."""
        value = self._matches(value, mask)
        if "%" not in value and "+" not in value:
            return value

        def run(m: re.Match[str]) -> str:
            encoded = m.group(0)
            plain = unquote_plus(encoded)
            redacted = self._matches(plain, mask=False)
            if redacted == plain:
                return encoded
            if mask:  # the whole run, as many characters: a protobuf's string keeps its length
                return self._mask("encoded", encoded)
            return quote_plus(redacted, safe="[]:")
        return URL_ENCODED.sub(run, value)

    def _found(self, value: str) -> bool:
        """Whether any pattern matches somewhere in ``value`` (counting nothing)."""
        return any((guard is None or guard(value)) and rx.search(value) for _, rx, guard in self._patterns)

    def _matches(self, value: str, mask: bool) -> str:
        for name, rx, guard in self._patterns:
            if guard is not None and not guard(value):
                continue
            def sub(m: re.Match[str], name: str = name) -> str:
                found = m.group(0)
                if TAG.fullmatch(found) or (name == "creditCard" and not luhn(re.sub(r"\D", "", found))):
                    return found
                return self._mask(name, found) if mask else self.tag(name, found)
            value = rx.sub(sub, value)
        return value

    def text(self, value: str) -> str:
        """``value`` with every pattern match replaced by its tag."""
        return self._replace(value, mask=False)

    def binary(self, data: bytes) -> bytes:
        """``data`` with every pattern match (read as bytes) masked in place by as many bytes of its keyed
        digest: lengths and framing stay, so a protobuf still parses and replays."""
        return self._replace(data.decode("latin-1"), mask=True).encode("latin-1")

    def _json(self, node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {self.text(k): self._json_value(k, v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._json(v, key) for v in node]
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, int | float) and not isinstance(node, bool) and abs(node) >= 10**12:  # a card
            digits = str(int(node)) if isinstance(node, int) or node.is_integer() else str(node)
            redacted = self.text(digits)
            return node if redacted == digits else redacted
        return node

    def _json_value(self, key: str, value: Any) -> Any:
        if self._sensitive(key, self.rules.json) and not isinstance(value, dict | list):
            return self.tag("key", value if isinstance(value, str) else json.dumps(value))
        return self._json(value, key)

    def _pairs(self, pairs: Iterable[tuple[str, str]], place: set[str]) -> list[tuple[str, str]]:
        return [(k, self.tag("key", v) if self._sensitive(k, place) else self.text(v)) for k, v in pairs]

    def _form(self, encoded: str, place: set[str]) -> str:
        """A query string or form body redacted; as it was (its own encoding) when nothing was found."""
        pairs = parse_qsl(encoded, keep_blank_values=True)
        redacted = self._pairs(pairs, place)
        return encoded if redacted == pairs else urlencode(redacted)

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

    def _text_body(self, body: str, ctype: str) -> str:
        """A text body redacted as what it is (``ctype``: its Content-Type): JSON, a form, multipart parts, or
        plain text."""
        low = ctype.lower()
        if "json" in low or body.lstrip()[:1] in ("{", "["):
            if self._plain(body):  # redacted as text, in one pass: each match lies inside a string
                redacted = self.text(body)
                if redacted == body or _parses(redacted):
                    return redacted
            try:
                parsed = json.loads(body)
                redacted = self._json(parsed)
                return body if redacted == parsed else json.dumps(redacted, separators=(",", ":"))
            except ValueError:
                pass
        if "x-www-form-urlencoded" in low:
            return self._form(body, self.rules.form)
        if "multipart/" in low:
            return self._multipart(body.encode("utf-8", "surrogateescape"), ctype).decode("utf-8", "surrogateescape")
        if len(body) >= 16 and BASE64.fullmatch(body.strip()):  # a base64 body: decoded, redacted, re-encoded
            with contextlib.suppress(ValueError):
                inner = base64.b64decode(body.strip(), validate=True)
                masked = self._bytes_body(inner, "")
                return body if masked == inner else base64.b64encode(masked).decode("ascii")
        return self.text(body)

    def _plain(self, doc: str) -> bool:
        """Whether the JSON document ``doc`` can be redacted as text: without escapes each string stands in
        the text as it is, so a pattern's match lies inside one (the result is parsed to be sure) — unless a
        key is one a rule names, or a pattern is anchored to a value's start or end."""
        if self._anchored or "\\" in doc:
            return False
        lowered = doc.lower()
        return not ((self.rules.defaults and self._keys.search(lowered)) or any(k in lowered for k in self.rules.json))

    def _bytes_body(self, data: bytes, ctype: str, encoding: str = "") -> bytes:
        """A body kept as bytes: decompressed and compressed again, gRPC frame by frame, text-like content as
        text, the rest masked in place."""
        if ctype.lower().startswith("application/grpc"):
            return self._grpc(data, encoding)
        codec = codecs.sniff(data, encoding)
        if codec:
            return self._decoded(data, codec, lambda inner: self._bytes_body(inner, ctype))
        if "multipart/" in ctype.lower():
            return self._multipart(data, ctype)
        if _binary_type(ctype):
            return self.protobuf(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self.protobuf(data)
        return self._text_body(text, ctype).encode("utf-8")

    def _decoded(self, data: bytes, codec: str, redact: Callable[[bytes], bytes]) -> bytes:
        """``data`` decompressed by ``codec`` (at most ``limit`` bytes), redacted by ``redact``, compressed
        again — the bytes as sent when nothing was found; what is not ``codec`` after all is masked as it is."""
        try:
            inner = codecs.decompress(data, codec, self.limit)
        except codecs.ERRORS:
            return self.protobuf(data)
        redacted = redact(inner)
        return data if redacted == inner else codecs.compress(redacted, codec)

    def _multipart(self, data: bytes, ctype: str) -> bytes:
        """Each part of a multipart body: a sensitive field's value tagged, text redacted, binary masked."""
        found = re.search(r'(?i)boundary="?([^";]+)"?', ctype)
        if not found:
            return self.binary(data)
        delimiter = b"--" + found.group(1).encode("latin-1")
        pieces = data.split(delimiter)
        out = [pieces[0]]
        for piece in pieces[1:]:
            head, sep, content = piece.partition(b"\r\n\r\n")
            if not sep:
                out.append(piece)
                continue
            tail = b"\r\n" if content.endswith(b"\r\n") else b""
            content = content[:len(content) - len(tail)]
            headers = head.decode("latin-1")
            name = re.search(r'name="([^"]*)"', headers)
            declared = re.search(r"(?im)^content-type:\s*(.+)$", headers)
            part_type = declared.group(1).strip() if declared else ""
            if name and self._sensitive(name.group(1), self.rules.form):
                content = self.tag("key", content.decode("latin-1")).encode("latin-1")
            else:
                content = self._bytes_body(content, part_type)
            out.append(self.text(headers).encode("latin-1") + sep + content + tail)
        return delimiter.join(out)

    def _grpc(self, data: bytes, encoding: str) -> bytes:
        """gRPC's length-prefixed messages, each decompressed (``grpc-encoding``) when flagged, masked in
        place (as protobuf where it parses as one), compressed again, framed with its new length. A last
        frame the recording cut short keeps its header as sent (the record stays a prefix of the stream)."""
        out, at = [], 0
        while at + 5 <= len(data):
            flag, size = data[at], struct.unpack(">I", data[at + 1:at + 5])[0]
            payload = data[at + 5:at + 5 + size]
            if len(payload) < size:  # cut short: masked in place, the header as it was
                out.append(data[at:at + 5] + self.binary(payload))
                break
            codec = codecs.sniff(payload, encoding) if flag & 1 else None
            payload = self._decoded(payload, codec, self.protobuf) if codec else self.protobuf(payload)
            out.append(bytes([flag]) + struct.pack(">I", len(payload)) + payload)
            at += 5 + size
        else:
            return b"".join(out) + self.binary(data[at:])
        return b"".join(out)

    def protobuf(self, data: bytes) -> bytes:
        """A protobuf message masked inside its length-delimited fields only (nested messages field by
        field), so no tag or length byte is touched and it still parses; what does not parse as protobuf
        is masked as bytes."""
        fields = _protobuf_fields(data)
        if fields is None:
            return self.binary(data)
        out = bytearray(data)
        for start, end in fields:
            inner = data[start:end]
            masked = self.protobuf(inner) if _protobuf_fields(inner) else self.binary(inner)
            if self._found(masked.decode("latin-1")):
                masked = self.binary(inner)  # a string that parsed as a message by chance: masked as a whole
            out[start:end] = masked
        return bytes(out)

    def _body(self, message: dict[str, Any]) -> None:
        if message.get("body") is None:
            return
        ctype = rrpair.header(message, "content-type") or ""
        try:
            if message.get("bodyEncoding") == "base64":
                encoding = rrpair.header(message, "grpc-encoding") or rrpair.header(message, "content-encoding") or ""
                data = self._bytes_body(base64.b64decode(message["body"]), ctype, encoding)
                message["body"] = base64.b64encode(data).decode("ascii")
                return
            body = str(message["body"])
            if _binary_type(ctype):  # protobuf that happens to be UTF-8: masked in place, never tagged
                message["body"] = self._bytes_body(body.encode("utf-8", "surrogateescape"), ctype).decode(
                    "utf-8", "surrogateescape")
                return
            message["body"] = self._text_body(body, ctype)
        except TooLarge as exc:  # what cannot be scanned is not kept
            message["body"], message["bodyEncoding"] = f"[not recorded: {exc}]", "text"
            self.counts["unscanned"] += 1

    def _path(self, path: str) -> str:
        """Each segment of a URL path with its matches tagged (``/users/jane@example.com/orders``); a segment
        without one stays as it was."""
        def segment(seg: str) -> str:
            plain = unquote(seg)
            redacted = self.text(plain)
            return seg if redacted == plain else quote(redacted, safe=PATH_SAFE)
        return "/".join(segment(seg) for seg in path.split("/"))

    def _websocket(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:  # both directions
            try:
                if message.get("type") == "binary":
                    data = self._bytes_body(base64.b64decode(message["data"]), "")
                    message["data"] = base64.b64encode(data).decode()
                else:
                    message["data"] = self._text_body(str(message.get("data", "")), "")
            except TooLarge as exc:
                message["type"], message["data"] = "text", f"[not recorded: {exc}]"
                self.counts["unscanned"] += 1

    def record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted copy of ``record`` (what it changes is copied: ``record`` stays as it was)."""
        out = dict(record)
        req, resp = out["request"], out["response"] = dict(record["request"]), dict(record["response"])
        parts = urlsplit(req["url"])
        req["url"] = urlunsplit(parts._replace(path=self._path(parts.path), query=self._form(parts.query,
                                                                                           self.rules.query)))
        for message in (req, resp):
            message["headers"] = self._headers(message.get("headers") or [])
            self._body(message)
        if out.get("websocket"):
            out["websocket"] = [dict(m) for m in out["websocket"]]
            self._websocket(out["websocket"])
        return out
