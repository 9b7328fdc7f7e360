"""Status conditions as the Kubernetes API conventions shape them (type, status, reason, message, time)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from controller.api import READY


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Ready condition of one of our objects' status ({} when it has none yet)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == READY), {})


def ready(ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    """The Ready condition of an object at ``generation``."""
    return {"type": READY, "status": "True" if ok else "False", "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": now()}
