"""HAR 1.2 and mitmproxy flow files ↔ RRPairs, so browser and other tools' captures work.

Import keeps every good entry and reports each bad one by file and place
(``file:line`` for JSON syntax, ``log.entries[i].field`` for structure).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from controller import __version__
from controller.store import rrpair


class HarError(ValueError):
    """The file is not HAR at all (the message names file and line)."""


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
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise ValueError("request and response are required")
    for field, value in (("request.method", req.get("method")), ("request.url", req.get("url"))):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{field} is missing")
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


def read_har(path: Path, service: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a HAR file and the problems of the entries that were skipped."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HarError(f"{path}:{exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HarError(f"{path}: {exc}") from exc
    entries = (data.get("log") or {}).get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise HarError(f"{path}: not HAR: log.entries is missing")
    records, problems = [], []
    for i, entry in enumerate(entries):
        try:
            records.append(_entry(entry, service))
        except (ValueError, KeyError, TypeError, rrpair.RecordError) as exc:
            problems.append(f"{path}: log.entries[{i}]: {exc}")
    return records, problems


def read_flows(path: Path, service: str = "") -> Iterator[dict[str, Any]]:
    """RRPairs from a mitmproxy flow file (``mitmdump -w``)."""
    from mitmproxy import http, io
    from mitmproxy.exceptions import FlowReadException

    from controller.capture.addon import to_record

    with open(path, "rb") as fh:
        try:
            for flow in io.FlowReader(fh).stream():
                if isinstance(flow, http.HTTPFlow) and flow.response is not None:
                    yield to_record(flow, service)
        except FlowReadException as exc:
            raise HarError(f"{path}: not a mitmproxy flow file: {exc}") from exc
