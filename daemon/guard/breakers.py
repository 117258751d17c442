"""The brief's four circuit breakers (sans-IO, no trio): figures, trips, recoveries, responses.

Each breaker turns what lifeline sees into one *figure* over a sliding *window*, and a
:class:`BreakerMachine` judges that figure against a *threshold* with a *recovery time*:

===========================  ==========================================================  =========
breaker                      figure over the last ``window`` seconds                     defaults
===========================  ==========================================================  =========
``market_volatility``        per symbol: (highest - lowest) / lowest price seen in the   0.05, 300 s
                             engine's ``mark`` records (any venue; the worst venue wins)
``execution_failure_rate``   rejected + expired / all order records that *ended* (state   0.02, 180 s
                             filled, cancelled, rejected, expired) in the window; judged
                             only once ``min_orders`` (default 20) ended — 1 of 3 is not
                             a rate
``venue_unavailability``     time-weighted share of venue x uplink paths ``down``        0.10, 600 s
``system_load``              time-weighted mean of the host's load (the larger of CPU    0.90, 120 s
                             busy and memory used fractions, daemon/system.py's samples)
===========================  ==========================================================  =========

The machine's rule (:class:`BreakerMachine`), exactly:

* ``closed``: a figure strictly **above** the threshold trips it (``tripped``). A figure
  exactly at the threshold does not (as in daemon/system.py: "over" is ``>``).
* ``tripped``: a figure at or below the *recover level* ``threshold * (1 - hysteresis)``
  starts a clear run (``recovering``); anything above the recover level (the band between
  the two levels included) keeps or puts it back in ``tripped`` and ends the run.
* ``recovering`` → ``closed`` once the clear run has lasted ``recovery`` seconds (every
  figure judged in it at or below the recover level). The run starts after the trip, so a
  trip always holds at least ``recovery`` seconds; a figure hovering at the threshold never
  flaps (hysteresis 0.2 by default: 0.05 trips above 0.05 and recovers at or below 0.04).

Times are Unix seconds given by the caller (``now``), the same clock as the guard records'
``until``; the shell ticks the machines about once a second, and every tick re-judges the
figures (a windowed figure falls as old samples leave the window). Feeding times that go
backwards raises ``ValueError``; a sample timed before an earlier one of the same source
counts as at that earlier time.

Responses (:class:`Action`): ``pause`` (``risk.pause`` on the breaker's scopes),
``throttle`` (``risk.throttle``, every venue), ``kill`` (the kill switch on the scopes;
undone only by a person: ``lifeline unkill``) or ``none`` (the events only). A pause or a
throttle is written with ``until`` = the earliest time the breaker can recover (the clear
run's start, or now, plus ``recovery``) and renewed while it stays tripped, when less than
``renew_margin`` is left; so it ends by itself when the breaker recovers, and a breaker
never lifts a block an operator set (no ``resume`` / ``unthrottle`` records are written).
The blocks hold one throttle at a time (:class:`daemon.guard.blocks.TradingBlocks`): when
two breakers throttle, each record carries the lowest rate and burst and the latest
``until`` of all the tripped throttling breakers, so the later record never shortens the
earlier one.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Literal, Mapping

from daemon.core.breaker import EPSILON as _EPSILON, BreakerMachine, BreakerState
from daemon.guard.blocks import Scope

__all__ = ["BREAKERS", "Action", "BreakerMachine", "BreakerSpec", "BreakerState", "Breakers", "FailureRate",
           "PriceRange", "Response", "TimeMean", "Transition", "parse_mark"]

BREAKERS = ("market_volatility", "execution_failure_rate", "venue_unavailability", "system_load")

Response = Literal["pause", "throttle", "kill", "none"]

#: Order states that end an order, and those of them that count as failures.
ENDED_STATES = frozenset({"filled", "cancelled", "rejected", "expired"})
FAILED_STATES = frozenset({"rejected", "expired"})

@dataclass(frozen=True)
class BreakerSpec:
    """One breaker's figures, from ``[guard.breakers.NAME]``."""

    name: str
    threshold: float
    window: float
    recovery: float
    hysteresis: float = 0.2
    response: Response = "none"
    min_orders: int = 20  # execution_failure_rate only
    throttle_rate: float = 2.0
    throttle_burst: float = 5.0

    def __post_init__(self) -> None:
        if self.name not in BREAKERS:
            raise ValueError(f"{self.name!r} is not a breaker (they are {', '.join(BREAKERS)})")
        if not (self.threshold > 0 and self.window > 0 and self.recovery >= 0 and 0 <= self.hysteresis < 1):
            raise ValueError(f"{self.name}: threshold and window must be above 0, recovery at least 0, "
                             "hysteresis from 0 to below 1")

    @property
    def recover_level(self) -> float:
        return self.threshold * (1.0 - self.hysteresis)


