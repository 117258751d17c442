"""The hardware watchdog: reboots a primary that hangs before its lease can pass on.

A primary that stops renewing fences itself, but a primary that *hangs* (kernel stall,
swap storm, stuck in D state) cannot fence anything. The watchdog covers that case: it
is armed before PROMOTE with a timeout below ``ttl - safety_margin`` and fed only right
after a successful renewal (daemon/standby/roles.py), so a hung primary is reset before
the standby may take the lease.

Kernel facts this relies on (Documentation/watchdog/watchdog-api.rst, uapi linux/watchdog.h):

* Opening the device starts the timer, so the device is opened in :meth:`arm`, never at
  import or construction. Only one process may hold it (``EBUSY``): either the daemon or
  systemd's ``RuntimeWatchdogSec=`` / watchdog(8), not both.
* Writing ``V`` and then closing stops it ("magic close"). Closing without it leaves the
  timer running, which is what a crash must do: the host reboots unless a restarted
  daemon reopens and feeds the device in time. Drivers without ``WDIOF_MAGICCLOSE`` stop
  on any close, and a ``nowayout`` driver never stops (a clean stand-down then reboots
  the host too): check ``/sys/class/watchdog/watchdog0/`` before relying on either path.

The device calls are blocking but each is one ioctl or one byte, so they run on the trio
thread: a worker thread would add a failure mode (a keepalive queued behind a stuck thread)
and save nothing.

Access: the daemon runs as root; otherwise a udev rule such as
``KERNEL=="watchdog*", GROUP="lifeline", MODE="0660"`` grants it. The systemd unit's
``DevicePolicy=closed`` allows only ``DeviceAllow=/dev/watchdog rw``: a different
``watchdog_device`` (``/dev/watchdog1``) needs its own ``DeviceAllow=`` line.
"""

from __future__ import annotations

import abc
import array
import errno
import fcntl
import os
import platform
from pathlib import Path
from typing import Any, Literal

from daemon.core.log import get_logger
from hardware.errors import HardwareError

log = get_logger("watchdog")

# linux/ioctl.h: _IOC(dir, type, nr, size). mips, powerpc and sparc use other direction
# bits and a 13-bit size field; x86 and arm use the generic layout.
if platform.machine().startswith(("mips", "ppc", "powerpc", "sparc")):
    _IOC_WRITE, _IOC_READ, _IOC_SIZEBITS = 4, 2, 13
else:
    _IOC_WRITE, _IOC_READ, _IOC_SIZEBITS = 1, 2, 14
_INT_SIZE = array.array("i").itemsize


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    return (direction << (16 + _IOC_SIZEBITS)) | (size << 16) | (ord(kind) << 8) | nr


WDIOC_KEEPALIVE = _ioc(_IOC_READ, "W", 5, _INT_SIZE)                 # 0x80045705 on x86/arm
WDIOC_SETTIMEOUT = _ioc(_IOC_READ | _IOC_WRITE, "W", 6, _INT_SIZE)  # 0xC0045706
WDIOC_GETTIMEOUT = _ioc(_IOC_READ, "W", 7, _INT_SIZE)               # 0x80045707

# errnos meaning "this ioctl is not here": not a watchdog, or an old/limited driver.
_UNSUPPORTED = (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)

WatchdogMode = Literal["off", "optional", "required"]


class WatchdogError(HardwareError):
    """The watchdog cannot protect this host; the message names the device and the fix."""


class Watchdog(abc.ABC):
    """What the role shell needs: arm before PROMOTE, feed after each renewal, disarm on
    a clean stand-down, and leave it armed on a crash path."""

    @abc.abstractmethod
    def arm(self, timeout_s: int) -> None: ...

    @abc.abstractmethod
    def keepalive(self) -> None: ...

    @abc.abstractmethod
    def disarm(self) -> None: ...

    @abc.abstractmethod
    def close_without_disarm(self) -> None: ...

    @property
    @abc.abstractmethod
    def armed(self) -> bool: ...

    @property
    @abc.abstractmethod
    def working(self) -> bool:
        """True when the device would reset a hung host (for status and metrics)."""

    @abc.abstractmethod
    def details(self) -> dict[str, Any]: ...


class NullWatchdog(Watchdog):
    """``watchdog = "off"``: never touches any device."""

    def arm(self, timeout_s: int) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def disarm(self) -> None:
        pass

    def close_without_disarm(self) -> None:
        pass

    @property
    def armed(self) -> bool:
        return False

    @property
    def working(self) -> bool:
        return False

    def details(self) -> dict[str, Any]:
        return {"mode": "off", "armed": False, "working": False}


