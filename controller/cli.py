"""The ``replayops`` command: one sub-command per area, each registered by its own module.

Only the module of the command being run is imported (a sidecar's ``replayops proxy`` must not load the
webhook's, the controller's and the replayer's libraries: that was a second of every injected pod's start);
``--help`` and an unknown command load them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> the module whose add_parser(sub) registers it
COMMANDS = {
    "dev": "controller.devcluster.cli", "up": "controller.devcluster.up", "webhook": "controller.admission.cli",
    "validate": "controller.gitops.cli", "diff": "controller.gitops.cli", "controller": "controller.gitops.cli",
    "proxy": "controller.capture.cli", "forwarder": "controller.capture.cli", "capture": "controller.capture.cli",
    "snapshot": "controller.capture.cli", "iptables": "controller.capture.iptables",
    "replay": "controller.replay.cli", "mock": "controller.replay.cli", "report": "controller.replay.cli",
    "inspector": "controller.inspector.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s module registered, or every module's when ``command`` is not ours."""
    parser = argparse.ArgumentParser(prog="replayops", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; whatever follows a ``--`` is a command line of its own (``args.command``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    args.command = command
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
