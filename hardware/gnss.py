"""The GNSS time receiver: is it locked, how many satellites, does its UTC agree with ours.

A GNSS receiver on a serial line talks on its own, once a second, in NMEA 0183 (no
requests). This module reads that stream (or a running ``gpsd``'s JSON instead) and turns
it into readings and events:

* **protocol core (sans-IO)**: :class:`NmeaParser` frames sentences out of a byte stream
  (partial lines, line noise, truncated and overlong lines), verifies the ``*HH`` checksum
  (XOR of every byte between ``$`` and ``*``; a bad or missing one drops the sentence and
  is counted) and decodes ``$GPRMC``/``$GNRMC`` (status A/V, UTC date and time),
  ``$GPGGA``/``$GNGGA`` (fix quality, satellites in use, UTC time) and
  ``$GPGSA``/``$GNGSA`` (fix type 1/2/3). Every other talker or sentence is ignored and
  counted. :class:`EpochAssembler` groups the sentences of one epoch (same UTC time tag)
  into one :class:`GnssReading`; :class:`GpsdProtocol` does the same for gpsd's TPV/SKY.
* **driver**: :class:`GnssReceiver` (pyserial, any ``serial_for_url`` port, 4800 or 9600
  baud, reconnects with backoff) and :class:`GpsdClient` (TCP 2947, ``?WATCH``).
* **simulator**: :class:`GnssSimulator` speaks the receiver's side on a pty;
  :class:`FakeGpsd` is a tiny gpsd for tests and the lab.
* **monitor**: :class:`GnssMonitor` turns readings into ``GnssFixLost``,
  ``GnssFixAcquired``, ``ClockOffsetHigh``, ``DeviceStale`` and ``DeviceRecovered``.

The clock offset is a rough check, not time keeping
----------------------------------------------------
``offset_ms`` is *host clock when the epoch's first sentence arrived* minus *the UTC the
receiver states in it* (positive: the host is ahead of the receiver's statement). NMEA
only says which second a sentence describes, not when the second began, so the figure
includes everything between the receiver's second boundary and our ``read()``:

* the receiver's output latency: sentences leave some 50-500 ms after the second they
  describe, varying with the chipset, the number of sentences enabled and the epoch;
* the serial line: 10 bits a byte, so ~1 ms a byte at 9600 baud and ~2 ms at 4800; a
  1 Hz burst of 400-600 bytes takes 0.4-0.6 s at 9600 baud and 0.8-1.25 s at 4800 (the
  first sentence of the epoch is what is timed, so enable few sentences);
* USB serial adapters buffer (an FTDI latency timer defaults to 16 ms), plus the host's
  thread scheduling (~0.1-1 ms).

So a host whose clock is right typically reads +50...+500 ms with a jitter of tens of ms,
and the check can only catch gross errors: a host clock seconds off, a receiver reporting
a stale or wrong time (a GPS week-number rollover puts it 1024 weeks in the past), a
receiver in simulation mode. The default ``ClockOffsetHigh`` threshold is therefore 1 s.
The offset is only computed when the receiver has a fix and RMC gave a full date and
time; a receiver without a fix may be running on its own RTC.

For real time keeping, let ``chronyd`` discipline the clock from gpsd and the receiver's
PPS (pulse-per-second) line, which marks the second boundary to within microseconds on
a kernel PPS device (``pps-gpio``, or the DCD line of a real serial port with
``ldattach PPS``); NMEA then only numbers the seconds. For example (chrony.conf(5),
gpsd(8) and gpsd's Time Service HOWTO; set the NMEA offset to your receiver's latency):

    # /etc/default/gpsd
    DEVICES="/dev/ttyS0 /dev/pps0"
    GPSD_OPTIONS="-n"
    # /etc/chrony/chrony.conf
    refclock SHM 0 refid NMEA offset 0.2 delay 0.2 noselect
    refclock PPS /dev/pps0 lock NMEA refid PPS prefer

``chronyc sources`` then shows the NMEA source good to a few hundred milliseconds and the
PPS source to microseconds. With gpsd on the host, configure ``[hardware.gnss] port =
"gpsd://..."`` so this module reads gpsd's JSON instead of competing for the serial port:
two readers of one serial line each get part of the bytes. (:class:`GnssReceiver` opens
its port with an exclusive lock, so a second lifeline reader is refused; gpsd and other
programs do not check that lock.)

Other limits: NMEA gives the year in two digits (taken as 2000-2079, 1980-1999);
a leap second (``23:59:60``) reads as the next day's ``00:00:00``; ``$GPZDA`` (which some
timing receivers prefer) is not decoded, so a receiver must emit RMC for the offset.

Sources: NMEA 0183 sentence layouts as pynmea2 (Knio/pynmea2) and gpsd decode them;
golden sentences in the tests come from gpsd's regression logs (test/daemon/*.log) and
pynmea2's tests; gpsd_json(5) for TPV/SKY.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import math
import os
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Self
from urllib.parse import urlsplit

from daemon.core.log import get_logger
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError, PortMissing

log = get_logger("gnss")

Emit = tuple[str, dict[str, Any]]

KIND = "gnss"

#: NMEA 0183 allows 82 characters including ``$`` and CR LF; receivers speaking NMEA
#: 4.x and proprietary sentences exceed it, so lines up to this many bytes are framed.
NMEA_MAX_LINE = 256

#: GGA fix quality values (NMEA 0183 4.x) and the ones that are a real position fix.
QUALITY_NAMES = {
    0: "invalid",
    1: "GPS fix",
    2: "DGPS fix",
    3: "PPS fix",
    4: "RTK fixed",
    5: "RTK float",
    6: "estimated (dead reckoning)",
    7: "manual input",
    8: "simulation",
}
FIX_QUALITIES = frozenset({1, 2, 3, 4, 5})

#: RMC mode indicator (NMEA 2.3+, field 12) → the equivalent GGA quality. A, D, P, R, F
#: are fixes; E (estimated), M (manual), S (simulator) and N (not valid) are not.
_RMC_MODE_QUALITY = {"A": 1, "D": 2, "P": 3, "R": 4, "F": 5, "E": 6, "M": 7, "S": 8, "N": 0}
_RMC_FIX_MODES = frozenset("ADPRF")

_START_BYTES = b"$!"  # "$" starts a sentence, "!" an encapsulated one (AIS)
_HEX = frozenset("0123456789abcdefABCDEF")
_TALKERS = ("GP", "GN")
_KINDS = ("RMC", "GGA", "GSA")


def _started(task_status: Any, value: Any = None) -> None:
    if task_status is not None:
        task_status.started(value)


# --- NMEA 0183 core (sans-IO) ---------------------------------------------------------


def nmea_checksum(body: str | bytes) -> int:
    """XOR of every byte of ``body`` (the text between ``$`` and ``*``)."""
    data = body.encode("ascii") if isinstance(body, str) else body
    value = 0
    for byte in data:
        value ^= byte
    return value


def nmea_sentence(body: str, *, checksum: int | None = None) -> bytes:
    """``$body*HH\\r\\n`` with the right checksum (or the given, possibly wrong, one)."""
    cs = nmea_checksum(body) if checksum is None else checksum
    return f"${body}*{cs & 0xFF:02X}\r\n".encode("ascii")


@dataclass(frozen=True)
class Rmc:
    """Recommended minimum data: is the fix valid, and the full UTC date and time."""

    talker: str
    time_s: float | None  # UTC seconds of the day (a leap second reads 86400.x)
    status: str  # "A" valid, "V" warning
    mode: str | None  # NMEA 2.3+ mode indicator, None before 2.3
    date: date | None
    valid: bool
    arrival: float  # host clock when the sentence's "$" arrived


@dataclass(frozen=True)
class Gga:
    """Fix data: quality and satellites in use, UTC time of day."""

    talker: str
    time_s: float | None
    quality: int
    satellites: int | None
    arrival: float


@dataclass(frozen=True)
class Gsa:
    """DOP and active satellites: the fix type (1 none, 2 2D, 3 3D)."""

    talker: str
    fix_type: int | None
    used: int  # satellite IDs listed as used in this sentence
    arrival: float


Sentence = Rmc | Gga | Gsa


@dataclass
class NmeaStats:
    """What the parser did with every byte: each byte fed ends up accepted (in a valid
    sentence, decoded or ignored), dropped, or still pending (an unfinished line)."""

    bytes_in: int = 0
    accepted_bytes: int = 0
    dropped_bytes: int = 0
    sentences: int = 0  # RMC/GGA/GSA decoded
    ignored: int = 0  # valid checksum, another talker or sentence
    bad_checksum: int = 0  # framed line whose checksum is missing, malformed or wrong
    malformed: int = 0  # valid checksum, but RMC/GGA/GSA fields that do not parse
    garbage: int = 0  # runs of line noise, truncated or overlong lines, binary bytes

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _time_of_day(text: str) -> float | None:
    """``hhmmss[.s...]`` → UTC seconds of the day; empty → None."""
    if text == "":
        return None
    head, frac_text = text[:6], text[6:]
    if len(head) != 6 or not _digits(head):
        raise ValueError(f"bad time {text!r}")
    hh, mm, ss = int(head[0:2]), int(head[2:4]), int(head[4:6])
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        raise ValueError(f"bad time {text!r}")
    frac = 0.0
    if frac_text:
        digits = frac_text[1:]
        if frac_text[0] != "." or len(digits) > 9 or (digits and not _digits(digits)):
            raise ValueError(f"bad time {text!r}")
        if digits:
            frac = int(digits) / 10 ** len(digits)
    return hh * 3600 + mm * 60 + ss + frac


def _date(text: str) -> date | None:
    """``ddmmyy`` → a date (two-digit years 80-99 are 19xx, 00-79 are 20xx)."""
    if text == "":
        return None
    if len(text) != 6 or not _digits(text):
        raise ValueError(f"bad date {text!r}")
    dd, mm, yy = int(text[0:2]), int(text[2:4]), int(text[4:6])
    return date(1900 + yy if yy >= 80 else 2000 + yy, mm, dd)  # ValueError when invalid


def _small_int(text: str, what: str, limit: int) -> int:
    if not _digits(text) or len(text) > 3 or int(text) > limit:
        raise ValueError(f"bad {what} {text!r}")
    return int(text)


def _decode_rmc(talker: str, f: list[str], arrival: float) -> Rmc:
    if len(f) < 9:
        raise ValueError("RMC with fewer than 9 fields")
    time_s = _time_of_day(f[0])
    status = f[1] or "V"
    if status not in ("A", "V"):
        raise ValueError(f"bad RMC status {status!r}")
    day = _date(f[8])
    mode = f[11] if len(f) > 11 and f[11] else None
    if mode is not None and (len(mode) != 1 or mode not in _RMC_MODE_QUALITY):
        raise ValueError(f"bad RMC mode {mode!r}")
    valid = status == "A" and (mode is None or mode in _RMC_FIX_MODES)
    return Rmc(talker, time_s, status, mode, day, valid, arrival)


def _decode_gga(talker: str, f: list[str], arrival: float) -> Gga:
    if len(f) < 7:
        raise ValueError("GGA with fewer than 7 fields")
    time_s = _time_of_day(f[0])
    quality = _small_int(f[5], "GGA quality", 9) if f[5] else 0
    satellites = _small_int(f[6], "GGA satellites", 255) if f[6] else None
    return Gga(talker, time_s, quality, satellites, arrival)


def _decode_gsa(talker: str, f: list[str], arrival: float) -> Gsa:
    if len(f) < 2:
        raise ValueError("GSA with fewer than 2 fields")
    fix_type = None
    if f[1]:
        if f[1] not in ("1", "2", "3"):
            raise ValueError(f"bad GSA fix type {f[1]!r}")
        fix_type = int(f[1])
    used = sum(1 for prn in f[2:14] if prn)
    return Gsa(talker, fix_type, used, arrival)


_DECODERS = {"RMC": _decode_rmc, "GGA": _decode_gga, "GSA": _decode_gsa}


class NmeaParser:
    """Bytes in, sentences out. Never raises on input: what it cannot use it drops and
    counts in :attr:`stats`, and it resynchronizes on the next ``$``.

    Framing: a sentence starts at ``$`` (or ``!``) and ends at LF (a CR before it is
    stripped). A new start byte before the line end means the pending line was truncated;
    a line longer than ``max_line`` is dropped along with everything up to the next start
    byte. Bytes between sentences are noise (CR/LF alone are dropped but not counted as
    garbage). Each sentence carries ``arrival``: the ``now`` passed with the chunk that
    held its ``$``.
    """

    def __init__(self, *, max_line: int = NMEA_MAX_LINE) -> None:
        self.max_line = max_line
        self.stats = NmeaStats()
        self._buf = bytearray()  # the pending line; starts with a start byte when non-empty
        self._start = 0.0
        self._in_noise = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back for the next :meth:`feed`."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a pending line (after a reconnect or skipping ahead); counters stay."""
        self.stats.dropped_bytes += len(self._buf)
        self._buf.clear()
        self._in_noise = False

    def feed(self, data: bytes, now: float) -> list[Sentence]:
        out: list[Sentence] = []
        data = bytes(data)
        self.stats.bytes_in += len(data)
        pos, n = 0, len(data)
        while pos < n:
            if not self._buf:
                start = self._find_start(data, pos)
                end = n if start < 0 else start
                if end > pos:
                    self._noise(data[pos:end])
                if start < 0:
                    break
                self._in_noise = False
                self._buf.append(data[start])
                self._start = now
                pos = start + 1
                continue
            newline = data.find(b"\n", pos)
            start = self._find_start(data, pos)
            if start >= 0 and (newline < 0 or start < newline):
                # a new sentence began before this one ended: the pending one is cut short
                self._buf += data[pos:start]
                self._drop_fragment(len(self._buf))
                self._buf.clear()
                pos = start
                continue
            if newline < 0:
                self._buf += data[pos:]
                pos = n
                if len(self._buf) > self.max_line:
                    self._drop_fragment(len(self._buf))
                    self._buf.clear()
                    self._in_noise = True  # the rest of this line is the same fragment
                break
            self._buf += data[pos:newline + 1]
            pos = newline + 1
            line = bytes(self._buf)
            self._buf.clear()
            if len(line) > self.max_line:
                self._drop_fragment(len(line))
                self._in_noise = True
                continue
            sentence = self._line(line, self._start)
            if sentence is not None:
                out.append(sentence)
        return out

    @staticmethod
    def _find_start(data: bytes, pos: int) -> int:
        found = [i for i in (data.find(b"$", pos), data.find(b"!", pos)) if i >= 0]
        return min(found) if found else -1

    def _noise(self, segment: bytes) -> None:
        self.stats.dropped_bytes += len(segment)
        if not self._in_noise and segment.strip(b"\r\n"):
            self.stats.garbage += 1
            self._in_noise = True

    def _drop_fragment(self, nbytes: int) -> None:
        self.stats.dropped_bytes += nbytes
        self.stats.garbage += 1

    def _line(self, line: bytes, arrival: float) -> Sentence | None:
        size = len(line)
        raw = line[:-1].rstrip(b"\r")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not text or not text.isprintable():
            self._drop_fragment(size)
            return None
        star = text.rfind("*")
        digits = text[star + 1:] if star >= 0 else ""
        if (star < 0 or len(digits) != 2 or not set(digits) <= _HEX
                or int(digits, 16) != nmea_checksum(text[1:star])):
            self.stats.bad_checksum += 1
            self.stats.dropped_bytes += size
            return None
        fields = text[1:star].split(",")
        address = fields[0]
        talker, kind = address[:2], address[2:]
        if text[0] != "$" or len(address) != 5 or talker not in _TALKERS or kind not in _KINDS:
            self.stats.ignored += 1
            self.stats.accepted_bytes += size
            return None
        try:
            sentence = _DECODERS[kind](talker, fields[1:], arrival)
        except ValueError:
            self.stats.malformed += 1
            self.stats.dropped_bytes += size
            return None
        self.stats.sentences += 1
        self.stats.accepted_bytes += size
        return sentence


