"""One circuit breaker as a pure state machine (sans-IO: a figure and ``now`` in, a
transition out): closed → tripped → recovering → closed, with an arming time (``sustain``),
hysteresis (a recover level below the threshold) and a recovery time.

The ground floor's, because two rooms judge with it: the trading guard's four breakers
(:mod:`daemon.guard.breakers`, where the rule is spelt out with their figures) and the
host-health breaker (:mod:`daemon.system`, one machine per host resource).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

__all__ = ["EPSILON", "BreakerMachine", "BreakerState"]

#: Float times stepped by adds (0.1 + 0.1 + ...) must still reach a duration on time.
EPSILON = 1e-9
_EPSILON = EPSILON


class BreakerState(Enum):
    CLOSED = "closed"
    TRIPPED = "tripped"
    RECOVERING = "recovering"


class BreakerMachine:
    """closed → tripped → recovering → closed, judged on one figure.

    ``sustain`` (default 0) asks a figure to stay above the threshold for that long, every
    sample of it, before it trips (0: the first one trips); ``recover_level`` overrides
    ``threshold * (1 - hysteresis)``. The runs are tracked in every state: ``over_since``
    (the figure has been above the threshold since) and ``clear_since`` (at or below the
    recover level since); a figure in between, or NaN, ends both. daemon/system.py's
    host-health breaker judges each host resource with one of these."""

    def __init__(self, threshold: float, recovery: float, hysteresis: float = 0.2, *, sustain: float = 0.0,
                 recover_level: float | None = None) -> None:
        self.threshold = threshold
        self.recovery = recovery
        self.sustain = sustain
        self.recover_level = threshold * (1.0 - hysteresis) if recover_level is None else recover_level
        self.state = BreakerState.CLOSED
        self.tripped_at: float | None = None
        self.over_since: float | None = None
        self.clear_since: float | None = None
        self.figure = 0.0
        self.last_now: float | None = None
        self.trips = 0

    @property
    def tripped(self) -> bool:
        return self.state is not BreakerState.CLOSED

    def step(self, figure: float, now: float) -> Literal["tripped", "recovered"] | None:
        if self.last_now is not None and now < self.last_now:
            raise ValueError(f"time went backwards: {now} after {self.last_now}")
        self.last_now = now
        self.figure = figure
        if figure > self.threshold:
            if self.over_since is None:
                self.over_since = now
            self.clear_since = None
        elif figure <= self.recover_level:
            if self.clear_since is None:
                self.clear_since = now
            self.over_since = None
        else:  # the band between the levels, or NaN (which fails both comparisons)
            self.over_since = self.clear_since = None
        if self.state is BreakerState.CLOSED:
            if self.over_since is not None and now - self.over_since >= self.sustain - _EPSILON:
                self.state, self.tripped_at = BreakerState.TRIPPED, now
                self.trips += 1
                return "tripped"
            return None
        if self.clear_since is None:
            self.state = BreakerState.TRIPPED
            return None
        self.state = BreakerState.RECOVERING
        if now - self.clear_since >= self.recovery - _EPSILON:
            self.state = BreakerState.CLOSED
            return "recovered"
        return None

    def restart_clear(self, now: float) -> None:
        """A clear run, if any, counts from ``now`` (an input it depended on went silent)."""
        if self.clear_since is not None:
            self.clear_since = now

    def hold_until(self, now: float) -> float:
        """The earliest time a tripped breaker can recover, seen from ``now``."""
        start = self.clear_since if self.clear_since is not None else now
        return start + self.recovery
