"""The devices a ``[hardware]`` config names, built for the hardware service: for each,
its driver's ``poll``, its sans-IO monitor and its polling interval
(:class:`daemon.hardware_service.Device`)."""

from __future__ import annotations

from typing import Any

from daemon.hardware_service import Device


def _closer(driver: Any) -> Any:
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
        from hardware.ups.driver import open_ups
        from hardware.ups.monitor import UpsMonitor

        ups = settings.ups
        driver = open_ups(ups.port, name="ups")
        monitor = UpsMonitor("ups", runtime_threshold_s=float(ups.runtime_threshold),
                             stale_after=float(ups.stale_after))
        devices.append(Device("ups", "ups", driver.poll, monitor, float(ups.interval), _closer(driver)))
    if settings.gnss is not None:
        from hardware.gnss.driver import make_source
        from hardware.gnss.monitor import GnssMonitor

        gnss = settings.gnss
        driver = make_source(gnss.port, baudrate=gnss.baud)
        monitor = GnssMonitor("gnss", offset_threshold_ms=float(gnss.offset_threshold) * 1000,
                              stale_after=float(gnss.stale_after))
        devices.append(Device("gnss", "gnss", driver.poll, monitor, 1.0, _closer(driver)))
    if settings.enclosure is not None:
        from hardware.enclosure.driver import DoorContact, ModbusSensor
        from hardware.enclosure.monitor import EnclosureMonitor

        enc = settings.enclosure
        if enc.port is not None:
            sensor = ModbusSensor(enc.port, unit=enc.slave, baudrate=enc.baud, name="enclosure")
            monitor = EnclosureMonitor("enclosure", temperature_high=enc.temperature_high,
                                       humidity_high=enc.humidity_high, stale_after=float(enc.stale_after),
                                       door=False)
            devices.append(Device("enclosure", "enclosure", sensor.poll, monitor, float(enc.interval),
                                  _closer(sensor)))
        if enc.door_port is not None:
            door = DoorContact(enc.door_port, line=enc.door_line, open_when=enc.door_open_when, name="door")
            monitor = EnclosureMonitor("enclosure", stale_after=float(enc.stale_after), climate=False)
            # The contact is polled fast: an opened door is news within a fraction of a second.
            devices.append(Device("door", "enclosure", door.poll, monitor, 0.2, _closer(door)))
    return devices
