"""The four circuit breakers, sans-IO (daemon/guard/breakers.py): each trips exactly above
its threshold and recovers exactly after its recovery time, with plain ``now`` values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from daemon.guard.blocks import Scope
from daemon.guard.breakers import (BreakerMachine, BreakerSpec, BreakerState, Breakers, FailureRate, PriceRange,
                                   TimeMean, parse_mark)
from daemon.guard.breakers_config import BreakersConfig

T0 = 1_800_000_000.0


def breakers(**over: dict[str, object]) -> Breakers:
    specs = BreakersConfig().specs()
    for name, changes in over.items():
        specs[name] = BreakerSpec(**{**specs[name].__dict__, **changes})  # type: ignore[arg-type]
    return Breakers(specs)


def mark(venue: str, symbol: str, price: str, t: float) -> bytes:
    return json.dumps({"record": "mark", "v": 1, "venue": venue, "symbol": symbol, "price": price,
                       "time": t}).encode()


def order(state: str, n: int = 0) -> bytes:
    return json.dumps({"record": "order", "v": 1, "client_order_id": f"c{n}", "venue": "kraken",
                       "symbol": "BTC/USD", "side": "buy", "amount": "1", "price": "100", "state": state}).encode()


# ----------------------------------------------------------------------------- the machine


def test_a_figure_at_the_threshold_does_not_trip_and_one_above_does() -> None:
    m = BreakerMachine(0.05, 300.0)
    assert m.step(0.05, T0) is None and m.state is BreakerState.CLOSED
    assert m.step(math.nextafter(0.05, 1.0), T0 + 1) == "tripped"
    assert m.state is BreakerState.TRIPPED and m.tripped_at == T0 + 1


def test_recovers_exactly_after_the_recovery_time_at_or_below_the_recover_level() -> None:
    m = BreakerMachine(0.05, 300.0, hysteresis=0.2)
    m.step(0.06, T0)
    assert m.step(0.04, T0 + 10) is None and m.state is BreakerState.RECOVERING
    assert m.step(0.04, T0 + 309.999) is None
    assert m.step(0.04, T0 + 310) == "recovered" and m.state is BreakerState.CLOSED


def test_the_hysteresis_band_holds_a_trip_and_breaks_the_clear_run() -> None:
    m = BreakerMachine(0.05, 300.0, hysteresis=0.2)
    m.step(0.06, T0)
    m.step(0.03, T0 + 1)
    assert m.step(0.045, T0 + 200) is None and m.state is BreakerState.TRIPPED  # in the band: run broken
    for t in (T0 + 201, T0 + 400):
        assert m.step(0.04, t) is None
    assert m.step(0.0, T0 + 501) == "recovered"


def test_a_trip_holds_at_least_the_recovery_time_even_with_zero_figures() -> None:
    m = BreakerMachine(0.9, 120.0)
    m.step(1.0, T0)
    assert m.step(0.0, T0 + 0.5) is None
    assert m.step(0.0, T0 + 120.4) is None
    assert m.step(0.0, T0 + 120.5) == "recovered"


def test_nan_neither_trips_nor_clears_and_time_may_not_go_back() -> None:
    m = BreakerMachine(0.1, 10.0)
    assert m.step(math.nan, T0) is None
    m.step(0.2, T0 + 1)
    assert m.step(math.nan, T0 + 100) is None and m.state is BreakerState.TRIPPED
    with pytest.raises(ValueError, match="backwards"):
        m.step(0.0, T0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.2), st.floats(0, 50)), min_size=1, max_size=60),
       st.floats(0, 100), st.sampled_from([0.0, 0.2, 0.5]))
def test_property_trips_and_recoveries_alternate_and_follow_the_rule(
        steps: list[tuple[float, float]], recovery: float, hysteresis: float) -> None:
    threshold = 0.1
    level = threshold * (1 - hysteresis)
    m = BreakerMachine(threshold, recovery, hysteresis)
    now = T0
    history: list[tuple[float, float]] = []
    last_change = "recovered"
    trip_index = -1
    for figure, dt in steps:
        now += dt
        history.append((now, figure))
        change = m.step(figure, now)
        if change is None:
            continue
        assert change != last_change
        last_change = change
        if change == "tripped":
            assert figure > threshold
            trip_index = len(history) - 1
        else:
            tripped_at = history[trip_index][0]
            assert now - tripped_at >= recovery - 1e-9
            # the clear run: every figure after the last one above the recover level (or the trip)
            start = max(i for i, (_, f) in enumerate(history) if i <= trip_index or f > level) + 1
            assert start < len(history) and all(f <= level for _, f in history[start:])
            assert now - history[start][0] >= recovery - 1e-9
            # and the run that ended one step earlier was not long enough yet (it recovers on time)
            assert len(history) - 1 == start or history[-2][0] - history[start][0] < recovery - 1e-9


# ----------------------------------------------------------------------------- figures


def test_price_range_is_high_minus_low_over_low_within_the_window() -> None:
    r = PriceRange(300.0)
    r.add(100.0, T0)
    r.add(110.0, T0 + 10)
    r.add(104.0, T0 + 20)
    assert r.figure(T0 + 20) == pytest.approx(0.10)
    assert r.figure(T0 + 305) == pytest.approx(110 / 104 - 1)  # 100 left the window
    assert r.figure(T0 + 400) == 0.0 and r.empty()


def test_failure_rate_is_judged_only_from_min_orders() -> None:
    f = FailureRate(180.0, min_orders=20)
    f.add(True, T0)
    f.add(False, T0)
    f.add(False, T0)
    assert f.figure(T0) == 0.0  # 1 of 3: not a rate
    for _ in range(17):
        f.add(False, T0 + 1)
    assert f.figure(T0 + 1) == pytest.approx(1 / 20)
    assert f.figure(T0 + 180.5) == 0.0  # the first three left the window: 17 < 20


def test_time_mean_weights_by_time_and_counts_time_before_the_first_value_as_0() -> None:
    m = TimeMean(600.0)
    m.set(1.0, T0)
    assert m.figure(T0 + 60) == pytest.approx(0.1)  # one busy minute of a 10-minute window
    m.set(0.5, T0 + 100)
    assert m.figure(T0 + 200) == pytest.approx((100 + 50) / 600)
    assert m.figure(T0 + 800) == pytest.approx(0.5)  # only the 0.5 is left in the window


@pytest.mark.parametrize("payload", [
    b'{"record":"mark","v":1,"venue":"k","symbol":"BTC/USD","price":"0","time":1}',
    b'{"record":"mark","v":1,"venue":"k","symbol":"BTC/USD","price":"NaN","time":1}',
    b'{"record":"mark","v":1,"venue":"k","symbol":"BTC/USD","price":"1","time":true}',
    b'{"record":"mark","v":2,"venue":"k","symbol":"BTC/USD","price":"1","time":1}',
    b'{"record":"mark","v":1,"venue":"k","price":"1","time":1}',
    b'{"record":"mark"', b"\xff\"mark\"", b'["mark"]'])
def test_bad_marks_are_not_judged(payload: bytes) -> None:
    assert parse_mark(payload) is None


def test_a_mark_is_read_with_its_decimal_price() -> None:
    assert parse_mark(mark("kraken", "BTC/USD", "43000.5", T0)) == ("kraken", "BTC/USD", 43000.5, T0)


# ----------------------------------------------------------------------------- the four


def test_market_volatility_trips_per_symbol_just_above_5_percent_and_pauses_that_symbol() -> None:
    b = breakers()
    b.observe_payload(mark("kraken", "BTC/USD", "100", T0), T0)
    b.observe_payload(mark("kraken", "ETH/USD", "100", T0), T0)
    b.observe_payload(mark("kraken", "BTC/USD", "105", T0 + 1), T0 + 1)
    assert b.tick(T0 + 1) == []  # exactly 0.05: not above
    b.observe_payload(mark("coinbase", "BTC/USD", "100", T0 + 2), T0 + 2)
    b.observe_payload(mark("coinbase", "BTC/USD", "105.001", T0 + 2), T0 + 2)
    (trip,) = b.tick(T0 + 2)
    assert (trip.breaker, trip.change, trip.subject) == ("market_volatility", "tripped", "BTC/USD")
    (action,) = b.actions(T0 + 2)
    assert action.kind == "pause" and action.scope == Scope(symbol="BTC/USD") and action.until == T0 + 302
    assert action.by == "breaker:market_volatility"
    b.done(action)
    assert b.actions(T0 + 3) == []
    assert b.snapshot()["market_volatility"]["state"] == "tripped"
    # The prices leave the window at T0+302 (the last at T0+2); then 300 s clear.
    assert b.tick(T0 + 302) == []
    assert b.tick(T0 + 302.5) == []
    assert b.snapshot()["market_volatility"]["state"] == "recovering"
    assert b.tick(T0 + 602.4) == []
    (rec,) = b.tick(T0 + 602.5)
    assert rec.change == "recovered" and rec.held_s == pytest.approx(600.5)


def test_execution_failure_rate_one_of_three_does_not_trip_two_of_fifty_does() -> None:
    b = breakers()
    b.observe_payload(order("rejected"), T0)
    b.observe_payload(order("filled"), T0)
    b.observe_payload(order("cancelled"), T0)
    b.observe_payload(order("open"), T0)  # not an end
    assert b.tick(T0) == []
    for i in range(47):
        b.observe_payload(order("filled", i), T0 + 1)
    assert b.tick(T0 + 1) == []  # 1 of 50 = 0.02: at the threshold, not above
    b.observe_payload(order("expired"), T0 + 2)
    (trip,) = b.tick(T0 + 2)  # 2 of 51
    assert trip.breaker == "execution_failure_rate" and "2 of 51 ended orders" in trip.reason
    (action,) = b.actions(T0 + 2)
    assert action.kind == "throttle" and action.rate == 2.0 and action.burst == 5.0 and action.until == T0 + 182
    b.done(action)
    # T0+180.x: the first records leave the window (fewer than min_orders) → clear from T0+182 (the tick)
    assert b.tick(T0 + 182) == []
    assert b.tick(T0 + 361.9) == []
    (rec,) = b.tick(T0 + 362)
    assert rec.change == "recovered"


def test_venue_unavailability_trips_when_the_down_share_crosses_10_percent_and_pauses_dead_venues() -> None:
    b = breakers()
    up = [(v, u, "up") for v in ("kraken", "coinbase") for u in ("fibre", "starlink")]
    b.observe_paths(up, T0)
    b.tick(T0)
    down = [("kraken", "fibre", "down"), ("kraken", "starlink", "down")] + up[2:]
    b.observe_paths(down, T0 + 100)  # share 0.5 from T0+100; the mean over 600 s: 0.5 (t - 100) / 600
    assert b.tick(T0 + 220) == []  # 0.1 exactly
    (trip,) = b.tick(T0 + 220.01)
    assert trip.breaker == "venue_unavailability"
    assert "kraken/fibre, kraken/starlink of 4 paths" in trip.reason
    (action,) = b.actions(T0 + 220.01)
    assert action.kind == "pause" and action.scope == Scope(venue="kraken")
    b.done(action)
    b.observe_paths(up, T0 + 300)
    assert b.actions(T0 + 301) == []  # no venue down any more: nothing new to pause


def test_system_load_trips_on_the_mean_above_0_90_and_throttles() -> None:
    b = breakers()
    b.observe_load(1.0, T0)
    assert b.tick(T0 + 108) == []  # 108 busy seconds of a 120 s window: 0.90, not above
    (trip,) = b.tick(T0 + 108.01)
    assert trip.breaker == "system_load"
    (action,) = b.actions(T0 + 108.01)
    assert action.kind == "throttle"
    b.observe_load(0.1, T0 + 120)
    # at or below the recover level 0.72 once the mean has fallen: (1.0 x + 0.1 (120 - x)) / 120 <= 0.72
    assert b.tick(T0 + 120 + 37.3) == [] and b.snapshot()["system_load"]["state"] == "tripped"
    assert b.tick(T0 + 120 + 37.4) == [] and b.snapshot()["system_load"]["state"] == "recovering"
    (rec,) = b.tick(T0 + 120 + 37.4 + 120)
    assert rec.change == "recovered"


def test_a_pause_is_renewed_while_tripped_and_ends_when_the_breaker_can_recover() -> None:
    b = breakers(system_load={"response": "pause", "recovery": 100.0})
    b.observe_load(1.0, T0 - 200)
    b.tick(T0)
    (first,) = b.actions(T0)
    assert first.until == T0 + 100
    b.done(first)
    assert b.actions(T0 + 74) == []  # 26 s left: more than min(30, 100/4) = 25
    (renew,) = b.actions(T0 + 75)
    assert renew.until == T0 + 175
    b.done(renew)
    assert b.actions(T0 + 76) == []


def test_a_kill_response_is_given_once_and_none_gives_nothing() -> None:
    b = breakers(system_load={"response": "kill"}, execution_failure_rate={"response": "none"})
    b.observe_load(1.0, T0 - 200)
    for i in range(30):
        b.observe_order_end("rejected", T0)
    assert len(b.tick(T0)) == 2
    (kill,) = b.actions(T0)
    assert kill.kind == "kill" and kill.scope == Scope() and kill.until is None
    assert b.actions(T0 + 1) == [kill]  # not done yet: offered again
    b.done(kill)
    assert b.actions(T0 + 2) == []


def test_config_defaults_are_the_brief_figures() -> None:
    specs = BreakersConfig().specs()
    assert [(s.threshold, s.window, s.recovery, s.response) for s in specs.values()] == [
        (0.05, 300.0, 300.0, "pause"), (0.02, 180.0, 180.0, "throttle"), (0.10, 600.0, 600.0, "pause"),
        (0.90, 120.0, 120.0, "throttle")]


def test_the_cores_import_no_trio() -> None:
    for path in ("daemon/guard/breakers.py", "daemon/core/breaker.py"):
        source = (Path(__file__).parents[3] / path).read_text()
        assert "import trio" not in source and "from trio" not in source, path


# ----------------------------------------------------------------------------- the figures against brute force

times = st.lists(st.tuples(st.floats(0, 40), st.floats(1, 200)), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(times, st.floats(0, 40))
def test_property_price_range_equals_the_brute_force_range(points: list[tuple[float, float]], later: float) -> None:
    r, seen, t = PriceRange(60.0), [], T0
    for i, (dt, price) in enumerate(points):
        t += dt
        r.add(price, t)
        seen.append((t, price))
        # judged at non-decreasing times, as the ticks do; the last one some time later
        for now in (t, t + later) if i == len(points) - 1 else (t,):
            inside = [p for at, p in seen if at >= now - 60.0]
            expected = (max(inside) - min(inside)) / min(inside) if inside else 0.0
            assert r.figure(now) == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.booleans()), min_size=1, max_size=120), st.integers(1, 30))
def test_property_failure_rate_equals_the_brute_force_share(ends: list[tuple[float, bool]], min_orders: int) -> None:
    f, seen, t = FailureRate(60.0, min_orders), [], T0
    for dt, failed in ends:
        t += dt
        f.add(failed, t)
        seen.append((t, failed))
        inside = [x for at, x in seen if at >= t - 60.0]
        expected = sum(inside) / len(inside) if len(inside) >= min_orders else 0.0
        assert f.figure(t) == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 50), st.sampled_from([0.0, 0.25, 0.5, 1.0])), min_size=1, max_size=40))
def test_property_time_mean_equals_the_brute_force_integral(steps: list[tuple[float, float]]) -> None:
    m, seen, t = TimeMean(100.0), [], T0
    for dt, value in steps:
        m.set(value, t)
        seen.append((t, value))
        t += dt
        lo = t - 100.0
        total = sum(max(0.0, min(end, t) - max(at, lo)) * v
                    for (at, v), end in zip(seen, [s[0] for s in seen[1:]] + [t]))
        assert m.figure(t) == pytest.approx(total / 100.0, abs=1e-9)


def test_a_mark_is_timed_by_the_journal_not_by_the_engine_clock() -> None:
    b = breakers()
    b.observe_payload(mark("kraken", "BTC/USD", "100", T0 + 10**6), T0)  # an engine clock far ahead
    b.observe_payload(mark("kraken", "BTC/USD", "110", T0 + 10**6), T0 + 1)
    (trip,) = b.tick(T0 + 1)
    assert trip.subject == "BTC/USD"
    assert b.tick(T0 + 302) == []  # both left the window at T0 + 301: clear from here
    (rec,) = b.tick(T0 + 602)
    assert rec.change == "recovered"


def test_two_throttling_breakers_share_the_one_throttle_without_shortening_it() -> None:
    b = breakers(system_load={"throttle_rate": 1.0})
    for _ in range(25):
        b.observe_order_end("rejected", T0)
    b.tick(T0)
    (first,) = b.actions(T0)
    assert (first.breaker, first.until, first.rate) == ("execution_failure_rate", T0 + 180, 2.0)
    b.done(first)
    b.observe_load(1.0, T0 - 70)  # busy for the whole window by T0 + 50
    b.tick(T0 + 50.5)
    (second,) = b.actions(T0 + 50.5)
    # the latest end of both (execution_failure_rate, still above, could recover at T0 + 230.5 at the earliest)
    assert (second.breaker, second.until, second.rate) == ("system_load", T0 + 230.5, 1.0)
    b.done(second)
    # execution_failure_rate renews 30 s before its end: with the later end of both, never a shorter one
    (renew,) = b.actions(T0 + 150)
    assert renew.breaker == "execution_failure_rate" and renew.until >= T0 + 270 and renew.rate == 1.0
