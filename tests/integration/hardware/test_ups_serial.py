"""The UPS drivers for real: pyserial on real ptys against the Q1 simulator, and the NUT
client against the fake upsd over real TCP. Real clocks (the I/O runs in threads and
sockets), short intervals."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from hardware.errors import DeviceGarbage, DeviceTimeout, PortMissing
from hardware.ups.driver import NutClient, NutUps, UpsSerial, open_ups, read_once
from hardware.ups.monitor import UpsMonitor
from hardware.ups.nut import NutError
from hardware.ups.reading import UpsReading
from lab.sim.ups import FakeUpsd, Simulator, start_simulator
from tests.support.hardware import pairs, run_device
from tests.support.ports import free_port
from tests.support.waiting import wait_until

INTERVAL = 0.1


class Harness:
    """A driver feeding a monitor, with a ticker for staleness; events and readings kept."""

    def __init__(self, driver: Any, monitor: UpsMonitor) -> None:
        self.driver = driver
        self.monitor = monitor
        self.readings: list[tuple[float, UpsReading]] = []
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._changed = trio.Event()

    def _record(self, emits: list) -> None:
        now = trio.current_time()
        for name, fields in pairs(emits):
            self.events.append((now, name, fields))
        self._changed.set()
        self._changed = trio.Event()

    def on_reading(self, reading: UpsReading) -> None:
        self.readings.append((trio.current_time(), reading))
        self._record(self.monitor.reading(reading, trio.current_time()))

    async def ticker(self) -> None:
        while True:
            self._record(self.monitor.tick(trio.current_time()))
            await trio.sleep(0.02)

    async def start(self, nursery: trio.Nursery, interval: float = INTERVAL, **backoff: float) -> None:
        """The driver in the daemon's device loop (``backoff_initial``, ``backoff_max``)."""
        await nursery.start(functools.partial(run_device, self.driver, self.on_reading, interval=interval,
                                              **backoff))
        nursery.start_soon(self.ticker)

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events]

    async def wait_event(self, name: str, timeout: float = 3.0, after: int = 0) -> tuple[float, dict[str, Any]]:
        with trio.fail_after(timeout):
            while True:
                for at, got, fields in self.events[after:]:
                    if got == name:
                        return at, fields
                await self._changed.wait()

    async def wait_readings(self, count: int, timeout: float = 3.0) -> None:
        with trio.fail_after(timeout):
            while len(self.readings) < count:
                await self._changed.wait()


wait_for = functools.partial(wait_until, timeout=3.0)


@pytest.fixture
def sim() -> Any:
    simulator = start_simulator()
    yield simulator
    simulator.close()


# ------------------------------------------------------------------ serial: read_once


async def test_read_once_reads_q1_ratings_and_info(sim: Simulator) -> None:
    assert os.path.exists(sim.path) and sim.path.startswith("/dev/pts/")
    data = await read_once(sim.path, timeout=1.0)
    json.dumps(data)
    assert data["kind"] == "ups" and data["source"] == "q1" and data["port"] == sim.path
    assert data["status"] == ["OL"] and data["on_battery"] is False and data["battery_low"] is False
    assert data["input_v"] == 230.0 and data["battery_v"] == 2.27 and data["load_percent"] == 20.0
    assert data["runtime_s"] is None  # Q1 carries no runtime; no calibration here
    assert data["ratings"] == {"voltage": 230.0, "current": 0.0, "battery_v": 24.0, "frequency_hz": 50.0}
    assert data["info"]["manufacturer"] == "LIFELINE-SIM"
    assert sim.received[:3] == [b"Q1", b"F", b"I"]


async def test_read_once_on_battery_and_a_unit_without_f_and_i(sim: Simulator) -> None:
    sim.set(ratings=None, info=None)
    sim.on_battery()
    sim.battery_low()
    data = await read_once(sim.path, timeout=1.0)
    assert data["status"] == ["OB", "LB"] and data["on_battery"] and data["battery_low"]
    assert data["ratings"] is None and data["info"] is None  # echoed back: unsupported


async def test_read_once_errors(sim: Simulator, tmp_path: Path) -> None:
    with pytest.raises(PortMissing, match="no such port"):
        await read_once(str(tmp_path / "ttyNOPE"), timeout=0.5)
    not_a_tty = tmp_path / "file"
    not_a_tty.write_text("x")
    with pytest.raises(PortMissing):
        await read_once(str(not_a_tty), timeout=0.5)
    sim.silent()
    with pytest.raises(DeviceTimeout, match="no answer to Q1"):
        await read_once(sim.path, timeout=0.3)
    sim.garbage()
    with pytest.raises(DeviceGarbage):
        await read_once(sim.path, timeout=0.5)
    sim.normal()
    assert (await read_once(sim.path, timeout=0.5))["status"] == ["OL"]


