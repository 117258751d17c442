"""The venue drill: a venue goes silent through the fibre only, then dies entirely;
time how long the daemon takes to see it.

    lifeline drill venue [--repeat N] [--json] [--workdir DIR] [--report FILE.html]

Needs root: it builds the namespace lab (:class:`lab.world.LabWorld`, holding its
:class:`~lab.world.LabLock`), runs the venue emulator
(:mod:`lab.venues`) as a process inside ``ll-venue`` on
``10.75.0.1:8080`` (an address of ``lo`` there, so both routers reach it), and a real
``lifeline run`` inside ``ll-edge`` with the lab's two uplinks and two venues:

* ``[venues.kraken]`` (exchange kraken, ``api_url`` the emulator, a 0600 credentials
  file whose key the emulator demands, ``deadman = true``);
* ``[venues.coinbase]`` (exchange coinbase, ``api_url`` the emulator, no credentials);

everything else at the daemon's defaults — the figures are *the defaults'* figures:
a probe round (``fetch_time``) every 1 s per venue × uplink, 800 ms per call, DEGRADED
at the first failed round, DOWN after 3 in a row, UP again after 3 good ones.

Each repetition, once every venue is UP through both uplinks (``venues.status``):

``fibre_only``
    The venue becomes unreachable through the fibre while the fibre itself stays up:
    an nftables rule in the fibre router's ``inet lifeline_lab forward`` chain (where the
    lab's impairments live) drops TCP to the emulator's port. The uplink's UDP echo
    probes still pass, so the uplink stays UP and the default route stays on the fibre;
    the venue through Starlink must stay UP throughout. Restored by flushing the chain.

``venue_dead``
    The emulator is killed (SIGKILL): connections are refused through both uplinks.
    Every venue × uplink must see it. The emulator is then started again on the same
    address (recovery counts from the moment it listens again).

Clock: the drill records ``t0 = time.monotonic_ns()`` just before the fault (the nft
transaction, the kill); every ``VenueHealthChanged`` carries ``monotonic_ns``, the
daemon's CLOCK_MONOTONIC when it decided the change (same machine, same clock: network
namespaces do not virtualise time). A random wait of up to one probe interval before
each fault puts it at a random phase of the probe schedule, as a real failure would.

* ``detection_ms``: t0 → the first ``VenueHealthChanged`` of that venue × uplink with a
  state other than ``up`` (DEGRADED, the first sign: the engine may route away);
* ``down_ms``: t0 → its ``down`` event;
* ``recovery_ms``: the restore (nft flush; emulator listening again) → the last of the
  affected paths back ``up``.

Checks: the Starlink paths never left UP during ``fibre_only``; no uplink left UP and no
``ActiveUplinkChanged`` (nor a different ``ip route show default``) during either phase
— a venue problem must not move the route; the dead-man switch is armed at the
emulator (this daemon has no ``[standby]``, so it may always trade and re-arms always):
``venues.kraken.deadman`` of ``GET /_emulator/state`` before the first kill, and again
on the restarted emulator at the end. The target: p95 of every detection < 2000 ms
(the brief asks 5 s). Progress lines go to stderr; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.core.control_client import ControlClient
from lab import netns
from lab import world as lab_world
from lab.drills import add_report_argument, percentile, write_drill_report
from lab.hardware_drills import EventWatch
from lab.netns import LabError

ROOT = Path(__file__).resolve().parents[1]
EMULATOR_HOST = "10.75.0.1"
EMULATOR_PORT = 8080
VENUES = ("kraken", "coinbase")
UPLINKS = ("fibre", "starlink")
#: The p95 of detection must stay under this (the issue's target at default settings).
TARGET_MS = 2000.0
#: The daemon's defaults the figures are for (daemon/config.py VenueConfig); the drill
#: writes none of them, these only label the report.
DEFAULTS = {"interval_s": 1.0, "timeout_s": 0.8, "down_after": 3, "up_after": 3}
PHASES = ("fibre_only", "venue_dead")
PHASE_TITLES = {"fibre_only": "silent through the fibre only", "venue_dead": "the venue dies entirely"}
#: The paths each phase must see fail (venue, uplink).
AFFECTED = {"fibre_only": [(v, "fibre") for v in VENUES],
            "venue_dead": [(v, u) for v in VENUES for u in UPLINKS]}
NFT_COMMENT = "lab venue drill: venue silent through the fibre"
EMULATOR_READY_TIMEOUT = 20.0

Progress = Callable[[str], None]


class DrillError(Exception):
    """The drill could not carry out a step."""


# --------------------------------------------------------------------------- the emulator


class _NetnsHTTPConnection(http.client.HTTPConnection):
    """HTTP over a TCP socket created inside a network namespace (the emulator's)."""

    def __init__(self, ns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        sock = netns.socket_in_netns(self._ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EmulatorProcess:
    """``python -m lab.venues`` inside ``ns`` (``ip netns exec`` execs it,
    so the child's pid is the emulator's own: :meth:`kill` really kills the venue).
    :meth:`state` and :meth:`fault` talk to its control endpoints from inside ``ns``."""

    def __init__(self, workdir: Path, *, ns: str = lab_world.VENUE, host: str = EMULATOR_HOST,
                 port: int = EMULATOR_PORT, api_keys: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args or [])
        self.ns = ns
        self.host = host
        self.port = port
        self.api_keys = dict(api_keys or {})
        self.log_path = self.workdir / "venue-emulator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return netns.exec_argv(self.ns, [
            sys.executable, "-m", "lab.venues", "--listen", f"{self.host}:{self.port}",
            *[a for venue, key in self.api_keys.items() for a in ("--api-key", f"{venue}={key}")], *self.extra_args])

    def start(self, timeout: float = EMULATOR_READY_TIMEOUT) -> None:
        """Start it; return once it printed ``venue-emulator ready``."""
        if self.alive():
            raise DrillError(f"the venue emulator is already running (pid {self.proc.pid})")  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches the drill, which stops it.
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT,
                                         env=env, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
            if "venue-emulator ready" in text:
                return
            if self.proc.poll() is not None:
                raise DrillError(f"the venue emulator exited {self.proc.returncode} before it was ready "
                                 f"({' '.join(self.argv())}):\n{text[-2000:]}")
            time.sleep(0.01)
        self.kill()
        raise DrillError(f"the venue emulator was not ready within {timeout:g} s:\n"
                         f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the venue dies on the spot (the kernel refuses its port from now on)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (it exits 0), SIGKILL after 5 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        conn = _NetnsHTTPConnection(self.ns, self.host, self.port, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data is not None else {})
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            raise DrillError(f"the venue emulator's control endpoint {method} {path} failed: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise DrillError(f"the venue emulator answered {method} {path} with HTTP {response.status}: "
                             f"{payload[:300].decode('utf-8', 'replace')}")
        return json.loads(payload)

    def state(self) -> dict[str, Any]:
        return dict(self.request("GET", "/_emulator/state"))

    def fault(self, venue: str, mode: str, sources: list[str] | None = None) -> dict[str, Any]:
        return dict(self.request("POST", "/_emulator/fault", {"venue": venue, "mode": mode,
                                                              "sources": sources or []}))

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def write_credentials(path: Path, api_key: str, secret: str) -> Path:
    """A venue credentials file (TOML, mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'api_key = "{api_key}"\nsecret = "{secret}"\n')
    return path


def venue_config(api_url: str, kraken_credentials: Path) -> dict[str, Any]:
    """The drill's ``[venues.*]``: only what must be said; every timing at its default."""
    return {"kraken": {"exchange": "kraken", "api_url": api_url, "credentials": str(kraken_credentials),
                       "deadman": True},
            "coinbase": {"exchange": "coinbase", "api_url": api_url}}


# --------------------------------------------------------------------------- events


class VenueEvents(EventWatch):
    """The edge daemon's event feed (every kind), each event kept with its arrival time."""

    def first(self, kind: str, *, after_ns: int, timeout: float, own_clock: bool = True,
              match: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any] | None:
        """The first ``kind`` event at or after ``after_ns`` (by the event's own
        ``monotonic_ns`` when ``own_clock``, else by its arrival here), waiting up to
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for arrived, event in self.events:
                    at = event.get("monotonic_ns", arrived) if own_clock else arrived
                    if at >= after_ns and event.get("kind") == kind and match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def since(self, kind: str, after_ns: int, match: Callable[[dict[str, Any]], bool] = lambda e: True,
              own_clock: bool = False) -> list[dict[str, Any]]:
        with self._cond:
            return [e for arrived, e in self.events
                    if (e.get("monotonic_ns", arrived) if own_clock else arrived) >= after_ns
                    and e.get("kind") == kind and match(e)]


def _path_event(venue: str, uplink: str, test: Callable[[str], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("venue") == venue and e.get("uplink") == uplink and test(str(e.get("state")))


# --------------------------------------------------------------------------- figures


def _key(venue: str, uplink: str) -> str:
    return f"{venue}/{uplink}"


@dataclass
class PhaseResult:
    phase: str
    detection_ms: dict[str, float | None] = field(default_factory=dict)  # "venue/uplink" -> ms
    down_ms: dict[str, float | None] = field(default_factory=dict)
    recovery_ms: float | None = None
    #: Paths that had to stay UP and did not (phase fibre_only: the Starlink ones).
    left_up: list[str] = field(default_factory=list)
    #: Uplinks that left UP during the phase (a venue fault must not touch them).
    uplinks_left_up: list[str] = field(default_factory=list)
    route_moves: int = 0
    errors: list[str] = field(default_factory=list)
    #: CLOCK_MONOTONIC ns of the fault and of the restore (for the drill report).
    fault_ns: int | None = None
    restore_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"detection_ms": _rounded(self.detection_ms), "down_ms": _rounded(self.down_ms),
                "recovery_ms": None if self.recovery_ms is None else round(self.recovery_ms, 1),
                "left_up": self.left_up, "uplinks_left_up": self.uplinks_left_up, "route_moves": self.route_moves,
                "errors": self.errors}


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 1) for k, v in values.items()}


@dataclass
class Repetition:
    index: int
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class VenueDrillReport:
    repeat: int
    repetitions: list[Repetition] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    route: str | None = None                 # the edge's default route when the drill began
    deadman_armed: bool | None = None        # at the emulator, before the first kill
    deadman_rearmed: bool | None = None      # at the last (restarted) emulator, at the end
    deadman_arms: int = 0                    # arms the emulator(s) counted, all incarnations
    daemon_deadman_arms: int | None = None   # the daemon's own count (venues.status)
    workdir: str = ""
    #: For the drill report (lab.report), not in figures(): the daemon's venue and uplink
    #: events as they came ({"events": [...], "end_ns": ...}).
    trace: dict[str, Any] = field(default_factory=dict)

    def series(self, phase: str | None, name: str) -> list[float]:
        """Every figure ``name`` ("detection_ms", "down_ms", "recovery_ms") of ``phase``
        (None: both phases) in repetition, then path order; missed ones left out."""
        out: list[float] = []
        for rep in self.repetitions:
            for p in PHASES:
                result = rep.phases.get(p)
                if result is None or phase not in (None, p):
                    continue
                if name == "recovery_ms":
                    if result.recovery_ms is not None:
                        out.append(result.recovery_ms)
                else:
                    out += [v for v in getattr(result, name).values() if v is not None]
        return out

    def missed(self) -> list[str]:
        """Expected figures that were never seen ("rep 1 venue_dead kraken/starlink detection")."""
        out = []
        for rep in self.repetitions:
            for phase in PHASES:
                result = rep.phases.get(phase)
                if result is None:
                    out.append(f"repetition {rep.index}: {phase} not run")
                    continue
                for venue, uplink in AFFECTED[phase]:
                    for name in ("detection_ms", "down_ms"):
                        if getattr(result, name).get(_key(venue, uplink)) is None:
                            out.append(f"repetition {rep.index}: {phase}: {_key(venue, uplink)} "
                                       f"{name.removesuffix('_ms')} not seen")
                if result.recovery_ms is None:
                    out.append(f"repetition {rep.index}: {phase}: recovery not seen")
        return out

    def starlink_left_up(self) -> int:
        return sum(len(r.phases["fibre_only"].left_up) for r in self.repetitions if "fibre_only" in r.phases)

    def route_moves(self) -> int:
        return sum(p.route_moves for r in self.repetitions for p in r.phases.values())

    def uplinks_left_up(self) -> int:
        return sum(len(p.uplinks_left_up) for r in self.repetitions for p in r.phases.values())

    def all_errors(self) -> list[str]:
        out = list(self.errors)
        for rep in self.repetitions:
            out += [f"repetition {rep.index}: {e}" for e in rep.errors]
            for phase, result in rep.phases.items():
                out += [f"repetition {rep.index}: {phase}: {e}" for e in result.errors]
        return out

    @property
    def ok(self) -> bool:
        detection = self.series(None, "detection_ms")
        return (not self.all_errors() and bool(self.repetitions) and len(self.repetitions) == self.repeat
                and not self.missed() and bool(detection) and percentile(detection, 95) < TARGET_MS
                and self.starlink_left_up() == 0 and self.route_moves() == 0 and self.uplinks_left_up() == 0
                and bool(self.deadman_armed) and self.deadman_arms > 0)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"drill": "venue", "repeat": self.repeat, "target_ms": TARGET_MS,
                               "settings": dict(DEFAULTS), "venues": list(VENUES), "uplinks": list(UPLINKS)}
        for prefix, phase in (("", None), ("fibre_only_", "fibre_only"), ("venue_dead_", "venue_dead")):
            for name in ("detection_ms", "down_ms", "recovery_ms"):
                values = self.series(phase, name)
                stem = name.removesuffix("_ms")
                out[f"{prefix}{name}"] = [round(v, 1) for v in values]
                if values:
                    out[f"{prefix}{stem}_p50_ms"] = round(percentile(values, 50), 1)
                    out[f"{prefix}{stem}_p95_ms"] = round(percentile(values, 95), 1)
                    out[f"{prefix}{stem}_max_ms"] = round(max(values), 1)
        out["missed"] = self.missed()
        out["starlink_left_up"] = self.starlink_left_up()
        out["uplinks_left_up"] = self.uplinks_left_up()
        out["route_moves"] = self.route_moves()
        out["route"] = self.route
        out["deadman_armed"] = self.deadman_armed
        out["deadman_rearmed"] = self.deadman_rearmed
        out["deadman_arms"] = self.deadman_arms
        out["daemon_deadman_arms"] = self.daemon_deadman_arms
        out["repetitions"] = [{"index": r.index, **{p: res.to_dict() for p, res in r.phases.items()},
                               "errors": r.errors} for r in self.repetitions]
        out["errors"] = self.all_errors()
        if self.workdir:
            out["workdir"] = self.workdir
        return out


# --------------------------------------------------------------------------- the drill


@dataclass
class VenueDrillSettings:
    repeat: int = 5
    port: int = EMULATOR_PORT
    #: How long to wait for each expected event (detection, DOWN, UP again).
    timeout: float = 15.0
    #: How long every venue × uplink may take to be UP before a repetition.
    up_timeout: float = 30.0


class _Drill:
    def __init__(self, world: Any, workdir: Path, settings: VenueDrillSettings, report: VenueDrillReport,
                 progress: Progress) -> None:
        self.world = world
        self.workdir = workdir
        self.settings = settings
        self.report = report
        self.progress = progress
        self.emulator: EmulatorProcess | None = None
        self.daemon: Any = None
        self.events: VenueEvents | None = None
        self.socket = workdir / "edge" / "run" / "control.sock"
        self._stop_notify = threading.Event()
        self._notify_thread: threading.Thread | None = None

    # ---- set-up and tear-down

    def start(self) -> None:
        api_key = "lifeline-drill-" + secrets.token_hex(12)
        secret = base64.b64encode(os.urandom(64)).decode()  # Kraken secrets are base64 of 64 bytes
        credentials = write_credentials(self.workdir / "venues" / "kraken.toml", api_key, secret)
        self.emulator = EmulatorProcess(self.workdir / "emulator", port=self.settings.port,
                                        api_keys={"kraken": api_key})
        self.emulator.start()
        config = self.world.edge_config(self.workdir / "edge")
        config["venues"] = venue_config(self.emulator.url, credentials)
        self.daemon = self.world.start_edge_daemon(self.workdir / "edge", config)
        if not self.daemon.wait_ready(30):
            raise DrillError(f"the edge daemon did not become ready:\n{self.daemon.log_text()[-3000:]}")
        self.events = VenueEvents(self.socket)
        # Play systemd's part to the end: read the daemon's sd_notify messages as they come
        # (WATCHDOG=1 every second), or its datagram queue fills and its sends fail.
        self._notify_thread = threading.Thread(target=self._drain_notify, name="drill-notify", daemon=True)
        self._notify_thread.start()

    def _drain_notify(self) -> None:
        while not self._stop_notify.is_set():
            try:
                self.daemon.notify.poll(0.2)
            except OSError:
                return

    def close(self) -> None:
        self._stop_notify.set()
        if self._notify_thread is not None:
            self._notify_thread.join(2)
        if self.events is not None:
            self.events.close()
            kinds = ("VenueHealthChanged", "UplinkHealthChanged", "ActiveUplinkChanged", "BreakerTripped",
                     "BreakerRecovered")
            self.report.trace = {"events": [e for _, e in self.events.events if e.get("kind") in kinds],
                                 "end_ns": time.monotonic_ns()}
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                with ControlClient(self.socket, timeout=3) as client:
                    status = client.call("venues.status")
                self.report.daemon_deadman_arms = int(status["venues"]["kraken"]["deadman"]["arms"])
            with contextlib.suppress(Exception):  # the breakers' state at the end, for the report
                with ControlClient(self.socket, timeout=3) as client:
                    services = client.call("status")["services"]
                breakers = {s["name"]: s for s in services}["breakers"]["details"]["breakers"]
                if isinstance(self.report.trace, dict):
                    self.report.trace["breakers"] = breakers
            code = self.daemon.stop(20)
            log = self.daemon.log_text()
            self.daemon.close()
            if code != 0:
                self.report.errors.append(f"the edge daemon exited {code} on SIGTERM: {log[-1500:]}")
            elif "Traceback" in log:
                self.report.errors.append("the edge daemon logged a traceback: "
                                          + log[log.index("Traceback"):][:1500])
        if self.emulator is not None:
            self.emulator.stop()
        with contextlib.suppress(Exception):
            self.world.restore("fibre")

    # ---- observations

    def status(self) -> dict[str, Any]:
        with ControlClient(self.socket, timeout=5) as client:
            return dict(client.call("venues.status"))

    def path_states(self) -> dict[str, str]:
        status = self.status()
        return {_key(name, p["uplink"]): p["state"] for name, v in status["venues"].items() for p in v["paths"]}

    def wait_all_up(self) -> None:
        deadline = time.monotonic() + self.settings.up_timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                states = self.path_states()
            except (ConnectionError, OSError) as exc:
                states = {"control socket": str(exc)}
            expected = {_key(v, u) for v in VENUES for u in UPLINKS}
            if set(states) >= expected and all(states[k] == "up" for k in expected):
                return
            time.sleep(0.05)
        raise DrillError(f"not every venue is UP through every uplink after {self.settings.up_timeout:g} s: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
                         + f"\n{self.daemon.log_text()[-2000:]}")

    def wait_route_on_fibre(self) -> None:
        """The daemon put the default route on the fibre (its first choice) and both
        uplinks are UP: from here on, nothing may move it."""
        deadline = time.monotonic() + self.settings.up_timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                with ControlClient(self.socket, timeout=5) as client:
                    status = dict(client.call("uplink.status"))
            except (ConnectionError, OSError):
                status = {}
            uplinks = status.get("uplinks") or {}
            if (status.get("route") == "fibre" and self.world.default_route()
                    and all((uplinks.get(u) or {}).get("state") == "up" for u in UPLINKS)):
                return
            time.sleep(0.05)
        raise DrillError(f"the edge daemon did not put the default route on the fibre with both uplinks UP within "
                         f"{self.settings.up_timeout:g} s: route {status.get('route')!r}, uplinks "
                         + ", ".join(f"{n} {(u or {}).get('state')}" for n, u in (status.get("uplinks") or {}).items()))

    def deadman_state(self) -> dict[str, Any]:
        assert self.emulator is not None
        return dict(self.emulator.state()["venues"]["kraken"]["deadman"] or {})

    def wait_deadman_armed(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.deadman_state()
            if (state.get("armed") and state.get("arms", 0) > 0) or time.monotonic() >= deadline:
                return state
            time.sleep(0.1)

    # ---- the faults

    def drop_fibre(self) -> None:
        """Drop TCP to the emulator in the fibre router (the uplink's UDP probes pass)."""
        netns.nft(lab_world.RFIB,
                  f"flush chain inet {lab_world.NFT_TABLE} forward\n"
                  f"add rule inet {lab_world.NFT_TABLE} forward ip daddr {EMULATOR_HOST} tcp dport "
                  f'{self.settings.port} counter drop comment "{NFT_COMMENT}"\n')

    def phase(self, name: str, rep: Repetition) -> PhaseResult:
        assert self.events is not None and self.emulator is not None
        result = PhaseResult(name)
        rep.phases[name] = result
        affected = AFFECTED[name]
        unaffected = [(v, u) for v in VENUES for u in UPLINKS if (v, u) not in affected]
        route_before = self.world.default_route()
        # A real fault falls at a random phase of the probe schedule (1 s rounds).
        time.sleep(random.uniform(0.0, DEFAULTS["interval_s"]))
        t0 = result.fault_ns = time.monotonic_ns()
        if name == "fibre_only":
            self.drop_fibre()
        else:
            self.emulator.kill()
        timeout = self.settings.timeout
        for venue, uplink in affected:
            key = _key(venue, uplink)
            event = self.events.first("VenueHealthChanged", after_ns=t0, timeout=timeout,
                                      match=_path_event(venue, uplink, lambda s: s != "up"))
            result.detection_ms[key] = None if event is None else (event["monotonic_ns"] - t0) / 1e6
        for venue, uplink in affected:
            key = _key(venue, uplink)
            event = self.events.first("VenueHealthChanged", after_ns=t0, timeout=timeout,
                                      match=_path_event(venue, uplink, lambda s: s == "down"))
            result.down_ms[key] = None if event is None else (event["monotonic_ns"] - t0) / 1e6
        # Every affected path is DOWN (or the wait is over): the unaffected ones have had
        # down_after rounds to fail too, had the fault leaked onto them.
        try:
            states = self.path_states()
        except (ConnectionError, OSError) as exc:
            states = {}
            result.errors.append(f"venues.status failed: {exc}")
        t1 = result.restore_ns = self._restore(name, result)
        for venue, uplink in affected:
            back = self.events.first("VenueHealthChanged", after_ns=t1, timeout=timeout + 10,
                                     match=_path_event(venue, uplink, lambda s: s == "up"))
            if back is None:
                result.recovery_ms = None
                result.errors.append(f"{_key(venue, uplink)} not UP again within {timeout + 10:g} s")
                break
            result.recovery_ms = max(result.recovery_ms or 0.0, (back["monotonic_ns"] - t1) / 1e6)
        for venue, uplink in unaffected:
            key = _key(venue, uplink)
            changes = self.events.since("VenueHealthChanged", t0, _path_event(venue, uplink, lambda s: True),
                                        own_clock=True)
            if changes or states.get(key, "up") != "up":
                seen = ", ".join(f"{e['previous']}->{e['state']} ({e.get('reason', '')})" for e in changes)
                result.left_up.append(f"{key}: {seen or states.get(key)}")
        for event in self.events.since("UplinkHealthChanged", t0):
            if event.get("state") != "up":
                result.uplinks_left_up.append(f"{event.get('uplink')} {event.get('previous')}->{event.get('state')}")
        moves = self.events.since("ActiveUplinkChanged", t0)
        result.route_moves = len(moves)
        route_after = self.world.default_route()
        if route_after != route_before and not moves:
            result.route_moves += 1
        if route_after != route_before:
            result.errors.append(f"the default route moved: {route_before!r} -> {route_after!r}")
        return result

    def _restore(self, name: str, result: PhaseResult) -> int:
        assert self.emulator is not None
        if name == "fibre_only":
            t1 = time.monotonic_ns()
            self.world.restore("fibre")
            return t1
        if self.emulator.proc is not None and self.emulator.proc.returncode != -signal.SIGKILL:
            result.errors.append(f"the emulator did not die of SIGKILL (exit {self.emulator.proc.returncode})")
        self.emulator.start()
        return time.monotonic_ns()

    # ---- the whole drill

    def run(self) -> None:
        self.start()
        assert self.emulator is not None
        self.progress(f"venue drill: emulator in {lab_world.VENUE} at {self.emulator.url}; edge daemon in "
                      f"{lab_world.EDGE} with venues {', '.join(VENUES)} through {', '.join(UPLINKS)} "
                      f"(defaults: probe every 1 s, timeout 800 ms, DOWN after 3)")
        self.wait_route_on_fibre()
        self.wait_all_up()
        self.report.route = self.world.default_route()
        self.progress(f"  every venue UP through both uplinks; default route: {self.report.route}")
        for i in range(1, self.settings.repeat + 1):
            rep = Repetition(i)
            self.report.repetitions.append(rep)
            try:
                self.wait_all_up()
                self.phase("fibre_only", rep)
                self.wait_all_up()
                before = self.deadman_state()
                if i == 1:
                    if not before.get("armed"):
                        before = self.wait_deadman_armed(20)
                    self.report.deadman_armed = bool(before.get("armed")) and before.get("arms", 0) > 0
                    if not self.report.deadman_armed:
                        rep.errors.append(f"the dead-man switch is not armed at the emulator: {before}")
                self.report.deadman_arms += int(before.get("arms", 0))
                self.phase("venue_dead", rep)
            except DrillError as exc:
                rep.errors.append(str(exc))
            self.progress("  " + repetition_line(self.report, rep))
            for error in rep.errors + [e for p in rep.phases.values() for e in p.errors]:
                self.progress(f"    ERROR: {error.splitlines()[0]}")
            if rep.errors:
                break
        # The restarted venue must be armed again (the daemon re-arms every 15 s, or 1 s
        # after a failed arm): the switch survives the venue's own restart.
        state = self.wait_deadman_armed(20)
        self.report.deadman_rearmed = bool(state.get("armed"))
        self.report.deadman_arms += int(state.get("arms", 0))
        if not self.report.deadman_rearmed:
            self.report.errors.append(f"the restarted emulator's dead-man switch was not re-armed within 20 s: "
                                      f"{state}")


def run_drill(workdir: Path, settings: VenueDrillSettings, *, world: Any = None,
              progress: Progress = lambda s: None) -> VenueDrillReport:
    """Build the lab, run the drill, take everything down (also on Ctrl-C)."""
    report = VenueDrillReport(settings.repeat, workdir=str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    world = world or lab_world.LabWorld(workdir / "lab")
    drill = _Drill(world, workdir, settings, report, progress)
    try:
        world.up(workdir / "lab")
        try:
            drill.run()
        finally:
            drill.close()
    except (DrillError, LabError) as exc:
        report.errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a drill reports, it does not crash
        report.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        world.down()
    return report


# --------------------------------------------------------------------------- report


def _fmt(ms: float | None) -> str:
    return f"{ms:.0f} ms" if ms is not None else "MISSED"


def repetition_line(report: VenueDrillReport, rep: Repetition) -> str:
    parts = [f"drill {rep.index}/{report.repeat}:"]
    fibre = rep.phases.get("fibre_only")
    if fibre is not None:
        dets = ", ".join(f"{v} {_fmt(fibre.detection_ms.get(_key(v, 'fibre')))}" for v in VENUES)
        downs = max((d for d in fibre.down_ms.values() if d is not None), default=None)
        starlink = "starlink stayed UP" if not fibre.left_up else "STARLINK LEFT UP"
        parts.append(f"fibre only: {dets} (DOWN by {_fmt(downs)}), {starlink}, "
                     f"back {_fmt(fibre.recovery_ms)};")
    dead = rep.phases.get("venue_dead")
    if dead is not None:
        values = [dead.detection_ms.get(_key(v, u)) for v, u in AFFECTED["venue_dead"]]
        seen = [v for v in values if v is not None]
        downs = max((d for d in dead.down_ms.values() if d is not None), default=None)
        parts.append(f"venue dead: {len(seen)}/{len(values)} paths in {_fmt(min(seen) if seen else None)}"
                     f"..{_fmt(max(seen) if seen else None)} (DOWN by {_fmt(downs)}), back {_fmt(dead.recovery_ms)};")
    moves = sum(p.route_moves for p in rep.phases.values())
    parts.append("route stayed" if moves == 0 else f"ROUTE MOVED {moves}x")
    return " ".join(parts)


def format_report(report: VenueDrillReport) -> str:
    figures = report.figures()
    lines = [("venue drill (the venue silent through the fibre only, then dead; default settings: probe every 1 s, "
              "timeout 800 ms, DOWN after 3; times from the fault)")]
    for rep in report.repetitions:
        lines.append("  " + repetition_line(report, rep))
    rows = [("", "p50", "p95", "max", "n")]
    for label, prefix, stem in (("detection, fibre only", "fibre_only_", "detection"),
                                ("detection, venue dead", "venue_dead_", "detection"),
                                ("detection, all", "", "detection"),
                                ("DOWN, fibre only", "fibre_only_", "down"),
                                ("DOWN, venue dead", "venue_dead_", "down"),
                                ("UP again, fibre only", "fibre_only_", "recovery"),
                                ("UP again, venue dead", "venue_dead_", "recovery")):
        values = figures.get(f"{prefix}{stem}_ms") or []
        if values:
            rows.append((label, _fmt(figures[f"{prefix}{stem}_p50_ms"]), _fmt(figures[f"{prefix}{stem}_p95_ms"]),
                         _fmt(figures[f"{prefix}{stem}_max_ms"]), str(len(values))))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            lines.append("  " + "  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i])
                                          for i, c in enumerate(row)))
    lines.append(f"  starlink paths left UP during 'fibre only': {report.starlink_left_up()}; uplinks left UP: "
                 f"{report.uplinks_left_up()}; route moves: {report.route_moves()} (route: {report.route or 'none'})")
    armed = {True: "armed", False: "NOT ARMED", None: "not checked"}
    lines.append(f"  dead-man switch at the emulator: {armed[report.deadman_armed]} before the kill, "
                 f"{armed[report.deadman_rearmed]} after the restart; {report.deadman_arms} arms counted there"
                 + (f", {report.daemon_deadman_arms} by the daemon" if report.daemon_deadman_arms is not None else ""))
    for item in report.missed():
        lines.append(f"  MISSED: {item}")
    for error in report.all_errors():
        lines.append(f"  ERROR: {error.splitlines()[0] if error else error}")
    detection = report.series(None, "detection_ms")
    target = (f"p95 detection {percentile(detection, 95):.0f} ms (target < {TARGET_MS:.0f} ms)" if detection
              else "no detection measured")
    lines.append(f"result: {'PASS' if report.ok else 'FAIL'}: {target}")
    return "\n".join(lines)


def report_json(report: VenueDrillReport) -> str:
    return json.dumps({"ok": report.ok, **report.figures()})


# --------------------------------------------------------------------------- command line


def add_venue_drill_parser(drill_sub: Any) -> None:
    parser = drill_sub.add_parser("venue", help="the venue goes silent through the fibre only, then dies entirely; "
                                                "time VenueHealthChanged (needs root)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of both phases (default 5)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the drill's files here (default: a temporary directory, kept only on failure)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    add_report_argument(parser)


def unavailable() -> str | None:
    """Why the drill cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (it builds network namespaces and nftables rules); run it with sudo"
    why = lab_world.netns_unavailable()
    return f"cannot build the namespace lab: {why}" if why else None


def run_venue_drill(args: argparse.Namespace) -> int:
    why = unavailable()
    if why is not None:
        print(f"lifeline drill venue: {why}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("lifeline drill venue: --repeat must be at least 1", file=sys.stderr)
        return 2
    keep = args.workdir is not None
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="lifeline-drill-venue-"))

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = run_drill(workdir, VenueDrillSettings(repeat=args.repeat), progress=progress)
    except KeyboardInterrupt:
        print("lifeline drill venue: interrupted; the lab, the emulator and the daemon were stopped",
              file=sys.stderr)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 130
    if not keep:
        if report.ok:
            shutil.rmtree(workdir, ignore_errors=True)
            report.workdir = ""
        else:
            progress(f"lifeline drill venue: failed; its files are kept in {workdir}")
    print(report_json(report) if args.json else format_report(report))
    written = write_drill_report(args.report, [report])
    return 0 if report.ok and written else 1