# ----------------------------------------------------------------------------- figures


class PriceRange:
    """(highest - lowest) / lowest of the prices seen in the last ``window`` seconds
    (sliding max and min in monotonic deques: O(1) amortised per price)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._max: deque[tuple[float, float]] = deque()
        self._min: deque[tuple[float, float]] = deque()
        self._last_t = -math.inf
        self.count = 0

    def add(self, price: float, t: float) -> None:
        t = max(t, self._last_t)
        self._last_t = t
        while self._max and self._max[-1][1] <= price:
            self._max.pop()
        self._max.append((t, price))
        while self._min and self._min[-1][1] >= price:
            self._min.pop()
        self._min.append((t, price))
        self.count += 1

    def figure(self, now: float) -> float:
        start = now - self.window
        for q in (self._max, self._min):
            while q and q[0][0] < start:
                q.popleft()
        if not self._max:
            return 0.0
        high, low = self._max[0][1], self._min[0][1]
        return (high - low) / low

    def empty(self) -> bool:
        return not self._max


class FailureRate:
    """Failed / ended orders in the last ``window`` seconds; 0 below ``min_orders`` ended."""

    def __init__(self, window: float, min_orders: int) -> None:
        self.window = window
        self.min_orders = min_orders
        self._ends: deque[tuple[float, bool]] = deque()
        self._failed = 0
        self._last_t = -math.inf

    def add(self, failed: bool, t: float) -> None:
        t = max(t, self._last_t)
        self._last_t = t
        self._ends.append((t, failed))
        self._failed += failed

    def counts(self, now: float) -> tuple[int, int]:
        start = now - self.window
        while self._ends and self._ends[0][0] < start:
            _, failed = self._ends.popleft()
            self._failed -= failed
        return self._failed, len(self._ends)

    def figure(self, now: float) -> float:
        failed, ended = self.counts(now)
        if ended < max(self.min_orders, 1):
            return 0.0
        return failed / ended


class TimeMean:
    """The time-weighted mean of a piecewise-constant value over the last ``window``
    seconds. Time before the first value counts as 0 (not loaded, nothing down): a daemon
    that just started judges a whole window's worth, so one busy sample at start (its own
    start-up) cannot trip a breaker."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._steps: deque[tuple[float, float]] = deque()  # (since, value), ascending

    def set(self, value: float, t: float) -> None:
        if self._steps:
            t = max(t, self._steps[-1][0])
            if self._steps[-1][1] == value:
                return
            if self._steps[-1][0] == t:
                self._steps.pop()
        self._steps.append((t, value))

    def figure(self, now: float) -> float:
        steps = self._steps
        if not steps:
            return 0.0
        start = now - self.window
        while len(steps) > 1 and steps[1][0] <= start:
            steps.popleft()
        total = 0.0
        for i, (since, value) in enumerate(steps):
            end = steps[i + 1][0] if i + 1 < len(steps) else now
            a, b = max(since, start), min(end, now)
            if b > a:
                total += (b - a) * value
        return total / self.window


# ----------------------------------------------------------------------------- records


