"""Reconciliation after a promotion: the journal's open orders against the venue's. Sans-IO.

A promoted standby inherits orders it never placed. For each venue the new primary fetches
the venue's open orders (ccxt ``fetch_open_orders``, turned into :class:`VenueOrder` with
:meth:`VenueOrder.from_ccxt`) and takes the orders the journal says are open there
(:meth:`daemon.venues.orders.OpenOrders.open_at`). :func:`reconcile` compares the two and
returns one :class:`Decision` per order; the service acts on them (cancel, adopt) and
writes a :class:`ReconciliationReport`. This module only decides: no I/O, no clock.

Matching
========

A venue order *matches* a journal record when ``record.venue_order_id == order.id`` or
``order.client_order_id == record.client_order_id`` (the venue's client id after
:func:`sanitize_client_order_id` counts too, so an adopted order matches its adoption
record). Matching by venue order id is done first, for every venue order, then by client
order id among what is left. A journal record matches at most one venue order.

* Matched, and the order agrees with the record: ``matched`` / ``keep``. "Agrees" means
  the same symbol, and the same side, amount and price wherever both sides know the value
  (a venue that does not report a price, or a market order recorded with ``price: null``,
  is not a difference). The amount compared is the order's original size, not what is
  left of it. The ids must agree too: matched by client id, the record's venue order id (if
  any) must be the order's; matched by venue id, the venue's client id (if any) must be the
  record's.
* Matched but different: ``mismatch`` / ``report``, whatever the policy. An order the
  journal knows is never cancelled or adopted by reconciliation; a human looks at it. A
  second venue order claiming a journal record another venue order already matched is a
  mismatch too.
* A venue order without a match: ``orphan``. The policy decides: ``cancel-orphans`` (the
  default) -> ``cancel``; ``adopt`` -> ``adopt`` (the service journals
  :func:`adoption_record`; an order that cannot be recorded because the venue did not say
  its side or size is ``report``-ed instead, saying why); ``report-only`` -> ``report``.
* A journal-open order the venue does not list: ``missing`` / ``report`` ("filled or
  cancelled during the failover? check the venue's trade history"). The journal is not
  changed: the engine, which knows its fills, writes the closing record.

Hence, whatever the input: under ``cancel-orphans`` no decision cancels a venue order whose
venue id or client id belongs to a journal-open order, and under ``report-only`` no
decision cancels or adopts anything (both are property-tested).

Epochs: a decision about a journal order carries the record's ``epoch`` (the lease epoch it
was placed under); the report labels and groups the orders by it
(:meth:`ReconciliationReport.by_epoch`): ``epoch 7 (an earlier primary)``, ``epoch 8 (this
primary)``, ``epoch unknown`` (a record written without ``epoch``), ``not in the journal``
(orphans: nobody recorded them).

Decisions come sorted: by kind (``orphan``, ``mismatch``, ``missing``, ``matched``: what is
acted on first, what needs a human next, what is fine last), then symbol, venue order id,
client order id. The same inputs, in any order, give the same list.

Kraken reports an order without a client reference as ``clientOrderId "0"`` (its
``userref`` 0): :meth:`VenueOrder.from_ccxt` reads ``None``, ``""`` and ``"0"`` as "no
client order id", so such orders neither match a record with client id ``"0"`` nor share an
adopted id. The recorded fixtures this is tested with are ccxt's static test data
(``lab/data/ccxt_static/kraken.response.json``, from ccxt/ccxt, MIT).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

from daemon.venues.orders import (
    CLIENT_ORDER_ID,
    ORDER_TYPE,
    SIDES,
    OrderRecord,
    OrderRecordError,
    format_decimal,
)

Policy = Literal["cancel-orphans", "adopt", "report-only"]
POLICIES: tuple[str, ...] = get_args(Policy)
Kind = Literal["matched", "orphan", "missing", "mismatch"]
Action = Literal["keep", "cancel", "adopt", "report"]
#: The order decisions are listed in: acted on, then needing a human, then fine.
KIND_ORDER: tuple[str, ...] = ("orphan", "mismatch", "missing", "matched")

MISSING_HINT = "filled or cancelled during the failover? check the venue's trade history"
#: Client order ids venues report for "none" (Kraken: userref 0).
_NO_CLIENT_ID = frozenset({"", "0"})


# --------------------------------------------------------------------------- the venue's side


def _decimal_or_none(value: Any) -> Decimal | None:
    """A ccxt number (float, int, numeric string) as a Decimal; None when absent or not a
    finite number. Floats go through ``repr`` (0.1 -> Decimal("0.1"), not its binary value)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            number = Decimal(repr(value))
        elif isinstance(value, (int, Decimal)):
            number = Decimal(value)
        elif isinstance(value, str) and value.strip():
            number = Decimal(value.strip())
        else:
            return None
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _positive(value: Any) -> Decimal | None:
    number = _decimal_or_none(value)
    return number if number is not None and number > 0 else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class VenueOrder:
    """An open order as the venue reports it (the fields reconciliation needs)."""

    id: str
    client_order_id: str | None
    symbol: str
    side: str | None
    amount: Decimal | None
    price: Decimal | None
    status: str | None
    type: str | None = None
    filled: Decimal | None = None

    @classmethod
    def from_ccxt(cls, order: dict[str, Any]) -> VenueOrder:
        """From a ccxt unified order structure (``fetch_open_orders``' items). Raises
        ValueError naming the key when the order has no ``id`` or no ``symbol``: without them
        it can be neither matched nor cancelled. ``clientOrderId`` ``None``, ``""`` or
        ``"0"`` (Kraken's "no userref") read as no client id; an ``amount`` or ``price`` that
        is absent, not a number or not above 0 reads as unknown (``None``); a ``side`` other
        than buy/sell too."""
        if not isinstance(order, dict):
            raise TypeError(f"order: expected a ccxt order structure (a dict), found {type(order).__name__}; "
                             "pass the items of fetch_open_orders()")
        oid = _text(order.get("id"))
        if oid is None:
            raise ValueError(f"id: the venue order has no id (found {order.get('id')!r}); it cannot be matched or "
                             "cancelled: look at the venue's open orders by hand")
        symbol = _text(order.get("symbol"))
        if symbol is None:
            raise ValueError(f"symbol: venue order {oid[:40]} has no symbol; ccxt could not map its market: "
                             "check the venue's markets (load_markets)")
        coid = _text(order.get("clientOrderId"))
        side = _text(order.get("side"))
        side = side.lower() if side is not None else None
        filled = _decimal_or_none(order.get("filled"))
        return cls(
            id=oid,
            client_order_id=None if coid is None or coid in _NO_CLIENT_ID else coid,
            symbol=symbol,
            side=side if side in SIDES else None,
            amount=_positive(order.get("amount")),
            price=_positive(order.get("price")),
            status=_text(order.get("status")),
            type=_text(order.get("type")),
            filled=filled if filled is not None and filled >= 0 else None,
        )

    def describe(self) -> str:
        return f"{self.symbol} {self.side or '?'} {_amount_at_price(self.amount, self.price)}"


