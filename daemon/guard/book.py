"""The risk book: positions, P&L, open orders and the client order ids seen, folded from the
journal (sans-IO: records and ``now`` in, figures out).

Every node folds the same records in the same (journal) order — the primary what it
writes, the standby what it receives — so after a failover the new primary has the same
figures without asking anyone. What is folded:

- **order records** (:mod:`daemon.venues.orders`, parsed by the venues' parser, which
  :mod:`daemon.app` injects: this room does not import that one). An order is
  ``(venue, client_order_id)``; each record is a complete snapshot. A *fill* is the
  increase of ``filled`` between an order's records (the first record counts from 0). Its
  price: from the optional ``average`` (the average fill price so far, cumulative:
  ``(average' x filled' - average x filled) / (filled' - filled)``), else the record's
  ``price`` (a limit order fills at its price or better: the limit is the conservative
  figure), else the last mark; a fill with none of them moves the position but not the
  P&L (counted in ``unpriced_fills``). A ``filled`` that goes down is ignored (counted in
  ``inconsistent``). ``open_orders`` snapshots replace the open orders of their venue, as
  in :class:`daemon.venues.orders.OpenOrders`.
- **mark records** (defined here): the engine's own market data, the reference of the
  price collar and of the unrealised P&L::

      {"record":"mark","v":1,"venue":"kraken","symbol":"BTC/USDT","price":"43000.1","time":1705260203.5}

  ``price`` a positive decimal (string, or a finite number); ``time`` optional Unix
  seconds (when the engine saw it; the collar refuses nothing on its age). Any other key
  is refused; an invalid mark record is refused on ``journal.append`` like an invalid
  order record.
- **guard records** (:mod:`daemon.guard.blocks`): the kill / pause / throttle blocks.

P&L is in the quote currency, by average cost per (venue, symbol): a fill that reduces a
position realises ``closed x (fill price - average cost)`` (x -1 short); fees are not
known and not counted. The *day's* P&L (the daily loss limit) is what was realised since
00:00 UTC (by the fill record's ``time``, else the time it was folded) plus the open
positions' unrealised P&L against their average cost at the last mark.

Duplicate client order ids: the ids of the ``new`` records of the current UTC day (by the
record's ``time``, else the time it was folded) are remembered; a day's ids are forgotten
at the next UTC midnight.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Protocol, Sequence

from daemon.guard.blocks import GuardRecord, GuardRecordError, TradingBlocks, parse_guard_record
from daemon.guard.errors import GuardError

__all__ = ["Book", "Instrument", "Mark", "MarkError", "OrderFacts", "RecordParser", "SnapshotFacts", "classify",
           "parse_mark", "OPEN_STATES"]

OPEN_STATES = frozenset({"new", "open", "partially_filled"})
ZERO = Decimal(0)
DAY = 86_400
#: Closed orders whose cumulative ``filled`` is remembered (a late record for one must not
#: count its fills twice); the oldest are forgotten first.
MAX_CLOSED = 200_000


class OrderFacts(Protocol):
    """What the book reads of an order record (:class:`daemon.venues.orders.OrderRecord` is one)."""

    client_order_id: str
    venue: str
    symbol: str
    side: str
    amount: Decimal
    price: Decimal | None
    state: str
    filled: Decimal | None
    time: float | None


class SnapshotFacts(Protocol):
    """An ``open_orders`` snapshot (:class:`daemon.venues.orders.OpenOrdersSnapshot` is one)."""

    venue: str
    orders: Sequence[Any]


class RecordParser(Protocol):
    """The venues' order-record parser: an order record, an open_orders snapshot, or None
    (another payload); raises ValueError (with the field) for an invalid one."""

    def __call__(self, payload: bytes, /) -> Any: ...


class MarkError(GuardError, ValueError):
    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field


@dataclass(frozen=True)
class Mark:
    venue: str
    symbol: str
    price: Decimal
    time: float | None = None

    def to_payload(self) -> bytes:
        data: dict[str, Any] = {"record": "mark", "v": 1, "venue": self.venue, "symbol": self.symbol,
                                "price": str(self.price)}
        if self.time is not None:
            data["time"] = self.time
        return json.dumps(data, separators=(",", ":")).encode()


_MARK_KEYS = frozenset({"record", "v", "venue", "symbol", "price", "time"})


def parse_mark(payload: bytes) -> Mark | None:
    """The mark record in ``payload``; None for any other payload; :class:`MarkError` for a
    payload that claims ``"record": "mark"`` but breaks a rule."""
    raw = bytes(payload)
    if b'"mark"' not in raw or b'"record"' not in raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record") != "mark":
        return None
    return mark_from_dict(data)


def mark_from_dict(data: dict[str, Any]) -> Mark:
    """Validate a decoded ``"record": "mark"`` object."""
    unknown = sorted(set(data) - _MARK_KEYS)
    if unknown:
        raise MarkError(unknown[0], "unknown key", f"the keys are {', '.join(sorted(_MARK_KEYS))}")
    if data.get("v") != 1 or isinstance(data.get("v"), bool):
        raise MarkError("v", f"expected 1, found {data.get('v')!r}", "write v: 1")
    venue, symbol = data.get("venue"), data.get("symbol")
    if not isinstance(venue, str) or not venue or len(venue) > 64:
        raise MarkError("venue", f"expected a venue name, found {venue!r}", "write the [venues.NAME] name")
    if not isinstance(symbol, str) or not symbol or len(symbol) > 100 or any(c.isspace() for c in symbol):
        raise MarkError("symbol", f"expected a symbol such as \"BTC/USDT\", found {symbol!r}",
                        "write the ccxt unified symbol")
    price = data.get("price")
    try:
        if isinstance(price, bool) or not isinstance(price, (str, int, float)):
            raise InvalidOperation
        number = Decimal(repr(price)) if isinstance(price, float) else Decimal(price)
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or number <= 0:
        raise MarkError("price", f"expected a positive decimal string such as \"43000.1\", found {price!r}",
                        "write the last trade or mark price")
    time = data.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time)
                             or time < 0):
        raise MarkError("time", f"expected Unix seconds, found {time!r}", "write a number or leave it out")
    return Mark(venue, symbol, number, float(time) if time is not None else None)


class _Fact:
    """An order record as the fold reads it (:func:`fold_parse`)."""

    __slots__ = ("client_order_id", "venue", "symbol", "side", "amount", "price", "state", "filled", "time",
                 "average")

    def __init__(self, data: dict[str, Any]) -> None:
        self.client_order_id = data["client_order_id"]
        self.venue = data["venue"]
        self.symbol = data["symbol"]
        self.side = data["side"]
        self.state = data["state"]
        self.amount = _dec(data["amount"])
        price = data["price"]
        self.price = None if price is None else _dec(price)
        filled = data.get("filled")
        self.filled = None if filled is None else _dec(filled)
        average = data.get("average")
        self.average = None if average is None else _dec(average)
        time = data.get("time")
        self.time = None if time is None else float(time)


def _dec(value: Any) -> Decimal:
    if isinstance(value, str):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise ValueError(value)


_FACT_KEYS = frozenset({"record", "v", "client_order_id", "venue", "symbol", "side", "amount", "price", "state",
                        "venue_order_id", "type", "filled", "epoch", "time", "adopted", "average"})
_STATES = frozenset({"new", "open", "partially_filled", "filled", "cancelled", "rejected", "expired"})


def fold_parse(payload: bytes, parse_order: RecordParser | None) -> Any:
    """:func:`classify` for the fold of records already in the journal (the start-up fold, the
    standby's): they passed the append path's full check, so an order record's structure is
    re-checked (keys, types, state, side, decimals) without every rule of the format, which
    is ~3x faster; anything unusual goes through the full parser (and its errors)."""
    raw = bytes(payload)
    if b'"record"' not in raw:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))  # str: json skips its encoding detection
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("record")
    if kind == "order":
        try:
            if (data.keys() <= _FACT_KEYS and data.get("v") == 1 and data.get("state") in _STATES
                    and data.get("side") in ("buy", "sell") and isinstance(data.get("venue"), str)
                    and isinstance(data.get("client_order_id"), str) and isinstance(data.get("symbol"), str)):
                fact = _Fact(data)
                if fact.amount > 0 and fact.amount.is_finite() and (fact.filled is None or 0 <= fact.filled <= fact.amount):
                    return fact
        except (ValueError, ArithmeticError, KeyError, TypeError):
            pass
        return parse_order(raw) if parse_order is not None else None
    if kind == "mark":
        return mark_from_dict(data)
    if kind == "guard" or kind == "open_orders":
        return classify(raw, parse_order)
    return None


def classify(payload: bytes, parse_order: RecordParser | None) -> Any:
    """The parsed record in ``payload``: order record / snapshot (the venues' parser),
    :class:`Mark`, :class:`GuardRecord`, or None. Raises ValueError for an invalid one."""
    raw = bytes(payload)
    if b'"record"' not in raw:
        return None
    if parse_order is not None:
        parsed = parse_order(raw)
        if parsed is not None:
            return parsed
    if b'"mark"' in raw:
        mark = parse_mark(raw)
        if mark is not None:
            return mark
    if b'"guard"' in raw:
        return parse_guard_record(raw)
    return None


@dataclass
class Instrument:
    """The figures of one (venue, symbol)."""

    position: Decimal = ZERO
    cost: Decimal = ZERO  # average entry price of the position (0 when flat)
    realised: Decimal = ZERO  # realised P&L of ``realised_day``
    realised_day: int = 0
    realised_total: Decimal = ZERO
    bought: Decimal = ZERO  # every fill, for the checks: position == bought - sold
    sold: Decimal = ZERO
    open_orders: int = 0
    open_buy: Decimal = ZERO  # remaining amount of the open buy orders
    open_sell: Decimal = ZERO
    mark: Decimal | None = None
    mark_time: float | None = None
    unpriced_fills: int = 0

    def unrealised(self) -> Decimal:
        if self.mark is None or not self.position:
            return ZERO
        return self.position * (self.mark - self.cost)

    def day_pnl(self, day: int) -> Decimal:
        return (self.realised if self.realised_day == day else ZERO) + self.unrealised()

    def fill(self, side: str, qty: Decimal, price: Decimal | None, day: int) -> None:
        signed = qty if side == "buy" else -qty
        if side == "buy":
            self.bought += qty
        else:
            self.sold += qty
        pos = self.position
        if price is None:
            self.unpriced_fills += 1
            self.position = pos + signed
            if not self.position:
                self.cost = ZERO
            elif not pos or (pos > 0) != (self.position > 0):
                self.cost = self.mark or ZERO
            return
        if not pos or (pos > 0) == (signed > 0):
            total = abs(pos) + qty
            self.cost = (abs(pos) * self.cost + qty * price) / total
            self.position = pos + signed
            return
        closed = min(qty, abs(pos))
        pnl = closed * (price - self.cost) * (1 if pos > 0 else -1)
        if self.realised_day != day:
            self.realised_day, self.realised = day, ZERO
        self.realised += pnl
        self.realised_total += pnl
        self.position = pos + signed
        if not self.position:
            self.cost = ZERO
        elif (self.position > 0) != (pos > 0):
            self.cost = price  # flipped: the rest opened at this price


@dataclass
class _Order:
    symbol: str
    side: str
    amount: Decimal
    filled: Decimal
    average: Decimal | None
    open: bool


def _day(t: float) -> int:
    return int(t // DAY)


@dataclass
class Book:
    """The fold. :meth:`apply` each journal record once, in seq order (or :meth:`apply_parsed`
    with what :func:`classify` returned, to parse once)."""

    parse_order: RecordParser | None = None
    blocks: TradingBlocks = field(default_factory=TradingBlocks)
    position: int = 0  # last seq folded
    instruments: dict[tuple[str, str], Instrument] = field(default_factory=dict)
    orders: dict[tuple[str, str], _Order] = field(default_factory=dict)  # open orders
    closed: OrderedDict[tuple[str, str], Decimal] = field(default_factory=OrderedDict)  # filled of closed ones
    seen_ids: set[tuple[str, str]] = field(default_factory=set)
    seen_day: int = 0
    records: int = 0
    invalid: int = 0
    inconsistent: int = 0
    last_error: str | None = None
    guard_listener: Callable[[GuardRecord], None] | None = None
    changes: int = 0
    _pnl_cache: tuple[int, int, Decimal] | None = None

    def instrument(self, venue: str, symbol: str) -> Instrument:
        key = (venue, symbol)
        inst = self.instruments.get(key)
        if inst is None:
            inst = self.instruments[key] = Instrument()
        return inst

    def apply(self, seq: int, payload: bytes, now: float) -> Any:
        """Fold journal record ``seq`` (skipped when already folded); the parsed record."""
        if seq <= self.position:
            return None
        try:
            parsed = fold_parse(payload, self.parse_order)
        except (ValueError, GuardRecordError) as exc:
            self.position = seq
            self.invalid += 1
            self.last_error = f"seq {seq}: {exc}"
            return None
        self.apply_parsed(seq, parsed, now)
        return parsed

    def apply_parsed(self, seq: int, parsed: Any, now: float) -> None:
        if seq <= self.position:
            return
        self.position = seq
        if parsed is None:
            return
        self.records += 1
        kind = type(parsed)
        if kind is Mark:
            self.changes += 1  # the day's P&L moves with marks and fills only
            inst = self.instrument(parsed.venue, parsed.symbol)
            inst.mark, inst.mark_time = parsed.price, parsed.time if parsed.time is not None else now
        elif kind is GuardRecord:
            self.blocks.apply(parsed)
            if self.guard_listener is not None:
                self.guard_listener(parsed)
        elif getattr(parsed, "state", None) is None:
            self._snapshot(parsed, now)  # an open_orders snapshot (it has no state of its own)
        else:
            self._order(parsed, now)

    def _order(self, record: OrderFacts, now: float) -> None:
        venue, coid = record.venue, record.client_order_id
        key = (venue, coid)
        when = record.time if record.time is not None else now
        if record.state == "new":
            day = _day(when)  # the record's own time when it has one: a restart folds the same days
            if day > self.seen_day:
                self.seen_day = day
                self.seen_ids.clear()
            if day == self.seen_day:
                self.seen_ids.add(key)
        old = self.orders.get(key)
        inst = self.instruments.get((venue, record.symbol)) or self.instrument(venue, record.symbol)
        if old is not None:
            self._leave(old, venue)
            before, average = old.filled, old.average
        else:
            before = self.closed.get(key, ZERO)
            average = None
        filled = record.filled if record.filled is not None else ZERO
        new_average = getattr(record, "average", None)
        if filled > before:
            qty = filled - before
            price: Decimal | None
            if new_average is not None and (average is not None or not before):
                price = (new_average * filled - (average or ZERO) * before) / qty
            else:
                price = record.price if record.price is not None else inst.mark
            inst.fill(record.side, qty, price, _day(when))
            self.changes += 1
        elif filled < before:
            self.inconsistent += 1
            filled = before
        if record.state in OPEN_STATES:
            order = _Order(record.symbol, record.side, record.amount, filled, new_average, True)
            self.orders[key] = order
            self.closed.pop(key, None)
            self._enter(order, venue)
        else:
            self.orders.pop(key, None)
            self.closed[key] = filled
            self.closed.move_to_end(key)
            if len(self.closed) > MAX_CLOSED:
                self.closed.popitem(last=False)

    def _enter(self, order: _Order, venue: str) -> None:
        inst = self.instrument(venue, order.symbol)
        inst.open_orders += 1
        rest = order.amount - order.filled
        if order.side == "buy":
            inst.open_buy += rest
        else:
            inst.open_sell += rest

    def _leave(self, order: _Order, venue: str) -> None:
        inst = self.instrument(venue, order.symbol)
        inst.open_orders -= 1
        rest = order.amount - order.filled
        if order.side == "buy":
            inst.open_buy -= rest
        else:
            inst.open_sell -= rest

    def _snapshot(self, snapshot: SnapshotFacts, now: float) -> None:
        self.changes += 1
        venue = snapshot.venue
        for key in [k for k in self.orders if k[0] == venue]:
            order = self.orders.pop(key)
            self._leave(order, venue)
            self.closed[key] = order.filled
        for record in snapshot.orders:
            self._order(record, now)

    # ------------------------------------------------------------------ figures

    def open_keys(self) -> set[tuple[str, str]]:
        return set(self.orders)

    def day_pnl(self, now: float) -> Decimal:
        day = _day(now)
        cached = self._pnl_cache
        if cached is not None and cached[0] == self.changes and cached[1] == day:
            return cached[2]
        pnl = sum((inst.day_pnl(day) for inst in self.instruments.values()), ZERO)
        self._pnl_cache = (self.changes, day, pnl)
        return pnl

    def is_duplicate(self, venue: str, coid: str, now: float) -> bool:
        return _day(now) == self.seen_day and (venue, coid) in self.seen_ids

    def snapshot(self, now: float) -> dict[str, Any]:
        day = _day(now)
        return {"position": self.position, "records": self.records, "invalid": self.invalid,
                "inconsistent": self.inconsistent, "last_error": self.last_error,
                "open_orders": len(self.orders), "day_pnl": str(self.day_pnl(now)),
                "instruments": [{"venue": v, "symbol": s, "position": str(i.position), "cost": str(i.cost),
                                 "open_orders": i.open_orders, "open_buy": str(i.open_buy),
                                 "open_sell": str(i.open_sell), "mark": None if i.mark is None else str(i.mark),
                                 "realised_today": str(i.realised if i.realised_day == day else ZERO),
                                 "unrealised": str(i.unrealised()), "unpriced_fills": i.unpriced_fills}
                                for (v, s), i in sorted(self.instruments.items())]}
