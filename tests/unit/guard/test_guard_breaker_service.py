"""The breakers' trio shell (daemon/guard/breaker_service.py) under MockClock: each breaker
trips at its threshold and recovers after its recovery time, at exact virtual times, with
its events and its response."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from daemon.core.bus import EventBus
from daemon.core.errors import Unavailable
from daemon.core.events import BreakerRecovered, BreakerTripped
from daemon.guard.blocks import GuardRecord, Scope
from daemon.guard.breaker_service import BlocksActions, BreakerService
from daemon.guard.killswitch import MemoryBlocks
from daemon.guard.breakers_config import BreakersConfig

T0 = 1_800_000_000.0


@dataclass
class Rec:
    seq: int
    epoch: int
    timestamp_ns: int
    payload: bytes


@dataclass
class Pos:
    seq: int


class FakeJournal:
    """The journal's reading side: read, last, first_seq, wait_beyond."""

    def __init__(self) -> None:
        self.records: list[Rec] = []
        self.first_seq = 1
        self._grew = trio.Event()

    @property
    def last(self) -> Pos:
        return Pos(len(self.records))

    def append(self, payload: bytes) -> None:
        now = T0 + trio.current_time()
        self.records.append(Rec(len(self.records) + 1, 1, int(now * 1e9), payload))
        self._grew.set()
        self._grew = trio.Event()

    def read(self, start: int, limit: int) -> list[Rec]:
        return self.records[start - 1:start - 1 + limit]

    async def wait_beyond(self, seq: int) -> None:
        while len(self.records) <= seq:
            await self._grew.wait()


class Holder:
    def __init__(self) -> None:
        self.journal = FakeJournal()


