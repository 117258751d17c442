"""The Megatec/Q1 codec (sans-IO): :func:`request`, :class:`LineFramer` (CR-terminated
lines), :func:`parse_q1`, :func:`parse_ratings`, :func:`parse_info` (one line → a value or
:class:`~hardware.errors.DeviceGarbage`, never anything else) and :func:`format_q1` & co.
(the device's side, for the simulator and the tests).

The Megatec/Q1 protocol, as NUT speaks it
-----------------------------------------
Sources: ``networkupstools/nut-website`` protocols/megatec.txt (the protocol document, v2.7);
``networkupstools/nut`` drivers/nutdrv_qx_megatec.c (the field offsets), drivers/
nutdrv_qx_blazer-common.c (``blazer_process_status_bits``) and drivers/blazer.c (the older
driver: status parsing, ``runtimecal``).

``Q1\\r`` → ``(MMM.M NNN.N PPP.P QQQ RR.R S.SS TT.T b7b6b5b4b3b2b1b0\\r`` (47 bytes with the CR;
NUT's offsets 1–5, 7–11, 13–17, 19–21, 23–26, 28–31, 33–36, bits 38–45): input voltage, input
fault voltage (the lowest voltage of a glitch since the last query), output voltage, output
current in % of the maximum (NUT's ``ups.load``), input frequency, battery voltage (per cell
``S.SS`` on online units, the whole battery ``SS.S`` on standby units), temperature °C. A field
the UPS does not support is filled with ``@`` (we read it as None). The status bits are ASCII
``0``/``1``, b7 first; what NUT makes of each (``blazer_process_status_bits``):

====  ===============================  ==============================================
bit   megatec.txt                      NUT
====  ===============================  ==============================================
b7    Utility Fail (Immediate)         ``OB`` (else ``OL``)
b6    Battery Low                      ``LB``
b5    Bypass/Boost or Buck Active      ``TRIM`` if out < 0.95·in, ``BYPASS`` if < 1.05·in,
                                       ``BOOST`` if < 1.5·in, else nothing
b4    UPS Failed                       ``ups.alarm`` "UPS selftest failed!"
b3    UPS Type is Standby (0 online)   ``ups.type`` "offline / line interactive" / "online"
b2    Test in Progress                 ``CAL``
b1    Shutdown Active                  ``FSD`` (+ alarm "Shutdown imminent!")
b0    Beeper On                        ``ups.beeper.status`` enabled / disabled
====  ===============================  ==============================================

Here a reading's ``status`` is exactly NUT's ``ups.status`` tokens. FSD counts as "OB LB"
(docs/net-protocol.txt: "Finding FSD in a status request should be treated just like a
'OB LB'"): the output is about to go away, whatever the mains does.

``F\\r`` → ``#MMM.M QQQ SS.SS RR.R\\r`` (rating voltage, rating current, nominal battery voltage,
rating frequency). ``I\\r`` → ``#`` + manufacturer (15) + model (10) + firmware (10),
space-separated and space-padded. A command the UPS does not know is echoed back; both
queries are optional (NUT's ``norating``/``novendor``), so the driver reads them best-effort.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from hardware.errors import DeviceGarbage


MAX_LINE = 128  # a Q1 answer is 46 bytes; longer runs without a CR are line noise


# ================================================================== protocol core


def request(command: str) -> bytes:
    """The bytes of one command: ``request("Q1") == b"Q1\\r"``."""
    return command.encode("ascii") + b"\r"


class LineFramer:
    """CR-terminated lines out of a byte stream, in any split.

    A leading LF (from devices that end lines with CR LF) is dropped. A run of more than
    ``max_line`` bytes without a CR is line noise: it is dropped up to the next CR and counted
    in ``dropped``, so the next good frame is found again.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.dropped = 0
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\r")
            if end < 0:
                break
            line = bytes(self._buf[:end]).lstrip(b"\n")
            del self._buf[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_line:
                self.dropped += 1
                continue
            lines.append(line)
        if len(self._buf) > self.max_line:
            if not self._discarding:
                self.dropped += 1
            self._discarding = True
            self._buf.clear()
        return lines

    def clear(self) -> None:
        self._buf.clear()
        self._discarding = False


def _text(line: bytes, what: str) -> str:
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise DeviceGarbage(f"{what}: answer is not ASCII: {line[:60]!r}") from None
    if not text.isprintable():
        raise DeviceGarbage(f"{what}: answer has control characters: {line[:60]!r}")
    return text


_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


def _placeholder(token: str) -> bool:
    """'@' fills an unsupported field (megatec.txt); some firmwares send '---.-' instead."""
    chars = set(token)
    return bool(chars) and ((chars <= {"@", "."} and "@" in chars) or (chars <= {"-", "."} and "-" in chars))


def _number(token: str, what: str) -> float | None:
    if _placeholder(token):
        return None
    if not _NUMBER.fullmatch(token):
        raise DeviceGarbage(f"{what}: {token!r} is not a number")
    value = float(token)
    if not math.isfinite(value):  # pragma: no cover - the regex admits no inf/nan
        raise DeviceGarbage(f"{what}: {token!r} is not a number")
    return value


def _echoed(text: str, command: str, what: str) -> None:
    if text == command:
        raise DeviceGarbage(f"{what}: the UPS does not know {command!r} (echoed it back)")


Q1_FIELDS = ("input_v", "input_fault_v", "output_v", "load_percent", "frequency_hz", "battery_v",
             "temperature_c")
Q1_BITS = ("utility_fail", "battery_low", "bypass_active", "ups_failed", "standby_type",
           "test_in_progress", "shutdown_active", "beeper_on")  # b7 .. b0, in frame order


@dataclass(frozen=True)
class Q1Status:
    """One ``Q1`` answer, field by field (None: the UPS filled the field with ``@``)."""

    input_v: float | None = None
    input_fault_v: float | None = None
    output_v: float | None = None
    load_percent: float | None = None
    frequency_hz: float | None = None
    battery_v: float | None = None
    temperature_c: float | None = None
    utility_fail: bool = False      # b7
    battery_low: bool = False       # b6
    bypass_active: bool = False     # b5: bypass, boost or buck
    ups_failed: bool = False        # b4
    standby_type: bool = False      # b3: 1 = standby / line-interactive, 0 = online
    test_in_progress: bool = False  # b2
    shutdown_active: bool = False   # b1
    beeper_on: bool = False         # b0

    @property
    def bits(self) -> str:
        return "".join("1" if getattr(self, name) else "0" for name in Q1_BITS)

    def nut_status(self) -> tuple[str, ...]:
        """NUT's ``ups.status`` tokens for these bits (blazer_process_status_bits)."""
        tokens = ["OB" if self.utility_fail else "OL"]
        if self.battery_low:
            tokens.append("LB")
        if self.bypass_active and self.input_v is not None and self.output_v is not None:
            vi, vo = self.input_v, self.output_v
            if vo < 0.5 * vi:
                pass  # "output voltage too low": NUT sets nothing
            elif vo < 0.95 * vi:
                tokens.append("TRIM")
            elif vo < 1.05 * vi:
                tokens.append("BYPASS")
            elif vo < 1.5 * vi:
                tokens.append("BOOST")
        if self.test_in_progress:
            tokens.append("CAL")
        if self.shutdown_active:
            tokens.append("FSD")
        return tuple(tokens)


def parse_q1(line: bytes) -> Q1Status:
    """One ``Q1`` answer (with or without its CR) → :class:`Q1Status`, or DeviceGarbage."""
    text = _text(line, "Q1")
    _echoed(text, "Q1", "Q1")
    if not text.startswith("("):
        raise DeviceGarbage(f"Q1: answer does not start with '(': {text[:60]!r}")
    tokens = text[1:].split()
    if len(tokens) != 8:
        raise DeviceGarbage(f"Q1: {len(tokens)} fields instead of 8: {text[:60]!r}")
    values = {name: _number(tok, f"Q1 {name}") for name, tok in zip(Q1_FIELDS, tokens)}
    bits = tokens[7]
    if len(bits) != 8 or set(bits) - {"0", "1"}:
        raise DeviceGarbage(f"Q1: status bits {bits[:20]!r} are not eight 0/1")
    flags = {name: bit == "1" for name, bit in zip(Q1_BITS, bits)}
    fields: dict[str, Any] = {**values, **flags}
    return Q1Status(**fields)


def _fmt(value: float | None, spec: str, width: int) -> str:
    return "@" * width if value is None else format(value, spec)


def format_q1(s: Q1Status) -> bytes:
    """The device's side of ``Q1``: a 47-byte frame as megatec.txt shows it."""
    if s.battery_v is None or s.battery_v < 10:
        battery = _fmt(s.battery_v, "4.2f", 4)
    else:
        battery = _fmt(s.battery_v, "04.1f", 4)
    return (f"({_fmt(s.input_v, '05.1f', 5)} {_fmt(s.input_fault_v, '05.1f', 5)} "
            f"{_fmt(s.output_v, '05.1f', 5)} {_fmt(s.load_percent, '03.0f', 3)} "
            f"{_fmt(s.frequency_hz, '04.1f', 4)} {battery} {_fmt(s.temperature_c, '04.1f', 4)} "
            f"{s.bits}\r").encode("ascii")


@dataclass(frozen=True)
class Q1Ratings:
    """``F``: the UPS's ratings (NUT ``input.voltage.nominal``, ``input.current.nominal``,
    ``battery.voltage.nominal``, ``input.frequency.nominal``)."""

    voltage: float | None
    current: float | None
    battery_v: float | None
    frequency_hz: float | None


def parse_ratings(line: bytes) -> Q1Ratings:
    text = _text(line, "F")
    _echoed(text, "F", "F")
    if not text.startswith("#"):
        raise DeviceGarbage(f"F: answer does not start with '#': {text[:60]!r}")
    tokens = text[1:].split()
    if len(tokens) != 4:
        raise DeviceGarbage(f"F: {len(tokens)} fields instead of 4: {text[:60]!r}")
    names = ("voltage", "current", "battery_v", "frequency_hz")
    return Q1Ratings(**{n: _number(t, f"F {n}") for n, t in zip(names, tokens)})


def format_ratings(r: Q1Ratings) -> bytes:
    return (f"#{_fmt(r.voltage, '05.1f', 5)} {_fmt(r.current, '03.0f', 3)} "
            f"{_fmt(r.battery_v, '05.1f', 5)} {_fmt(r.frequency_hz, '04.1f', 4)}\r").encode("ascii")


@dataclass(frozen=True)
class Q1Info:
    """``I``: manufacturer (15 characters), model (10), firmware (10), blanks trimmed."""

    manufacturer: str
    model: str
    firmware: str


def parse_info(line: bytes) -> Q1Info:
    text = _text(line, "I")
    _echoed(text, "I", "I")
    if not text.startswith("#"):
        raise DeviceGarbage(f"I: answer does not start with '#': {text[:60]!r}")
    body = text[1:]
    if not body.strip():
        raise DeviceGarbage("I: empty answer")
    # blazer_vendor: fixed columns 1-15, 17-26, 28-37 of the line.
    return Q1Info(body[0:15].strip(), body[16:26].strip(), body[27:37].strip())


def format_info(info: Q1Info) -> bytes:
    return (f"#{info.manufacturer:<15.15} {info.model:<10.10} {info.firmware:<10.10}\r"
            ).encode("ascii")
