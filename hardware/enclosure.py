"""Enclosure sensors: temperature / humidity over Modbus RTU, and the door contact.

What this module owns, in the order of the issue-8 contract:

1. **Sans-IO Modbus RTU core** (no trio, no serial): :func:`crc16_modbus`,
   :func:`read_request`, :class:`RtuReadTransaction` (the master's side of one read:
   request bytes out, answer bytes in with ``receive_data``, ``next_event`` answers
   :data:`NEED_DATA`, a :class:`RegistersReply` or an :class:`ExceptionReply`), the
   slave's side for the simulator (:class:`RtuRequestParser`, :func:`registers_response`,
   :func:`exception_response`) and the :class:`RegisterMap` that turns registers into
   a :class:`ClimateReading`.
2. **Trio drivers over pyserial**: :class:`ModbusSensor` (RS-485 temperature/humidity
   sensor) and :class:`DoorContact` (a dry contact on a modem-status line). Both open a
   device path or any pyserial URL (``serial.serial_for_url``: ``/dev/ttyUSB0``,
   ``socket://host:port`` behind an RS-485 gateway, ``loop://``, ``spy://``, ``rfc2217://``).
3. **Simulator**: :class:`EnclosureSimulator`, a Modbus RTU sensor on the master side of
   a pty, scriptable (temperature, humidity, silent, garbage, bad CRC, exception, wrong
   unit). ptys have no modem lines, so the door is simulated with ``loop://`` instead.
4. **Monitor**: :class:`EnclosureMonitor`, readings → events with thresholds,
   hysteresis, door debounce and staleness.

Why the Modbus framing is ours and not pymodbus's client
--------------------------------------------------------
The daemon reads two registers from one sensor; the whole protocol needed is one
request frame, one answer frame and CRC-16/MODBUS. Doing that here gives what the
contract asks of every device and what pymodbus's sync client does not:

* errors in our vocabulary: ``ModbusSerialClient.connect()`` swallows the open error into
  a log line and returns False (so "no such port" and "port busy" look the same), and a
  silent device, a bad CRC and a wrong unit come back as differently shaped
  ``ModbusIOException``\\ s whose texts changed between 3.x releases;
* prompt cancellation: reads run in 50 ms slices through ``trio.to_thread.run_sync``
  (the sync client blocks for ``timeout`` × ``retries`` in one call);
* a core the tests can feed one byte at a time and fuzz, as the other parsers are;
* no dependence on the pymodbus API, which moved inside 3.x (``slave=`` → ``device_id=``
  in 3.10, keyword-only arguments from 3.8, ``ModbusSlaveContext`` →
  ``ModbusDeviceContext``, server contexts deprecated for v4).

pymodbus does the job better as an *independent* implementation to test against: the
integration tests read :class:`EnclosureSimulator` with pymodbus's ``ModbusSerialClient``
and read pymodbus's own serial server with :class:`ModbusSensor`, over real ptys.

Default register map
--------------------
``xy-md02``: the common SHT20-based RS-485 modules (XY-MD02, XY-MD01, "SHT20 RS485
temperature humidity sensor"): 9600 8N1, unit 1, input registers (function 04),
register 0x0001 temperature ×10 signed (two's complement: 0xFF33 = -20.5 °C),
0x0002 humidity ×10. ``01 04 00 01 00 02 20 0B`` → ``01 04 04 01 31 02 22 2A CE`` =
30.5 °C, 54.6 %RH. Other sensors: give the map in config (see :meth:`RegisterMap.from_config`),
e.g. the ``l-com-srth100`` preset (holding registers, 0x0000 temperature ×10 signed,
0x0001 humidity ×10). Addresses are the 0-based addresses on the wire (a manual's
"register 30002" or "40001"-style number minus the prefix and minus one).

Door wiring
-----------
pyserial raises RTS and DTR when it opens a port, so a contact can be powered by the
port itself: wire it between RTS (DB9 pin 7) and CTS (pin 8), or DTR (pin 4) and DSR
(pin 6) or DCD (pin 1). ``open_when="deasserted"`` (the default, as in
``[hardware.enclosure] door_open_when``) means a closed door closes the circuit, so a cut
wire or an unplugged cable reads as *open*: fail-safe for a tamper loop.
``open_when="asserted"`` is for a contact that closes when the door opens.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import inspect
import os
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Self

from daemon.core.log import get_logger
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError, PortMissing

if TYPE_CHECKING:  # the sans-IO core needs neither serial nor trio; the drivers import them when used
    import serial

log = get_logger("hardware.enclosure")

Emit = tuple[str, dict[str, Any]]

#: The ``kind`` of DeviceStale/DeviceRecovered (the service's device kinds: the sensor and
#: the door contact are separate ports, polled and failing apart).
KIND_CLIMATE = "enclosure"
KIND_DOOR = "door"

READ_HOLDING_REGISTERS = 3
READ_INPUT_REGISTERS = 4
#: Modbus application protocol v1.1b3, 6.3/6.4: at most 125 registers per read.
MAX_READ_COUNT = 125

#: Modbus application protocol v1.1b3, section 7.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_FUNCTION_NAMES = {READ_HOLDING_REGISTERS: "holding registers", READ_INPUT_REGISTERS: "input registers"}


class ModbusExceptionError(HardwareError):
    """The sensor answered, with a Modbus exception: usually a wrong register map."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- CRC-16/MODBUS ---------------------------------------------------------------------
