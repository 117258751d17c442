"""Register maps and presets (sans-IO): :class:`RegisterMap` turns registers into a
:class:`ClimateReading`; :class:`DoorReading` is the contact's state.

Default register map
--------------------
``xy-md02``: the common SHT20-based RS-485 modules (XY-MD02, XY-MD01, "SHT20 RS485
temperature humidity sensor"): 9600 8N1, unit 1, input registers (function 04),
register 0x0001 temperature ×10 signed (two's complement: 0xFF33 = -20.5 °C),
0x0002 humidity ×10. ``01 04 00 01 00 02 20 0B`` → ``01 04 04 01 31 02 22 2A CE`` =
30.5 °C, 54.6 %RH. Other sensors: give the map in config (see :meth:`RegisterMap.from_config`),
e.g. the ``l-com-srth100`` preset (holding registers, 0x0000 temperature ×10 signed,
0x0001 humidity ×10). Addresses are the 0-based addresses on the wire (a manual's
"register 30002" or "40001"-style number minus the prefix and minus one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hardware.errors import DeviceGarbage
from hardware.enclosure.modbus import (
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    RegistersReply,
    RtuReadTransaction,
    read_request,
)


#: The ``kind`` of DeviceStale/DeviceRecovered (the service's device kinds: the sensor and
#: the door contact are separate ports, polled and failing apart).
KIND_CLIMATE = "enclosure"
KIND_DOOR = "door"


# --- register map and readings ---------------------------------------------------------


@dataclass(frozen=True)
class Register:
    """One 16-bit register: wire address (0-based), scale to the unit, signedness."""

    address: int
    scale: float = 0.1
    signed: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"register address must be 0..65535, got {self.address}")
        if not self.scale > 0:
            raise ValueError(f"register scale must be > 0, got {self.scale}")

    def decode(self, raw: int) -> float:
        value = raw - 0x10000 if self.signed and raw & 0x8000 else raw
        return round(value * self.scale, 9)

    def encode(self, value: float) -> int:
        raw = round(value / self.scale)
        low, high = (-0x8000, 0x7FFF) if self.signed else (0, 0xFFFF)
        if not low <= raw <= high:
            raise ValueError(f"{value} does not fit a {'signed' if self.signed else 'unsigned'} register "
                             f"at scale {self.scale:g}")
        return raw & 0xFFFF


#: A reading outside these ranges is a wrong map (scale, signedness) or a broken probe,
#: not a temperature: it is refused as garbage, so a silent fault goes stale, never "ok".
PLAUSIBLE_C = (-60.0, 150.0)
PLAUSIBLE_PERCENT = (-1.0, 101.0)


@dataclass(frozen=True)
class ClimateReading:
    celsius: float
    humidity_percent: float | None
    registers: dict[int, int] = field(default_factory=dict)  # wire address → raw value, as read

    def as_dict(self) -> dict[str, Any]:
        return {"celsius": self.celsius, "humidity_percent": self.humidity_percent,
                "registers": {str(k): v for k, v in self.registers.items()}}


@dataclass(frozen=True)
class DoorReading:
    open: bool
    line: str
    asserted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"door": "open" if self.open else "closed", "line": self.line, "asserted": self.asserted}


@dataclass(frozen=True)
class RegisterMap:
    """Where a sensor keeps its values. The default is the ``xy-md02`` map (module doc)."""

    name: str = "xy-md02"
    unit: int = 1
    function: int = READ_INPUT_REGISTERS
    temperature: Register = Register(1, 0.1, signed=True)
    humidity: Register | None = Register(2, 0.1, signed=False)

    def __post_init__(self) -> None:
        address, count = self.span()
        read_request(self.unit, self.function, address, count)  # validates, raises ValueError
        if self.humidity is not None and self.humidity.address == self.temperature.address:
            raise ValueError("temperature and humidity cannot share a register")

    def _registers(self) -> list[Register]:
        return [self.temperature] + ([self.humidity] if self.humidity is not None else [])

    def span(self) -> tuple[int, int]:
        """(first address, count): one read covering every register of the map."""
        addresses = [r.address for r in self._registers()]
        return min(addresses), max(addresses) - min(addresses) + 1

    def transaction(self) -> RtuReadTransaction:
        return RtuReadTransaction(self.unit, self.function, *self.span())

    def decode(self, reply: RegistersReply, where: str = "sensor") -> ClimateReading:
        celsius = self.temperature.decode(reply.register(self.temperature.address))
        percent = None if self.humidity is None else self.humidity.decode(reply.register(self.humidity.address))
        if not PLAUSIBLE_C[0] <= celsius <= PLAUSIBLE_C[1]:
            raise DeviceGarbage(f"{where}: implausible temperature {celsius:g} °C "
                                f"(raw {reply.register(self.temperature.address):#06x}): "
                                "check the register map's address, scale and signedness, or the probe")
        if percent is not None and not PLAUSIBLE_PERCENT[0] <= percent <= PLAUSIBLE_PERCENT[1]:
            assert self.humidity is not None
            raise DeviceGarbage(f"{where}: implausible humidity {percent:g} % "
                                f"(raw {reply.register(self.humidity.address):#06x}): "
                                "check the register map's address and scale, or the probe")
        registers = {reply.address + i: v for i, v in enumerate(reply.values)}
        return ClimateReading(celsius=celsius, humidity_percent=percent, registers=registers)

    def encode(self, celsius: float, percent: float | None) -> dict[int, int]:
        """Register values a sensor with this map shows for these readings (simulator)."""
        out = {self.temperature.address: self.temperature.encode(celsius)}
        if self.humidity is not None:
            out[self.humidity.address] = self.humidity.encode(percent if percent is not None else 0.0)
        return out

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> RegisterMap:
        """A map from a config table: ``preset`` (default ``xy-md02``) and overrides:
        ``unit``, ``function`` (3/4), ``temperature_register``, ``temperature_scale``,
        ``temperature_signed``, ``humidity_register`` (``-1`` = the sensor has none),
        ``humidity_scale``, ``humidity_signed``. Raises ValueError naming the key."""
        known = {"preset", "unit", "function", "temperature_register", "temperature_scale",
                 "temperature_signed", "humidity_register", "humidity_scale", "humidity_signed"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown register-map key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        preset_name = table.get("preset", "xy-md02")
        if preset_name not in PRESETS:
            raise ValueError(f"unknown register-map preset {preset_name!r}; known: {', '.join(sorted(PRESETS))}")
        base = PRESETS[preset_name]

        def get(key: str, kind: type, default: Any) -> Any:
            value = table.get(key, default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"register-map {key} must be {kind.__name__}, got {value!r}")
            return value

        temperature = Register(get("temperature_register", int, base.temperature.address),
                               get("temperature_scale", float, base.temperature.scale),
                               get("temperature_signed", bool, base.temperature.signed))
        hbase = base.humidity or Register(0)
        humidity_address = get("humidity_register", int, base.humidity.address if base.humidity else -1)
        humidity = None if humidity_address == -1 else Register(
            humidity_address, get("humidity_scale", float, hbase.scale), get("humidity_signed", bool, hbase.signed))
        name = preset_name if set(table) <= {"preset"} else f"{preset_name}+custom"
        return replace(base, name=name, unit=get("unit", int, base.unit), function=get("function", int, base.function),
                       temperature=temperature, humidity=humidity)


PRESETS: dict[str, RegisterMap] = {
    # SHT20 RS-485 modules (XY-MD02/XY-MD01): input registers 1, 2; ×10; temperature signed.
    "xy-md02": RegisterMap(),
    # L-com SRTH100 and look-alikes: holding registers 0 (temperature ×10 signed), 1 (humidity ×10).
    "l-com-srth100": RegisterMap(name="l-com-srth100", function=READ_HOLDING_REGISTERS,
                                 temperature=Register(0, 0.1, signed=True), humidity=Register(1, 0.1)),
}
DEFAULT_MAP = PRESETS["xy-md02"]
