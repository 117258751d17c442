"""The UPS: Megatec/Q1 over a serial line, or NUT's ``upsd`` over TCP.

Parts (issue 8, /work/spec/issue8.md):

1. **Protocol core** (sans-IO): :class:`LineFramer` cuts the byte stream into CR-terminated
   lines; :func:`parse_q1`, :func:`parse_ratings`, :func:`parse_info` turn one line into a
   value or raise :class:`~hardware.errors.DeviceGarbage` (never anything else);
   :func:`format_q1` & co. build the device's side for the simulator and the tests.
2. **Drivers** (trio): :class:`UpsSerial` over pyserial (``serial.serial_for_url``; 2400 8N1),
   :class:`NutUps` over a :class:`NutClient` connection to ``upsd``. Both have
   ``poll() -> UpsReading`` and ``run(on_reading, interval=...)``, which reconnects with
   exponential backoff and logs one line per state change.
3. **Simulators**: :class:`Simulator` answers Q1/F/I on the master side of a pty;
   :class:`FakeUpsd` is a tiny read-only ``upsd`` for tests and the lab.
4. **Monitor** (sans-IO): :class:`UpsMonitor` turns readings into events.

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

Battery runtime
---------------
Q1 has no charge and no runtime field. With a ``runtimecal`` (four numbers: runtime at a
high load, that load in %, runtime at a low load, that load) :class:`RuntimeEstimator` does
exactly what NUT's blazer.c does: the load exponent ``log(rl/rh)/log(lh/ll)``, the nominal
runtime at 100 % load ``rh·(lh/100)^exp``; the initial charge from the battery voltage
(``battery.voltage.nominal`` from ``F`` or the config, the number of battery packs detected as
in ``blazer_packs``, empty at the nominal voltage, full at 1.15 × nominal); then on line the
estimate recharges linearly over ``chargetime`` (default 43 200 s) and on battery it drains by
``max((load/100)^exp, idleload)`` per second; ``runtime = estimate / effective load``. Without
a calibration (or without a nominal battery voltage) ``runtime_s`` is None. Through ``upsd``
``runtime_s`` is ``battery.runtime`` as the NUT driver reports it.

NUT's upsd (docs/net-protocol.txt)
----------------------------------
TCP 3493, one request per line; ``LIST VAR <ups>`` → ``BEGIN LIST VAR <ups>``, ``VAR <ups>
<name> "<value>"`` lines, ``END LIST VAR <ups>``; ``GET VAR <ups> <name>`` → one ``VAR`` line;
errors ``ERR <CODE>``. ``ERR DATA-STALE`` / ``ERR DRIVER-NOT-CONNECTED`` mean upsd's driver lost
the UPS: we report :class:`DeviceTimeout`, so the monitor goes stale instead of trusting an
old value. A ``ups.status`` with neither ``OL``, ``OB`` nor ``FSD`` is garbage for the same
reason. Operator ports: ``nut://HOST[:PORT]/UPSNAME``.

The serial driver and the simulators import pyserial and trio only inside the functions that
need them, so the protocol core and the monitor import neither.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import inspect
import math
import os
import random
import re
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from daemon.core.log import get_logger
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError, PortMissing

if TYPE_CHECKING:  # pragma: no cover
    import trio

log = get_logger("ups")

KIND = "ups"
DEFAULT_BAUDRATE = 2400
NUT_PORT = 3493
MAX_LINE = 128  # a Q1 answer is 46 bytes; longer runs without a CR are line noise

Emit = tuple[str, dict[str, Any]]


class _Ignored:
    """``task_status`` when nobody started us with ``nursery.start`` (trio's own sentinel
    would need trio at import time)."""

    def started(self, value: Any = None) -> None:
        pass


_IGNORED = _Ignored()


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
    return Q1Status(**values, **flags)


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


# ------------------------------------------------------------------ readings


@dataclass(frozen=True)
class UpsReading:
    """One reading, from Q1 or from upsd. ``status`` holds NUT's ``ups.status`` tokens."""

    source: str  # "q1" | "nut"
    status: tuple[str, ...]
    input_v: float | None = None
    input_fault_v: float | None = None
    output_v: float | None = None
    load_percent: float | None = None
    frequency_hz: float | None = None
    battery_v: float | None = None  # as the UPS reports it (per cell on online Q1 units)
    temperature_c: float | None = None
    battery_charge: float | None = None  # %
    runtime_s: float | None = None
    alarm: str | None = None
    ups_type: str | None = None
    beeper: bool | None = None

    @property
    def on_battery(self) -> bool:
        return "OB" in self.status or "FSD" in self.status

    @property
    def battery_low(self) -> bool:
        return "LB" in self.status or "FSD" in self.status

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = list(self.status)
        data["on_battery"] = self.on_battery
        data["battery_low"] = self.battery_low
        return data


