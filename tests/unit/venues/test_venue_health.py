"""The venue-health machine, fed probe samples at exact times (no clock, no sockets)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.venues.health import (
    ERROR_CLASSES,
    HealthChange,
    HealthSettings,
    ProbeSample,
    VenueHealth,
    VenueState,
    best_state,
    effective_interval,
)

UP, DEGRADED, DOWN, UNKNOWN = VenueState.UP, VenueState.DEGRADED, VenueState.DOWN, VenueState.UNKNOWN
DEFAULTS = HealthSettings()  # degraded_latency 0.5 s, down_after 3, up_after 3, slow_after 3, window 20


class Feeder:
    """Feeds samples one second apart and keeps every change."""

    def __init__(self, settings: HealthSettings = DEFAULTS) -> None:
        self.health = VenueHealth(settings)
        self.t = 0.0
        self.changes: list[HealthChange] = []
        self.returned: list[HealthChange | None] = []

    def _feed(self, sample: ProbeSample) -> HealthChange | None:
        change = self.health.observe(sample)
        self.returned.append(change)
        if change is not None:
            self.changes.append(change)
        return change

    def ok(self, n: int = 1, latency: float | None = 0.05) -> HealthChange | None:
        change = None
        for _ in range(n):
            self.t += 1.0
            change = self._feed(ProbeSample(ok=True, at=self.t, latency=latency)) or change
        return change

    def slow(self, n: int = 1, latency: float = 0.8) -> HealthChange | None:
        return self.ok(n, latency=latency)

    def fail(self, n: int = 1, error_class: str | None = "timeout",
             detail: str = "read timed out") -> HealthChange | None:
        change = None
        for _ in range(n):
            self.t += 1.0
            change = self._feed(ProbeSample(ok=False, at=self.t, latency=0.8 if error_class == "timeout" else None,
                                            error_class=error_class, detail=detail)) or change
        return change

    @property
    def state(self) -> VenueState:
        return self.health.state

    def path(self) -> list[VenueState]:
        return [c.state for c in self.changes]


def up_feeder(settings: HealthSettings = DEFAULTS) -> Feeder:
    f = Feeder(settings)
    f.ok()
    assert f.state is UP
    return f


# --------------------------------------------------------------------------- from UNKNOWN


def test_starts_unknown_with_nothing_counted() -> None:
    h = VenueHealth(DEFAULTS)
    assert h.state is UNKNOWN and h.last is None and h.since is None
    assert (h.consecutive_failures, h.consecutive_good, h.samples_total, h.failures_total) == (0, 0, 0, 0)
    assert h.error_counts == {} and h.latency_median() is None


def test_unknown_to_up_on_the_first_success() -> None:
    f = Feeder()
    change = f.ok(latency=0.012)
    assert change is not None
    assert (change.previous, change.state) == (UNKNOWN, UP)
    assert change.reason == "first probe answered in 12 ms"
    assert change.sample == ProbeSample(ok=True, at=1.0, latency=0.012)
    assert f.health.since == 1.0 and f.health.reason == change.reason


def test_unknown_to_degraded_when_the_first_answer_is_slow() -> None:
    f = Feeder()
    change = f.slow(latency=0.8123)
    assert change is not None and (change.previous, change.state) == (UNKNOWN, DEGRADED)
    assert change.reason == "slow: first answer took 812 ms > 500 ms"


def test_unknown_to_degraded_on_the_first_failure() -> None:
    f = Feeder()
    change = f.fail(error_class="dns", detail="Name or service not known")
    assert change is not None and (change.previous, change.state) == (UNKNOWN, DEGRADED)
    assert change.reason == "first probe failed: dns (Name or service not known)"


def test_unknown_reaches_down_after_down_after_failures() -> None:
    f = Feeder()
    f.fail(2)
    assert f.state is DEGRADED
    change = f.fail()
    assert change is not None and (change.previous, change.state) == (DEGRADED, DOWN)
    assert change.reason == "3 failures in a row, last: timeout (read timed out)"
    assert f.path() == [DEGRADED, DOWN]


# --------------------------------------------------------------------------- failures


def test_one_failure_from_up_is_degraded_at_once_naming_class_and_detail() -> None:
    f = up_feeder()
    change = f.fail(error_class="http", detail="HTTP 503")
    assert change is not None and (change.previous, change.state) == (UP, DEGRADED)
    assert change.reason == "probe failed: http (HTTP 503)"
    assert change.sample.at == f.t


def test_failure_reason_without_detail_or_class() -> None:
    f = up_feeder()
    assert f.fail(error_class="tls", detail="").reason == "probe failed: tls"  # type: ignore[union-attr]
    g = up_feeder()
    assert g.fail(error_class=None, detail="").reason == "probe failed: other"  # type: ignore[union-attr]
    assert g.health.error_counts == {"other": 1}


def test_detail_is_one_line_and_cut() -> None:
    f = up_feeder()
    change = f.fail(error_class="exchange", detail="EGeneral:Internal error\n  at line 2\r\n" + "x" * 500)
    assert change is not None
    assert "\n" not in change.reason and "\r" not in change.reason
    assert change.reason.startswith("probe failed: exchange (EGeneral:Internal error at line 2 xxx")
    assert len(change.reason) <= len("probe failed: exchange ()") + 160


def test_degraded_then_down_after_exactly_down_after_consecutive_failures() -> None:
    f = up_feeder()
    assert f.fail().state is DEGRADED  # type: ignore[union-attr]
    assert f.fail() is None
    assert f.state is DEGRADED and f.health.consecutive_failures == 2
    change = f.fail(error_class="connect", detail="Connection refused")
    assert change is not None and (change.previous, change.state) == (DEGRADED, DOWN)
    assert change.reason == "3 failures in a row, last: connect (Connection refused)"
    # DOWN is reported once: more failures change nothing.
    for _ in range(20):
        assert f.fail() is None
    assert f.state is DOWN and f.health.consecutive_failures == 23
    assert f.path() == [UP, DEGRADED, DOWN]


def test_failures_that_are_not_consecutive_never_reach_down() -> None:
    f = up_feeder()
    for _ in range(50):
        f.fail(2)
        f.ok()
    assert f.state is DEGRADED
    assert f.path() == [UP, DEGRADED]


def test_down_after_one_makes_a_single_failure_down() -> None:
    s = HealthSettings(down_after=1)
    f = up_feeder(s)
    change = f.fail(error_class="timeout", detail="read timed out")
    assert change is not None and (change.previous, change.state) == (UP, DOWN)
    assert change.reason == "probe failed: timeout (read timed out)"
    g = Feeder(s)
    assert g.fail().state is DOWN  # type: ignore[union-attr]  # UNKNOWN -> DOWN too


def test_higher_down_after() -> None:
    f = up_feeder(HealthSettings(down_after=5))
    f.fail(4)
    assert f.state is DEGRADED
    f.fail()
    assert f.state is DOWN and f.changes[-1].reason.startswith("5 failures in a row")


# --------------------------------------------------------------------------- recovery


def test_degraded_to_up_after_up_after_good_answers() -> None:
    f = up_feeder()
    f.fail()
    assert f.ok(2) is None
    assert f.state is DEGRADED and f.health.consecutive_good == 2
    change = f.ok(latency=0.02)
    assert change is not None and (change.previous, change.state) == (DEGRADED, UP)
    assert change.reason == "3 good answers in a row, median 50 ms"


def test_degraded_recovery_restarts_on_a_failure_or_a_slow_answer() -> None:
    f = up_feeder()
    f.fail()
    f.ok(2)
    f.fail()
    f.ok(2)
    assert f.state is DEGRADED
    f.slow()  # slow answers are not good: the count starts again
    assert f.health.consecutive_good == 0
    f.ok(2)
    assert f.state is DEGRADED
    f.ok()
    assert f.state is UP
    assert f.path() == [UP, DEGRADED, UP]


def test_down_to_up_after_up_after_successes() -> None:
    f = up_feeder()
    f.fail(3)
    assert f.state is DOWN
    f.ok(2)
    f.fail()  # one failure: the count starts again
    f.ok(2)
    assert f.state is DOWN
    change = f.ok()
    assert change is not None and (change.previous, change.state) == (DOWN, UP)
    assert change.reason == "back: 3 answers in a row, median 50 ms"
    assert f.path() == [UP, DEGRADED, DOWN, UP]


def test_down_counts_slow_answers_as_successes_and_comes_back_degraded_when_slow() -> None:
    f = up_feeder()
    f.fail(3)
    f.slow(1, latency=0.9)
    f.ok(1, latency=0.05)
    change = f.slow(1, latency=0.7)
    assert change is not None and (change.previous, change.state) == (DOWN, DEGRADED)
    assert change.reason == "back after 3 answers in a row, but slow: median 700 ms > 500 ms"
    # From there, the usual DEGRADED -> UP rule: up_after good answers.
    f.ok(2)
    assert f.state is DEGRADED
    f.ok()
    assert f.state is UP
    assert f.path() == [UP, DEGRADED, DOWN, DEGRADED, UP]


def test_down_recovery_with_one_slow_answer_among_three_is_up() -> None:
    f = up_feeder()
    f.fail(3)
    f.slow(1, latency=2.0)
    f.ok(2, latency=0.1)
    assert f.state is UP  # median 100 ms


def test_down_recovery_median_is_of_the_last_up_after_answers() -> None:
    f = Feeder(HealthSettings(up_after=3, slow_after=5))
    f.ok()
    f.fail(3)
    f.ok(2, latency=0.6)
    f.fail()
    f.ok(3, latency=0.1)  # the earlier slow answers are not part of this run
    assert f.state is UP


def test_latency_exactly_at_the_threshold_is_good() -> None:
    f = up_feeder()
    f.ok(10, latency=0.5)
    assert f.state is UP and f.health.consecutive_good == 11
    f.fail(3)
    f.ok(3, latency=0.5)
    assert f.state is UP


def test_a_success_without_latency_counts_as_good() -> None:
    f = Feeder()
    assert f.ok(latency=None).reason == "first probe answered in ? ms"  # type: ignore[union-attr]
    f.fail()
    f.ok(3, latency=None)
    assert f.state is UP


def test_degraded_to_down_and_back_full_timeline_with_detection_times() -> None:
    """The drill's shape: healthy, the venue goes silent, comes back."""
    f = Feeder()
    f.ok(30, latency=0.04)
    failed_at = f.t + 1
    f.fail(3, error_class="timeout", detail="no answer within 0.8s")
    back_at = f.t + 1
    f.ok(3, latency=0.04)
    degraded, down, up = f.changes[1:]
    assert (degraded.state, down.state, up.state) == (DEGRADED, DOWN, UP)
    assert degraded.sample.at - failed_at == 0.0  # the first failed probe already routes away
    assert down.sample.at - failed_at == 2.0
    assert up.sample.at - back_at == 2.0
    assert f.health.last_ok_at == f.t