async def test_read_once_over_a_pyserial_url_and_a_trio_task_simulator() -> None:
    with Simulator() as simulator:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(simulator.run)
            data = await read_once(simulator.path, timeout=1.0)
            assert data["status"] == ["OL"]
            nursery.cancel_scope.cancel()
    with pytest.raises(PortMissing):
        await read_once(f"socket://127.0.0.1:{free_port()}", timeout=0.5)


# ------------------------------------------------------------------ serial: the driver


async def test_on_battery_reaches_the_monitor_within_two_intervals(sim: Simulator, nursery: trio.Nursery) -> None:
    driver = UpsSerial(sim.path, name="ups1", timeout=0.5, runtimecal="120,100,360,50")
    harness = Harness(driver, UpsMonitor("ups1", runtime_threshold_s=110, stale_after=1.0))
    await harness.start(nursery)
    await harness.wait_readings(2)
    assert driver.ratings is not None and driver.info is not None  # F and I read on connect
    first = harness.readings[0][1]
    assert first.runtime_s is not None and first.battery_charge == pytest.approx(90.0, abs=0.5)
    assert harness.events == []

    sim.set(on_battery=True, load_percent=100.0)
    flipped = trio.current_time()
    at, _ = await harness.wait_event("UpsOnBattery")
    latency = at - flipped
    assert latency < 2 * INTERVAL, f"UpsOnBattery after {latency:.3f} s"
    # 100 % load: the estimate (~108 s of full-load runtime at 90 % charge) is under 110 s.
    _, below = await harness.wait_event("UpsRuntimeBelow")
    assert below["threshold_s"] == 110 and below["runtime_s"] < 110
    await harness.wait_readings(len(harness.readings) + 3)
    runtimes = [r.runtime_s for _, r in harness.readings if r.on_battery]
    assert runtimes == sorted(runtimes, reverse=True)  # draining

    sim.battery_low()
    await harness.wait_event("UpsBatteryLow")
    sim.online()
    await harness.wait_event("UpsOnline")
    assert harness.names() == ["UpsOnBattery", "UpsRuntimeBelow", "UpsBatteryLow", "UpsOnline"]
    print(f"UpsOnBattery latency {latency * 1000:.0f} ms at a {INTERVAL * 1000:.0f} ms poll interval")