# Polynomial 0x8005 reflected (0xA001), initial 0xFFFF, no final XOR; sent low byte first
# (Modbus over serial line v1.02, 6.2.2). Check value of b"123456789" is 0x4B37.


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_modbus(data: bytes | bytearray | memoryview) -> int:
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC, low byte first."""
    return body + crc16_modbus(body).to_bytes(2, "little")


def crc_ok(frame: bytes | bytearray | memoryview) -> bool:
    """True when the last two bytes are the CRC of the rest (the CRC over a whole
    correct frame, CRC included, is 0)."""
    return len(frame) >= 4 and crc16_modbus(frame) == 0


def read_request(unit: int, function: int, address: int, count: int) -> bytes:
    """The RTU frame of a read-holding (3) or read-input (4) registers request."""
    if not 1 <= unit <= 247:
        raise ValueError(f"Modbus unit address must be 1..247, got {unit}")
    if function not in _FUNCTION_NAMES:
        raise ValueError(f"Modbus function must be 3 (holding) or 4 (input registers), got {function}")
    if not 1 <= count <= MAX_READ_COUNT:
        raise ValueError(f"Modbus read count must be 1..{MAX_READ_COUNT}, got {count}")
    if not 0 <= address or address + count > 0x10000:
        raise ValueError(f"Modbus registers {address}..{address + count - 1} are outside 0..65535")
    return with_crc(struct.pack(">BBHH", unit, function, address, count))


def registers_response(unit: int, function: int, values: Sequence[int]) -> bytes:
    """The slave's answer to a read: unit, function, byte count, big-endian words, CRC."""
    words = b"".join((v & 0xFFFF).to_bytes(2, "big") for v in values)
    return with_crc(bytes((unit, function, len(words))) + words)


def exception_response(unit: int, function: int, code: int) -> bytes:
    return with_crc(bytes((unit, function | 0x80, code)))


# --- the master's side of one read -----------------------------------------------------


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA


@dataclass(frozen=True)
class RegistersReply:
    unit: int
    function: int
    address: int
    values: tuple[int, ...]

    def register(self, address: int) -> int:
        return self.values[address - self.address]


@dataclass(frozen=True)
class ExceptionReply:
    unit: int
    function: int
    code: int

    @property
    def name(self) -> str:
        return EXCEPTION_NAMES.get(self.code, f"exception {self.code}")


class _Kind(enum.Enum):
    OURS = 1      # a complete answer for us, CRC correct
    FOREIGN = 2   # a complete, CRC-correct answer from another unit address
    NEED = 3      # could be the start of an answer: wait for more bytes
    BAD = 4       # cannot be an answer starting here


