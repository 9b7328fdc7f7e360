"""Who a bearer token is: Kubernetes tokens checked with TokenReview, and forwarder tokens bound to a namespace.

``Reviewer`` asks the apiserver (TokenReview) who a token is — a ServiceAccount token bound to a pod (a
sidecar's projected token) names its pod, a user's its groups — and remembers the answer for a minute. It is
the one token check of replayops: the forwarder identifies sidecars with it, the inspector its users.

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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "v1"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
ANY = "*"  # what the master token may write for
FORWARDER_AUDIENCE = "replayops-forwarder"  # of the ServiceAccount token a sidecar sends the forwarder
POD_NAME = "authentication.kubernetes.io/pod-name"  # TokenReview's extra of a token bound to a pod
POD_UID = "authentication.kubernetes.io/pod-uid"


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


@dataclass(frozen=True)
class Identity:
    """Who the apiserver says a token is."""

    user: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        """A ServiceAccount's namespace ("" for other users)."""
        kind, _, rest = self.user.partition(":serviceaccount:")
        return rest.partition(":")[0] if kind == "system" else ""

    @property
    def pod(self) -> str:
        """The pod a ServiceAccount token is bound to ("" when it is bound to none)."""
        return (self.extra.get(POD_NAME) or ("",))[0]

    @property
    def pod_uid(self) -> str:
        return (self.extra.get(POD_UID) or ("",))[0]


class Reviewer:
    """TokenReview through ``create`` (a Kube's), for ``audiences``; answers kept ``ttl`` seconds (a refusal
    ``refused_ttl``), at most ``size`` of them, by the token's hash (the token itself is never kept). While
    the apiserver cannot be asked, a token it accepted stays accepted up to ``stale`` seconds past its ttl
    (capture rides out an apiserver restart; a bound token lives an hour at most anyway)."""

    def __init__(self, create: Callable[[Mapping[str, Any]], Mapping[str, Any]], audiences: Sequence[str] = (),
                 *, ttl: float = 60.0, refused_ttl: float = 10.0, stale: float = 900.0, size: int = 10000) -> None:
        self._create, self.audiences = create, list(audiences)
        self.ttl, self.refused_ttl, self.stale, self.size = ttl, refused_ttl, stale, size
        self._seen: OrderedDict[str, tuple[float, Identity | str]] = OrderedDict()
        self._lock = threading.Lock()
        self._failing_until = 0.0  # the apiserver failed a review: tokens it accepted are not re-asked till then

    def identify(self, token: str) -> Identity:
        """Who ``token`` is; ``TokenError`` saying why when the apiserver does not authenticate it. Errors
        reaching the apiserver propagate (the caller answers 503, not 401) unless it accepted the token
        recently."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(key)
        if hit is not None and hit[0] > now:
            return _answer(hit[1])
        recent = hit[1] if hit is not None and isinstance(hit[1], Identity) and hit[0] + self.stale > now else None
        if recent is not None and now < self._failing_until:  # the apiserver just failed: not asked again yet
            return recent
        try:
            answer = self._review(token)
        except Exception:
            self._failing_until = now + self.refused_ttl
            if recent is not None:
                return recent
            raise
        with self._lock:
            self._seen[key] = (now + (self.ttl if isinstance(answer, Identity) else self.refused_ttl), answer)
            self._seen.move_to_end(key)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
        return _answer(answer)

    def _review(self, token: str) -> Identity | str:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        status = self._create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                               "metadata": {}, "spec": spec}).get("status") or {}
        if not status.get("authenticated"):
            return f"token not accepted by the apiserver: {status.get('error') or 'not authenticated'}"
        if self.audiences and not set(status.get("audiences") or []) & set(self.audiences):
            return f"token is not for {' or '.join(self.audiences)}"
        user = status.get("user") or {}
        return Identity(str(user.get("username", "")), tuple(user.get("groups") or ()),
                        {k: tuple(v) for k, v in (user.get("extra") or {}).items()})


def _answer(answer: Identity | str) -> Identity:
    if isinstance(answer, str):
        raise TokenError(answer)
    return answer
