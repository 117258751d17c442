"""The link-health machine: probe rounds in, UP / DEGRADED / DOWN out. Sans-IO.

A *round* is one probe to each of an uplink's targets, sent together. The round is good
when at least ``min_targets`` of them answered in time, so one dead target is not a dead
link. From rounds the machine keeps:

* streaks: consecutive lost rounds (to go DOWN fast) and consecutive good rounds (to
  come back only when really back) — separate thresholds, as mwan3's ``down``/``up``;
* a sliding window of the last ``window`` rounds: loss ratio, median RTT and jitter, which
  make an uplink DEGRADED (with hysteresis: ``degraded_loss`` to enter,
  ``recovered_loss`` to leave; RTT must fall to 80 % of ``degraded_rtt`` to leave);
* the DNS probe's streak of failures (a link whose resolver fails is DEGRADED even when
  pings by address succeed) and an optional external hint (the Starlink dish).

A round in which *every* probe failed locally (the source address is gone, the kernel has
no route: the interface vanished) is a certainty, not a symptom: the link is DOWN at once.

Transitions, in one table (``_next_state``):

    from \\ to      DOWN                          UP                          DEGRADED
    UNKNOWN        lost streak >= down_after     first good round            (via UP)
    UP             lost streak >= down_after                                 window/DNS/hint bad
    DEGRADED       lost streak >= down_after     window/DNS/hint all good
    DOWN                                         good streak >= up_after     (via UP)

Every change carries a one-line reason for the log and for status, e.g.
``"DOWN: 3 lost rounds in a row (0/2 targets answered; timeout, timeout)"``.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

from daemon.uplinks import ProbeResult

#: Probe errors that are facts about this host, not about the path.
LOCAL_ERRORS = frozenset({"no source address", "no interface"})


class LinkState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def usable(self) -> bool:
        return self in (LinkState.UP, LinkState.DEGRADED)


@dataclass(frozen=True)
class HealthSettings:
    interval: float
    timeout: float
    down_after: int
    up_after: int
    min_targets: int
    window: int
    degraded_loss: float
    recovered_loss: float
    degraded_rtt: float
    dns_failures: int = 3

    @classmethod
    def from_config(cls, config: Any) -> "HealthSettings":
        return cls(
            interval=float(config.interval), timeout=float(config.timeout), down_after=config.down_after,
            up_after=config.up_after, min_targets=config.min_targets, window=config.window,
            degraded_loss=config.degraded_loss, recovered_loss=config.recovered_loss,
            degraded_rtt=float(config.degraded_rtt), dns_failures=config.dns_failures,
        )


@dataclass(frozen=True)
class HealthChange:
    uplink: str
    previous: LinkState
    state: LinkState
    at: float
    reason: str
    #: When the last good round was sent before this change (for detection timings).
    last_good_at: float | None


@dataclass(frozen=True)
class RoundSummary:
    seq: int
    sent_at: float
    good: bool
    answered: int
    targets: int
    rtt: float | None  # best RTT of the round
    local_failure: bool
    errors: tuple[str, ...]


def summarize_round(results: Iterable[ProbeResult], min_targets: int) -> RoundSummary:
    results = list(results)
    if not results:
        raise ValueError("a round has at least one probe")
    ok = [r for r in results if r.ok]
    rtts = [r.rtt for r in ok if r.rtt is not None]
    errors = tuple(r.error or "failed" for r in results if not r.ok)
    return RoundSummary(
        seq=results[0].seq,
        sent_at=min(r.sent_at for r in results),
        good=len(ok) >= min_targets,
        answered=len(ok),
        targets=len(results),
        rtt=min(rtts) if rtts else None,
        local_failure=not ok and all(e in LOCAL_ERRORS for e in errors),
        errors=errors,
    )


class LinkHealth:
    """The health of one uplink. Feed it rounds (:meth:`observe_round`), DNS results
    (:meth:`observe_dns`) and hints (:meth:`set_hint`); each returns a
    :class:`HealthChange` when the state changes, else None."""

    def __init__(self, uplink: str, settings: HealthSettings, now: float) -> None:
        self.uplink = uplink
        self.settings = settings
        self.state = LinkState.UNKNOWN
        self.since = now
        self.reason = "no probe round yet"
        self.lost_streak = 0
        self.good_streak = 0
        self.rounds = 0
        self.lost_rounds = 0
        self.last_good_at: float | None = None
        self.last_round: RoundSummary | None = None
        self._window: deque[RoundSummary] = deque(maxlen=settings.window)
        self.dns_failure_streak = 0
        self.dns_last_error: str | None = None
        self.hint: str | None = None

    # ------------------------------------------------------------------ inputs

    def observe_round(self, results: Iterable[ProbeResult], now: float) -> HealthChange | None:
        summary = summarize_round(results, self.settings.min_targets)
        self.rounds += 1
        self.last_round = summary
        self._window.append(summary)
        if summary.good:
            self.good_streak += 1
            self.lost_streak = 0
            self.last_good_at = summary.sent_at
        else:
            self.lost_rounds += 1
            self.lost_streak += 1
            self.good_streak = 0
        return self._evaluate(now, summary)

    def observe_dns(self, ok: bool, error: str | None, now: float) -> HealthChange | None:
        if ok:
            self.dns_failure_streak = 0
            self.dns_last_error = None
        else:
            self.dns_failure_streak += 1
            self.dns_last_error = error or "failed"
        return self._evaluate(now, None)

    def set_hint(self, hint: str | None, now: float) -> HealthChange | None:
        """An external early warning (the Starlink dish): a hint can make the link
        DEGRADED, never DOWN — the probes have the last word."""
        self.hint = hint
        return self._evaluate(now, None)

    # ------------------------------------------------------------------ figures

    @property
    def loss(self) -> float:
        if not self._window:
            return 0.0
        return sum(1 for r in self._window if not r.good) / len(self._window)

    @property
    def rtt_median(self) -> float | None:
        rtts = [r.rtt for r in self._window if r.rtt is not None]
        return statistics.median(rtts) if rtts else None

    @property
    def jitter(self) -> float | None:
        rtts = [r.rtt for r in self._window if r.rtt is not None]
        if len(rtts) < 2:
            return None
        return statistics.fmean(abs(b - a) for a, b in zip(rtts, rtts[1:]))

    def snapshot(self) -> dict[str, Any]:
        rtt = self.rtt_median
        jitter = self.jitter
        return {
            "state": self.state.value,
            "since": self.since,
            "reason": self.reason,
            "loss": round(self.loss, 4),
            "rtt_ms": round(rtt * 1000, 2) if rtt is not None else None,
            "jitter_ms": round(jitter * 1000, 2) if jitter is not None else None,
            "lost_streak": self.lost_streak,
            "good_streak": self.good_streak,
            "rounds": self.rounds,
            "lost_rounds": self.lost_rounds,
            "dns_failure_streak": self.dns_failure_streak,
            "dns_error": self.dns_last_error,
            "hint": self.hint,
        }

    # ------------------------------------------------------------------ the machine

    def _degradation(self) -> str | None:
        """Why the link is not fully healthy now, or None. Enter thresholds."""
        s = self.settings
        if len(self._window) >= min(5, s.window) and self.loss >= s.degraded_loss:
            return f"loss {self.loss:.0%} >= {s.degraded_loss:.0%} over {len(self._window)} rounds"
        rtt = self.rtt_median
        if rtt is not None and len(self._window) >= min(5, s.window) and rtt > s.degraded_rtt:
            return f"median RTT {rtt * 1000:.0f} ms > {s.degraded_rtt * 1000:.0f} ms"
        if self.dns_failure_streak >= s.dns_failures:
            return f"DNS failing ({self.dns_failure_streak} in a row: {self.dns_last_error})"
        if self.hint:
            return f"hint: {self.hint}"
        return None

    def _still_degraded(self) -> str | None:
        """While DEGRADED: the leave thresholds (hysteresis)."""
        s = self.settings
        if self.loss > s.recovered_loss:
            return f"loss {self.loss:.0%} > {s.recovered_loss:.0%}"
        rtt = self.rtt_median
        if rtt is not None and rtt > s.degraded_rtt * 0.8:
            return f"median RTT {rtt * 1000:.0f} ms > {s.degraded_rtt * 0.8 * 1000:.0f} ms"
        if self.dns_failure_streak > 0:
            return f"DNS failing ({self.dns_last_error})"
        if self.hint:
            return f"hint: {self.hint}"
        return None

    def _next_state(self, summary: RoundSummary | None) -> tuple[LinkState, str]:
        s = self.settings
        state = self.state
        if summary is not None and not summary.good:
            detail = f"{summary.answered}/{summary.targets} targets answered; {', '.join(sorted(set(summary.errors)))}"
            if summary.local_failure and state is not LinkState.DOWN:
                return LinkState.DOWN, f"DOWN: probes cannot leave this host ({detail})"
            if self.lost_streak >= s.down_after and state is not LinkState.DOWN:
                return LinkState.DOWN, f"DOWN: {self.lost_streak} lost rounds in a row ({detail})"
        if state is LinkState.DOWN:
            if self.good_streak >= s.up_after:
                # The outage's losses are explained; judge the link afresh from here.
                recent = list(self._window)[-self.good_streak:]
                self._window.clear()
                self._window.extend(recent)
                return LinkState.UP, f"UP: {self.good_streak} good rounds in a row"
            return state, self.reason
        if state is LinkState.UNKNOWN:
            if self.good_streak >= 1:
                return LinkState.UP, "UP: first probe round answered"
            return state, self.reason
        if state is LinkState.UP:
            why = self._degradation()
            if why:
                return LinkState.DEGRADED, f"DEGRADED: {why}"
            return state, self.reason
        # DEGRADED
        why = self._still_degraded()
        if why is None:
            return LinkState.UP, "UP: loss, RTT and DNS back to normal"
        return state, self.reason

    def _evaluate(self, now: float, summary: RoundSummary | None) -> HealthChange | None:
        new_state, reason = self._next_state(summary)
        if new_state is LinkState.UP and self.state is not LinkState.DEGRADED:
            # Coming UP (from DOWN or UNKNOWN) straight into a degraded condition.
            why = self._degradation()
            if why:
                new_state, reason = LinkState.DEGRADED, f"DEGRADED: {why}"
        if new_state is self.state:
            return None
        change = HealthChange(self.uplink, self.state, new_state, now, reason, self.last_good_at)
        self.state = new_state
        self.since = now
        self.reason = reason
        return change