def reading_from_q1(q: Q1Status, *, battery_charge: float | None = None,
                    runtime_s: float | None = None) -> UpsReading:
    alarms = []
    if q.ups_failed:
        alarms.append("UPS selftest failed!")
    if q.shutdown_active:
        alarms.append("Shutdown imminent!")
    return UpsReading(
        source="q1", status=q.nut_status(), input_v=q.input_v, input_fault_v=q.input_fault_v,
        output_v=q.output_v, load_percent=q.load_percent, frequency_hz=q.frequency_hz,
        battery_v=q.battery_v, temperature_c=q.temperature_c, battery_charge=battery_charge,
        runtime_s=runtime_s, alarm=" ".join(alarms) or None,
        ups_type="offline / line interactive" if q.standby_type else "online", beeper=q.beeper_on)


def parse_nut_status(value: str | None) -> tuple[str, ...]:
    """upsd's ``ups.status`` → its tokens; a status that says neither OL, OB nor FSD (absent,
    empty, ``WAIT``, ``OFF`` alone) cannot tell whether we run on mains: DeviceGarbage."""
    if value is None:
        raise DeviceGarbage("upsd: no ups.status")
    tokens = tuple(value.upper().split())
    if not {"OL", "OB", "FSD"} & set(tokens):
        raise DeviceGarbage(f"upsd: ups.status {value[:60]!r} says neither OL nor OB")
    return tokens


def _nut_float(variables: dict[str, str], name: str) -> float | None:
    raw = variables.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def reading_from_nut(variables: dict[str, str]) -> UpsReading:
    """``LIST VAR`` (name → value) → :class:`UpsReading`; DeviceGarbage without a usable
    ``ups.status``. Numeric variables that do not parse are left out (None)."""
    beeper = variables.get("ups.beeper.status")
    return UpsReading(
        source="nut", status=parse_nut_status(variables.get("ups.status")),
        input_v=_nut_float(variables, "input.voltage"),
        input_fault_v=_nut_float(variables, "input.voltage.fault"),
        output_v=_nut_float(variables, "output.voltage"),
        load_percent=_nut_float(variables, "ups.load"),
        frequency_hz=_nut_float(variables, "input.frequency"),
        battery_v=_nut_float(variables, "battery.voltage"),
        temperature_c=_nut_float(variables, "ups.temperature"),
        battery_charge=_nut_float(variables, "battery.charge"),
        runtime_s=_nut_float(variables, "battery.runtime"),
        alarm=variables.get("ups.alarm") or None, ups_type=variables.get("ups.type"),
        beeper=None if beeper is None else beeper == "enabled")


# ------------------------------------------------------------------ NUT line protocol


def split_nut_line(line: str) -> list[str]:
    """One upsd line → its words: blanks separate, ``"..."`` groups, ``\\`` escapes (the
    parseconf rules net-protocol.txt names). An open quote is DeviceGarbage."""
    words: list[str] = []
    current: list[str] = []
    in_word = quoted = escaped = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = in_word = True
        elif ch == '"':
            quoted = not quoted
            in_word = True
        elif ch in " \t" and not quoted:
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(ch)
            in_word = True
    if quoted or escaped:
        raise DeviceGarbage(f"upsd: unterminated quote in {line[:60]!r}")
    if in_word:
        words.append("".join(current))
    return words


