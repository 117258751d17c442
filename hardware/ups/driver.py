"""The UPS drivers (trio; the I/O): :class:`UpsSerial` (Megatec/Q1 over pyserial;
``serial.serial_for_url``, 2400 8N1) and :class:`NutUps` over a :class:`NutClient` connection
to ``upsd``. Both have ``poll() -> UpsReading``; the hardware service's device loop
(:mod:`hardware.service`) polls them. :func:`read_once` is ``lifeline hardware read ups``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import termios
import time
from collections.abc import Callable
from typing import Any

import serial
import trio

from daemon.core.log import get_logger
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError, PortMissing
from hardware.ups.nut import NUT_PORT, nut_error, parse_nut_url, parse_nut_var, split_nut_line
from hardware.ups.q1 import (
    MAX_LINE,
    LineFramer,
    Q1Info,
    Q1Ratings,
    parse_info,
    parse_q1,
    parse_ratings,
    request,
)
from hardware.ups.reading import KIND, UpsReading, reading_from_nut, reading_from_q1
from hardware.ups.runtime import RuntimeCalibration, RuntimeEstimator

log = get_logger("ups")


DEFAULT_BAUDRATE = 2400


def _is_port_error(exc: BaseException) -> bool:
    return isinstance(exc, (serial.SerialException, OSError, termios.error))


class _Driver:
    """What both UPS drivers share: their state (ok / timeout / garbage / missing / error),
    logged once per change. The hardware service's device loop polls them, with backoff."""

    name: str
    _state: str | None = None

    @property
    def connected(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    async def connect(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def poll(self) -> UpsReading:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _set_state(self, state: str, error: BaseException | None = None) -> None:
        if state == self._state:
            return
        self._state = state
        if error is None:
            log.info("ups.state", device=self.name, state=state)
        else:
            log.warning("ups.state", device=self.name, state=state, error=str(error))

    @property
    def state(self) -> str | None:
        """None before the first poll, then ok / timeout / garbage / missing / error."""
        return self._state

    def note(self, error: BaseException | None, *, reading: Any = None, retry_s: float | None = None) -> None:
        """One poll's outcome, as the hardware service's device loop saw it: one log line
        per change of state; a missing port or another error drops the port, so the next
        poll (after the loop's backoff) reopens it."""
        if error is None:
            self._set_state("ok")
        elif isinstance(error, PortMissing):
            self.close()
            self._set_state("missing", error)
        elif isinstance(error, DeviceTimeout):
            self._set_state("timeout", error)
        elif isinstance(error, DeviceGarbage):
            self._set_state("garbage", error)
        else:
            self.close()
            self._set_state("error", error)


class UpsSerial(_Driver):
    """A Megatec/Q1 UPS on a serial port (device path or pyserial URL), 2400 8N1 by default.

    Blocking pyserial calls run in ``trio.to_thread.run_sync`` with ``read_timeout``-bounded
    reads, so a cancellation waits at most that long. Each request first flushes the input,
    so a late answer to an earlier request cannot be taken for this one.
    """

    def __init__(self, port: str, *, name: str | None = None, baudrate: int = DEFAULT_BAUDRATE,
                 timeout: float = 3.0, read_timeout: float = 0.1,
                 runtimecal: RuntimeCalibration | str | None = None,
                 battery_v_nominal: float | None = None, battery_packs: float | None = None,
                 charge_time_s: float = 43200.0, idle_load: float = 0.1,
                 identify: bool = True) -> None:
        self.port = port
        self.name = name or port
        self.baudrate = baudrate
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.identify_on_connect = identify
        if isinstance(runtimecal, str):
            runtimecal = RuntimeCalibration.parse(runtimecal)
        self.estimator = None if runtimecal is None else RuntimeEstimator(
            runtimecal, battery_v_nominal=battery_v_nominal, battery_packs=battery_packs,
            charge_time_s=charge_time_s, idle_load=idle_load)
        self.ratings: Q1Ratings | None = None
        self.info: Q1Info | None = None
        self._serial: Any = None
        self._framer = LineFramer()

    @property
    def connected(self) -> bool:
        return self._serial is not None

    def _open_blocking(self) -> Any:
        try:
            return serial.serial_for_url(
                self.port, baudrate=self.baudrate, bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE,
                timeout=self.read_timeout, write_timeout=self.timeout)
        except ValueError as exc:
            raise HardwareError(f"{self.port}: cannot use this port: {exc}") from None
        except Exception as exc:
            if _is_port_error(exc):
                raise PortMissing(f"{self.port}: no such port or cannot open it ({exc})") from None
            raise

    async def connect(self) -> None:
        self.close()
        self._serial = await trio.to_thread.run_sync(self._open_blocking)
        self._framer.clear()
        if self.identify_on_connect:
            await self.identify()

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):  # a vanished port may fail to close; it is gone anyway
                ser.close()

    def _lost(self, exc: BaseException) -> PortMissing:
        self.close()
        return PortMissing(f"{self.port}: port went away ({exc})")

    def _send_blocking(self, data: bytes) -> None:
        ser = self._serial
        ser.reset_input_buffer()
        ser.write(data)
        ser.flush()

    def _read_blocking(self) -> bytes:
        return bytes(self._serial.read_until(b"\r", MAX_LINE))

    async def command(self, command: str, *, timeout: float | None = None) -> bytes:
        """Send one command and return its one-line answer (without the CR)."""
        if self._serial is None:
            await self.connect()
        timeout = self.timeout if timeout is None else timeout
        deadline = trio.current_time() + timeout
        self._framer.clear()
        try:
            await trio.to_thread.run_sync(self._send_blocking, request(command))
            while True:
                lines = self._framer.feed(await trio.to_thread.run_sync(self._read_blocking))
                if lines:
                    return lines[0]
                if trio.current_time() >= deadline:
                    raise DeviceTimeout(f"{self.port}: no answer to {command} within {timeout:g} s")
        except HardwareError:
            raise
        except Exception as exc:
            if _is_port_error(exc):
                raise self._lost(exc) from None
            raise

    async def identify(self) -> None:
        """``F`` and ``I``, best-effort (many units know only Q1): sets ``ratings``/``info``
        and, with a runtime calibration, the nominal battery voltage it anchors on."""
        short = min(1.0, self.timeout)
        try:
            self.ratings = parse_ratings(await self.command("F", timeout=short))
        except (DeviceTimeout, DeviceGarbage):
            self.ratings = None
        try:
            self.info = parse_info(await self.command("I", timeout=short))
        except (DeviceTimeout, DeviceGarbage):
            self.info = None
        if (self.estimator is not None and self.estimator.battery_v_nominal is None
                and self.ratings is not None):
            self.estimator.battery_v_nominal = self.ratings.battery_v

    async def poll(self) -> UpsReading:
        q = parse_q1(await self.command("Q1"))
        charge = runtime = None
        if self.estimator is not None:
            charge, runtime = self.estimator.update(q, time.monotonic())
        return reading_from_q1(q, battery_charge=charge, runtime_s=runtime)


class NutClient:
    """A read-only client of NUT's ``upsd`` (network protocol 1.x) over one trio TCP stream."""

    def __init__(self, host: str, port: int = NUT_PORT, *, timeout: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.where = f"upsd {host}:{port}"
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def connect(self) -> None:
        await self.aclose()
        try:
            with trio.fail_after(self.timeout):
                self._stream = await trio.open_tcp_stream(self.host, self.port)
        except trio.TooSlowError:
            raise DeviceTimeout(f"{self.where}: no connection within {self.timeout:g} s") from None
        except OSError as exc:
            raise PortMissing(f"{self.where}: cannot connect ({exc.strerror or exc})") from None
        self._buf.clear()

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):  # a broken stream
                await stream.aclose()

    def close_nowait(self) -> None:
        """Drop the connection without awaiting (from synchronous cleanup paths)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.socket.close()

    async def _send(self, line: str) -> None:
        assert self._stream is not None
        await self._stream.send_all(line.encode("utf-8") + b"\n")

    async def _line(self) -> list[str]:
        assert self._stream is not None
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                raw = bytes(self._buf[:end]).rstrip(b"\r")
                del self._buf[: end + 1]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DeviceGarbage(f"{self.where}: answer is not UTF-8: {raw[:60]!r}") from None
                return split_nut_line(text)
            if len(self._buf) > 4096:
                raise DeviceGarbage(f"{self.where}: line longer than 4096 bytes")
            data = await self._stream.receive_some(4096)
            if not data:
                raise ConnectionResetError("upsd closed the connection")
            self._buf += data

    async def _exchange(self, line: str, reader: Callable[[], Any]) -> Any:
        if self._stream is None:
            await self.connect()
        try:
            with trio.fail_after(self.timeout):
                await self._send(line)
                return await reader()
        except trio.TooSlowError:
            await self.aclose()  # a late answer would be read as the next one's
            raise DeviceTimeout(f"{self.where}: no answer to {line!r} within {self.timeout:g} s") from None
        except DeviceGarbage:
            await self.aclose()
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise PortMissing(f"{self.where}: connection lost ({exc})") from None

    async def get_var(self, ups: str, name: str) -> str | None:
        """``GET VAR ups name`` → the value, None when the UPS does not support it."""
        async def read() -> str | None:
            words = await self._line()
            if words[:2] == ["ERR", "VAR-NOT-SUPPORTED"]:
                return None
            got, value = parse_nut_var(words, ups, f"{self.where} {ups}")
            if got != name:
                raise DeviceGarbage(f"{self.where}: asked for {name}, got {got}")
            return value

        return await self._exchange(f"GET VAR {ups} {name}", read)

    async def list_var(self, ups: str) -> dict[str, str]:
        """``LIST VAR ups`` → every variable (name → value)."""
        where = f"{self.where} {ups}"

        async def read() -> dict[str, str]:
            words = await self._line()
            if words and words[0] == "ERR":
                raise nut_error(words[1] if len(words) > 1 else "?", where)
            if words != ["BEGIN", "LIST", "VAR", ups]:
                raise DeviceGarbage(f"{where}: expected BEGIN LIST VAR, got {' '.join(words)[:60]!r}")
            variables: dict[str, str] = {}
            while True:
                words = await self._line()
                if words == ["END", "LIST", "VAR", ups]:
                    return variables
                name, value = parse_nut_var(words, ups, where)
                variables[name] = value

        return await self._exchange(f"LIST VAR {ups}", read)


class NutUps(_Driver):
    """A UPS read through NUT's ``upsd``: one ``LIST VAR`` per poll."""

    def __init__(self, host: str, port: int = NUT_PORT, ups: str = "ups", *, name: str | None = None,
                 timeout: float = 3.0) -> None:
        self.client = NutClient(host, port, timeout=timeout)
        self.ups = ups
        self.name = name or f"nut://{host}:{port}/{ups}"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> NutUps:
        host, port, ups = parse_nut_url(url)
        return cls(host, port, ups, **kwargs)

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self) -> None:
        await self.client.connect()

    def close(self) -> None:
        self.client.close_nowait()

    async def poll(self) -> UpsReading:
        return reading_from_nut(await self.client.list_var(self.ups))


def open_ups(port: str, **kwargs: Any) -> UpsSerial | NutUps:
    """The driver for an operator's port string: ``nut://...`` or a serial path / URL."""
    if port.startswith("nut://"):
        return NutUps.from_url(port, **kwargs)
    return UpsSerial(port, **kwargs)


async def read_once(port: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """One reading as JSON-able data, or HardwareError with a one-line message."""
    if port.startswith("nut://"):
        nut = NutUps.from_url(port, timeout=timeout)
        try:
            reading = await nut.poll()
        finally:
            await nut.client.aclose()
        return {"kind": KIND, "port": port, **reading.to_dict()}
    ups = UpsSerial(port, timeout=timeout, identify=False)
    try:
        await ups.connect()
        reading = await ups.poll()
        await ups.identify()
    finally:
        ups.close()
    return {"kind": KIND, "port": port, **reading.to_dict(),
            "ratings": None if ups.ratings is None else dataclasses.asdict(ups.ratings),
            "info": None if ups.info is None else dataclasses.asdict(ups.info)}
