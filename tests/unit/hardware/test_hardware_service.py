"""The hardware service under MockClock with scripted devices: readings become the
monitor's events, a silent or failing device becomes stale (never healthy), a driver
error never stops the loop, and the watchdog is fed from the loop and disarmed only on
a clean stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from daemon.config import load_config
from daemon.core.bus import EventBus
from daemon.core.events import DeviceRecovered, DeviceStale, Event, UpsOnBattery
from hardware.errors import DeviceTimeout, PortMissing
from hardware.service import Device, HardwareService, device_loop
from tests.support.events import drain

CONFIG = '''
[node]
name = "edge-a"
state_dir = "{d}/state"
runtime_dir = "{d}/run"

[hardware.ups]
port = "/dev/null"

[hardware.watchdog]
device = "/dev/null"
timeout = "3s"
'''


def config(tmp_path: Path) -> Any:
    path = tmp_path / "lifeline.toml"
    path.write_text(CONFIG.format(d=tmp_path))
    return load_config(path)


class Monitor:
    """Stale after 3 s without a reading; on_battery edges become events."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.stale = False
        self.on_battery = False

    def reading(self, r: dict[str, Any], now: float) -> list[Event]:
        out: list[Event] = []
        self.last = now
        if self.stale:
            self.stale = False
            out.append(DeviceRecovered(device="ups", device_type="ups"))
        if r["on_battery"] and not self.on_battery:
            out.append(UpsOnBattery(device="ups", runtime_s=r["runtime_s"]))
        self.on_battery = r["on_battery"]
        return out

    def tick(self, now: float) -> list[Event]:
        if self.last is not None and not self.stale and now - self.last >= 3:
            self.stale = True
            return [DeviceStale(device="ups", device_type="ups", silent_s=now - self.last)]
        return []


class Script:
    def __init__(self) -> None:
        self.answers: list[Any] = []

    async def poll(self) -> Any:
        if not self.answers:
            raise DeviceTimeout("/dev/ttyUSB0: no answer to Q1 within 1s")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Watchdog:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def arm(self, timeout_s: int) -> None:
        self.calls.append(f"arm {timeout_s}")

    def keepalive(self) -> None:
        self.calls.append("keepalive")

    def disarm(self) -> None:
        self.calls.append("disarm")

    def close_without_disarm(self) -> None:
        self.calls.append("left armed")

    def details(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize("clean", [True, False])
async def test_readings_events_stale_recovery_and_the_watchdog(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clean: bool) -> None:
    bus = EventBus()
    script, watchdog = Script(), Watchdog()
    ok = {"on_battery": False, "runtime_s": 900.0}
    battery = {"on_battery": True, "runtime_s": 600.0, "battery_low": None, "load_percent": 23.456789}
    script.answers = [ok, battery, RuntimeError("garbage from the port")]  # then silence
    device = Device("ups", "ups", script.poll, Monitor(), interval=1.0)
    service = HardwareService(config(tmp_path), bus, devices=[device], watchdog=watchdog, clean_stop=lambda: clean)
    with bus.subscribe("test") as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await trio.sleep(2.5)
            assert [type(e) for e in drain(sub)] == [UpsOnBattery]
            assert service.status().health == "ok"
            # For people: no Python reprs, no "None", floats rounded.
            assert service.status().summary.startswith("ups ups: on_battery=yes, runtime_s=600, load_percent=23.46;")
            await trio.sleep(5)
            stale = drain(sub)
            assert [type(e) for e in stale] == [DeviceStale]
            assert service.status().health == "degraded" and "STALE" in service.status().summary
            assert device.error is not None and "no answer" in device.error
            script.answers = [battery]
            await trio.sleep(1.5)
            assert [type(e) for e in drain(sub)] == [DeviceRecovered]
            assert not device.stale
            nursery.cancel_scope.cancel()
    assert watchdog.calls[0] == "arm 3"
    assert 8 <= watchdog.calls.count("keepalive") <= 11  # every second (timeout / 3) for ~9 s
    assert watchdog.calls[-1] == ("disarm" if clean else "left armed")
    metrics = {f.name: f for f in service.metrics()}
    assert metrics["lifeline_hardware_stale"].samples[0].value == 0.0
    # One metric per quantity, in base units.
    assert "lifeline_hardware_reading" not in metrics
    assert [s.value for s in metrics["lifeline_hardware_ups_on_battery"].samples] == [1.0]
    assert [s.value for s in metrics["lifeline_hardware_ups_battery_low"].samples] == [0.0]
    assert [s.value for s in metrics["lifeline_hardware_battery_runtime_seconds"].samples] == [600.0]
    assert metrics["lifeline_hardware_battery_runtime_seconds"].samples[0].labels == {"device": "ups", "kind": "ups"}


class Quiet:
    """A monitor that only counts its ticks."""

    def __init__(self) -> None:
        self.ticks: list[float] = []

    def reading(self, r: Any, now: float) -> list[Event]:
        return []

    def tick(self, now: float) -> list[Event]:
        self.ticks.append(now)
        return []


async def test_one_loop_backs_off_a_missing_port_and_keeps_ticking(autojump_clock: trio.testing.MockClock) -> None:
    """The device loop every kind runs in: a missing port is retried after 1, 2, 4, 4 s (the
    interval doubling up to backoff_max), a timeout at the interval, a reading resets the
    backoff; the monitor is ticked every interval throughout (staleness stays on time)."""
    attempts: list[float] = []
    answers: list[Any] = [PortMissing("/dev/ttyUPS: no such port")] * 5 + [{"on_battery": False}]
    answers += [DeviceTimeout("/dev/ttyUPS: no answer")] * 2 + [PortMissing("/dev/ttyUPS: port went away")] * 2

    async def poll() -> Any:
        attempts.append(trio.current_time())
        answer = answers.pop(0) if answers else {"on_battery": False}
        if isinstance(answer, BaseException):
            raise answer
        return answer

    notes: list[tuple[str | None, float | None]] = []
    monitor = Quiet()
    device = Device("ups", "ups", poll, monitor, interval=1.0, backoff_max=4.0,
                    note=lambda error, reading, retry_s: notes.append(
                        (None if error is None else type(error).__name__, retry_s)))
    with trio.move_on_after(25.5):
        await device_loop(device, lambda device, events: None)
    assert attempts[:12] == [0, 1, 3, 7, 11, 15, 16, 17, 18, 19, 21, 22]
    assert notes[:7] == [("PortMissing", 1.0), ("PortMissing", 2.0), ("PortMissing", 4.0), ("PortMissing", 4.0),
                         ("PortMissing", 4.0), (None, None), ("DeviceTimeout", None)]
    assert monitor.ticks[:16] == [float(s) for s in range(16)]
    assert device.failures == 9 and device.polls >= 4