# --------------------------------------------------------------------------- slowness


def test_up_to_degraded_after_slow_after_slow_answers() -> None:
    f = up_feeder()
    f.slow(2, latency=0.8)
    assert f.state is UP and f.health.consecutive_slow == 2
    change = f.slow(1, latency=0.9)
    assert change is not None and (change.previous, change.state) == (UP, DEGRADED)
    assert change.reason == "slow: median 800 ms > 500 ms (3 slow answers in a row)"
    f.slow(5)
    assert f.state is DEGRADED  # stays, reported once
    f.ok(3)
    assert f.state is UP


def test_alternating_slow_and_fast_answers_never_flap() -> None:
    f = up_feeder()
    for _ in range(100):
        f.slow(2)
        f.ok()
    assert f.state is UP and f.path() == [UP]


def test_alternating_failures_and_successes_change_the_state_once() -> None:
    f = up_feeder()
    for _ in range(100):
        f.fail()
        f.ok()
    assert f.path() == [UP, DEGRADED]
    assert sum(1 for r in f.returned if r is not None) == 2


def test_slow_after_one() -> None:
    f = up_feeder(HealthSettings(slow_after=1))
    assert f.slow().state is DEGRADED  # type: ignore[union-attr]


def test_custom_degraded_latency() -> None:
    f = up_feeder(HealthSettings(degraded_latency=0.1))
    f.ok(3, latency=0.2)
    assert f.state is DEGRADED and "> 100 ms" in f.health.reason


