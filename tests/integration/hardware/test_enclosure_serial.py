"""The enclosure drivers over real pyserial: the Modbus sensor against the simulator on
a pty (and against pymodbus, both ways: pymodbus's client reads our simulator, our
driver reads pymodbus's own serial server), faults, a port that vanishes and comes back,
prompt cancellation, and the door contact on pyserial's ``loop://``.

ptys carry bytes but no modem lines (TIOCMGET answers ENOTTY), so the door is tested on
``loop://``, where pyserial's ``protocol_loop.Serial`` returns the RTS state as CTS and
the DTR state as DSR (CD is always True, RI always False) and both are raised on open.

Real threads and real ptys: the clock is trio's real one, with short intervals and
timeouts; every test is capped with ``trio.fail_after``."""

from __future__ import annotations

from functools import partial
import asyncio
import functools
import json
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.support.cli import cli

from hardware.enclosure.driver import DoorContact, ModbusSensor, read_door_once, read_once
from hardware.enclosure.modbus import ModbusExceptionError
from hardware.enclosure.monitor import EnclosureMonitor
from hardware.enclosure.registers import ClimateReading, DoorReading, Register, RegisterMap
from lab.sim.enclosure import EnclosureSimulator, start_simulator
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError, PortMissing
from tests.support.hardware import pairs, run_device
from tests.support.waiting import wait_until


@pytest.fixture
def sim() -> Iterator[EnclosureSimulator]:
    simulator = start_simulator()
    try:
        yield simulator
    finally:
        simulator.close()


wait_for = partial(wait_until, timeout=3.0)


# --- the sensor against our simulator --------------------------------------------------


async def test_sensor_reads_the_simulator(sim: EnclosureSimulator) -> None:
    sensor = ModbusSensor(sim.path, timeout=0.5)
    try:
        with trio.fail_after(3):
            first = await sensor.poll()
            sim.set(celsius=-20.5, percent=97.3)
            second = await sensor.poll()
    finally:
        sensor.close()
    assert (first.celsius, first.humidity_percent) == (23.5, 41.0)
    assert (second.celsius, second.humidity_percent) == (-20.5, 97.3)
    assert second.registers == {1: 0xFF33, 2: 973}
    assert sim.requests == 2


async def test_read_once_gives_plain_data(sim: EnclosureSimulator) -> None:
    sim.set(celsius=30.5, percent=54.6)
    with trio.fail_after(3):
        reading = await read_once(sim.path)
    assert json.loads(json.dumps(reading)) == {
        "kind": "enclosure", "port": sim.path, "map": "xy-md02", "unit": 1, "function": 4,
        "celsius": 30.5, "humidity_percent": 54.6, "registers": {"1": 305, "2": 546}}


async def test_other_unit_address_and_preset() -> None:
    m = RegisterMap.from_config({"preset": "l-com-srth100", "unit": 17})
    with EnclosureSimulator(m, celsius=-3.2, percent=12.0) as simulator, trio.fail_after(3):
        reading = await read_once(simulator.path, register_map=m)
        assert (reading["celsius"], reading["humidity_percent"], reading["function"]) == (-3.2, 12.0, 3)
        # The default map asks unit 1 for input registers: the sensor (unit 17) stays silent.
        with pytest.raises(DeviceTimeout):
            await read_once(simulator.path, timeout=0.2)
        assert (await read_once(simulator.path, register_map=m, unit=17))["unit"] == 17