class RtuReadTransaction:
    """One read request and its answer, sans-IO (the h11 shape).

    ``request`` is the frame to send. Feed whatever the port returns to
    :meth:`receive_data`, in any split; :meth:`next_event` returns :data:`NEED_DATA`
    until a CRC-correct answer from our unit with the right function and byte count is
    in the buffer, then that :class:`RegistersReply` or :class:`ExceptionReply` (once;
    the reply is sticky in :attr:`result`).

    Anything else is skipped and counted, never raised: line noise, an RS-485 adapter's
    local echo of the request, frames with a bad CRC, answers from another unit. When the
    caller's deadline passes without a reply, :meth:`failure` says what was seen instead.
    The buffer is capped (:attr:`MAX_BUFFER`): the oldest bytes go first.
    """

    MAX_BUFFER = 512

    def __init__(self, unit: int, function: int, address: int, count: int) -> None:
        self.request = read_request(unit, function, address, count)
        self.unit, self.function, self.address, self.count = unit, function, address, count
        self._buffer = bytearray()
        self.received = 0          # bytes fed in
        self.discarded = 0         # bytes skipped as not-our-answer
        self.bad_crc = 0           # candidate answers from our unit whose CRC failed
        self.foreign_units: set[int] = set()
        self.result: RegistersReply | ExceptionReply | None = None
        self._head = b""           # the first bytes received, for the error message

    def receive_data(self, data: bytes) -> None:
        if self.result is not None or not data:
            return
        self.received += len(data)
        if len(self._head) < 16:
            self._head = (self._head + data)[:16]
        self._buffer += data
        excess = len(self._buffer) - self.MAX_BUFFER
        if excess > 0:
            del self._buffer[:excess]
            self.discarded += excess

    def _classify(self, i: int) -> tuple[_Kind, int, RegistersReply | ExceptionReply | None]:
        buf = self._buffer
        have = len(buf) - i
        if have < 2:
            return _Kind.NEED, 0, None
        unit, function = buf[i], buf[i + 1]
        ours = unit == self.unit
        if function == self.function | 0x80:
            if have < 5:
                return _Kind.NEED, 0, None
            if crc_ok(memoryview(buf)[i:i + 5]):
                reply = ExceptionReply(unit, self.function, buf[i + 2])
                return (_Kind.OURS if ours else _Kind.FOREIGN), 5, reply
            self.bad_crc += ours
            return _Kind.BAD, 0, None
        if function != self.function:
            return _Kind.BAD, 0, None
        if have < 3:
            return _Kind.NEED, 0, None
        byte_count = buf[i + 2]
        if byte_count != 2 * self.count:
            return _Kind.BAD, 0, None
        length = 5 + byte_count
        if have < length:
            return _Kind.NEED, 0, None
        if not crc_ok(memoryview(buf)[i:i + length]):
            self.bad_crc += ours
            return _Kind.BAD, 0, None
        words = bytes(buf[i + 3:i + 3 + byte_count])
        values = struct.unpack(f">{self.count}H", words)
        return (_Kind.OURS if ours else _Kind.FOREIGN), length, RegistersReply(unit, self.function, self.address, values)

    def next_event(self) -> RegistersReply | ExceptionReply | _NeedData:
        if self.result is not None:
            return NEED_DATA
        i, first_need = 0, None
        while i < len(self._buffer):
            kind, length, reply = self._classify(i)
            if kind is _Kind.OURS:
                assert reply is not None
                self.discarded += i
                del self._buffer[:i + length]
                self.result = reply
                return reply
            if kind is _Kind.FOREIGN:
                assert reply is not None
                self.foreign_units.add(reply.unit)
                i += length
                continue
            if kind is _Kind.NEED and first_need is None:
                first_need = i
            i += 1
        keep_from = len(self._buffer) if first_need is None else first_need
        del self._buffer[:keep_from]
        self.discarded += keep_from
        return NEED_DATA

    def failure(self, where: str, timeout: float) -> HardwareError:
        """The error for "no reply by the deadline", naming what arrived instead."""
        what = f"Modbus unit {self.unit}, {_FUNCTION_NAMES[self.function]} {self.address}..{self.address + self.count - 1}"
        if self.received == 0:
            return DeviceTimeout(f"{where}: no answer from {what} within {timeout:g}s "
                                 "(check power, A/B wiring, baud rate/parity and the unit address)")
        if self.foreign_units:
            units = ",".join(str(u) for u in sorted(self.foreign_units))
            return DeviceGarbage(f"{where}: unit {units} answered instead of unit {self.unit}: "
                                 "set the sensor's unit address in the register map")
        if self.bad_crc:
            return DeviceGarbage(f"{where}: {self.bad_crc} answer(s) from {what} with a bad CRC "
                                 "(check baud rate/parity, termination and cable)")
        preview = self._head.hex(" ") + (" ..." if self.received > len(self._head) else "")
        return DeviceGarbage(f"{where}: {self.received} byte(s) that are not a Modbus RTU answer from {what} "
                             f"({preview}; check baud rate/parity and the protocol)")


# --- the slave's side (for the simulator) ----------------------------------------------


@dataclass(frozen=True)
class Request:
    """An 8-byte request frame (functions 1..6 all have this shape)."""

    unit: int
    function: int
    address: int
    count: int


