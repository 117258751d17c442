"""The uplink service shell under a MockClock, with scripted links and a recording route
backend: exact failover and failback times, retries, repairs, pins, all-down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import trio
import trio.testing

from daemon.config import parse_config
from daemon.core.bus import EventBus
from daemon.uplinks import ProbeResult, UplinkRoute
from daemon.uplinks.service import UplinkService
from tests.support.events import drain

CONFIG = """
[node]
name = "t"
[uplinks.fibre]
interface = "fibre0"
source = "10.71.1.2"
gateway = "10.71.1.1"
targets = ["udp://10.75.0.1:7", "udp://10.75.0.2:7"]
[uplinks.starlink]
kind = "starlink"
priority = 20
interface = "star0"
source = "10.72.1.2"
gateway = "10.72.1.1"
targets = ["udp://10.75.0.1:7", "udp://10.75.0.2:7"]
[failover]
route_backend = "netlink"  # the tests hand in a recording backend
hold_down = "30s"
min_dwell = "10s"
route_check_interval = "1s"
"""


class ScriptedProber:
    """Answers after ``rtt`` while ``alive(now)`` is true, else times out."""

    def __init__(self, name: str, timeout: float, rtt: float, alive: Callable[[float], bool]) -> None:
        self.name = name
        self.timeout = timeout
        self.rtt = rtt
        self.alive = alive
        self.counters = {"sent": 0}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def probe_round(self, seq: int) -> list[ProbeResult]:
        sent = trio.current_time()
        self.counters["sent"] += 2
        if self.alive(sent):
            await trio.sleep(self.rtt)
            return [ProbeResult(self.name, f"t{i}", seq, sent, True, self.rtt) for i in range(2)]
        await trio.sleep(self.timeout)
        return [ProbeResult(self.name, f"t{i}", seq, sent, False, None, "timeout") for i in range(2)]


@dataclass
class CurrentRoute:
    gateway: str
    interface: str


class RecordingBackend:
    name = "recording"

    def __init__(self) -> None:
        self.applied: list[tuple[float, str]] = []
        self.fail_next = 0
        self.current_route: CurrentRoute | None = None
        self.prepared: list[UplinkRoute] = []
        self.cleaned = False

    async def prepare(self, uplinks: list[UplinkRoute]) -> None:
        self.prepared = uplinks

    async def apply(self, uplink: UplinkRoute) -> None:
        await trio.sleep(0.001)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError(f"replace default via {uplink.gateway} dev {uplink.interface}: Network is down")
        self.applied.append((trio.current_time(), uplink.name))
        self.current_route = CurrentRoute(uplink.gateway, uplink.interface)

    async def current(self) -> CurrentRoute | None:
        return self.current_route

    async def refresh(self, uplinks: list[UplinkRoute]) -> None:
        pass

    async def cleanup(self) -> None:
        self.cleaned = True


class World:
    def __init__(self, config_text: str = CONFIG) -> None:
        self.config = parse_config(config_text)
        self.bus = EventBus(1024)
        self.events = self.bus.subscribe("test")
        self.backend = RecordingBackend()
        self.fibre_alive: Callable[[float], bool] = lambda t: True
        self.starlink_alive: Callable[[float], bool] = lambda t: True
        self.flushed: list[str] = []

        def prober(name: str, cfg: Any) -> ScriptedProber:
            alive = (lambda t: self.fibre_alive(t)) if name == "fibre" else (lambda t: self.starlink_alive(t))
            return ScriptedProber(name, float(cfg.timeout), 0.002 if name == "fibre" else 0.04, alive)

        async def flush(source: str) -> int:
            self.flushed.append(source)
            return 3

        self.service = UplinkService(self.config, self.bus, route_backend=self.backend,
                                     prober_factory=prober, flush_flows=flush)

    def drain(self) -> list[Any]:
        return drain(self.events)


def route_at(world: World, t: float) -> str | None:
    current = None
    for at, name in world.backend.applied:
        if at <= t:
            current = name
    return current


async def test_failover_and_failback_at_exact_times(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    w.fibre_alive = lambda t: not (10.1 <= t < 20.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.service.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    applied = w.backend.applied
    # Initial: fibre, once both uplinks have answered their first round.
    assert applied[0][1] == "fibre" and applied[0][0] == pytest.approx(0.041, abs=0.002)
    # Cut at 10.1: rounds sent at 10.2, 10.4, 10.6 are lost, the third judged at 10.85.
    assert applied[1][1] == "starlink"
    assert applied[1][0] == pytest.approx(10.85 + 0.001, abs=1e-6)
    # Restored at 20.1: UP after 10 good rounds (sent 20.2 .. 22.0, judged 22.002);
    # failback 30 s later, at the first round judged after 52.002.
    assert applied[2][1] == "fibre"
    assert applied[2][0] == pytest.approx(52.2 + 0.002 + 0.001, abs=1e-6)
    assert len(applied) == 3, "no flapping"
    events = w.drain()
    changes = [e for e in events if e.kind == "ActiveUplinkChanged"]
    assert [(e.change, e.active) for e in changes] == [
        ("initial", "fibre"), ("failover", "starlink"), ("failback", "fibre")]
    failover = changes[1]
    assert failover.previous == "fibre"
    assert failover.reason.startswith("failover to starlink: fibre DOWN")
    assert failover.detection_ms == pytest.approx(850, abs=0.5)  # last good round sent at 10.0
    flushed = [(e.uplink, e.flows) for e in events if e.kind == "UplinkFlowsFlushed"]
    assert flushed == [("fibre", 3), ("starlink", 3)]
    assert changes[2].reason.startswith("failback to fibre: UP for 30.")
    # Flows of the dead fibre flushed on failover; the backup's on failback ("move").
    assert w.flushed == ["10.71.1.2", "10.72.1.2"]
    health = [(e.uplink, e.state) for e in events if e.kind == "UplinkHealthChanged"]
    assert ("fibre", "down") in health and health.count(("fibre", "up")) == 2
    assert w.backend.cleaned


async def test_route_change_failures_are_retried_and_reported(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    w.backend.fail_next = 3
    async with trio.open_nursery() as nursery:
        await nursery.start(w.service.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [name for _, name in w.backend.applied] == ["fibre"]
    # 3 failures with backoff 50, 100, 200 ms after the first attempt at ~0.041.
    assert w.backend.applied[0][0] == pytest.approx(0.041 + 0.001 * 3 + 0.35 + 0.001, abs=0.003)
    failures = [e for e in w.drain() if e.kind == "RouteChangeFailed"]
    assert [e.attempt for e in failures] == [1, 2, 3]
    assert "Network is down" in failures[0].error
    assert w.service.route_errors == 3 and w.service.last_route_error is None


async def test_route_changed_by_someone_else_is_repaired(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    async with trio.open_nursery() as nursery:
        await nursery.start(w.service.run)
        await trio.sleep(2.5)
        w.backend.current_route = CurrentRoute("192.0.2.1", "eth9")  # an admin's `ip route replace`
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert [name for _, name in w.backend.applied] == ["fibre", "fibre"]
    repaired = [e for e in w.drain() if e.kind == "RouteRepaired"]
    assert len(repaired) == 1 and repaired[0].found == "default via 192.0.2.1 dev eth9"
    assert w.service.route_repairs == 1


async def test_all_down_keeps_the_route_and_publishes_once(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    w.fibre_alive = lambda t: t < 5
    w.starlink_alive = lambda t: t < 5
    async with trio.open_nursery() as nursery:
        await nursery.start(w.service.run)
        await trio.sleep(30)
        status = w.service.status()
        nursery.cancel_scope.cancel()
    events = w.drain()
    assert sum(1 for e in events if e.kind == "AllUplinksDown") == 1
    # fibre failed first (3 rounds) -> starlink; then starlink too (15 rounds) -> all down.
    assert [name for _, name in w.backend.applied] == ["fibre", "starlink"]
    assert status.health == "failing"
    assert status.details["all_down"] is True


async def test_manual_pin_through_the_control_methods(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    methods: dict[str, Any] = {}

    class Control:
        def register(self, name: str, handler: Any, *, help: str) -> None:
            methods[name] = handler

    w.service.register_control(Control())
    async with trio.open_nursery() as nursery:
        await nursery.start(w.service.run)
        await trio.sleep(1)
        result = await methods["uplink.use"]({"name": "starlink"})
        assert result == {"pinned": "starlink", "switched": True, "active": "starlink", "note": None}
        await trio.sleep(100)
        assert route_at(w, trio.current_time()) == "starlink"
        result = await methods["uplink.auto"]({})
        assert result["active"] == "fibre" and result["switched"] is True  # fibre UP for > 30 s
        from daemon.core.control_client import ControlError

        with pytest.raises(ControlError, match="no uplink 'nope'"):
            await methods["uplink.use"]({"name": "nope"})
        with pytest.raises(ControlError, match="expected"):
            await methods["uplink.use"]({})
        status = await methods["uplink.status"]({})
        assert status["active"] == "fibre" and set(status["uplinks"]) == {"fibre", "starlink"}
        nursery.cancel_scope.cancel()
    assert [name for _, name in w.backend.applied] == ["fibre", "starlink", "fibre"]


async def test_status_and_metrics(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    async with trio.open_nursery() as nursery:
        await nursery.start(w.service.run)
        await trio.sleep(12)
        status = w.service.status()
        families = {f.name: f for f in w.service.metrics()}
        nursery.cancel_scope.cancel()
    assert status.health == "ok"
    assert status.summary.startswith("active fibre; fibre UP 2.0ms 0% loss, starlink UP 40.0ms 0% loss")
    active = {s.labels["uplink"]: s.value for s in families["lifeline_uplink_active"].samples}
    assert active == {"fibre": 1, "starlink": 0}
    up = {(s.labels["uplink"], s.labels["state"]): s.value for s in families["lifeline_uplink_state"].samples}
    assert up[("fibre", "up")] == 1 and up[("fibre", "down")] == 0
    rtt = {s.labels["uplink"]: s.value for s in families["lifeline_uplink_rtt_seconds"].samples}
    assert rtt["starlink"] == pytest.approx(0.04)
    # Every answered probe is in the RTT histogram (a prometheus_client family).
    histogram = families["lifeline_uplink_probe_rtt_seconds"]
    assert histogram.type == "histogram"
    counts = {s.labels["uplink"]: s.value for s in histogram.samples if s.name.endswith("_count")}
    assert counts["fibre"] > 10 and counts["starlink"] > 10
    buckets = {s.labels["le"]: s.value for s in histogram.samples
               if s.name.endswith("_bucket") and s.labels["uplink"] == "starlink"}
    assert buckets["0.02"] == 0 and buckets["0.08"] == counts["starlink"]  # 40 ms each
    # sent and received are two counters, not one metric with a "counter" label.
    assert "lifeline_uplink_probe_events_total" not in families
    assert {"lifeline_uplink_probes_sent_total", "lifeline_uplink_probes_received_total"} <= set(families)


async def test_route_backend_none_decides_and_reports_but_flushes_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(CONFIG.replace('route_backend = "netlink"', 'route_backend = "none"'))
    assert w.config.failover.route_backend == "none" and w.config.failover.flush_conntrack
    w.fibre_alive = lambda t: not (10.1 <= t < 20.1)
    with caplog.at_level("INFO", logger="lifeline"):
        async with trio.open_nursery() as nursery:
            await nursery.start(w.service.run)
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
    events = w.drain()
    changes = [(e.change, e.active) for e in events if e.kind == "ActiveUplinkChanged"]
    assert changes == [("initial", "fibre"), ("failover", "starlink"), ("failback", "fibre")]  # decided, reported
    assert w.flushed == []  # ... and not one conntrack entry touched
    assert not [e for e in events if e.kind == "UplinkFlowsFlushed"]
    skipped = [r for r in caplog.records if getattr(r, "event", "") == "conntrack.flush_skipped"]
    assert [r.fields["uplink"] for r in skipped] == ["fibre", "starlink"]  # type: ignore[attr-defined]
