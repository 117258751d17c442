"""The kill switch's plan and report, one venue at a time (sans-IO, no trio).

A kill on a :class:`~daemon.guard.blocks.Scope` cancels every open order on that scope at
every venue it covers. For one venue, :class:`VenueKill` decides which requests to send
and when the venue is clear; :class:`daemon.guard.killswitch.KillSwitch` sends them.

The requests (:class:`Cancel`, :class:`Fetch`) go through *every* usable uplink at once,
each uplink running the same script (:meth:`VenueKill.first_wave`, then a fetch, then
:meth:`VenueKill.on_fetch` until :attr:`VenueKill.finished`): the first answer from any
uplink counts, a duplicate that arrives second finds the order gone ("not found" counts
as cancelled), and a path that hangs (a fibre cut at the moment of the kill) costs
nothing. Sending the same request down every path is also what keeps a venue that wants
increasing nonces per key (Kraken) safe: a request rejected for its nonce on one path is
the same request another path delivered.

1. The first wave, before anything is fetched: the venue's cancel-all when it has one and
   the scope is the whole venue (Kraken ``CancelAll`` cancels every order of the key,
   whatever the symbol, so never for a scope narrowed to one symbol), and the cancels by
   venue order id of every order the journal says is open on the scope (one batch where
   the venue has a batch cancel, else one by one).
2. A fetch of the venue's open orders; any order on the scope it still shows is cancelled
   by id (again, if it was sent before: a cancel may be lost) and the orders fetched again.
3. The venue is *clear* at the first fetch, from any path, that shows no order on the
   scope; at the deadline, what the last fetch showed is *left open*.

The report (:meth:`VenueKill.report`): ``cancelled`` is the sum, over every answered
request, of the orders that request cancelled (the venue cancels an order once, so nothing
is counted twice: a by-id cancel answered "done" cancelled one, a cancel-all says how many);
``already_gone`` the orders known open (journal or a fetch) that were neither cancelled by
us nor left open (filled, expired or cancelled by someone else first); ``left_open`` their
ids; ``errors`` one line per failed request; ``clear_ms`` from the kill to the clear fetch.
All times are the caller's ``now`` (seconds, any monotonic clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.guard.blocks import Scope

__all__ = ["Cancel", "CancelResult", "Fetch", "KnownOrder", "VenueFeatures", "VenueKill", "VenueKillReport",
           "format_report", "open_on_scope"]


@dataclass(frozen=True)
class KnownOrder:
    """An order the journal (or the venue) says is open: the venue's id and its symbol."""

    venue_order_id: str
    symbol: str | None = None
    client_order_id: str | None = None


@dataclass(frozen=True)
class VenueFeatures:
    """What the venue's API offers (ccxt's ``has``)."""

    cancel_all: bool = False       # cancelAllOrders
    cancel_batch: bool = False     # cancelOrders (by a list of ids)


@dataclass(frozen=True)
class Cancel:
    """One cancel request: ``all`` (the venue's cancel-all), or by ids (a batch of one or more;
    ``batch`` False means one id per request)."""

    kind: Literal["all", "ids"]
    ids: tuple[str, ...] = ()
    symbol: str | None = None      # the symbol of a one-id cancel (ccxt wants it for some venues)
    batch: bool = False

    def describe(self) -> str:
        if self.kind == "all":
            return "cancel-all"
        if self.batch:
            return f"cancel {len(self.ids)} by id (batch)"
        return f"cancel {self.ids[0]}"


@dataclass(frozen=True)
class Fetch:
    """Fetch the venue's open orders."""


@dataclass(frozen=True)
class CancelResult:
    """What a cancel request's answer says: how many orders it cancelled (``None``: the
    venue did not say), the ids the venue said it does not know, or an error."""

    cancelled: int | None = None
    not_found: tuple[str, ...] = ()
    error: str | None = None


