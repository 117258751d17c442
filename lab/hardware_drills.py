"""The hardware drills: a simulated device event, timed to the daemon's reaction.

    lifeline drill power [--repeat N] [--json] [--workdir DIR]
    lifeline drill enclosure [--repeat N] [--json] [--workdir DIR]

Both run on loopback (no namespaces, no root needed) with real ``lifeline run``
processes, started as systemd starts them, and signed playbooks: each drill makes two
operator keys (``lifeline keys new``), a keyring with threshold 2 (``lifeline keyring
init``), copies the shipped playbook from ``recovery/playbooks`` and signs it with both
keys (``lifeline playbook sign``) — the path an operator takes.

power
    A witness (``lifeline witness``) and two daemons with ``[standby.lease]`` and
    ``[recovery]`` (``ups-on-battery.toml``). edge-a has ``[hardware.ups]`` on a UPS
    simulator's pty (:class:`lab.sim.ups.Simulator`, polled every 200 ms) and is started
    first, so it takes the lease; edge-b follows it as its synchronous standby. A writer
    (the trading engine stand-in of :mod:`lab.ha_drills`) appends through the
    primary's control socket and follows the role. Then the simulated UPS goes on
    battery. From that moment (CLOCK_MONOTONIC):

    The fault falls at a random phase of the 200 ms polls. Event times are their arrival
    on the drill's ``events.subscribe`` feed of the primary (so a few ms after the
    daemon's own ``RoleChanged.monotonic_ns``, which ``fenced_ms`` uses).

    * ``detection_ms``: until ``UpsOnBattery`` arrives;
    * ``playbook_ms``: until ``PlaybookStarted(ups-on-battery)``;
    * ``fenced_ms``: until edge-a's ``RoleChanged`` away from primary (its own
      ``monotonic_ns``; the playbook's ``standby.demote``);
    * ``handover_ms``: until the writer's first ``ok`` from edge-b (primary, trading).

    Then: acknowledged records missing from edge-b's journal (must be 0) and the overlap
    of the two nodes' primary intervals (must be 0). Targets: detection < 1000 ms (two
    poll intervals, 400 ms, plus the margin of a loaded machine), handover < 5 s.

enclosure
    One daemon with ``[recovery]`` (``enclosure-door-opened.toml``) and
    ``[hardware.enclosure]``: the Modbus sensor on the enclosure simulator's pty and the
    door contact on CTS. A pty has no modem lines, so the drill serves pyserial's
    ``loop://`` port over RFC 2217 (:class:`serial.rfc2217.PortManager`, as pyserial's
    examples/rfc2217_server.py does) on 127.0.0.1 and the daemon opens
    ``rfc2217://127.0.0.1:PORT``: the loop port's CTS follows its RTS, so the drill
    dropping RTS on its side is the door opening (``door_open_when = "deasserted"``: a
    closed door closes the circuit). From that moment:

    * ``detection_ms``: until ``EnclosureOpened`` (the door is polled every 200 ms and
      debounced over 0.5 s by the monitor, so ~0.5-0.9 s is expected);
    * ``playbook_ms``: until ``PlaybookStarted(enclosure-door-opened)``;
    * ``notice_ms``: until its notify step's ``PlaybookNotice``.

    The door is closed again (and ``EnclosureClosed`` awaited) between repetitions; the
    playbook's 2 min cooldown is why each repetition runs a fresh daemon. Target:
    detection < 1500 ms, notice < 3000 ms.

The exit code is 0 only when every repetition met the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from daemon.standby.keys import generate_replication_key, generate_witness_key
from hardware.enclosure.driver import read_door_once
from lab.drills import add_report_argument, percentile, run_drill_command
from lab.figures import SERIES, TARGETS_MS
from lab.ha_drills import Node, RoleLog, Writer, overlap_ns, primary_intervals
from lab.pair import LEASE_TIMINGS, REPLICATION_TIMERS
from lab.procs import DaemonProcess, WitnessProcess, free_port, quiet_system, until
from lab.replay_engine import feed_lines
from lab.sim.enclosure import EnclosureSimulator
from lab.sim.ups import Simulator

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOKS = ROOT / "recovery" / "playbooks"
DRILLS = ("power", "enclosure")
UPS_INTERVAL = "200ms"

Progress = Callable[[str], None]


class DrillError(Exception):
    """A repetition could not be carried out."""


# --------------------------------------------------------------------------- helpers


def _cli(*args: str, timeout: float = 30) -> str:
    result = subprocess.run([sys.executable, "-m", "daemon.cli", *args], check=False, capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    if result.returncode != 0:
        raise DrillError(f"lifeline {' '.join(args[:2])} exited {result.returncode}: "
                         f"{(result.stderr or result.stdout).strip()[:800]}")
    return result.stdout


def signed_playbooks(root: Path, names: list[str], extra: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Two operator keys, a threshold-2 keyring, and ``names`` copied from
    recovery/playbooks and signed by both: (playbooks dir, keyring)."""
    keys, books = root / "keys", root / "playbooks"
    keys.mkdir(parents=True, exist_ok=True)
    books.mkdir(parents=True, exist_ok=True)
    for operator in ("alice", "bob"):
        _cli("keys", "new", "--name", operator, "--out", str(keys))
    keyring = root / "keyring.toml"
    _cli("keyring", "init", "--threshold", "2", "--key", str(keys / "alice.pub"), "--key", str(keys / "bob.pub"),
         "--out", str(keyring))
    for name in names:
        shutil.copy(PLAYBOOKS / f"{name}.toml", books / f"{name}.toml")
    for name, text in (extra or {}).items():
        (books / f"{name}.toml").write_text(text)
    for name in [*names, *(extra or {})]:
        for operator in ("alice", "bob"):
            _cli("playbook", "sign", str(books / f"{name}.toml"), "--key", str(keys / f"{operator}.key"))
    return books, keyring


