"""The host-health breaker: the sans-IO machine with plain floats for ``now``, then the
trio service under a MockClock with a scripted sampler."""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import system
from daemon.config import Duration, SystemConfig
from daemon.core.bus import EventBus
from daemon.core.events import SystemOverloaded, SystemRecovered
from daemon.system import (
    Decision,
    HostHealthMachine,
    HostSample,
    HostState,
    SystemHealthService,
    describe_sample,
    format_seconds,
)

CONFIG = SystemConfig()  # interval 2s, thresholds 0.90 / 85 °C, sustain 10s, margin 0.05


def sample(
    cpu: float = 0.10, mem: float = 0.40, disk: float = 0.20, temp: float | None = None, load1: float = 0.31
) -> HostSample:
    return HostSample(
        cpu_fraction=cpu,
        load1=load1,
        load5=0.2,
        load15=0.1,
        cpu_count=8,
        memory_used_fraction=mem,
        memory_available_bytes=4_000_000_000,
        disk_used_fraction=disk,
        disk_free_bytes=80_000_000_000,
        temperature_c=temp,
    )


def feed(machine: HostHealthMachine, times: "list[float] | range", **values: float | None) -> list[Decision]:
    out: list[Decision] = []
    for t in times:
        out += machine.step(sample(**values), float(t))  # type: ignore[arg-type]
    return out


def tripped_machine(at: float = 10.0) -> HostHealthMachine:
    """A machine that went OVERLOADED on cpu at ``at`` (cpu over from ``at - 10``)."""
    m = HostHealthMachine(CONFIG)
    decisions = feed(m, [at - 10 + t for t in range(0, 11, 2)], cpu=0.97)
    assert [d.state for d in decisions] == [HostState.OVERLOADED]
    assert decisions[0].at == at
    return m


# ------------------------------------------------------------------ arming (NORMAL → OVERLOADED)


def test_starts_normal_and_stays_normal_on_healthy_samples() -> None:
    m = HostHealthMachine(CONFIG)
    assert m.state is HostState.NORMAL and not m.overloaded and m.since is None
    assert feed(m, range(0, 100, 2)) == []
    assert m.state is HostState.NORMAL


def test_trips_exactly_when_sustain_is_reached() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, [0, 2, 4, 6, 8], cpu=0.97) == []
    [d] = m.step(sample(cpu=0.97), 10.0)
    assert d.state is HostState.OVERLOADED
    assert d.at == 10.0
    assert d.reason == "overloaded: cpu 0.97 > 0.90 for 10s"
    assert d.reasons == ("cpu 0.97 > 0.90 for 10s",)
    assert m.overloaded and m.since == 10.0
    # Already open: more over samples decide nothing new.
    assert feed(m, [12, 14, 16], cpu=0.99) == []


def test_does_not_trip_just_before_sustain() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, [0.0, 5.0, 9.999], cpu=0.97) == []
    assert not m.overloaded
    assert [d.at for d in m.step(sample(cpu=0.97), 10.0)] == [10.0]


def test_a_run_starts_at_its_first_over_sample_not_at_the_first_sample() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, [0, 2, 4]) == []
    assert feed(m, [6, 8, 10, 12, 14], cpu=0.95) == []
    assert [d.at for d in feed(m, [16], cpu=0.95)] == [16]


def test_brief_spikes_do_not_trip() -> None:
    m = HostHealthMachine(CONFIG)
    for start in (0, 10, 20, 30):
        # 8 s over, then one healthy sample: never 10 s in a row.
        assert feed(m, [start, start + 2, start + 4, start + 6, start + 8], cpu=0.99) == []
        assert feed(m, [start + 9], cpu=0.10) == []
    assert not m.overloaded


def test_a_value_exactly_at_the_threshold_is_not_over() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, range(0, 60, 2), cpu=0.90, mem=0.90, disk=0.90, temp=85.0) == []


def test_the_hysteresis_band_breaks_an_arming_run() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, [0, 2, 4, 6, 8], cpu=0.97) == []
    assert feed(m, [9], cpu=0.88) == []  # between 0.85 and 0.90: not over
    assert feed(m, [10, 12, 14, 16, 18], cpu=0.97) == []
    assert [d.at for d in feed(m, [20], cpu=0.97)] == [20]


