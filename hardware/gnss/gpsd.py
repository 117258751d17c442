"""gpsd's JSON protocol (sans-IO): :class:`GpsdProtocol` turns TPV/SKY reports into
:class:`~hardware.gnss.nmea.GnssReading` values (gpsd_json(5)); ``gpsd://`` URLs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from hardware.errors import PortMissing
from hardware.gnss.nmea import GnssReading


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
