"""The pre-trade risk gate on ``journal.append`` (sans-IO: parsed payloads and ``now`` in,
a reservation or a refusal out).

For each payload of an append batch, in order, :meth:`Gate.check` decides against the
book (every record folded: all that was acknowledged before) *plus* the reservations of
the batches checked but not yet folded (in flight, and the earlier payloads of the same
batch). A ``new`` order record that breaks a block (kill / pause / throttle) or a limit
refuses the whole batch (:class:`RiskRefused`: the limit, the figure, the record's field;
nothing of the batch is written). Any other record passes (the engine must be able to
journal what the venue did) and is folded as usual.

Concurrency: a passing batch *reserves* what its ``new`` records add (an open order, its
amount on its side, its client order id, its messages), so two appends in flight never
both pass against the same state. The reservation ends when the batch's records are
folded (:meth:`Gate.written` then :meth:`Gate.release_folded`; an in-doubt batch is in
the journal, so it counts as written) or when the batch was not written
(:meth:`Gate.abandon`).

The limits (see :mod:`daemon.guard.limits`), for a ``new`` record on (venue, symbol),
each refused only *above* its figure (a value equal to the limit passes):

==========================  ==========  ====================================================
limit                       field       refused when
==========================  ==========  ====================================================
``kill`` / ``pause``        ``venue``   a block covers (venue, symbol)
``throttle``                ``state``   the throttle's token bucket is empty
``duplicate_client_order_id`` ``client_order_id``  the id was in a ``new`` record today
``max_message_rate``        ``state``   more than N new order records in the last second
``max_order_amount``        ``amount``  amount > limit
``max_order_notional``      ``amount``  amount x (price, or the reference for a market order) > limit
``price_collar``            ``price``   abs(price / reference - 1) > limit
``max_open_orders``         ``symbol``  open orders on (venue, symbol) + 1 > limit
``max_position``            ``amount``  buy: position + open buys + amount > limit;
                                        sell: -(position - open sells - amount) > limit
``max_daily_loss``          ``state``   the day's P&L <= -limit (the loss has reached it)
==========================  ==========  ====================================================

The reference price is the last mark of (venue, symbol) — in the same batch first, then
the book's, or the venue probes' last ticker (``fetch_ticker`` with ``ticker_symbol``) when
it is newer than that mark. With none, ``no_reference`` of the limits file decides: ``"refuse"`` (the
default) refuses the collar and a market order's notional; ``"pass"`` lets them through.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

from daemon.guard.book import Book, Mark
from daemon.guard.errors import GuardError
from daemon.guard.limits import Limits

__all__ = ["Gate", "Reservation", "RiskRefused"]

ZERO = Decimal(0)


class RiskRefused(GuardError):
    """A ``new`` order record the gate refuses: nothing of its batch may be written."""

    def __init__(self, index: int, limit: str, field: str, figure: str, venue: str, symbol: str,
                 client_order_id: str) -> None:
        self.index = index
        self.limit = limit
        self.field = field
        self.figure = figure
        self.venue = venue
        self.symbol = symbol
        self.client_order_id = client_order_id
        super().__init__(self.message())

    def message(self) -> str:
        return (f"payload {self.index}: refused by the risk gate: limit {self.limit} on {self.venue} {self.symbol}, "
                f"field {self.field}: {self.figure} (order {self.client_order_id}; nothing was written)")

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "limit": self.limit, "field": self.field, "figure": self.figure,
                "venue": self.venue, "symbol": self.symbol, "client_order_id": self.client_order_id}


@dataclass
class Reservation:
    """What one passing batch holds until its records are folded."""

    items: list[tuple[tuple[str, str], str, Decimal, tuple[str, str]]] = field(default_factory=list)
    last_seq: int | None = None  # set once written
    done: bool = False


@dataclass
class Gate:
    book: Book
    limits: Limits | None = None
    #: The venue probes' last trade: (venue, symbol) -> (price, wall time) or None (injected).
    tickers: Callable[[str, str], tuple[float, float] | None] | None = None
    #: (venue, symbol) -> [open orders, buy amount, sell amount] held by reservations
    reserved: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    reserved_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    tickets: list[Reservation] = field(default_factory=list)
    _rate: deque[tuple[float, int]] = field(default_factory=deque)
    _rate_total: int = 0
    checked: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    last_refusal: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the decision

    def check(self, parsed: list[Any], now: float) -> Reservation | None:
        """Decide a batch (``parsed[i]``: what :func:`daemon.guard.book.classify` made of
        payload i). Returns the reservation to pass to :meth:`written` / :meth:`abandon`
        (None: nothing to reserve); raises :class:`RiskRefused`."""
        ticket: Reservation | None = None
        marks: dict[tuple[str, str], Decimal] | None = None
        new_count = 0
        for index, record in enumerate(parsed):
            if record is None:
                continue
            state = getattr(record, "state", None)  # order records only (not snapshots, guard records)
            if state != "new":
                if state is None and type(record) is Mark:
                    if marks is None:
                        marks = {}
                    marks[(record.venue, record.symbol)] = record.price
                continue
            self.checked += 1
            try:
                item = self._decide(index, record, now, new_count, marks, ticket)
            except RiskRefused as exc:
                if ticket is not None:
                    self._unreserve(ticket)
                self.refusals[exc.limit] = self.refusals.get(exc.limit, 0) + 1
                self.last_refusal = {**exc.to_dict(), "time": now}
                raise
            new_count += 1
            if item is not None:
                if ticket is None:
                    ticket = Reservation()
                    self.tickets.append(ticket)
                ticket.items.append(item)
                self._reserve(item, 1)
        if new_count and self.limits is not None and self.limits.max_message_rate is not None:
            self._rate.append((now, new_count))
            self._rate_total += new_count
        return ticket

    def _decide(self, index: int, record: Any, now: float, before: int,
                marks: dict[tuple[str, str], Decimal] | None, ticket: Reservation | None
                ) -> tuple[tuple[str, str], str, Decimal, tuple[str, str]] | None:
        venue, symbol, coid = record.venue, record.symbol, record.client_order_id
        book = self.book

        def refuse(limit: str, field_name: str, figure: str) -> RiskRefused:
            return RiskRefused(index, limit, field_name, figure, venue, symbol, coid)

        block = book.blocks.refusal(venue, symbol, now)
        if block is not None:
            raise refuse(block.kind, "state" if block.kind == "throttle" else "venue", block.message())
        limits = self.limits
        if limits is None:
            return None
        key = (venue, symbol)
        id_key = (venue, coid)
        if limits.duplicate_client_order_id == "refuse" and (
                book.is_duplicate(venue, coid, now) or id_key in self.reserved_ids
                or (ticket is not None and any(it[3] == id_key for it in ticket.items))):
            raise refuse("duplicate_client_order_id", "client_order_id",
                         f"client_order_id {coid!r} was already used on {venue} today")
        if limits.max_message_rate is not None:
            rate = self._recent(now) + before + 1
            if rate > limits.max_message_rate:
                raise refuse("max_message_rate", "state", f"{rate} new order records in the last second is above "
                                                          f"the limit {limits.max_message_rate}")
        r = limits.for_(venue, symbol)
        amount: Decimal = record.amount
        if r.max_order_amount is not None and amount > r.max_order_amount:
            raise refuse("max_order_amount", "amount", f"amount {amount} is above the limit {r.max_order_amount}")
        inst = book.instruments.get(key)
        reference = marks.get(key) if marks is not None else None
        if reference is None and inst is not None:
            reference = inst.mark
        if reference is None or (marks is None or key not in marks):
            ticker = self.tickers(venue, symbol) if self.tickers is not None else None
            if ticker is not None and (reference is None or inst is None or inst.mark_time is None
                                       or ticker[1] > inst.mark_time):
                reference = Decimal(repr(ticker[0]))  # the probes saw a trade after the last mark
        price: Decimal | None = record.price
        if r.max_order_notional is not None:
            basis = price if price is not None else reference
            if basis is None:
                if limits.no_reference == "refuse":
                    raise refuse("max_order_notional", "price", "a market order and no reference price (no mark "
                                 "record for it yet; no_reference = \"refuse\")")
            elif amount * basis > r.max_order_notional:
                raise refuse("max_order_notional", "amount", f"notional {amount * basis} (amount {amount} x price "
                             f"{basis}) is above the limit {r.max_order_notional}")
        if r.price_collar is not None and price is not None:
            if reference is None:
                if limits.no_reference == "refuse":
                    raise refuse("price_collar", "price", f"price {price} and no reference price (no mark record "
                                 "for it yet; no_reference = \"refuse\")")
            else:
                deviation = abs(price / reference - 1)
                if deviation > r.price_collar:
                    raise refuse("price_collar", "price", f"price {price} is {_pct(deviation)} from the reference "
                                 f"{reference}, above the collar {_pct(r.price_collar)}")
        held = self.reserved.get(key)
        if r.max_open_orders is not None:
            count = (inst.open_orders if inst is not None else 0) + (held[0] if held is not None else 0) + 1
            if count > r.max_open_orders:
                raise refuse("max_open_orders", "symbol", f"{count} open orders on {venue} {symbol} is above the "
                             f"limit {r.max_open_orders}")
        if r.max_position is not None:
            position = inst.position if inst is not None else ZERO
            if record.side == "buy":
                exposure = position + (inst.open_buy if inst is not None else ZERO) + \
                    (held[1] if held is not None else ZERO) + amount
            else:
                exposure = -(position - (inst.open_sell if inst is not None else ZERO)
                             - (held[2] if held is not None else ZERO) - amount)
            if exposure > r.max_position:
                raise refuse("max_position", "amount", f"a {record.side} of {amount} takes the position with open "
                             f"orders to {exposure if record.side == 'buy' else -exposure} (position {position}), "
                             f"above the limit {r.max_position}")
        if limits.max_daily_loss is not None:
            pnl = book.day_pnl(now)
            if pnl <= -limits.max_daily_loss:
                raise refuse("max_daily_loss", "state", f"the day's P&L {pnl} has reached the loss limit "
                             f"-{limits.max_daily_loss}")
        return (key, record.side, amount, id_key)

    def _recent(self, now: float) -> int:
        rate = self._rate
        while rate and rate[0][0] <= now - 1.0:
            self._rate_total -= rate.popleft()[1]
        return self._rate_total

    # ------------------------------------------------------------------ reservations

    def _reserve(self, item: tuple[tuple[str, str], str, Decimal, tuple[str, str]], sign: int) -> None:
        key, side, amount, id_key = item
        held = self.reserved.get(key)
        if held is None:
            held = self.reserved[key] = [0, ZERO, ZERO]
        held[0] += sign
        if side == "buy":
            held[1] += sign * amount
        else:
            held[2] += sign * amount
        if held[0] == 0:
            del self.reserved[key]
        count = self.reserved_ids.get(id_key, 0) + sign
        if count > 0:
            self.reserved_ids[id_key] = count
        else:
            self.reserved_ids.pop(id_key, None)

    def _unreserve(self, ticket: Reservation) -> None:
        if ticket.done:
            return
        ticket.done = True
        try:
            self.tickets.remove(ticket)
        except ValueError:
            return  # a ticket of a gate since replaced (the book was folded again)
        for item in ticket.items:
            self._reserve(item, -1)

    def written(self, ticket: Reservation | None, last_seq: int) -> None:
        """The batch is in the journal through ``last_seq`` (ok or in doubt): its reservation
        ends once the book has folded that far."""
        if ticket is not None:
            ticket.last_seq = last_seq
        if self.tickets:
            self.release_folded()

    def abandon(self, ticket: Reservation | None) -> None:
        """The batch was not written: give back what it reserved."""
        if ticket is not None:
            self._unreserve(ticket)

    def release_folded(self) -> None:
        position = self.book.position
        for ticket in [t for t in self.tickets if t.last_seq is not None and t.last_seq <= position]:
            self._unreserve(ticket)

    # ------------------------------------------------------------------ figures

    def utilisation(self, now: float) -> list[dict[str, Any]]:
        """Each limit's use on each (venue, symbol) the book knows, highest first."""
        limits = self.limits
        if limits is None:
            return []
        out: list[dict[str, Any]] = []
        for (venue, symbol), inst in self.book.instruments.items():
            r = limits.for_(venue, symbol)
            if r.max_open_orders:
                out.append(_use("max_open_orders", venue, symbol, Decimal(inst.open_orders), Decimal(r.max_open_orders)))
            if r.max_position is not None:
                use = max(inst.position + inst.open_buy, -(inst.position - inst.open_sell))
                out.append(_use("max_position", venue, symbol, use, r.max_position))
        if limits.max_daily_loss is not None:
            out.append(_use("max_daily_loss", "*", "*", max(ZERO, -self.book.day_pnl(now)), limits.max_daily_loss))
        if limits.max_message_rate is not None:
            out.append(_use("max_message_rate", "*", "*", Decimal(self._recent(now)), Decimal(limits.max_message_rate)))
        out.sort(key=lambda u: -u["utilisation"])
        return out


def _use(limit: str, venue: str, symbol: str, value: Decimal, bound: Decimal) -> dict[str, Any]:
    return {"limit": limit, "venue": venue, "symbol": symbol, "value": str(value), "limit_value": str(bound),
            "utilisation": float(value / bound) if bound else 0.0}


def _pct(value: Decimal) -> str:
    return f"{float(value) * 100:.4g}%"