def test_sustain_zero_trips_and_recovers_on_the_first_sample() -> None:
    m = HostHealthMachine(replace(CONFIG, sustain=Duration(0)))
    [d] = m.step(sample(disk=0.95), 0.0)
    assert d.state is HostState.OVERLOADED and d.reason == "overloaded: disk 0.95 > 0.90 for 0s"
    assert m.step(sample(disk=0.87), 1.0) == []  # band: still not recovered
    [r] = m.step(sample(disk=0.80), 2.0)
    assert r.state is HostState.NORMAL and r.overloaded_for_s == 2.0


def test_float_times_stepped_by_adds_still_trip_on_time() -> None:
    # 100 ms ticks summed: ten adds of 0.1 make 0.9999999999999999, which is 1 s.
    m = HostHealthMachine(replace(CONFIG, sustain=Duration(1.0)))
    t, trips = 0.0, []
    for i in range(20):
        for d in m.step(sample(cpu=0.95), t):
            trips.append(i)
        t += 0.1
    assert trips == [10]


def test_several_resources_trip_together_with_one_reason_each() -> None:
    m = HostHealthMachine(CONFIG)
    decisions = feed(m, range(0, 11, 2), cpu=0.97, mem=0.93, disk=0.10, temp=91.0)
    [d] = decisions
    assert d.reasons == (
        "cpu 0.97 > 0.90 for 10s",
        "memory 0.93 > 0.90 for 10s",
        "temperature 91.0°C > 85.0°C for 10s",
    )
    assert d.reason == "overloaded: " + "; ".join(d.reasons)


def test_only_resources_that_met_sustain_are_reasons() -> None:
    m = HostHealthMachine(CONFIG)
    feed(m, [0, 2], cpu=0.97)
    [d] = feed(m, [4, 6, 8, 10], cpu=0.97, mem=0.95)
    assert d.reasons == ("cpu 0.97 > 0.90 for 10s",)
    assert m.over_now() == ["cpu 0.97 > 0.90 for 10s", "memory 0.95 > 0.90 for 6s"]


def test_runs_of_different_resources_do_not_add_up() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, [0, 2, 4], cpu=0.97) == []
    assert feed(m, [6, 8, 10, 12, 14], mem=0.97) == []  # cpu back to normal at 6
    assert [d.reasons for d in feed(m, [16], mem=0.97)] == [("memory 0.97 > 0.90 for 10s",)]


# ------------------------------------------------------------------ recovery (OVERLOADED → NORMAL)


def test_recovers_after_sustain_of_all_clear() -> None:
    m = tripped_machine(at=10)
    assert feed(m, [12, 14, 16, 18, 20]) == []  # clear since 12
    [r] = m.step(sample(), 22.0)
    assert r.state is HostState.NORMAL
    assert r.at == 22.0
    assert r.overloaded_for_s == 12.0
    assert r.reason == "recovered: all resources at or below threshold - margin for 10s (overloaded 12s)"
    assert r.reasons == (r.reason,)
    assert m.state is HostState.NORMAL and m.since == 22.0


def test_recovery_needs_every_resource() -> None:
    m = tripped_machine(at=10)
    # cpu clear from 12, but memory sits in its band (0.85 < 0.88 <= 0.90): no recovery.
    assert feed(m, range(12, 60, 2), mem=0.88) == []
    assert m.overloaded
    assert m.describe() == "OVERLOADED, recovering: memory 0.88 above 0.85"
    # memory clears at 60: the sustain counts from there, not from cpu's clear time.
    assert feed(m, [60, 62, 64, 66, 68]) == []
    assert m.describe() == "OVERLOADED, recovering: memory clear for 8s of 10s"
    assert [d.at for d in feed(m, [70])] == [70]


def test_hysteresis_band_never_recovers_and_the_recover_level_itself_does() -> None:
    m = tripped_machine(at=10)
    assert feed(m, range(12, 100, 2), cpu=0.86) == []
    assert m.overloaded
    # Exactly at threshold - margin counts as recovered ("at or below").
    decisions = feed(m, range(100, 112, 2), cpu=0.85)
    assert [d.at for d in decisions] == [110]


