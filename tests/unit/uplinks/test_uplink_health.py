"""The link-health machine, fed rounds at exact times (no clock, no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.uplinks import ProbeResult
from daemon.uplinks.health import HealthSettings, LinkHealth, LinkState, summarize_round

FIBRE = HealthSettings(interval=0.2, timeout=0.25, down_after=3, up_after=10, min_targets=1, window=50,
                       degraded_loss=0.2, recovered_loss=0.05, degraded_rtt=0.1, dns_failures=3)
STARLINK = HealthSettings(interval=0.2, timeout=0.6, down_after=15, up_after=10, min_targets=1, window=50,
                          degraded_loss=0.2, recovered_loss=0.05, degraded_rtt=0.25, dns_failures=3)


def round_of(seq: int, answers: list[bool], *, rtt: float = 0.002, error: str = "timeout",
             t: float | None = None) -> list[ProbeResult]:
    sent = seq * 0.2 if t is None else t
    return [
        ProbeResult("fibre", f"udp://10.0.0.{i}:7", seq, sent, ok, rtt if ok else None, None if ok else error)
        for i, ok in enumerate(answers)
    ]


class Feeder:
    def __init__(self, settings: HealthSettings = FIBRE) -> None:
        self.health = LinkHealth("fibre", settings, now=0.0)
        self.seq = 0
        self.changes = []

    def feed(self, *answers: bool, n: int = 1, **kwargs: object) -> None:
        for _ in range(n):
            self.seq += 1
            now = self.seq * 0.2 + 0.25
            change = self.health.observe_round(round_of(self.seq, list(answers), **kwargs), now)  # type: ignore[arg-type]
            if change:
                self.changes.append(change)

    @property
    def state(self) -> LinkState:
        return self.health.state


def test_summarize_round() -> None:
    summary = summarize_round(round_of(4, [True, False], rtt=0.01), min_targets=1)
    assert summary.good and summary.answered == 1 and summary.targets == 2 and summary.rtt == 0.01
    assert not summarize_round(round_of(4, [True, False]), min_targets=2).good
    local = summarize_round(round_of(1, [False, False], error="no source address"), 1)
    assert local.local_failure
    assert not summarize_round(round_of(1, [False, False]), 1).local_failure
    with pytest.raises(ValueError):
        summarize_round([], 1)


def test_unknown_to_up_on_the_first_good_round() -> None:
    f = Feeder()
    assert f.state is LinkState.UNKNOWN
    f.feed(True, True)
    assert f.state is LinkState.UP
    assert f.changes[0].reason == "UP: first probe round answered"


def test_fibre_goes_down_after_exactly_down_after_lost_rounds() -> None:
    f = Feeder()
    f.feed(True, True, n=20)
    f.feed(False, False, n=2)
    assert f.state is LinkState.UP
    f.feed(False, False)
    assert f.state is LinkState.DOWN
    change = f.changes[-1]
    assert change.previous is LinkState.UP
    assert change.reason == "DOWN: 3 lost rounds in a row (0/2 targets answered; timeout)"
    assert change.last_good_at == pytest.approx(20 * 0.2)


def test_one_dead_target_is_not_a_dead_link() -> None:
    f = Feeder()
    f.feed(True, True, n=5)
    f.feed(True, False, n=100)
    assert f.state is LinkState.UP


def test_min_targets_makes_a_round_need_several_answers() -> None:
    settings = HealthSettings(**{**FIBRE.__dict__, "min_targets": 2})
    f = Feeder(settings)
    f.feed(True, True, n=5)
    f.feed(True, False, n=3)
    assert f.state is LinkState.DOWN


def test_scattered_losses_never_reach_down() -> None:
    f = Feeder()
    f.feed(True, n=5)
    for _ in range(200):
        f.feed(False, n=2)
        f.feed(True)
    assert f.state is not LinkState.DOWN


def test_local_failure_is_down_at_once() -> None:
    f = Feeder()
    f.feed(True, True, n=5)
    f.feed(False, False, error="no source address")
    assert f.state is LinkState.DOWN
    assert "probes cannot leave this host" in f.changes[-1].reason


def test_recovery_needs_up_after_good_rounds_and_restarts_on_a_loss() -> None:
    f = Feeder()
    f.feed(True, n=5)
    f.feed(False, n=3)
    assert f.state is LinkState.DOWN
    f.feed(True, n=9)
    assert f.state is LinkState.DOWN
    f.feed(False)  # one loss: the count starts again
    f.feed(True, n=9)
    assert f.state is LinkState.DOWN
    f.feed(True)
    assert f.state is LinkState.UP
    assert f.changes[-1].reason == "UP: 10 good rounds in a row"


def test_coming_back_up_is_judged_afresh_not_on_the_outage_losses() -> None:
    f = Feeder()
    f.feed(True, n=40)
    f.feed(False, n=30)  # a 6 s outage fills 60 % of the window with losses
    f.feed(True, n=10)
    assert f.state is LinkState.UP, f.health.reason
    assert f.health.loss == 0


def test_starlink_rides_out_handoff_drops() -> None:
    f = Feeder(STARLINK)
    f.feed(True, n=20, rtt=0.04)
    for _ in range(20):  # a 2 s drop (10 rounds) every 15 s slot
        f.feed(False, n=10)
        f.feed(True, n=65, rtt=0.04)
    assert all(c.state is not LinkState.DOWN for c in f.changes)
    f.feed(False, n=15)
    assert f.state is LinkState.DOWN


def test_degraded_by_loss_with_hysteresis() -> None:
    f = Feeder()
    f.feed(True, n=50)
    # 25 % loss, never 3 in a row: DEGRADED, not DOWN.
    for _ in range(15):
        f.feed(True, n=3)
        f.feed(False)
    assert f.state is LinkState.DEGRADED
    assert f.changes[-1].reason.startswith("DEGRADED: loss 2")
    # Loss falls to ~10 %: between recovered_loss (5 %) and degraded_loss (20 %) -> stays.
    for _ in range(10):
        f.feed(True, n=9)
        f.feed(False)
    assert f.state is LinkState.DEGRADED
    f.feed(True, n=50)
    assert f.state is LinkState.UP
    assert f.changes[-1].reason == "UP: loss, RTT and DNS back to normal"


def test_degraded_by_rtt_with_hysteresis() -> None:
    f = Feeder()
    f.feed(True, n=10, rtt=0.01)
    f.feed(True, n=50, rtt=0.15)
    assert f.state is LinkState.DEGRADED
    assert "median RTT 150 ms > 100 ms" in f.health.reason
    f.feed(True, n=50, rtt=0.09)  # below the threshold but above 80 % of it
    assert f.state is LinkState.DEGRADED
    f.feed(True, n=50, rtt=0.05)
    assert f.state is LinkState.UP


def test_dns_failures_degrade_a_pinging_link() -> None:
    f = Feeder()
    f.feed(True, n=10)
    h = f.health
    assert h.observe_dns(False, "dns SERVFAIL", 3.0) is None
    assert h.observe_dns(False, "dns SERVFAIL", 8.0) is None
    change = h.observe_dns(False, "dns timeout", 13.0)
    assert change is not None and change.state is LinkState.DEGRADED
    assert change.reason == "DEGRADED: DNS failing (3 in a row: dns timeout)"
    up = h.observe_dns(True, None, 18.0)
    assert up is not None and up.state is LinkState.UP


def test_a_hint_degrades_but_never_downs() -> None:
    f = Feeder(STARLINK)
    f.feed(True, n=10, rtt=0.04)
    change = f.health.set_hint("dish OBSTRUCTED", 3.0)
    assert change is not None and change.state is LinkState.DEGRADED
    assert f.health.set_hint("dish OBSTRUCTED", 3.2) is None
    f.feed(True, n=5, rtt=0.04)
    assert f.state is LinkState.DEGRADED
    back = f.health.set_hint(None, 5.0)
    assert back is not None and back.state is LinkState.UP


def test_snapshot_figures() -> None:
    f = Feeder()
    f.feed(True, n=3, rtt=0.002)
    f.feed(True, n=1, rtt=0.004)
    f.feed(False)
    snap = f.health.snapshot()
    assert snap["state"] == "degraded"  # 1 of 5 rounds lost: 20 % >= degraded_loss
    assert snap["loss"] == pytest.approx(0.2)
    assert snap["rtt_ms"] == pytest.approx(2.0)
    assert snap["jitter_ms"] == pytest.approx(2 / 3, abs=0.01)
    assert snap["lost_streak"] == 1 and snap["rounds"] == 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=400))
def test_invariants_under_any_sequence(rounds: list[tuple[bool, bool]]) -> None:
    f = Feeder()
    for a, b in rounds:
        f.feed(a, b)
        h = f.health
        # DOWN exactly when the lost streak says so, until enough good rounds.
        if h.lost_streak >= FIBRE.down_after:
            assert h.state is LinkState.DOWN
        if h.state is LinkState.UP or h.state is LinkState.DEGRADED:
            assert h.lost_streak < FIBRE.down_after
    for prev, nxt in zip(f.changes, f.changes[1:]):
        assert prev.state is nxt.previous
        assert nxt.previous is not nxt.state
        # Never DOWN -> DEGRADED -> DOWN without passing the up_after good rounds first.
        if prev.state is LinkState.DOWN:
            assert nxt.reason.startswith("UP: 10 good rounds") or nxt.state is LinkState.DEGRADED


def test_five_percent_random_loss_never_downs_a_two_target_fibre() -> None:
    rng = random.Random(7)
    f = Feeder()
    f.feed(True, True, n=5)
    for _ in range(30_000):  # 100 minutes of 200 ms rounds
        # 5 % loss each way on each of two targets.
        f.feed(*(rng.random() > 0.05 and rng.random() > 0.05 for _ in range(2)))
    assert all(c.state is not LinkState.DOWN for c in f.changes), f.changes