@pytest.mark.parametrize(("fault", "value", "error", "text"), [
    ("silent", True, DeviceTimeout, "no answer from Modbus unit 1, input registers 1..2 within 0.2s"),
    ("garbage", True, DeviceGarbage, "7 byte(s) that are not a Modbus RTU answer"),
    ("bad_crc", True, DeviceGarbage, "with a bad CRC"),
    ("answer_as_unit", 7, DeviceGarbage, "unit 7 answered instead of unit 1"),
    ("exception_code", 2, ModbusExceptionError, "exception 2 (illegal data address)"),
    ("exception_code", 6, ModbusExceptionError, "exception 6 (server device busy)"),
])
async def test_faults_are_clear_errors(sim: EnclosureSimulator, fault: str, value: Any,
                                       error: type[HardwareError], text: str) -> None:
    setattr(sim, fault, value)
    started = time.monotonic()
    with trio.fail_after(3), pytest.raises(error) as caught:
        await read_once(sim.path, timeout=0.2)
    assert text in str(caught.value)
    assert str(caught.value).startswith(f"{sim.path}: ")
    assert "\n" not in str(caught.value)
    assert time.monotonic() - started < 1.0
    # The device recovers and the same sensor object reads it again.
    setattr(sim, fault, None if fault in ("answer_as_unit", "exception_code") else False)
    with trio.fail_after(3):
        assert (await read_once(sim.path))["celsius"] == 23.5


async def test_implausible_value_is_garbage(sim: EnclosureSimulator) -> None:
    sim.set_raw(1, 0x7FFF)  # 3276.7 °C: a broken probe or a wrong map, not a reading
    with trio.fail_after(3), pytest.raises(DeviceGarbage, match="implausible temperature 3276.7"):
        await read_once(sim.path)


async def test_port_errors(sim: EnclosureSimulator, tmp_path: Path) -> None:
    with trio.fail_after(3):
        with pytest.raises(PortMissing, match="no such port"):
            await read_once(str(tmp_path / "ttyUSB9"))
        with pytest.raises(HardwareError, match="protocol 'bogus' not known"):
            await read_once("bogus://x")
        holder = ModbusSensor(sim.path)
        try:
            await holder.poll()
            with pytest.raises(HardwareError, match="port busy"):
                await read_once(sim.path)
        finally:
            holder.close()


