"""``lifeline uplink status|use|auto``: the uplinks, through the daemon's control socket.

daemon/cli.py (the registry) calls :func:`add_parsers` with its subparsers and the host's
``--socket``/``--config`` options, and :func:`cmd_uplink` with the host's ``connect``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

# lazy-imports: the handler imports what it runs (CLI start-up: every `lifeline` command builds
# this parser).

Connect = Callable[[argparse.Namespace], Any]


def add_parsers(sub: Any, add_client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    uplink = sub.add_parser("uplink", help="show the uplinks, pin one, or return to automatic choice")
    uplink_sub = uplink.add_subparsers(dest="uplink_command", metavar="ACTION", required=True)
    for action, text in (("status", "every uplink's health and the active one"),
                         ("use", "pin NAME: traffic goes through it while it is usable"),
                         ("auto", "remove the pin: automatic choice again")):
        p = uplink_sub.add_parser(action, help=text)
        add_client_options(p)
        if action == "use":
            p.add_argument("name")
        if action == "status":
            p.add_argument("--json", action="store_true")


def cmd_uplink(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    with connect(args) as client:
        try:
            if args.uplink_command == "use":
                result = client.call("uplink.use", {"name": args.name})
                print(f"pinned {args.name}; active uplink: {result['active']}"
                      + (f" ({result['note']})" if result.get("note") else ""))
                return 0
            if args.uplink_command == "auto":
                result = client.call("uplink.auto")
                print(f"automatic choice; active uplink: {result['active']}")
                return 0
            details = client.call("uplink.status")
        except ControlError as exc:
            print(f"lifeline: {exc.message}", file=sys.stderr)
            return 1 if exc.code != "unknown_method" else 2
    if args.json:
        print(json.dumps(details, indent=2, sort_keys=True))
        return 0
    print(format_uplinks(details))
    return 0 if not details.get("all_down") else 1


def format_uplinks(details: dict[str, Any]) -> str:
    from daemon.core.durations import format_duration_short

    pin = f", pinned {details['pinned']}" if details.get("pinned") else ""
    lines = [f"active uplink: {details.get('active') or 'none'}{pin} (route backend {details.get('backend')}, "
             f"{details.get('switches', 0)} switches, {details.get('route_errors', 0)} route errors)"]
    if details.get("last_decision"):
        lines.append(f"last decision: {details['last_decision']}")
    rows = [("UPLINK", "STATE", "FOR", "RTT", "JITTER", "LOSS", "PRIO", "REASON")]
    for name, u in details.get("uplinks", {}).items():
        rows.append((name, u["state"].upper(), format_duration_short(u.get("for_s") or 0),
                     f"{u['rtt_ms']:.1f}ms" if u.get("rtt_ms") is not None else "-",
                     f"{u['jitter_ms']:.1f}ms" if u.get("jitter_ms") is not None else "-",
                     f"{u['loss']:.1%}", str(u.get("priority")), u.get("reason", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    lines.append("")
    for row in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:7])) + "  " + row[7])
    return "\n".join(lines)
