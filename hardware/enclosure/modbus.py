"""Modbus RTU, sans-IO (no trio, no serial): CRC-16/MODBUS, :func:`read_request`,
:class:`RtuReadTransaction` (the master's side of one read: request bytes out, answer bytes
in with ``receive_data``; ``next_event`` answers :data:`NEED_DATA`, a :class:`RegistersReply`
or an :class:`ExceptionReply`) and the slave's side for the simulator
(:class:`RtuRequestParser`, :func:`registers_response`, :func:`exception_response`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError


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
