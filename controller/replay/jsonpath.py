"""Dotted JSON paths (``$.user.id``, ``$.items[0].price``, ``$.items[*].id``) — get, set, flatten."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_PART = re.compile(r"\.?([^.\[\]]+)|\[(\d+|\*)\]")


def parse(path: str) -> list[str | int]:
    """``$.a.b[0]`` → ["a", "b", 0]; ``[*]`` is kept as "*"."""
    text = path[1:] if path.startswith("$") else path
    out: list[str | int] = []
    for name, index in _PART.findall(text):
        out.append(name if name else (int(index) if index.isdigit() else "*"))
    return out


def get(doc: Any, path: str) -> Any:
    node = doc
    for part in parse(path):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def set_value(doc: Any, path: str, value: Any) -> bool:
    """Set ``path`` in ``doc`` (which must exist up to the parent); True when set."""
    parts = parse(path)
    node = doc
    for part in parts[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        node[parts[-1]] = value
    except (IndexError, TypeError):
        return False
    return True


def flatten(doc: Any, prefix: str = "$") -> Iterator[tuple[str, Any]]:
    """Every leaf as (path, value); empty containers are leaves too."""
    if isinstance(doc, dict) and doc:
        for key, value in doc.items():
            yield from flatten(value, f"{prefix}.{key}")
    elif isinstance(doc, list) and doc:
        for i, value in enumerate(doc):
            yield from flatten(value, f"{prefix}[{i}]")
    else:
        yield prefix, doc


def matches(pattern: str, path: str) -> bool:
    """Whether ``path`` (concrete) is ``pattern`` or below it; ``[*]`` matches any index."""
    rx = re.escape(pattern if pattern.startswith("$") else f"$.{pattern}").replace(r"\[\*\]", r"\[\d+\]")
    return re.fullmatch(rx + r"(\..*|\[.*)?", path) is not None
