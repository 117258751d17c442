"""The enclosure simulator (the lab's, never the daemon's): :class:`EnclosureSimulator`, a
Modbus RTU temperature/humidity sensor on the master side of a pty. ptys have no modem lines,
so the door is simulated with ``loop://`` instead.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from typing import Self

from hardware.enclosure.modbus import (
    _FUNCTION_NAMES,
    MAX_READ_COUNT,
    NEED_DATA,
    Request,
    RtuRequestParser,
    exception_response,
    registers_response,
)
from hardware.enclosure.registers import DEFAULT_MAP, RegisterMap


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
