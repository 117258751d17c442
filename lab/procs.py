"""Real lifeline processes for the lab and the tests, started the way systemd starts them.

:class:`NotifyListener` plays systemd's side of sd_notify: a datagram socket whose path
goes into the child's ``$NOTIFY_SOCKET``; every datagram is kept with its arrival time.
:class:`DaemonProcess` starts ``lifeline run`` with it, waits for ``READY=1``, and stops
it with SIGTERM, recording how long each took and the exit code.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

ROOT = Path(__file__).resolve().parents[1]


def until(predicate: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout``
    seconds pass (None). For what only a real process exposes (a status, a file, a
    route): nothing tells us when that changes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)


def journal_records(client: Any, start: int = 1, page: int = 10_000) -> Iterator[tuple[dict[str, Any], bytes]]:
    """A daemon's journal from ``start`` on, read page by page with ``journal.read`` on a
    connected :class:`daemon.core.control_client.ControlClient`: each record as answered,
    with its payload as bytes."""
    while True:
        records = client.call("journal.read", {"from": start, "limit": page})["records"]
        if not records:
            return
        for r in records:
            yield r, (r["payload"].encode() if "payload" in r else base64.b64decode(r["payload_b64"]))
        start = int(records[-1]["seq"]) + 1


def quiet_system() -> dict[str, Any]:
    """The ``[system]`` section of a daemon the lab or a test starts on a shared machine:
    daemons, writers and drills share its CPUs, so the host-health breaker (which has
    tests of its own) must not trip on their load."""
    return {"interval": "1s", "sustain": "1h", "cpu_threshold": 1.0, "memory_threshold": 1.0,
            "disk_threshold": 1.0, "temperature_threshold_c": 150.0}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a listener the lab
    or a test starts on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Notification:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]


class NotifyListener:
    """A bound AF_UNIX datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._own_dir: Path | None = None
        if len(str(self.path).encode()) > 100:
            # A deep work directory: bind in a short one instead (sun_path holds 108 bytes).
            self._own_dir = Path(tempfile.mkdtemp(prefix="lifeline-notify-"))
            self.path = self._own_dir / "notify.sock"
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[Notification] = []
        # Once the pump runs it is the only reader of the socket; everyone else waits on
        # this condition for what it received. (Sharing the socket under a lock starved
        # the other readers: the pump retook the lock in a tight loop, and a stop()
        # waiting to drain took 69 s once and hung the next time.)
        self._arrived = threading.Condition()
        #: How many of ``messages`` poll() has handed out: poll returns the next one after
        #: that, also when the pump received it before poll was called.
        self._polled = 0
        self._pump: threading.Thread | None = None
        self._closed = False

    def start_pump(self) -> None:
        """Keep receiving in a background thread: the kernel queues only about ten
        datagrams per socket (net.unix.max_dgram_qlen), so a daemon running for minutes
        under a drill that is not reading would see its notifications refused."""
        if self._pump is None:
            self._pump = threading.Thread(target=self._run_pump, name="notify-pump", daemon=True)
            self._pump.start()

    def _run_pump(self) -> None:
        while not self._closed:
            try:
                self._receive(0.2)
            except OSError:
                return

    def _receive(self, timeout: float) -> Notification | None:
        """One datagram from the socket within ``timeout`` seconds (the reading thread only)."""
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return None
        fields = {}
        for line in data.decode("utf-8", "replace").split("\n"):
            key, _, value = line.partition("=")
            if key:
                fields[key] = value
        note = Notification(time.monotonic(), fields)
        with self._arrived:
            self.messages.append(note)
            self._arrived.notify_all()
        return note

    def poll(self, timeout: float) -> Notification | None:
        """The next datagram within ``timeout`` seconds, or None: read from the socket, or,
        once the pump runs, the next one the pump receives."""
        if self._closed:
            return None
        if self._pump is None:
            note = self._receive(timeout)
            self._polled = len(self.messages)
            return note
        with self._arrived:
            if self._arrived.wait_for(lambda: len(self.messages) > self._polled or self._closed, timeout):
                if len(self.messages) > self._polled:
                    self._polled += 1
                    return self.messages[self._polled - 1]
            return None

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> Notification | None:
        """Wait until a message with ``key`` (= ``value``) arrives; already-received ones count
        (also those the pump thread received)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._arrived:
                received = list(self.messages)
            for note in received:
                if key in note.fields and (value is None or note.fields[key] == value):
                    return note
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.poll(min(left, 0.05))

    def drain(self, duration: float) -> None:
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self.poll(left)

    def with_key(self, key: str) -> list[Notification]:
        return [n for n in self.messages if key in n.fields]

    def close(self) -> None:
        self._closed = True
        with self._arrived:
            self._arrived.notify_all()
        if self._pump is not None:
            self._pump.join(1.0)
        self.sock.close()
        self.path.unlink(missing_ok=True)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)


@dataclass
class DaemonProcess:
    """One `lifeline run` child process, started as systemd would start it."""

    config: Path
    workdir: Path
    watchdog_usec: int | None = 2_000_000
    env: Mapping[str, str] = field(default_factory=dict)
    argv_prefix: list[str] = field(default_factory=lambda: [sys.executable, "-m", "daemon.cli"])

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.notify = NotifyListener(self.workdir / "notify.sock")
        self.stderr_path = self.workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after: float | None = None
        self.stopped_after: float | None = None
        self.exit_code: int | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        env.pop("WATCHDOG_PID", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        else:
            env.pop("WATCHDOG_USEC", None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr = open(self.stderr_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.argv_prefix, "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, env=env,
        )

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """True once READY=1 arrived; False if the process died or the time ran out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            note = self.notify.wait_for("READY", "1", timeout=min(left, 0.2))
            if note is not None:
                self.ready_after = note.at - self.started_at
                self.notify.start_pump()
                return True
            if self.proc.poll() is not None:
                return False
        return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, return the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            began = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout)
                self.stopped_after = time.monotonic() - began
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = None
        else:
            self.exit_code = self.proc.returncode
        self.notify.drain(0.05)
        self._stderr.close()
        return self.exit_code

    def log_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


class WitnessProcess:
    """One `lifeline witness` child process on 127.0.0.1, for the loopback drills and the
    tests. The first start takes a free port; a restart keeps the address and the state
    file, as systemd restarts it. Every incarnation appends to ``witness.log``."""

    def __init__(self, root: Path, key_file: Path, *, state: Path | None = None) -> None:
        self.root = root
        self.key_file = key_file
        self.state = state or root / "witness.json"
        self.log = root / "witness.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 20.0) -> str:
        """Start it and wait for its ``witness.listening`` line; returns "HOST:PORT".
        TimeoutError (with the log's tail) when it does not listen in time."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.address = self.address or f"127.0.0.1:{free_port()}"
        ready_before = self.log_text().count("witness.listening")
        with open(self.log, "ab") as out:
            proc = self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "witness", "--listen", self.address, "--state",
                 str(self.state), "--key-file", str(self.key_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT)
        if not until(lambda: self.log_text().count("witness.listening") > ready_before or proc.poll() is not None,
                     timeout) or proc.poll() is not None:
            self.stop()
            raise TimeoutError(f"the witness did not listen on {self.address} within {timeout:g} s:\n"
                               f"{self.log_text()[-1500:]}")
        return self.address

    def stop(self) -> None:
        """SIGKILL (a crash, or the end of the test: the state file is what matters)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