def _amount_at_price(amount: Decimal | None, price: Decimal | None) -> str:
    return (f"{format_decimal(amount) if amount is not None else '?'}"
            f"@{format_decimal(price) if price is not None else '-'}")


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    kind: Kind
    action: Action
    venue: str
    client_order_id: str | None
    venue_order_id: str | None
    symbol: str
    side: str | None
    amount: Decimal | None
    price: Decimal | None
    reason: str
    #: The lease epoch the journal says the order was placed under (None: an orphan, which
    #: the journal does not know, or a record written without ``epoch``).
    epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: decimals as plain-notation strings."""
        return {f.name: (format_decimal(v) if isinstance(v := getattr(self, f.name), Decimal) else v)
                for f in fields(self)}

    def line(self, outcome: str | None = None) -> str:
        """One human line: kind, action (→ outcome), ids, symbol side amount@price, reason."""
        what: str = self.action
        if outcome and outcome not in (self.action, "kept", "reported"):
            what = f"{self.action} → {outcome}"
        return (f"{self.kind} {what}: venue order {self.venue_order_id or '-'}, "
                f"client order {self.client_order_id or '-'}, {self.symbol} {self.side or '?'} "
                f"{_amount_at_price(self.amount, self.price)}; {self.reason}")

    def sort_key(self) -> tuple[int, str, str, str]:
        return (KIND_ORDER.index(self.kind), self.symbol, self.venue_order_id or "", self.client_order_id or "")


def sanitize_client_order_id(text: str) -> str:
    """A client order id the journal accepts (1-64 of ``A-Za-z0-9._:-``). An id that
    already fits is kept as is; otherwise other characters become ``-`` and, to keep
    distinct ids distinct, the first 55 characters get ``-`` and 8 hex digits of the
    original's SHA-256."""
    if CLIENT_ORDER_ID.fullmatch(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "-", text)[:55] or "x"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def adoption_record(venue: str, order: VenueOrder, epoch: int | None) -> OrderRecord:
    """The journal record that adopts ``order``: state ``open``, ``adopted`` true, the
    venue's id, and ``client_order_id`` = the venue's client id or ``adopted-<id>``
    (sanitised, at most 64 characters). A type or filled size the format cannot hold is
    left out. Raises :class:`OrderRecordError` when the venue did not report what a record
    needs (side, amount) or reported something it cannot hold."""
    if order.side not in SIDES:
        raise OrderRecordError("side", f"venue order {order.id[:40]} reported no buy/sell side, found "
                                       f"{order.side!r}", "cancel it or record it by hand")
    if order.amount is None:
        raise OrderRecordError("amount", f"venue order {order.id[:40]} reported no size",
                               "cancel it or record it by hand")
    order_type = order.type if order.type is not None and ORDER_TYPE.fullmatch(order.type) else None
    filled = order.filled if order.filled is not None and order.filled <= order.amount else None
    return OrderRecord(
        client_order_id=sanitize_client_order_id(order.client_order_id or f"adopted-{order.id}"),
        venue=venue, symbol=order.symbol, side=order.side, amount=order.amount, price=order.price,
        state="open", venue_order_id=order.id, type=order_type, filled=filled, epoch=epoch, adopted=True,
    )


