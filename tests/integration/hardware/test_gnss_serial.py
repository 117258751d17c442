"""The GNSS driver for real: pyserial on real ptys against the simulator, and the gpsd
client against the fake gpsd over real TCP.

The simulator runs at 10 Hz (``interval=0.1``) so a fix lost and regained, a receiver
going silent and a port disappearing each take a fraction of a second.
"""

from __future__ import annotations

from functools import partial
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hardware.errors import DeviceGarbage, DeviceTimeout, PortMissing
from hardware.gnss.driver import GnssReceiver, GpsdClient, read_once
from hardware.gnss.gpsd import GPSD_WATCH
from hardware.gnss.monitor import GnssMonitor
from hardware.gnss.nmea import GnssReading
from lab.sim import gnss as gnss_sim
from lab.sim.gnss import FakeGpsd, GnssSimulator
from tests.support.hardware import pairs, run_device
from tests.support.waiting import wait_until

FAST = 0.1


@pytest.fixture
def sim():
    s = GnssSimulator(interval=FAST).start()
    yield s
    s.close()


wait_for = partial(wait_until, timeout=5.0, every=0.02)


class Harness:
    """What the daemon's hardware service does: readings into the monitor, ticks between."""

    def __init__(self, monitor: GnssMonitor) -> None:
        self.monitor = monitor
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.readings: list[GnssReading] = []

    def on_reading(self, reading: GnssReading) -> None:
        self.readings.append(reading)
        self.events += pairs(self.monitor.reading(reading, trio.current_time()))

    async def ticker(self) -> None:
        while True:
            self.events += pairs(self.monitor.tick(trio.current_time()))
            await trio.sleep(0.02)

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def has(self, name: str, count: int = 1) -> Callable[[], bool]:
        return lambda: self.names().count(name) >= count


# --- serial: pyserial on a pty ----------------------------------------------------------


async def test_read_once_from_the_simulator(sim: GnssSimulator) -> None:
    sim.set(satellites=11, talker="GN")
    result = await read_once(sim.path, timeout=2.0)
    assert result["fix"] is True and result["satellites"] == 11 and result["fix_type"] == 3
    assert result["quality"] == 1 and result["talker"] == "GN" and result["port"] == sim.path
    assert result["sentences"] == ["RMC", "GGA", "GSA"]  # a whole epoch, though joined at a random moment
    assert 0 <= result["offset_ms"] < 150  # a pty and a thread wake-up: milliseconds
    assert result["counters"]["bad_checksum"] == 0 and result["counters"]["garbage"] == 0


async def test_receiver_at_4800_baud(sim: GnssSimulator) -> None:
    receiver = GnssReceiver(sim.path, baudrate=4800, timeout=2.0)
    try:
        reading = await receiver.poll()
        assert receiver._serial.baudrate == 4800
        assert reading.fix
    finally:
        receiver.close()


async def test_clock_offset_is_measured(sim: GnssSimulator) -> None:
    sim.set(clock_offset_ms=-4000.0)
    result = await read_once(sim.path, timeout=2.0)
    assert -4000 <= result["offset_ms"] < -3850
    sim.set(fix=False)
    result = await read_once(sim.path, timeout=2.0)
    assert result["fix"] is False and result["offset_ms"] is None and result["utc"] is not None


async def test_read_once_errors_are_one_line_and_typed(sim: GnssSimulator, tmp_path: Path) -> None:
    with pytest.raises(PortMissing, match=r"^/nonexistent/ttyGNSS: no such port$"):
        await read_once("/nonexistent/ttyGNSS", timeout=0.5)
    sim.set(silent=True)
    with pytest.raises(DeviceTimeout, match="no data in 0.4 s"):
        await read_once(sim.path, timeout=0.4)
    sim.set(silent=False, bad_checksum=True)
    with pytest.raises(DeviceGarbage, match=r"but no valid NMEA sentence \(\d+ bad checksums"):
        await read_once(sim.path, timeout=0.5)
    sim.set(bad_checksum=False, garbage=True)  # noise between sentences: read through it
    result = await read_once(sim.path, timeout=2.0)
    assert result["fix"] is True and result["counters"]["garbage"] >= 1


async def test_a_second_reader_is_refused_not_interleaved(sim: GnssSimulator) -> None:
    receiver = GnssReceiver(sim.path, timeout=2.0)
    try:
        await receiver.poll()
        with pytest.raises(PortMissing, match="busy, another process holds it"):
            await read_once(sim.path, timeout=0.5)
        assert (await receiver.poll()).fix
    finally:
        receiver.close()


async def test_simulator_as_a_trio_task() -> None:
    sim = GnssSimulator(interval=FAST)
    try:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(lambda task_status: sim.run(task_status=task_status))
            assert path == sim.path
            result = await read_once(path, timeout=2.0)
            assert result["fix"] is True
            nursery.cancel_scope.cancel()
    finally:
        sim.close()