def test_a_new_spike_while_overloaded_restarts_the_recovery_run() -> None:
    m = tripped_machine(at=10)
    assert feed(m, [12, 14, 16, 18]) == []
    assert feed(m, [19], disk=0.95) == []
    assert feed(m, [20, 22, 24, 26, 28]) == []
    # Only disk's run restarted; cpu and memory have been clear since 12.
    assert m.describe() == "OVERLOADED, recovering: disk clear for 8s of 10s"
    assert [d.at for d in feed(m, [30])] == [30]


def test_a_clear_run_starting_at_time_zero_is_kept() -> None:
    # now == 0.0 is falsy: a "since or now" slip would restart the run at every sample.
    m = HostHealthMachine(CONFIG)
    feed(m, [-20, -10], cpu=0.97)
    assert m.overloaded and m.since == -10
    assert feed(m, [0.0]) == []
    assert [d.overloaded_for_s for d in feed(m, [10.0])] == [20.0]


def test_trips_again_after_recovery() -> None:
    m = tripped_machine(at=10)
    feed(m, range(12, 23, 2))
    assert not m.overloaded
    assert [d.at for d in feed(m, range(30, 41, 2), temp=99.0)] == [40]


# ------------------------------------------------------------------ temperature


def test_temperature_recover_level_is_relative() -> None:
    m = HostHealthMachine(CONFIG)
    assert m.recover_level("temperature") == pytest.approx(85.0 * 0.95)
    assert m.recover_level("cpu") == pytest.approx(0.85)


def test_temperature_trips_and_its_band_holds_the_breaker_open() -> None:
    m = HostHealthMachine(CONFIG)
    [d] = feed(m, range(0, 11, 2), temp=85.5)
    assert d.reason == "overloaded: temperature 85.5°C > 85.0°C for 10s"
    assert feed(m, range(12, 60, 2), temp=81.0) == []  # 80.75 < 81 <= 85: band
    assert [r.at for r in feed(m, range(60, 71, 2), temp=80.75)] == [70]


def test_no_temperature_is_not_considered() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, range(0, 60, 2), temp=None) == []
    assert "temp" not in describe_sample(sample(temp=None))
    m = tripped_machine(at=10)
    assert [d.at for d in feed(m, range(12, 23, 2), temp=None)] == [22]


def test_a_missing_temperature_breaks_a_temperature_run() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, [0, 2, 4, 6, 8], temp=95.0) == []
    assert feed(m, [9], temp=None) == []
    assert feed(m, [10, 12, 14, 16, 18], temp=95.0) == []
    assert [d.at for d in feed(m, [20], temp=95.0)] == [20]


def test_sensors_vanishing_while_hot_restart_recovery_then_the_others_decide() -> None:
    m = HostHealthMachine(CONFIG)
    feed(m, range(0, 11, 2), temp=95.0)  # cpu, memory, disk clear all along
    assert m.overloaded
    # Not "recovered" at 12 just because the only hot resource went silent.
    assert [d.at for d in feed(m, range(12, 23, 2), temp=None)] == [22]


def test_a_clear_sensor_going_silent_does_not_restart_recovery() -> None:
    m = tripped_machine(at=10)
    assert feed(m, [12, 14, 16], temp=50.0) == []
    assert [d.at for d in feed(m, [18, 20, 22], temp=None)] == [22]


# ------------------------------------------------------------------ edges and text


def test_nan_neither_arms_nor_recovers() -> None:
    m = HostHealthMachine(CONFIG)
    assert feed(m, range(0, 40, 2), cpu=math.nan) == []
    m = tripped_machine(at=10)
    assert feed(m, range(12, 60, 2), cpu=math.nan) == []
    assert m.overloaded


def test_time_going_backwards_is_refused() -> None:
    m = HostHealthMachine(CONFIG)
    m.step(sample(), 5.0)
    with pytest.raises(ValueError, match="backwards"):
        m.step(sample(), 4.0)


def test_recover_level_never_goes_below_zero() -> None:
    m = HostHealthMachine(replace(CONFIG, cpu_threshold=0.03, recover_margin=0.05))
    assert m.recover_level("cpu") == 0.0


def test_descriptions() -> None:
    assert describe_sample(sample(cpu=0.12, mem=0.41, disk=0.23, temp=48.2)) == (
        "cpu 12% load 0.31 mem 41% disk 23% temp 48°C"
    )
    m = HostHealthMachine(CONFIG)
    assert m.describe() == "no sample yet"
    feed(m, range(0, 13, 2), cpu=0.97)
    assert m.describe() == "OVERLOADED: cpu 0.97 > 0.90 for 12s"
    assert format_seconds(10.0) == "10s"
    assert format_seconds(2.5) == "2.5s"
    assert format_seconds(9.99999999) == "10s"


