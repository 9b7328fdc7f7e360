"""Not collected on its own: run by test_fixture_cleanup in an inner pytest session."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import Cluster


def test_probe(cluster: Cluster) -> None:
    Path(os.environ["REPLAYOPS_PROBE_READY"]).write_text("ready")
    if os.environ.get("REPLAYOPS_PROBE_MODE") == "wait":
        time.sleep(600)
    raise AssertionError("this inner session fails on purpose")
