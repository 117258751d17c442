"""GNSS readings → events (sans-IO).
"""

from __future__ import annotations

import math
from typing import Any

from daemon.core.events import ClockOffsetHigh, DeviceRecovered, DeviceStale, Event, GnssFixAcquired, GnssFixLost
from hardware.gnss.nmea import KIND, GnssReading


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

    def reading(self, r: GnssReading, now: float) -> list[Event]:
        out: list[Event] = []
        if self._since is None:
            self._since = now
        if self.stale:
            self.stale = False
            out.append(DeviceRecovered(device=self.device, device_type=KIND))
        self._last_time = now
        self.last_reading = r
        if r.fix:
            self._fix_run, self._nofix_run = self._fix_run + 1, 0
        else:
            self._fix_run, self._nofix_run = 0, self._nofix_run + 1
        if self.fix is not True and self._fix_run >= self.fix_confirm:
            self.fix = True
            out.append(GnssFixAcquired(device=self.device,
                                       satellites=r.satellites if r.satellites is not None else 0,
                                       quality=r.quality))
        elif self.fix is not False and self._nofix_run >= self.fix_confirm:
            self.fix = False
            out.append(GnssFixLost(device=self.device, reason=r.reason or "no fix"))
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
                out.append(ClockOffsetHigh(device=self.device,
                                           offset_ms=round(r.offset_ms, 3),
                                           threshold_ms=self.offset_threshold_ms))
            elif self.offset_high and self._low_run >= self.offset_confirm:
                self.offset_high = False
        return out

    def tick(self, now: float) -> list[Event]:
        if self._since is None:
            self._since = now
        last = self._last_time if self._last_time is not None else self._since
        silent = now - last
        if self.stale or silent < self.stale_after:
            return []
        self.stale = True
        self._fix_run = self._nofix_run = self._high_run = self._low_run = 0
        out: list[Event] = [DeviceStale(device=self.device, device_type=KIND,
                                        silent_s=round(silent, 3))]
        if self.fix is True:
            out.append(GnssFixLost(device=self.device,
                                   reason=f"no data from the receiver for {silent:.1f} s"))
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