class RtuRequestParser:
    """The slave's framing: CRC-correct 8-byte request frames out of a byte stream.

    Real slaves split frames on 3.5 characters of silence; a pty has no timing, so this
    scans for the next 8 bytes with a correct CRC and skips a byte at a time otherwise.
    Variable-length requests (function 15, 16, 23) are not recognised: a sensor ignores
    them like noise."""

    MAX_BUFFER = 256

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.discarded = 0

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        excess = len(self._buffer) - self.MAX_BUFFER
        if excess > 0:
            del self._buffer[:excess]
            self.discarded += excess

    def next_request(self) -> Request | _NeedData:
        buf = self._buffer
        i = 0
        while len(buf) - i >= 8:
            if 1 <= buf[i + 1] <= 6 and crc_ok(memoryview(buf)[i:i + 8]):
                unit, function, address, count = struct.unpack(">BBHH", bytes(buf[i:i + 6]))
                self.discarded += i
                del buf[:i + 8]
                return Request(unit, function, address, count)
            i += 1
        self.discarded += i
        del buf[:i]
        return NEED_DATA


# --- register map and readings ---------------------------------------------------------


@dataclass(frozen=True)
class Register:
    """One 16-bit register: wire address (0-based), scale to the unit, signedness."""

    address: int
    scale: float = 0.1
    signed: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"register address must be 0..65535, got {self.address}")
        if not self.scale > 0:
            raise ValueError(f"register scale must be > 0, got {self.scale}")

    def decode(self, raw: int) -> float:
        value = raw - 0x10000 if self.signed and raw & 0x8000 else raw
        return round(value * self.scale, 9)

    def encode(self, value: float) -> int:
        raw = round(value / self.scale)
        low, high = (-0x8000, 0x7FFF) if self.signed else (0, 0xFFFF)
        if not low <= raw <= high:
            raise ValueError(f"{value} does not fit a {'signed' if self.signed else 'unsigned'} register "
                             f"at scale {self.scale:g}")
        return raw & 0xFFFF


#: A reading outside these ranges is a wrong map (scale, signedness) or a broken probe,
#: not a temperature: it is refused as garbage, so a silent fault goes stale, never "ok".
PLAUSIBLE_C = (-60.0, 150.0)
PLAUSIBLE_PERCENT = (-1.0, 101.0)


@dataclass(frozen=True)
class ClimateReading:
    celsius: float
    humidity_percent: float | None
    registers: dict[int, int] = field(default_factory=dict)  # wire address → raw value, as read

    def as_dict(self) -> dict[str, Any]:
        return {"celsius": self.celsius, "humidity_percent": self.humidity_percent,
                "registers": {str(k): v for k, v in self.registers.items()}}


@dataclass(frozen=True)
class DoorReading:
    open: bool
    line: str
    asserted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"door": "open" if self.open else "closed", "line": self.line, "asserted": self.asserted}