class EventWatch:
    """A node's ``events.subscribe`` feed, each event stamped with CLOCK_MONOTONIC (ns)
    on arrival here."""

    def __init__(self, socket_path: Path) -> None:
        self._client = ControlClient(socket_path, timeout=5).connect()
        self._client.call("events.subscribe", {})
        self._cond = threading.Condition()
        self.events: list[tuple[int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="event-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    line = self._client.read_line(timeout=0.5)
                except TimeoutError:
                    continue
                event = line.get("event")
                if event is None:
                    continue
                with self._cond:
                    self.events.append((time.monotonic_ns(), event))
                    self._cond.notify_all()
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self._client.close()

    def wait(self, kind: str, *, after_ns: int, timeout: float,
             match: Callable[[dict[str, Any]], bool] = lambda e: True) -> int | None:
        """CLOCK_MONOTONIC (ns) of the first ``kind`` event arrived after ``after_ns``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, event in self.events:
                    if at >= after_ns and event.get("kind") == kind and match(event):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class HwNode(Node):
    """A daemon of the drill: :class:`lab.ha_drills.Node` (calls, records, stop)
    with more config sections and started directly (loopback, no namespace)."""

    def __init__(self, name: str, root: Path, standby: dict[str, Any] | None, extra: dict[str, Any]) -> None:
        super().__init__(name, root, standby or {})
        self.extra = extra

    def config(self) -> dict[str, Any]:
        data = super().config()
        if not self.settings:
            del data["standby"]
        data.update(self.extra)
        return data

    def launch(self) -> None:
        if self.proc is not None:
            self.proc.close()
        self.incarnation += 1
        workdir = self.root / f"proc{self.incarnation}"
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "lifeline.toml"
        path.write_text(dump_toml(self.config()))
        self.proc = DaemonProcess(config=path, workdir=workdir, watchdog_usec=None)
        self.proc.start()


class Witness(WitnessProcess):
    """``lifeline witness`` on 127.0.0.1, listening once constructed (else a DrillError)."""

    def __init__(self, root: Path, key: Path) -> None:
        super().__init__(root, key)
        try:
            self.start(20)
        except TimeoutError as exc:
            raise DrillError(str(exc)) from None


class Rfc2217Loop:
    """A ``loop://`` serial port served over RFC 2217 on 127.0.0.1 (pyserial's
    PortManager, as in its examples/rfc2217_server.py), one client at a time. The loop
    port's CTS follows its RTS: :meth:`set_line` is the contact at the far end."""

    def __init__(self) -> None:
        import serial

        self.serial = serial.serial_for_url("loop://", timeout=0.05, do_not_open=True)
        self.serial.open()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"rfc2217://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._manager: Any = None
        self.clients = 0
        self._thread = threading.Thread(target=self._serve, name="rfc2217-loop", daemon=True)
        self._thread.start()

    def set_line(self, asserted: bool) -> None:
        """Drive the line the client reads as CTS (RTS of the loop), and notify now."""
        with self._lock:
            self.serial.rts = asserted
            if self._manager is not None:
                with contextlib.suppress(OSError):
                    self._manager.check_modem_lines()

    def _serve(self) -> None:
        from serial import rfc2217

        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.clients += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(0.05)
            send_lock = threading.Lock()

            class Connection:
                def write(self, data: bytes, conn: socket.socket = conn, lock: threading.Lock = send_lock) -> None:
                    with lock:
                        conn.sendall(data)

            with self._lock:
                self._manager = rfc2217.PortManager(self.serial, Connection())
            try:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(1024)
                    except TimeoutError:
                        data = None
                    if data == b"":
                        break  # the client went away
                    with self._lock:
                        if data:
                            out = b"".join(self._manager.filter(data))
                            if out:
                                self.serial.write(out)
                        echoed = self.serial.read(self.serial.in_waiting) if self.serial.in_waiting else b""
                        if echoed:
                            Connection().write(b"".join(self._manager.escape(echoed)))
                        self._manager.check_modem_lines()
            except OSError:
                pass
            finally:
                with self._lock:
                    self._manager = None
                conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self.serial.close()


# --------------------------------------------------------------------------- figures


@dataclass
class Repetition:
    index: int
    figures: dict[str, float | None] = field(default_factory=dict)
    acked: int = 0
    lost: int = 0
    overlap_ms: float | None = None
    primary: str = ""
    fenced_role: str | None = None
    path: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class HardwareReport:
    drill: str
    repeat: int
    repetitions: list[Repetition] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    workdir: str = ""
    door_unavailable: str | None = None

    def series(self, name: str) -> list[float]:
        return [v for r in self.repetitions if (v := r.figures.get(name)) is not None]

    def rep_ok(self, rep: Repetition) -> bool:
        if rep.errors or any(rep.figures.get(k) is None for k in SERIES[self.drill]):
            return False
        if any(rep.figures[k] >= limit for k, limit in TARGETS_MS[self.drill].items()):  # type: ignore[operator]
            return False
        if self.drill == "power":
            return rep.lost == 0 and rep.overlap_ms == 0 and rep.acked > 0
        return True

    @property
    def ok(self) -> bool:
        return (not self.errors and len(self.repetitions) == self.repeat
                and all(self.rep_ok(r) for r in self.repetitions))

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"drill": self.drill, "repeat": len(self.repetitions)}
        for name in SERIES[self.drill]:
            values = [r.figures.get(name) for r in self.repetitions]
            out[name] = [round(v, 1) if v is not None else None for v in values]
            present = [v for v in values if v is not None]
            if present:
                stem = name.removesuffix("_ms")
                out[f"{stem}_p50_ms"] = round(percentile(present, 50), 1)
                out[f"{stem}_max_ms"] = round(max(present), 1)
        out["targets_ms"] = dict(TARGETS_MS[self.drill])
        if self.drill == "power":
            out["ups_interval_ms"] = 200
            out["acked_records"] = sum(r.acked for r in self.repetitions)
            out["lost_acked_records"] = sum(r.lost for r in self.repetitions)
            out["overlap_ms"] = [round(r.overlap_ms, 3) if r.overlap_ms is not None else None
                                 for r in self.repetitions]
        else:
            paths = sorted({r.path for r in self.repetitions})
            out["path"] = paths[0] if len(paths) == 1 else paths
            out["event"] = "EnclosureOpened" if out["path"] == "door" else "EnclosureTemperatureHigh"
            out["door_over_rfc2217"] = ("ok" if self.door_unavailable is None
                                        else f"unavailable: {self.door_unavailable}")
            out["enclosure_interval_ms"] = 200
        out["errors"] = self.errors + [f"repetition {r.index}: {e}" for r in self.repetitions for e in r.errors]
        if self.workdir:
            out["workdir"] = self.workdir
        return out


