"""Argument types shared by the command lines (argparse ``type=``), each naming what it expects."""

from __future__ import annotations

import argparse


def resource(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` of a custom resource."""
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name
