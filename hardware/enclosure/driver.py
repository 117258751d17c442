"""The enclosure drivers (trio over pyserial; the I/O): :class:`ModbusSensor` (RS-485
temperature/humidity sensor) and :class:`DoorContact` (a dry contact on a modem-status line).
Both open a device path or any pyserial URL. :func:`read_once` / :func:`read_door_once` are
``lifeline hardware read enclosure`` and the door's commissioning check.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import serial
import trio
from serial import SerialBase

from daemon.core.log import get_logger
from hardware.errors import DeviceTimeout, HardwareError, PortMissing
from hardware.enclosure.door import DoorLine, OpenWhen, check_door, door_reading
from hardware.enclosure.modbus import (
    _FUNCTION_NAMES,
    NEED_DATA,
    ExceptionReply,
    ModbusExceptionError,
    RegistersReply,
    RtuReadTransaction,
)
from hardware.enclosure.registers import (
    DEFAULT_MAP,
    KIND_CLIMATE,
    KIND_DOOR,
    ClimateReading,
    DoorReading,
    RegisterMap,
)


log = get_logger("hardware.enclosure")


# --- trio drivers over pyserial --------------------------------------------------------

#: One blocking read in the worker thread waits at most this long, so a cancelled poll
#: returns within it.
READ_SLICE_S = 0.05
WRITE_TIMEOUT_S = 1.0

SerialFactory = Callable[..., SerialBase]


def _serial_factory() -> SerialFactory:
    return serial.serial_for_url  # type: ignore[no-any-return]


def _open_error(port: str, exc: BaseException) -> HardwareError:
    """A one-line error for a failed open, sorted into the contract's classes."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, ValueError):  # an unknown URL scheme or a bad setting
        return HardwareError(f"{port}: cannot open: {exc}")
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return PortMissing(f"{port}: no such port (is the adapter plugged in? see `ls /dev/serial/by-id/`)")
    if code in (errno.EACCES, errno.EPERM):
        return HardwareError(f"{port}: permission denied (add the daemon's user to the port's group, "
                             "usually dialout, or a udev rule)")
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        return HardwareError(f"{port}: port busy: another process holds it (the daemon's own poller?)")
    return PortMissing(f"{port}: cannot open: {exc}")


class _SerialDriver:
    """What both drivers share: open by path or URL, drop the port on an I/O error, one
    log line per state change (the hardware service's device loop polls them, reopening a
    missing port with exponential backoff)."""

    kind = "serial"

    def __init__(self, port: str, *, name: str, serial_factory: SerialFactory | None) -> None:
        self.port = port
        self.name = name
        self._factory = serial_factory
        self._serial: SerialBase | None = None
        self._lock = trio.Lock()
        self.last_error: HardwareError | None = None
        self._state: str | None = None

    @property
    def serial(self) -> SerialBase | None:
        """The open pyserial object (None while closed): tests flip ``loop://`` lines on it."""
        return self._serial

    def _settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _open_sync(self) -> SerialBase:
        factory = self._factory or _serial_factory()
        try:
            return factory(self.port, **self._settings())
        except Exception as exc:  # pyserial raises SerialException, OSError, ValueError, termios.error
            raise _open_error(self.port, exc) from exc

    async def _port(self) -> SerialBase:
        if self._serial is None:
            # Opening a URL (socket://, rfc2217://) connects over the network: off the trio thread.
            self._serial = await trio.to_thread.run_sync(self._open_sync)
        return self._serial

    def _lost(self, exc: BaseException) -> PortMissing:
        self.close()
        return PortMissing(f"{self.port}: lost the port ({exc})")

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            # Closing a vanished device may fail; it is gone either way.
            with contextlib.suppress(Exception):
                port.close()

    async def poll(self) -> Any:
        raise NotImplementedError

    def _note(self, error: HardwareError | None) -> None:
        self.last_error = error
        state = "ok" if error is None else type(error).__name__
        if state == self._state:
            return
        previous, self._state = self._state, state
        if error is None:
            log.info(f"{self.kind}.answering", device=self.name, port=self.port, was=previous)
        else:
            log.warning(f"{self.kind}.failing", device=self.name, port=self.port, error=str(error))

    def note(self, error: BaseException | None, *, reading: Any = None, retry_s: float | None = None) -> None:
        """One poll's outcome, as the hardware service's device loop saw it."""
        if error is not None and not isinstance(error, HardwareError):
            error = HardwareError(f"{self.port}: {type(error).__name__}: {error}")
        self._note(error)


def _io_errors() -> tuple[type[BaseException], ...]:
    """What a pyserial call raises when the device goes away: SerialException, OSError,
    and termios.error (not an OSError) from tcflush/tcsetattr on a hung-up tty."""
    try:
        import termios
    except ImportError:  # not POSIX
        return (serial.SerialException, OSError)
    return (serial.SerialException, OSError, termios.error)


def _read_some(port: SerialBase) -> bytes:
    """One short blocking read: what is waiting, or one byte within READ_SLICE_S."""
    waiting = port.in_waiting
    return bytes(port.read(waiting if waiting else 1))


def _send(port: SerialBase, frame: bytes) -> None:
    # A late answer to an earlier, timed-out request must not be taken for this one's.
    port.reset_input_buffer()
    port.write(frame)
    port.flush()


