"""RRPair: one recorded request/response pair, the format every part of replayops reads and writes.

A record is a JSON object (one per line in a segment) with a format
``version``; ``migrate`` brings older versions to the current one on read, as
mitmproxy's flow format does. Bodies are UTF-8 text when they decode, base64
otherwise (``bodyEncoding`` says which). Headers are ``[name, value]`` pairs so
repeated headers and their order survive. A message whose body was longer than
its recorder kept has ``truncated``: the body's length on the wire (the record
holds its first bytes, decoded when they were compressed). A request-only pair
(imported without a response) has response status 0.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

VERSION = 1
DIRECTIONS = ("inbound", "outbound")


class RecordError(ValueError):
    """A record that is not an RRPair of any known version; the message names the field."""


def encode_body(data: bytes | None) -> tuple[str | None, str]:
    """A body as (text, "text") when it is UTF-8, else (base64, "base64")."""
    if data is None:
        return None, "text"
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_body(message: Mapping[str, Any]) -> bytes:
    body = message.get("body")
    if body is None:
        return b""
    if message.get("bodyEncoding") == "base64":
        return base64.b64decode(body)
    return str(body).encode("utf-8")


def make(*, method: str, url: str, request_headers: list[list[str]], request_body: bytes | None,
         status: int, response_headers: list[list[str]], response_body: bytes | None, started: float,
         finished: float, direction: str, service: str, reason: str = "", protocol: str = "http/1.1",
         tags: Mapping[str, str] | None = None, record_id: str | None = None) -> dict[str, Any]:
    """A current-version RRPair."""
    req_body, req_enc = encode_body(request_body)
    resp_body, resp_enc = encode_body(response_body)
    return {
        "version": VERSION,
        "id": record_id or str(uuid.uuid4()),
        "timestamps": {"request": started, "response": finished},
        "duration": round((finished - started) * 1000, 3),
        "direction": direction,
        "service": service,
        "protocol": protocol,
        "request": {"method": method, "url": url, "headers": request_headers, "body": req_body,
                    "bodyEncoding": req_enc},
        "response": {"status": status, "reason": reason, "headers": response_headers, "body": resp_body,
                     "bodyEncoding": resp_enc},
        "tags": dict(tags or {}),
    }


def no_response() -> dict[str, Any]:
    """The response of a request-only pair (imported without one: an aborted request in a browser's HAR)."""
    return {"status": 0, "reason": "", "headers": [], "body": None, "bodyEncoding": "text"}


def request_only(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` has no recorded response (status 0): replayed without comparing, never a mock."""
    return record["response"]["status"] == 0


def _headers_v0(headers: Any) -> list[list[str]]:
    if isinstance(headers, dict):
        return [[str(k), str(v)] for k, v in headers.items()]
    return [[str(k), str(v)] for k, v in headers or []]


def migrate(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` in the current version. Version 0 (before the version field) kept headers as a
    map, the status at the top level and times as ``start``/``end``."""
    if not isinstance(record, Mapping):
        raise RecordError("a record must be a JSON object")
    version = record.get("version", 0)
    if version == VERSION:
        return validate(dict(record))
    if version == 0:
        req, resp = record.get("request") or {}, record.get("response") or {}
        started, finished = float(record.get("start", 0)), float(record.get("end", record.get("start", 0)))
        return validate({
            "version": VERSION, "id": str(record.get("id") or uuid.uuid4()),
            "timestamps": {"request": started, "response": finished},
            "duration": round((finished - started) * 1000, 3),
            "direction": record.get("direction", "inbound"), "service": record.get("service", ""),
            "protocol": record.get("protocol", "http/1.1"),
            "request": {"method": req.get("method", "GET"), "url": req.get("url", ""),
                        "headers": _headers_v0(req.get("headers")), "body": req.get("body"),
                        "bodyEncoding": req.get("bodyEncoding", "text")},
            "response": {"status": int(record.get("status", resp.get("status", 0))), "reason": "",
                         "headers": _headers_v0(resp.get("headers")), "body": resp.get("body"),
                         "bodyEncoding": resp.get("bodyEncoding", "text")},
            "tags": dict(record.get("tags") or {}),
        })
    raise RecordError(f"unknown RRPair version {version!r} (this replayops reads up to {VERSION})")


def validate(record: dict[str, Any]) -> dict[str, Any]:
    """Check the shape of a current-version record; raise RecordError naming the field."""
    for field in ("id", "direction", "request", "response"):
        if field not in record:
            raise RecordError(f"missing field {field!r}")
    if record["direction"] not in DIRECTIONS:
        raise RecordError(f"direction must be inbound or outbound, got {record['direction']!r}")
    req, resp = record["request"], record["response"]
    if not isinstance(req, dict) or not isinstance(req.get("method"), str) or not isinstance(req.get("url"), str):
        raise RecordError("request needs a method and a url")
    if not isinstance(resp, dict) or not isinstance(resp.get("status"), int):
        raise RecordError("response needs an integer status")
    for where, message in (("request", req), ("response", resp)):
        if not isinstance(message.get("headers", []), list):
            raise RecordError(f"{where}.headers must be a list of [name, value] pairs")
        if message.get("bodyEncoding", "text") not in ("text", "base64"):
            raise RecordError(f"{where}.bodyEncoding must be text or base64")
        cut = message.get("truncated")
        if cut is not None and (not isinstance(cut, int) or isinstance(cut, bool) or cut < 0):
            raise RecordError(f"{where}.truncated must be the body's length in bytes, got {cut!r}")
    return record


def header(message: Mapping[str, Any], name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive)."""
    lowered = name.lower()
    for key, value in message.get("headers") or []:
        if key.lower() == lowered:
            return str(value)
    return None


def path_of(record: Mapping[str, Any]) -> str:
    return urlsplit(record["request"]["url"]).path or "/"


def endpoint(record: Mapping[str, Any]) -> str:
    """``METHOD /path`` — how summaries and reports group records."""
    return f"{record['request']['method']} {path_of(record)}"
