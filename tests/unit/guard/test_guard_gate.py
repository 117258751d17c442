"""The risk book (daemon/guard/book.py) and the gate (daemon/guard/gate.py), sans-IO: each
limit refuses exactly above its boundary; the fold's position is the sum of fills and its
open orders are the venues' OpenOrders fold, over random order streams."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.guard.blocks import GuardRecord, Scope
from daemon.guard.book import Book, Mark, classify
from daemon.guard.gate import Gate, RiskRefused
from daemon.guard.limits import Limits, LimitSet
from daemon.venues.orders import OpenOrders, parse_journal_record

NOW = 1_800_000_000.0


def order(coid: str, state: str = "new", *, venue: str = "kraken", symbol: str = "BTC/USDT", side: str = "buy",
          amount: str = "1", price: str | None = "100", filled: str | None = None, average: str | None = None) -> bytes:
    data: dict[str, Any] = {"record": "order", "v": 1, "client_order_id": coid, "venue": venue, "symbol": symbol,
                            "side": side, "amount": amount, "price": price, "state": state}
    if filled is not None:
        data["filled"] = filled
    if average is not None:
        data["average"] = average
    return json.dumps(data).encode()


def mark(price: str, venue: str = "kraken", symbol: str = "BTC/USDT") -> bytes:
    return Mark(venue, symbol, Decimal(price)).to_payload()


def limits(**kw: Any) -> Limits:
    top = {k: kw.pop(k) for k in ("max_message_rate", "max_daily_loss", "no_reference", "duplicate_client_order_id")
           if k in kw}
    entry = LimitSet(**{k: (Decimal(v) if isinstance(v, str) else v) for k, v in kw.items()})
    if "max_daily_loss" in top:
        top["max_daily_loss"] = Decimal(top["max_daily_loss"])
    return Limits(version=1, expires=datetime(2099, 1, 1, tzinfo=timezone.utc), entries=(entry,), **top)


class Rig:
    def __init__(self, lim: Limits | None) -> None:
        self.book = Book(parse_order=parse_journal_record)
        self.gate = Gate(self.book, lim)
        self.seq = 0

    def append(self, *payloads: bytes, now: float = NOW) -> None:
        parsed = [classify(p, parse_journal_record) for p in payloads]
        ticket = self.gate.check(parsed, now)
        for p in parsed:
            self.seq += 1
            self.book.apply_parsed(self.seq, p, now)
        self.gate.written(ticket, self.seq)

    def refused(self, *payloads: bytes, now: float = NOW) -> RiskRefused:
        before = self.seq
        with pytest.raises(RiskRefused) as info:
            self.append(*payloads, now=now)
        assert self.seq == before
        return info.value


def test_max_order_amount_boundary() -> None:
    rig = Rig(limits(max_order_amount="2"))
    rig.append(order("a", amount="2"))
    exc = rig.refused(order("b", amount="2.00000001"))
    assert (exc.limit, exc.field) == ("max_order_amount", "amount") and "2.00000001" in exc.figure
    assert "limit max_order_amount" in str(exc) and "field amount" in str(exc)


def test_max_order_notional_boundary_and_market_order_reference() -> None:
    rig = Rig(limits(max_order_notional="1000"))
    rig.append(order("a", amount="10", price="100"))
    assert rig.refused(order("b", amount="10", price="100.01")).limit == "max_order_notional"
    exc = rig.refused(order("c", amount="1", price=None))
    assert exc.limit == "max_order_notional" and "no reference" in exc.figure
    rig.append(mark("1000"))
    rig.append(order("d", amount="1", price=None))
    assert rig.refused(order("e", amount="1.001", price=None)).field == "amount"


def test_price_collar_boundary_and_no_reference_policy() -> None:
    rig = Rig(limits(price_collar="0.05"))
    assert rig.refused(order("a", price="100")).limit == "price_collar"  # no reference: refuse
    rig.append(mark("100"), order("b", price="105"))  # the mark in the same batch counts
    rig.append(order("c", price="95"))
    exc = rig.refused(order("d", price="105.01"))
    assert (exc.limit, exc.field) == ("price_collar", "price")
    passing = Rig(limits(price_collar="0.05", no_reference="pass"))
    passing.append(order("a", price="1"))


def test_max_open_orders_boundary_counts_the_batch_and_cancels_free_a_slot() -> None:
    rig = Rig(limits(max_open_orders=2))
    rig.append(order("a"))
    exc = rig.refused(order("b"), order("c"))
    assert exc.index == 1 and (exc.limit, exc.field) == ("max_open_orders", "symbol")
    rig.append(order("b"))
    rig.append(order("a", "cancelled"))
    rig.append(order("c"))
    rig.refused(order("d"))
    rig.append(order("x", venue="binance"))  # another (venue, symbol)


def test_max_position_boundary_with_fills_and_open_orders() -> None:
    rig = Rig(limits(max_position="3"))
    rig.append(order("a", amount="2"), order("a", "filled", amount="2", filled="2"))
    rig.append(order("b", amount="1"))  # 2 + 1 open = 3
    exc = rig.refused(order("c", amount="0.1"))
    assert (exc.limit, exc.field) == ("max_position", "amount")
    assert rig.refused(order("s", side="sell", amount="5.01")).field == "amount"  # 2 - 5.01 = -3.01
    rig.append(order("s", side="sell", amount="5"))  # -(2 - 5) = 3: at the limit


def test_max_position_sell_side() -> None:
    rig = Rig(limits(max_position="3"))
    rig.append(order("a", amount="2"), order("a", "filled", amount="2", filled="2"))
    rig.append(order("s", side="sell", amount="5"))  # 2 - 5 = -3
    assert rig.refused(order("t", side="sell", amount="0.01")).limit == "max_position"


def test_duplicate_client_order_id_in_book_in_batch_and_in_flight() -> None:
    rig = Rig(limits())
    rig.append(order("a"))
    exc = rig.refused(order("a"))
    assert (exc.limit, exc.field) == ("duplicate_client_order_id", "client_order_id")
    assert rig.refused(order("b"), order("b")).index == 1
    ticket = rig.gate.check([classify(order("c"), parse_journal_record)], NOW)  # in flight
    with pytest.raises(RiskRefused):
        rig.gate.check([classify(order("c"), parse_journal_record)], NOW)
    rig.gate.abandon(ticket)
    rig.append(order("c"))


def test_concurrent_batches_reserve_open_orders_until_folded() -> None:
    rig = Rig(limits(max_open_orders=1))
    t1 = rig.gate.check([classify(order("a"), parse_journal_record)], NOW)
    with pytest.raises(RiskRefused):
        rig.gate.check([classify(order("b"), parse_journal_record)], NOW)
    rig.gate.written(t1, 1)  # written, not yet folded: still held
    with pytest.raises(RiskRefused):
        rig.gate.check([classify(order("b"), parse_journal_record)], NOW)
    rig.book.apply(1, order("a"), NOW)
    rig.gate.release_folded()
    assert not rig.gate.reserved
    rig.seq = 1
    rig.refused(order("b"))  # now the book holds it


def test_message_rate_boundary() -> None:
    rig = Rig(limits(max_message_rate=3))
    rig.append(order("a"), order("b"), order("c"), now=NOW)
    assert rig.refused(order("d"), now=NOW + 0.5).limit == "max_message_rate"
    rig.append(order("d"), now=NOW + 1.0)


def test_daily_loss_boundary_realised_plus_marked() -> None:
    rig = Rig(limits(max_daily_loss="100"))
    rig.append(order("a", amount="1", price="1000"), order("a", "filled", amount="1", price="1000", filled="1"))
    rig.append(order("s", side="sell", amount="0.5", price="900"),
               order("s", "filled", side="sell", amount="0.5", price="900", filled="0.5"))  # realised -50
    rig.append(mark("901"))  # unrealised 0.5 x -99 = -49.5: day P&L -99.5
    rig.append(order("b", amount="0.1", price="901"))
    rig.append(mark("900"))  # -50 - 50 = -100: reached
    exc = rig.refused(order("c", amount="0.1", price="900"))
    assert (exc.limit, exc.field) == ("max_daily_loss", "state") and "-100" in exc.figure
    assert rig.book.day_pnl(NOW + 86_400) == Decimal("-50")  # next day: only unrealised


def test_blocks_refuse_and_non_new_records_always_pass() -> None:
    rig = Rig(limits(max_order_amount="1"))
    rig.append(order("a"))
    kill = GuardRecord("kill", Scope("kraken"), "test", "uid=0", NOW)
    rig.append(kill.to_payload())
    exc = rig.refused(order("b"))
    assert exc.limit == "kill" and exc.field == "venue"
    rig.append(order("a", "filled", filled="1"), order("z", "open", amount="5"))  # non-new pass every limit
    rig.append(order("c", venue="binance"))


def test_fill_prices_from_average() -> None:
    book = Book(parse_order=parse_journal_record)
    book.apply(1, order("m", "partially_filled", price=None, amount="2", filled="1", average="100"), NOW)
    book.apply(2, order("m", "filled", price=None, amount="2", filled="2", average="110"), NOW)
    inst = book.instruments[("kraken", "BTC/USDT")]
    assert inst.position == 2 and inst.cost == Decimal("110")  # fills at 100 then 120


# ---------------------------------------------------------------- property tests

COIDS = [f"o{i}" for i in range(6)]
states = st.sampled_from(["new", "open", "partially_filled", "filled", "cancelled", "rejected", "expired"])


@st.composite
def streams(draw: Any) -> list[bytes]:
    out: list[bytes] = []
    filled: dict[tuple[str, str], Decimal] = {}
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.integers(0, 9))
        venue = draw(st.sampled_from(["kraken", "binance"]))
        symbol = draw(st.sampled_from(["BTC/USDT", "ETH/USDT"]))
        if kind == 0:
            out.append(mark(str(draw(st.integers(50, 150))), venue, symbol))
            continue
        coid = draw(st.sampled_from(COIDS))
        side = "buy" if coid in ("o0", "o1", "o2") else "sell"
        amount = Decimal(5)
        step = Decimal(draw(st.integers(0, 2)))
        key = (venue, coid)
        f = min(amount, filled.get(key, Decimal(0)) + step)
        filled[key] = f
        price = draw(st.sampled_from([None, "100", "101.5"]))
        out.append(order(coid, draw(states), venue=venue, symbol="BTC/USDT" if coid in ("o0", "o3") else symbol,
                         side=side, amount="5", price=price, filled=str(f),
                         average=draw(st.sampled_from([None, "100"]))))
    return out


@settings(max_examples=300, deadline=None)
@given(streams())
def test_position_is_sum_of_fills_and_open_orders_match_the_venues_fold(stream: list[bytes]) -> None:
    book = Book(parse_order=parse_journal_record)
    index = OpenOrders()
    fills: dict[tuple[str, str], Decimal] = {}
    last_filled: dict[tuple[str, str], Decimal] = {}
    for seq, payload in enumerate(stream, 1):
        book.apply(seq, payload, NOW)
        record = index.apply(seq, payload)
        if record is not None:
            key = record.key
            f = record.filled or Decimal(0)
            delta = f - last_filled.get(key, Decimal(0))
            if delta > 0:
                sign = 1 if record.side == "buy" else -1
                ik = (record.venue, record.symbol)
                fills[ik] = fills.get(ik, Decimal(0)) + sign * delta
                last_filled[key] = f
    for key, inst in book.instruments.items():
        assert inst.position == fills.get(key, Decimal(0)) == inst.bought - inst.sold
    open_in_index = {(v, r.client_order_id) for v in index.venues() for r in index.open_at(v)}
    assert book.open_keys() == open_in_index
    for (venue, symbol), inst in book.instruments.items():
        assert inst.open_orders == sum(1 for v in index.venues() for r in index.open_at(v)
                                       if v == venue and r.symbol == symbol)


def test_the_venue_probes_ticker_is_a_reference_when_newer_than_the_mark() -> None:
    rig = Rig(limits(price_collar="0.05"))
    seen: dict[tuple[str, str], tuple[float, float]] = {}
    rig.gate.tickers = lambda venue, symbol: seen.get((venue, symbol))
    assert rig.refused(order("a", price="200")).limit == "price_collar"
    seen[("kraken", "BTC/USDT")] = (200.0, NOW)
    rig.append(order("a", price="205"))  # no mark: the ticker
    rig.book.apply(rig.seq + 1, mark("100"), NOW + 1)  # a newer mark wins
    rig.seq += 1
    assert rig.refused(order("b", price="205")).limit == "price_collar"
    seen[("kraken", "BTC/USDT")] = (200.0, NOW + 2)  # a newer ticker wins
    rig.append(order("b", price="205"))


decimals = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=2)


@settings(max_examples=200, deadline=None)
@given(decimals, decimals, decimals, decimals, st.integers(0, 6), st.integers(1, 6))
def test_each_limit_refuses_exactly_above_its_figure(amount: Decimal, limit: Decimal, price: Decimal,
                                                     mark_price: Decimal, open_now: int, max_open: int) -> None:
    """Random figures: the amount, notional and collar limits refuse iff the figure is above
    the limit; max_open_orders iff one more would be above it."""
    def decide(**kw: Any) -> str | None:
        rig = Rig(limits(**kw))
        rig.append(mark(str(mark_price)))
        for i in range(open_now):
            rig.append(order(f"open-{i}", "open", amount="0.01", price=str(mark_price)))
        try:
            rig.append(order("x", amount=str(amount), price=str(price)))
        except RiskRefused as exc:
            return exc.limit
        return None

    assert (decide(max_order_amount=str(limit)) == "max_order_amount") == (amount > limit)
    assert (decide(max_order_notional=str(limit)) == "max_order_notional") == (amount * price > limit)
    collar = limit / 1000
    assert (decide(price_collar=str(collar)) == "price_collar") == (abs(price / mark_price - 1) > collar)
    assert (decide(max_open_orders=max_open) == "max_open_orders") == (open_now + 1 > max_open)
    assert (decide(max_position=str(limit)) == "max_position") == (Decimal("0.01") * open_now + amount > limit)


def test_duplicate_ids_are_those_of_the_records_utc_day() -> None:
    book = Book(parse_order=parse_journal_record)
    yesterday = json.loads(order("old"))
    yesterday["time"] = NOW - 86_400
    book.apply(1, json.dumps(yesterday).encode(), NOW)  # folded today (a restart), written yesterday
    book.apply(2, order("new-1"), NOW)
    assert not book.is_duplicate("kraken", "old", NOW) and book.is_duplicate("kraken", "new-1", NOW)
    assert not book.is_duplicate("kraken", "new-1", NOW + 86_400)  # forgotten at midnight