@dataclass(frozen=True)
class RegisterMap:
    """Where a sensor keeps its values. The default is the ``xy-md02`` map (module doc)."""

    name: str = "xy-md02"
    unit: int = 1
    function: int = READ_INPUT_REGISTERS
    temperature: Register = Register(1, 0.1, signed=True)
    humidity: Register | None = Register(2, 0.1, signed=False)

    def __post_init__(self) -> None:
        address, count = self.span()
        read_request(self.unit, self.function, address, count)  # validates, raises ValueError
        if self.humidity is not None and self.humidity.address == self.temperature.address:
            raise ValueError("temperature and humidity cannot share a register")

    def _registers(self) -> list[Register]:
        return [self.temperature] + ([self.humidity] if self.humidity is not None else [])

    def span(self) -> tuple[int, int]:
        """(first address, count): one read covering every register of the map."""
        addresses = [r.address for r in self._registers()]
        return min(addresses), max(addresses) - min(addresses) + 1

    def transaction(self) -> RtuReadTransaction:
        return RtuReadTransaction(self.unit, self.function, *self.span())

    def decode(self, reply: RegistersReply, where: str = "sensor") -> ClimateReading:
        celsius = self.temperature.decode(reply.register(self.temperature.address))
        percent = None if self.humidity is None else self.humidity.decode(reply.register(self.humidity.address))
        if not PLAUSIBLE_C[0] <= celsius <= PLAUSIBLE_C[1]:
            raise DeviceGarbage(f"{where}: implausible temperature {celsius:g} °C "
                                f"(raw {reply.register(self.temperature.address):#06x}): "
                                "check the register map's address, scale and signedness, or the probe")
        if percent is not None and not PLAUSIBLE_PERCENT[0] <= percent <= PLAUSIBLE_PERCENT[1]:
            assert self.humidity is not None
            raise DeviceGarbage(f"{where}: implausible humidity {percent:g} % "
                                f"(raw {reply.register(self.humidity.address):#06x}): "
                                "check the register map's address and scale, or the probe")
        registers = {reply.address + i: v for i, v in enumerate(reply.values)}
        return ClimateReading(celsius=celsius, humidity_percent=percent, registers=registers)

    def encode(self, celsius: float, percent: float | None) -> dict[int, int]:
        """Register values a sensor with this map shows for these readings (simulator)."""
        out = {self.temperature.address: self.temperature.encode(celsius)}
        if self.humidity is not None:
            out[self.humidity.address] = self.humidity.encode(percent if percent is not None else 0.0)
        return out

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> RegisterMap:
        """A map from a config table: ``preset`` (default ``xy-md02``) and overrides:
        ``unit``, ``function`` (3/4), ``temperature_register``, ``temperature_scale``,
        ``temperature_signed``, ``humidity_register`` (``-1`` = the sensor has none),
        ``humidity_scale``, ``humidity_signed``. Raises ValueError naming the key."""
        known = {"preset", "unit", "function", "temperature_register", "temperature_scale",
                 "temperature_signed", "humidity_register", "humidity_scale", "humidity_signed"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown register-map key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        preset_name = table.get("preset", "xy-md02")
        if preset_name not in PRESETS:
            raise ValueError(f"unknown register-map preset {preset_name!r}; known: {', '.join(sorted(PRESETS))}")
        base = PRESETS[preset_name]

        def get(key: str, kind: type, default: Any) -> Any:
            value = table.get(key, default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"register-map {key} must be {kind.__name__}, got {value!r}")
            return value

        temperature = Register(get("temperature_register", int, base.temperature.address),
                               get("temperature_scale", float, base.temperature.scale),
                               get("temperature_signed", bool, base.temperature.signed))
        hbase = base.humidity or Register(0)
        humidity_address = get("humidity_register", int, base.humidity.address if base.humidity else -1)
        humidity = None if humidity_address == -1 else Register(
            humidity_address, get("humidity_scale", float, hbase.scale), get("humidity_signed", bool, hbase.signed))
        name = preset_name if set(table) <= {"preset"} else f"{preset_name}+custom"
        return replace(base, name=name, unit=get("unit", int, base.unit), function=get("function", int, base.function),
                       temperature=temperature, humidity=humidity)


PRESETS: dict[str, RegisterMap] = {
    # SHT20 RS-485 modules (XY-MD02/XY-MD01): input registers 1, 2; ×10; temperature signed.
    "xy-md02": RegisterMap(),
    # L-com SRTH100 and look-alikes: holding registers 0 (temperature ×10 signed), 1 (humidity ×10).
    "l-com-srth100": RegisterMap(name="l-com-srth100", function=READ_HOLDING_REGISTERS,
                                 temperature=Register(0, 0.1, signed=True), humidity=Register(1, 0.1)),
}
DEFAULT_MAP = PRESETS["xy-md02"]


# --- monitor: readings → events --------------------------------------------------------


class _Liveness:
    """Staleness of one source: no reading for ``stale_after`` → one DeviceStale; the
    next reading → DeviceRecovered. A source that never answered counts from the first
    tick."""

    def __init__(self, device: str, kind: str, stale_after: float) -> None:
        self.device, self.kind, self.stale_after = device, kind, stale_after
        self.last: float | None = None
        self.since: float | None = None
        self.stale = False

    def seen(self, now: float) -> list[Emit]:
        out: list[Emit] = []
        if self.stale:
            out.append(("DeviceRecovered", {"device": self.device, "kind": self.kind}))
            self.stale = False
        self.last = now
        return out

    def tick(self, now: float) -> list[Emit]:
        if self.since is None:
            self.since = now
        reference = self.last if self.last is not None else self.since
        silent = now - reference
        if self.stale or silent < self.stale_after:
            return []
        self.stale = True
        return [("DeviceStale", {"device": self.device, "kind": self.kind, "silent_s": round(silent, 3)})]


class _Threshold:
    """High alarm with hysteresis: fires once when ``value > high``, re-arms only when
    the value falls to ``high - hysteresis`` or below."""

    def __init__(self, high: float, hysteresis: float) -> None:
        if hysteresis < 0:
            raise ValueError(f"hysteresis must be >= 0, got {hysteresis}")
        self.high, self.hysteresis = high, hysteresis
        self.alarmed = False

    def step(self, value: float) -> bool:
        """True when this value raises the alarm."""
        if self.alarmed:
            if value <= self.high - self.hysteresis:
                self.alarmed = False
            return False
        if value > self.high:
            self.alarmed = True
            return True
        return False


class EnclosureMonitor:
    """Turns :class:`ClimateReading` and :class:`DoorReading` into the contract's events.

    * ``EnclosureTemperatureHigh`` / ``EnclosureHumidityHigh`` once when the value goes
      above the threshold; again only after it fell to threshold − hysteresis (there is
      no "normal again" event in the contract; :meth:`snapshot` shows the state).
    * ``EnclosureOpened`` / ``EnclosureClosed`` when the new door state held for
      ``door_debounce`` seconds (judged on readings: the state must still be seen that
      long after it was first seen). The door is assumed closed at start, so a door
      already open when the daemon starts is reported.
    * ``DeviceStale`` / ``DeviceRecovered`` per source, kinds ``enclosure`` (the sensor)
      and ``door`` (the contact). They are separate ports that fail apart, and the
      hardware service runs them as two devices: give each its own monitor
      (``climate=False`` for the door's, ``door=False`` for the sensor's). A stale source
      is never reported healthy: :meth:`snapshot` marks it stale and keeps its last
      values only as "last seen".

    Threshold names follow ``[hardware.enclosure]`` (``temperature_high`` °C,
    ``humidity_high`` %).
    """

    def __init__(self, device: str, *, temperature_high: float = 45.0, temperature_hysteresis: float = 2.0,
                 humidity_high: float = 80.0, humidity_hysteresis: float = 5.0,
                 door_debounce: float = 0.5, stale_after: float = 30.0,
                 climate: bool = True, door: bool = True) -> None:
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after}")
        if door_debounce < 0:
            raise ValueError(f"door_debounce must be >= 0, got {door_debounce}")
        self.device = device
        self.door_debounce = door_debounce
        self._temperature = _Threshold(temperature_high, temperature_hysteresis)
        self._humidity = _Threshold(humidity_high, humidity_hysteresis)
        self._climate = _Liveness(device, KIND_CLIMATE, stale_after) if climate else None
        self._door = _Liveness(device, KIND_DOOR, stale_after) if door else None
        self.last_climate: ClimateReading | None = None
        self.last_door: DoorReading | None = None
        self.door_open = False                      # the reported (debounced) state
        self._door_candidate: tuple[bool, float] | None = None

    def reading(self, r: ClimateReading | DoorReading, now: float) -> list[Emit]:
        if isinstance(r, ClimateReading):
            return self._climate_reading(r, now)
        if isinstance(r, DoorReading):
            return self._door_reading(r, now)
        raise TypeError(f"EnclosureMonitor cannot use a {type(r).__name__}")

    def _climate_reading(self, r: ClimateReading, now: float) -> list[Emit]:
        if self._climate is None:
            raise ValueError(f"{self.device}: a climate reading, but the monitor was built with climate=False")
        out = self._climate.seen(now)
        self.last_climate = r
        if self._temperature.step(r.celsius):
            out.append(("EnclosureTemperatureHigh", {"device": self.device, "celsius": r.celsius,
                                                     "threshold_c": self._temperature.high}))
        if r.humidity_percent is not None and self._humidity.step(r.humidity_percent):
            out.append(("EnclosureHumidityHigh", {"device": self.device, "percent": r.humidity_percent,
                                                  "threshold_percent": self._humidity.high}))
        return out

    def _door_reading(self, r: DoorReading, now: float) -> list[Emit]:
        if self._door is None:
            raise ValueError(f"{self.device}: a door reading, but the monitor was built with door=False")
        out = self._door.seen(now)
        self.last_door = r
        if r.open == self.door_open:
            self._door_candidate = None
            return out
        if self._door_candidate is None or self._door_candidate[0] != r.open:
            self._door_candidate = (r.open, now)
        if now - self._door_candidate[1] >= self.door_debounce:
            self.door_open = r.open
            self._door_candidate = None
            out.append(("EnclosureOpened" if r.open else "EnclosureClosed", {"device": self.device}))
        return out

    def tick(self, now: float) -> list[Emit]:
        out: list[Emit] = []
        for liveness in (self._climate, self._door):
            if liveness is not None:
                out += liveness.tick(now)
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain data for ``lifeline status`` and ``/metrics``."""
        out: dict[str, Any] = {"device": self.device}
        if self._climate is not None:
            c = self.last_climate
            out["climate"] = {
                "stale": self._climate.stale or c is None,
                "age_s": None if self._climate.last is None else round(now - self._climate.last, 3),
                "celsius": c.celsius if c else None, "humidity_percent": c.humidity_percent if c else None,
                "temperature_high": self._temperature.alarmed, "humidity_high": self._humidity.alarmed,
            }
        if self._door is not None:
            out["door"] = {
                "stale": self._door.stale or self.last_door is None,
                "age_s": None if self._door.last is None else round(now - self._door.last, 3),
                "open": self.door_open,
            }
        return out


# --- trio drivers over pyserial --------------------------------------------------------

#: One blocking read in the worker thread waits at most this long, so a cancelled poll
#: returns within it.
READ_SLICE_S = 0.05
WRITE_TIMEOUT_S = 1.0

SerialFactory = Callable[..., "serial.SerialBase"]


def _serial_factory() -> SerialFactory:
    import serial
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
    """What both drivers share: open by path or URL, drop the port on an I/O error,
    ``run`` with a steady interval, reconnect with exponential backoff, one log line per
    state change."""

    kind = "serial"

    def __init__(self, port: str, *, name: str, serial_factory: SerialFactory | None,
                 reconnect_min: float, reconnect_max: float) -> None:
        import trio

        self.port = port
        self.name = name
        self._factory = serial_factory
        self._serial: serial.SerialBase | None = None
        self._lock = trio.Lock()
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.last_error: HardwareError | None = None
        self._state: str | None = None

    @property
    def serial(self) -> serial.SerialBase | None:
        """The open pyserial object (None while closed): tests flip ``loop://`` lines on it."""
        return self._serial

    def _settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _open_sync(self) -> serial.SerialBase:
        factory = self._factory or _serial_factory()
        try:
            return factory(self.port, **self._settings())
        except Exception as exc:  # pyserial raises SerialException, OSError, ValueError, termios.error
            raise _open_error(self.port, exc) from exc

    async def _port(self) -> serial.SerialBase:
        import trio

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

    async def run(self, on_reading: Callable[[Any], Any], *, interval: float,
                  task_status: Any = None) -> None:
        """Poll every ``interval`` seconds and hand each reading to ``on_reading`` (sync or
        async). Failures are logged once per change and never reach ``on_reading``: the
        monitor's staleness reports the silence. A missing port is retried with
        exponential backoff from ``reconnect_min`` to ``reconnect_max``."""
        import trio

        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        if task_status is not None:
            task_status.started()
        backoff = self.reconnect_min
        next_at = trio.current_time()
        try:
            while True:
                try:
                    reading = await self.poll()
                except PortMissing as exc:
                    self._note(exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.reconnect_max)
                    next_at = trio.current_time()
                    continue
                except HardwareError as exc:
                    self._note(exc)
                else:
                    backoff = self.reconnect_min
                    self._note(None)
                    result = on_reading(reading)
                    if inspect.isawaitable(result):
                        await result
                next_at = max(next_at + interval, trio.current_time())
                await trio.sleep_until(next_at)
        finally:
            self.close()


