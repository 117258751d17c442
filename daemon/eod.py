"""`lifeline report eod`: the end-of-day report after the close.

Gathered through the daemon (the node's status and role, the day's events, a
reconciliation dry run of every venue: open orders against the journal) and from disk
(`journal verify`), written as text and JSON. :func:`build` and :func:`lines` are pure
(facts in, report out); :func:`gather` does the I/O with a control client.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from daemon.core.control_client import ControlError
from daemon.standby.journal import verify_directory

#: Event kinds an operator reads first in the day's list (the rest are counted).
NOTABLE = ("RoleChanged", "OperatorPromotion", "ActiveUplinkChanged", "AllUplinksDown", "VenueHealthChanged",
           "VenueDeadmanFailed", "PlaybookFinished", "EngineHaltRequested", "ReplicationDegraded", "StandbyLost",
           "LeaseStoreUnreachable", "UpsOnBattery", "GnssFixLost", "ClockOffsetHigh", "PreflightFinished",
           "ConfigReloaded", "ReconciliationFinished", "ServiceFailed")


def day_start(now: float) -> float:
    """Local midnight before ``now`` (the host's time zone; the timer runs after the close)."""
    local = datetime.fromtimestamp(now).astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def build(*, node: str, now: float, status: dict[str, Any] | None, role: dict[str, Any] | None,
          events: list[dict[str, Any]], reconcile: list[dict[str, Any]] | None,
          journal_verify: dict[str, Any] | None, errors: list[str]) -> dict[str, Any]:
    since = day_start(now)
    today = [e for e in events if float(e.get("wall_time", 0)) >= since]
    kinds = Counter(e.get("kind") for e in today)
    problems = list(errors)
    if journal_verify is not None and not journal_verify.get("ok"):
        problems.append("journal verify: " + "; ".join(journal_verify.get("lines", [])))
    for r in reconcile or []:
        counts = r.get("counts") or {}
        if (r.get("errors") or counts.get("failed") or counts.get("orphans") or counts.get("missing")
                or counts.get("mismatched")):
            problems.append(f"reconcile {r.get('venue')}: counts {counts}, errors {r.get('errors')}")
    return {"node": node, "at": now, "day_start": since, "summary": (status or {}).get("summary"),
            "role": {k: (role or {}).get(k) for k in ("role", "epoch", "reason")} if role else None,
            "events_today": len(today), "event_kinds": dict(sorted(kinds.items())),
            "notable": [e for e in today if e.get("kind") in NOTABLE],
            "reconcile": reconcile, "journal_verify": journal_verify, "problems": problems, "ok": not problems}


def lines(report: dict[str, Any]) -> list[str]:
    at = datetime.fromtimestamp(report["at"]).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [f"end of day on {report['node']} at {at}", f"  status: {report.get('summary')}"]
    role = report.get("role")
    if role:
        out.append(f"  role: {role.get('role')} at epoch {role.get('epoch')} ({role.get('reason')})")
    out.append(f"  events today: {report['events_today']} "
               f"({', '.join(f'{k} {n}' for k, n in report['event_kinds'].items()) or 'none'})")
    for e in report["notable"]:
        when = datetime.fromtimestamp(float(e.get("wall_time", 0))).astimezone().strftime("%H:%M:%S")
        detail = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("kind", "wall_time", "sequence", "source"))
        out.append(f"    {when} {e.get('kind')} {detail}"[:240])
    if report.get("reconcile") is None:
        out.append("  reconcile: no venues (or the daemon refused; see problems)")
    for r in report.get("reconcile") or []:
        out.append(f"  reconcile {r.get('venue')} (dry run): {r.get('counts')}")
    jv = report.get("journal_verify")
    out.append("  journal verify: " + ("not run (no journal here)" if jv is None else
                                       ("OK " if jv.get("ok") else "FAILED ") + "; ".join(jv.get("lines", [])[:1])))
    for p in report["problems"]:
        out.append(f"  PROBLEM: {p}")
    out.append("result: " + ("OK" if report["ok"] else f"{len(report['problems'])} problem(s) to look at"))
    return out


def gather(client: Any, journal_dir: Path | None, *, now: Callable[[], float] = time.time) -> dict[str, Any]:
    errors: list[str] = []
    status = client.call("status")
    try:
        role = client.call("role.status")
    except ControlError:
        role = None  # no journal on this host
    events = client.call("events.recent", {"limit": 10_000}).get("events", [])
    reconcile: list[dict[str, Any]] | None = None
    if any(s.get("name") == "venues" for s in status.get("services", [])):
        client.set_timeout(120.0)
        try:
            reconcile = client.call("venues.reconcile", {"dry_run": True}).get("reports", [])
        except ControlError as exc:
            errors.append(f"reconcile dry run refused: {exc}")
    verify = None
    if journal_dir is not None and journal_dir.is_dir():
        report = verify_directory(journal_dir)
        verify = {"ok": report.ok, "lines": report.lines()}
    return build(node=status.get("node", "?"), now=now(), status=status, role=role, events=events,
                 reconcile=reconcile, journal_verify=verify, errors=errors)
