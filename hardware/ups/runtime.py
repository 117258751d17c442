"""The battery runtime estimate of a Q1 UPS (sans-IO).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hardware.ups.q1 import Q1Status


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
        return float(self.runtime_high_s * (self.load_high / 100) ** self.exponent)


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
        return max(float((max(load_percent, 0.0) / 100) ** self.calibration.exponent), self.idle_load)

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
