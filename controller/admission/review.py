"""AdmissionReview ``admission.k8s.io/v1``: typed shapes, strict parsing, and responses.

``parse`` turns raw bytes into a ``Request`` or raises ``BadReview`` with a
reason (answered 400); responses always echo the request's ``uid``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

API_VERSION = "admission.k8s.io/v1"
MAX_BODY = 3 * 1024 * 1024


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class RequestDict(TypedDict):
    uid: str
    kind: GroupVersionKind
    operation: str
    namespace: NotRequired[str]
    name: NotRequired[str]
    object: NotRequired[dict[str, Any]]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]


class BadReview(ValueError):
    """The body is not an AdmissionReview we can answer; the message says why."""


@dataclass(frozen=True)
class Request:
    uid: str
    group: str
    version: str
    kind: str
    operation: str
    namespace: str
    name: str
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    dry_run: bool


def parse(body: bytes) -> Request:
    """Parse and check an AdmissionReview; raise BadReview naming what is wrong."""
    if len(body) > MAX_BODY:
        raise BadReview(f"body of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReview(f"body is not JSON: {exc}") from exc
    if not isinstance(review, dict):
        raise BadReview("body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
                        f"{review.get('apiVersion')!r} {review.get('kind')!r}")
    req = review.get("request")
    if not isinstance(req, dict):
        raise BadReview("request is missing or not an object")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing or not a string")
    kind = req.get("kind")
    if not isinstance(kind, dict) or not all(isinstance(kind.get(k), str) for k in ("group", "version", "kind")):
        raise BadReview("request.kind must be an object with string group, version and kind")
    obj, old = req.get("object"), req.get("oldObject")
    for name, value in (("object", obj), ("oldObject", old)):
        if value is not None and not isinstance(value, dict):
            raise BadReview(f"request.{name} is not an object")
        _check_metadata(name, value)
    operation = req.get("operation")
    if operation not in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
        raise BadReview(f"request.operation {operation!r} is not CREATE, UPDATE, DELETE or CONNECT")
    namespace = req.get("namespace") or ((obj or {}).get("metadata") or {}).get("namespace") or ""
    if not isinstance(namespace, str):
        raise BadReview("request.namespace is not a string")
    return Request(uid, kind["group"], kind["version"], kind["kind"], operation, namespace,
                   str(req.get("name") or ""), obj, old, bool(req.get("dryRun", False)))


def _check_metadata(where: str, obj: dict[str, Any] | None) -> None:
    """Metadata must have the shapes the apiserver guarantees (maps of strings)."""
    if obj is None or "metadata" not in obj:
        return
    meta = obj["metadata"]
    if not isinstance(meta, dict):
        raise BadReview(f"request.{where}.metadata is not an object")
    for key in ("annotations", "labels"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            raise BadReview(f"request.{where}.metadata.{key} is not a map of strings")
    for key in ("name", "namespace", "generateName"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise BadReview(f"request.{where}.metadata.{key} is not a string")


def encode_patch(ops: list[dict[str, Any]]) -> str | None:
    """A JSONPatch as the response carries it (base64 of its JSON); None when there is nothing to change."""
    return base64.b64encode(json.dumps(ops).encode()).decode() if ops else None


def response(uid: str, *, allowed: bool = True, message: str = "", code: int | None = None,
             patch: str | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """An AdmissionReview response for ``uid``; ``patch`` as ``encode_patch`` gives it."""
    resp: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        resp["status"] = {"code": code or 403, "message": message, "reason": "Forbidden" if
                          (code or 403) == 403 else "Invalid"}
    if patch:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = patch
    if warnings:
        resp["warnings"] = [w[:512] for w in warnings[:20]]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp}
