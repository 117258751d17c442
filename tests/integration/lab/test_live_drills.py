"""`lifeline drill switchover --live` on two real `lifeline run` processes and a real
witness on loopback, as an operator runs it on the real pair: refused while
``[drills] live`` is off, refused inside trading hours without --force; then there (on
the primary) and back (the same drill on the new primary) under a writer, with every
acknowledged record on both nodes, identical, and an audit line naming the caller."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from lab.ha_drills import Writer
from tests.support.cli import cli
from tests.support.pair import LeasePair, feed_lines, settled
from tests.support.pair import witness_pair as pair  # noqa: F401  (the fixture: a witness pair on loopback)
from tests.support.waiting import wait_for


def outside_now() -> str:
    """A trading window that does not contain the present minute (UTC)."""
    hour = (dt.datetime.now(dt.timezone.utc).hour + 3) % 22
    return f"{hour:02d}:00-{hour + 1:02d}:00"


def drills(pair: LeasePair, **settings: Any) -> None:
    for node in pair.nodes.values():
        node.extra = {"drills": {"timezone": "UTC", "trading_hours": outside_now(), "max_duration": "40s",
                                 **settings}}
        node.write_config()


def live(pair: LeasePair, on: str, *extra: str) -> tuple[int, dict[str, Any] | str]:
    done = cli("drill", "switchover", "--live", "--json", *extra, "--socket", str(pair.nodes[on].socket),
               timeout=90)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.returncode, done.stdout + done.stderr


def audit_lines(pair: LeasePair, node: str) -> list[dict[str, Any]]:
    path = pair.nodes[node].state_dir / "recovery" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_live_switchover_is_refused_when_off_and_inside_trading_hours(pair: LeasePair) -> None:
    drills(pair, live=False)
    first, second = settled(pair)
    code, text = live(pair, first)
    assert code == 1 and "live drills are off" in str(text) and "[drills] live = true" in str(text), text
    # Turn it on with a reload, trading all day every day (UTC): refused without --force.
    now = dt.datetime.now(dt.timezone.utc)
    drills(pair, live=True, trading_hours="00:00-23:59")
    assert cli("reload", "--socket", str(pair.nodes[first].socket)).returncode == 0
    if now.weekday() < 5:
        code, text = live(pair, first)
        assert code == 1 and "inside trading hours" in str(text) and "--force" in str(text), text
        assert pair.role(first)["role"] == "primary"
        code, result = live(pair, first, "--force")  # forced: it runs, and the audit line says so
        assert code == 0 and isinstance(result, dict) and result["ok"] and result["forced"], result
        pair.wait_role(second, "primary")
        forced = [a["fields"] for a in audit_lines(pair, first) if a.get("kind") == "drill.switchover"]
        assert forced[-1]["forced"] is True and forced[-1]["by"]["uid"] == 0, forced
        first, second = second, first
    # From the standby: the pair check names why.
    drills(pair, live=True)
    assert cli("reload", "--socket", str(pair.nodes[second].socket)).returncode == 0
    code, text = live(pair, second)
    assert code == 1 and "not primary" in str(text), text
    assert pair.role(first)["role"] == "primary" and pair.role(first)["accepting_appends"]


def test_live_switchover_there_and_back_loses_nothing_and_the_records_are_identical(
        pair: LeasePair, tmp_path: Path) -> None:
    drills(pair, live=True)
    first, second = settled(pair)
    writer = Writer(pair.nodes, first, feed_lines(), batch=10, pause=0.005)  # type: ignore[arg-type]
    writer.start()
    try:
        wait_for(lambda: writer.ok_count() >= 50, "50 acknowledged records", 15)
        results = []
        for old, new in ((first, second), (second, first)):
            wait_for(lambda o=old, n=new: pair.role(o).get("sync_mark") == n, f"{new} marked synchronous", 20,
                     detail=pair.diagnosis)
            report = tmp_path / f"live-{old}.html"
            code, result = live(pair, old, "--report", str(report))
            assert code == 0 and isinstance(result, dict) and result["ok"], result
            assert result["from"] == old and result["to"] == new
            assert all(c["ok"] for c in result["checks"]) and len(result["checks"]) >= 5, result["checks"]
            assert result["pause_ms"] is not None and result["pause_ms"] < 3000
            assert report.exists() and "live switchover drill" in report.read_text()
            pair.wait_role(new, "primary")
            results.append(result)
        writer.stop()
        assert writer.error is None, writer.error
        pair.wait_role(first, "primary")
        wait_for(lambda: pair.nodes[second].last_seq() == pair.nodes[first].last_seq(), "the standby caught up", 15)
        journals = {name: pair.nodes[name].records() for name in pair.nodes}
        assert journals[first] == journals[second]
        acked = writer.acknowledged()
        by_seq = {seq: payload for seq, _e, _t, payload in journals[first]}
        lost = [a.seq for a in acked if by_seq.get(a.seq) != a.payload]
        assert lost == [] and len(acked) > 50, f"{len(lost)} of {len(acked)} lost"
        markers = [json.loads(p) for _s, _e, _t, p in journals[first] if p.startswith(b'{"drill"')]
        assert [m["run"] for m in markers] == [r["run"] for r in results]
        assert all(m["record"] == "drill" for m in markers)
        for old in (first, second):
            lines = [a["fields"] for a in audit_lines(pair, old) if a.get("kind") == "drill.switchover"]
            assert len(lines) == 1 and lines[0]["ok"] is True and lines[0]["by"]["uid"] == 0, lines
        print("pauses", [r["pause_ms"] for r in results], "ms; durations", [r["duration_ms"] for r in results])
    finally:
        writer.stop(5)
