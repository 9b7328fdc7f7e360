"""Durations and times as our CRDs write them: ``500ms``, ``30s``, ``5m``, ``1h30m``; RFC 3339 date-times."""

from __future__ import annotations

import re
from datetime import datetime

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``text`` (None for none); raise ValueError naming the text when it is not a duration."""
    if not text:
        return None
    if not re.fullmatch(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+", text):
        raise ValueError(f"{text!r} is not a duration (e.g. 500ms, 30s, 5m, 1h30m)")
    return sum(float(value) * _UNITS[unit] for value, unit in _PART.findall(text))


def epoch(text: str) -> float:
    """An RFC 3339 date-time as epoch seconds; ValueError naming the text when it is not one."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time (e.g. 2026-12-01T10:00:00Z)") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (end it with Z or +HH:MM)")
    return at.timestamp()
