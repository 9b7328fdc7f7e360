"""``replayops iptables``: the init container's inbound redirect for transparent capture.

Inbound TCP to the captured application ports is redirected (nat PREROUTING)
to the proxy's transparent listener; the proxy's own connections to the app
are locally generated (OUTPUT), so they are not redirected again. Idempotent:
the chain is flushed and rebuilt, the jump added once.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

CHAIN = "REPLAYOPS_INBOUND"


def rules(proxy_port: int, ports: list[int]) -> list[list[str]]:
    """The iptables invocations, in order (the first two may fail harmlessly on a fresh table)."""
    out = [["-t", "nat", "-N", CHAIN], ["-t", "nat", "-F", CHAIN]]
    out += [["-t", "nat", "-A", CHAIN, "-p", "tcp", "--dport", str(p), "-j", "REDIRECT", "--to-ports",
             str(proxy_port)] for p in ports]
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("iptables", help="redirect inbound app ports to the transparent proxy (init container)")
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--ports", required=True, help="comma-separated application ports")
    p.add_argument("--dry-run", action="store_true", help="print the rules instead of applying them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        ports = [int(p) for p in args.ports.split(",") if p.strip()]
    except ValueError:
        print(f"replayops iptables: --ports {args.ports!r} must be comma-separated numbers", file=sys.stderr)
        return 2
    if not ports or not all(0 < p < 65536 for p in ports) or args.proxy_port in ports:
        print("replayops iptables: --ports must name 1-65535 ports other than --proxy-port", file=sys.stderr)
        return 2
    binary = shutil.which("iptables")
    plan = rules(args.proxy_port, ports)
    if args.dry_run:
        print("\n".join("iptables " + " ".join(r) for r in plan))
        return 0
    if binary is None:
        print("replayops iptables: iptables not found", file=sys.stderr)
        return 1
    subprocess.run([binary, *plan[0]], capture_output=True)  # the chain may exist already
    for rule in plan[1:]:
        done = subprocess.run([binary, *rule], capture_output=True, text=True)
        if done.returncode:
            print(f"replayops iptables: iptables {' '.join(rule)}: {done.stderr.strip()}", file=sys.stderr)
            return 1
    jump = ["-t", "nat", "PREROUTING", "-p", "tcp", "-j", CHAIN]
    if subprocess.run([binary, "-t", "nat", "-C", *jump[2:]], capture_output=True).returncode:
        done = subprocess.run([binary, "-t", "nat", "-A", *jump[2:]], capture_output=True, text=True)
        if done.returncode:
            print(f"replayops iptables: cannot add the PREROUTING jump: {done.stderr.strip()}", file=sys.stderr)
            return 1
    print(f"redirecting inbound tcp ports {','.join(map(str, ports))} to {args.proxy_port}")
    return 0
