"""CapturePolicy semantics as pure functions: label selectors and the policy's config hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels AND every matchExpression)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


# what the injected sidecar is built from: its listeners and its container (resources, workers). Filters,
# sampling and DLP are not: the forwarder applies them as it reads the policy, so changing them rolls no pod
SIDECAR_FIELDS = ("inbound", "outbound", "sidecar")


MAX_BODY_BYTES = 1 << 20  # spec.sidecar.maxBodyBytes' default: a body above it streams and is recorded truncated
BUFFER_BYTES = 16 << 20  # spec.sidecar.bufferBytes' default: what a sidecar holds while the forwarder is slow


def max_body(spec: Mapping[str, Any]) -> int:
    """The policy's body limit (``spec.sidecar.maxBodyBytes``)."""
    return int((spec.get("sidecar") or {}).get("maxBodyBytes", MAX_BODY_BYTES))


def config_hash(spec: Mapping[str, Any]) -> str:
    """A short, stable hash of what the injected sidecar receives (a change rolls the pods)."""
    relevant = {k: spec.get(k) for k in SIDECAR_FIELDS}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