def _client_ids(order: VenueOrder) -> tuple[str, ...]:
    if order.client_order_id is None:
        return ()
    sanitized = sanitize_client_order_id(order.client_order_id)
    return (order.client_order_id,) if sanitized == order.client_order_id else (order.client_order_id, sanitized)


def _differences(record: OrderRecord, order: VenueOrder, how: str) -> list[str]:
    diffs = []
    if record.symbol != order.symbol:
        diffs.append(f"symbol: journal {record.symbol}, venue {order.symbol}")
    if order.side is not None and record.side != order.side:
        diffs.append(f"side: journal {record.side}, venue {order.side}")
    if order.amount is not None and record.amount != order.amount:
        diffs.append(f"amount: journal {format_decimal(record.amount)}, venue {format_decimal(order.amount)}")
    if order.price is not None and record.price is not None and record.price != order.price:
        diffs.append(f"price: journal {format_decimal(record.price)}, venue {format_decimal(order.price)}")
    if how == "client order id" and record.venue_order_id is not None and record.venue_order_id != order.id:
        diffs.append(f"venue order id: journal {record.venue_order_id}, venue {order.id}")
    if how == "venue order id" and order.client_order_id is not None \
            and record.client_order_id not in _client_ids(order):
        diffs.append(f"client order id: journal {record.client_order_id}, venue {order.client_order_id}")
    return diffs


