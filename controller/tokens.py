"""Forwarder tokens bound to a namespace: a sidecar's token says which namespace it writes for.

The forwarder holds one master token (the Secret ``replayops-forwarder-token`` of its own namespace). The
token the controller copies into a team's namespace is derived from it: ``v1.<namespace>.<HMAC>``, the
HMAC-SHA256 of the namespace keyed by the master. A pod can read only its own namespace's copy, so its
batches can name only policies and streams of that namespace — the forwarder checks the HMAC (constant
time) and decides; it keeps no list of tokens, and rotating the master rotates every copy. The master
itself is accepted for any namespace (the forwarder's own, and ``replayops capture`` on one machine).
"""

from __future__ import annotations

import hashlib
import hmac
import re

PREFIX = "v1"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
ANY = "*"  # what the master token may write for


class TokenError(ValueError):
    """A token that is not the master nor a namespace's."""


def for_namespace(master: str, namespace: str) -> str:
    """The token of ``namespace``, derived from the forwarder's ``master`` token."""
    if not _LABEL.fullmatch(namespace):
        raise TokenError(f"{namespace!r} is not a namespace name")
    digest = hmac.new(master.encode(), f"replayops-forwarder/{PREFIX}/{namespace}".encode(), hashlib.sha256)
    return f"{PREFIX}.{namespace}.{digest.hexdigest()}"


def namespace_of(master: str, token: str) -> str:
    """The namespace ``token`` writes for (``ANY`` for the master); ``TokenError`` when it is neither."""
    if hmac.compare_digest(token.encode(), master.encode()):
        return ANY
    prefix, _, rest = token.partition(".")
    namespace, _, _ = rest.partition(".")
    if prefix == PREFIX and _LABEL.fullmatch(namespace) and hmac.compare_digest(
            token.encode(), for_namespace(master, namespace).encode()):
        return namespace
    raise TokenError("missing or wrong bearer token")