def open_on_scope(orders: Iterable[Mapping[str, Any]], scope: Scope) -> dict[str, KnownOrder]:
    """The orders of a ccxt ``fetch_open_orders`` answer that are open and on ``scope``
    (its symbol, when it names one), by venue order id. Orders without an id are skipped
    (nothing can cancel them by id)."""
    out: dict[str, KnownOrder] = {}
    for order in orders:
        if not isinstance(order, Mapping):
            continue
        order_id = order.get("id")
        if order_id is None or order_id == "":
            continue
        status = order.get("status")
        if status not in (None, "open"):
            continue
        symbol = order.get("symbol")
        symbol = str(symbol) if symbol is not None else None
        if scope.symbol is not None and symbol != scope.symbol:
            continue
        client_id = order.get("clientOrderId")
        out[str(order_id)] = KnownOrder(str(order_id), symbol, str(client_id) if client_id else None)
    return out


@dataclass
class VenueKillReport:
    venue: str
    scope: str
    paths: list[str]
    cancelled: int
    already_gone: int
    left_open: list[str]
    errors: list[str]
    clear_ms: float | None
    requests: int
    cancel_all: bool

    @property
    def clear(self) -> bool:
        return self.clear_ms is not None

    def to_dict(self) -> dict[str, Any]:
        return {"venue": self.venue, "scope": self.scope, "paths": list(self.paths), "cancelled": self.cancelled,
                "already_gone": self.already_gone, "left_open": list(self.left_open), "errors": list(self.errors),
                "clear": self.clear, "clear_ms": None if self.clear_ms is None else round(self.clear_ms, 1),
                "requests": self.requests, "cancel_all": self.cancel_all}