def _io_errors() -> tuple[type[BaseException], ...]:
    """What a pyserial call raises when the device goes away: SerialException, OSError,
    and termios.error (not an OSError) from tcflush/tcsetattr on a hung-up tty."""
    import serial as pyserial

    try:
        import termios
    except ImportError:  # not POSIX
        return (pyserial.SerialException, OSError)
    return (pyserial.SerialException, OSError, termios.error)


def _read_some(port: serial.SerialBase) -> bytes:
    """One short blocking read: what is waiting, or one byte within READ_SLICE_S."""
    waiting = port.in_waiting
    return bytes(port.read(waiting if waiting else 1))


def _send(port: serial.SerialBase, frame: bytes) -> None:
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
                 serial_factory: SerialFactory | None = None,
                 reconnect_min: float = 0.5, reconnect_max: float = 30.0) -> None:
        super().__init__(port, name=name, serial_factory=serial_factory,
                         reconnect_min=reconnect_min, reconnect_max=reconnect_max)
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
        import serial as pyserial
        import trio

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
            except pyserial.SerialTimeoutException as exc:
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


DoorLine = Literal["cts", "dsr", "cd", "ri"]
OpenWhen = Literal["asserted", "deasserted"]


class DoorContact(_SerialDriver):
    """A door/tamper contact on a modem-status input (CTS, DSR, CD or RI).

    ``open_when`` says which line state means open: ``"deasserted"`` (default,
    fail-safe: a cut wire reads as open) or ``"asserted"``. The line is polled (one ioctl per poll); pyserial
    raises RTS and DTR on open, which can power the contact (module doc)."""

    kind = KIND_DOOR

    def __init__(self, port: str, *, line: DoorLine = "cts", open_when: OpenWhen = "deasserted",
                 name: str = "enclosure", serial_factory: SerialFactory | None = None,
                 reconnect_min: float = 0.5, reconnect_max: float = 30.0) -> None:
        super().__init__(port, name=name, serial_factory=serial_factory,
                         reconnect_min=reconnect_min, reconnect_max=reconnect_max)
        if line not in ("cts", "dsr", "cd", "ri"):
            raise ValueError(f"door line must be cts, dsr, cd or ri, got {line!r}")
        if open_when not in ("asserted", "deasserted"):
            raise ValueError(f"door open_when must be 'asserted' or 'deasserted', got {open_when!r}")
        self.line, self.open_when = line, open_when

    def _settings(self) -> dict[str, Any]:
        if self.port.startswith("rfc2217://"):
            # A contact behind a terminal server (RFC 2217: modem-line changes arrive as
            # NOTIFY-MODEMSTATE); pyserial's client has no write timeout, and the door
            # writes nothing anyway.
            return {"timeout": READ_SLICE_S}
        return {"timeout": READ_SLICE_S, "write_timeout": WRITE_TIMEOUT_S, "exclusive": True}

    def interpret(self, asserted: bool) -> DoorReading:
        return DoorReading(open=asserted == (self.open_when == "asserted"), line=self.line, asserted=asserted)

    async def poll(self) -> DoorReading:
        import trio

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