class LinuxWatchdog(Watchdog):
    """A Linux watchdog device (``/dev/watchdog``).

    ``required=False`` ("optional") logs and swallows every failure instead of raising:
    the host then runs without the hung-primary guarantee, and ``working`` says so. A
    failed keepalive in that mode also magic-closes the device, so a broken watchdog
    cannot reset a healthy primary that was told it may run without one.
    """

    def __init__(self, path: str | os.PathLike[str], *, required: bool = True) -> None:
        self.path = Path(path)
        self.required = required
        self._fd: int | None = None
        self._timeout_s: int | None = None
        self._keepalive_by_write = False
        self.keepalives = 0
        self.last_error: str | None = None

    # -- interface

    @property
    def armed(self) -> bool:
        return self._fd is not None

    @property
    def working(self) -> bool:
        return self.armed and self.last_error is None

    def arm(self, timeout_s: int) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or not 1 <= timeout_s <= 0xFFFF:
            raise ValueError(f"watchdog timeout must be whole seconds in 1..65535, got {timeout_s!r}")
        self.last_error = None
        try:
            if self._fd is None:
                self._fd = self._open()
            actual = self._set_timeout(timeout_s)
        except WatchdogError as exc:
            self._stop_after_failed_arm()
            self._fail("watchdog.arm_failed", exc)
            return
        self._timeout_s = actual
        log.info("watchdog.armed", device=str(self.path), timeout_s=actual, requested_s=timeout_s)

    def keepalive(self) -> None:
        if self._fd is None:
            if self.required:
                raise WatchdogError(f"{self.path}: keepalive on a watchdog that is not armed (a bug: arm first)")
            return
        try:
            if not self._keepalive_by_write:
                try:
                    self._ioctl(WDIOC_KEEPALIVE, 0)
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    # Old or limited drivers: any write is a keepalive.
                    self._keepalive_by_write = True
                    log.info("watchdog.keepalive_by_write", device=str(self.path), errno=errno.errorcode.get(
                        exc.errno or 0, exc.errno))
            if self._keepalive_by_write:
                os.write(self._fd, b"1")
        except OSError as exc:
            if self.required:  # leave it armed: a primary that cannot feed it must not outlive it
                error = WatchdogError(f"{self.path}: keepalive failed ({exc.strerror}): the host resets within "
                                      f"{self._timeout_s}s unless one succeeds")
            else:
                error = WatchdogError(f"{self.path}: keepalive failed ({exc.strerror}): device stopped")
                self.disarm()
            self._fail("watchdog.keepalive_failed", error)
            return
        self.keepalives += 1

    def disarm(self) -> None:
        """Magic close: only when we stop being primary on purpose and are not hung."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, b"V")
        except OSError as exc:
            os.close(fd)
            log.error("watchdog.disarm_failed", device=str(self.path), error=exc.strerror,
                      consequence="the host resets when the timeout runs out")
            return
        os.close(fd)
        log.info("watchdog.disarmed", device=str(self.path))

    def close_without_disarm(self) -> None:
        """Close, leaving the timer running: the crash path, where a reset is the point."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        log.warning("watchdog.left_armed", device=str(self.path), timeout_s=self._timeout_s,
                    consequence="the host resets unless the device is reopened and fed")

    def details(self) -> dict[str, Any]:
        return {"mode": "required" if self.required else "optional", "device": str(self.path),
                "armed": self.armed, "working": self.working, "timeout_s": self._timeout_s,
                "keepalives": self.keepalives, "last_error": self.last_error}

    # -- device

    def _ioctl(self, request: int, value: int) -> int:
        """One int-argument ioctl; returns the int the kernel wrote back. Tests simulate a
        watchdog's timeout ioctls by overriding this."""
        assert self._fd is not None
        buf = array.array("i", [value])
        fcntl.ioctl(self._fd, request, buf, True)
        return buf[0]

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            fix = {
                errno.ENOENT: "load the board's watchdog driver (iTCO_wdt, sp5100_tco, ...; softdog for tests) "
                              "or correct lease.watchdog_device",
                errno.EACCES: "run as root, or grant access with a udev rule (KERNEL==\"watchdog*\", "
                              "GROUP=\"lifeline\", MODE=\"0660\") and DeviceAllow= in the systemd unit",
                errno.EBUSY: "another process holds it (systemd RuntimeWatchdogSec=, watchdog(8), "
                             "wd_keepalive): only one may; stop that one or set lease.watchdog = \"off\"",
            }.get(exc.errno or 0, 'check the device, or set lease.watchdog = "off"')
            if exc.errno == errno.EPERM:
                fix = "the systemd unit's DevicePolicy= must allow it: DeviceAllow=" + str(self.path) + " rw"
            raise WatchdogError(f"cannot open watchdog {self.path}: {exc.strerror}: {fix}") from exc

    def _set_timeout(self, timeout_s: int) -> int:
        try:
            self._ioctl(WDIOC_SETTIMEOUT, timeout_s)
            actual = self._ioctl(WDIOC_GETTIMEOUT, 0)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
                why = "is not a watchdog, or its driver cannot set a timeout"
            elif exc.errno == errno.EINVAL:
                why = f"refuses a {timeout_s}s timeout (outside its range)"
            else:
                why = f"failed to set its timeout ({exc.strerror})"
            raise WatchdogError(f"watchdog {self.path} {why}: choose another lease.watchdog_device or "
                                f"lease.watchdog_timeout, or set lease.watchdog = \"off\"") from exc
        if actual > timeout_s or actual <= 0:
            # A longer timeout would let a hung primary live past its lease: useless here.
            raise WatchdogError(f"watchdog {self.path} runs a {actual}s timeout, asked for {timeout_s}s: its "
                                f"driver cannot go that low; raise lease.ttl or use another device")
        return actual

    def _stop_after_failed_arm(self) -> None:
        # Opened (so started) but not usable: stop it, or it resets a host nobody feeds.
        if self._fd is not None:
            self.disarm()

    def _fail(self, event: str, error: WatchdogError) -> None:
        self.last_error = str(error)
        if self.required:
            log.error(event, device=str(self.path), error=str(error))
            raise error
        log.warning(event, device=str(self.path), error=str(error), mode="optional",
                    consequence="running without a hardware watchdog")


def open_watchdog(mode: WatchdogMode, path: str | os.PathLike[str]) -> Watchdog:
    """``off``: a no-op; ``optional``: failures logged, never raised; ``required``:
    :meth:`Watchdog.arm` raises :class:`WatchdogError`, so the node refuses to become
    primary. Nothing is opened here either way."""
    if mode == "off":
        return NullWatchdog()
    if mode in ("optional", "required"):
        return LinuxWatchdog(path, required=mode == "required")
    raise ValueError(f'watchdog mode must be "off", "optional" or "required", got {mode!r}')