def _decimal_price(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    if not price.is_finite() or price <= 0:
        return None
    return float(price)


def parse_mark(payload: bytes) -> tuple[str, str, float, float] | None:
    """``(venue, symbol, price, time)`` of a market-data record
    ``{"record":"mark","v":1,"venue":V,"symbol":S,"price":"decimal","time":unix}``;
    ``None`` for any other payload or a mark that breaks the format (not judged)."""
    raw = bytes(payload)
    if b'"mark"' not in raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record") != "mark" or data.get("v") != 1:
        return None
    venue, symbol, t = data.get("venue"), data.get("symbol"), data.get("time")
    price = _decimal_price(data.get("price"))
    if not isinstance(venue, str) or not isinstance(symbol, str) or price is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return None
    return venue, symbol, price, float(t)


def _order_end(payload: bytes) -> str | None:
    """The closed state of an order record (``filled``, ... ``expired``), else ``None``."""
    raw = bytes(payload)
    if b'"order"' not in raw or not any(s.encode() in raw for s in ENDED_STATES):
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record") != "order":
        return None
    state = data.get("state")
    return state if state in ENDED_STATES else None


# ----------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class Transition:
    """A breaker (or, for market_volatility, one symbol of it) tripped or recovered."""

    breaker: str
    change: Literal["tripped", "recovered"]
    subject: str | None
    figure: float
    threshold: float
    at: float
    reason: str
    held_s: float = 0.0  # for a recovery: how long it was tripped


@dataclass(frozen=True)
class Action:
    """A response to carry out (through the shell's GuardActions)."""

    kind: Literal["pause", "throttle", "kill"]
    breaker: str
    scope: Scope
    reason: str
    until: float | None = None
    rate: float | None = None
    burst: float | None = None

    @property
    def by(self) -> str:
        return f"breaker:{self.breaker}"


@dataclass
class _Responding:
    """What one tripped (breaker, subject) has written: scope → until (None: a kill)."""

    written: dict[Scope, float | None] = field(default_factory=dict)


class Breakers:
    """The four breakers: feed them (``observe_*``), :meth:`tick` them, carry out
    :meth:`actions`, show :meth:`snapshot`."""

    def __init__(self, specs: Mapping[str, BreakerSpec], *, renew_margin: float = 30.0) -> None:
        self.specs = dict(specs)
        self.renew_margin = renew_margin
        vol = self.specs["market_volatility"]
        self._prices: dict[tuple[str, str], PriceRange] = {}
        self._volatility: dict[str, BreakerMachine] = {}
        self._vol_figures: dict[str, float] = {}
        fail = self.specs["execution_failure_rate"]
        self.failures = FailureRate(fail.window, fail.min_orders)
        self._paths: dict[tuple[str, str], str] = {}
        self.unavailable = TimeMean(self.specs["venue_unavailability"].window)
        self.load = TimeMean(self.specs["system_load"].window)
        self.machines: dict[str, BreakerMachine] = {
            name: BreakerMachine(spec.threshold, spec.recovery, spec.hysteresis)
            for name, spec in self.specs.items() if name != "market_volatility"}
        self._vol_spec = vol
        self._responding: dict[tuple[str, str | None], _Responding] = {}
        self.last_now: float | None = None
        self.transitions: list[Transition] = []  # the last few, for status
        self.marks = 0
        self.ended = 0

    # -- inputs

    def observe_mark(self, venue: str, symbol: str, price: float, t: float) -> None:
        key = (venue, symbol)
        series = self._prices.get(key)
        if series is None:
            series = self._prices[key] = PriceRange(self._vol_spec.window)
        series.add(price, t)
        self.marks += 1

    def observe_order_end(self, state: str, t: float) -> None:
        if state in ENDED_STATES:
            self.failures.add(state in FAILED_STATES, t)
            self.ended += 1

    def observe_payload(self, payload: bytes, t: float) -> None:
        """One journal payload appended at ``t`` (its ``timestamp_ns`` / 1e9): a mark record,
        an order record that ends an order, or anything else. Both are timed by ``t``, the
        primary's clock, not by the engine's ``time``: a mark stamped far in the future
        would otherwise stay in the window (and hold the breaker) until then."""
        mark = parse_mark(payload)
        if mark is not None:
            venue, symbol, price, _engine_time = mark
            self.observe_mark(venue, symbol, price, t)
            return
        state = _order_end(payload)
        if state is not None:
            self.observe_order_end(state, t)

    def observe_paths(self, paths: Iterable[tuple[str, str, str]], t: float) -> None:
        """The venue x uplink matrix now: ``(venue, uplink, state)`` for every path."""
        self._paths = {(venue, uplink): state for venue, uplink, state in paths}
        total = len(self._paths)
        down = sum(1 for state in self._paths.values() if state == "down")
        self.unavailable.set(down / total if total else 0.0, t)

    def observe_load(self, figure: float, t: float) -> None:
        if math.isfinite(figure):
            self.load.set(min(max(figure, 0.0), 1.0), t)

    def venues_down(self) -> list[str]:
        """Venues with every known path down (the engine already routes away from them)."""
        venues: dict[str, bool] = {}
        for (venue, _uplink), state in self._paths.items():
            venues[venue] = venues.get(venue, True) and state == "down"
        return sorted(v for v, down in venues.items() if down)

    # -- judging

    def figures(self, now: float) -> dict[str, float]:
        self._vol_figures = {}
        for (venue, symbol), series in list(self._prices.items()):
            value = series.figure(now)
            if series.empty():
                del self._prices[(venue, symbol)]
                continue
            self._vol_figures[symbol] = max(value, self._vol_figures.get(symbol, 0.0))
        return {
            "market_volatility": max(self._vol_figures.values(), default=0.0),
            "execution_failure_rate": self.failures.figure(now),
            "venue_unavailability": self.unavailable.figure(now),
            "system_load": self.load.figure(now),
        }

    def tick(self, now: float) -> list[Transition]:
        if self.last_now is not None and now < self.last_now:
            raise ValueError(f"time went backwards: {now} after {self.last_now}")
        self.last_now = now
        figures = self.figures(now)
        out: list[Transition] = []
        spec = self._vol_spec
        for symbol in sorted(set(self._vol_figures) | set(self._volatility)):
            machine = self._volatility.get(symbol)
            if machine is None:
                machine = self._volatility[symbol] = BreakerMachine(spec.threshold, spec.recovery, spec.hysteresis)
            tripped_at = machine.tripped_at
            change = machine.step(self._vol_figures.get(symbol, 0.0), now)
            if change is not None:
                out.append(self._transition(spec, change, symbol, machine, now, tripped_at))
            if not machine.tripped and symbol not in self._vol_figures:
                del self._volatility[symbol]
        for name, machine in self.machines.items():
            tripped_at = machine.tripped_at
            change = machine.step(figures[name], now)
            if change is not None:
                out.append(self._transition(self.specs[name], change, None, machine, now, tripped_at))
        for t in out:
            if t.change == "recovered":
                self._responding.pop((t.breaker, t.subject), None)
        self.transitions = (self.transitions + out)[-20:]
        return out

    def _transition(self, spec: BreakerSpec, change: Literal["tripped", "recovered"], subject: str | None,
                    machine: BreakerMachine, now: float, tripped_at: float | None) -> Transition:
        what = f"{spec.name}{f' {subject}' if subject else ''}"
        figure = machine.figure
        if change == "tripped":
            reason = (f"{what} {figure:.4g} > {spec.threshold:g} over {_seconds(spec.window)}"
                      f"{self._detail(spec.name, now)}")
            return Transition(spec.name, change, subject, figure, spec.threshold, now, reason)
        held = now - (tripped_at if tripped_at is not None else now)
        reason = (f"{what} at or below {spec.recover_level:.4g} for {_seconds(spec.recovery)} "
                  f"(tripped {_seconds(held)})")
        return Transition(spec.name, change, subject, figure, spec.threshold, now, reason, held_s=held)

    def _detail(self, name: str, now: float) -> str:
        if name == "execution_failure_rate":
            failed, ended = self.failures.counts(now)
            return f" ({failed} of {ended} ended orders rejected or expired)"
        if name == "venue_unavailability":
            down = [f"{v}/{u}" for (v, u), s in sorted(self._paths.items()) if s == "down"]
            return f" (down now: {', '.join(down) or 'none'} of {len(self._paths)} paths)"
        return ""

    # -- responses

    def _scopes(self, breaker: str, subject: str | None) -> list[Scope]:
        if breaker == "market_volatility":
            return [Scope(symbol=subject)]
        if breaker == "venue_unavailability":
            return [Scope(venue=v) for v in self.venues_down()]
        return [Scope()]

    def tripped(self) -> list[tuple[str, str | None, BreakerMachine]]:
        out: list[tuple[str, str | None, BreakerMachine]] = [
            ("market_volatility", symbol, m) for symbol, m in sorted(self._volatility.items()) if m.tripped]
        out += [(name, None, m) for name, m in self.machines.items() if m.tripped]
        return out

    def actions(self, now: float) -> list[Action]:
        """The responses due at ``now``: a tripped breaker's first pause / throttle / kill on
        every scope it covers, and the renewal of a pause or throttle with less than
        ``renew_margin`` left (or that ends before the breaker can recover). Call
        :meth:`done` for each one carried out; one not done is offered again next time."""
        out: list[Action] = []
        throttling = [(self.specs[n], m) for n, _s, m in self.tripped() if self.specs[n].response == "throttle"]
        # One throttle slot: whoever writes it writes the strictest rate and the latest end of all.
        throttle_until = max((m.hold_until(now) for _, m in throttling), default=0.0)
        rate = min((spec.throttle_rate for spec, _ in throttling), default=0.0)
        burst = min((spec.throttle_burst for spec, _ in throttling), default=0.0)
        for name, subject, machine in self.tripped():
            spec = self.specs[name]
            if spec.response == "none":
                continue
            written = self._responding.setdefault((name, subject), _Responding()).written
            until = machine.hold_until(now)
            what = f"{name}{f' {subject}' if subject else ''}"
            reason = f"circuit breaker {what} tripped ({machine.figure:.4g} > {spec.threshold:g})"
            for scope in self._scopes(name, subject) if spec.response != "throttle" else [Scope()]:
                if spec.response == "kill":
                    if scope not in written:
                        out.append(Action("kill", name, scope, reason))
                    continue
                last = written.get(scope, -math.inf)
                assert last is not None
                margin = min(self.renew_margin, spec.recovery / 4)
                if last - now > margin or last >= until - _EPSILON:
                    continue
                if spec.response == "pause":
                    out.append(Action("pause", name, scope, reason, until=until))
                else:
                    out.append(Action("throttle", name, scope, reason, until=throttle_until, rate=rate, burst=burst))
        return out

    def done(self, action: Action, subject: str | None = None) -> None:
        """``action`` was carried out (written to the journal / the kill switch ran)."""
        if subject is None and action.breaker == "market_volatility":
            subject = action.scope.symbol
        entry = self._responding.get((action.breaker, subject))
        if entry is not None:
            entry.written[action.scope] = action.until

    # -- reporting

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = self.last_now if now is None else now
        figures = self.figures(now) if now is not None else {name: 0.0 for name in BREAKERS}
        out: dict[str, Any] = {}
        for name in BREAKERS:
            spec = self.specs[name]
            entry: dict[str, Any] = {
                "figure": figures[name], "threshold": spec.threshold, "recover_level": spec.recover_level,
                "window_s": spec.window, "recovery_s": spec.recovery, "response": spec.response}
            if name == "market_volatility":
                tripped = {s: m for s, m in self._volatility.items() if m.tripped}
                state = BreakerState.CLOSED
                if tripped:
                    state = (BreakerState.TRIPPED if any(m.state is BreakerState.TRIPPED for m in tripped.values())
                             else BreakerState.RECOVERING)
                entry["symbols"] = {s: {"state": m.state.value, "figure": m.figure, "since": m.tripped_at}
                                    for s, m in sorted(tripped.items())}
                entry["state"] = state.value
                entry["trips"] = sum(m.trips for m in self._volatility.values())
            else:
                machine = self.machines[name]
                entry["state"] = machine.state.value
                entry["since"] = machine.tripped_at if machine.tripped else None
                entry["trips"] = machine.trips
                if machine.tripped and now is not None:
                    entry["recovers_at_earliest"] = machine.hold_until(now)
            if name == "execution_failure_rate" and now is not None:
                failed, ended = self.failures.counts(now)
                entry.update(failed=failed, ended=ended, min_orders=spec.min_orders)
            if name == "venue_unavailability":
                entry["paths"] = len(self._paths)
                entry["venues_down"] = self.venues_down()
            out[name] = entry
        return out


def _seconds(value: float) -> str:
    rounded = round(value, 1)
    return f"{int(rounded)}s" if rounded == int(rounded) else f"{rounded:.1f}s"