async def test_silent_device_goes_stale_then_recovers(sim: Simulator, nursery: trio.Nursery,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    driver = UpsSerial(sim.path, name="ups1", timeout=0.2)
    harness = Harness(driver, UpsMonitor("ups1", stale_after=0.5))
    await harness.start(nursery)
    await harness.wait_readings(1)
    sim.silent()
    _, stale = await harness.wait_event("DeviceStale")
    assert stale == {"device": "ups1", "device_type": "ups", "silent_s": pytest.approx(0.5, abs=0.1)}
    assert driver.state == "timeout"
    assert harness.monitor.snapshot(trio.current_time())["healthy"] is False
    sim.normal()
    await harness.wait_event("DeviceRecovered")
    sim.garbage()
    await wait_for(lambda: driver.state == "garbage")
    await harness.wait_event("DeviceStale", after=2)
    states = [r.fields["state"] for r in caplog.records if getattr(r, "event", None) == "ups.state"]
    assert states == ["ok", "timeout", "ok", "garbage"]  # one line per change


async def test_port_vanishes_and_comes_back(tmp_path: Path, nursery: trio.Nursery,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    link = str(tmp_path / "ttyUPS")
    simulator = Simulator(link=link).start()
    try:
        driver = UpsSerial(link, name="ups1", timeout=0.3)
        harness = Harness(driver, UpsMonitor("ups1", stale_after=0.6))
        await harness.start(nursery, backoff_initial=0.05, backoff_max=0.2)
        await harness.wait_readings(2)
        old_pty = simulator.slave_path
        simulator.unplug()
        assert not os.path.lexists(link)
        await wait_for(lambda: driver.state == "missing")
        await harness.wait_event("DeviceStale")
        simulator.set(on_battery=True)
        simulator.replug()
        assert os.readlink(link) == simulator.slave_path
        _, _ = await harness.wait_event("DeviceRecovered")
        await harness.wait_event("UpsOnBattery")  # the change made while unplugged
        assert driver.state == "ok"
        states = [r.fields["state"] for r in caplog.records if getattr(r, "event", None) == "ups.state"]
        assert states == ["ok", "missing", "ok"]
        assert old_pty is not None
    finally:
        simulator.close()


async def test_run_survives_a_port_that_is_missing_from_the_start(tmp_path: Path, nursery: trio.Nursery) -> None:
    link = str(tmp_path / "ttyLATE")
    driver = UpsSerial(link, timeout=0.3)
    harness = Harness(driver, UpsMonitor("ups1", stale_after=0.3))
    await harness.start(nursery, backoff_initial=0.05, backoff_max=0.1)
    await harness.wait_event("DeviceStale")
    assert driver.state == "missing"
    simulator = Simulator(link=link).start()
    try:
        await harness.wait_event("DeviceRecovered")
    finally:
        simulator.close()


async def test_open_ups_picks_the_driver() -> None:
    assert isinstance(open_ups("/dev/ttyS0"), UpsSerial)
    assert isinstance(open_ups("nut://127.0.0.1:3493/ups"), NutUps)


# ------------------------------------------------------------------ NUT upsd


async def test_nut_client_against_fake_upsd(nursery: trio.Nursery) -> None:
    fake = FakeUpsd("su700")
    port = await nursery.start(fake.serve)
    client = NutClient("127.0.0.1", port, timeout=1.0)
    try:
        assert await client.get_var("su700", "battery.runtime") == "1800"
        assert await client.get_var("su700", "no.such.var") is None
        variables = await client.list_var("su700")
        assert variables["ups.status"] == "OL" and variables["device.model"] == "FAKE-UPSD"
        with pytest.raises(NutError, match="UNKNOWN-UPS"):
            await client.list_var("other")
        fake.set(mode="stale")
        with pytest.raises(DeviceTimeout, match="DATA-STALE"):
            await client.get_var("su700", "ups.status")
        fake.set(mode="garbage")
        with pytest.raises(DeviceGarbage):
            await client.list_var("su700")
        fake.set(mode="normal")
        assert await client.get_var("su700", "ups.status") == "OL"  # reconnects by itself
    finally:
        await client.aclose()
    assert fake.connections == 2
    assert "LIST VAR su700" in fake.requests


async def test_nut_read_once(nursery: trio.Nursery) -> None:
    fake = FakeUpsd("su700")
    port = await nursery.start(fake.serve)
    url = f"nut://127.0.0.1:{port}/su700"
    fake.set(on_battery=True, runtime_s=540, charge=63)
    data = await read_once(url, timeout=1.0)
    json.dumps(data)
    assert data["source"] == "nut" and data["status"] == ["OB"] and data["runtime_s"] == 540
    assert data["battery_charge"] == 63 and data["port"] == url
    with pytest.raises(NutError):
        await read_once(f"nut://127.0.0.1:{port}/nope", timeout=1.0)
    fake.set(mode="silent")
    with pytest.raises(DeviceTimeout):
        await read_once(url, timeout=0.3)
    fake.set(mode="normal", ups_status="WAIT")
    with pytest.raises(DeviceGarbage):
        await read_once(url, timeout=1.0)
    with pytest.raises(PortMissing, match="cannot connect"):
        await read_once(f"nut://127.0.0.1:{free_port()}/su700", timeout=1.0)


async def test_nut_driver_events_staleness_and_reconnect(nursery: trio.Nursery,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    fake = FakeUpsd("su700")
    port = await nursery.start(fake.serve)
    driver = NutUps.from_url(f"nut://127.0.0.1:{port}/su700", name="ups1", timeout=0.3)
    harness = Harness(driver, UpsMonitor("ups1", runtime_threshold_s=300, runtime_hysteresis_s=60,
                                         stale_after=0.5))
    await harness.start(nursery, backoff_initial=0.05, backoff_max=0.1)
    await harness.wait_readings(1)

    fake.set(on_battery=True, runtime_s=600)
    flipped = trio.current_time()
    at, fields = await harness.wait_event("UpsOnBattery")
    assert fields == {"device": "ups1", "runtime_s": 600} and at - flipped < 2 * INTERVAL
    fake.set(runtime_s=240)
    _, below = await harness.wait_event("UpsRuntimeBelow")
    assert below == {"device": "ups1", "runtime_s": 240, "threshold_s": 300}
    fake.set(battery_low=True)
    await harness.wait_event("UpsBatteryLow")
    fake.set(on_battery=False, battery_low=False, runtime_s=1800)
    await harness.wait_event("UpsOnline")

    fake.set(mode="stale")  # upsd's own driver lost the UPS
    await harness.wait_event("DeviceStale")
    assert driver.state == "timeout"
    fake.set(mode="normal")
    await harness.wait_event("DeviceRecovered")

    fake.stop()  # upsd goes away: connection lost, refused while down
    await wait_for(lambda: driver.state == "missing")
    await harness.wait_event("DeviceStale", after=len(harness.events))
    await nursery.start(lambda task_status: fake.serve(port=port, task_status=task_status))
    await harness.wait_event("DeviceRecovered", after=len(harness.events) - 1)
    assert driver.state == "ok"
    assert harness.names() == ["UpsOnBattery", "UpsRuntimeBelow", "UpsBatteryLow", "UpsOnline",
                               "DeviceStale", "DeviceRecovered", "DeviceStale", "DeviceRecovered"]
    states = [r.fields["state"] for r in caplog.records if getattr(r, "event", None) == "ups.state"]
    assert states == ["ok", "timeout", "ok", "missing", "ok"]