# --- simulator -------------------------------------------------------------------------


class EnclosureSimulator:
    """A Modbus RTU temperature/humidity sensor on the master side of a pty.

    Give :attr:`path` to the driver. Script it from tests or the lab: :meth:`set`
    (temperature, humidity), and the fault switches :attr:`silent`, :attr:`garbage`
    (answers line noise), :attr:`bad_crc`, :attr:`exception_code` (answers that Modbus
    exception), :attr:`answer_as_unit` (answers as another unit address). It serves
    from a daemon thread; :meth:`close` stops it and removes the pty (the driver then
    sees its port vanish)."""

    def __init__(self, register_map: RegisterMap = DEFAULT_MAP, *, celsius: float = 23.5,
                 percent: float | None = 41.0) -> None:
        import tty

        self.register_map = register_map
        self._lock = threading.Lock()
        self._values = register_map.encode(celsius, percent)
        self.silent = False
        self.garbage = False
        self.bad_crc = False
        self.exception_code: int | None = None
        self.answer_as_unit: int | None = None
        self.requests = 0          # CRC-correct requests addressed to our unit
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)    # no echo, no line discipline before the driver opens it
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, *, celsius: float | None = None, percent: float | None = None) -> None:
        with self._lock:
            if celsius is not None:
                self._values.update({self.register_map.temperature.address:
                                     self.register_map.temperature.encode(celsius)})
            if percent is not None and self.register_map.humidity is not None:
                self._values.update({self.register_map.humidity.address:
                                     self.register_map.humidity.encode(percent)})

    def set_raw(self, address: int, raw: int) -> None:
        """Put any 16-bit value in a register (to test decoding of odd values)."""
        with self._lock:
            self._values[address] = raw & 0xFFFF

    def answer(self, request: Request) -> bytes | None:
        """The bytes this sensor sends for a request (None: stays silent). Sans-IO."""
        m = self.register_map
        if request.unit != m.unit:  # RTU: only the addressed slave answers; 0 is broadcast
            return None
        self.requests += 1
        if self.silent:
            return None
        if self.garbage:
            return bytes((0xFF, 0x00, 0x55, 0xAA, 0x13, 0x37, 0x42))
        unit = self.answer_as_unit if self.answer_as_unit is not None else m.unit
        if self.exception_code is not None:
            return exception_response(unit, request.function, self.exception_code)
        if request.function not in _FUNCTION_NAMES:
            return exception_response(unit, request.function, 1)
        first, count = m.span()
        if request.function != m.function or request.count < 1 or request.count > MAX_READ_COUNT:
            return exception_response(unit, request.function, 2 if request.function != m.function else 3)
        if request.address < first or request.address + request.count > first + count:
            return exception_response(unit, request.function, 2)
        with self._lock:
            values = [self._values.get(request.address + i, 0) for i in range(request.count)]
        frame = registers_response(unit, request.function, values)
        if self.bad_crc:
            frame = frame[:-1] + bytes((frame[-1] ^ 0xFF,))
        return frame

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"enclosure-sim {self.path}", daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        import select

        parser = RtuRequestParser()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                parser.receive_data(os.read(self._master, 256))
            except OSError:
                return
            while (request := parser.next_request()) is not NEED_DATA:
                assert isinstance(request, Request)
                reply = self.answer(request)
                if reply:
                    try:
                        os.write(self._master, reply)
                    except OSError:
                        return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


Simulator = EnclosureSimulator


def start_simulator(register_map: RegisterMap = DEFAULT_MAP) -> EnclosureSimulator:
    """A running Modbus sensor simulator on a new pty (``.path``); ``close()`` stops it."""
    return EnclosureSimulator(register_map).start()


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
