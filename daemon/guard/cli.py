"""``lifeline kill`` and ``lifeline unkill``: the kill switch from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from daemon.core.control_client import ControlError


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