def quote_nut(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NutError(HardwareError):
    """upsd answered ``ERR <code>`` (one the monitor cannot treat as a silent device)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


_NUT_STALE = {"DATA-STALE", "DRIVER-NOT-CONNECTED"}


def nut_error(code: str, where: str) -> HardwareError:
    if code in _NUT_STALE:
        return DeviceTimeout(f"{where}: upsd says {code} (its driver lost the UPS)")
    hint = {"UNKNOWN-UPS": " (check the UPS name in the port URL)",
            "ACCESS-DENIED": " (check upsd.conf LISTEN and the allowed hosts)"}.get(code, "")
    return NutError(f"{where}: upsd says {code}{hint}", code)


def parse_nut_var(words: list[str], ups: str, where: str) -> tuple[str, str]:
    """``VAR <ups> <name> <value>`` words → (name, value)."""
    if words and words[0] == "ERR":
        raise nut_error(words[1] if len(words) > 1 else "?", where)
    if len(words) != 4 or words[0] != "VAR" or words[1] != ups:
        raise DeviceGarbage(f"{where}: unexpected line {' '.join(words)[:60]!r}")
    return words[2], words[3]


def parse_nut_url(port: str) -> tuple[str, int, str]:
    """``nut://HOST[:PORT]/UPSNAME`` → (host, port, ups)."""
    parts = urlsplit(port)
    ups = parts.path.strip("/")
    try:
        tcp_port = parts.port or NUT_PORT
    except ValueError:
        raise HardwareError(f"{port}: bad port number (expected nut://HOST:PORT/UPSNAME)") from None
    if parts.scheme != "nut" or not parts.hostname or not ups or "/" in ups:
        raise HardwareError(f"{port}: expected nut://HOST[:PORT]/UPSNAME")
    return parts.hostname, tcp_port, ups


# ------------------------------------------------------------------ runtime estimate


@dataclass(frozen=True)
class RuntimeCalibration:
    """NUT's ``runtimecal = runtime_high,load_high,runtime_low,load_low``: the battery
    runtime (seconds) at two loads (%), e.g. ``300,100,900,50`` (blazer.c)."""

    runtime_high_s: float
    load_high: float
    runtime_low_s: float
    load_low: float

    def __post_init__(self) -> None:
        if self.runtime_high_s <= 0 or self.runtime_low_s < self.runtime_high_s:
            raise ValueError("runtimecal: need 0 < runtime at the high load <= runtime at the low load")
        if not 0 < self.load_low < self.load_high <= 100:
            raise ValueError("runtimecal: need 0 < low load < high load <= 100")

    @classmethod
    def parse(cls, text: str) -> RuntimeCalibration:
        try:
            rh, lh, rl, ll = (float(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"runtimecal {text!r}: expected four numbers "
                             "runtime_high,load_high,runtime_low,load_low") from None
        return cls(rh, lh, rl, ll)

    @property
    def exponent(self) -> float:
        return math.log(self.runtime_low_s / self.runtime_high_s) / math.log(self.load_high / self.load_low)

    @property
    def nominal_s(self) -> float:
        """Runtime of a full battery at 100 % load."""
        return self.runtime_high_s * (self.load_high / 100) ** self.exponent


_PACKS = (120, 100, 80, 60, 48, 36, 30, 24, 18, 12, 8, 6, 4, 3, 2, 1, 0.5)


def battery_packs(nominal_v: float, actual_v: float) -> float | None:
    """blazer_packs: the multiplier that puts the reported battery voltage within ±20 % of
    the nominal one (per-cell reports on online units), or None when none does."""
    for packs in _PACKS:
        if packs * actual_v > 1.2 * nominal_v:
            continue
        if packs * actual_v < 0.8 * nominal_v:
            return None
        return float(packs)
    return None


class RuntimeEstimator:
    """NUT blazer.c's ``runtimecal`` estimate, sans-IO (``now`` in seconds, monotonic)."""

    def __init__(self, calibration: RuntimeCalibration, *, battery_v_nominal: float | None = None,
                 battery_packs: float | None = None, battery_v_low: float | None = None,
                 battery_v_high: float | None = None, charge_time_s: float = 43200.0,
                 idle_load: float = 0.1) -> None:
        if charge_time_s <= 0:
            raise ValueError("chargetime must be positive")
        if not 0 <= idle_load <= 1:
            raise ValueError("idleload must be within 0..1 (a fraction of full load)")
        self.calibration = calibration
        self.battery_v_nominal = battery_v_nominal
        self.packs = battery_packs
        self.battery_v_low = battery_v_low
        self.battery_v_high = battery_v_high
        self.charge_time_s = charge_time_s
        self.idle_load = idle_load
        self.estimate_s: float | None = None  # remaining runtime at 100 % load
        self._last: float | None = None

    def _initial_charge(self, battery_v: float | None) -> float | None:
        nominal = self.battery_v_nominal
        if battery_v is None or nominal is None or nominal <= 0:
            return None
        if self.packs is None:
            self.packs = battery_packs(nominal, battery_v) or 1.0
        actual = self.packs * battery_v
        low = self.battery_v_low if self.battery_v_low is not None else nominal
        high = self.battery_v_high if self.battery_v_high is not None else 1.15 * nominal
        if high <= low:
            return None
        return min(100.0, max(0.0, 100 * (actual - low) / (high - low)))

    def effective_load(self, load_percent: float | None) -> float:
        if load_percent is None:
            return 1.0  # blazer.c starts from full load: the pessimistic guess
        return max((max(load_percent, 0.0) / 100) ** self.calibration.exponent, self.idle_load)

    def update(self, q: Q1Status, now: float) -> tuple[float | None, float | None]:
        """One Q1 answer at ``now`` → (battery charge %, runtime seconds), None until the
        charge could be anchored on a battery voltage and its nominal value."""
        nominal_s = self.calibration.nominal_s
        load = self.effective_load(q.load_percent)
        if self.estimate_s is None:
            charge = self._initial_charge(q.battery_v)
            if charge is None:
                return None, None
            self.estimate_s = nominal_s * charge / 100
        else:
            dt = max(0.0, now - (self._last if self._last is not None else now))
            if q.utility_fail:
                self.estimate_s = max(0.0, self.estimate_s - load * dt)
            else:
                self.estimate_s = min(nominal_s, self.estimate_s + nominal_s * dt / self.charge_time_s)
        self._last = now
        return 100 * self.estimate_s / nominal_s, self.estimate_s / load


# ------------------------------------------------------------------ monitor


class UpsMonitor:
    """Readings → events, sans-IO (``now`` in seconds from any monotonic clock).

    * ``UpsOnBattery`` when a reading says OB (or FSD) after OL or as the first reading;
      ``UpsOnline`` on the way back. The last known state survives a stale spell, so a
      change that happened while the device was silent is still reported once.
    * ``UpsBatteryLow`` once when LB (or FSD) rises; armed again only after a reading on
      line without LB, so a flapping LB near the threshold does not repeat it.
    * ``UpsRuntimeBelow`` once when, on battery, ``runtime_s`` drops below
      ``runtime_threshold_s``; armed again when it rises to ``threshold + runtime_hysteresis_s``
      or the UPS is back on line. On line the runtime is an estimate for a future outage
      and raises nothing (hand-over decisions belong to an actual outage).
    * ``DeviceStale`` once when nothing was read for ``stale_after`` seconds (counted from the
      first call when there has never been a reading); the next reading → ``DeviceRecovered``.
    """

    kind = KIND

    def __init__(self, device: str, *, runtime_threshold_s: float | None = None,
                 runtime_hysteresis_s: float = 60.0, stale_after: float = 30.0) -> None:
        if stale_after <= 0:
            raise ValueError("stale_after must be positive")
        if runtime_hysteresis_s < 0:
            raise ValueError("runtime_hysteresis_s must not be negative")
        self.device = device
        self.runtime_threshold_s = runtime_threshold_s
        self.runtime_hysteresis_s = runtime_hysteresis_s
        self.stale_after = stale_after
        self.last: UpsReading | None = None
        self.last_at: float | None = None
        self.stale = False
        self._since: float | None = None
        self._on_battery: bool | None = None
        self._low_armed = True
        self._runtime_armed = True

    def _start(self, now: float) -> None:
        if self._since is None:
            self._since = now

    def reading(self, r: UpsReading, now: float) -> list[Emit]:
        self._start(now)
        out: list[Emit] = []
        if self.stale:
            self.stale = False
            out.append(("DeviceRecovered", {"device": self.device, "kind": self.kind}))
        self.last, self.last_at = r, now
        on_battery = r.on_battery
        if on_battery and self._on_battery is not True:
            out.append(("UpsOnBattery", {"device": self.device, "runtime_s": r.runtime_s}))
        elif not on_battery and self._on_battery is True:
            out.append(("UpsOnline", {"device": self.device}))
        self._on_battery = on_battery
        if r.battery_low:
            if self._low_armed:
                self._low_armed = False
                out.append(("UpsBatteryLow", {"device": self.device, "battery_v": r.battery_v}))
        elif not on_battery:
            self._low_armed = True
        threshold = self.runtime_threshold_s
        if not on_battery:
            self._runtime_armed = True
        elif threshold is not None and r.runtime_s is not None:
            if self._runtime_armed and r.runtime_s < threshold:
                self._runtime_armed = False
                out.append(("UpsRuntimeBelow", {"device": self.device, "runtime_s": r.runtime_s,
                                                "threshold_s": threshold}))
            elif not self._runtime_armed and r.runtime_s >= threshold + self.runtime_hysteresis_s:
                self._runtime_armed = True
        return out

    def silent_s(self, now: float) -> float:
        self._start(now)
        ref = self.last_at if self.last_at is not None else self._since
        assert ref is not None
        return max(0.0, now - ref)

    def tick(self, now: float) -> list[Emit]:
        silent = self.silent_s(now)
        if not self.stale and silent >= self.stale_after:
            self.stale = True
            return [("DeviceStale", {"device": self.device, "kind": self.kind, "silent_s": silent})]
        return []

    def snapshot(self, now: float) -> dict[str, Any]:
        """For ``lifeline status`` and ``/metrics``: the last reading, never called healthy
        when stale or never read."""
        stale = self.stale or self.silent_s(now) >= self.stale_after
        return {
            "device": self.device, "kind": self.kind, "stale": stale,
            "healthy": self.last is not None and not stale and not self.last.on_battery,
            "silent_s": self.silent_s(now),
            "reading": None if self.last is None else self.last.to_dict(),
        }


# ================================================================== drivers (trio)


def _is_port_error(exc: BaseException) -> bool:
    import termios

    import serial

    return isinstance(exc, (serial.SerialException, OSError, termios.error))


class _Driver:
    """The run loop both UPS drivers share: poll every ``interval``, reconnect with
    exponential backoff when the port or the connection goes away."""

    name: str
    backoff_initial: float
    backoff_max: float
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

    async def run(self, on_reading: Callable[[UpsReading], Any], *, interval: float,
                  task_status: Any = _IGNORED) -> None:
        """Poll forever; ``on_reading(reading)`` (sync or async) for each good reading.
        Silence and garbage are logged as state changes and otherwise left to the monitor's
        staleness; a missing port or a lost connection is retried after a backoff."""
        import trio

        if interval <= 0:
            raise ValueError("interval must be positive")
        task_status.started()
        backoff = self.backoff_initial
        try:
            while True:
                started = trio.current_time()
                try:
                    if not self.connected:
                        await self.connect()
                    reading = await self.poll()
                except PortMissing as exc:
                    self.close()
                    self._set_state("missing", exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                except DeviceTimeout as exc:
                    self._set_state("timeout", exc)
                except DeviceGarbage as exc:
                    self._set_state("garbage", exc)
                except HardwareError as exc:
                    self.close()
                    self._set_state("error", exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                else:
                    backoff = self.backoff_initial
                    self._set_state("ok")
                    result = on_reading(reading)
                    if inspect.isawaitable(result):
                        await result
                await trio.sleep_until(started + interval)
        finally:
            self.close()


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
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 identify: bool = True) -> None:
        self.port = port
        self.name = name or port
        self.baudrate = baudrate
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
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
        import serial

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
        import trio

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
        import trio

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
        import trio

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
            import trio

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
        import trio

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
                 timeout: float = 3.0, backoff_initial: float = 0.5, backoff_max: float = 30.0) -> None:
        self.client = NutClient(host, port, timeout=timeout)
        self.ups = ups
        self.name = name or f"nut://{host}:{port}/{ups}"
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max

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


# ================================================================== simulators


@dataclass
class UpsSimState:
    """What the simulated UPS reports. ``runtime_s`` (optional) models the battery: it
    counts down in real time while on battery, sets the battery voltage (2.0–2.27 V per
    cell against ``full_runtime_s``) and raises the battery-low bit at ``low_runtime_s`` —
    as a real UPS does; Q1 itself carries no runtime."""

    on_battery: bool = False
    battery_low: bool = False
    input_v: float = 230.0
    input_fault_v: float = 230.0
    output_v: float = 230.0
    load_percent: float = 20.0
    frequency_hz: float = 50.0
    battery_v: float = 2.27
    temperature_c: float = 30.0
    bypass_active: bool = False
    ups_failed: bool = False
    standby_type: bool = False
    test_in_progress: bool = False
    shutdown_active: bool = False
    beeper_on: bool = True
    runtime_s: float | None = None
    full_runtime_s: float = 1800.0
    low_runtime_s: float = 120.0
    ratings: Q1Ratings | None = field(default_factory=lambda: Q1Ratings(230.0, 0.0, 24.0, 50.0))
    info: Q1Info | None = field(default_factory=lambda: Q1Info("LIFELINE-SIM", "Q1-1000", "1.0"))


SIM_MODES = ("normal", "silent", "garbage")


class Simulator:
    """A Megatec/Q1 UPS on the master side of a pty; give the driver ``path``.

    Script it with :meth:`set` (any :class:`UpsSimState` field, plus ``mode``) or the
    shorthands :meth:`on_battery`, :meth:`online`, :meth:`battery_low`, :meth:`silent`,
    :meth:`garbage`, :meth:`normal`; :meth:`unplug` / :meth:`replug` make the port vanish
    and come back (with ``link``, a symlink that follows the new pty, as udev's
    /dev/serial/by-id links do). Run it with :meth:`start` (a thread) or :meth:`run` (a
    trio task). It answers Q1, F, I; takes Q, T, TL, T<n>, CT, S<n>[R<m>], C silently with
    their effect on the status bits; echoes anything else, as the protocol says.
    """

    kind = KIND

    def __init__(self, *, state: UpsSimState | None = None, link: str | None = None,
                 seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state or UpsSimState()
        self.mode = "normal"
        self.link = link
        self.clock = clock
        self.received: list[bytes] = []
        self._rng = random.Random(seed)
        self._framer = LineFramer()
        self._lock = threading.RLock()
        self._anchor = clock()
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._open_pty()

    # -- the pty

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR→LF, until the driver sets its own modes
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_path = os.ttyname(slave)
        if self.link is not None:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link)

    @property
    def path(self) -> str:
        return self.link if self.link is not None else str(self.slave_path)

    def unplug(self) -> None:
        """The port vanishes: the pty is closed (reads on the driver's side fail) and the
        link, if any, removed."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
            if self.link is not None and os.path.lexists(self.link):
                os.unlink(self.link)
            self._framer.clear()

    def replug(self) -> None:
        """The port comes back on a new pty (``path`` follows when a ``link`` is used)."""
        with self._lock:
            if self._master is None:
                self._open_pty()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.unplug()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scripting

    def remaining_runtime(self) -> float | None:
        with self._lock:
            runtime = self.state.runtime_s
            if runtime is None:
                return None
            if self.state.on_battery:
                runtime -= self.clock() - self._anchor
            return max(0.0, runtime)

    def set(self, **changes: Any) -> None:
        mode = changes.pop("mode", None)
        if mode is not None and mode not in SIM_MODES:
            raise ValueError(f"mode must be one of {', '.join(SIM_MODES)}")
        with self._lock:
            remaining = self.remaining_runtime()
            if remaining is not None and "runtime_s" not in changes:
                changes["runtime_s"] = remaining  # freeze the countdown at the change
            for key, value in changes.items():
                if not hasattr(self.state, key):
                    raise TypeError(f"no such UPS simulator setting: {key}")
                setattr(self.state, key, value)
            self._anchor = self.clock()
            if mode is not None:
                self.mode = mode

    def on_battery(self, runtime_s: float | None = None) -> None:
        changes: dict[str, Any] = {"on_battery": True}
        if runtime_s is not None:
            changes["runtime_s"] = runtime_s
        self.set(**changes)

    def online(self) -> None:
        self.set(on_battery=False, battery_low=False)

    def battery_low(self, low: bool = True) -> None:
        self.set(battery_low=low)

    def silent(self) -> None:
        self.set(mode="silent")

    def garbage(self) -> None:
        self.set(mode="garbage")

    def normal(self) -> None:
        self.set(mode="normal")

    # -- the device's side, sans-IO

    def q1_status(self) -> Q1Status:
        with self._lock:
            s = self.state
            remaining = self.remaining_runtime()
            battery_v = s.battery_v
            low = s.battery_low
            if remaining is not None:
                battery_v = round(2.0 + 0.27 * min(1.0, remaining / s.full_runtime_s), 2)
                low = low or (s.on_battery and remaining <= s.low_runtime_s)
            return Q1Status(
                input_v=0.0 if s.on_battery else s.input_v,
                input_fault_v=0.0 if s.on_battery else s.input_fault_v,
                output_v=s.output_v, load_percent=s.load_percent,
                frequency_hz=0.0 if s.on_battery else s.frequency_hz,
                battery_v=battery_v, temperature_c=s.temperature_c,
                utility_fail=s.on_battery, battery_low=low, bypass_active=s.bypass_active,
                ups_failed=s.ups_failed, standby_type=s.standby_type,
                test_in_progress=s.test_in_progress, shutdown_active=s.shutdown_active,
                beeper_on=s.beeper_on)

    def _garbage(self) -> bytes:
        rng = self._rng
        choice = rng.randrange(3)
        if choice == 0:  # line noise
            noise = bytes(rng.choice(b"\x00\xff()#@Q1 0123456789.\x1b") for _ in range(rng.randrange(1, 40)))
            return noise.replace(b"\r", b"") + b"\r"
        frame = format_q1(self.q1_status())
        if choice == 1:  # a truncated frame
            return frame[: rng.randrange(1, len(frame) - 10)] + b"\r"
        return frame[:-9] + b"0x201100\r"  # bad status bits

    def answer(self, command: bytes) -> bytes:
        """One command line (without its CR) → the bytes the UPS sends back."""
        with self._lock:
            self.received.append(command)
            if self.mode == "silent":
                return b""
            if self.mode == "garbage":
                return self._garbage()
            text = command.decode("ascii", "replace")
            s = self.state
            if text == "Q1":
                return format_q1(self.q1_status())
            if text == "F" and s.ratings is not None:
                return format_ratings(s.ratings)
            if text == "I" and s.info is not None:
                return format_info(s.info)
            if text == "Q":
                s.beeper_on = not s.beeper_on
                return b""
            if re.fullmatch(r"T|TL|T\d\d", text):
                s.test_in_progress = True
                return b""
            if text == "CT":
                s.test_in_progress = False
                return b""
            if re.fullmatch(r"S(\.\d|\d\d)(R\d{4})?", text):
                s.shutdown_active = True
                return b""
            if text == "C":
                s.shutdown_active = False
                return b""
            return command + b"\r"

    def feed(self, data: bytes) -> bytes:
        """Bytes from the host → bytes back (every complete command answered)."""
        with self._lock:
            return b"".join(self.answer(line) for line in self._framer.feed(data))

    # -- running

    def _write(self, fd: int, data: bytes) -> None:
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                select.select([], [fd], [], 0.05)
                continue
            data = data[n:]

    def _service(self) -> bool:
        """Read what is there, answer it; False when there was nothing."""
        with self._lock:
            fd = self._master
            if fd is None:
                return False
            try:
                data = os.read(fd, 1024)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    return False
                raise
            reply = self.feed(data)
            if reply:
                try:
                    self._write(fd, reply)
                except OSError:
                    pass
            return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            fd = self._master
            if fd is None:
                self._stop.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
            except (OSError, ValueError):  # closed under us by unplug()
                continue
            if ready:
                self._service()

    def start(self) -> Simulator:
        """Serve in a daemon thread (until :meth:`close`)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="ups-sim", daemon=True)
            self._thread.start()
        return self

    async def run(self) -> None:
        """Serve as a trio task (until cancelled); do not also :meth:`start` it."""
        import trio

        while True:
            fd = self._master
            if fd is None:
                await trio.sleep(0.02)
                continue
            with trio.move_on_after(0.1):  # re-check: unplug() may swap the fd
                try:
                    await trio.lowlevel.wait_readable(fd)
                except (OSError, trio.ClosedResourceError):
                    await trio.sleep(0.02)
                    continue
            self._service()


def start_simulator() -> Simulator:
    """A new simulated Q1 UPS on a new pty, served from a thread; ``.path`` for the driver."""
    return Simulator().start()


class FakeUpsd:
    """A tiny ``upsd``: the read-only part of the network protocol (``LIST UPS``,
    ``LIST VAR``, ``GET VAR``, ``VER``, ``NETVER``, ``LOGOUT``) for one UPS, scriptable.

    ``variables`` are served as they are; :meth:`set` with ``on_battery=``, ``battery_low=``,
    ``runtime_s=``, ``charge=``, or any NUT variable with ``_`` for ``.`` (``ups_status="WAIT"``);
    ``mode``: ``normal``, ``stale`` (``ERR DATA-STALE``), ``silent`` (reads, never answers),
    ``garbage``. :meth:`serve` runs it in a trio task; :meth:`stop` drops it like a dying upsd.
    """

    kind = KIND

    def __init__(self, ups: str = "ups", variables: dict[str, str] | None = None) -> None:
        self.ups = ups
        self.variables: dict[str, str] = variables if variables is not None else {
            "device.mfr": "LIFELINE", "device.model": "FAKE-UPSD", "ups.status": "OL",
            "battery.charge": "100", "battery.runtime": "1800", "battery.voltage": "27.3",
            "input.voltage": "230.0", "output.voltage": "230.0", "ups.load": "20",
            "input.frequency": "50.0", "ups.temperature": "30.0",
        }
        self.mode = "normal"
        self.port: int | None = None
        self.connections = 0
        self.requests: list[str] = []
        self._scope: Any = None

    def set(self, *, on_battery: bool | None = None, battery_low: bool | None = None,
            runtime_s: float | None = None, charge: float | None = None, mode: str | None = None,
            **variables: str) -> None:
        tokens = self.variables.get("ups.status", "OL").split()
        if on_battery is not None:
            tokens = [t for t in tokens if t not in ("OL", "OB")]
            tokens.insert(0, "OB" if on_battery else "OL")
        if battery_low is not None:
            tokens = [t for t in tokens if t != "LB"] + (["LB"] if battery_low else [])
        self.variables["ups.status"] = " ".join(tokens)
        if runtime_s is not None:
            self.variables["battery.runtime"] = f"{runtime_s:.0f}"
        if charge is not None:
            self.variables["battery.charge"] = f"{charge:.0f}"
        for key, value in variables.items():
            self.variables[key.replace("_", ".")] = value
        if mode is not None:
            if mode not in ("normal", "stale", "silent", "garbage"):
                raise ValueError("mode must be normal, stale, silent or garbage")
            self.mode = mode

    def respond(self, line: str) -> list[str] | None:
        """One request → the answer lines (None: say nothing)."""
        self.requests.append(line)
        if self.mode == "silent":
            return None
        if self.mode == "garbage":
            return ['VAR "unterminated']
        try:
            words = split_nut_line(line)
        except DeviceGarbage:
            return ["ERR INVALID-ARGUMENT"]
        if words == ["VER"]:
            return ["Network UPS Tools upsd 2.8.1 - lifeline fake"]
        if words == ["NETVER"]:
            return ["1.3"]
        if words == ["LIST", "UPS"]:
            return ["BEGIN LIST UPS", f'UPS {self.ups} "lifeline fake UPS"', "END LIST UPS"]
        if len(words) >= 3 and words[0] in ("LIST", "GET") and words[1] == "VAR":
            if words[2] != self.ups:
                return ["ERR UNKNOWN-UPS"]
            if self.mode == "stale":
                return ["ERR DATA-STALE"]
            if words[0] == "LIST" and len(words) == 3:
                return ([f"BEGIN LIST VAR {self.ups}"]
                        + [f"VAR {self.ups} {k} {quote_nut(v)}" for k, v in self.variables.items()]
                        + [f"END LIST VAR {self.ups}"])
            if words[0] == "GET" and len(words) == 4:
                value = self.variables.get(words[3])
                if value is None:
                    return ["ERR VAR-NOT-SUPPORTED"]
                return [f"VAR {self.ups} {words[3]} {quote_nut(value)}"]
        return ["ERR INVALID-ARGUMENT"]

    async def _handle(self, stream: trio.SocketStream) -> None:
        import trio

        self.connections += 1
        buf = bytearray()
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end]).rstrip(b"\r").decode("utf-8", "replace")
                    del buf[: end + 1]
                    if line.strip() == "LOGOUT":
                        await stream.send_all(b"OK Goodbye\n")
                        return
                    answer = self.respond(line)
                    if answer:
                        await stream.send_all("".join(a + "\n" for a in answer).encode("utf-8"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0, task_status: Any = _IGNORED) -> None:
        """Listen (port 0: any free port; ``task_status.started(port)``) until :meth:`stop`
        or cancellation; stopping drops every connection, as a dying upsd does."""
        import trio

        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle, port, host=host))
                self.port = listeners[0].socket.getsockname()[1]
                task_status.started(self.port)
        self._scope = None

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
