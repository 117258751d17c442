"""The listeners' bookkeeping, sans-IO: connection budgets, flood logs, bounded tables."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.listeners import (
    FULL,
    SOURCE_FULL,
    SOURCE_UNAUTHENTICATED_FULL,
    UNAUTHENTICATED_FULL,
    BoundedTable,
    ConnectionBudget,
    FloodLog,
    Limits,
    Ticket,
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