def reconcile(venue: str, policy: Policy, journal_open: Sequence[OrderRecord],
              venue_open: Sequence[VenueOrder]) -> list[Decision]:
    """Decide what to do about every open order at ``venue``: see the module docstring.
    ``journal_open`` must be the journal's open orders at this venue
    (``OpenOrders.open_at(venue)``); a record of another venue, or a closed one, is a
    caller's bug and raises ValueError."""
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, found {policy!r}; "
                         f"set [venues.{venue}] reconcile")
    for record in journal_open:
        if record.venue != venue:
            raise ValueError(f"journal_open: holds an order of venue {record.venue!r} while reconciling "
                             f"{venue!r}; pass OpenOrders.open_at({venue!r})")
        if not record.is_open:
            raise ValueError(f"journal_open: holds order {record.client_order_id} in state {record.state}; "
                             "pass only open orders (OpenOrders.open_at)")

    records = sorted(journal_open, key=lambda r: (r.client_order_id, r.venue_order_id or ""))
    by_vid: dict[str, OrderRecord] = {}
    by_coid: dict[str, OrderRecord] = {}
    for record in records:
        by_coid.setdefault(record.client_order_id, record)
        if record.venue_order_id is not None:
            by_vid.setdefault(record.venue_order_id, record)

    orders = sorted(venue_open, key=lambda o: (o.id, o.client_order_id or "", o.symbol))
    matches: dict[int, tuple[OrderRecord, str]] = {}  # venue order index -> (record, matched by)
    claimed: dict[int, str] = {}  # id(record) -> the venue order id that matched it first
    for i, order in enumerate(orders):
        found = by_vid.get(order.id)
        if found is not None:
            matches[i] = (found, "venue order id")
    for i, order in enumerate(orders):
        if i in matches:
            continue
        for coid in _client_ids(order):
            candidate = by_coid.get(coid)
            if candidate is not None:
                matches[i] = (candidate, "client order id")
                break

    decisions: list[Decision] = []

    def decide(kind: Kind, action: Action, order: VenueOrder, client_order_id: str | None, reason: str,
               epoch: int | None = None) -> None:
        decisions.append(Decision(kind, action, venue, client_order_id, order.id, order.symbol, order.side,
                                  order.amount, order.price, reason, epoch))

    # Venue-id matches claim their record before client-id matches do.
    for i in sorted(matches, key=lambda i: (matches[i][1] != "venue order id", i)):
        order = orders[i]
        record, how = matches[i]
        if id(record) in claimed:
            decide("mismatch", "report", order, record.client_order_id,
                   f"matched journal order {record.client_order_id} by {how}, but venue order "
                   f"{claimed[id(record)]} already matched it: two venue orders for one journal order; "
                   "the journal knows it, so it is never cancelled: check it by hand", record.epoch)
            continue
        claimed[id(record)] = order.id
        diffs = _differences(record, order, how)
        if diffs:
            decide("mismatch", "report", order, record.client_order_id,
                   f"matched by {how}, but {'; '.join(diffs)}: the journal knows this order, so it is never "
                   "cancelled: check it by hand", record.epoch)
        else:
            decide("matched", "keep", order, record.client_order_id,
                   f"matched by {how}; the journal has it {record.state}", record.epoch)

    for i, order in enumerate(orders):
        if i in matches:
            continue
        ids = f"venue order id {order.id}" + (f" or client order id {order.client_order_id}"
                                              if order.client_order_id else "")
        unknown = f"no journal-open order has {ids}"
        if policy == "cancel-orphans":
            decide("orphan", "cancel", order, order.client_order_id, f"{unknown}; policy cancel-orphans: cancel it")
        elif policy == "adopt":
            try:
                adopted = adoption_record(venue, order, None)
            except OrderRecordError as exc:
                decide("orphan", "report", order, order.client_order_id,
                       f"{unknown}; policy adopt, but it cannot be recorded ({exc}): left alone")
            else:
                decide("orphan", "adopt", order, order.client_order_id,
                       f"{unknown}; policy adopt: journal it as {adopted.client_order_id}")
        else:
            decide("orphan", "report", order, order.client_order_id, f"{unknown}; policy report-only: left alone")

    for record in records:
        if id(record) in claimed:
            continue
        filled = f", {format_decimal(record.filled)} filled" if record.filled is not None else ""
        decisions.append(Decision(
            "missing", "report", venue, record.client_order_id, record.venue_order_id, record.symbol, record.side,
            record.amount, record.price,
            f"the journal has it {record.state}{filled} but the venue does not list it: {MISSING_HINT}",
            record.epoch))

    decisions.sort(key=Decision.sort_key)
    return decisions