def test_the_core_uses_neither_trio_nor_psutil() -> None:
    source = "".join(
        inspect.getsource(obj)
        for obj in (HostSample, HostState, Decision, HostHealthMachine, describe_sample, format_seconds)
    )
    assert "trio" not in source and "psutil" not in source


@settings(max_examples=300, deadline=None)
@given(
    cpus=st.lists(st.sampled_from([0.10, 0.85, 0.88, 0.90, 0.95]), min_size=1, max_size=80),
    sustain=st.sampled_from([0.0, 2.0, 6.0, 10.0]),
)
def test_property_transitions_alternate_and_follow_the_rules(cpus: list[float], sustain: float) -> None:
    m = HostHealthMachine(replace(CONFIG, sustain=Duration(sustain)))
    state = HostState.NORMAL
    history: list[tuple[float, float]] = []
    for i, cpu in enumerate(cpus):
        now = 2.0 * i
        history.append((now, cpu))
        window = [c for t, c in history if t >= now - sustain]
        run_covers_sustain = history[0][0] <= now - sustain
        for d in m.step(sample(cpu=cpu), now):
            assert d.state is not state  # strictly alternates
            state = d.state
            if d.state is HostState.OVERLOADED:
                assert run_covers_sustain and all(c > 0.90 for c in window)
            else:
                assert run_covers_sustain and all(c <= 0.85 for c in window)
        # Conversely: a full window entirely over must have opened the breaker.
        if run_covers_sustain and all(c > 0.90 for c in window):
            assert m.overloaded
        if run_covers_sustain and all(c <= 0.85 for c in window):
            assert not m.overloaded


# ================================================================== the trio service


class ScriptedSampler:
    """A fake sampler scripted by virtual time; records when it was called."""

    def __init__(self, script: Callable[[float], HostSample | Exception]) -> None:
        self.script = script
        self.calls: list[float] = []

    def __call__(self, state_dir: Path) -> HostSample:
        now = trio.current_time()
        self.calls.append(now)
        result = self.script(now)
        if isinstance(result, Exception):
            raise result
        return result


async def collect(bus: EventBus, into: list[tuple[float, object]]) -> None:
    with bus.subscribe("test") as sub:
        async for event in sub:
            into.append((trio.current_time(), event))


async def test_service_publishes_overload_and_recovery_at_exact_virtual_times(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # cpu over from t=4 to t=28; ticks every 2 s; sustain 10 s.
    def script(t: float) -> HostSample:
        return sample(cpu=0.97 if 4 <= t < 30 else 0.12)

    sampler = ScriptedSampler(script)
    bus = EventBus()
    service = SystemHealthService(CONFIG, tmp_path, bus, sampler, use_thread=False)
    events: list[tuple[float, object]] = []
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, bus, events)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(service.run)
            assert trio.current_time() == 0.0
            assert sampler.calls == [0.0]  # the priming read, before started()
            assert service.status().summary == "waiting for the first sample"

            await trio.sleep_until(14.0 - 0.5)
            assert not service.machine.overloaded
            await trio.sleep_until(14.0 + 0.5)
            assert service.machine.overloaded
            status = service.status()
            assert status.health == "degraded"
            assert status.summary == "OVERLOADED: cpu 0.97 > 0.90 for 10s"
            assert status.details["overloaded"] is True
            await trio.sleep_until(41.0)
            nursery.cancel_scope.cancel()

    assert [(t, type(e)) for t, e in events] == [(14.0, SystemOverloaded), (40.0, SystemRecovered)]
    overloaded, recovered = events[0][1], events[1][1]
    assert isinstance(overloaded, SystemOverloaded) and isinstance(recovered, SystemRecovered)
    assert overloaded.source == recovered.source == "system"
    assert overloaded.reasons == ["cpu 0.97 > 0.90 for 10s"]
    assert recovered.overloaded_for_s == 26.0  # open from 14 to 40
    assert sampler.calls == [float(t) for t in range(0, 41, 2)]  # absolute ticks, no drift
    assert service.status().health == "ok"
    assert service.status().summary == "cpu 12% load 0.31 mem 40% disk 20%"