def _ms(start_ns: int, end_ns: int | None) -> float | None:
    return None if end_ns is None else (end_ns - start_ns) / 1e6


def _fmt(ms: float | None) -> str:
    return "MISSED" if ms is None else f"{ms:.0f} ms"


# --------------------------------------------------------------------------- power


def power_repetition(index: int, root: Path, books: Path, keyring: Path, lines: Any, progress: Progress
                     ) -> Repetition:
    rep = Repetition(index)
    root.mkdir(parents=True, exist_ok=True)
    key = root / "replication.key"
    generate_replication_key(key)
    witness_key = root / "witness.key"  # the witness's own key, not the replication key
    generate_witness_key(witness_key)
    witness: Witness | None = None
    # Each host has its own UPS; the primary's goes on battery.
    sims = {"edge-a": Simulator().start(), "edge-b": Simulator().start()}
    nodes: dict[str, HwNode] = {}
    roles = RoleLog()
    watch: EventWatch | None = None
    writer: Writer | None = None
    try:
        witness = Witness(root / "witness", witness_key)
        lease = {"backend": "witness", "witness": witness.address, "cluster": "drill",
                 "witness_key_file": str(witness_key), **LEASE_TIMINGS}
        ports = {"edge-a": free_port(), "edge-b": free_port()}
        for name, other in (("edge-a", "edge-b"), ("edge-b", "edge-a")):
            standby = {"key_file": str(key), "listen": f"127.0.0.1:{ports[name]}",
                       "peer": f"127.0.0.1:{ports[other]}", "mode": "sync", "on_standby_loss": "degrade-to-async",
                       **REPLICATION_TIMERS, "journal": {"fsync": "always", "segment_bytes": 1024 * 1024},
                       "lease": lease}
            extra: dict[str, Any] = {"system": quiet_system(),
                                     "recovery": {"playbooks": str(books), "keyring": str(keyring)},
                                     "hardware": {"ups": {"port": sims[name].path, "interval": UPS_INTERVAL}}}
            nodes[name] = HwNode(name, root / name, standby, extra)
        # A cold start: both at once; whichever takes the lease is the primary.
        for node in nodes.values():
            node.launch()
        for node in nodes.values():
            node.wait_ready(30)
        state: dict[str, Any] = {}

        def settled() -> bool:
            statuses = {n: node.try_call("role.status") or {} for n, node in nodes.items()}
            state["statuses"] = statuses
            primaries = [n for n, st in statuses.items() if st.get("role") == "primary"]
            if len(primaries) != 1 or not statuses[primaries[0]].get("accepting_appends"):
                return False
            p = primaries[0]
            q = "edge-b" if p == "edge-a" else "edge-a"
            stats = nodes[p].try_call("journal.stats") or {}
            if (statuses[q].get("role") != "standby" or (statuses[q].get("lease") or {}).get("sync_node") != q
                    or not stats.get("replication", {}).get("in_sync")):
                return False
            state["pair"] = (p, q)
            return True

        if not until(settled, 30):
            raise DrillError("no primary with a synchronous standby within 30 s; role.status: "
                             + json.dumps(state.get("statuses"), default=str)[:1500])
        pname, sname = state["pair"]
        a, b = nodes[pname], nodes[sname]
        for node in (a, b):
            roles.follow(node)
            roles.merge_recent(node)
        watch = EventWatch(a.socket)
        # The UPS must have been read (online) before it fails.
        if not until(lambda: _ups_polled(a), 10):
            raise DrillError(f"{pname} never read its UPS:\n{a.log_tail()}")
        writer = Writer(nodes, pname, lines, batch=10, pause=0.005, roles=roles)  # type: ignore[arg-type]
        writer.start()
        if not until(lambda: writer.ok_count() >= 100, 15):
            raise DrillError(f"the writer got no 100 acknowledgements within 15 s: {writer.summary()}")
        # The fault: mains fails at the primary's site, at a random phase of the UPS polls.
        time.sleep(random.uniform(0.0, 0.2))
        t0 = time.monotonic_ns()
        sims[pname].on_battery(runtime_s=900)
        detected = watch.wait("UpsOnBattery", after_ns=t0, timeout=5)
        started = watch.wait("PlaybookStarted", after_ns=t0, timeout=5,
                             match=lambda e: e.get("playbook") == "ups-on-battery")
        first_ok = writer.wait_first_ok(not_node=pname, after=t0 / 1e9, timeout=15)
        roles.wait_role(pname, ("fenced", "standby", "waiting"), 5)
        rep.figures["detection_ms"] = _ms(t0, detected)
        rep.figures["playbook_ms"] = _ms(t0, started)
        rep.figures["handover_ms"] = None if first_ok is None else (first_ok * 1e9 - t0) / 1e6
        time.sleep(0.2)  # the new primary trades a little
        writer.stop(10)
        end_ns = time.monotonic_ns()
        for node in (a, b):
            roles.merge_recent(node)
        changes = roles.all()
        left = [c for c in changes if c["node"] == pname and c["monotonic_ns"] > t0
                and c.get("previous") == "primary"]
        rep.figures["fenced_ms"] = _ms(t0, left[0]["monotonic_ns"]) if left else None
        rep.fenced_role = left[0]["role"] if left else None
        ia = primary_intervals(changes, pname, [], end_ns)
        ib = primary_intervals(changes, sname, [], end_ns)
        rep.overlap_ms = overlap_ns(ia, ib) / 1e6
        rep.primary = pname
        if not any(s > t0 for s, _ in ib):
            rep.errors.append(f"no RoleChanged(primary) of {sname} after the UPS went on battery")
        for name, value in rep.figures.items():
            if value is None:
                rep.errors.append(f"{name.removesuffix('_ms')}: not seen")
        acked = writer.acknowledged()
        rep.acked = len(acked)
        journal = {seq: payload for seq, _, payload in b.records()}
        lost = [x for x in acked if journal.get(x.seq) != x.payload]
        rep.lost = len(lost)
        if lost:
            rep.errors.append(f"{len(lost)} acknowledged record(s) missing from {sname}, first seq {lost[0].seq}")
    except DrillError as exc:
        rep.errors.append(str(exc))
    except Exception as exc:
        rep.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None and writer.is_alive():
            writer.stop(5)
        if watch is not None:
            watch.close()
        roles.close()
        for node in nodes.values():
            if node.alive():
                code = node.stop()
                if code not in (0, None):
                    rep.errors.append(f"{node.name} exited {code} on SIGTERM:\n{node.log_tail(1500)}")
            node.close()
        if witness is not None:
            witness.stop()
        for sim in sims.values():
            sim.close()
        with contextlib.suppress(Exception):
            (root / "repetition.json").write_text(json.dumps(rep.__dict__, indent=1, default=str))
    return rep