async def test_start_simulator_runs_at_one_hertz() -> None:
    sim = gnss_sim.start_simulator()
    try:
        assert os.path.exists(sim.path) and sim.interval == 1.0
        result = await read_once(sim.path, timeout=3.0)
        assert result["fix"] is True and result["satellites"] == 8
    finally:
        sim.close()


async def test_poll_after_a_pause_reports_fresh_time_not_buffered_bytes(sim: GnssSimulator) -> None:
    receiver = GnssReceiver(sim.path, timeout=2.0)
    try:
        await receiver.poll()
        await trio.sleep(1.0)  # ten epochs pile up in the pty meanwhile
        reading = await receiver.poll()
        assert reading.utc is not None and reading.offset_ms is not None
        assert abs(time.time() - reading.utc.timestamp()) < 0.5
        assert 0 <= reading.offset_ms < 150
        assert reading.complete
    finally:
        receiver.close()


async def test_driver_and_monitor_follow_the_receiver(sim: GnssSimulator) -> None:
    harness = Harness(GnssMonitor("gps0", fix_confirm=2, offset_confirm=2, offset_threshold_ms=1000.0,
                                  stale_after=0.5))
    receiver = GnssReceiver(sim.path, timeout=0.3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.ticker)
        await nursery.start(functools.partial(run_device, receiver, harness.on_reading, interval=0))
        await wait_for(harness.has("GnssFixAcquired"))
        assert harness.events[0] == ("GnssFixAcquired", {"device": "gps0", "satellites": 8, "quality": 1})

        sim.set(fix=False, satellites=2)
        await wait_for(harness.has("GnssFixLost"))
        assert harness.events[-1] == ("GnssFixLost", {"device": "gps0", "reason": (
            "RMC status V mode N; GGA quality 0 (invalid); GSA fix type 1 (no fix)")})

        sim.set(fix=True, satellites=9, clock_offset_ms=5000.0)
        await wait_for(harness.has("ClockOffsetHigh"))
        name, fields = harness.events[-1]
        assert name == "ClockOffsetHigh" and 5000 <= fields["offset_ms"] < 5150 and fields["threshold_ms"] == 1000.0
        assert harness.has("GnssFixAcquired", 2)()

        sim.set(silent=True)
        await wait_for(harness.has("DeviceStale"))
        assert harness.names()[-2:] == ["DeviceStale", "GnssFixLost"]
        assert not harness.monitor.healthy and harness.monitor.status()["healthy"] is False

        sim.set(silent=False, clock_offset_ms=0.0)
        await wait_for(harness.has("GnssFixAcquired", 3))
        assert "DeviceRecovered" in harness.names()[-3:]
        await wait_for(lambda: harness.monitor.healthy)
        nursery.cancel_scope.cancel()
    assert not receiver.is_open  # run() closes the port when it is cancelled


async def test_port_disappears_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline.gnss")
    link = tmp_path / "ttyGNSS"
    first = GnssSimulator(interval=FAST).start()
    second: GnssSimulator | None = None
    link.symlink_to(first.path)
    harness = Harness(GnssMonitor("gps0", fix_confirm=1, stale_after=0.5))
    receiver = GnssReceiver(str(link), timeout=0.3)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(harness.ticker)
            nursery.start_soon(functools.partial(run_device, receiver, harness.on_reading, interval=0,
                                                 backoff_initial=0.05, backoff_max=0.2))
            await wait_for(lambda: len(harness.readings) >= 3)

            first.close()  # unplugged: the pty is gone, and udev removes the link
            link.unlink()  # (else another process's new pty could reuse the number)
            await wait_for(harness.has("DeviceStale"))
            await trio.sleep(0.5)  # several reconnect attempts meanwhile
            count = len(harness.readings)

            second = GnssSimulator(interval=FAST).start()  # plugged back in (udev moves the link)
            tmp = tmp_path / "ttyGNSS.new"
            tmp.symlink_to(second.path)
            os.replace(tmp, link)
            await wait_for(harness.has("DeviceRecovered"))
            await wait_for(lambda: len(harness.readings) >= count + 3)
            nursery.cancel_scope.cancel()
    finally:
        first.close()
        if second is not None:
            second.close()
    logged = [getattr(r, "event", None) for r in caplog.records if r.name == "lifeline.gnss"]
    assert logged.count("gnss.port_lost") == 1
    assert logged.count("gnss.port_missing") == 1  # one line per state change, not per retry
    assert logged.count("gnss.port_open") == 2
    assert logged.count("gnss.receiving") == 2


