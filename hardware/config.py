"""The hardware's config section: ``[hardware]`` with its devices and watchdog."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from daemon.core.config import option
from daemon.core.durations import Duration, format_duration


@dataclass(frozen=True)
class UpsConfig:
    port: str = option(doc='The UPS: a serial port speaking Megatec/Q1 ("/dev/ttyUSB0", any pyserial URL), or '
                       'a NUT upsd ("nut://127.0.0.1:3493/ups").')
    interval: Duration = option(Duration(2.0), doc="Time between polls.", above=0)
    stale_after: Duration = option(Duration(10.0), doc="No answer for this long: the UPS is stale (an event), "
                                   "never assumed healthy.", above=0)
    runtime_threshold: Duration = option(Duration(300.0), doc="UpsRuntimeBelow when the estimated battery "
                                         "runtime falls below this.", above=0)


@dataclass(frozen=True)
class GnssConfig:
    port: str = option(doc='The time receiver: a serial port with NMEA 0183 ("/dev/ttyACM0") or a gpsd '
                       '("gpsd://127.0.0.1:2947").')
    baud: int = option(9600, doc="Serial speed (4800 for older receivers).", min=300, max=921600)
    stale_after: Duration = option(Duration(5.0), doc="No sentence for this long: the receiver is stale.", above=0)
    offset_threshold: Duration = option(Duration(1.0), doc="ClockOffsetHigh when the receiver's UTC and the "
                                        "host clock differ by more (a rough check; chrony keeps time).", above=0)


@dataclass(frozen=True)
class EnclosureConfig:
    port: str | None = option(None, doc='The Modbus RTU temperature/humidity sensor\'s port ("/dev/ttyUSB1").')
    slave: int = option(1, doc="The sensor's Modbus address.", min=1, max=247)
    baud: int = option(9600, doc="Serial speed of the RS-485 line.", min=300, max=921600)
    interval: Duration = option(Duration(5.0), doc="Time between sensor reads.", above=0)
    stale_after: Duration = option(Duration(30.0), doc="No reading for this long: the sensor is stale.", above=0)
    temperature_high: float = option(45.0, doc="EnclosureTemperatureHigh above this, degrees Celsius.")
    humidity_high: float = option(80.0, doc="EnclosureHumidityHigh above this, percent.", min=0, max=100)
    door_port: str | None = option(None, doc='The serial port whose modem-status line the door contact is '
                                   'wired to ("/dev/ttyS0").')
    door_line: Literal["cts", "dsr", "cd"] = option("cts", doc="Which modem-status line.")
    door_open_when: Literal["asserted", "deasserted"] = option(
        "deasserted", doc='"deasserted": a closed door closes the circuit (a cut wire reads as open).')

    def validate(self) -> list[tuple[str, str]]:
        if self.port is None and self.door_port is None:
            return [("port", "set port (the sensor) or door_port (the door contact), or remove [hardware.enclosure]")]
        return []


@dataclass(frozen=True)
class HardwareWatchdogConfig:
    device: Path = option(Path("/dev/watchdog"), doc="The watchdog device, fed from the daemon's main loop.")
    timeout: Duration = option(Duration(10.0), doc="Reboot the host if the daemon has not fed it for this long "
                               "(whole seconds).", above=0)

    def validate(self) -> list[tuple[str, str]]:
        if float(self.timeout) != int(self.timeout):
            return [("timeout", f"the Linux watchdog counts whole seconds, found {format_duration(self.timeout)}")]
        return []


@dataclass(frozen=True)
class HardwareConfig:
    ups: UpsConfig | None = option(None, doc="The UPS (absent: none).")
    gnss: GnssConfig | None = option(None, doc="The GNSS time receiver (absent: none).")
    enclosure: EnclosureConfig | None = option(None, doc="Enclosure sensors and door contact (absent: none).")
    watchdog: HardwareWatchdogConfig | None = option(
        None, doc="Feed the hardware watchdog from the main loop (absent: not opened). Not with "
        "[standby.lease] watchdog, which feeds the same device only while primary.")


class HardwareSettings(Protocol):
    """What the hardware service reads of the root config (:class:`daemon.config.Config` is one)."""

    @property
    def hardware(self) -> HardwareConfig | None: ...
