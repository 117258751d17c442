"""Serial devices and the watchdog of the hardened host (UPS, GNSS, enclosure sensors).

One package per device (:mod:`hardware.ups`, :mod:`hardware.gnss`, :mod:`hardware.enclosure`):
sans-IO modules (codec, protocol, readings, monitor; no trio) and one trio driver.
:mod:`hardware.devices` builds them from the config for the hardware service's device loop.
The simulators that speak the devices' side are the lab's (:mod:`lab.sim`).
"""
