"""The GNSS drivers (trio; the I/O): :class:`GnssReceiver` (pyserial, any ``serial_for_url``
port, 4800 or 9600 baud) and :class:`GpsdClient` (TCP 2947, ``?WATCH``). Both have
``poll() -> GnssReading``; the hardware service's device loop polls them. :func:`read_once`
is ``lifeline hardware read gnss``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import serial
import trio

from daemon.core.log import get_logger
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError, PortMissing
from hardware.gnss.gpsd import GPSD_PORT, GPSD_WATCH, GpsdProtocol, GpsdStats, parse_gpsd_url
from hardware.gnss.nmea import GnssProtocol, GnssReading, NmeaStats

log = get_logger("gnss")


def _started(task_status: Any, value: Any = None) -> None:
    if task_status is not None:
        task_status.started(value)


# --- trio drivers ---------------------------------------------------------------------


class _PortLost(Exception):
    pass


class _Noting:
    """What the serial and gpsd drivers share: the state of the source, one log line per
    change (the hardware service's device loop polls them and reports each outcome)."""

    url: str
    _state: str | None = None

    def _change(self, new: str, level: str, **fields: Any) -> None:
        if new != self._state:
            self._state = new
            getattr(log, level)(f"gnss.{new}", port=self.url, **fields)

    def note(self, error: BaseException | None, *, reading: GnssReading | None = None,
             retry_s: float | None = None) -> None:
        if error is None:
            assert reading is not None
            self._change("receiving", "info", fix=reading.fix, satellites=reading.satellites)
        elif isinstance(error, PortMissing):
            self._change("port_missing", "warning", error=str(error), retry_s=retry_s)
        elif isinstance(error, DeviceTimeout):
            self._change("silent", "warning", error=str(error))
        elif isinstance(error, DeviceGarbage):
            self._change("garbage", "warning", error=str(error))
        else:  # anything else a driver may say: retried after the backoff
            self._change("error", "warning", error=str(error), retry_s=retry_s)


class GnssReceiver(_Noting):
    """An NMEA receiver on a serial port (device path or ``serial_for_url`` URL).

    Blocking reads run in a worker thread with a short timeout (``read_timeout``), so a
    cancelled task waits at most that long and no byte read is lost to a cancellation.
    A read that times out also marks the end of the receiver's burst: the epoch is
    complete then (``read_timeout`` must stay well below the receiver's interval).

    :meth:`poll` can be called back to back (as the device loop does with a zero interval) or once in a while:
    when nothing has read the port for ``catch_up_after`` seconds, the bytes the kernel
    buffered meanwhile are old (their arrival time would be wrong), so they are flushed
    and the driver joins the stream at the next burst: it skips bytes until the line
    goes quiet (or for at most ``join_limit`` seconds, for a receiver that never pauses)
    so the epoch it returns is whole. A poll after a pause therefore takes up to about
    one receiver interval.
    """

    def __init__(self, port: str, *, baudrate: int = 9600, timeout: float = 3.0,
                 read_timeout: float = 0.05,
                 catch_up_after: float = 0.5, join_limit: float = 1.5,
                 clock: Callable[[], float] = time.time) -> None:
        if baudrate <= 0:
            raise ValueError(f"bad baud rate {baudrate}")
        self.port = port
        self.url = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.read_timeout = read_timeout
        self._clock = clock
        self._protocol = GnssProtocol()
        self.catch_up_after = max(catch_up_after, 5 * read_timeout)
        self.join_limit = join_limit
        self._ready: deque[GnssReading] = deque()
        self._serial: Any = None
        self._last_read: float | None = None  # time.monotonic() when a read last returned
        self._joining = True

    @property
    def stats(self) -> NmeaStats:
        return self._protocol.stats

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def _open_blocking(self) -> Any:
        try:
            # exclusive: a second lifeline reader (``lifeline hardware read`` next to the
            # daemon) is refused instead of silently stealing half the bytes
            ser = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=self.read_timeout,
                                        exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            code = getattr(exc, "errno", None)
            if code == errno.ENOENT or (code is None and not os.path.exists(self.port)
                                       and "://" not in self.port):
                raise PortMissing(f"{self.port}: no such port") from None
            if "exclusively lock" in str(exc):
                raise PortMissing(f"{self.port}: busy, another process holds it (the daemon?)") from None
            raise PortMissing(f"{self.port}: cannot open ({exc})") from None
        try:
            ser.reset_input_buffer()  # old bytes would carry old arrival times
        except (serial.SerialException, OSError):
            pass
        return ser

    async def open(self) -> None:
        if self._serial is not None:
            return
        self._serial = await trio.to_thread.run_sync(self._open_blocking)
        self._protocol.reset()
        self._ready.clear()
        self._joining, self._last_read = True, None
        log.info("gnss.port_open", port=self.port, baudrate=self.baudrate)

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):  # a vanished port may fail to close
                ser.close()

    async def aclose(self) -> None:
        self.close()

    def _read_chunk(self) -> tuple[bytes, float]:
        ser = self._serial
        if ser is None:
            raise _PortLost("closed")
        try:
            data = ser.read(1)
            arrival = self._clock()
            if data:
                waiting = ser.in_waiting
                if waiting:
                    data += ser.read(waiting)
            self._last_read = time.monotonic()
            return data, arrival
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            raise _PortLost(str(exc) or type(exc).__name__) from None

    def _catch_up(self) -> None:
        self._ready.clear()
        self._protocol.reset()
        self._joining = True
        with contextlib.suppress(serial.SerialException, OSError):  # a lost port shows on the next read
            self._serial.reset_input_buffer()

    async def poll(self, timeout: float | None = None) -> GnssReading:
        """The next epoch's reading. Raises PortMissing (cannot open, or lost: the next
        call reopens), DeviceTimeout (no data, or no RMC/GGA) or DeviceGarbage (bytes
        but no valid sentence: often the wrong baud rate)."""
        timeout = self.timeout if timeout is None else timeout
        await self.open()
        if self._last_read is not None and time.monotonic() - self._last_read > self.catch_up_after:
            self._catch_up()
        if self._ready:
            return self._ready.popleft()
        before = (self.stats.bytes_in, self.stats.sentences + self.stats.ignored, self.stats.bad_checksum)
        start = trio.current_time()
        deadline, join_until = start + timeout, start + self.join_limit
        while trio.current_time() < deadline:
            try:
                data, arrival = await trio.to_thread.run_sync(self._read_chunk)
            except _PortLost as exc:
                self.close()
                self._protocol.reset()
                log.warning("gnss.port_lost", port=self.port, error=str(exc))
                raise PortMissing(f"{self.port}: port lost ({exc})") from None
            if data:
                found = self._protocol.feed(data, arrival)  # parsed even when skipped: counted
                if self._joining and trio.current_time() < join_until:
                    self._protocol.assembler.reset()  # the tail of a burst joined midway
                    continue
                self._joining = False
                self._ready.extend(found)
            elif self._joining:  # the line went quiet: the next byte starts a burst
                self._joining = False
                self._protocol.assembler.reset()
                continue
            else:  # quiet for read_timeout: the burst is over, so is its epoch
                ended = self._protocol.flush()
                if ended is not None:
                    self._ready.append(ended)
            if self._ready:
                return self._ready.popleft()
        got = self.stats.bytes_in - before[0]
        valid = self.stats.sentences + self.stats.ignored - before[1]
        bad = self.stats.bad_checksum - before[2]
        if got == 0:
            raise DeviceTimeout(f"{self.port}: no data in {timeout:g} s "
                                "(receiver off, wrong port or cable?)")
        if valid == 0:
            raise DeviceGarbage(f"{self.port}: {got} bytes in {timeout:g} s but no valid NMEA "
                                f"sentence ({bad} bad checksums; wrong baud rate, {self.baudrate}?)")
        raise DeviceTimeout(f"{self.port}: NMEA but no RMC or GGA sentence in {timeout:g} s "
                            "(enable RMC and GGA output on the receiver)")


