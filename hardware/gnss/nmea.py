"""The NMEA 0183 core (sans-IO): :class:`NmeaParser` frames sentences out of a byte stream
(partial lines, line noise, truncated and overlong lines), verifies the ``*HH`` checksum and
decodes RMC, GGA and GSA; :class:`EpochAssembler` groups the sentences of one epoch into one
:class:`GnssReading`; :class:`GnssProtocol` is both. See :mod:`hardware.gnss` for the limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from collections.abc import Callable
from typing import Any


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


_DECODERS: dict[str, Callable[[str, list[str], float], Sentence]] = {
    "RMC": _decode_rmc, "GGA": _decode_gga, "GSA": _decode_gsa}


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