async def test_a_receiver_answering_garbage_is_logged_once(sim: GnssSimulator,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline.gnss")
    sim.set(bad_checksum=True)
    harness = Harness(GnssMonitor("gps0", stale_after=0.4))
    receiver = GnssReceiver(sim.path, timeout=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.ticker)
        nursery.start_soon(functools.partial(run_device, receiver, harness.on_reading, interval=0))
        await wait_for(harness.has("DeviceStale"))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert harness.readings == [] and receiver.stats.bad_checksum > 20
    logged = [getattr(r, "event", None) for r in caplog.records if r.name == "lifeline.gnss"]
    assert logged.count("gnss.garbage") == 1


async def test_run_hands_over_at_most_one_reading_per_interval(sim: GnssSimulator) -> None:
    got: list[float] = []

    def on_reading(reading: GnssReading) -> None:
        got.append(trio.current_time())

    receiver = GnssReceiver(sim.path, timeout=1.0)
    with trio.move_on_after(1.6):
        await run_device(receiver, on_reading, interval=0.5)
    assert 2 <= len(got) <= 4
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(got))


# --- gpsd: the client against the fake over TCP ----------------------------------------


async def test_gpsd_read_once() -> None:
    fake = FakeGpsd(interval=FAST, satellites=7, clock_offset_ms=0.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: fake.serve(task_status=task_status))
        result = await read_once(f"gpsd://127.0.0.1:{port}", timeout=2.0)
        assert result["source"] == "gpsd" and result["fix"] is True and result["fix_type"] == 3
        assert result["satellites"] == 7 and 0 <= result["offset_ms"] < 150
        assert result["talker"] == "/dev/ttyFAKE0" and result["counters"]["garbage"] == 0
        assert fake.requests == [GPSD_WATCH]

        fake.set(mode=1, garbage=True)
        result = await read_once(f"gpsd://127.0.0.1:{port}", timeout=2.0)
        assert result["fix"] is False and result["reason"] == "gpsd TPV mode 1 (no fix)"
        assert result["offset_ms"] is None

        fake.set(silent=True, garbage=False)
        with pytest.raises(DeviceTimeout, match="gpsd sent no TPV"):
            await read_once(f"gpsd://127.0.0.1:{port}", timeout=0.4)  # VERSION etc. but no report
        nursery.cancel_scope.cancel()


async def test_gpsd_not_running_or_bad_address() -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PortMissing, match=rf"^gpsd://127.0.0.1:{port}: cannot connect to gpsd"):
        await read_once(f"gpsd://127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(PortMissing, match="bad gpsd address"):
        await read_once("gpsd://", timeout=0.5)


async def test_gpsd_closing_the_connection_then_coming_back() -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.send_all(b'{"class":"VERSION","release":"3.25","proto_major":3,"proto_minor":15}\r\n')
        await stream.receive_some(100)  # take the ?WATCH, so the close is a FIN, not a reset
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, hang_up, 0)
        port = listeners[0].socket.getsockname()[1]
        client = GpsdClient("127.0.0.1", port, timeout=1.0)
        with pytest.raises(PortMissing, match="gpsd closed the connection"):
            await client.poll()
        nursery.cancel_scope.cancel()

    fake = FakeGpsd(interval=FAST)
    harness = Harness(GnssMonitor("gps0", fix_confirm=2, stale_after=0.5))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: fake.serve(task_status=task_status))
        client = GpsdClient("127.0.0.1", port, timeout=0.5)
        nursery.start_soon(harness.ticker)
        await nursery.start(functools.partial(run_device, client, harness.on_reading, interval=0,
                                              backoff_initial=0.05))
        await wait_for(harness.has("GnssFixAcquired"))
        assert harness.events[0] == ("GnssFixAcquired", {"device": "gps0", "satellites": 8, "quality": 1})
        fake.set(mode=3, status=8)  # gpsd says: simulated
        await wait_for(harness.has("GnssFixLost"))
        assert harness.events[-1][1]["reason"] == "gpsd TPV status 8 (simulated)"
        await client.aclose()  # the link drops: run() reconnects
        fake.set(status=1)
        await wait_for(harness.has("GnssFixAcquired", 2))
        assert fake.watchers >= 2
        nursery.cancel_scope.cancel()


async def test_gpsd_poll_after_a_pause_is_fresh() -> None:
    fake = FakeGpsd(interval=FAST)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: fake.serve(task_status=task_status))
        client = GpsdClient("127.0.0.1", port, timeout=2.0)
        await client.poll()
        await trio.sleep(1.0)
        reading = await client.poll()
        assert reading.utc is not None and abs(time.time() - reading.utc.timestamp()) < 0.5
        assert reading.offset_ms is not None and 0 <= reading.offset_ms < 150
        await client.aclose()
        nursery.cancel_scope.cancel()