def _ups_polled(node: Node) -> bool:
    status = node.try_call("status") or {}
    for service in status.get("services", []):
        if service.get("name") == "hardware":
            ups = (service.get("details") or {}).get("ups:ups") or {}
            return bool(ups.get("polls"))
    return False


# --------------------------------------------------------------------------- enclosure


HOT_PLAYBOOK = "enclosure-too-hot"


def hot_playbook() -> str:
    """No shipped playbook answers EnclosureTemperatureHigh: the drill's own (a notify
    step, signed like the others), for the temperature path."""
    return "\n".join([
        f'name = "{HOT_PLAYBOOK}"', "version = 1", "expires = 2099-01-01T00:00:00Z",
        'description = "Enclosure too hot: alert the desk (drill)"', "",
        "[[trigger]]", 'event = "EnclosureTemperatureHigh"', "",
        "[[step]]", 'action = "notify"',
        'args = { message = "enclosure too hot: check the cooling", level = "error" }', ""])


def probe_door(url: str) -> str | None:
    """Can the daemon's door driver read CTS over ``url``? None if yes, else why not."""
    import trio

    try:
        trio.run(read_door_once, url)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def enclosure_repetition(index: int, root: Path, books: Path, keyring: Path, progress: Progress,
                         path: str) -> Repetition:
    """``path``: "door" (EnclosureOpened over RFC 2217) or "temperature"
    (EnclosureTemperatureHigh from the Modbus sensor)."""
    rep = Repetition(index)
    rep.path = path
    root.mkdir(parents=True, exist_ok=True)
    sensor = EnclosureSimulator(celsius=30.0).start()
    door = Rfc2217Loop() if path == "door" else None
    node: HwNode | None = None
    watch: EventWatch | None = None
    enclosure: dict[str, Any] = {"port": sensor.path, "interval": "200ms", "temperature_high": 45.0}
    if door is not None:
        door.set_line(True)  # the circuit is closed: the door is shut
        enclosure.update(door_port=door.url, door_line="cts", door_open_when="deasserted")
    try:
        node = HwNode("edge-a", root / "edge-a", None, {
            "system": quiet_system(),
            "recovery": {"playbooks": str(books), "keyring": str(keyring)},
            "hardware": {"enclosure": enclosure}})
        node.launch()
        node.wait_ready(30)
        watch = EventWatch(node.socket)
        device = "door:enclosure" if door is not None else "enclosure:enclosure"

        def read() -> bool:
            status = node.try_call("status") or {}  # type: ignore[union-attr]
            for service in status.get("services", []):
                if service.get("name") == "hardware":
                    d = (service.get("details") or {}).get(device) or {}
                    return bool(d.get("polls"))
            return False

        if not until(read, 10):
            raise DrillError(f"the daemon never read {device}:\n{node.log_tail()}")
        if door is not None:
            # pyserial's client raised RTS on open; the drill owns the line from here.
            door.set_line(True)
            time.sleep(0.7)  # longer than the debounce: the daemon has seen it closed
            playbook, kind = "enclosure-door-opened", "EnclosureOpened"
            t0 = time.monotonic_ns()
            door.set_line(False)  # the door opens: the contact breaks the circuit
        else:
            playbook, kind = HOT_PLAYBOOK, "EnclosureTemperatureHigh"
            time.sleep(random.uniform(0.0, 0.2))  # a random phase of the sensor's polls
            t0 = time.monotonic_ns()
            sensor.set(celsius=52.0)  # the cooling failed
        detected = watch.wait(kind, after_ns=t0, timeout=5)
        started = watch.wait("PlaybookStarted", after_ns=t0, timeout=5, match=lambda e: e.get("playbook") == playbook)
        notice = watch.wait("PlaybookNotice", after_ns=t0, timeout=5, match=lambda e: e.get("playbook") == playbook)
        rep.figures["detection_ms"] = _ms(t0, detected)
        rep.figures["playbook_ms"] = _ms(t0, started)
        rep.figures["notice_ms"] = _ms(t0, notice)
        for name, value in rep.figures.items():
            if value is None:
                rep.errors.append(f"{name.removesuffix('_ms')}: not seen")
        if door is not None:
            t1 = time.monotonic_ns()
            door.set_line(True)
            if watch.wait("EnclosureClosed", after_ns=t1, timeout=5) is None:
                rep.errors.append("EnclosureClosed not seen after the door was closed again")
    except DrillError as exc:
        rep.errors.append(str(exc))
    except Exception as exc:
        rep.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if watch is not None:
            watch.close()
        if node is not None:
            if node.alive():
                code = node.stop()
                if code not in (0, None):
                    rep.errors.append(f"edge-a exited {code} on SIGTERM:\n{node.log_tail(1500)}")
            node.close()
        if door is not None:
            door.close()
        sensor.close()
        with contextlib.suppress(Exception):
            (root / "repetition.json").write_text(json.dumps(rep.__dict__, indent=1, default=str))
    return rep


