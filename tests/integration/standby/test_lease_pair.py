"""Two real `lifeline run` processes with a real lease store (a `lifeline witness`
process, or a real etcd member) on loopback: who becomes primary, promotion after a
crash, the stale primary that comes back with records nobody else has.

The faults of the issue: a cold start where nobody holds the lease, kill -9 of the
primary under load (0 acknowledged records lost), a standby that was not synchronous
waits for an operator, and the old primary's divergent tail is cut, saved for
reconciliation and reported — never lost silently.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon.core.control_client import ControlError
from lab.ha_drills import overlap_ns, primary_intervals
from lab.pair import LEASE_TIMINGS
from tests.support.cli import cli
from tests.support.pair import Feed, LeasePair, Writer, feed_lines
from tests.support.waiting import wait_for

BACKENDS = ["witness", "etcd"]


@pytest.fixture(params=BACKENDS)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeasePair]:
    p = LeasePair(tmp_path, request.param)
    try:
        yield p
    finally:
        p.close()


def test_cold_start_makes_exactly_one_primary_and_the_other_follows(pair: LeasePair) -> None:
    pair.start()
    primary = pair.wait_primary()
    standby = pair.other(primary)
    pair.wait_role(standby, "standby")
    ok = pair.nodes[primary].call("journal.append", {"payloads": ["a", "b", "c"]})["results"]
    assert [r["status"] for r in ok] == ["ok"] * 3
    epoch = pair.role(primary)["epoch"]
    assert epoch > 0 and {r["epoch"] for r in ok} == {epoch}
    with pytest.raises(ControlError) as refused:
        pair.nodes[standby].call("journal.append", {"payloads": ["never"]})
    assert refused.value.code == "not_primary"
    wait_for(lambda: pair.nodes[standby].last_seq() == 3, "the standby to hold the records")
    # The operator's view, through the CLI.
    shown = cli("role", "--socket", str(pair.nodes[standby].socket))
    assert shown.returncode == 0 and f"{standby}: standby at epoch" in shown.stdout, shown.stdout + shown.stderr
    assert f"held by {primary}" in shown.stdout


def test_kill9_of_the_primary_promotes_the_standby_and_loses_no_acknowledged_record(pair: LeasePair) -> None:
    pair.start()
    first = pair.wait_primary()
    second = pair.other(first)
    pair.wait_role(second, "standby")
    lines = feed_lines()
    writer = Writer(pair.nodes[first], lines, batch=lambda: 20)
    writer.start()
    wait_for(lambda: len(writer.ok()) >= 300, "300 acknowledged records", 20)
    wait_for(lambda: pair.role(first).get("sync_mark") == second and pair.role(second)["lease"]["sync_node"] == second,
             "the store to mark the standby synchronous", 10, detail=pair.diagnosis)
    pair.nodes[first].kill9()
    writer.join(15)
    acked = writer.ok()
    assert acked, "nothing was acknowledged"
    new = pair.wait_primary(among=(second,))
    assert new == second
    info = pair.role(second)
    assert info["epoch"] > max(r["epoch"] for r, _ in writer.results)
    held = {seq: payload for seq, _, _, payload in pair.nodes[second].records()}
    missing = [seq for seq, payload in acked.items() if held.get(seq) != payload]
    assert missing == [], f"{len(missing)} acknowledged records lost, first {missing[:5]}"
    # New appends carry the new epoch; the old primary comes back as a standby
    # (no automatic failback) and catches up.
    results = pair.nodes[second].call("journal.append", {"payloads": ["after failover"]})["results"]
    assert results[0]["status"] == "ok" and results[0]["epoch"] == info["epoch"]
    pair.start(first)
    pair.wait_role(first, "standby")
    wait_for(lambda: pair.nodes[first].last_seq() == pair.nodes[second].last_seq(), "the old primary to catch up",
             20, detail=pair.diagnosis)
    assert pair.role(second)["role"] == "primary"
    assert pair.nodes[first].records()[-1][3] == b"after failover"


def test_stale_primary_returns_with_records_nobody_else_has_they_are_saved_and_reported(pair: LeasePair) -> None:
    pair.start()
    first = pair.wait_primary()
    second = pair.other(first)
    pair.wait_role(second, "standby")
    a, b = pair.nodes[first], pair.nodes[second]
    a.call("journal.append", {"payloads": ["both-1", "both-2"]})
    wait_for(lambda: b.last_seq() == 2, "the standby to hold the first records")
    # The standby goes away: the primary clears the sync mark, then acknowledges alone.
    b.stop()
    wait_for(lambda: a.call("role.status").get("async_allowed"), "the primary to clear the sync mark", 15,
             detail=pair.diagnosis)
    alone = a.call("journal.append", {"payloads": ["alone-3", "alone-4", "alone-5"]})["results"]
    assert [r["status"] for r in alone] == ["ok"] * 3 and alone[0]["durable_on"] == "primary"
    assert a.call("role.status")["sync_mark"] is None
    a.kill9()
    # The standby, not marked synchronous, does not promote itself...
    pair.start(second)
    wait_for(lambda: "operator override" in (info := pair.role(second))["reason"] and info["role"] == "waiting",
             "the unsynchronised standby to wait for an operator", 15, detail=pair.diagnosis)
    refused = cli("standby", "promote", "--socket", str(b.socket))
    assert refused.returncode == 2 and "--accept-loss" in refused.stderr
    # ... until an operator accepts the possible loss.
    promoted = cli("standby", "promote", "--accept-loss", "--socket", str(b.socket))
    assert promoted.returncode == 0 and "accepted" in promoted.stdout, promoted.stdout + promoted.stderr
    pair.wait_primary(among=(second,))
    new_epoch = pair.role(second)["epoch"]
    b.call("journal.append", {"payloads": ["new-3", "new-4"]})
    # The old primary returns: it follows, its divergent tail is cut and saved.
    pair.start(first)
    pair.wait_role(first, "standby")
    wait_for(lambda: a.last_seq() == 4 and a.records()[-1][3] == b"new-4", "the old primary to follow", 20,
             detail=pair.diagnosis)
    assert [r[3] for r in a.records()] == [b"both-1", b"both-2", b"new-3", b"new-4"]
    assert {r[1] for r in a.records()[2:]} == {new_epoch}
    saved = list((a.state_dir / "divergent").glob("divergent-*.jsonl"))
    assert len(saved) == 1
    rows = [json.loads(line) for line in saved[0].read_text().splitlines()]
    assert [(r["seq"], r["payload"]) for r in rows] == [(3, "alone-3"), (4, "alone-4"), (5, "alone-5")]
    events = [e for e in a.events() if e["kind"] == "DivergentTailSaved"]
    assert events and events[-1]["records"] == 3 and events[-1]["file"] == str(saved[0])
    assert "event=event.DivergentTailSaved" in a.log_text()


def test_lease_store_unreachable_at_start_keeps_both_nodes_off_primary(pair: LeasePair) -> None:
    if pair.etcd is not None:
        pair.etcd.stop()
    if pair.witness is not None:
        pair.witness.stop()
    pair.start()
    for name in pair.nodes:
        pair.wait_role(name, "waiting")
        wait_for(lambda n=name: pair.role(n).get("store_reachable") is False, f"{name} to report the store down")
        assert "unreachable" in pair.role(name)["reason"]
        with pytest.raises(ControlError):
            pair.nodes[name].call("journal.append", {"payloads": ["x"]})
        events = [e for e in pair.nodes[name].events() if e["kind"] == "LeaseStoreUnreachable"]
        assert events, f"{name}: no LeaseStoreUnreachable event"



def test_a_node_refused_by_etcd_stays_off_primary_and_says_why(tmp_path: Path) -> None:
    """The wrong etcd password: both daemons run, neither takes the lease, each says
    why (naming the user, never the password), and appends are refused."""
    pair = LeasePair(tmp_path, "etcd")
    try:
        assert pair.etcd is not None and pair.etcd.auth is not None
        password = tmp_path / "etcd-password"
        password.write_text("not-the-password\n")
        pair.start()
        for name, node in pair.nodes.items():
            info = pair.wait_role(name, "waiting")
            wait_for(lambda n=name: "refused" in pair.role(n).get("reason", ""), f"{name} to say why", 10,
                     detail=pair.diagnosis)
            info = pair.role(name)
            assert "authentication as etcd user 'lifeline' refused" in info["reason"], info
            assert "invalid user ID or password" in info["reason"], info
            with pytest.raises(ControlError):
                node.call("journal.append", {"payloads": ["x"]})
            for text in (json.dumps(info), node.log_text()):
                assert "not-the-password" not in text and pair.etcd.auth.password not in text
            assert node.alive()
    finally:
        pair.close()


def test_witness_restart_mid_lease_never_makes_two_primaries_nor_reuses_an_epoch(tmp_path: Path) -> None:
    pair = LeasePair(tmp_path, "witness")
    try:
        pair.start()
        primary = pair.wait_primary()
        pair.wait_role(pair.other(primary), "standby")
        wait_for(lambda: pair.role(pair.other(primary))["lease"]["sync_node"] == pair.other(primary),
                 "the standby to be marked synchronous", 10, detail=pair.diagnosis)
        epoch = pair.role(primary)["epoch"]
        assert pair.witness is not None
        for _ in range(3):
            pair.witness.stop()  # kill -9, mid-lease
            pair.witness.start()  # same address, same state file
            winner = pair.wait_primary(20)
            assert pair.role(winner)["epoch"] >= epoch
            epoch = pair.role(winner)["epoch"]
        state = json.loads(pair.witness.state.read_text())
        assert state["clusters"]["test"]["epoch"] == epoch
        changes = [dict(e, node=name) for name in pair.nodes for e in pair.nodes[name].events()
                   if e["kind"] == "RoleChanged"]
        primaries = [(c["node"], c["epoch"]) for c in changes if c["role"] == "primary"]
        assert len({e for _, e in primaries}) == len(primaries), f"an epoch was primary twice: {primaries}"
        for name in pair.nodes:
            mine = [e for n, e in primaries if n == name]
            assert mine == sorted(mine), f"{name}: epochs went back: {mine}"
        end = time.monotonic_ns()
        a, b = (primary_intervals(changes, name, [], end) for name in ("edge-a", "edge-b"))
        assert overlap_ns(a, b) == 0, f"overlapping primaries: {a} {b}"
    finally:
        pair.close()


@pytest.mark.parametrize("timings,stop_s", [(LEASE_TIMINGS, 3.0), ({}, 4.5)], ids=["ttl-1s", "defaults"])
def test_a_frozen_primarys_feed_deadline_ends_before_the_other_node_is_primary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timings: dict[str, str], stop_s: float) -> None:
    """SIGSTOP the primary for longer than the ttl: the other node promotes. The
    frozen node can publish nothing while stopped, so what its engine acts on is the
    last message it had published before: that message's valid_until must end before
    the other node's feed says primary. (Its ``fenced`` comes only after SIGCONT,
    seconds after the other node traded: an engine following the role alone overlaps.)
    ``defaults``: issue 14's case, the default lease timings and a 4.5 s SIGSTOP."""
    monkeypatch.setattr(sys.modules[__name__], "LEASE_TIMINGS", timings)
    window_ns = 800_000_000 if timings else 1_200_000_000  # ttl - safety_margin
    pair = LeasePair(tmp_path, "witness")
    feeds: list[Feed] = []
    frozen_pid: int | None = None
    try:
        pair.start()
        first = pair.wait_primary()
        second = pair.other(first)
        pair.wait_role(second, "standby")
        a, b = pair.nodes[first], pair.nodes[second]
        a.call("journal.append", {"payloads": ["before"]})
        wait_for(lambda: pair.role(second)["lease"]["sync_node"] == second, "the standby to be marked synchronous",
                 10, detail=pair.diagnosis)
        feed_a, feed_b = Feed(a), Feed(b)
        feeds = [feed_a, feed_b]
        for feed in feeds:
            feed.start()
        time.sleep(1.7)  # several renewals on the feed (every ttl / 3)
        status = pair.role(first)
        assert status["role"] == "primary" and 0 < status["valid_for"] <= window_ns / 1e9, status
        assert 0 < status["valid_until"] - status["monotonic_ns"] <= window_ns
        shown = cli("role", "--socket", str(a.socket))
        assert shown.returncode == 0 and "may trade for " in shown.stdout and "(until monotonic " in shown.stdout, \
            shown.stdout + shown.stderr
        shown = cli("role", "--json", "--socket", str(a.socket))
        assert isinstance(json.loads(shown.stdout)["valid_until"], int), shown.stdout
        frozen_pid = a.pid
        stopped_ns = time.monotonic_ns()
        os.kill(frozen_pid, signal.SIGSTOP)
        # The other node promotes while this one is stopped.
        wait_for(lambda: any(m["role"] == "primary" for m in feed_b.messages), f"{second} to promote", 10,
                 detail=pair.diagnosis)
        promoted = next(m for m in feed_b.messages if m["role"] == "primary")
        time.sleep(max(0.0, stop_s - (time.monotonic_ns() - stopped_ns) / 1e9))  # 3 ttls
        os.kill(frozen_pid, signal.SIGCONT)
        frozen_pid = None
        wait_for(lambda: any(m["role"] == "fenced" for m in feed_a.messages), f"{first} to publish fenced", 10,
                 detail=pair.diagnosis)
        fenced = next(m for m in feed_a.messages if m["role"] == "fenced")
        # What it had made before the freeze (some may have reached the feed only after).
        last_before = [m for m in feed_a.messages if m["monotonic_ns"] < stopped_ns]
        assert len([m for m in last_before if m.get("renewal")]) >= 2, last_before
        last = last_before[-1]
        assert last["role"] == "primary" and isinstance(last["valid_until"], int), last
        with pytest.raises(ControlError) as refused:
            a.call("journal.append", {"payloads": ["late"]})
        assert refused.value.code == "not_primary"

        # The defect of issue 14: by role alone, the frozen node was primary until it
        # could say fenced, long after the other node was.
        assert fenced["monotonic_ns"] > promoted["monotonic_ns"] + 500_000_000, (fenced, promoted)
        # By role AND valid_until, it never overlaps: not the last message before the
        # freeze, not any message it ever published at its epoch.
        margin_ms = (promoted["monotonic_ns"] - last["valid_until"]) / 1e6
        assert margin_ms > 0, f"{first} may trade until {last['valid_until']}, {second} primary at {promoted}"
        deadlines = [m["valid_until"] for m in feed_a.messages if m.get("valid_until") is not None]
        assert max(deadlines) == last["valid_until"], "a deadline published after the freeze"
        assert all(m["valid_until"] is None for m in feed_a.messages if m["monotonic_ns"] >= stopped_ns)
        assert promoted["valid_until"] is not None and promoted["valid_until"] > promoted["monotonic_ns"]
        print(f"{timings or 'defaults'}: the frozen primary's last valid_until ends {margin_ms:.0f} ms before "
              f"the promotion ({(promoted['monotonic_ns'] - stopped_ns) / 1e6:.0f} ms after SIGSTOP); "
              f"its fenced came {(fenced['monotonic_ns'] - promoted['monotonic_ns']) / 1e6:.0f} ms after it")
    finally:
        if frozen_pid is not None:
            os.kill(frozen_pid, signal.SIGCONT)
        for feed in feeds:
            feed.stop()
        pair.close()