class ModbusSensor(_SerialDriver):
    """A Modbus RTU temperature/humidity sensor on an RS-485 line (or a gateway URL)."""

    kind = KIND_CLIMATE

    def __init__(self, port: str, *, register_map: RegisterMap = DEFAULT_MAP, unit: int | None = None,
                 baudrate: int = 9600, parity: str = "N", stopbits: int = 1, timeout: float = 1.0,
                 name: str = "enclosure",
                 serial_factory: SerialFactory | None = None) -> None:
        super().__init__(port, name=name, serial_factory=serial_factory)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        # ``unit`` overrides the map's address ([hardware.enclosure] slave).
        self.register_map = register_map if unit is None else replace(register_map, unit=unit)
        self.baudrate, self.parity, self.stopbits, self.timeout = baudrate, parity, stopbits, timeout
        self.last_transaction: RtuReadTransaction | None = None

    def _settings(self) -> dict[str, Any]:
        # exclusive: a second opener (`lifeline hardware read` while the daemon polls)
        # would interleave frames on the bus; it gets "port busy" instead.
        return {"baudrate": self.baudrate, "bytesize": 8, "parity": self.parity, "stopbits": self.stopbits,
                "timeout": READ_SLICE_S, "write_timeout": WRITE_TIMEOUT_S, "exclusive": True}

    async def poll(self) -> ClimateReading:
        """One request and its answer within ``timeout``: a reading, or DeviceTimeout,
        DeviceGarbage, ModbusExceptionError, PortMissing."""
        async with self._lock:
            port = await self._port()
            txn = self.register_map.transaction()
            self.last_transaction = txn
            try:
                await trio.to_thread.run_sync(_send, port, txn.request)
                with trio.move_on_after(self.timeout):
                    while True:
                        data = await trio.to_thread.run_sync(_read_some, port)
                        if not data:
                            continue
                        txn.receive_data(data)
                        event = txn.next_event()
                        if event is not NEED_DATA:
                            break
            except serial.SerialTimeoutException as exc:
                self.close()
                raise DeviceTimeout(f"{self.port}: write timed out ({exc})") from exc
            except _io_errors() as exc:
                raise self._lost(exc) from exc
            if isinstance(txn.result, RegistersReply):
                return self.register_map.decode(txn.result, where=self.port)
            if isinstance(txn.result, ExceptionReply):
                e = txn.result
                address, count = self.register_map.span()
                raise ModbusExceptionError(
                    f"{self.port}: unit {e.unit} answered exception {e.code} ({e.name}) to reading "
                    f"{_FUNCTION_NAMES[e.function]} {address}..{address + count - 1}: check the register map",
                    e.code)
            raise txn.failure(self.port, self.timeout)


class DoorContact(_SerialDriver):
    """A door/tamper contact on a modem-status input (CTS, DSR, CD or RI).

    ``open_when`` says which line state means open: ``"deasserted"`` (default,
    fail-safe: a cut wire reads as open) or ``"asserted"``. The line is polled (one ioctl per poll); pyserial
    raises RTS and DTR on open, which can power the contact (module doc)."""

    kind = KIND_DOOR

    def __init__(self, port: str, *, line: DoorLine = "cts", open_when: OpenWhen = "deasserted",
                 name: str = "enclosure", serial_factory: SerialFactory | None = None) -> None:
        super().__init__(port, name=name, serial_factory=serial_factory)
        check_door(line, open_when)
        self.line, self.open_when = line, open_when

    def _settings(self) -> dict[str, Any]:
        if self.port.startswith("rfc2217://"):
            # A contact behind a terminal server (RFC 2217: modem-line changes arrive as
            # NOTIFY-MODEMSTATE); pyserial's client has no write timeout, and the door
            # writes nothing anyway.
            return {"timeout": READ_SLICE_S}
        return {"timeout": READ_SLICE_S, "write_timeout": WRITE_TIMEOUT_S, "exclusive": True}

    def interpret(self, asserted: bool) -> DoorReading:
        return door_reading(asserted, line=self.line, open_when=self.open_when)

    async def poll(self) -> DoorReading:
        async with self._lock:
            port = await self._port()
            try:
                asserted = await trio.to_thread.run_sync(lambda: bool(getattr(port, self.line)))
            except OSError as exc:
                if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOTSUP):
                    raise HardwareError(f"{self.port}: has no modem-status lines to read {self.line.upper()} "
                                        "from (a pty or a socket?): use a UART or a USB-serial adapter "
                                        "with handshake lines") from exc
                raise self._lost(exc) from exc
            except _io_errors() as exc:
                raise self._lost(exc) from exc
            return self.interpret(asserted)


# --- operator entry points -------------------------------------------------------------


async def read_once(port: str, *, timeout: float = 3.0, register_map: RegisterMap = DEFAULT_MAP,
                    unit: int | None = None, baudrate: int = 9600, parity: str = "N",
                    stopbits: int = 1) -> dict[str, Any]:
    """One reading of the Modbus sensor as plain data, or HardwareError with one clear
    line (no such port, port busy, no answer, garbage, Modbus exception)."""
    sensor = ModbusSensor(port, register_map=register_map, unit=unit, baudrate=baudrate, parity=parity,
                          stopbits=stopbits, timeout=timeout)
    try:
        reading = await sensor.poll()
    finally:
        sensor.close()
    m = sensor.register_map
    return {"kind": "enclosure", "port": port, "map": m.name, "unit": m.unit, "function": m.function,
            **reading.as_dict()}


async def read_door_once(port: str, *, line: DoorLine = "cts",
                         open_when: OpenWhen = "deasserted") -> dict[str, Any]:
    """The door contact's state, for commissioning the wiring."""
    door = DoorContact(port, line=line, open_when=open_when)
    try:
        reading = await door.poll()
    finally:
        door.close()
    return {"kind": "door", "port": port, **reading.as_dict()}
