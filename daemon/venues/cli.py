"""``lifeline venues`` (the venue x uplink matrix) and ``lifeline reconcile``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

# lazy-imports: the handlers import what they run (CLI start-up: every `lifeline` command builds
# this parser).


def add_venue_parsers(sub: Any, add_client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    venues = sub.add_parser("venues", help="every venue through every uplink: state, latency, last error; "
                                           "the dead-man switch and the last reconciliation")
    add_client_options(venues)
    venues.add_argument("--json", action="store_true")
    venues.add_argument("--follow", action="store_true", help="print every health change as it happens")
    reconcile = sub.add_parser("reconcile", help="compare each venue's open orders with the journal and apply "
                                                 "the venue's policy (cancel-orphans, adopt, report-only)")
    add_client_options(reconcile)
    reconcile.add_argument("--venue", help="one venue (default: every venue)")
    reconcile.add_argument("--dry-run", action="store_true",
                           help="decide and report only: nothing is cancelled or adopted")
    reconcile.add_argument("--json", action="store_true")


def _age(since: float | None) -> str:
    if not since:
        return "-"
    seconds = max(0.0, time.time() - since)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_matrix(details: dict[str, Any]) -> str:
    """The venue x uplink table an operator reads."""
    venues = details.get("venues") or {}
    if not venues:
        return "no venues configured ([venues.NAME] in the config)"
    rows = [("VENUE", "UPLINK", "STATE", "LATENCY", "MEDIAN", "SINCE", "LAST ERROR")]
    for name, v in venues.items():
        for p in v.get("paths", []):
            latency = f"{p['latency_ms']:.0f}ms" if p.get("latency_ms") is not None else "-"
            median = f"{p['median_ms']:.0f}ms" if p.get("median_ms") is not None else "-"
            error = f"{p['error_class']}: {p['error']}" if p.get("error_class") else ""
            rows.append((name, p["uplink"], p["state"].upper(), latency, median, _age(p.get("since")), error[:70]))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:6])) + "  " + r[6] for r in rows]
    lines.append("")
    for name, v in venues.items():
        dm = v.get("deadman") or {}
        if not dm.get("enabled"):
            deadman = "off"
        elif dm.get("supported") is False:
            deadman = "not supported by the venue"
        elif v.get("credentials") == "none":
            deadman = "off (no credentials)"
        elif dm.get("error"):
            deadman = f"NOT ARMED: {dm['error']}"
        elif dm.get("armed_at"):
            deadman = f"armed {_age(dm['armed_at'])} ago, cancels after {dm.get('timeout_s'):g}s without a re-arm"
        else:
            deadman = "not armed (this node is not primary)" if not details.get("may_trade") else "arming"
        rec = v.get("reconcile") or {}
        last = rec.get("last_report") or "none yet"
        lines.append(f"{name}: {v.get('state', '?').upper()} overall; dead-man {deadman}; "
                     f"reconcile policy {rec.get('policy')}, last report {last}")
    return "\n".join(lines).rstrip()


def cmd_venues(args: argparse.Namespace, connect: Callable[[argparse.Namespace], Any]) -> int:
    from daemon.core.control_client import ControlError

    with connect(args) as client:
        try:
            if not args.follow:
                details = client.call("venues.status")
                print(json.dumps(details, indent=2, sort_keys=True) if args.json else format_matrix(details))
                return 0
            client.call("venues.watch")
            print("following venue health; Ctrl-C to stop", file=sys.stderr)
            while True:
                message = client.read_line(timeout=None)
                if args.json:
                    print(json.dumps(message), flush=True)
                    continue
                if "matrix" in message:
                    for p in message["matrix"]:
                        print(f"{p['venue']} via {p['uplink']}: {p['state'].upper()}", flush=True)
                elif "change" in message:
                    c = message["change"]
                    print(f"{time.strftime('%H:%M:%S')} {c['venue']} via {c['uplink']}: {c['previous'].upper()} -> "
                          f"{c['state'].upper()} (venue {c['venue_state'].upper()}): {c['reason']}", flush=True)
                elif "cut" in message:
                    print(f"lifeline: {message['cut']}", file=sys.stderr)
                    return 1
        except ControlError as exc:
            if exc.code == "unknown_method":
                print("lifeline: this daemon has no venues configured ([venues.NAME])", file=sys.stderr)
            else:
                print(f"lifeline: {exc}", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2


def cmd_reconcile(args: argparse.Namespace, connect: Callable[[argparse.Namespace], Any]) -> int:
    from daemon.core.control_client import ControlError

    params: dict[str, Any] = {"dry_run": bool(args.dry_run)}
    if args.venue:
        params["venue"] = args.venue
    with connect(args) as client:
        client.set_timeout(120.0)
        try:
            result = client.call("venues.reconcile", params)
        except ControlError as exc:
            print(f"lifeline reconcile: {exc}", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    reports = result.get("reports", [])
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for report in reports:
            for line in report.get("lines", []):
                print(line)
            for error in report.get("errors", []):
                print(f"  ERROR {error}")
            print(f"  report: {report.get('report')}")
            print()
        if args.dry_run:
            print("dry run: nothing was cancelled or adopted; run without --dry-run on the primary to apply")
    failed = any(r.get("errors") or (r.get("counts") or {}).get("failed") for r in reports)
    return 1 if failed else 0