@dataclass(frozen=True)
class GnssReading:
    """One epoch of the receiver (or one gpsd TPV), as the monitor and operators see it."""

    fix: bool  # a usable position fix, so its time is the satellites' time
    reason: str  # why there is no fix ("" with a fix)
    quality: int  # GGA fix quality (0 invalid, 1 GPS, 2 DGPS, ...; see QUALITY_NAMES)
    satellites: int | None  # satellites in use; None when the receiver did not say
    fix_type: int | None  # GSA / gpsd mode: 1 none, 2 2D, 3 3D
    utc: datetime | None  # the receiver's UTC for the epoch (RMC date + time)
    offset_ms: float | None  # host clock at arrival - receiver UTC (fix and full UTC only)
    arrival: float  # host clock (UNIX seconds) when the epoch's first sentence arrived
    status: str | None = None  # RMC status A/V
    talker: str = ""  # GP, GN, or the gpsd device
    source: str = "nmea"  # "nmea" or "gpsd"
    sentences: tuple[str, ...] = ()  # what the reading was built from

    @property
    def complete(self) -> bool:
        """Built from a whole epoch (RMC and GGA, or TPV with SKY), not a fragment."""
        have = set(self.sentences)
        return {"RMC", "GGA"} <= have or {"TPV", "SKY"} <= have

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for ``lifeline hardware read``, status and metrics)."""
        return {
            "kind": KIND,
            "source": self.source,
            "fix": self.fix,
            "reason": self.reason,
            "quality": self.quality,
            "quality_name": QUALITY_NAMES.get(self.quality, "unknown"),
            "satellites": self.satellites,
            "fix_type": self.fix_type,
            "status": self.status,
            "utc": _iso(self.utc),
            "offset_ms": None if self.offset_ms is None else round(self.offset_ms, 3),
            "arrival": round(self.arrival, 6),
            "talker": self.talker,
            "sentences": list(self.sentences),
        }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EpochAssembler:
    """Sentences → one :class:`GnssReading` per epoch.

    An epoch is the RMC and GGA with the same UTC time tag. It ends when a sentence with
    another time tag arrives, when a second sentence of the same type arrives (a receiver
    that emits only RMC, or only GGA), or when the driver calls :meth:`flush` because the
    line went quiet after the burst. GSA carries no time: the latest one seen by the end
    of the epoch counts if it is at most ``gsa_max_age`` seconds older than the epoch
    (receivers send it after GGA, or before RMC, depending on the chipset).
    """

    def __init__(self, *, gsa_max_age: float = 2.0) -> None:
        self.gsa_max_age = gsa_max_age
        self._rmc: Rmc | None = None
        self._gga: Gga | None = None
        self._gsa: Gsa | None = None
        self._key: int | None = None
        self._first: float | None = None

    def reset(self) -> None:
        self._rmc = self._gga = self._gsa = None
        self._key = self._first = None

    def add(self, sentence: Sentence) -> list[GnssReading]:
        if isinstance(sentence, Gsa):
            self._gsa = sentence
            return []
        out: list[GnssReading] = []
        key = None if sentence.time_s is None else round(sentence.time_s * 1000)
        is_rmc = isinstance(sentence, Rmc)
        if self._first is not None and (
                key != self._key or (self._rmc if is_rmc else self._gga) is not None):
            out.append(self._complete())
        if self._first is None:
            self._key, self._first = key, sentence.arrival
        if is_rmc:
            self._rmc = sentence  # type: ignore[assignment]
        else:
            self._gga = sentence  # type: ignore[assignment]
        return out

    def flush(self) -> GnssReading | None:
        """End the pending epoch (the line went quiet): its reading, if there is one."""
        return self._complete() if self._first is not None else None

    def _complete(self) -> GnssReading:
        rmc, gga, arrival = self._rmc, self._gga, self._first or 0.0
        self._rmc = self._gga = None
        self._key = self._first = None
        gsa = self._gsa
        if gsa is not None and arrival - gsa.arrival > self.gsa_max_age:
            gsa = None
        reasons = []
        if rmc is not None and not rmc.valid:
            reasons.append(f"RMC status {rmc.status}" + (f" mode {rmc.mode}" if rmc.mode else ""))
        if gga is not None and gga.quality not in FIX_QUALITIES:
            reasons.append(f"GGA quality {gga.quality} ({QUALITY_NAMES.get(gga.quality, 'unknown')})")
        if gsa is not None and gsa.fix_type == 1:
            reasons.append("GSA fix type 1 (no fix)")
        fix = not reasons
        if gga is not None:
            quality = gga.quality
        elif rmc is not None and rmc.mode is not None:
            quality = _RMC_MODE_QUALITY[rmc.mode]
        else:
            quality = 1 if fix else 0
        satellites = gga.satellites if gga is not None else (gsa.used if gsa is not None else None)
        utc = None
        if rmc is not None and rmc.date is not None and rmc.time_s is not None:
            utc = datetime(rmc.date.year, rmc.date.month, rmc.date.day, tzinfo=UTC) \
                + timedelta(seconds=rmc.time_s)
        offset_ms = (arrival - utc.timestamp()) * 1000.0 if (utc is not None and fix) else None
        first = rmc if rmc is not None else gga
        names = tuple(name for name, s in (("RMC", rmc), ("GGA", gga), ("GSA", gsa)) if s is not None)
        return GnssReading(
            fix=fix, reason="; ".join(reasons), quality=quality, satellites=satellites,
            fix_type=gsa.fix_type if gsa is not None else None, utc=utc, offset_ms=offset_ms,
            arrival=arrival, status=rmc.status if rmc is not None else None,
            talker=first.talker if first is not None else "", source="nmea", sentences=names)


class GnssProtocol:
    """The whole sans-IO NMEA side: ``feed(bytes, now)`` → readings of the epochs that
    ended; ``flush()`` when the line has gone quiet ends the current one."""

    def __init__(self, *, max_line: int = NMEA_MAX_LINE, gsa_max_age: float = 2.0) -> None:
        self.parser = NmeaParser(max_line=max_line)
        self.assembler = EpochAssembler(gsa_max_age=gsa_max_age)

    @property
    def stats(self) -> NmeaStats:
        return self.parser.stats

    def feed(self, data: bytes, now: float) -> list[GnssReading]:
        out: list[GnssReading] = []
        for sentence in self.parser.feed(data, now):
            out.extend(self.assembler.add(sentence))
        return out

    def flush(self) -> GnssReading | None:
        return self.assembler.flush()

    def reset(self) -> None:
        self.parser.reset()
        self.assembler.reset()


# --- gpsd JSON core (sans-IO) ---------------------------------------------------------

GPSD_PORT = 2947
GPSD_WATCH = b'?WATCH={"enable":true,"json":true};\n'
_GPSD_MODES = {0: "unknown", 1: "no fix", 2: "2D fix", 3: "3D fix"}
#: TPV ``status`` (gpsd_json(5)) → GGA-style quality; 5, 6 (dead reckoning) and 8
#: (simulated) are not a fix.
_GPSD_STATUS_QUALITY = {0: 1, 1: 1, 2: 2, 3: 4, 4: 5, 5: 6, 6: 6, 7: 1, 8: 8, 9: 1}
_GPSD_NOT_A_FIX = {5: "dead reckoning", 6: "GNSS + dead reckoning", 8: "simulated"}


@dataclass
class GpsdStats:
    bytes_in: int = 0
    objects: int = 0  # JSON objects decoded
    tpv: int = 0
    sky: int = 0
    ignored: int = 0  # other classes (VERSION, DEVICES, WATCH, PPS, TOFF, ...) or devices
    errors: int = 0  # gpsd's ERROR objects
    garbage: int = 0  # lines that are not a JSON object, TPVs without a valid mode

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _gpsd_time(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # Python 3.11 reads the "Z" suffix
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            parsed = parsed.astimezone(UTC)
            parsed.timestamp()
        except (ValueError, OverflowError, OSError):
            return None  # not a time, or one no clock can hold
        return parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        try:  # gpsd before 3.10 sent UNIX seconds
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


class GpsdProtocol:
    """gpsd's JSON lines in, readings out (one per TPV, with the latest SKY's count).

    Never raises on input; what it cannot use is counted in :attr:`stats`.
    """

    def __init__(self, *, device: str | None = None, max_line: int = 65536,
                 sky_max_age: float = 5.0) -> None:
        self.device = device
        self.max_line = max_line
        self.sky_max_age = sky_max_age
        self.stats = GpsdStats()
        self.version: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._buf = bytearray()
        self._skipping = False
        self._sky: tuple[int, float] | None = None

    def reset(self) -> None:
        self._buf.clear()
        self._skipping = False
        self._sky = None

    def forget_sky(self) -> None:
        """Drop the satellite count (it came from data now known to be old)."""
        self._sky = None

    def feed(self, data: bytes, now: float) -> list[GnssReading]:
        out: list[GnssReading] = []
        self.stats.bytes_in += len(data)
        self._buf += data
        while True:
            newline = self._buf.find(b"\n")
            if newline < 0:
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    if not self._skipping:
                        self.stats.garbage += 1
                    self._skipping = True
                return out
            line = bytes(self._buf[:newline])
            del self._buf[:newline + 1]
            if self._skipping:  # the tail of an overlong line
                self._skipping = False
                continue
            if not line.strip():
                continue
            reading = self._line(line, now)
            if reading is not None:
                out.append(reading)

    def _line(self, line: bytes, now: float) -> GnssReading | None:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            self.stats.garbage += 1
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
            self.stats.garbage += 1
            return None
        self.stats.objects += 1
        cls = obj["class"]
        if self.device is not None and obj.get("device", self.device) != self.device and cls in ("TPV", "SKY"):
            self.stats.ignored += 1
            return None
        if cls == "TPV":
            return self._tpv(obj, now)
        if cls == "SKY":
            self._sky_object(obj, now)
        elif cls == "ERROR":
            self.stats.errors += 1
            self.last_error = str(obj.get("message", ""))[:200]
        elif cls == "VERSION":
            self.version = obj
            self.stats.ignored += 1
        else:
            self.stats.ignored += 1
        return None

    def _sky_object(self, obj: dict[str, Any], now: float) -> None:
        self.stats.sky += 1
        used = obj.get("uSat")
        if not (isinstance(used, int) and not isinstance(used, bool) and 0 <= used < 1000):
            sats = obj.get("satellites")
            if not isinstance(sats, list):
                return
            used = sum(1 for s in sats if isinstance(s, dict) and s.get("used") is True)
        self._sky = (used, now)

    def _tpv(self, obj: dict[str, Any], now: float) -> GnssReading | None:
        mode = obj.get("mode")
        if not isinstance(mode, int) or isinstance(mode, bool) or mode not in _GPSD_MODES:
            self.stats.garbage += 1
            return None
        self.stats.tpv += 1
        status = obj.get("status", 1)
        if not isinstance(status, int) or isinstance(status, bool):
            status = 1
        utc = _gpsd_time(obj.get("time"))
        if mode < 2:
            fix, reason, quality = False, f"gpsd TPV mode {mode} ({_GPSD_MODES[mode]})", 0
        elif status in _GPSD_NOT_A_FIX:
            fix, reason = False, f"gpsd TPV status {status} ({_GPSD_NOT_A_FIX[status]})"
            quality = _GPSD_STATUS_QUALITY[status]
        else:
            fix, reason, quality = True, "", _GPSD_STATUS_QUALITY.get(status, 1)
        sky = self._sky if self._sky is not None and now - self._sky[1] <= self.sky_max_age else None
        offset_ms = (now - utc.timestamp()) * 1000.0 if (utc is not None and fix) else None
        device = obj.get("device")
        return GnssReading(
            fix=fix, reason=reason, quality=quality, satellites=sky[0] if sky else None,
            fix_type=mode if mode >= 1 else None, utc=utc, offset_ms=offset_ms, arrival=now,
            status=None, talker=device if isinstance(device, str) else "gpsd", source="gpsd",
            sentences=("TPV", "SKY") if sky else ("TPV",))


# --- monitor (sans-IO) ----------------------------------------------------------------


class GnssMonitor:
    """Readings → events, with hysteresis and staleness. Time is whatever ``now`` the
    caller passes (``trio.current_time()`` in the daemon).

    * fix: ``fix_confirm`` consecutive readings with (without) a fix before
      ``GnssFixAcquired`` (``GnssFixLost``); the first confirmed state after start is
      reported either way.
    * clock offset: ``ClockOffsetHigh`` once ``|offset|`` exceeded ``offset_threshold_ms``
      in ``offset_confirm`` consecutive readings; it re-arms after ``offset_confirm``
      readings below ``offset_clear_ms`` (default 80 % of the threshold).
    * staleness: no reading for ``stale_after`` seconds → one ``DeviceStale`` (and
      ``GnssFixLost`` if the fix was reported): a silent receiver is never a locked one.
      The next reading → ``DeviceRecovered``; the fix must then be confirmed again.
    """

    def __init__(self, device: str, *, offset_threshold_ms: float = 1000.0,
                 offset_clear_ms: float | None = None, offset_confirm: int = 3,
                 fix_confirm: int = 3, stale_after: float = 5.0) -> None:
        if offset_threshold_ms <= 0 or stale_after <= 0 or offset_confirm < 1 or fix_confirm < 1:
            raise ValueError("GNSS monitor thresholds must be positive")
        self.device = device
        self.offset_threshold_ms = float(offset_threshold_ms)
        self.offset_clear_ms = float(offset_clear_ms if offset_clear_ms is not None
                                     else 0.8 * offset_threshold_ms)
        if self.offset_clear_ms > self.offset_threshold_ms:
            raise ValueError("offset_clear_ms must not exceed offset_threshold_ms")
        self.offset_confirm = offset_confirm
        self.fix_confirm = fix_confirm
        self.stale_after = float(stale_after)
        self.fix: bool | None = None  # the confirmed state; None until confirmed
        self.offset_high = False
        self.stale = False
        self.last_reading: GnssReading | None = None
        self._last_time: float | None = None
        self._since: float | None = None
        self._fix_run = 0
        self._nofix_run = 0
        self._high_run = 0
        self._low_run = 0

    @property
    def healthy(self) -> bool:
        return not self.stale and self.fix is True and not self.offset_high

    def reading(self, r: GnssReading, now: float) -> list[Emit]:
        out: list[Emit] = []
        if self._since is None:
            self._since = now
        if self.stale:
            self.stale = False
            out.append(("DeviceRecovered", {"device": self.device, "kind": KIND}))
        self._last_time = now
        self.last_reading = r
        if r.fix:
            self._fix_run, self._nofix_run = self._fix_run + 1, 0
        else:
            self._fix_run, self._nofix_run = 0, self._nofix_run + 1
        if self.fix is not True and self._fix_run >= self.fix_confirm:
            self.fix = True
            out.append(("GnssFixAcquired", {"device": self.device,
                                            "satellites": r.satellites if r.satellites is not None else 0,
                                            "quality": r.quality}))
        elif self.fix is not False and self._nofix_run >= self.fix_confirm:
            self.fix = False
            out.append(("GnssFixLost", {"device": self.device, "reason": r.reason or "no fix"}))
        if r.offset_ms is not None and math.isfinite(r.offset_ms):
            size = abs(r.offset_ms)
            if size > self.offset_threshold_ms:
                self._high_run, self._low_run = self._high_run + 1, 0
            elif size < self.offset_clear_ms:
                self._high_run, self._low_run = 0, self._low_run + 1
            else:  # inside the hysteresis band: neither confirms anything
                self._high_run = self._low_run = 0
            if not self.offset_high and self._high_run >= self.offset_confirm:
                self.offset_high = True
                out.append(("ClockOffsetHigh", {"device": self.device,
                                                "offset_ms": round(r.offset_ms, 3),
                                                "threshold_ms": self.offset_threshold_ms}))
            elif self.offset_high and self._low_run >= self.offset_confirm:
                self.offset_high = False
        return out

    def tick(self, now: float) -> list[Emit]:
        if self._since is None:
            self._since = now
        last = self._last_time if self._last_time is not None else self._since
        silent = now - last
        if self.stale or silent < self.stale_after:
            return []
        self.stale = True
        self._fix_run = self._nofix_run = self._high_run = self._low_run = 0
        out: list[Emit] = [("DeviceStale", {"device": self.device, "kind": KIND,
                                            "silent_s": round(silent, 3)})]
        if self.fix is True:
            out.append(("GnssFixLost", {"device": self.device,
                                        "reason": f"no data from the receiver for {silent:.1f} s"}))
        if self.fix is not None:
            self.fix = False
        return out

    def status(self, now: float | None = None) -> dict[str, Any]:
        """For ``lifeline status`` and ``/metrics``: never healthy while stale."""
        last = self.last_reading
        data: dict[str, Any] = {
            "device": self.device, "kind": KIND, "stale": self.stale, "fix": self.fix,
            "offset_high": self.offset_high, "healthy": self.healthy,
            "reading": last.as_dict() if last is not None else None,
        }
        if now is not None and self._last_time is not None:
            data["silent_s"] = round(now - self._last_time, 3)
        return data


# --- trio drivers ---------------------------------------------------------------------


class _PortLost(Exception):
    pass


class _RunLoop:
    """``run()`` shared by the serial and gpsd drivers: poll, reconnect with backoff,
    one log line per state change."""

    backoff: float
    backoff_max: float
    url: str

    async def poll(self, timeout: float | None = None) -> GnssReading:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover
        raise NotImplementedError

    async def run(self, on_reading: Callable[[GnssReading], Any], *, interval: float = 1.0,
                  task_status: Any = None) -> None:
        """Read forever; hand ``on_reading`` (sync or async) one reading per ``interval``
        seconds on average (every epoch when 0): the first reading due, the epochs in
        between are read but not handed over. Started at once: a missing device is
        reported by the monitor's staleness, not by blocking the daemon's start."""
        import trio

        _started(task_status)
        state: str | None = None
        delay = self.backoff
        due = -math.inf
        slack = min(0.5, interval / 2) if interval > 0 else 0.0  # epochs arrive with jitter

        def change(new: str, level: str, **fields: Any) -> None:
            nonlocal state
            if new != state:
                state = new
                getattr(log, level)(f"gnss.{new}", port=self.url, **fields)

        try:
            while True:
                try:
                    reading = await self.poll()
                except PortMissing as exc:
                    change("port_missing", "warning", error=str(exc), retry_s=delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                except DeviceTimeout as exc:
                    change("silent", "warning", error=str(exc))
                    continue
                except DeviceGarbage as exc:
                    change("garbage", "warning", error=str(exc))
                    continue
                except HardwareError as exc:  # anything else a driver may say: retry
                    change("error", "warning", error=str(exc), retry_s=delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff
                change("receiving", "info", fix=reading.fix, satellites=reading.satellites)
                now = trio.current_time()
                if interval <= 0 or now >= due - slack:
                    due = now + interval if now - due > interval else due + interval
                    result = on_reading(reading)
                    if inspect.isawaitable(result):
                        await result
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()


class GnssReceiver(_RunLoop):
    """An NMEA receiver on a serial port (device path or ``serial_for_url`` URL).

    Blocking reads run in a worker thread with a short timeout (``read_timeout``), so a
    cancelled task waits at most that long and no byte read is lost to a cancellation.
    A read that times out also marks the end of the receiver's burst: the epoch is
    complete then (``read_timeout`` must stay well below the receiver's interval).

    :meth:`poll` can be called back to back (as :meth:`run` does) or once in a while:
    when nothing has read the port for ``catch_up_after`` seconds, the bytes the kernel
    buffered meanwhile are old (their arrival time would be wrong), so they are flushed
    and the driver joins the stream at the next burst: it skips bytes until the line
    goes quiet (or for at most ``join_limit`` seconds, for a receiver that never pauses)
    so the epoch it returns is whole. A poll after a pause therefore takes up to about
    one receiver interval.
    """

    def __init__(self, port: str, *, baudrate: int = 9600, timeout: float = 3.0,
                 read_timeout: float = 0.05, backoff: float = 0.5, backoff_max: float = 30.0,
                 catch_up_after: float = 0.5, join_limit: float = 1.5,
                 clock: Callable[[], float] = time.time) -> None:
        if baudrate <= 0:
            raise ValueError(f"bad baud rate {baudrate}")
        self.port = port
        self.url = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
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
        import serial

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
        import trio

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
        import serial

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
        import serial

        self._ready.clear()
        self._protocol.reset()
        self._joining = True
        with contextlib.suppress(serial.SerialException, OSError):  # a lost port shows on the next read
            self._serial.reset_input_buffer()

    async def poll(self, timeout: float | None = None) -> GnssReading:
        """The next epoch's reading. Raises PortMissing (cannot open, or lost: the next
        call reopens), DeviceTimeout (no data, or no RMC/GGA) or DeviceGarbage (bytes
        but no valid sentence: often the wrong baud rate)."""
        import trio

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


def parse_gpsd_url(url: str) -> tuple[str, int]:
    """``gpsd://HOST[:PORT]`` → (host, port); the port defaults to 2947."""
    parts = urlsplit(url)
    try:
        port = parts.port or GPSD_PORT
    except ValueError:
        raise PortMissing(f"{url}: bad gpsd address (gpsd://HOST:PORT)") from None
    if parts.scheme != "gpsd" or not parts.hostname:
        raise PortMissing(f"{url}: bad gpsd address (gpsd://HOST:PORT)")
    return parts.hostname, port