# --------------------------------------------------------------------------- runner & report


def run_drill(kind: str, workdir: Path, repeat: int, *, progress: Progress = lambda s: None) -> HardwareReport:
    if kind not in DRILLS:
        raise ValueError(f"no hardware drill {kind!r}; they are {', '.join(DRILLS)}")
    report = HardwareReport(kind, repeat, workdir=str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        path = ""
        if kind == "enclosure":
            probe = Rfc2217Loop()
            try:
                why = probe_door(probe.url)
            finally:
                probe.close()
            path = "door" if why is None else "temperature"
            report.door_unavailable = why
            if why is not None:
                progress(f"enclosure drill: the door contact cannot be read over RFC 2217 ({why}); "
                         "FALLBACK: timing the temperature path (EnclosureTemperatureHigh -> playbook) instead")
        book = "ups-on-battery" if kind == "power" else "enclosure-door-opened"
        books, keyring = signed_playbooks(workdir / "operators", [book],
                                          extra={HOT_PLAYBOOK: hot_playbook()} if kind == "enclosure" else None)
        progress(f"{kind} drill: {repeat} repetition(s); playbooks signed by alice and bob (threshold 2)")
        lines = feed_lines(endless=True)
        for i in range(1, repeat + 1):
            root = workdir / f"rep{i}"
            if kind == "power":
                rep = power_repetition(i, root, books, keyring, lines, progress)
            else:
                rep = enclosure_repetition(i, root, books, keyring, progress, path)
            report.repetitions.append(rep)
            progress("  " + repetition_line(report, rep))
            for error in rep.errors:
                progress(f"    ERROR: {error.splitlines()[0] if error else error}")
    except Exception as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
    return report


def repetition_line(report: HardwareReport, rep: Repetition) -> str:
    f = rep.figures
    if report.drill == "power":
        return (f"drill {rep.index}/{report.repeat}: UPS on battery -> UpsOnBattery {_fmt(f.get('detection_ms'))}, "
                f"playbook {_fmt(f.get('playbook_ms'))}, edge-a fenced {_fmt(f.get('fenced_ms'))}, "
                f"edge-b trading {_fmt(f.get('handover_ms'))}; lost {rep.lost}/{rep.acked}; overlap "
                + (f"{rep.overlap_ms:.0f} ms" if rep.overlap_ms is not None else "?"))
    what = ("door opened -> EnclosureOpened" if rep.path == "door"
            else "sensor 30 -> 52 C -> EnclosureTemperatureHigh")
    return (f"drill {rep.index}/{report.repeat}: {what} {_fmt(f.get('detection_ms'))}, "
            f"playbook {_fmt(f.get('playbook_ms'))}, notice {_fmt(f.get('notice_ms'))}")


def format_report(report: HardwareReport) -> str:
    figures = report.figures()
    titles = {"power": "power drill (simulated UPS on battery, 200 ms polls; times from the mains failure)",
              "enclosure": "enclosure drill (door contact on CTS over RFC 2217 loop://; times from the door opening)"}
    lines = [titles[report.drill]]
    if report.drill == "enclosure" and report.door_unavailable is not None:
        lines[0] = ("enclosure drill, FALLBACK to the temperature path (Modbus sensor polled every 200 ms; "
                    "times from the simulated temperature jump)")
        lines.append(f"  NOTE: the door contact could not be read over RFC 2217: {report.door_unavailable}")
    for rep in report.repetitions:
        lines.append("  " + repetition_line(report, rep))
    labels = {"detection_ms": "detection (event)", "playbook_ms": "playbook started", "fenced_ms": "old primary fenced",
              "handover_ms": "standby trading", "notice_ms": "notify step"}
    for name in SERIES[report.drill]:
        stem = name.removesuffix("_ms")
        if f"{stem}_p50_ms" in figures:
            target = TARGETS_MS[report.drill].get(name)
            lines.append(f"  {labels[name]:<20} p50 {_fmt(figures[f'{stem}_p50_ms'])}, max "
                         f"{_fmt(figures[f'{stem}_max_ms'])}" + (f" (target < {_fmt(target)})" if target else ""))
    if report.drill == "power":
        overlaps = [o for o in figures["overlap_ms"] if o is not None]
        lines.append(f"  acknowledged records lost: {figures['lost_acked_records']} of {figures['acked_records']}")
        lines.append(f"  overlapping primaries: max {max(overlaps):.0f} ms" if overlaps
                     else "  overlapping primaries: not measured")
    for error in figures["errors"]:
        lines.append(f"  ERROR: {error.splitlines()[0] if error else error}")
    lines.append(f"result: {'PASS' if report.ok else 'FAIL'}")
    return "\n".join(lines)


def report_json(report: HardwareReport) -> str:
    return json.dumps({"ok": report.ok, **report.figures()})


def add_hardware_drill_parsers(drill_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = {"power": "a simulated UPS goes on battery; time the event, the playbook, the handover to the standby",
             "enclosure": "the enclosure door opens (CTS over RFC 2217); time the event and the playbook"}
    for name in DRILLS:
        parser = drill_sub.add_parser(name, help=helps[name])
        parser.add_argument("--repeat", type=int, default=3, help="repetitions, each with fresh daemons (default 3)")
        parser.add_argument("--workdir", type=Path, default=None, help="keep the drill's files here")
        parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
        add_report_argument(parser)


def run_hardware_drill(args: argparse.Namespace) -> int:
    kind = args.drill_command
    if args.repeat < 1:
        print(f"lifeline drill {kind}: --repeat must be at least 1", file=sys.stderr)
        return 2
    return run_drill_command(kind, args,
                             lambda workdir, progress: run_drill(kind, workdir, args.repeat, progress=progress),
                             report_json, format_report)
