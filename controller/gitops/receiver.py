"""Push-webhook receiver: GitHub, Gitea (HMAC-SHA256) and GitLab (token) push events trigger a fetch.

Signatures are compared in constant time and bodies are capped; an unverified
request gets 401, a malformed one 400, and neither changes anything. A
verified push to the watched branch calls ``on_push``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping

from flask import Flask, Response, request

from controller import logs

MAX_BODY = 1024 * 1024
log = logs.get("receiver")


def _sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(provider: str, secret: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether the request carries a valid signature (or token) for ``provider``."""
    if provider == "github":
        given = headers.get("X-Hub-Signature-256", "")
        return given.startswith("sha256=") and hmac.compare_digest(given[7:], _sign(secret, body))
    if provider == "gitea":
        return hmac.compare_digest(headers.get("X-Gitea-Signature", ""), _sign(secret, body))
    if provider == "gitlab":
        return hmac.compare_digest(headers.get("X-Gitlab-Token", "").encode(), secret)
    return False


def _event(provider: str, headers: Mapping[str, str]) -> str:
    name = {"github": "X-GitHub-Event", "gitea": "X-Gitea-Event", "gitlab": "X-Gitlab-Event"}[provider]
    return headers.get(name, "")


def create_app(secret: bytes, branch: str, on_push: Callable[[str], None]) -> Flask:
    """The receiver app; ``on_push(ref)`` runs for verified pushes to ``branch``."""
    app = Flask("replayops-receiver")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def reply(status: int, message: str) -> Response:
        return Response(json.dumps({"message": message}), status=status, mimetype="application/json")

    @app.post("/hooks/<provider>")
    def hook(provider: str) -> Response:
        if provider not in ("github", "gitea", "gitlab"):
            return reply(404, f"unknown provider {provider!r}; use github, gitea or gitlab")
        body = request.get_data(cache=False)
        headers: Mapping[str, str] = request.headers  # type: ignore[assignment]  # case-insensitive
        if not verify(provider, secret, headers, body):
            log.warning("push rejected", extra=logs.fields(provider=provider, reason="bad signature"))
            return reply(401, "signature or token does not verify")
        event = _event(provider, headers).lower()
        if event not in ("push", "push hook"):
            return reply(202, f"event {event!r} ignored")
        try:
            payload = json.loads(body)
            ref = payload["ref"]
            if not isinstance(ref, str):
                raise TypeError("ref is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            return reply(400, f"not a push payload: {exc}")
        if ref != f"refs/heads/{branch}":
            return reply(202, f"push to {ref} ignored; watching refs/heads/{branch}")
        on_push(ref)
        log.info("push received", extra=logs.fields(provider=provider, ref=ref))
        return reply(202, "fetch triggered")

    @app.errorhandler(413)
    def too_large(_: Exception) -> Response:
        return reply(400, f"body exceeds {MAX_BODY} bytes")

    return app
