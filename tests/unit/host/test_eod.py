"""The end-of-day report as a function of what was gathered (daemon/eod.py)."""

from __future__ import annotations

from daemon.eod import build, day_start, lines

NOW = 1_796_000_000.0


def test_day_start_is_local_midnight_before_now() -> None:
    start = day_start(NOW)
    assert NOW - 86400 < start <= NOW


def test_a_quiet_day_is_ok_and_counts_only_todays_events() -> None:
    events = [{"kind": "RoleChanged", "wall_time": day_start(NOW) - 10, "role": "primary"},
              {"kind": "PreflightFinished", "wall_time": day_start(NOW) + 60, "failed": 0},
              {"kind": "UplinkHealthChanged", "wall_time": NOW - 5}]
    report = build(node="edge-a", now=NOW, status={"summary": "edge-a: 5/5 services running; all ok"},
                   role={"role": "primary", "epoch": 4, "reason": "holds the lease"}, events=events,
                   reconcile=[{"venue": "kraken", "counts": {"matched": 3, "orphans": 0, "missing": 0}}],
                   journal_verify={"ok": True, "lines": ["/j: 1 segment(s)", "OK: every record verified"]}, errors=[])
    assert report["ok"] and report["events_today"] == 2
    assert report["event_kinds"] == {"PreflightFinished": 1, "UplinkHealthChanged": 1}
    assert [e["kind"] for e in report["notable"]] == ["PreflightFinished"]
    text = lines(report)
    assert text[0].startswith("end of day on edge-a") and text[-1] == "result: OK"
    assert any("reconcile kraken (dry run)" in line for line in text)


def test_orphans_and_a_damaged_journal_are_problems() -> None:
    report = build(node="edge-a", now=NOW, status={}, role=None, events=[],
                   reconcile=[{"venue": "kraken", "counts": {"orphans": 2}, "errors": []}],
                   journal_verify={"ok": False, "lines": ["CORRUPT: seq 9"]}, errors=["reconcile dry run refused"])
    assert not report["ok"] and len(report["problems"]) == 3
    assert lines(report)[-1] == "result: 3 problem(s) to look at"