async def test_sampler_failures_are_survived_counted_and_do_not_break_a_run(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def script(t: float) -> HostSample | Exception:
        if t in (0.0, 6.0, 8.0):
            return OSError(5, "Input/output error", "/proc/stat")
        return sample(cpu=0.97 if t >= 4 else 0.12)

    bus = EventBus()
    events: list[tuple[float, object]] = []
    service = SystemHealthService(CONFIG, tmp_path, bus, ScriptedSampler(script), use_thread=False)
    caplog.set_level(logging.INFO, logger="lifeline")
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, bus, events)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(service.run)  # a failed priming read still starts
            assert service.sample_failures == 1
            await trio.sleep_until(8.5)
            status = service.status()
            assert status.health == "degraded"
            assert "sampling failing: 2 in a row" in status.summary
            assert status.details["last_error"].startswith("OSError")
            await trio.sleep_until(15.0)
            nursery.cancel_scope.cancel()

    # Over seen at 4 and 10..14; the unreadable rounds at 6 and 8 do not break the run.
    assert [(t, type(e)) for t, e in events] == [(14.0, SystemOverloaded)]
    assert service.sample_failures == 3 and service.consecutive_failures == 0
    failures = {m.name: m for m in service.metrics()}["lifeline_host_sample_failures_total"]
    assert failures.type == "counter" and failures.samples[0].value == 3.0
    logged = [getattr(r, "event", None) for r in caplog.records if r.name == "lifeline.system"]
    # Warned once per streak (0, then 6-8), and said so when sampling resumed.
    assert logged.count("sample.failed") == 2
    assert logged.count("sample.resumed") == 2
    assert "event.SystemOverloaded" in [getattr(r, "event", None) for r in caplog.records]


async def test_a_persistently_failing_sampler_logs_rarely(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def script(t: float) -> Exception:
        return RuntimeError("no /proc")

    service = SystemHealthService(CONFIG, tmp_path, EventBus(), ScriptedSampler(script), use_thread=False)
    caplog.set_level(logging.INFO, logger="lifeline")
    with trio.move_on_after(2 * 130 + 1):
        await service.run()
    assert service.sample_failures == 131
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "sample.failed"]
    assert [r.fields["in_a_row"] for r in warnings] == [1, 61, 121]  # type: ignore[attr-defined]
    assert service.status().summary.startswith("waiting for the first sample (sampling failing: 131 in a row")


async def test_metrics(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    service = SystemHealthService(
        CONFIG, tmp_path, EventBus(), ScriptedSampler(lambda t: sample(cpu=0.5, temp=47.0)), use_thread=False
    )
    assert {m.name for m in service.metrics()} == {
        "lifeline_host_overloaded", "lifeline_host_sample_failures_total"
    }
    with trio.move_on_after(5):
        await service.run()
    metrics = {m.name: m for m in service.metrics()}
    assert set(metrics) == {
        "lifeline_host_cpu_fraction",
        "lifeline_host_load1",
        "lifeline_host_memory_used_fraction",
        "lifeline_host_disk_used_fraction",
        "lifeline_host_temperature_celsius",
        "lifeline_host_overloaded",
        "lifeline_host_sample_failures_total",
    }
    assert metrics["lifeline_host_cpu_fraction"].samples[0].value == 0.5
    assert metrics["lifeline_host_temperature_celsius"].samples[0].value == 47.0
    assert metrics["lifeline_host_overloaded"].samples[0].value == 0.0
    details = service.status().details
    assert details["sample"]["cpu_fraction"] == 0.5
    assert details["thresholds"]["cpu"]["over"] == 0.90


async def test_no_temperature_metric_without_sensors(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    service = SystemHealthService(CONFIG, tmp_path, EventBus(), ScriptedSampler(lambda t: sample()), use_thread=False)
    with trio.move_on_after(3):
        await service.run()
    assert "lifeline_host_temperature_celsius" not in {m.name for m in service.metrics()}


def test_service_matches_the_service_protocol(tmp_path: Path) -> None:
    from daemon.core.service import Service

    service = SystemHealthService(CONFIG, tmp_path, EventBus())
    assert isinstance(service, Service)
    assert service.name == "system"
    assert service.sampler is system.read_host_sample and service.use_thread
