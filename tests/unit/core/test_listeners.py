"""The listeners' bookkeeping, sans-IO: connection budgets, flood logs, bounded tables."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.listeners import (
    FULL,
    AcceptPacer,
    SOURCE_FULL,
    SOURCE_UNAUTHENTICATED_FULL,
    UNAUTHENTICATED_FULL,
    BoundedTable,
    ConnectionBudget,
    FloodLog,
    Limits,
    Ticket,
    pacing_key,
)


def test_each_cap_refuses_the_newest_with_its_reason() -> None:
    budget = ConnectionBudget(Limits(max_connections=6, max_per_source=3, max_unauthenticated=3,
                                     max_unauthenticated_per_source=2))

    def ok(source: str) -> Ticket:
        got = budget.admit(source)
        assert isinstance(got, Ticket), got
        return got

    a1, a2 = ok("a"), ok("a")
    assert budget.admit("a") == SOURCE_UNAUTHENTICATED_FULL
    budget.authenticate(a1)
    ok("a")
    budget.authenticate(a2)
    assert budget.admit("a") == SOURCE_FULL  # 3 from "a", even though 2 proved the key
    b1 = ok("b")
    ok("c")
    assert budget.admit("d") == UNAUTHENTICATED_FULL  # a3, b1, c1
    budget.authenticate(b1)
    budget.authenticate(ok("d"))
    assert budget.admit("e") == FULL
    budget.release(a1)
    ok("e")
    assert budget.refused == {FULL: 1, SOURCE_FULL: 1, UNAUTHENTICATED_FULL: 1, SOURCE_UNAUTHENTICATED_FULL: 1}
    assert budget.snapshot()["connections"] == 6


def test_release_is_idempotent_and_forgets_the_source() -> None:
    budget = ConnectionBudget(Limits())
    ticket = budget.admit("198.51.100.7")
    assert isinstance(ticket, Ticket)
    budget.release(ticket)
    budget.release(ticket)
    budget.authenticate(ticket)  # after release: nothing
    assert (budget.total, budget.unauthenticated, budget.sources()) == (0, 0, 0)
    assert budget.snapshot()["admitted"] == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit", "auth", "release"]), st.integers(0, 5), st.integers(0, 30)),
                max_size=200))
def test_counts_never_exceed_the_caps_and_always_add_up(ops: list[tuple[str, int, int]]) -> None:
    limits = Limits(max_connections=12, max_per_source=5, max_unauthenticated=7, max_unauthenticated_per_source=3)
    budget = ConnectionBudget(limits)
    live: list[Ticket] = []
    for op, source, pick in ops:
        if op == "admit":
            got = budget.admit(f"10.0.0.{source}")
            if isinstance(got, Ticket):
                live.append(got)
        elif live:
            ticket = live[pick % len(live)]
            if op == "auth":
                budget.authenticate(ticket)
            else:
                budget.release(ticket)
                live.remove(ticket)
        assert budget.total == len(live) <= limits.max_connections
        unauthenticated = [t for t in live if not t.authenticated]
        assert budget.unauthenticated == len(unauthenticated) <= limits.max_unauthenticated
        for s in range(6):
            mine = [t for t in live if t.source == f"10.0.0.{s}"]
            assert len(mine) <= limits.max_per_source
            assert len([t for t in mine if not t.authenticated]) <= limits.max_unauthenticated_per_source
        assert budget.sources() == len({t.source for t in live})


def test_limits_problems_name_the_field() -> None:
    assert Limits().problems() == []
    assert [name for name, _ in Limits(max_connections=0, handshake_timeout=0).problems()] == [
        "max_connections", "handshake_timeout"]
    assert [name for name, _ in Limits(accept_rate_per_source=0, accept_burst_per_source=0).problems()] == [
        "accept_rate_per_source", "accept_burst_per_source"]
    assert [name for name, _ in Limits(accept_rate_per_source=float("nan")).problems()] == ["accept_rate_per_source"]


# --------------------------------------------------------------------------- accept pacing


def test_pacer_gives_a_burst_then_the_rate_and_refuses_the_rest() -> None:
    pacer = AcceptPacer(rate=2.0, burst=4)
    assert [pacer.admit("192.0.2.9", 0.0) for _ in range(6)] == [True] * 4 + [False] * 2
    assert pacer.refused == 2
    assert not pacer.admit("192.0.2.9", 0.4)  # 0.8 of a token: not yet
    assert pacer.admit("192.0.2.9", 0.5)  # one token after 0.5 s at 2/s
    assert not pacer.admit("192.0.2.9", 0.5)
    # Another address has its own bucket.
    assert pacer.admit("192.0.2.10", 0.5)
    # A long pause refills the bucket to the burst, no more.
    assert [pacer.admit("192.0.2.9", 100.0) for _ in range(5)] == [True] * 4 + [False]


def test_pacer_refund_a_peer_that_proves_the_key_is_never_paced() -> None:
    pacer = AcceptPacer(rate=1.0, burst=2)
    for i in range(1000):  # reconnects 1000 times in one second, proving the key each time
        now = i / 1000
        assert pacer.admit("192.0.2.1", now)
        pacer.refund("192.0.2.1", now)
    assert pacer.refused == 0
    assert pacer.sources() == 0  # a full bucket is not stored
    # Its failures still count: two failed handshakes, then paced.
    assert pacer.admit("192.0.2.1", 1.0) and pacer.admit("192.0.2.1", 1.0)
    assert not pacer.admit("192.0.2.1", 1.0)
    # A refund never lifts a bucket above the burst.
    pacer.refund("192.0.2.1", 50.0)
    assert pacer.tokens("192.0.2.1", 50.0) == 2.0


def test_pacer_table_is_bounded_and_keeps_the_knocking_source() -> None:
    pacer = AcceptPacer(rate=1.0, burst=1, max_sources=16)
    assert pacer.admit("198.51.100.1", 0.0)
    for i in range(2, 200):
        assert pacer.admit(f"198.51.100.{i % 250}", 0.0)
        # The flooder keeps knocking: refused every time, its entry stays the freshest.
        assert not pacer.admit("198.51.100.1", 0.0)
        assert pacer.sources() <= 16
    assert pacer.refused == 198


def test_pacing_key_groups_an_ipv6_host_by_its_64() -> None:
    assert pacing_key("192.0.2.1") == "192.0.2.1"
    assert pacing_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert pacing_key("2001:db8:1:2:aaaa::1") == pacing_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert pacing_key("2001:db8:1:3::1") != pacing_key("2001:db8:1:2::1")
    assert pacing_key("fe80::1%eth0") == "fe80::/64"
    assert pacing_key("?") == "?"
    pacer = AcceptPacer(rate=1.0, burst=1)
    assert pacer.admit("2001:db8::1", 0.0)
    assert not pacer.admit("2001:db8::2", 0.0)  # the same /64: the same bucket


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.1, 50.0), burst=st.integers(1, 20),
       events=st.lists(st.tuples(st.floats(0.0, 5.0), st.booleans()), max_size=300))
def test_pacer_never_admits_more_failures_than_burst_plus_rate(rate: float, burst: int,
                                                               events: list[tuple[float, bool]]) -> None:
    """Over any window from the start, admitted-and-not-refunded connections never
    exceed burst + rate * elapsed; refunded ones are free."""
    pacer = AcceptPacer(rate, burst)
    now = 0.0
    failed = 0
    for gap, proves in events:
        now += gap
        if pacer.admit("203.0.113.5", now):
            if proves:
                pacer.refund("203.0.113.5", now)
            else:
                failed += 1
        assert failed <= burst + rate * now + 1e-9
        assert 0.0 <= pacer.tokens("203.0.113.5", now) <= burst


def test_flood_log_logs_the_first_then_one_line_per_interval_with_the_count() -> None:
    flood = FloodLog(interval=10.0)
    assert flood.note("emfile", 0.0) == 1
    assert [flood.note("emfile", t) for t in (1.0, 2.0, 3.0)] == [None, None, None]
    assert flood.note("refused", 3.5) == 1  # another kind has its own interval
    assert flood.flush(9.9) == []
    assert flood.flush(10.0) == [("emfile", 3)]
    assert flood.flush(10.5) == []
    # A flood that goes on: one line per interval.
    for t in range(11, 20):
        assert flood.note("emfile", float(t)) is None
    assert flood.flush(20.0) == [("emfile", 9)]
    # Quiet for a while, then again: logged at once, with what was left unflushed.
    assert flood.note("emfile", 21.0) is None
    assert flood.note("emfile", 31.0) == 2


def test_flood_log_keys_are_bounded() -> None:
    flood = FloodLog(interval=10.0, max_keys=8)
    for i in range(1000):
        assert flood.note(("source", i), 0.0) == 1
    assert len(flood._windows) == 8


def test_bounded_table_forgets_the_oldest_write() -> None:
    table: BoundedTable[str, int] = BoundedTable(3)
    for i, key in enumerate("abcd"):
        table[key] = i
    assert list(table) == ["b", "c", "d"] and len(table) == 3 and "a" not in table
    table["b"] = 9  # rewritten: now the newest
    table["e"] = 5
    assert list(table) == ["d", "b", "e"]
    assert table.get("zz", -1) == -1
    with pytest.raises(ValueError):
        BoundedTable(0)