# --------------------------------------------------------------------------- the report


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


@dataclass
class ReconciliationReport:
    """One reconciliation of one venue: the decisions, what was done about each
    (``outcomes``: decision index -> ``"cancelled"``, ``"adopted"``, ``"failed: ..."``,
    ``"would cancel"``, ``"skipped: ..."``, ``"kept"``, ``"report"``), the venue's positions
    (ccxt structures, for the record) and errors. Times are the caller's (Unix seconds)."""

    venue: str
    policy: str
    dry_run: bool
    node: str
    epoch: int | None
    started_at: float
    finished_at: float | None = None
    decisions: list[Decision] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outcomes: dict[int, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """matched, orphans, missing, mismatched (decisions by kind); cancelled, adopted,
        failed (outcomes); and skipped, would_cancel, would_adopt, venue_orders."""
        kinds = [d.kind for d in self.decisions]
        outcomes = list(self.outcomes.values())
        return {
            "matched": kinds.count("matched"),
            "orphans": kinds.count("orphan"),
            "missing": kinds.count("missing"),
            "mismatched": kinds.count("mismatch"),
            "cancelled": outcomes.count("cancelled"),
            "adopted": outcomes.count("adopted"),
            "failed": sum(1 for o in outcomes if o.startswith("failed")),
            "skipped": sum(1 for o in outcomes if o.startswith("skipped")),
            "would_cancel": outcomes.count("would cancel"),
            "would_adopt": outcomes.count("would adopt"),
            "venue_orders": len(kinds) - kinds.count("missing"),
        }

    def actionable(self) -> list[tuple[int, Decision]]:
        """The decisions to act on (cancel, adopt), with their index for :attr:`outcomes`."""
        return [(i, d) for i, d in enumerate(self.decisions) if d.action in ("cancel", "adopt")]

    def summary(self) -> str:
        """``"kraken: policy cancel-orphans, 3 venue orders, 1 matched, 2 orphans → 2 cancelled, 0 failed"``."""
        c = self.counts()
        parts = [f"{self.venue}: policy {self.policy}{' (dry run)' if self.dry_run else ''}",
                 _plural(c["venue_orders"], "venue order"), f"{c['matched']} matched"]
        if c["mismatched"]:
            parts.append(f"{c['mismatched']} mismatched")
        parts.append(_plural(c["orphans"], "orphan"))
        text = ", ".join(parts)
        verb = "cancelled" if self.policy == "cancel-orphans" else "adopted"
        if self.policy == "report-only":
            text += " → left alone (report-only)"
        elif self.dry_run:
            text += f" → {c['would_cancel'] if verb == 'cancelled' else c['would_adopt']} would be {verb}"
        else:
            text += f" → {c[verb]} {verb}, {c['failed']} failed"
            if c["skipped"]:
                text += f", {c['skipped']} skipped"
        pending = sum(1 for i, _ in self.actionable() if i not in self.outcomes)
        if pending:
            text += f", {pending} not attempted"
        unadoptable = sum(1 for d in self.decisions if d.kind == "orphan" and d.action == "report") \
            if self.policy == "adopt" else 0
        if unadoptable:
            text += f", {unadoptable} could not be adopted"
        if c["missing"]:
            text += f"; {c['missing']} journal order{'s' if c['missing'] != 1 else ''} missing at the venue"
        if self.errors:
            text += f"; {_plural(len(self.errors), 'error')}"
        return text

    def epoch_label(self, decision: Decision) -> str:
        """Who placed the order: ``epoch 7 (an earlier primary)``, ``epoch 8 (this primary)``,
        ``epoch unknown`` (a journal record without ``epoch``), ``not in the journal`` (an orphan)."""
        if decision.kind == "orphan":
            return "not in the journal"
        if decision.epoch is None:
            return "epoch unknown"
        if self.epoch is not None and decision.epoch == self.epoch:
            return f"epoch {decision.epoch} (this primary)"
        if self.epoch is not None and decision.epoch < self.epoch:
            return f"epoch {decision.epoch} (an earlier primary)"
        return f"epoch {decision.epoch}"

    def by_epoch(self) -> dict[str, dict[str, int]]:
        """The venue's and the journal's orders grouped by the epoch that placed them: label ->
        kind -> count; known epochs first (ascending), then unknown, then not in the journal."""
        def rank(d: Decision) -> tuple[int, int]:
            if d.kind == "orphan":
                return (2, 0)
            return (0, d.epoch) if d.epoch is not None else (1, 0)

        groups: dict[str, dict[str, int]] = {}
        for decision in sorted(self.decisions, key=rank):
            kinds = groups.setdefault(self.epoch_label(decision), {})
            kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
        return groups

    def epoch_line(self) -> str | None:
        """``"  by epoch: epoch 7 (an earlier primary): 2 matched, 1 missing; not in the journal: 1 orphan"``."""
        groups = self.by_epoch()
        if not groups:
            return None
        words = {"matched": ("matched", "matched"), "mismatch": ("mismatched", "mismatched"),
                 "missing": ("missing", "missing"), "orphan": ("orphan", "orphans")}
        parts = []
        for label, kinds in groups.items():
            counts = ", ".join(f"{n} {words[k][0] if n == 1 else words[k][1]}"
                               for k, n in sorted(kinds.items(), key=lambda kv: KIND_ORDER.index(kv[0])))
            parts.append(f"{label}: {counts}")
        return "  by epoch: " + "; ".join(parts)

    def lines(self) -> list[str]:
        """The human report: the summary, one line per decision, then positions, errors, the
        orders by the epoch that placed them, and where and when it ran."""
        out = [self.summary()]
        for i, decision in enumerate(self.decisions):
            out.append("  " + decision.line(self.outcomes.get(i)))
        for position in self.positions:
            out.append("  position: " + _describe_position(position))
        for error in self.errors:
            out.append("  error: " + " ".join(str(error).split()))
        epochs = self.epoch_line()
        if epochs is not None:
            out.append(epochs)
        started = _dt.datetime.fromtimestamp(self.started_at, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        took = (f", took {self.finished_at - self.started_at:.1f} s" if self.finished_at is not None else
                ", not finished")
        out.append(f"  node {self.node}, epoch {self.epoch if self.epoch is not None else '-'}, "
                   f"started {started}{took}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every field, ``counts``, each decision with its ``outcome``."""
        return {
            "venue": self.venue, "policy": self.policy, "dry_run": self.dry_run, "node": self.node,
            "epoch": self.epoch, "started_at": self.started_at, "finished_at": self.finished_at,
            "counts": self.counts(), "by_epoch": self.by_epoch(),
            "decisions": [{**d.to_dict(), "outcome": self.outcomes.get(i), "placed_by": self.epoch_label(d)}
                          for i, d in enumerate(self.decisions)],
            "positions": _jsonable(self.positions),
            "errors": list(self.errors),
            "outcomes": {str(i): o for i, o in sorted(self.outcomes.items())},
        }


def _describe_position(position: dict[str, Any]) -> str:
    if not isinstance(position, dict):
        return " ".join(str(position).split())[:200]
    parts = [str(position.get("symbol") or "?"), str(position.get("side") or "?")]
    for key in ("contracts", "entryPrice", "unrealizedPnl", "liquidationPrice"):
        value = position.get(key)
        if value is not None:
            parts.append(f"{key} {value}")
    return " ".join(parts)
