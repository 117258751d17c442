"""One UPS reading (:class:`UpsReading`), from a Q1 status or from upsd's variables (sans-IO).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from hardware.errors import DeviceGarbage
from hardware.ups.q1 import Q1Status


KIND = "ups"

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