class Recorder:
    """GuardActions that record what they were asked, with the virtual time."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[float, str, Any]] = []
        self.fail = fail

    async def pause(self, scope: Scope, reason: str, by: str, until: float | None) -> None:
        if self.fail:
            raise Unavailable("not primary")
        self.calls.append((trio.current_time(), "pause", (scope, by, until)))

    async def throttle(self, rate: float, burst: float, reason: str, by: str, until: float | None) -> None:
        if self.fail:
            raise Unavailable("not primary")
        self.calls.append((trio.current_time(), "throttle", (rate, burst, by, until)))

    async def kill(self, scope: Scope, reason: str, by: str) -> None:
        self.calls.append((trio.current_time(), "kill", (scope, by)))


def order(state: str, n: int) -> bytes:
    return json.dumps({"record": "order", "v": 1, "client_order_id": f"c{n}", "venue": "kraken",
                       "symbol": "BTC/USD", "side": "buy", "amount": "1", "price": "100", "state": state}).encode()


def clock() -> float:
    return T0 + trio.current_time()


def events(bus: EventBus) -> list[tuple[str, str, float]]:
    return [(type(e).__name__, getattr(e, "breaker"), round(e.wall_time, 3))
            for e in bus.recent if isinstance(e, (BreakerTripped, BreakerRecovered))]


async def test_execution_failure_rate_trips_on_the_tick_after_the_burst_and_recovers_180s_later(
        autojump_clock: trio.testing.MockClock) -> None:
    bus, holder, actions = EventBus(), Holder(), Recorder()
    service = BreakerService(BreakersConfig(), bus, actions=actions, journal_holder=holder, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(10.5)
        for i in range(19):
            holder.journal.append(order("filled", i))
        holder.journal.append(order("rejected", 99))  # 1 of 20 = 0.05 > 0.02, judged from 20 ended
        await trio.sleep(0.6)  # the tick at t=11
        trips = [e for e in bus.recent if isinstance(e, BreakerTripped)]
        assert [(e.breaker, e.figure, e.response) for e in trips] == [("execution_failure_rate", 0.05, "throttle")]
        assert "1 of 20 ended orders" in trips[0].reason
        assert actions.calls == [(11.0, "throttle", (2.0, 5.0, "breaker:execution_failure_rate", T0 + 11 + 180))]
        # The records leave the window at 10.5 + 180 = 190.5; the first clear tick is t=191.
        await trio.sleep(191 + 180 - 0.5 - trio.current_time())
        assert not [e for e in bus.recent if isinstance(e, BreakerRecovered)]
        await trio.sleep(1)
        (rec,) = [e for e in bus.recent if isinstance(e, BreakerRecovered)]
        assert rec.breaker == "execution_failure_rate" and rec.tripped_for_s == pytest.approx(360.0)
        # renewed 30 s before each end while tripped; the last one ends exactly at the recovery
        assert [(c[0], c[2][3] - T0) for c in actions.calls] == [(11.0, 191.0), (161.0, 341.0), (311.0, 371.0)]
        assert service.status().health == "ok"
        nursery.cancel_scope.cancel()


async def test_system_load_and_venue_unavailability_from_their_feeds(autojump_clock: trio.testing.MockClock) -> None:
    bus, actions = EventBus(), Recorder()
    load = {"value": 0.5}
    matrix = [("kraken", "fibre", "up"), ("kraken", "starlink", "up")]
    service = BreakerService(BreakersConfig(), bus, actions=actions, clock=clock,
                             load=lambda: load["value"], paths=lambda: list(matrix))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(59.5)
        load["value"] = 1.0  # polled from the tick at t=60
        matrix[:] = [("kraken", "fibre", "down"), ("kraken", "starlink", "down")]
        await trio.sleep(200)
        kinds = {(e.breaker, type(e).__name__) for e in bus.recent if isinstance(e, (BreakerTripped, BreakerRecovered))}
        assert kinds == {("system_load", "BreakerTripped"), ("venue_unavailability", "BreakerTripped")}
        by_breaker: dict[str, Any] = {}
        for call in actions.calls:
            by_breaker.setdefault(call[2][-2] if call[1] == "throttle" else call[2][1], call)
        pause = by_breaker["breaker:venue_unavailability"]
        assert pause[2][0] == Scope(venue="kraken")
        # venue_unavailability: share 1.0 from t=60; the mean over 600 s, (t - 60) / 600, is 0.1 at t = 120
        # (not above): the first tick above it is t = 121
        assert pause[0] == 121.0
        # system_load: the mean over the 120 s window at t > 120 is (0.5 (180 - t) + (t - 60)) / 120, exactly
        # 0.9 at t = 156 (not above): the first tick above it is t = 157
        assert by_breaker["breaker:system_load"][0] == 157.0
        assert service.status().health == "degraded" and "system_load TRIPPED" in service.status().summary
        metrics = {f.name: f for f in service.metrics()}
        tripped = {s.labels["breaker"]: s.value for s in metrics["lifeline_breaker_tripped"].samples}
        assert tripped == {"market_volatility": 0.0, "execution_failure_rate": 0.0, "venue_unavailability": 1.0,
                           "system_load": 1.0}
        nursery.cancel_scope.cancel()


async def test_a_standby_trips_but_cannot_respond_and_offers_it_again_every_tick(autojump_clock: trio.testing.MockClock) -> None:
    bus, actions = EventBus(), Recorder(fail=True)
    service = BreakerService(BreakersConfig(), bus, actions=actions, clock=clock, load=lambda: 1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(118.5)  # the mean t / 120 is above 0.9 from the tick at t = 109: ticks 109 ... 118
        assert [e.breaker for e in bus.recent if isinstance(e, BreakerTripped)] == ["system_load"]
        assert service.response_failures == 10 and "not primary" in (service.last_response_error or "")
        nursery.cancel_scope.cancel()


async def test_blocks_actions_write_guard_records_by_the_breaker() -> None:
    written: list[bytes] = []

    async def append(payload: bytes) -> None:
        written.append(payload)

    writer = MemoryBlocks(persist=append)
    actions = BlocksActions(writer, clock=lambda: T0)
    await actions.pause(Scope(symbol="BTC/USD"), "volatile", "breaker:market_volatility", T0 + 300)
    await actions.throttle(2.0, 5.0, "failures", "breaker:execution_failure_rate", T0 + 180)
    await actions.kill(Scope(venue="kraken"), "dead", "breaker:venue_unavailability")
    records = [json.loads(p) for p in written]
    assert [(r["action"], r["by"]) for r in records] == [
        ("pause", "breaker:market_volatility"), ("throttle", "breaker:execution_failure_rate"),
        ("kill", "breaker:venue_unavailability")]
    blocks = writer.blocks()
    assert blocks.refusal("kraken", "ETH/USD", T0 + 1) is not None  # killed
    assert blocks.refusal("coinbase", "BTC/USD", T0 + 1) is not None  # paused symbol
    assert isinstance(GuardRecord, type)


async def test_at_start_only_records_within_the_longest_window_are_folded(
        autojump_clock: trio.testing.MockClock) -> None:
    bus, holder = EventBus(), Holder()
    for i in range(40):  # at t=0: 40 rejected orders...
        holder.journal.append(order("rejected", i))
    await trio.sleep(700)  # ...older than every window (600 s the longest) by the time the service starts
    for i in range(5):
        holder.journal.append(order("filled", 100 + i))
    service = BreakerService(BreakersConfig(), bus, journal_holder=holder, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(1)
        assert service.position == 45 and service.breakers.ended == 5
        assert not [e for e in bus.recent if isinstance(e, BreakerTripped)]
        nursery.cancel_scope.cancel()
