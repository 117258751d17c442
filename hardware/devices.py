"""The devices a ``[hardware]`` config names, built for the hardware service: for each,
its driver's ``poll``, its sans-IO monitor, its polling interval and its reconnect
backoff (:class:`Device`; the one loop that polls them all is
:func:`hardware.service.device_loop`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Awaitable, Callable

from hardware.enclosure.driver import DoorContact, ModbusSensor
from hardware.enclosure.monitor import EnclosureMonitor
from hardware.gnss.driver import make_source
from hardware.gnss.monitor import GnssMonitor
from hardware.ups.driver import open_ups
from hardware.ups.monitor import UpsMonitor

#: The longest wait between two attempts to reopen a missing port (or connection).
BACKOFF_MAX_S = 30.0


@dataclasses.dataclass
class Device:
    """One configured device: how to poll it, its monitor, and what it last said.

    ``note(error, reading=..., retry_s=...)``, when given, is told each poll's outcome
    (``error`` None for a reading), so the driver can log its own state changes. After a
    :class:`~hardware.errors.PortMissing` (or another error that is not a timeout or
    garbage) the next poll waits ``backoff_initial`` (default: the interval), doubling up to
    ``backoff_max``; the monitor is still ticked every interval meanwhile.
    """

    kind: str                      # ups | gnss | enclosure | door
    name: str                      # the config name (the events' ``device``)
    poll: Callable[[], Awaitable[Any]]
    monitor: Any
    interval: float
    close: Callable[[], Awaitable[None]] | None = None
    note: Callable[..., None] | None = None
    backoff_initial: float | None = None
    backoff_max: float = BACKOFF_MAX_S
    reading: dict[str, Any] | None = None
    read_at: float | None = None
    error: str | None = None
    stale: bool = False
    polls: int = 0
    failures: int = 0


def _closer(driver: Any) -> Any:
    # The driver families differ: the UPS and GNSS drivers close with ``aclose()`` (async) or
    # ``close()`` (sync), the enclosure's with ``close()``; this one closer serves them all.
    async def close() -> None:
        closing = getattr(driver, "aclose", None) or getattr(driver, "close", None)
        if closing is not None:
            result = closing()
            if hasattr(result, "__await__"):
                await result

    return close


def build_devices(settings: Any) -> list[Device]:
    """``settings``: a :class:`daemon.config.HardwareConfig`."""
    devices: list[Device] = []
    if settings.ups is not None:
        ups = settings.ups
        driver = open_ups(ups.port, name="ups")
        monitor = UpsMonitor("ups", runtime_threshold_s=float(ups.runtime_threshold),
                             stale_after=float(ups.stale_after))
        devices.append(Device("ups", "ups", driver.poll, monitor, float(ups.interval), _closer(driver),
                              note=driver.note))
    if settings.gnss is not None:
        gnss = settings.gnss
        source = make_source(gnss.port, baudrate=gnss.baud)
        gnss_monitor = GnssMonitor("gnss", offset_threshold_ms=float(gnss.offset_threshold) * 1000,
                                   stale_after=float(gnss.stale_after))
        devices.append(Device("gnss", "gnss", source.poll, gnss_monitor, 1.0, _closer(source), note=source.note))
    if settings.enclosure is not None:
        enc = settings.enclosure
        if enc.port is not None:
            sensor = ModbusSensor(enc.port, unit=enc.slave, baudrate=enc.baud, name="enclosure")
            climate = EnclosureMonitor("enclosure", temperature_high=enc.temperature_high,
                                       humidity_high=enc.humidity_high, stale_after=float(enc.stale_after),
                                       door=False)
            devices.append(Device("enclosure", "enclosure", sensor.poll, climate, float(enc.interval),
                                  _closer(sensor), note=sensor.note))
        if enc.door_port is not None:
            door = DoorContact(enc.door_port, line=enc.door_line, open_when=enc.door_open_when, name="door")
            door_monitor = EnclosureMonitor("enclosure", stale_after=float(enc.stale_after), climate=False)
            # The contact is polled fast: an opened door is news within a fraction of a second.
            devices.append(Device("door", "enclosure", door.poll, door_monitor, 0.2, _closer(door),
                                  note=door.note))
    return devices
