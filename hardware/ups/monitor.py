"""UPS readings → events (sans-IO).
"""

from __future__ import annotations

from typing import Any

from daemon.core.events import (
    DeviceRecovered,
    DeviceStale,
    Event,
    UpsBatteryLow,
    UpsOnBattery,
    UpsOnline,
    UpsRuntimeBelow,
)
from hardware.ups.reading import KIND, UpsReading


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

    def reading(self, r: UpsReading, now: float) -> list[Event]:
        self._start(now)
        out: list[Event] = []
        if self.stale:
            self.stale = False
            out.append(DeviceRecovered(device=self.device, device_type=self.kind))
        self.last, self.last_at = r, now
        on_battery = r.on_battery
        if on_battery and self._on_battery is not True:
            out.append(UpsOnBattery(device=self.device, runtime_s=r.runtime_s))
        elif not on_battery and self._on_battery is True:
            out.append(UpsOnline(device=self.device))
        self._on_battery = on_battery
        if r.battery_low:
            if self._low_armed:
                self._low_armed = False
                out.append(UpsBatteryLow(device=self.device, battery_v=r.battery_v))
        elif not on_battery:
            self._low_armed = True
        threshold = self.runtime_threshold_s
        if not on_battery:
            self._runtime_armed = True
        elif threshold is not None and r.runtime_s is not None:
            if self._runtime_armed and r.runtime_s < threshold:
                self._runtime_armed = False
                out.append(UpsRuntimeBelow(device=self.device, runtime_s=r.runtime_s,
                                           threshold_s=threshold))
            elif not self._runtime_armed and r.runtime_s >= threshold + self.runtime_hysteresis_s:
                self._runtime_armed = True
        return out

    def silent_s(self, now: float) -> float:
        self._start(now)
        ref = self.last_at if self.last_at is not None else self._since
        assert ref is not None
        return max(0.0, now - ref)

    def tick(self, now: float) -> list[Event]:
        silent = self.silent_s(now)
        if not self.stale and silent >= self.stale_after:
            self.stale = True
            return [DeviceStale(device=self.device, device_type=self.kind, silent_s=silent)]
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