class GpsdClient(_Noting):
    """Readings from a running gpsd over TCP (``?WATCH={"enable":true,"json":true}``).

    gpsd reports a TPV once it has the whole epoch, so its offsets include gpsd's cycle
    latency on top of the receiver's; use it for fix and satellites, PPS for time. As
    with the serial driver, a poll after a pause of ``catch_up_after`` seconds first
    drains what the socket buffered meanwhile (old reports would carry a wrong arrival).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = GPSD_PORT, *, timeout: float = 3.0,
                 device: str | None = None,
                 catch_up_after: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.host, self.port = host, port
        self.url = f"gpsd://{host}:{port}"
        self.timeout = timeout
        self._clock = clock
        self.catch_up_after = catch_up_after
        self._protocol = GpsdProtocol(device=device)
        self._ready: deque[GnssReading] = deque()
        self._stream: Any = None
        self._last_receive: float | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> GpsdClient:
        host, port = parse_gpsd_url(url)
        return cls(host, port, **kwargs)

    @property
    def stats(self) -> GpsdStats:
        return self._protocol.stats

    @property
    def version(self) -> dict[str, Any] | None:
        return self._protocol.version

    async def connect(self) -> None:
        if self._stream is not None:
            return
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise PortMissing(f"{self.url}: cannot connect to gpsd ({exc.strerror or exc})") from None
        try:
            await stream.send_all(GPSD_WATCH)
        except (trio.BrokenResourceError, OSError) as exc:
            await stream.aclose()
            raise PortMissing(f"{self.url}: gpsd dropped the connection ({exc})") from None
        self._stream = stream
        self._protocol.reset()
        self._ready.clear()
        self._last_receive = None
        log.info("gnss.gpsd_connected", port=self.url)

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    async def _lost(self, why: str) -> PortMissing:
        await self.aclose()
        log.warning("gnss.gpsd_lost", port=self.url, error=why)
        return PortMissing(f"{self.url}: {why}")

    async def _receive(self, deadline: float) -> bytes | None:
        """Bytes from gpsd, or None at the deadline; PortMissing when the link is gone."""
        data = None
        with trio.move_on_at(deadline):
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise await self._lost(f"connection lost ({exc})") from None
        if data is not None and not data:
            raise await self._lost("gpsd closed the connection")
        if data is not None:
            self._last_receive = time.monotonic()
        return data

    async def _catch_up(self) -> None:
        self._ready.clear()
        limit = trio.current_time() + 1.0
        while trio.current_time() < limit:
            data = await self._receive(trio.current_time() + 0.02)
            if data is None:
                break
            self._protocol.feed(data, self._clock())  # counted, but old: not reported
        self._protocol.forget_sky()

    async def poll(self, timeout: float | None = None) -> GnssReading:
        timeout = self.timeout if timeout is None else timeout
        await self.connect()
        if self._last_receive is not None and time.monotonic() - self._last_receive > self.catch_up_after:
            await self._catch_up()
        if self._ready:
            return self._ready.popleft()
        before = (self.stats.bytes_in, self.stats.objects, self.stats.errors)
        deadline = trio.current_time() + timeout
        while True:
            data = await self._receive(deadline)
            if data is None:
                break
            self._ready.extend(self._protocol.feed(data, self._clock()))
            if self._ready:
                return self._ready.popleft()
        got = self.stats.bytes_in - before[0]
        if self.stats.errors > before[2]:
            raise DeviceGarbage(f"{self.url}: gpsd answered ERROR: {self._protocol.last_error}")
        if got == 0:
            raise DeviceTimeout(f"{self.url}: no data from gpsd in {timeout:g} s")
        if self.stats.objects == before[1]:
            raise DeviceGarbage(f"{self.url}: {got} bytes in {timeout:g} s but no gpsd JSON")
        raise DeviceTimeout(f"{self.url}: gpsd sent no TPV in {timeout:g} s (no receiver attached?)")


# --- operator entry points ------------------------------------------------------------


def make_source(port: str, *, baudrate: int = 9600, timeout: float = 3.0) -> GnssReceiver | GpsdClient:
    """The driver for a configured ``port``: ``gpsd://HOST[:PORT]`` or a serial port."""
    if port.startswith("gpsd:"):
        return GpsdClient.from_url(port, timeout=timeout)
    return GnssReceiver(port, baudrate=baudrate, timeout=timeout)


async def read_once(port: str, *, timeout: float = 3.0, baudrate: int = 9600) -> dict[str, Any]:
    """One reading from a serial port (path or pyserial URL) or ``gpsd://HOST:PORT``, as
    plain data; raises HardwareError with a one-line message (no such port, no answer,
    garbage). gpsd's first TPV may come before its first SKY (no satellite count): then
    the next one is awaited while ``timeout`` allows."""
    source = make_source(port, baudrate=baudrate, timeout=timeout)
    deadline = trio.current_time() + timeout
    try:
        reading = await source.poll(timeout)
        for _ in range(1):  # gpsd's first TPV may precede its first SKY: one more
            remaining = deadline - trio.current_time()
            if reading.complete or remaining <= 0:
                break
            try:
                reading = await source.poll(remaining)
            except HardwareError:
                break
        result = reading.as_dict()
        result["port"] = port
        result["counters"] = source.stats.as_dict()
        return result
    finally:
        await source.aclose()
