"""The code stays ruff- and mypy-clean (STYLE.md): checked in every test run."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    out = subprocess.run([str(BIN / "ruff"), "check", "controller", "tests", "bench"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_mypy() -> None:
    out = subprocess.run([str(BIN / "mypy"), "controller"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
