"""The hardware package's errors: one line each, naming the port and what to do."""

from __future__ import annotations

from daemon.core.errors import LifelineError


class HardwareError(LifelineError):
    """Base of the hardware errors."""


class DeviceTimeout(HardwareError):
    """The device did not answer in time."""


class DeviceGarbage(HardwareError):
    """The device answered something its protocol does not allow."""


class PortMissing(HardwareError):
    """The serial port (or network endpoint) is not there."""
