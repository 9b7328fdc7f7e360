"""Small waits shared by the process-level tests."""

from __future__ import annotations

import time
from pathlib import Path

import requests


def wait_200(url: str, timeout: float = 20) -> None:
    """Until ``url`` answers 200 (a proxy in front of an app that is not up yet answers 502)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.1)


def stored_lines(store: Path) -> list[str]:
    """Every line the store's capture streams hold, as stored (whole batches: one being written is read on
    the next call)."""
    from controller.store import whole_batches
    return [line for segment in sorted((store / "streams").rglob("*.jsonl.gz")) for batch in whole_batches(segment)
            for line in batch.decode().splitlines() if line]
