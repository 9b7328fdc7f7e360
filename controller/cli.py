"""The ``replayops`` command: one sub-command per area, each registered by its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller.admission import cli as webhook_cli
from controller.capture import cli as capture_cli
from controller.capture import iptables
from controller.devcluster import cli as dev_cli
from controller.devcluster import up
from controller.gitops import cli as gitops_cli
from controller.inspector import cli as inspector_cli
from controller.replay import cli as replay_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replayops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (dev_cli, up, webhook_cli, gitops_cli, capture_cli, iptables, replay_cli, inspector_cli):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; whatever follows a ``--`` is a command line of its own (``args.command``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(argv)
    args.command = command
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
