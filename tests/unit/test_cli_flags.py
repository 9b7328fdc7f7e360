"""Flags added this far refuse bad values with a message naming the flag and the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("args", "says"), [
    (("inspector", "serve", "--repo", "file:///x", "--port", "0"), "--port 0 is not a TCP port"),
    (("inspector", "serve", "--repo", "file:///x", "--author", "nobody"), "--author 'nobody' is not 'Name <email>'"),
    (("webhook", "serve", "--port", "8443", "--cert-dir", "/tmp/x", "--cert-sync-interval", "0"),
     "argument --cert-sync-interval: 0 is not between 0 and 86400 seconds"),
    (("webhook", "serve", "--port", "8443", "--cert-dir", "/tmp/x", "--cert-sync-interval", "soon"),
     "argument --cert-sync-interval: 'soon' is not a number of seconds"),
    (("replay", "--resource", "just-a-name"), "argument --resource: 'just-a-name' is not NAMESPACE/NAME"),
    (("replay", "snapshot-only"), "give SNAPSHOT and --target, or --resource NAMESPACE/NAME"),
    (("mock", "--listen", "9300"), "give SNAPSHOT, or --resource NAMESPACE/NAME"),
])
def test_bad_flags_are_refused_by_name(args: tuple[str, ...], says: str) -> None:
    out = cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert says in out.stderr