def test_cli_reads_the_simulator(sim: EnclosureSimulator) -> None:
    sim.set(celsius=31.0, percent=50.0)
    done = cli("hardware", "read", "enclosure", "--port", sim.path, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["celsius"] == 31.0
    sim.silent = True
    done = cli("hardware", "read", "enclosure", "--port", sim.path, "--timeout", "0.2")
    assert done.returncode == 1
    assert "no answer from Modbus unit 1" in done.stderr


async def test_cancelled_poll_returns_promptly(sim: EnclosureSimulator) -> None:
    sim.silent = True
    sensor = ModbusSensor(sim.path, timeout=10.0)
    try:
        started = time.monotonic()
        with trio.move_on_after(0.1):
            await sensor.poll()
        assert time.monotonic() - started < 0.3  # one 50 ms read slice at most after the cancel
        sim.silent = False
        with trio.fail_after(3):
            assert (await sensor.poll()).celsius == 23.5
    finally:
        sensor.close()


async def test_port_vanishes_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stable name (as /dev/serial/by-id/ gives) pointing at a pty that goes away and
    comes back as another pty: the driver reports the loss once and reconnects."""
    caplog.set_level(logging.INFO, logger="lifeline")
    link = tmp_path / "ttyENCLOSURE"
    first = start_simulator()
    link.symlink_to(first.path)
    second: EnclosureSimulator | None = None
    readings: list[ClimateReading] = []
    sensor = ModbusSensor(str(link), timeout=0.2)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(run_device, sensor, readings.append, interval=0.02,
                                                      backoff_initial=0.02, backoff_max=0.1))
                await wait_for(lambda: len(readings) >= 2)
                first.close()
                link.unlink()
                await wait_for(lambda: isinstance(sensor.last_error, PortMissing))
                count = len(readings)
                await trio.sleep(0.2)              # several reconnect attempts, all failing
                assert len(readings) == count
                second = start_simulator()
                second.set(celsius=36.6)
                link.symlink_to(second.path)
                await wait_for(lambda: readings[-1].celsius == 36.6)
                nursery.cancel_scope.cancel()
    finally:
        first.close()
        if second is not None:
            second.close()
    assert sensor.serial is None  # run() closes its port on the way out
    lines = [r.getMessage() for r in caplog.records if r.name == "lifeline.hardware.enclosure"]
    assert lines == ["enclosure.answering", "enclosure.failing", "enclosure.answering"]


# --- pymodbus as the independent other end ---------------------------------------------


def test_pymodbus_client_reads_the_simulator(sim: EnclosureSimulator) -> None:
    from pymodbus import FramerType
    from pymodbus.client import ModbusSerialClient

    sim.set(celsius=-20.5, percent=54.6)
    client = ModbusSerialClient(sim.path, framer=FramerType.RTU, baudrate=9600, timeout=0.3, retries=0)
    try:
        assert client.connect()
        rr = client.read_input_registers(1, count=2, device_id=1)
        assert not rr.isError()
        assert rr.registers == [0xFF33, 546]
        rr = client.read_holding_registers(1, count=2, device_id=1)  # the sensor has none
        assert rr.isError() and rr.exception_code == 2
        rr = client.read_input_registers(1, count=10, device_id=1)   # past the map
        assert rr.isError() and rr.exception_code == 2
    finally:
        client.close()


class PtyPair:
    """Two ptys joined master-to-master by a thread: two tty paths with a wire between
    them, so two programs that each open a path can talk (a null-modem cable)."""

    def __init__(self) -> None:
        self._fds = [*os.openpty(), *os.openpty()]
        for slave in self._fds[1::2]:
            tty.setraw(slave)
        self.a, self.b = os.ttyname(self._fds[1]), os.ttyname(self._fds[3])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        a, b = self._fds[0], self._fds[2]
        while not self._stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for fd in ready:
                try:
                    os.write(b if fd == a else a, os.read(fd, 1024))
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        for fd in self._fds:
            os.close(fd)


async def test_sensor_reads_the_pymodbus_server() -> None:
    simulator = pytest.importorskip("pymodbus.simulator")  # SimDevice: pymodbus >= 3.10's server model
    from pymodbus.server import ModbusSerialServer

    device = simulator.SimDevice(id=1, simdata=[simulator.SimData(
        address=1, values=[0x0131, 0x0222], datatype=simulator.DataType.REGISTERS)])
    pair = PtyPair()
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_box: list[asyncio.Event] = []
    listening = threading.Event()

    def serve() -> None:
        async def main() -> None:
            server = ModbusSerialServer(device, port=pair.a, baudrate=9600)
            loop_box.append(asyncio.get_running_loop())
            stop_box.append(asyncio.Event())
            await server.serve_forever(background=True)
            listening.set()
            await stop_box[0].wait()
            await server.shutdown()
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert await trio.to_thread.run_sync(listening.wait, 5)
        with trio.fail_after(5):
            reading = await read_once(pair.b, timeout=1.0)
            assert (reading["celsius"], reading["humidity_percent"]) == (30.5, 54.6)
            with pytest.raises(ModbusExceptionError, match="illegal data address"):
                await read_once(pair.b, timeout=1.0, register_map=RegisterMap(temperature=Register(40), humidity=None))
    finally:
        if loop_box:
            loop_box[0].call_soon_threadsafe(stop_box[0].set)
        thread.join(5)
        pair.close()


# --- the door contact on loop:// -------------------------------------------------------


async def test_door_on_loop_follows_rts_and_dtr() -> None:
    cts = DoorContact("loop://")
    dsr = DoorContact("loop://", line="dsr", open_when="asserted")
    cd = DoorContact("loop://", line="cd")
    try:
        with trio.fail_after(3):
            assert await cts.poll() == DoorReading(open=False, line="cts", asserted=True)  # RTS up on open
            assert cts.serial is not None
            cts.serial.rts = False                       # the contact opens: CTS drops
            assert await cts.poll() == DoorReading(open=True, line="cts", asserted=False)
            cts.serial.rts = True
            assert not (await cts.poll()).open

            assert (await dsr.poll()).open               # inverted polarity: asserted = open
            assert dsr.serial is not None
            dsr.serial.dtr = False
            assert not (await dsr.poll()).open
            dsr.serial.rts = False                       # RTS does not touch DSR
            assert not (await dsr.poll()).open

            assert (await cd.poll()).asserted            # loop://'s CD is a constant True
    finally:
        for door in (cts, dsr, cd):
            door.close()


async def test_door_errors(sim: EnclosureSimulator, tmp_path: Path) -> None:
    with trio.fail_after(3):
        assert (await read_door_once("loop://")) == {"kind": "door", "port": "loop://", "door": "closed",
                                                      "line": "cts", "asserted": True}
        with pytest.raises(HardwareError, match="no modem-status lines"):
            await read_door_once(sim.path)               # a pty: ENOTTY on TIOCMGET
        with pytest.raises(PortMissing):
            await read_door_once(str(tmp_path / "ttyS9"))
    with pytest.raises(ValueError):
        DoorContact("loop://", line="dcd")  # type: ignore[arg-type]


# --- drivers feeding monitors: events, stale on silence, recovery ----------------------


async def test_events_from_real_devices(sim: EnclosureSimulator) -> None:
    """The two devices as the hardware service runs them: each with its own monitor,
    ticked on trio's clock."""
    climate = EnclosureMonitor("rack1", temperature_high=40, stale_after=0.3, door=False)
    door_monitor = EnclosureMonitor("rack1", door_debounce=0.1, stale_after=0.3, climate=False)
    emitted: list[tuple[str, dict[str, Any]]] = []
    sensor = ModbusSensor(sim.path, timeout=0.1)
    door = DoorContact("loop://")

    def feed(monitor: EnclosureMonitor) -> Callable[[Any], None]:
        return lambda reading: emitted.extend(pairs(monitor.reading(reading, trio.current_time())))

    def seen(name: str) -> Callable[[], bool]:
        return lambda: any(n == name for n, _ in emitted)

    async def ticker() -> None:
        while True:
            emitted.extend(pairs(climate.tick(trio.current_time()) + door_monitor.tick(trio.current_time())))
            await trio.sleep(0.02)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_device, sensor, feed(climate), interval=0.02))
            await nursery.start(functools.partial(run_device, door, feed(door_monitor), interval=0.02))
            nursery.start_soon(ticker)
            await wait_for(lambda: climate.last_climate is not None and door_monitor.last_door is not None)
            assert emitted == []

            sim.set(celsius=41.5)
            await wait_for(seen("EnclosureTemperatureHigh"))
            assert ("EnclosureTemperatureHigh", {"device": "rack1", "celsius": 41.5, "threshold_c": 40}) in emitted

            assert door.serial is not None
            opened_at = trio.current_time()
            door.serial.rts = False
            await wait_for(seen("EnclosureOpened"))
            assert trio.current_time() - opened_at >= 0.1   # debounced
            door.serial.rts = True
            await wait_for(seen("EnclosureClosed"))

            sim.silent = True                                # the sensor stops answering
            await wait_for(seen("DeviceStale"))
            stale = [f for n, f in emitted if n == "DeviceStale"]
            assert stale == [{"device": "rack1", "device_type": "enclosure", "silent_s": stale[0]["silent_s"]}]
            assert stale[0]["silent_s"] >= 0.3
            assert climate.snapshot(trio.current_time())["climate"]["stale"]
            assert not door_monitor.snapshot(trio.current_time())["door"]["stale"]
            assert isinstance(sensor.last_error, DeviceTimeout)

            sim.silent = False
            await wait_for(seen("DeviceRecovered"))
            nursery.cancel_scope.cancel()
    names = [n for n, _ in emitted]
    assert names == ["EnclosureTemperatureHigh", "EnclosureOpened", "EnclosureClosed", "DeviceStale",
                     "DeviceRecovered"]
