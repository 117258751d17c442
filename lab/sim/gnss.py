"""The GNSS simulators (the lab's, never the daemon's): :class:`GnssSimulator` speaks the
receiver's side on a pty; :class:`FakeGpsd` is a tiny gpsd for tests and the lab.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import trio

from hardware.gnss.nmea import _iso, nmea_checksum, nmea_sentence


def _started(task_status: Any, value: Any = None) -> None:
    if task_status is not None:
        task_status.started(value)


# --- simulators -----------------------------------------------------------------------

_SIM_FIELDS = ("fix", "satellites", "quality", "fix_type", "clock_offset_ms", "garbage",
               "bad_checksum", "silent", "talker")
_SIM_PRNS = (2, 5, 7, 9, 13, 15, 18, 20, 23, 26, 29, 30)


@dataclass
class GnssSimState:
    fix: bool = True
    satellites: int = 8
    quality: int = 1  # GGA quality while fixed
    fix_type: int = 3  # GSA fix type while fixed
    clock_offset_ms: float = 0.0  # what the host should measure: host - stated UTC
    garbage: bool = False  # line noise and a truncated sentence before each epoch
    bad_checksum: bool = False  # every sentence with a wrong checksum
    silent: bool = False  # nothing at all
    talker: str = "GP"  # "GP" (GPS only) or "GN" (multi-constellation)


@dataclass
class GnssSimulator:
    """A receiver's side of a pty: a 1 Hz (``interval``) NMEA stream, scriptable.

    ``epoch(tick)`` builds the bytes of one epoch (sans-IO); :meth:`start` runs it in a
    thread, :meth:`run` as a trio task. The receiver states UTC ``tick -
    clock_offset_ms``, so a driver measures about ``clock_offset_ms`` plus the (small)
    delivery latency. The pty master is non-blocking: bytes nobody reads are dropped,
    as on a real serial line.
    """

    interval: float = 1.0
    state: GnssSimState = field(default_factory=GnssSimState)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.interval < 0.02:
            raise ValueError("simulator interval must be at least 0.02 s")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.epochs = 0
        self.dropped = 0
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation before a driver opens it
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)

    def set(self, **changes: Any) -> None:
        unknown = set(changes) - set(_SIM_FIELDS)
        if unknown:
            raise TypeError(f"unknown simulator state {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self.state, name, value)

    def epoch(self, tick: float) -> bytes:
        """The bytes a receiver sends for the epoch at host time ``tick``."""
        with self._lock:
            st = GnssSimState(**self.state.__dict__)
        if st.silent:
            return b""
        stated = datetime.fromtimestamp(tick - st.clock_offset_ms / 1000.0, tz=UTC)
        hms = f"{stated:%H%M%S}.{stated.microsecond // 10000:02d}"
        dmy = f"{stated:%d%m%y}"
        t, sats = st.talker, max(0, min(int(st.satellites), 99))
        if st.fix:
            prns = [f"{p:02d}" for p in _SIM_PRNS[:min(sats, 12)]] + [""] * (12 - min(sats, 12))
            bodies = [
                f"{t}RMC,{hms},A,4807.0380,N,01131.0000,E,0.02,,{dmy},,,A",
                f"{t}VTG,,T,,M,0.02,N,0.04,K,A",
                f"{t}GGA,{hms},4807.0380,N,01131.0000,E,{st.quality},{sats:02d},0.9,545.4,M,46.9,M,,",
                f"{t}GSA,A,{st.fix_type}," + ",".join(prns) + ",1.6,0.9,1.3",
            ]
        else:
            bodies = [
                f"{t}RMC,{hms},V,,,,,,,{dmy},,,N",
                f"{t}VTG,,,,,,,,,N",
                f"{t}GGA,{hms},,,,,0,{sats:02d},99.99,,,,,,",
                f"{t}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99",
            ]
        bodies.append("GPGSV,1,1,01,13,45,083,42")
        out = bytearray()
        if st.garbage:
            out += b"\x00\xfe\xff line noise \x13\r\n$GPGGA,1234"  # noise, then a cut-off line
        for body in bodies:
            cs = nmea_checksum(body) ^ (0x5A if st.bad_checksum else 0)
            out += nmea_sentence(body, checksum=cs)
        return bytes(out)

    def emit(self, tick: float) -> int:
        """Write one epoch to the pty; returns the bytes written (0 when dropped)."""
        data = self.epoch(tick)
        self.epochs += 1
        if not data:
            return 0
        try:
            return os.write(self._master, data)
        except (BlockingIOError, OSError):
            self.dropped += 1
            return 0

    def _next_tick(self) -> float:
        now = self.clock()
        return (math.floor(now / self.interval) + 1) * self.interval

    def _loop(self) -> None:
        while not self._stop.is_set():
            tick = self._next_tick()
            if self._stop.wait(max(0.0, tick - self.clock())):
                return
            self.emit(tick)

    def start(self) -> GnssSimulator:
        """Run in a daemon thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"gnss-sim {self.path}", daemon=True)
            self._thread.start()
        return self

    async def run(self, *, task_status: Any = None) -> None:
        """Run as a trio task (cancel it to stop; :meth:`close` separately)."""
        _started(task_status, self.path)
        while True:
            tick = self._next_tick()
            await trio.sleep(max(0.0, tick - self.clock()))
            self.emit(tick)

    def close(self) -> None:
        """Stop and remove the pty: a driver reading it sees the port disappear."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_simulator(*, interval: float = 1.0, **state: Any) -> GnssSimulator:
    """A new pty simulator, running in a thread (``.path`` is the port to give a driver)."""
    sim = GnssSimulator(interval=interval)
    if state:
        sim.set(**state)
    return sim.start()


@dataclass
class FakeGpsd:
    """A tiny gpsd: VERSION on connect, DEVICES and WATCH after ``?WATCH``, then SKY and
    TPV every ``interval`` seconds from the scripted state (``mode`` 0-3, ``status``,
    ``satellites``, ``clock_offset_ms``, ``silent``, ``garbage``)."""

    interval: float = 1.0
    mode: int = 3
    status: int = 1
    satellites: int = 8
    clock_offset_ms: float = 0.0
    silent: bool = False
    garbage: bool = False
    device: str = "/dev/ttyFAKE0"
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.port: int | None = None
        self.watchers = 0
        self.requests: list[bytes] = []

    def set(self, **changes: Any) -> None:
        for name, value in changes.items():
            if name not in ("mode", "status", "satellites", "clock_offset_ms", "silent", "garbage"):
                raise TypeError(f"unknown fake gpsd state {name!r}")
            setattr(self, name, value)

    def objects(self, tick: float) -> bytes:
        """The JSON lines gpsd sends for the epoch at host time ``tick``."""
        if self.silent:
            return b""
        stated = datetime.fromtimestamp(tick - self.clock_offset_ms / 1000.0, tz=UTC)
        sats = [{"PRN": p, "el": 45.0, "az": 83.0, "ss": 40.0, "used": i < self.satellites}
                for i, p in enumerate(_SIM_PRNS)]
        sky = {"class": "SKY", "device": self.device, "hdop": 0.9, "pdop": 1.6,
               "nSat": len(sats), "uSat": min(self.satellites, len(sats)), "satellites": sats}
        tpv: dict[str, Any] = {"class": "TPV", "device": self.device, "mode": self.mode}
        if self.status != 1:
            tpv["status"] = self.status
        if self.mode >= 1:
            tpv["time"] = _iso(stated)
            tpv["ept"] = 0.005
        if self.mode >= 2:
            tpv.update(lat=48.1173, lon=11.5167, eph=3.2, speed=0.01)
        if self.mode == 3:
            tpv.update(altHAE=592.1, altMSL=545.4, epv=5.1)
        out = b""
        if self.garbage:
            out += b"this is not json\r\n"
        return out + (json.dumps(sky) + "\r\n").encode() + (json.dumps(tpv) + "\r\n").encode()

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0, task_status: Any = None) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        _started(task_status, self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: Any) -> None:
        version = {"class": "VERSION", "release": "3.25", "rev": "3.25", "proto_major": 3, "proto_minor": 15}
        try:
            await stream.send_all((json.dumps(version) + "\r\n").encode())
            buf = b""
            while b"\n" not in buf and b";" not in buf:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
            self.requests.append(buf)
            if not buf.startswith(b"?WATCH="):
                await stream.send_all(b'{"class":"ERROR","message":"Unrecognized request"}\r\n')
                return
            self.watchers += 1
            devices = {"class": "DEVICES", "devices": [{"class": "DEVICE", "path": self.device,
                                                        "driver": "NMEA0183", "bps": 9600,
                                                        "parity": "N", "stopbits": 1, "cycle": 1.0}]}
            watch = {"class": "WATCH", "enable": True, "json": True, "nmea": False, "raw": 0,
                     "scaled": False, "timing": False, "split24": False, "pps": False}
            await stream.send_all((json.dumps(devices) + "\r\n" + json.dumps(watch) + "\r\n").encode())
            while True:
                now = self.clock()
                tick = (math.floor(now / self.interval) + 1) * self.interval
                await trio.sleep(max(0.0, tick - self.clock()))
                data = self.objects(tick)
                if data:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