class GpsdClient(_RunLoop):
    """Readings from a running gpsd over TCP (``?WATCH={"enable":true,"json":true}``).

    gpsd reports a TPV once it has the whole epoch, so its offsets include gpsd's cycle
    latency on top of the receiver's; use it for fix and satellites, PPS for time. As
    with the serial driver, a poll after a pause of ``catch_up_after`` seconds first
    drains what the socket buffered meanwhile (old reports would carry a wrong arrival).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = GPSD_PORT, *, timeout: float = 3.0,
                 device: str | None = None, backoff: float = 0.5, backoff_max: float = 30.0,
                 catch_up_after: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.host, self.port = host, port
        self.url = f"gpsd://{host}:{port}"
        self.timeout = timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
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
        import trio

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
        import trio

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
        import trio

        self._ready.clear()
        limit = trio.current_time() + 1.0
        while trio.current_time() < limit:
            data = await self._receive(trio.current_time() + 0.02)
            if data is None:
                break
            self._protocol.feed(data, self._clock())  # counted, but old: not reported
        self._protocol.forget_sky()

    async def poll(self, timeout: float | None = None) -> GnssReading:
        import trio

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


# --- simulators -----------------------------------------------------------------------

_SIM_FIELDS = ("fix", "satellites", "quality", "fix_type", "clock_offset_ms", "garbage",
               "bad_checksum", "silent", "talker")
_SIM_PRNS = (2, 5, 7, 9, 13, 15, 18, 20, 23, 26, 29, 30)


@dataclass
class GnssSimState:
    fix: bool = True
    satellites: int = 8
    quality: int = 1  # GGA quality while fixed
    fix_type: int = 3  # GSA fix type while fixed
    clock_offset_ms: float = 0.0  # what the host should measure: host - stated UTC
    garbage: bool = False  # line noise and a truncated sentence before each epoch
    bad_checksum: bool = False  # every sentence with a wrong checksum
    silent: bool = False  # nothing at all
    talker: str = "GP"  # "GP" (GPS only) or "GN" (multi-constellation)


@dataclass
class GnssSimulator:
    """A receiver's side of a pty: a 1 Hz (``interval``) NMEA stream, scriptable.

    ``epoch(tick)`` builds the bytes of one epoch (sans-IO); :meth:`start` runs it in a
    thread, :meth:`run` as a trio task. The receiver states UTC ``tick -
    clock_offset_ms``, so a driver measures about ``clock_offset_ms`` plus the (small)
    delivery latency. The pty master is non-blocking: bytes nobody reads are dropped,
    as on a real serial line.
    """

    interval: float = 1.0
    state: GnssSimState = field(default_factory=GnssSimState)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.interval < 0.02:
            raise ValueError("simulator interval must be at least 0.02 s")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.epochs = 0
        self.dropped = 0
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation before a driver opens it
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)

    def set(self, **changes: Any) -> None:
        unknown = set(changes) - set(_SIM_FIELDS)
        if unknown:
            raise TypeError(f"unknown simulator state {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self.state, name, value)

    def epoch(self, tick: float) -> bytes:
        """The bytes a receiver sends for the epoch at host time ``tick``."""
        with self._lock:
            st = GnssSimState(**self.state.__dict__)
        if st.silent:
            return b""
        stated = datetime.fromtimestamp(tick - st.clock_offset_ms / 1000.0, tz=UTC)
        hms = f"{stated:%H%M%S}.{stated.microsecond // 10000:02d}"
        dmy = f"{stated:%d%m%y}"
        t, sats = st.talker, max(0, min(int(st.satellites), 99))
        if st.fix:
            prns = [f"{p:02d}" for p in _SIM_PRNS[:min(sats, 12)]] + [""] * (12 - min(sats, 12))
            bodies = [
                f"{t}RMC,{hms},A,4807.0380,N,01131.0000,E,0.02,,{dmy},,,A",
                f"{t}VTG,,T,,M,0.02,N,0.04,K,A",
                f"{t}GGA,{hms},4807.0380,N,01131.0000,E,{st.quality},{sats:02d},0.9,545.4,M,46.9,M,,",
                f"{t}GSA,A,{st.fix_type}," + ",".join(prns) + ",1.6,0.9,1.3",
            ]
        else:
            bodies = [
                f"{t}RMC,{hms},V,,,,,,,{dmy},,,N",
                f"{t}VTG,,,,,,,,,N",
                f"{t}GGA,{hms},,,,,0,{sats:02d},99.99,,,,,,",
                f"{t}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99",
            ]
        bodies.append("GPGSV,1,1,01,13,45,083,42")
        out = bytearray()
        if st.garbage:
            out += b"\x00\xfe\xff line noise \x13\r\n$GPGGA,1234"  # noise, then a cut-off line
        for body in bodies:
            cs = nmea_checksum(body) ^ (0x5A if st.bad_checksum else 0)
            out += nmea_sentence(body, checksum=cs)
        return bytes(out)

    def emit(self, tick: float) -> int:
        """Write one epoch to the pty; returns the bytes written (0 when dropped)."""
        data = self.epoch(tick)
        self.epochs += 1
        if not data:
            return 0
        try:
            return os.write(self._master, data)
        except (BlockingIOError, OSError):
            self.dropped += 1
            return 0

    def _next_tick(self) -> float:
        now = self.clock()
        return (math.floor(now / self.interval) + 1) * self.interval

    def _loop(self) -> None:
        while not self._stop.is_set():
            tick = self._next_tick()
            if self._stop.wait(max(0.0, tick - self.clock())):
                return
            self.emit(tick)

    def start(self) -> GnssSimulator:
        """Run in a daemon thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"gnss-sim {self.path}", daemon=True)
            self._thread.start()
        return self

    async def run(self, *, task_status: Any = None) -> None:
        """Run as a trio task (cancel it to stop; :meth:`close` separately)."""
        import trio

        _started(task_status, self.path)
        while True:
            tick = self._next_tick()
            await trio.sleep(max(0.0, tick - self.clock()))
            self.emit(tick)

    def close(self) -> None:
        """Stop and remove the pty: a driver reading it sees the port disappear."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_simulator(*, interval: float = 1.0, **state: Any) -> GnssSimulator:
    """A new pty simulator, running in a thread (``.path`` is the port to give a driver)."""
    sim = GnssSimulator(interval=interval)
    if state:
        sim.set(**state)
    return sim.start()


@dataclass
class FakeGpsd:
    """A tiny gpsd: VERSION on connect, DEVICES and WATCH after ``?WATCH``, then SKY and
    TPV every ``interval`` seconds from the scripted state (``mode`` 0-3, ``status``,
    ``satellites``, ``clock_offset_ms``, ``silent``, ``garbage``)."""

    interval: float = 1.0
    mode: int = 3
    status: int = 1
    satellites: int = 8
    clock_offset_ms: float = 0.0
    silent: bool = False
    garbage: bool = False
    device: str = "/dev/ttyFAKE0"
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.port: int | None = None
        self.watchers = 0
        self.requests: list[bytes] = []

    def set(self, **changes: Any) -> None:
        for name, value in changes.items():
            if name not in ("mode", "status", "satellites", "clock_offset_ms", "silent", "garbage"):
                raise TypeError(f"unknown fake gpsd state {name!r}")
            setattr(self, name, value)

    def objects(self, tick: float) -> bytes:
        """The JSON lines gpsd sends for the epoch at host time ``tick``."""
        if self.silent:
            return b""
        stated = datetime.fromtimestamp(tick - self.clock_offset_ms / 1000.0, tz=UTC)
        sats = [{"PRN": p, "el": 45.0, "az": 83.0, "ss": 40.0, "used": i < self.satellites}
                for i, p in enumerate(_SIM_PRNS)]
        sky = {"class": "SKY", "device": self.device, "hdop": 0.9, "pdop": 1.6,
               "nSat": len(sats), "uSat": min(self.satellites, len(sats)), "satellites": sats}
        tpv: dict[str, Any] = {"class": "TPV", "device": self.device, "mode": self.mode}
        if self.status != 1:
            tpv["status"] = self.status
        if self.mode >= 1:
            tpv["time"] = _iso(stated)
            tpv["ept"] = 0.005
        if self.mode >= 2:
            tpv.update(lat=48.1173, lon=11.5167, eph=3.2, speed=0.01)
        if self.mode == 3:
            tpv.update(altHAE=592.1, altMSL=545.4, epv=5.1)
        out = b""
        if self.garbage:
            out += b"this is not json\r\n"
        return out + (json.dumps(sky) + "\r\n").encode() + (json.dumps(tpv) + "\r\n").encode()

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0, task_status: Any = None) -> None:
        import trio

        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        _started(task_status, self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: Any) -> None:
        import trio

        version = {"class": "VERSION", "release": "3.25", "rev": "3.25", "proto_major": 3, "proto_minor": 15}
        try:
            await stream.send_all((json.dumps(version) + "\r\n").encode())
            buf = b""
            while b"\n" not in buf and b";" not in buf:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
            self.requests.append(buf)
            if not buf.startswith(b"?WATCH="):
                await stream.send_all(b'{"class":"ERROR","message":"Unrecognized request"}\r\n')
                return
            self.watchers += 1
            devices = {"class": "DEVICES", "devices": [{"class": "DEVICE", "path": self.device,
                                                        "driver": "NMEA0183", "bps": 9600,
                                                        "parity": "N", "stopbits": 1, "cycle": 1.0}]}
            watch = {"class": "WATCH", "enable": True, "json": True, "nmea": False, "raw": 0,
                     "scaled": False, "timing": False, "split24": False, "pps": False}
            await stream.send_all((json.dumps(devices) + "\r\n" + json.dumps(watch) + "\r\n").encode())
            while True:
                now = self.clock()
                tick = (math.floor(now / self.interval) + 1) * self.interval
                await trio.sleep(max(0.0, tick - self.clock()))
                data = self.objects(tick)
                if data:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


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
    import trio

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