# --------------------------------------------------------------------------- figures


def test_counters_and_error_counts() -> None:
    f = up_feeder()
    f.fail(2, error_class="timeout")
    f.fail(1, error_class="rate_limit", detail="429")
    f.ok(2)
    h = f.health
    assert h.samples_total == 6 and h.failures_total == 3
    assert h.error_counts == {"timeout": 2, "rate_limit": 1}
    assert h.consecutive_failures == 0 and h.consecutive_good == 2 and h.consecutive_ok == 2
    assert h.last == ProbeSample(ok=True, at=6.0, latency=0.05)
    assert h.last_ok_at == 6.0


def test_latency_median_over_the_window_successes_only() -> None:
    f = Feeder(HealthSettings(window=4))
    f.ok(latency=0.01)
    f.ok(latency=0.03)
    f.fail()
    assert f.health.latency_median() == pytest.approx(0.02)
    f.ok(latency=0.1)
    f.ok(latency=0.2)  # the window is now 0.03, fail, 0.1, 0.2
    assert f.health.latency_median() == pytest.approx(0.1)
    f.fail(4)
    assert f.health.latency_median() is None


def test_snapshot() -> None:
    f = up_feeder()
    f.fail(error_class="timeout", detail="read\ntimed out")
    snap = f.health.snapshot()
    assert snap["state"] == "degraded" and snap["since"] == 2.0
    assert snap["reason"] == "probe failed: timeout (read timed out)"
    assert snap["last_error"] == {"class": "timeout", "detail": "read timed out"}
    assert snap["latency_ms"] == 50.0 and snap["last_latency_ms"] == 800.0
    assert snap["consecutive_failures"] == 1 and snap["samples_total"] == 2 and snap["failures_total"] == 1
    assert snap["error_counts"] == {"timeout": 1} and snap["last_ok_at"] == 1.0


