"""Durations as our CRDs write them: ``500ms``, ``30s``, ``5m``, ``1h30m``."""

from __future__ import annotations

import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``text`` (None for none); raise ValueError naming the text when it is not a duration."""
    if not text:
        return None
    if not re.fullmatch(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+", text):
        raise ValueError(f"{text!r} is not a duration (e.g. 500ms, 30s, 5m, 1h30m)")
    return sum(float(value) * _UNITS[unit] for value, unit in _PART.findall(text))
