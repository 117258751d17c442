"""The venue-health machine: probe samples in, UP / DEGRADED / DOWN out. Sans-IO.

One :class:`VenueHealth` judges one venue seen through one uplink (Kraken through the
fibre, Kraken through Starlink, ...). The caller runs a probe round (``fetch_time``,
``fetch_status``, ... through that uplink) and hands the outcome over as a
:class:`ProbeSample` carrying its own ``at`` timestamp: this module reads no clock, does no
I/O, and the same samples always give the same states and the same reasons.

Words used below:

* a *failure* is a sample with ``ok=False`` (its ``error_class`` is one of
  :data:`ERROR_CLASSES`, ``None`` counts as ``"other"``);
* a *success* is a sample with ``ok=True``, whatever its latency;
* a *good* sample is a success whose latency is at most ``degraded_latency`` (a success
  without a latency counts as good); a *slow* sample is a success above it.

Rules (``_next_state``), checked in this order on every sample:

1. ``down_after`` consecutive failures, from any state, make the venue DOWN. The
   ``down_after``-th failure in a row is the one that reports it; further failures report
   nothing (DOWN is reported once).
2. Any other failure makes UNKNOWN or UP DEGRADED at once: the first sign is enough for
   the engine to route away. A failure in DEGRADED keeps it DEGRADED. The reason names the
   error class and detail (``"probe failed: timeout (read timed out)"``).
3. UNKNOWN + success: UP, or DEGRADED when that first answer is slow.
4. DOWN needs ``up_after`` consecutive successes; it then becomes UP, or DEGRADED when the
   median latency of those ``up_after`` answers is above ``degraded_latency``, or when the
   last ``slow_after`` of them were slow (what rule 6 would do at once). A failure
   restarts the count; slow answers count as successes here (the venue is reachable).
5. DEGRADED becomes UP after ``up_after`` consecutive *good* samples (a failure or a slow
   answer restarts the count). This holds however DEGRADED was reached, including from
   DOWN through rule 4.
6. UP becomes DEGRADED after ``slow_after`` consecutive slow answers
   (``"slow: median 812 ms > 500 ms (3 slow answers in a row)"``).

Otherwise nothing changes and :meth:`VenueHealth.observe` returns ``None``: a change is
reported exactly once, when it happens.

Consequences (tested as properties):

* With ``down_after >= 2`` the venue never goes from UP straight to DOWN: the first failure
  makes it DEGRADED, so the engine hears about trouble one sample early. With
  ``down_after == 1`` a single failure is DOWN (rule 1 comes first).
* DOWN is entered exactly on the ``down_after``-th consecutive failure, never earlier.
* Hysteresis: alternating failures and successes (or slow and fast answers) never move
  the state back and forth. From UP, the first failure makes it DEGRADED, and it stays
  there until ``up_after`` good answers come in a row. Failures that are not consecutive
  never make it DOWN. Slow answers that are not consecutive never make UP DEGRADED.

Reasons are one line, human readable, and never contain a newline; a failure's detail is
cut to 160 characters.

:func:`best_state` folds a venue's per-uplink states into the venue's state (reachable
through *some* uplink is what matters for routing). :func:`effective_interval` keeps the
probe interval within the venue's rate limit.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class VenueState(str, enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def usable(self) -> bool:
        """Whether orders can be routed to the venue in this state (slowly, when DEGRADED)."""
        return self in (VenueState.UP, VenueState.DEGRADED)


#: The error classes a failed probe is filed under (``client.classify_error`` picks one).
ERROR_CLASSES: tuple[str, ...] = (
    "timeout", "dns", "tls", "connect", "http", "rate_limit", "auth", "exchange", "busy", "other",
)

#: A failure's detail in a reason is cut to this many characters.
MAX_DETAIL = 160


@dataclass(frozen=True)
class ProbeSample:
    """One probe round of one venue through one uplink: ``at`` is when it was sent (the
    caller's clock, ``trio.current_time()``), ``latency`` is the round's duration in
    seconds. A failure carries an ``error_class`` (see :data:`ERROR_CLASSES`) and a
    one-line ``detail`` (already redacted by the client)."""

    ok: bool
    at: float
    latency: float | None = None  # seconds
    error_class: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class HealthSettings:
    """Thresholds. ``degraded_latency`` in seconds; the counts are samples."""

    degraded_latency: float = 0.5
    down_after: int = 3
    up_after: int = 3
    slow_after: int = 3
    window: int = 20

    def __post_init__(self) -> None:
        lat = self.degraded_latency
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not math.isfinite(lat) or lat <= 0:
            raise ValueError(f"degraded_latency: expected seconds above 0 such as 0.5, found {lat!r}; "
                             "set the latency above which a venue's answer counts as slow")
        for name in ("down_after", "up_after", "slow_after", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer of at least 1 such as 3, found {value!r}; "
                                 "it counts probe samples")


@dataclass(frozen=True)
class HealthChange:
    previous: VenueState
    state: VenueState
    reason: str
    sample: ProbeSample  # the sample that caused the change (its ``at`` is the change's time)


def _ms(seconds: float | None) -> str:
    return "? ms" if seconds is None else f"{seconds * 1000:.0f} ms"


def _one_line(text: str, limit: int = MAX_DETAIL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_failure(sample: ProbeSample) -> str:
    """``"timeout (read timed out)"``: the error class and, when there is one, the detail."""
    cls = sample.error_class or "other"
    detail = _one_line(sample.detail)
    return f"{cls} ({detail})" if detail else cls


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


class VenueHealth:
    """The health of one venue through one uplink. Feed it samples in the order they were
    taken (:meth:`observe`); it returns a :class:`HealthChange` when the state changes,
    else ``None``."""

    def __init__(self, settings: HealthSettings) -> None:
        self.settings = settings
        self.state = VenueState.UNKNOWN
        self.reason = "no probe yet"
        self.since: float | None = None  # ``at`` of the sample that set the state
        self.consecutive_failures = 0
        self.consecutive_good = 0  # successes within degraded_latency
        self.consecutive_ok = 0  # successes, slow or not
        self.consecutive_slow = 0  # successes above degraded_latency
        self.last: ProbeSample | None = None
        self.last_ok_at: float | None = None  # for detection timings: the last answered probe
        self.samples_total = 0
        self.failures_total = 0
        self.error_counts: dict[str, int] = {}
        self._window: deque[ProbeSample] = deque(maxlen=settings.window)
        # Latencies of the current run of successes (enough for up_after and slow_after).
        self._run: deque[float | None] = deque(maxlen=max(settings.up_after, settings.slow_after))

    # ------------------------------------------------------------------ figures

    def latency_median(self) -> float | None:
        """Median latency of the successful samples among the last ``window`` samples."""
        return _median(s.latency for s in self._window if s.ok)

    def _is_slow(self, sample: ProbeSample) -> bool:
        return sample.ok and sample.latency is not None and sample.latency > self.settings.degraded_latency

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for status and metrics."""
        median = self.latency_median()
        last = self.last
        return {
            "state": self.state.value,
            "since": self.since,
            "reason": self.reason,
            "latency_ms": round(median * 1000, 2) if median is not None else None,
            "last_latency_ms": (round(last.latency * 1000, 2)
                                if last is not None and last.latency is not None else None),
            "last_error": (None if last is None or last.ok
                           else {"class": last.error_class or "other", "detail": _one_line(last.detail)}),
            "last_ok_at": self.last_ok_at,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_good": self.consecutive_good,
            "samples_total": self.samples_total,
            "failures_total": self.failures_total,
            "error_counts": dict(sorted(self.error_counts.items())),
        }

    # ------------------------------------------------------------------ the machine

    def observe(self, sample: ProbeSample) -> HealthChange | None:
        self.samples_total += 1
        self.last = sample
        self._window.append(sample)
        if sample.ok:
            self.consecutive_failures = 0
            self.consecutive_ok += 1
            self._run.append(sample.latency)
            self.last_ok_at = sample.at
            if self._is_slow(sample):
                self.consecutive_slow += 1
                self.consecutive_good = 0
            else:
                self.consecutive_good += 1
                self.consecutive_slow = 0
        else:
            self.failures_total += 1
            cls = sample.error_class or "other"
            self.error_counts[cls] = self.error_counts.get(cls, 0) + 1
            self.consecutive_failures += 1
            self.consecutive_ok = self.consecutive_good = self.consecutive_slow = 0
            self._run.clear()
        new_state, reason = self._next_state(sample)
        if new_state is self.state:
            return None
        change = HealthChange(self.state, new_state, reason, sample)
        self.state, self.reason, self.since = new_state, reason, sample.at
        return change

    def _next_state(self, sample: ProbeSample) -> tuple[VenueState, str]:
        s = self.settings
        state = self.state
        if not sample.ok:
            what = describe_failure(sample)
            n = self.consecutive_failures
            if n >= s.down_after:
                if state is VenueState.DOWN:
                    return state, self.reason
                if n == 1:
                    return VenueState.DOWN, f"probe failed: {what}"
                return VenueState.DOWN, f"{n} failures in a row, last: {what}"
            if state is VenueState.UNKNOWN:
                return VenueState.DEGRADED, f"first probe failed: {what}"
            if state is VenueState.UP:
                return VenueState.DEGRADED, f"probe failed: {what}"
            return state, self.reason
        limit = _ms(s.degraded_latency)
        if state is VenueState.UNKNOWN:
            if self._is_slow(sample):
                return VenueState.DEGRADED, f"slow: first answer took {_ms(sample.latency)} > {limit}"
            return VenueState.UP, f"first probe answered in {_ms(sample.latency)}"
        if state is VenueState.DOWN:
            if self.consecutive_ok >= s.up_after:
                median = _median(list(self._run)[-s.up_after:])
                n = self.consecutive_ok
                if median is not None and median > s.degraded_latency:
                    return (VenueState.DEGRADED,
                            f"back after {n} answers in a row, but slow: median {_ms(median)} > {limit}")
                if self.consecutive_slow >= s.slow_after:
                    # The last slow_after answers were slow: what UP would turn DEGRADED at once.
                    return (VenueState.DEGRADED, f"back after {n} answers in a row, but the last "
                            f"{self.consecutive_slow} were slow (> {limit})")
                return VenueState.UP, f"back: {n} answers in a row, median {_ms(median)}"
            return state, self.reason
        if state is VenueState.DEGRADED:
            if self.consecutive_good >= s.up_after:
                median = _median(list(self._run)[-s.up_after:])
                return VenueState.UP, f"{self.consecutive_good} good answers in a row, median {_ms(median)}"
            return state, self.reason
        # UP
        if self.consecutive_slow >= s.slow_after:
            median = _median(list(self._run)[-s.slow_after:])
            return (VenueState.DEGRADED,
                    f"slow: median {_ms(median)} > {limit} ({self.consecutive_slow} slow answers in a row)")
        return state, self.reason


#: Best first: a venue reachable through any uplink is reachable.
_RANK = {VenueState.UP: 3, VenueState.DEGRADED: 2, VenueState.DOWN: 1, VenueState.UNKNOWN: 0}


def best_state(states: Iterable[VenueState]) -> VenueState:
    """The best of a venue's per-uplink states: UP > DEGRADED > DOWN > UNKNOWN (none: UNKNOWN)."""
    return max(states, key=_RANK.__getitem__, default=VenueState.UNKNOWN)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def effective_interval(configured: float, rate_limit: float, calls_per_round: int) -> float:
    """Seconds between probe rounds: the configured interval, but never more often than the
    venue allows, i.e. ``max(configured, rate_limit * calls_per_round)`` where
    ``rate_limit`` is ccxt's minimum delay between calls (``exchange.rateLimit / 1000``)."""
    if not _is_number(configured) or configured <= 0:
        raise ValueError(f"configured: expected seconds above 0 such as 1, found {configured!r}; "
                         "set the venue's probe interval")
    if not _is_number(rate_limit) or rate_limit < 0:
        raise ValueError(f"rate_limit: expected seconds of at least 0, found {rate_limit!r}; "
                         "pass ccxt's exchange.rateLimit / 1000")
    if isinstance(calls_per_round, bool) or not isinstance(calls_per_round, int) or calls_per_round < 0:
        raise ValueError(f"calls_per_round: expected an integer of at least 0, found {calls_per_round!r}; "
                         "pass the number of venue calls one probe round makes")
    return float(max(configured, rate_limit * calls_per_round))
