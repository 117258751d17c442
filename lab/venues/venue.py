"""What every emulated venue shares (sans-IO): its open and cancelled orders, its fault,
its request counters, its dead-man timer and the routing of a request to a handler.

Handlers take the parsed request and ``now`` (wall and trio clock, read once by the
server) and return a :class:`~lab.venues.messages.Response`; they do no I/O."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from daemon.core.log import get_logger
from lab.venues.faults import OK, Fault
from lab.venues.messages import InputError, Request, Response

log = get_logger("venue_emulator")

#: The emulated venues (their modules: lab/venues/kraken.py, coinbase.py).
VENUES = ("kraken", "coinbase")
#: Distinct paths counted per venue; more are counted under "(other)".
MAX_COUNTED_PATHS = 256


@dataclass(frozen=True)
class Now:
    """The time a request is handled at: ``wall`` (Unix seconds, for answers and order
    timestamps) and ``mono`` (trio's clock, for the dead-man timer; MockClock in tests)."""

    wall: float
    mono: float


def iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def simple_order(spec: Mapping[str, Any], symbols: Any, venue: str) -> tuple[str, str, str]:
    """The checked symbol, side and amount of an order given in the simple form."""
    unknown = set(spec) - {"id", "symbol", "side", "amount", "price", "type", "client_order_id"}
    if unknown:
        raise InputError(f"{min(unknown)}: unknown field; use id, symbol, side, amount, price, type, "
                         f"client_order_id (or raw)")
    symbol = spec.get("symbol")
    if symbol not in symbols:
        raise InputError(f"symbol: {symbol!r} is not an emulated {venue} market; use one of "
                         f"{', '.join(symbols)} (or pass a raw order)")
    side = spec.get("side")
    if side not in ("buy", "sell"):
        raise InputError(f"side: {side!r}; use \"buy\" or \"sell\"")
    return str(symbol), str(side), decimal_text(spec.get("amount"), "amount")


def decimal_text(value: Any, field_name: str, *, positive: bool = True) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{field_name}: expected a decimal number, found {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise InputError(f"{field_name}: {value!r} is not a decimal number") from None
    if not number.is_finite() or (positive and number <= 0):
        raise InputError(f"{field_name}: {value!r} must be a finite number > 0")
    return format(number.normalize(), "f")

Handler = Callable[[Request, Now], Response]


@dataclass
class Deadman:
    """A venue's cancel-all-after timer (Kraken CancelAllOrdersAfter)."""

    timeout: float = 0.0
    deadline: float | None = None       # trio time; None = disarmed
    trigger_wall: float | None = None   # wall clock, for humans and the venue's answer
    arms: int = 0
    fired: int = 0
    last_fired_wall: float | None = None
    cancelled: int = 0                  # orders cancelled by the switch, all firings

    def to_dict(self, now: float | None) -> dict[str, Any]:
        """As the state shows it; ``now`` is trio's clock (None outside trio)."""
        return {"armed": self.deadline is not None, "timeout": self.timeout,
                "trigger_time": iso(self.trigger_wall) if self.deadline is not None and self.trigger_wall else None,
                "trigger_in": (max(0.0, self.deadline - now) if self.deadline is not None and now is not None
                               else None),
                "arms": self.arms, "fired": self.fired,
                "last_fired": iso(self.last_fired_wall) if self.last_fired_wall else None,
                "cancelled": self.cancelled}

    def arm(self, timeout: float, now: Now) -> None:
        """Trigger ``timeout`` seconds after ``now`` (0 disarms)."""
        self.timeout = float(timeout)
        if timeout > 0:
            self.deadline = now.mono + timeout
            self.trigger_wall = now.wall + timeout
            self.arms += 1
        else:
            self.deadline = None
            self.trigger_wall = None

    def due(self, mono: float) -> bool:
        return self.deadline is not None and self.deadline <= mono


class Venue:
    """Common state of one emulated venue: orders, fault, counters."""

    name = ""
    #: Whether the venue has a cancel-all-after timer (Kraken's CancelAllOrdersAfter).
    has_deadman = False

    def __init__(self, recorded: dict[str, list[dict[str, Any]]], api_key: str | None) -> None:
        self.recorded = recorded
        self.api_key = api_key
        self.fault = OK
        self.system_status = "online"
        self.orders: dict[str, dict[str, Any]] = {}
        self.cancelled: list[dict[str, Any]] = []
        self.deadman = Deadman()
        self.requests_total = 0
        self.faulted = 0
        self.by_path: dict[str, int] = {}
        self.last_source: str | None = None
        self.routes: list[tuple[frozenset[str], str, Handler, bool]] = []
        self.reset_orders()

    # subclass API
    def seed_orders(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def order_from_spec(self, spec: Mapping[str, Any], now: float) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def summary(self, order_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def mark_cancelled(self, raw: dict[str, Any], now: float) -> dict[str, Any]:
        raise NotImplementedError

    def error_response(self, fault: Fault) -> Response:
        raise NotImplementedError

    def exchange_error_response(self, fault: Fault) -> Response:
        raise NotImplementedError

    def auth_error(self) -> Response:
        raise NotImplementedError

    def not_found(self, request: Request) -> Response:
        raise NotImplementedError

    def presented_key(self, request: Request) -> str | None:
        raise NotImplementedError

    # shared behaviour
    def reset_orders(self) -> None:
        self.orders = self.seed_orders()
        self.cancelled = []

    def count(self, request: Request, source: str | None) -> None:
        self.requests_total += 1
        key = request.path if (request.path in self.by_path or len(self.by_path) < MAX_COUNTED_PATHS) else "(other)"
        self.by_path[key] = self.by_path.get(key, 0) + 1
        self.last_source = source

    def add_orders(self, specs: Sequence[Mapping[str, Any]], now: float, replace: bool = False) -> list[str]:
        if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence):
            raise InputError("orders: expected a list of orders")
        made = []
        for index, spec in enumerate(specs):
            if not isinstance(spec, Mapping):
                raise InputError(f"orders[{index}]: expected an object")
            try:
                made.append(self.order_from_spec(spec, now))
            except ValueError as exc:
                raise InputError(f"orders[{index}].{exc}") from None
        if replace:
            self.orders = {}
        for order_id, raw in made:
            self.orders[order_id] = raw
        return [order_id for order_id, _ in made]

    def cancel(self, order_id: str, by: str, now: float) -> bool:
        raw = self.orders.pop(order_id, None)
        if raw is None:
            return False
        self.cancelled.append({"id": order_id, "by": by, "at": iso(now), "at_ts": now,
                               "raw": self.mark_cancelled(raw, now)})
        log.debug("venue_emulator.order_cancelled", venue=self.name, id=order_id, by=by)
        return True

    def cancel_all(self, by: str, now: float) -> int:
        ids = list(self.orders)
        for order_id in ids:
            self.cancel(order_id, by, now)
        return len(ids)

    def fire_deadman(self, now: Now) -> int | None:
        """If the dead-man timer is due: cancel every open order, disarm, and return how
        many were cancelled; None if it is not due."""
        deadman = self.deadman
        if not self.has_deadman or not deadman.due(now.mono):
            return None
        count = self.cancel_all("deadman", now.wall)
        deadman.deadline = None
        deadman.trigger_wall = None
        deadman.fired += 1
        deadman.cancelled += count
        deadman.last_fired_wall = now.wall
        return count

    def route(self, request: Request, now: Now) -> Response:
        for methods, path, handler, private in self.routes:
            if path.endswith("*"):
                matched = request.path.startswith(path[:-1]) and len(request.path) > len(path) - 1
            else:
                matched = request.path == path
            if not matched:
                continue
            if request.method not in methods:
                continue
            if private and self.api_key is not None and self.presented_key(request) != self.api_key:
                log.debug("venue_emulator.auth_failed", venue=self.name, path=request.path)
                return self.auth_error()
            return handler(request, now)
        log.warning("venue_emulator.unknown_path", venue=self.name, method=request.method, path=request.path)
        return self.not_found(request)

    def state(self, now: float | None) -> dict[str, Any]:
        return {
            "fault": self.fault.to_dict(),
            "system_status": self.system_status,
            "orders": [dict(self.summary(i, raw), raw=raw) for i, raw in self.orders.items()],
            "cancelled": [dict(self.summary(c["id"], c["raw"]), by=c["by"], at=c["at"], at_ts=c.get("at_ts"))
                          for c in self.cancelled],
            "deadman": self.deadman.to_dict(now) if self.has_deadman else None,
            "requests": {"total": self.requests_total, "faulted": self.faulted, "by_path": dict(self.by_path)},
            "last_source": self.last_source,
        }




def venue_for_path(path: str) -> str | None:
    if path.startswith("/0/"):
        return "kraken"
    if path.startswith(("/v2/", "/api/v3/")):
        return "coinbase"
    return None