def test_settings_defaults_and_validation() -> None:
    assert DEFAULTS == HealthSettings(degraded_latency=0.5, down_after=3, up_after=3, slow_after=3, window=20)
    with pytest.raises(ValueError, match=r"^degraded_latency: expected seconds above 0"):
        HealthSettings(degraded_latency=0)
    with pytest.raises(ValueError, match=r"^degraded_latency"):
        HealthSettings(degraded_latency=float("nan"))
    for name in ("down_after", "up_after", "slow_after", "window"):
        with pytest.raises(ValueError, match=rf"^{name}: expected an integer of at least 1"):
            HealthSettings(**{name: 0})
        with pytest.raises(ValueError, match=rf"^{name}:"):
            HealthSettings(**{name: True})


def test_state_values_and_error_classes() -> None:
    assert VenueState("up") is UP and UP == "up" and DOWN.value == "down"
    assert UP.usable and DEGRADED.usable and not DOWN.usable and not UNKNOWN.usable
    assert ERROR_CLASSES == ("timeout", "dns", "tls", "connect", "http", "rate_limit", "auth", "exchange", "busy",
                             "other")


# --------------------------------------------------------------------------- best_state, effective_interval


@pytest.mark.parametrize(("states", "best"), [
    ([], UNKNOWN),
    ([UNKNOWN], UNKNOWN),
    ([DOWN, UNKNOWN], DOWN),
    ([DOWN, DEGRADED, UNKNOWN], DEGRADED),
    ([DOWN, DEGRADED, UP, UNKNOWN], UP),
    ([UP, DOWN], UP),
    ([DEGRADED, DEGRADED], DEGRADED),
])
def test_best_state(states: list[VenueState], best: VenueState) -> None:
    assert best_state(states) is best
    assert best_state(reversed(states)) is best
    assert best_state(s for s in states) is best  # any iterable, once


@pytest.mark.parametrize(("configured", "rate_limit", "calls", "expected"), [
    (1.0, 0.0, 3, 1.0),      # no limit
    (1.0, 0.3, 3, 1.0),      # 0.9 s of calls fit in 1 s
    (1.0, 1.0, 3, 3.0),      # a venue that allows one call a second: 3 calls need 3 s
    (1.0, 3.0, 1, 3.0),
    (5.0, 1.0, 2, 5.0),
    (0.2, 0.05, 0, 0.2),
])
def test_effective_interval(configured: float, rate_limit: float, calls: int, expected: float) -> None:
    assert effective_interval(configured, rate_limit, calls) == pytest.approx(expected)


def test_effective_interval_validation() -> None:
    with pytest.raises(ValueError, match=r"^configured: expected seconds above 0"):
        effective_interval(0, 1, 1)
    with pytest.raises(ValueError, match=r"^rate_limit: expected seconds of at least 0"):
        effective_interval(1, -1, 1)
    with pytest.raises(ValueError, match=r"^calls_per_round:"):
        effective_interval(1, 1, -1)
    with pytest.raises(ValueError, match=r"^configured:"):
        effective_interval(float("inf"), 1, 1)


# --------------------------------------------------------------------------- properties

_settings = st.builds(HealthSettings, degraded_latency=st.just(0.5), down_after=st.integers(1, 5),
                      up_after=st.integers(1, 5), slow_after=st.integers(1, 5), window=st.integers(1, 8))
#: "ok" (fast), "slow", "none" (ok without a latency), "fail".
_kinds = st.lists(st.sampled_from(["ok", "slow", "none", "fail"]), max_size=120)