@dataclass
class VenueKill:
    """The kill at one venue: what to send, what the answers mean, when it is over."""

    venue: str
    scope: Scope
    journal_open: Sequence[KnownOrder]
    features: VenueFeatures
    started: float
    deadline: float
    paths: list[str] = field(default_factory=list)
    #: Every order known open on the scope (journal, then every fetch), by venue order id.
    known: dict[str, KnownOrder] = field(default_factory=dict)
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)
    last_seen: dict[str, KnownOrder] | None = None
    clear_at: float | None = None
    requests: int = 0
    gave_up: bool = False
    cancel_all_sent: bool = False

    def __post_init__(self) -> None:
        if self.scope.venue is not None and self.scope.venue != self.venue:
            raise ValueError(f"venue {self.venue!r} is not on the scope {self.scope.describe()}")
        for order in self.journal_open:
            if self.scope.symbol is None or order.symbol == self.scope.symbol:
                self.known.setdefault(order.venue_order_id, order)

    # ---------------------------------------------------------------- the plan

    @property
    def use_cancel_all(self) -> bool:
        """The venue's cancel-all cancels every order of the account: only for a kill of the
        whole venue."""
        return self.features.cancel_all and self.scope.symbol is None

    def _by_id(self, orders: Iterable[KnownOrder]) -> list[Cancel]:
        orders = list(orders)
        if not orders:
            return []
        if self.features.cancel_batch:
            symbols = {o.symbol for o in orders}
            symbol = symbols.pop() if len(symbols) == 1 else None
            return [Cancel("ids", tuple(o.venue_order_id for o in orders), symbol, batch=True)]
        return [Cancel("ids", (o.venue_order_id,), o.symbol) for o in orders]

    def first_wave(self) -> list[Cancel]:
        """What every path sends at once, before any fetch: the cancel-all (whole venue) and
        the cancels of the journal's open orders on the scope. The by-id cancels go even
        with a cancel-all (an order the cancel-all misses, a venue whose cancel-all is
        per market): a duplicate finds the order gone."""
        wave: list[Cancel] = []
        if self.use_cancel_all:
            wave.append(Cancel("all"))
            self.cancel_all_sent = True
        wave += self._by_id(self.known.values())
        return wave

    def on_fetch(self, orders: Iterable[Mapping[str, Any]], now: float) -> list[Cancel]:
        """A fetch's answer (ccxt orders). Returns the cancels to send next (then fetch again),
        or ``[]`` when the kill at this venue is over (:attr:`finished`)."""
        self.requests += 1
        if self.finished:
            return []
        seen = open_on_scope(orders, self.scope)
        self.last_seen = seen
        for order_id, order in seen.items():
            self.known.setdefault(order_id, order)
        if not seen:
            self.clear_at = now
            return []
        if now >= self.deadline:
            self.gave_up = True
            return []
        return self._by_id(seen.values())

    def on_fetch_error(self, path: str, error: str, now: float) -> None:
        self.requests += 1
        self.errors.append(f"{path}: fetch open orders: {error}")
        if now >= self.deadline and not self.finished:
            self.gave_up = True

    def on_cancel(self, path: str, cancel: Cancel, result: CancelResult, now: float) -> None:
        self.requests += 1
        if result.error is not None:
            self.errors.append(f"{path}: {cancel.describe()}: {result.error}")
            return
        if result.cancelled is not None:
            self.cancelled += max(0, result.cancelled)
        elif cancel.kind == "ids":
            # The venue answered "done" without a count: every id it did not say it lacks.
            self.cancelled += len(set(cancel.ids) - set(result.not_found))

    def expire(self, now: float) -> None:
        """The deadline passed (the caller stopped waiting for answers)."""
        if not self.finished:
            self.gave_up = True

    @property
    def finished(self) -> bool:
        return self.clear_at is not None or self.gave_up

    # ---------------------------------------------------------------- the report

    def report(self) -> VenueKillReport:
        left = sorted(self.last_seen) if self.clear_at is None and self.last_seen is not None else []
        if self.clear_at is None and self.last_seen is None:
            # Never fetched: what the journal said is open is all we know to be open.
            left = sorted(self.known)
        already = max(0, len(self.known) - self.cancelled - len(left))
        return VenueKillReport(
            venue=self.venue, scope=self.scope.describe(), paths=list(self.paths), cancelled=self.cancelled,
            already_gone=already, left_open=left, errors=list(self.errors),
            clear_ms=None if self.clear_at is None else max(0.0, (self.clear_at - self.started) * 1000.0),
            requests=self.requests, cancel_all=self.cancel_all_sent)


def format_report(result: Mapping[str, Any]) -> list[str]:
    """The human lines of a ``guard.kill`` answer (the CLI prints them)."""
    lines = [f"KILLED {result.get('scope', '?')}: new orders refused from {result.get('blocked_at_iso', '?')} "
             f"(by {result.get('by', '?')}; reason: {result.get('reason', '?')})"]
    for venue in result.get("venues", []):
        if venue.get("clear"):
            line = f"  {venue['venue']}: cancelled {venue['cancelled']}, left 0, cleared in {venue['clear_ms']:.0f} ms"
        else:
            left = venue.get("left_open") or []
            line = (f"  {venue['venue']}: cancelled {venue['cancelled']}, LEFT OPEN {len(left)}"
                    + (f" ({', '.join(left[:10])}{' ...' if len(left) > 10 else ''})" if left else "")
                    + " — not clear by the deadline: check the venue and cancel by hand")
        notes = []
        if venue.get("already_gone"):
            notes.append(f"{venue['already_gone']} already gone")
        if venue.get("paths"):
            notes.append("via " + ", ".join(venue["paths"]))
        if venue.get("errors"):
            notes.append(f"{len(venue['errors'])} error(s), first: {venue['errors'][0]}")
        lines.append(line + (f" ({'; '.join(notes)})" if notes else ""))
    for skipped in result.get("skipped", []):
        lines.append(f"  {skipped}")
    if not result.get("venues") and not result.get("skipped"):
        lines.append("  no venue with credentials on this scope: nothing to cancel")
    return lines
