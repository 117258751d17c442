"""The UPS simulators (the lab's, never the daemon's): :class:`Simulator`, a Megatec/Q1 UPS on
the master side of a pty, and :class:`FakeUpsd`, a tiny read-only ``upsd`` for tests and the lab.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import re
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import trio

from hardware.errors import DeviceGarbage
from hardware.ups.nut import quote_nut, split_nut_line
from hardware.ups.q1 import LineFramer, Q1Info, Q1Ratings, Q1Status, format_info, format_q1, format_ratings
from hardware.ups.reading import KIND


class _Ignored:
    """``task_status`` when nobody started us with ``nursery.start`` (trio's own sentinel
    would need trio at import time)."""

    def started(self, value: Any = None) -> None:
        pass


_IGNORED = _Ignored()


@dataclass
class UpsSimState:
    """What the simulated UPS reports. ``runtime_s`` (optional) models the battery: it
    counts down in real time while on battery, sets the battery voltage (2.0–2.27 V per
    cell against ``full_runtime_s``) and raises the battery-low bit at ``low_runtime_s`` —
    as a real UPS does; Q1 itself carries no runtime."""

    on_battery: bool = False
    battery_low: bool = False
    input_v: float = 230.0
    input_fault_v: float = 230.0
    output_v: float = 230.0
    load_percent: float = 20.0
    frequency_hz: float = 50.0
    battery_v: float = 2.27
    temperature_c: float = 30.0
    bypass_active: bool = False
    ups_failed: bool = False
    standby_type: bool = False
    test_in_progress: bool = False
    shutdown_active: bool = False
    beeper_on: bool = True
    runtime_s: float | None = None
    full_runtime_s: float = 1800.0
    low_runtime_s: float = 120.0
    ratings: Q1Ratings | None = field(default_factory=lambda: Q1Ratings(230.0, 0.0, 24.0, 50.0))
    info: Q1Info | None = field(default_factory=lambda: Q1Info("LIFELINE-SIM", "Q1-1000", "1.0"))


SIM_MODES = ("normal", "silent", "garbage")


class Simulator:
    """A Megatec/Q1 UPS on the master side of a pty; give the driver ``path``.

    Script it with :meth:`set` (any :class:`UpsSimState` field, plus ``mode``) or the
    shorthands :meth:`on_battery`, :meth:`online`, :meth:`battery_low`, :meth:`silent`,
    :meth:`garbage`, :meth:`normal`; :meth:`unplug` / :meth:`replug` make the port vanish
    and come back (with ``link``, a symlink that follows the new pty, as udev's
    /dev/serial/by-id links do). Run it with :meth:`start` (a thread) or :meth:`run` (a
    trio task). It answers Q1, F, I; takes Q, T, TL, T<n>, CT, S<n>[R<m>], C silently with
    their effect on the status bits; echoes anything else, as the protocol says.
    """

    kind = KIND

    def __init__(self, *, state: UpsSimState | None = None, link: str | None = None,
                 seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state or UpsSimState()
        self.mode = "normal"
        self.link = link
        self.clock = clock
        self.received: list[bytes] = []
        self._rng = random.Random(seed)
        self._framer = LineFramer()
        self._lock = threading.RLock()
        self._anchor = clock()
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._open_pty()

    # -- the pty

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR→LF, until the driver sets its own modes
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_path = os.ttyname(slave)
        if self.link is not None:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link)

    @property
    def path(self) -> str:
        return self.link if self.link is not None else str(self.slave_path)

    def unplug(self) -> None:
        """The port vanishes: the pty is closed (reads on the driver's side fail) and the
        link, if any, removed."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
            if self.link is not None and os.path.lexists(self.link):
                os.unlink(self.link)
            self._framer.clear()

    def replug(self) -> None:
        """The port comes back on a new pty (``path`` follows when a ``link`` is used)."""
        with self._lock:
            if self._master is None:
                self._open_pty()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.unplug()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scripting

    def remaining_runtime(self) -> float | None:
        with self._lock:
            runtime = self.state.runtime_s
            if runtime is None:
                return None
            if self.state.on_battery:
                runtime -= self.clock() - self._anchor
            return max(0.0, runtime)

    def set(self, **changes: Any) -> None:
        mode = changes.pop("mode", None)
        if mode is not None and mode not in SIM_MODES:
            raise ValueError(f"mode must be one of {', '.join(SIM_MODES)}")
        with self._lock:
            remaining = self.remaining_runtime()
            if remaining is not None and "runtime_s" not in changes:
                changes["runtime_s"] = remaining  # freeze the countdown at the change
            for key, value in changes.items():
                if not hasattr(self.state, key):
                    raise TypeError(f"no such UPS simulator setting: {key}")
                setattr(self.state, key, value)
            self._anchor = self.clock()
            if mode is not None:
                self.mode = mode

    def on_battery(self, runtime_s: float | None = None) -> None:
        changes: dict[str, Any] = {"on_battery": True}
        if runtime_s is not None:
            changes["runtime_s"] = runtime_s
        self.set(**changes)

    def online(self) -> None:
        self.set(on_battery=False, battery_low=False)

    def battery_low(self, low: bool = True) -> None:
        self.set(battery_low=low)

    def silent(self) -> None:
        self.set(mode="silent")

    def garbage(self) -> None:
        self.set(mode="garbage")

    def normal(self) -> None:
        self.set(mode="normal")

    # -- the device's side, sans-IO

    def q1_status(self) -> Q1Status:
        with self._lock:
            s = self.state
            remaining = self.remaining_runtime()
            battery_v = s.battery_v
            low = s.battery_low
            if remaining is not None:
                battery_v = round(2.0 + 0.27 * min(1.0, remaining / s.full_runtime_s), 2)
                low = low or (s.on_battery and remaining <= s.low_runtime_s)
            return Q1Status(
                input_v=0.0 if s.on_battery else s.input_v,
                input_fault_v=0.0 if s.on_battery else s.input_fault_v,
                output_v=s.output_v, load_percent=s.load_percent,
                frequency_hz=0.0 if s.on_battery else s.frequency_hz,
                battery_v=battery_v, temperature_c=s.temperature_c,
                utility_fail=s.on_battery, battery_low=low, bypass_active=s.bypass_active,
                ups_failed=s.ups_failed, standby_type=s.standby_type,
                test_in_progress=s.test_in_progress, shutdown_active=s.shutdown_active,
                beeper_on=s.beeper_on)

    def _garbage(self) -> bytes:
        rng = self._rng
        choice = rng.randrange(3)
        if choice == 0:  # line noise
            noise = bytes(rng.choice(b"\x00\xff()#@Q1 0123456789.\x1b") for _ in range(rng.randrange(1, 40)))
            return noise.replace(b"\r", b"") + b"\r"
        frame = format_q1(self.q1_status())
        if choice == 1:  # a truncated frame
            return frame[: rng.randrange(1, len(frame) - 10)] + b"\r"
        return frame[:-9] + b"0x201100\r"  # bad status bits

    def answer(self, command: bytes) -> bytes:
        """One command line (without its CR) → the bytes the UPS sends back."""
        with self._lock:
            self.received.append(command)
            if self.mode == "silent":
                return b""
            if self.mode == "garbage":
                return self._garbage()
            text = command.decode("ascii", "replace")
            s = self.state
            if text == "Q1":
                return format_q1(self.q1_status())
            if text == "F" and s.ratings is not None:
                return format_ratings(s.ratings)
            if text == "I" and s.info is not None:
                return format_info(s.info)
            if text == "Q":
                s.beeper_on = not s.beeper_on
                return b""
            if re.fullmatch(r"T|TL|T\d\d", text):
                s.test_in_progress = True
                return b""
            if text == "CT":
                s.test_in_progress = False
                return b""
            if re.fullmatch(r"S(\.\d|\d\d)(R\d{4})?", text):
                s.shutdown_active = True
                return b""
            if text == "C":
                s.shutdown_active = False
                return b""
            return command + b"\r"

    def feed(self, data: bytes) -> bytes:
        """Bytes from the host → bytes back (every complete command answered)."""
        with self._lock:
            return b"".join(self.answer(line) for line in self._framer.feed(data))

    # -- running

    def _write(self, fd: int, data: bytes) -> None:
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                select.select([], [fd], [], 0.05)
                continue
            data = data[n:]

    def _service(self) -> bool:
        """Read what is there, answer it; False when there was nothing."""
        with self._lock:
            fd = self._master
            if fd is None:
                return False
            try:
                data = os.read(fd, 1024)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    return False
                raise
            reply = self.feed(data)
            if reply:
                try:
                    self._write(fd, reply)
                except OSError:
                    pass
            return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            fd = self._master
            if fd is None:
                self._stop.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
            except (OSError, ValueError):  # closed under us by unplug()
                continue
            if ready:
                self._service()

    def start(self) -> Simulator:
        """Serve in a daemon thread (until :meth:`close`)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="ups-sim", daemon=True)
            self._thread.start()
        return self

    async def run(self) -> None:
        """Serve as a trio task (until cancelled); do not also :meth:`start` it."""
        while True:
            fd = self._master
            if fd is None:
                await trio.sleep(0.02)
                continue
            with trio.move_on_after(0.1):  # re-check: unplug() may swap the fd
                try:
                    await trio.lowlevel.wait_readable(fd)
                except (OSError, trio.ClosedResourceError):
                    await trio.sleep(0.02)
                    continue
            self._service()


def start_simulator() -> Simulator:
    """A new simulated Q1 UPS on a new pty, served from a thread; ``.path`` for the driver."""
    return Simulator().start()


class FakeUpsd:
    """A tiny ``upsd``: the read-only part of the network protocol (``LIST UPS``,
    ``LIST VAR``, ``GET VAR``, ``VER``, ``NETVER``, ``LOGOUT``) for one UPS, scriptable.

    ``variables`` are served as they are; :meth:`set` with ``on_battery=``, ``battery_low=``,
    ``runtime_s=``, ``charge=``, or any NUT variable with ``_`` for ``.`` (``ups_status="WAIT"``);
    ``mode``: ``normal``, ``stale`` (``ERR DATA-STALE``), ``silent`` (reads, never answers),
    ``garbage``. :meth:`serve` runs it in a trio task; :meth:`stop` drops it like a dying upsd.
    """

    kind = KIND

    def __init__(self, ups: str = "ups", variables: dict[str, str] | None = None) -> None:
        self.ups = ups
        self.variables: dict[str, str] = variables if variables is not None else {
            "device.mfr": "LIFELINE", "device.model": "FAKE-UPSD", "ups.status": "OL",
            "battery.charge": "100", "battery.runtime": "1800", "battery.voltage": "27.3",
            "input.voltage": "230.0", "output.voltage": "230.0", "ups.load": "20",
            "input.frequency": "50.0", "ups.temperature": "30.0",
        }
        self.mode = "normal"
        self.port: int | None = None
        self.connections = 0
        self.requests: list[str] = []
        self._scope: Any = None

    def set(self, *, on_battery: bool | None = None, battery_low: bool | None = None,
            runtime_s: float | None = None, charge: float | None = None, mode: str | None = None,
            **variables: str) -> None:
        tokens = self.variables.get("ups.status", "OL").split()
        if on_battery is not None:
            tokens = [t for t in tokens if t not in ("OL", "OB")]
            tokens.insert(0, "OB" if on_battery else "OL")
        if battery_low is not None:
            tokens = [t for t in tokens if t != "LB"] + (["LB"] if battery_low else [])
        self.variables["ups.status"] = " ".join(tokens)
        if runtime_s is not None:
            self.variables["battery.runtime"] = f"{runtime_s:.0f}"
        if charge is not None:
            self.variables["battery.charge"] = f"{charge:.0f}"
        for key, value in variables.items():
            self.variables[key.replace("_", ".")] = value
        if mode is not None:
            if mode not in ("normal", "stale", "silent", "garbage"):
                raise ValueError("mode must be normal, stale, silent or garbage")
            self.mode = mode

    def respond(self, line: str) -> list[str] | None:
        """One request → the answer lines (None: say nothing)."""
        self.requests.append(line)
        if self.mode == "silent":
            return None
        if self.mode == "garbage":
            return ['VAR "unterminated']
        try:
            words = split_nut_line(line)
        except DeviceGarbage:
            return ["ERR INVALID-ARGUMENT"]
        if words == ["VER"]:
            return ["Network UPS Tools upsd 2.8.1 - lifeline fake"]
        if words == ["NETVER"]:
            return ["1.3"]
        if words == ["LIST", "UPS"]:
            return ["BEGIN LIST UPS", f'UPS {self.ups} "lifeline fake UPS"', "END LIST UPS"]
        if len(words) >= 3 and words[0] in ("LIST", "GET") and words[1] == "VAR":
            if words[2] != self.ups:
                return ["ERR UNKNOWN-UPS"]
            if self.mode == "stale":
                return ["ERR DATA-STALE"]
            if words[0] == "LIST" and len(words) == 3:
                return ([f"BEGIN LIST VAR {self.ups}"]
                        + [f"VAR {self.ups} {k} {quote_nut(v)}" for k, v in self.variables.items()]
                        + [f"END LIST VAR {self.ups}"])
            if words[0] == "GET" and len(words) == 4:
                value = self.variables.get(words[3])
                if value is None:
                    return ["ERR VAR-NOT-SUPPORTED"]
                return [f"VAR {self.ups} {words[3]} {quote_nut(value)}"]
        return ["ERR INVALID-ARGUMENT"]

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = bytearray()
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end]).rstrip(b"\r").decode("utf-8", "replace")
                    del buf[: end + 1]
                    if line.strip() == "LOGOUT":
                        await stream.send_all(b"OK Goodbye\n")
                        return
                    answer = self.respond(line)
                    if answer:
                        await stream.send_all("".join(a + "\n" for a in answer).encode("utf-8"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0, task_status: Any = _IGNORED) -> None:
        """Listen (port 0: any free port; ``task_status.started(port)``) until :meth:`stop`
        or cancellation; stopping drops every connection, as a dying upsd does."""
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle, port, host=host))
                self.port = listeners[0].socket.getsockname()[1]
                task_status.started(self.port)
        self._scope = None

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