def _sample(kind: str, at: float) -> ProbeSample:
    if kind == "fail":
        return ProbeSample(ok=False, at=at, error_class="timeout", detail="read timed out")
    return ProbeSample(ok=True, at=at, latency={"ok": 0.05, "slow": 0.9, "none": None}[kind])


@settings(max_examples=300)
@given(_settings, _kinds)
def test_invariants_under_any_sequence(s: HealthSettings, kinds: list[str]) -> None:
    h = VenueHealth(s)
    changes = []
    for i, kind in enumerate(kinds):
        before = h.state
        change = h.observe(_sample(kind, float(i)))
        # A change is returned exactly when the state changed, and describes it.
        if change is None:
            assert h.state is before
        else:
            assert change.previous is before and change.state is h.state and before is not h.state
            assert change.reason and "\n" not in change.reason
            assert change.sample.at == float(i)
            changes.append(change)
            # DOWN is entered on exactly the down_after-th failure in a row.
            if change.state is DOWN:
                assert kind == "fail" and h.consecutive_failures == s.down_after
            # DOWN is left only after exactly up_after successes in a row.
            if change.previous is DOWN:
                assert kind != "fail" and h.consecutive_ok == s.up_after
                assert change.state in (UP, DEGRADED)
            # DEGRADED -> UP needs up_after good answers in a row.
            if (change.previous, change.state) == (DEGRADED, UP):
                assert h.consecutive_good == s.up_after
            # UP -> DEGRADED: a failure or slow_after slow answers in a row.
            if (change.previous, change.state) == (UP, DEGRADED):
                assert kind == "fail" or h.consecutive_slow == s.slow_after
            # With down_after >= 2 the first failure from UP is DEGRADED: never UP -> DOWN.
            if s.down_after >= 2:
                assert (change.previous, change.state) != (UP, DOWN)
            assert change.state is not UNKNOWN
        if h.consecutive_failures >= s.down_after:
            assert h.state is DOWN
        if h.state is UP:
            assert h.consecutive_failures == 0
        if h.state is DOWN:
            assert h.consecutive_ok < s.up_after
        assert 0 <= h.consecutive_failures < s.down_after or h.state is DOWN
    # Counters.
    assert h.samples_total == len(kinds)
    assert h.failures_total == kinds.count("fail") == sum(h.error_counts.values())
    # The changes chain: each starts where the last ended.
    for prev, nxt in itertools.pairwise(changes):
        assert prev.state is nxt.previous
    # Deterministic: the same samples give the same changes.
    again = VenueHealth(s)
    replay = [c for i, k in enumerate(kinds) if (c := again.observe(_sample(k, float(i)))) is not None]
    assert replay == changes


@settings(max_examples=200)
@given(_settings, st.lists(st.sampled_from(["ok", "slow", "none"]), min_size=1, max_size=60))
def test_no_two_failures_in_a_row_never_down(s: HealthSettings, answers: list[str]) -> None:
    """Flapping: single failures between answers never add up to DOWN (down_after >= 2)."""
    if s.down_after < 2:
        s = HealthSettings(down_after=2, up_after=s.up_after, slow_after=s.slow_after, window=s.window)
    h = VenueHealth(s)
    for i, kind in enumerate(answers):
        h.observe(_sample(kind, 2.0 * i))
        h.observe(_sample("fail", 2.0 * i + 1))
        assert h.state is not DOWN


@settings(max_examples=200)
@given(st.integers(1, 6), st.integers(0, 30))
def test_reaching_down_takes_exactly_down_after_failures(down_after: int, healthy: int) -> None:
    h = VenueHealth(HealthSettings(down_after=down_after))
    t = 0.0
    for _ in range(healthy):
        t += 1
        h.observe(_sample("ok", t))
    states = []
    for _ in range(down_after):
        t += 1
        h.observe(_sample("fail", t))
        states.append(h.state)
    assert states[-1] is DOWN
    assert all(state is not DOWN for state in states[:-1])


def test_back_from_down_on_slow_answers_is_degraded_not_up() -> None:
    """Found by the property test: DOWN, then up_after answers whose last slow_after were
    slow (the median still fast) — UP would have to turn DEGRADED at once: DEGRADED."""
    h = VenueHealth(HealthSettings(degraded_latency=0.5, down_after=1, up_after=4, slow_after=1))
    for i, kind in enumerate(["fail", "ok", "ok", "ok"]):
        h.observe(_sample(kind, float(i)))
    assert h.state is DOWN
    change = h.observe(_sample("slow", 4.0))
    assert change is not None and change.state is DEGRADED and "slow" in change.reason
