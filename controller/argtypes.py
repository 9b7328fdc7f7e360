"""Argument types shared by the command lines (argparse ``type=``), each naming what it expects."""

from __future__ import annotations

import argparse
import re

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def resource(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` of a custom resource."""
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def dns_label(text: str) -> str:
    """A namespace (or other DNS-1123 label) name."""
    if not DNS_LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
    return text


def repository(text: str) -> str:
    """A git repository URL or path (a ConfigMap made ``--from-file`` ends it with a newline: stripped);
    ``$(VAR)`` left unexpanded means the env var's source was missing."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("the repository is empty")
    if text.startswith("$(") and text.endswith(")"):
        raise argparse.ArgumentTypeError(
            f"{text} was not set: in the cluster it comes from ConfigMap replayops-source (key repo) of "
            "replayops-system — kubectl -n replayops-system create configmap replayops-source "
            "--from-literal=repo=<git URL>")
    return text


def byte_size(text: str) -> int:
    """A size in bytes: digits, optionally with Ki, Mi or Gi (``1048576``, ``1Mi``)."""
    found = re.fullmatch(r"([0-9]{1,12})(Ki|Mi|Gi)?", text.strip())
    if not found or int(found[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (digits, optionally Ki, Mi or Gi)")
    return int(found[1]) << {"Ki": 10, "Mi": 20, "Gi": 30}.get(found[2] or "", 0)
