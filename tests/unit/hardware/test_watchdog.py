"""The watchdog against a simulated device: a FIFO carries the real bytes (keepalive
writes, the magic 'V'); only the timeout ioctls, which a FIFO cannot answer, are
simulated. Never opens a real /dev/watchdog (opening one starts it)."""

from __future__ import annotations

import errno
import logging
import os
import platform
from pathlib import Path
from typing import Any

import pytest

from hardware import watchdog as wd
from hardware.watchdog import (
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETTIMEOUT,
    LinuxWatchdog,
    NullWatchdog,
    WatchdogError,
    open_watchdog,
)


class FifoDevice:
    """The device side: a FIFO whose read end is open (non-blocking) before the
    watchdog opens it, so its O_WRONLY open does not block and every byte is kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.received = b""

    def read(self) -> bytes:
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.received += chunk
        return self.received

    def close(self) -> None:
        os.close(self._fd)


class SimulatedWatchdog(LinuxWatchdog):
    """Answers SETTIMEOUT/GETTIMEOUT like a driver with a granularity of ``step``
    seconds; everything else goes to the real ioctl (ENOTTY on a FIFO)."""

    def __init__(self, path: Path, *, required: bool = True, step: int = 1,
                 keepalive_error: int | None = None) -> None:
        super().__init__(path, required=required)
        self.step = step
        self.keepalive_error = keepalive_error
        self.device_timeout = 60
        self.calls: list[int] = []

    def _ioctl(self, request: int, value: int) -> int:
        self.calls.append(request)
        if request == WDIOC_SETTIMEOUT:
            self.device_timeout = -(-value // self.step) * self.step
            return self.device_timeout
        if request == WDIOC_GETTIMEOUT:
            return self.device_timeout
        if request == WDIOC_KEEPALIVE and self.keepalive_error is not None:
            raise OSError(self.keepalive_error, os.strerror(self.keepalive_error))
        return super()._ioctl(request, value)


@pytest.fixture
def device(tmp_path: Path) -> Any:
    dev = FifoDevice(tmp_path / "watchdog")
    yield dev
    dev.close()


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "event", "") for r in caplog.records if r.name == "lifeline.watchdog"]


@pytest.mark.skipif(platform.machine().startswith(("mips", "ppc", "powerpc", "sparc")),
                    reason="other ioctl encoding")
def test_ioctl_numbers_match_linux_watchdog_h() -> None:
    assert WDIOC_KEEPALIVE == 0x80045705
    assert WDIOC_SETTIMEOUT == 0xC0045706
    assert WDIOC_GETTIMEOUT == 0x80045707


def test_arm_keepalive_disarm_writes_keepalives_then_magic_v(device: FifoDevice) -> None:
    dog = SimulatedWatchdog(device.path)
    assert not dog.armed
    dog.arm(1)
    assert dog.armed and dog.working
    assert dog.details()["timeout_s"] == 1
    for _ in range(3):
        dog.keepalive()
    assert device.read() == b"111"          # each keepalive reached the device as it happened
    dog.disarm()
    assert device.read() == b"111V"         # 'V' exactly once, last
    assert not dog.armed
    assert dog.keepalives == 3
    # The keepalive ioctl was tried once (ENOTTY on a FIFO), then writes only.
    assert dog.calls.count(WDIOC_KEEPALIVE) == 1
    dog.disarm()                            # idempotent: nothing more written
    assert device.read() == b"111V"


def test_close_without_disarm_never_writes_v(device: FifoDevice, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    dog = SimulatedWatchdog(device.path)
    dog.arm(2)
    dog.keepalive()
    dog.keepalive()
    dog.close_without_disarm()
    assert not dog.armed
    assert device.read() == b"11"
    assert "watchdog.left_armed" in events(caplog)


def test_rearm_after_disarm_reopens(device: FifoDevice) -> None:
    dog = SimulatedWatchdog(device.path)
    dog.arm(1)
    dog.disarm()
    dog.arm(1)
    dog.keepalive()
    dog.disarm()
    assert device.read() == b"V1V"


def test_missing_device_names_the_path_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "no-such-watchdog"
    dog = open_watchdog("required", path)   # nothing opened yet
    with pytest.raises(WatchdogError) as info:
        dog.arm(1)
    assert str(path) in str(info.value)
    assert "driver" in str(info.value)
    assert not dog.armed and not dog.working


@pytest.mark.parametrize("kind", ["fifo", "regular"])
def test_a_file_that_is_not_a_watchdog_fails_arm_through_the_real_ioctl(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        dev = FifoDevice(tmp_path / "fifo")
        path = dev.path
    else:
        path = tmp_path / "file"
        path.write_bytes(b"")
    dog = LinuxWatchdog(path)
    with pytest.raises(WatchdogError) as info:
        dog.arm(1)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOTTY
    assert "is not a watchdog" in str(info.value) and str(path) in str(info.value)
    # It was opened (which would have started a real one), so it was magic-closed.
    assert not dog.armed
    written = dev.read() if kind == "fifo" else path.read_bytes()
    assert written == b"V"
    if kind == "fifo":
        dev.close()


def test_driver_that_cannot_go_as_low_is_refused_and_stopped(device: FifoDevice) -> None:
    dog = SimulatedWatchdog(device.path, step=30)
    with pytest.raises(WatchdogError, match="30s timeout, asked for 1s"):
        dog.arm(1)
    assert not dog.armed
    assert device.read() == b"V"


def test_busy_device_says_who_else_may_hold_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def busy(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(wd.os, "open", busy)
    with pytest.raises(WatchdogError, match="RuntimeWatchdogSec"):
        LinuxWatchdog(tmp_path / "watchdog").arm(1)


def test_optional_mode_logs_and_swallows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    dog = open_watchdog("optional", tmp_path / "missing")
    assert isinstance(dog, LinuxWatchdog)
    dog.arm(1)
    assert not dog.armed and not dog.working
    assert "watchdog.arm_failed" in events(caplog)
    assert dog.details()["last_error"] and str(tmp_path / "missing") in dog.details()["last_error"]
    dog.keepalive()        # not armed: nothing to do, nothing raised
    dog.disarm()
    dog.close_without_disarm()


def test_optional_mode_failed_keepalive_stops_the_device(device: FifoDevice) -> None:
    dog = SimulatedWatchdog(device.path, required=False, keepalive_error=errno.EIO)
    dog.arm(1)
    dog.keepalive()
    assert not dog.armed and not dog.working
    assert device.read() == b"V"


def test_required_mode_failed_keepalive_raises_and_stays_armed(device: FifoDevice) -> None:
    dog = SimulatedWatchdog(device.path, keepalive_error=errno.EIO)
    dog.arm(1)
    with pytest.raises(WatchdogError, match="keepalive failed"):
        dog.keepalive()
    assert dog.armed                          # a reset is coming; do not cancel it
    dog.close_without_disarm()
    assert device.read() == b""


def test_keepalive_before_arm_is_a_bug_when_required(tmp_path: Path) -> None:
    with pytest.raises(WatchdogError, match="not armed"):
        LinuxWatchdog(tmp_path / "watchdog").keepalive()


def test_off_mode_never_opens_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_open(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("off mode opened a device")

    monkeypatch.setattr(wd.os, "open", no_open)
    dog = open_watchdog("off", tmp_path / "missing")
    assert isinstance(dog, NullWatchdog)
    dog.arm(1)
    dog.keepalive()
    dog.disarm()
    dog.close_without_disarm()
    assert not dog.armed and not dog.working
    assert dog.details()["mode"] == "off"


def test_construction_opens_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_open(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("opened at construction")

    monkeypatch.setattr(wd.os, "open", no_open)
    open_watchdog("required", tmp_path / "watchdog")
    open_watchdog("optional", tmp_path / "watchdog")


@pytest.mark.parametrize("timeout", [0, -1, 1.5, 70000, True])
def test_arm_wants_whole_seconds(tmp_path: Path, timeout: Any) -> None:
    with pytest.raises(ValueError):
        LinuxWatchdog(tmp_path / "watchdog").arm(timeout)


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_watchdog("sometimes", tmp_path)  # type: ignore[arg-type]
