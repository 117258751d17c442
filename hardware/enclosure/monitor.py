"""Enclosure readings → events (sans-IO): thresholds, hysteresis, door debounce, staleness.
"""

from __future__ import annotations

from typing import Any

from daemon.core.events import (
    DeviceRecovered,
    DeviceStale,
    EnclosureClosed,
    EnclosureHumidityHigh,
    EnclosureOpened,
    EnclosureTemperatureHigh,
    Event,
)
from hardware.enclosure.registers import KIND_CLIMATE, KIND_DOOR, ClimateReading, DoorReading


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

    def seen(self, now: float) -> list[Event]:
        out: list[Event] = []
        if self.stale:
            out.append(DeviceRecovered(device=self.device, device_type=self.kind))
            self.stale = False
        self.last = now
        return out

    def tick(self, now: float) -> list[Event]:
        if self.since is None:
            self.since = now
        reference = self.last if self.last is not None else self.since
        silent = now - reference
        if self.stale or silent < self.stale_after:
            return []
        self.stale = True
        return [DeviceStale(device=self.device, device_type=self.kind, silent_s=round(silent, 3))]


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

    def reading(self, r: ClimateReading | DoorReading, now: float) -> list[Event]:
        if isinstance(r, ClimateReading):
            return self._climate_reading(r, now)
        if isinstance(r, DoorReading):
            return self._door_reading(r, now)
        raise TypeError(f"EnclosureMonitor cannot use a {type(r).__name__}")

    def _climate_reading(self, r: ClimateReading, now: float) -> list[Event]:
        if self._climate is None:
            raise ValueError(f"{self.device}: a climate reading, but the monitor was built with climate=False")
        out = self._climate.seen(now)
        self.last_climate = r
        if self._temperature.step(r.celsius):
            out.append(EnclosureTemperatureHigh(device=self.device, celsius=r.celsius,
                                                threshold_c=self._temperature.high))
        if r.humidity_percent is not None and self._humidity.step(r.humidity_percent):
            out.append(EnclosureHumidityHigh(device=self.device, percent=r.humidity_percent,
                                             threshold_percent=self._humidity.high))
        return out

    def _door_reading(self, r: DoorReading, now: float) -> list[Event]:
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
            out.append(EnclosureOpened(device=self.device) if r.open else EnclosureClosed(device=self.device))
        return out

    def tick(self, now: float) -> list[Event]:
        out: list[Event] = []
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
