"""The guard's blocks on new orders (daemon/guard/blocks.py): kill, pause, throttle, and the
journal's guard records that carry them."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from daemon.guard.blocks import GuardRecord, GuardRecordError, Scope, TradingBlocks, parse_guard_record
from daemon.venues.orders import parse_journal_record

venues = st.sampled_from(["kraken", "coinbase", "binance"])
symbols = st.sampled_from(["BTC/USD", "ETH/USD", "SOL/USD"])
scopes = st.builds(Scope, st.none() | venues, st.none() | symbols)


def rec(action: str, scope: Scope = Scope(), time: float = 0.0, **kw: float) -> GuardRecord:
    return GuardRecord(action, scope, "drill", "uid=0", time, **kw)  # type: ignore[arg-type]


@given(scopes, venues, symbols)
def test_a_kill_refuses_exactly_its_scope_and_unkill_ends_it(scope: Scope, venue: str, symbol: str) -> None:
    blocks = TradingBlocks()
    blocks.apply(rec("kill", scope))
    refused = blocks.refusal(venue, symbol, 1.0)
    assert (refused is not None) == scope.covers(venue, symbol)
    if refused is not None:
        assert refused.kind == "kill" and "lifeline unkill" in refused.message()
    blocks.apply(rec("unkill", Scope()))
    assert blocks.refusal(venue, symbol, 2.0) is None


def test_unkill_on_a_narrower_scope_leaves_the_wider_kill() -> None:
    blocks = TradingBlocks()
    blocks.apply(rec("kill", Scope()))
    assert blocks.apply(rec("unkill", Scope("kraken"))) == []
    assert blocks.refusal("kraken", "BTC/USD", 1) is not None


def test_a_pause_ends_by_itself_at_until_and_a_kill_does_not() -> None:
    blocks = TradingBlocks()
    blocks.apply(rec("pause", Scope("kraken"), 0.0, until=300.0))
    blocks.apply(rec("kill", Scope("coinbase"), 0.0))
    assert blocks.refusal("kraken", "BTC/USD", 299.9) is not None
    assert blocks.refusal("kraken", "BTC/USD", 300.0) is None
    assert [b.kind for b in blocks.expire(300.0)] == ["pause"]
    assert blocks.refusal("coinbase", "BTC/USD", 1e9) is not None


def test_the_throttle_lets_rate_per_second_through() -> None:
    blocks = TradingBlocks()
    blocks.apply(rec("throttle", Scope(), 0.0, rate=10.0, burst=2.0, until=100.0))
    passed = sum(blocks.refusal("kraken", "BTC/USD", i / 1000) is None for i in range(10_000))  # 10 s, 1 kHz
    assert 100 <= passed <= 102  # the burst of 2 plus 10/s
    assert blocks.refusal("kraken", "BTC/USD", 100.0) is None and blocks.expire(100.0)


@given(st.lists(st.tuples(st.sampled_from(["kill", "unkill", "pause", "resume", "unthrottle"]), scopes), max_size=8))
def test_guard_records_round_trip_through_the_journal_payload(changes: list[tuple[str, Scope]]) -> None:
    for action, scope in changes:
        record = rec(action, scope, 12.5)
        payload = record.to_payload()
        assert parse_guard_record(payload) == record
        assert parse_journal_record(payload) is None  # the order-record readers skip it


def test_bad_guard_records_name_the_field() -> None:
    with pytest.raises(GuardRecordError) as err:
        parse_guard_record(b'{"record":"guard","v":1,"action":"explode","reason":"x","by":"y","time":1}')
    assert err.value.field == "action"
    with pytest.raises(GuardRecordError) as err:
        parse_guard_record(b'{"record":"guard","v":1,"action":"kill","reason":"","by":"y","time":1}')
    assert err.value.field == "reason"
    with pytest.raises(GuardRecordError) as err:
        Scope("Kraken Pro")
    assert err.value.field == "venue"
    assert parse_guard_record(b'{"record":"order"}') is None and parse_guard_record(b"\xff guard") is None
