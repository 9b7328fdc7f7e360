"""Request transforms: the fixes for the usual causes of low replay success.

- ``timeShift``: timestamps in the URL and JSON body keep their recorded offset from *now*
  (ISO 8601 strings, epoch seconds and milliseconds near the recording time).
- ``extractId``: a value the recorded response had at ``path`` maps to the one the live response has;
  later requests get the live value wherever the recorded one appears (rotating ids).
- ``bearerRefresh``: ``Authorization: Bearer <token>`` from a secret (file) or a login request.
- ``header`` / ``query`` / ``jsonPath`` / ``regex``: set or substitute values.
- ``hostRewrite``: the Host header, scheme or port sent to the target.

A ``Session`` holds one virtual user's state (ids seen, token).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from controller.replay import jsonpath

ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
EPOCH = re.compile(r"(?<!\d)1\d{9}(?:\d{3})?(?!\d)")
YEAR = 366 * 86400


@dataclass
class Request:
    method: str
    url: str
    headers: list[list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str) -> None:
        self.headers = [[k, v] for k, v in self.headers if k.lower() != name.lower()] + [[name, value]]

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, UnicodeDecodeError):
            return None


def shift_text(text: str, delta: float, recorded_at: float) -> str:
    """Timestamps in ``text`` moved by ``delta`` seconds."""
    def iso(m: re.Match[str]) -> str:
        raw = m.group(0)
        try:
            when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return raw
        shifted = (when + dt.timedelta(seconds=delta)).isoformat()
        return shifted.replace("+00:00", "Z") if raw.endswith("Z") else shifted

    def epoch(m: re.Match[str]) -> str:
        raw = m.group(0)
        millis = len(raw) == 13
        value = int(raw) / (1000 if millis else 1)
        if abs(value - recorded_at) > YEAR:
            return raw
        return str(int((value + delta) * (1000 if millis else 1)))

    return EPOCH.sub(epoch, ISO.sub(iso, text))


@dataclass
class Session:
    """One virtual user's transform state."""

    transforms: Sequence[Mapping[str, Any]]
    secrets_dir: Path | None = None
    ids: dict[str, str] = field(default_factory=dict)
    token: str | None = None

    def needs_login(self) -> Mapping[str, Any] | None:
        for t in self.transforms:
            if t["type"] == "bearerRefresh" and "login" in t and self.token is None:
                return t["login"]  # type: ignore[no-any-return]
        return None

    def login_done(self, login: Mapping[str, Any], body: bytes) -> None:
        try:
            token = jsonpath.get(json.loads(body), login["tokenPath"])
        except (ValueError, UnicodeDecodeError):
            token = None
        if token is None:
            raise ValueError(f"login response has no token at {login['tokenPath']}")
        self.token = str(token)

    def _secret(self, ref: Mapping[str, str]) -> str:
        if self.secrets_dir is None:
            raise ValueError("bearerRefresh from a secret needs --secrets-dir (the mounted secret)")
        return (self.secrets_dir / ref["name"] / ref["key"]).read_text().strip()

    def apply(self, req: Request, recorded_at: float, now: float) -> Request:
        """``req`` (a copy of the recorded request) transformed for sending now."""
        for old, new in self.ids.items():
            req.url = req.url.replace(old, new)
            req.body = req.body.replace(old.encode(), new.encode())
            req.headers = [[k, v.replace(old, new)] for k, v in req.headers]
        for t in self.transforms:
            APPLY[t["type"]](self, t, req, recorded_at, now)
        return req

    def learn(self, recorded: Mapping[str, Any], recorded_req: Mapping[str, Any], status: int,
              headers: Mapping[str, str], body: bytes) -> None:
        """After a response: remember recorded → live values of every extractId."""
        from controller.store import rrpair

        for t in self.transforms:
            if t["type"] != "extractId":
                continue
            source = t["from"]
            if source == "responseBody":
                old = jsonpath.get(_load(rrpair.decode_body(recorded)), t["path"])
                new = jsonpath.get(_load(body), t["path"])
            elif source == "responseHeader":
                old = rrpair.header(recorded, t["path"])
                new = next((v for k, v in headers.items() if k.lower() == t["path"].lower()), None)
            else:
                continue  # request-side ids are substituted by the other transforms
            if old is not None and new is not None and str(old) != str(new):
                self.ids[str(old)] = str(new)


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _time_shift(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    delta = now - recorded_at
    req.url = shift_text(req.url, delta, recorded_at)
    if req.body:
        with contextlib.suppress(UnicodeDecodeError):
            req.body = shift_text(req.body.decode(), delta, recorded_at).encode()


def _bearer(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    token = s.token if "login" in t else s._secret(t["secretRef"])
    if token:
        req.set_header("Authorization", f"Bearer {token}")


def _header(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    req.set_header(t["name"], t["value"])


def _query(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    parts = urlsplit(req.url)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != t["name"]]
    req.url = urlunsplit(parts._replace(query=urlencode([*pairs, (t["name"], t["value"])])))


def _json_path(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    doc = req.json()
    if doc is not None and jsonpath.set_value(doc, t["path"], t["value"]):
        req.body = json.dumps(doc).encode()


def _regex(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    rx = re.compile(t["pattern"])
    req.url = rx.sub(t["value"], req.url)
    with contextlib.suppress(UnicodeDecodeError):
        req.body = rx.sub(t["value"], req.body.decode()).encode()


def _host(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    parts = urlsplit(req.url)
    host = t.get("host") or parts.hostname or ""
    port = t.get("port") or parts.port
    req.url = urlunsplit(parts._replace(scheme=t.get("scheme") or parts.scheme,
                                        netloc=f"{host}:{port}" if port else host))
    if t.get("host"):
        req.set_header("Host", t["host"])


def _nothing(s: Session, t: Mapping[str, Any], req: Request, recorded_at: float, now: float) -> None:
    pass


APPLY: dict[str, Callable[[Session, Mapping[str, Any], Request, float, float], None]] = {
    "timeShift": _time_shift, "bearerRefresh": _bearer, "header": _header, "query": _query,
    "jsonPath": _json_path, "regex": _regex, "hostRewrite": _host, "extractId": _nothing,
}
