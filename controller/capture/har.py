"""HAR 1.2 and mitmproxy flow files ↔ RRPairs, so browser and other tools' captures work.

Import keeps every good entry and reports each bad one by file and place
(``file:line`` for JSON syntax, ``log.entries[i].field`` for structure). HAR files
may start with a UTF-8 byte-order mark or be compressed (``.zhar``, as mitmproxy
writes them: zlib; gzip too); flow files may be of any version mitmproxy reads,
WebSocket sessions of the old two-flow format included. An entry or flow without
a response is kept request-only (``rrpair.request_only``: status 0), with a warning.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import gzip
import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import __version__
from controller.store import rrpair


class HarError(ValueError):
    """The file is not HAR at all (the message names file and line)."""


@dataclass
class Imported:
    """What a file gave: its records, the entries skipped and the warnings, each naming file and entry."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, where: str, make: Callable[[], dict[str, Any]]) -> None:
        """The record ``make`` returns, or the entry at ``where`` skipped with the reason."""
        try:
            record = make()
        except (ValueError, KeyError, TypeError, AttributeError, rrpair.RecordError) as exc:
            self.skipped.append(f"{where}: {exc}")
            return
        self.records.append(record)
        if rrpair.request_only(record):
            self.warnings.append(f"{where}: {NO_RESPONSE}")


NO_RESPONSE = "no response: kept request-only"
IMPORT_LIMIT = 1 << 30  # a flow file's bodies are imported whole (decoding one stops here: a bomb's cost)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _content(message: dict[str, Any]) -> dict[str, Any]:
    body = message.get("body")
    out: dict[str, Any] = {"size": len(rrpair.decode_body(message)),
                           "mimeType": rrpair.header(message, "content-type") or ""}
    if body is not None:
        out["text"] = body
        if message.get("bodyEncoding") == "base64":
            out["encoding"] = "base64"
    return out


def to_har(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for r in records:
        req, resp = r["request"], r["response"]
        entries.append({
            "startedDateTime": _iso(r["timestamps"]["request"]), "time": r.get("duration", 0),
            "request": {"method": req["method"], "url": req["url"], "httpVersion": r.get("protocol", "HTTP/1.1"),
                        "headers": [{"name": k, "value": v} for k, v in req["headers"]],
                        "queryString": [], "cookies": [], "headersSize": -1, "bodySize": -1,
                        **({"postData": {"mimeType": rrpair.header(req, "content-type") or "",
                                         "text": req["body"]}} if req.get("body") is not None else {})},
            "response": {"status": resp["status"], "statusText": resp.get("reason", ""),
                         "httpVersion": r.get("protocol", "HTTP/1.1"),
                         "headers": [{"name": k, "value": v} for k, v in resp["headers"]], "cookies": [],
                         "content": _content(resp), "redirectURL": "", "headersSize": -1, "bodySize": -1},
            "cache": {}, "timings": {"send": 0, "wait": r.get("duration", 0), "receive": 0},
            "_replayops": {"id": r["id"], "direction": r["direction"], "service": r.get("service", ""),
                           "tags": r.get("tags", {}), "requestBodyEncoding": req.get("bodyEncoding", "text")},
        })
    return {"log": {"version": "1.2", "creator": {"name": "replayops", "version": __version__}, "entries": entries}}


def _entry(entry: Any, service: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    req, resp = entry.get("request"), entry.get("response")
    if not isinstance(req, dict):
        raise ValueError("request is required")
    resp = resp if resp is not None else {"status": 0}  # a browser's aborted request: no response
    if not isinstance(resp, dict):
        raise ValueError("response must be an object")
    for name, value in (("request.method", req.get("method")), ("request.url", req.get("url"))):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} is missing")
    if not isinstance(resp.get("status"), int):
        raise ValueError("response.status must be an integer")
    started = _ts(entry["startedDateTime"]) if entry.get("startedDateTime") else 0.0
    extra = entry.get("_replayops") or {}
    post = req.get("postData") or {}
    content = resp.get("content") or {}
    req_body = post.get("text")
    resp_body = content.get("text")
    record = rrpair.make(
        method=req["method"], url=req["url"],
        request_headers=[[h["name"], h["value"]] for h in req.get("headers") or []],
        request_body=None, status=resp["status"], reason=resp.get("statusText", ""),
        response_headers=[[h["name"], h["value"]] for h in resp.get("headers") or []], response_body=None,
        started=started, finished=started + float(entry.get("time") or 0) / 1000,
        direction=extra.get("direction", "inbound"), service=extra.get("service", service),
        tags=extra.get("tags") or {"source": "har"}, record_id=extra.get("id"))
    record["request"].update(body=req_body, bodyEncoding=extra.get("requestBodyEncoding", "text"))
    record["response"].update(body=resp_body, bodyEncoding="base64" if content.get("encoding") == "base64"
                              else "text")
    if record["response"]["bodyEncoding"] == "base64" and resp_body is not None:
        base64.b64decode(resp_body, validate=True)
    return rrpair.validate(record)


def _har_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif path.suffix == ".zhar" or data[:1] == b"\x78":
        data = zlib.decompress(data)
    return data.decode("utf-8-sig")  # a byte-order mark, as some tools write it, is not JSON


def read_har(path: Path, service: str = "") -> Imported:
    """The records of a HAR file (``.har``, or compressed ``.zhar``); the entries skipped and why."""
    try:
        data = json.loads(_har_text(path))
    except json.JSONDecodeError as exc:
        raise HarError(f"{path}:{exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError, zlib.error, gzip.BadGzipFile, EOFError) as exc:
        raise HarError(f"{path}: {exc}") from exc
    entries = (data.get("log") or {}).get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise HarError(f"{path}: not HAR: log.entries is missing")
    out = Imported()
    for i, entry in enumerate(entries):
        out.add(f"{path}: log.entries[{i}]", functools.partial(_entry, entry, service))
    return out


def read_flows(path: Path, service: str = "") -> Imported:
    """The records of a mitmproxy flow file (``mitmdump -w``), of any version mitmproxy reads. A WebSocket
    session of the old format (a handshake flow, then a WebSocket flow) migrates to two flows with one id:
    the later, with the messages, is kept."""
    from mitmproxy import http, io
    from mitmproxy.exceptions import FlowReadException

    from controller.capture.addon import to_record

    flows: dict[str, tuple[int, http.HTTPFlow]] = {}
    with open(path, "rb") as fh:
        try:
            for i, flow in enumerate(io.FlowReader(fh).stream()):
                if isinstance(flow, http.HTTPFlow):
                    flows[flow.id] = (flows[flow.id][0] if flow.id in flows else i, flow)
        except FlowReadException as exc:
            raise HarError(f"{path}: not a mitmproxy flow file: {exc}") from exc
        except (KeyError, ValueError, TypeError) as exc:  # a flow of a shape no version had
            raise HarError(f"{path}: flow {len(flows)}: unreadable: {exc!r}") from exc
    out = Imported()
    for i, flow in flows.values():
        out.add(f"{path}: flow {i}", functools.partial(to_record, flow, service, IMPORT_LIMIT)
                if flow.response is not None else functools.partial(_request_only, flow, service))
    return out


def _request_only(flow: Any, service: str) -> dict[str, Any]:
    from mitmproxy import http

    from controller.capture.addon import to_record

    flow.response = http.Response.make(0)
    flow.response.headers.clear()
    flow.response.timestamp_end = flow.request.timestamp_end or flow.request.timestamp_start
    record = to_record(flow, service, IMPORT_LIMIT)
    record["response"] = rrpair.no_response()
    return record
