"""``lifeline kill`` and ``lifeline unkill``: the kill switch from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from daemon.core.control_client import ControlError


#: The keyring `lifeline risk verify` reads by default (the daemon: [guard] keyring, else [recovery] keyring).
DEFAULT_KEYRING = Path("/etc/lifeline/keyring.toml")

def add_kill_parsers(sub: Any, add_client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    kill = sub.add_parser("kill", help="kill switch: refuse new orders on a scope and cancel every open order "
                                       "there at every venue, through every uplink (admin)")
    unkill = sub.add_parser("unkill", help="lift a kill: new orders on the scope are accepted again (admin)")
    for parser in (kill, unkill):
        add_client_options(parser)
        parser.add_argument("--venue", help="only this venue (default: every venue)")
        parser.add_argument("--symbol", help="only this symbol, e.g. BTC/USD (default: every symbol)")
        parser.add_argument("--reason", required=True, help="why (in the journal, the audit log and every refusal)")
        parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")


def cmd_kill(args: argparse.Namespace, connect: Callable[[argparse.Namespace], Any]) -> int:
    """Exit 0: blocked and every venue clear; 1: blocked but something is left open (or an
    error); 2: refused (not primary, not admin, bad arguments) — nothing done."""
    method = "guard.kill" if args.command == "kill" else "guard.unkill"
    params: dict[str, Any] = {"reason": args.reason}
    if args.venue:
        params["venue"] = args.venue
    if args.symbol:
        params["symbol"] = args.symbol
    try:
        with connect(args) as client:
            client.set_timeout(60.0)
            result = client.call(method, params)
    except ControlError as exc:
        print(f"lifeline {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"lifeline: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for line in result.get("lines", []):
            print(line)
        for problem in result.get("audit_errors", []):
            print(f"  AUDIT: {problem}")
    if args.command == "kill" and not result.get("clear", False):
        return 1
    return 0


def add_risk_parser(sub: Any, client_options: Any) -> None:
    """`lifeline risk ...` (handled by daemon/risk.py): argparse only, no trio, no cryptography."""
    risk = sub.add_parser("risk", help="the pre-trade risk gate: limits, positions, P&L, blocks (issue 19)")
    rsub = risk.add_subparsers(dest="risk_command", metavar="ACTION")
    status = rsub.add_parser("status", help="limits and their use (nearest first), positions, P&L, blocks")
    for p in (risk, status):
        p.add_argument("--json", action="store_true", help="the raw risk.status answer")
    pause = rsub.add_parser("pause", help="refuse new orders on a scope (admin)")
    resume = rsub.add_parser("resume", help="end the pauses inside a scope (admin)")
    for p in (pause, resume):
        p.add_argument("--venue")
        p.add_argument("--symbol")
    pause.add_argument("--for", dest="duration", help='end by itself after this long, e.g. "10m"')
    throttle = rsub.add_parser("throttle", help="at most RATE new order records per second (admin)")
    throttle.add_argument("--rate", type=float, required=True)
    throttle.add_argument("--burst", type=float)
    throttle.add_argument("--for", dest="duration")
    unthrottle = rsub.add_parser("unthrottle", help="lift the throttle (admin)")
    for p in (pause, resume, throttle, unthrottle):
        p.add_argument("--reason", required=True, help="why (goes to the journal and the audit log)")
    for p in (risk, status, pause, resume, throttle, unthrottle):
        client_options(p)
    sign = rsub.add_parser("sign", help="add your signature to LIMITS.toml.sig (each operator in turn)")
    sign.add_argument("file", type=Path)
    sign.add_argument("--key", required=True, type=Path, metavar="NAME.key")
    sign.add_argument("--passphrase-env", metavar="VAR")
    sign.add_argument("--keyring", type=Path, default=None)
    verify = rsub.add_parser("verify", help="check LIMITS.toml as the daemon would (signatures, expiry, format)")
    verify.add_argument("file", type=Path)
    verify.add_argument("--keyring", type=Path, default=DEFAULT_KEYRING)
