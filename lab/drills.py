"""The uplink drill: cut the fibre in the lab, time everything, restore, time the
failback; then a loss soak that must not flap.

Every figure is measured from the drill's own clock (``time.monotonic()``, which all
network namespaces share) at the moment it *cut* the fibre or restored it:

* ``detection_ms``: until the daemon published ``UplinkHealthChanged`` fibre → down;
* ``failover_ms``: until the kernel reported the new default route via the satellite
  router (``ip monitor route`` in the edge namespace) — the figure the < 1 s target is for;
* ``venue_ms``: until an echo sent over the *default route* (an unbound socket, as a
  trading engine's would be) after the cut was answered by the venue again;
* ``failback_ms``: after restoring the fibre, until the default route was back on it
  (includes the hold-down, which the drill shortens: see ``DrillSettings``).

The soak runs a fresh daemon with 5 % random loss each way on the fibre and counts
``ActiveUplinkChanged`` events after the initial choice: any is a flap.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from daemon.config import Duration, UPLINK_KIND_DEFAULTS, UplinkConfig, format_duration
from daemon.core.control_client import ControlClient
from lab import world as lab_world
from lab.figures import percentile  # noqa: F401 - also lab.drills.percentile for the benches
from lab.netns import socket_in_netns

VENUE_TARGET = ("10.75.0.1", 7)
FIBRE_GATEWAY = "10.71.1.1"
STARLINK_GATEWAY = "10.72.1.1"


@dataclass
class DrillSettings:
    repeat: int = 5
    #: The lab shortens the hold-down before failback (default 30 s) so a drill of many
    #: repetitions takes minutes, not hours; detection and failover use the defaults.
    hold_down: str = "3s"
    min_dwell: str = "1s"
    #: Simulated soak length (``0`` skips it) and how much faster than real time it runs.
    soak: float = 600.0
    compress: float = 10.0
    loss_percent: float = 5.0
    #: Extra [uplinks.*] keys for both uplinks (the benchmark's mwan3-like settings).
    uplink_overrides: dict[str, Any] = field(default_factory=dict)
    settle: float = 1.0
    timeout: float = 20.0


@dataclass
class RepetitionResult:
    detection_ms: float | None
    failover_ms: float | None
    venue_ms: float | None
    failback_ms: float | None
    route_ms: float | None


@dataclass
class DrillReport:
    repetitions: list[RepetitionResult] = field(default_factory=list)
    flaps: int | None = None
    soak_rounds: int | None = None
    soak_real_s: float | None = None
    route_errors: int = 0
    errors: list[str] = field(default_factory=list)
    #: For the drill report (lab.report), not in figures(): the failover phase as plain
    #: data (:func:`failover_trace`).
    trace: dict[str, Any] = field(default_factory=dict)

    def series(self, name: str) -> list[float]:
        return [getattr(r, name) for r in self.repetitions if getattr(r, name) is not None]

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("failover_ms", "detection_ms", "venue_ms", "failback_ms", "route_ms"):
            values = self.series(name)
            out[name] = [round(v, 1) for v in values]
            if values:
                out[f"{name.removesuffix('_ms')}_p50_ms"] = round(percentile(values, 50), 1)
                out[f"{name.removesuffix('_ms')}_p95_ms"] = round(percentile(values, 95), 1)
                out[f"{name.removesuffix('_ms')}_max_ms"] = round(max(values), 1)
        out["repeat"] = len(self.repetitions)
        out["missed"] = sum(1 for r in self.repetitions if r.failover_ms is None or r.failback_ms is None)
        out["flaps"] = self.flaps
        out["soak_rounds"] = self.soak_rounds
        out["soak_real_s"] = round(self.soak_real_s, 1) if self.soak_real_s is not None else None
        out["route_errors"] = self.route_errors
        out["errors"] = self.errors
        return out

    @property
    def ok(self) -> bool:
        failover = self.series("failover_ms")
        return (not self.errors and bool(failover) and len(failover) == len(self.repetitions)
                and percentile(failover, 95) < 1000 and (self.flaps in (0, None)) and self.route_errors == 0)


# ---------------------------------------------------------------------- observers


class Timeline:
    """Things seen, each with the monotonic time it was seen, from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.items: list[tuple[float, str, Any]] = []

    def add(self, kind: str, value: Any) -> None:
        with self._cond:
            self.items.append((time.monotonic(), kind, value))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str, Any], bool], after: float, timeout: float) -> float | None:
        """The time of the first item after ``after`` matching, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, kind, value in self.items:
                    if at >= after and predicate(kind, value):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def count(self, predicate: Callable[[str, Any], bool], after: float) -> int:
        with self._lock:
            return sum(1 for at, kind, value in self.items if at >= after and predicate(kind, value))


def follow_events(socket_path: Path, timeline: Timeline, stop: threading.Event) -> threading.Thread:
    client = ControlClient(socket_path, timeout=5).connect()
    client.call("events.subscribe", {"kinds": ["UplinkHealthChanged", "ActiveUplinkChanged", "AllUplinksDown",
                                               "RouteChangeFailed", "RouteRepaired"]})

    def loop() -> None:
        try:
            while not stop.is_set():
                try:
                    line = client.read_line(timeout=0.5)
                except socket.timeout:
                    continue
                if "event" in line:
                    timeline.add("event", line["event"])
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            client.close()

    thread = threading.Thread(target=loop, name="drill-events", daemon=True)
    thread.start()
    return thread


def follow_routes(netns: str, timeline: Timeline, stop: threading.Event) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "-n", netns, "monitor", "route"], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL)

    def loop() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            timeline.add("route", line.strip())
            if stop.is_set():
                break

    threading.Thread(target=loop, name="drill-routes", daemon=True).start()
    return proc


def venue_prober(sock: socket.socket, timeline: Timeline, stop: threading.Event, every: float = 0.01) -> None:
    """Echo to the venue over the default route every ``every`` s; replies go on the
    timeline with the send time of their probe."""
    sock.settimeout(0.001)
    sent: dict[int, float] = {}

    def loop() -> None:
        seq = 0
        next_send = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                seq += 1
                sent[seq] = now
                try:
                    sock.sendto(b"LLVP" + struct.pack("!Q", seq), VENUE_TARGET)
                except OSError:
                    pass  # no route at this instant: that is what is being measured
                next_send += every
                if len(sent) > 10000:
                    for old in sorted(sent)[:5000]:
                        sent.pop(old, None)
            try:
                data = sock.recv(64)
            except (socket.timeout, BlockingIOError, OSError):
                continue
            if len(data) == 12 and data[:4] == b"LLVP":
                (number,) = struct.unpack("!Q", data[4:])
                if number in sent:
                    timeline.add("venue", sent[number])
        sock.close()

    threading.Thread(target=loop, name="drill-venue", daemon=True).start()


def sample_status(socket_path: Path, samples: list[tuple[float, dict[str, Any]]], stop: threading.Event,
                  every: float = 0.1) -> threading.Thread:
    """``uplink.status`` every ``every`` s (each uplink's window loss, median RTT, state),
    kept with the time it was answered: the report's RTT and loss per uplink."""

    def loop() -> None:
        try:
            with ControlClient(socket_path, timeout=2) as client:
                while not stop.wait(every):
                    status = client.call("uplink.status")
                    samples.append((time.monotonic(), {
                        name: {k: u.get(k) for k in ("state", "loss", "rtt_ms", "lost_streak", "kind")}
                        for name, u in (status.get("uplinks") or {}).items()}))
        except (ConnectionError, OSError, ValueError):
            pass  # the daemon is gone: the samples end there

    thread = threading.Thread(target=loop, name="drill-status", daemon=True)
    thread.start()
    return thread


def failover_trace(timeline: Timeline, samples: list[tuple[float, dict[str, Any]]], cuts: list[float],
                   restores: list[float], overrides: dict[str, Any]) -> dict[str, Any]:
    """The failover phase as plain data (monotonic seconds): the daemon's uplink events,
    the kernel's default-route changes, every venue echo (sent, answered), the status
    samples, the cuts and restores, and each uplink's DEGRADED thresholds."""
    gateways = {FIBRE_GATEWAY: "fibre", STARLINK_GATEWAY: "starlink"}
    with timeline._lock:
        items = list(timeline.items)
    routes = []
    for at, kind, value in items:
        if kind == "route" and value.startswith("default") and "via " in value:
            gateway = value.split("via ", 1)[1].split()[0]
            routes.append({"at": at, "uplink": gateways.get(gateway, gateway)})
    thresholds = {}
    for _, uplinks in samples[:1]:
        for name, u in uplinks.items():
            defaults = UPLINK_KIND_DEFAULTS.get(str(u.get("kind")), UPLINK_KIND_DEFAULTS["other"])
            rtt = overrides.get("degraded_rtt", defaults["degraded_rtt"])
            thresholds[name] = {
                "rtt_ms": (_seconds(rtt) if isinstance(rtt, str) else float(rtt)) * 1000,
                "loss": float(overrides.get("degraded_loss",
                                            UplinkConfig.__dataclass_fields__["degraded_loss"].default))}
    return {"events": [{"at": at, **value} for at, kind, value in items if kind == "event"],
            "routes": routes,
            "venue": [(value, at) for at, kind, value in items if kind == "venue"],
            "status": samples, "cuts": cuts, "restores": restores, "thresholds": thresholds}


def _route_via(gateway: str) -> Callable[[str, Any], bool]:
    def match(kind: str, value: Any) -> bool:
        return kind == "route" and value.startswith("default") and f"via {gateway} " in value + " " \
            and not value.startswith("Deleted")
    return match


def _event(kind: str, **fields: Any) -> Callable[[str, Any], bool]:
    def match(k: str, value: Any) -> bool:
        return k == "event" and value.get("kind") == kind and all(value.get(f) == v for f, v in fields.items())
    return match


def _ms(t: float | None, since: float) -> float | None:
    return (t - since) * 1000 if t is not None else None


# ---------------------------------------------------------------------- the drill


def run_uplink_drill(workdir: Path, settings: DrillSettings, *, world: Any = None,
                     progress: Callable[[str], None] = lambda s: None) -> DrillReport:
    report = DrillReport()
    world = world or lab_world.LabWorld()
    world.up(workdir)
    try:
        if settings.repeat > 0:
            _failover_phase(world, workdir / "failover", settings, report, progress)
        if settings.soak > 0:
            _soak_phase(world, workdir / "soak", settings, report, progress)
    finally:
        world.down()
    return report


def _start(world: Any, workdir: Path, settings: DrillSettings, *, scale: float = 1.0) -> Any:
    workdir.mkdir(parents=True, exist_ok=True)
    hold_down = format_duration(_seconds(settings.hold_down) / scale)
    min_dwell = format_duration(_seconds(settings.min_dwell) / scale)
    config = lab_world.edge_config(workdir, backend="netlink", hold_down=hold_down, min_dwell=min_dwell)
    for name, uplink in config["uplinks"].items():
        uplink.update(settings.uplink_overrides)
        if scale != 1.0:
            defaults = UPLINK_KIND_DEFAULTS[uplink.get("kind", "terrestrial")]
            for key in ("interval", "timeout"):
                base = _seconds(uplink[key]) if key in uplink else defaults[key]
                uplink[key] = format_duration(round(base / scale, 6))
    daemon = lab_world.start_edge_daemon(workdir, config)
    if not daemon.wait_ready(30):
        log = daemon.log_text()[-3000:]
        daemon.close()
        raise RuntimeError(f"the edge daemon did not become ready:\n{log}")
    return daemon


def _seconds(text: str) -> float:
    return float(Duration.parse(text))


def _failover_phase(world: Any, workdir: Path, settings: DrillSettings, report: DrillReport,
                    progress: Callable[[str], None]) -> None:
    daemon = _start(world, workdir, settings)
    timeline = Timeline()
    stop = threading.Event()
    monitor = follow_routes(lab_world.EDGE, timeline, stop)
    samples: list[tuple[float, dict[str, Any]]] = []
    cuts: list[float] = []
    restores: list[float] = []
    try:
        socket_path = workdir / "run" / "control.sock"
        follow_events(socket_path, timeline, stop)
        sample_status(socket_path, samples, stop)
        venue_prober(socket_in_netns(lab_world.EDGE, socket.AF_INET, socket.SOCK_DGRAM), timeline, stop)
        if _wait_active(socket_path, "fibre", settings.timeout) is None:
            raise RuntimeError("the edge daemon never put the default route on the fibre")
        time.sleep(settings.settle)
        for i in range(settings.repeat):
            # A real cut falls at a random phase of the probe schedule; without this the
            # drill's own rhythm (it waits on the daemon's events) would pin the phase.
            time.sleep(random.uniform(0, 0.25))
            # Figures count from the start of the cut command (which takes a few ms), so
            # they err on the long side; a venue echo counts only if it was sent after the
            # command returned, when the cut is certainly in force.
            cut = time.monotonic()
            cuts.append(cut)
            world.cut("fibre")
            cut_in_force = time.monotonic()
            detected = timeline.wait_for(_event("UplinkHealthChanged", uplink="fibre", state="down"), cut,
                                         settings.timeout)
            switched = timeline.wait_for(_route_via(STARLINK_GATEWAY), cut, settings.timeout)
            changed = timeline.wait_for(_event("ActiveUplinkChanged", active="starlink"), cut, settings.timeout)
            venue = timeline.wait_for(lambda k, sent_at: k == "venue" and sent_at >= cut_in_force, cut,
                                      settings.timeout)
            route_ms = None
            if changed is not None:
                event = next(v for at, k, v in timeline.items if at == changed and k == "event")
                route_ms = event.get("route_ms")
            time.sleep(settings.settle)
            restored = time.monotonic()
            restores.append(restored)
            world.restore("fibre")
            back = timeline.wait_for(_route_via(FIBRE_GATEWAY), restored,
                                     settings.timeout + _seconds(settings.hold_down) + 30)
            result = RepetitionResult(_ms(detected, cut), _ms(switched, cut), _ms(venue, cut),
                                      _ms(back, restored), route_ms)
            report.repetitions.append(result)
            progress(f"  drill {i + 1}/{settings.repeat}: detection {_fmt(result.detection_ms)}, "
                     f"route on starlink {_fmt(result.failover_ms)}, venue again {_fmt(result.venue_ms)}, "
                     f"failback {_fmt(result.failback_ms)}")
            if back is None:
                report.errors.append(f"repetition {i + 1}: the route never came back to the fibre")
                break
            time.sleep(settings.settle)
        with ControlClient(socket_path) as client:
            report.route_errors += int(client.call("uplink.status").get("route_errors", 0))
    finally:
        stop.set()
        monitor.terminate()
        report.trace = failover_trace(timeline, samples, cuts, restores, settings.uplink_overrides)
        code = daemon.stop(20)
        if code != 0:
            report.errors.append(f"the edge daemon exited {code} on SIGTERM")
        daemon.close()
        world.restore("fibre")


def _soak_phase(world: Any, workdir: Path, settings: DrillSettings, report: DrillReport,
                progress: Callable[[str], None]) -> None:
    scale = settings.compress
    real = settings.soak / scale
    progress(f"  soak: {format_duration(settings.soak)} of probe rounds with {settings.loss_percent:g} % loss "
             f"each way on the fibre, run {scale:g}x faster ({real:.0f} s)")
    daemon = _start(world, workdir, settings, scale=scale)
    timeline = Timeline()
    stop = threading.Event()
    try:
        socket_path = workdir / "run" / "control.sock"
        follow_events(socket_path, timeline, stop)
        if _wait_active(socket_path, "fibre", settings.timeout) is None:
            raise RuntimeError("the soak daemon never put the default route on the fibre")
        begin = time.monotonic()
        world.loss("fibre", settings.loss_percent)
        time.sleep(real)
        world.restore("fibre")
        report.flaps = timeline.count(_event("ActiveUplinkChanged"), begin)
        report.soak_real_s = time.monotonic() - begin
        with ControlClient(socket_path) as client:
            status = client.call("uplink.status")
        report.soak_rounds = status["uplinks"]["fibre"]["rounds"]
        report.route_errors += int(status.get("route_errors", 0))
        progress(f"  soak: {report.soak_rounds} fibre rounds, {report.flaps} flaps, fibre loss "
                 f"{status['uplinks']['fibre']['loss']:.1%} over the last window")
    finally:
        stop.set()
        code = daemon.stop(20)
        if code != 0:
            report.errors.append(f"the soak daemon exited {code} on SIGTERM")
        daemon.close()


def _wait_active(socket_path: Path, name: str, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with ControlClient(socket_path, timeout=2) as client:
                if client.call("uplink.status").get("route") == name:
                    return time.monotonic()
        except (ConnectionError, OSError):
            pass
        time.sleep(0.05)
    return None


def _fmt(ms: float | None) -> str:
    return f"{ms:.0f} ms" if ms is not None else "MISSED"


def format_report(report: DrillReport) -> str:
    figures = report.figures()
    lines = ["uplink drill (fibre cut upstream of the edge; times from the cut / the restore)"]
    rows = [("", "p50", "p95", "max", "n")]
    for label, key in (("detection (fibre DOWN)", "detection"), ("failover (route on starlink)", "failover"),
                       ("venue reachable again", "venue"), ("failback (route on fibre)", "failback")):
        values = figures.get(f"{key}_ms", [])
        if values:
            rows.append((label, f"{figures[key + '_p50_ms']:.0f} ms", f"{figures[key + '_p95_ms']:.0f} ms",
                         f"{figures[key + '_max_ms']:.0f} ms", str(len(values))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        lines.append("  " + "  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(row)))
    if report.flaps is not None:
        lines.append(f"  loss soak: {report.flaps} flaps in {report.soak_rounds} fibre rounds "
                     f"({report.soak_real_s:.0f} s real)")
    lines.append(f"  route errors: {report.route_errors}")
    for error in report.errors:
        lines.append(f"  ERROR: {error}")
    failover = report.series("failover_ms")
    verdict = "PASS" if report.ok else "FAIL"
    target = f"p95 failover {percentile(failover, 95):.0f} ms (target < 1000 ms)" if failover else "no failover measured"
    lines.append(f"result: {verdict}: {target}, {report.flaps if report.flaps is not None else '-'} flaps")
    return "\n".join(lines)


def report_json(report: DrillReport) -> str:
    return json.dumps({"ok": report.ok, **report.figures()})


# ---------------------------------------------------------------------- --report FILE.html


def add_report_argument(parser: Any) -> None:
    parser.add_argument("--report", type=Path, default=None, metavar="FILE.html",
                        help="also write the drill report: one self-contained HTML file with plots (swimlanes, "
                             "RTT and loss, venue health, histograms, checks)")


def run_drill_command(kind: str, args: Any, run: Callable[[Path, Callable[[str], None]], Any],
                      report_json: Callable[[Any], str], format_report: Callable[[Any], str]) -> int:
    """The end of every `lifeline drill KIND`: run it in ``--workdir`` (or a temporary
    folder, removed when it passed), print the report (``--json``), write the HTML
    report (``--report``); exit 0 only when it passed and the report was written."""
    import shutil
    import sys
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"lifeline-drill-{kind}-"))

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run(workdir, progress)
    if args.workdir is None:
        if report.ok:
            shutil.rmtree(workdir, ignore_errors=True)
            report.workdir = ""
        else:
            progress(f"lifeline drill {kind}: failed; its files are kept in {workdir}")
    print(report_json(report) if args.json else format_report(report))
    written = write_drill_report(args.report, [report])
    return 0 if report.ok and written else 1


def write_drill_report(path: Path | None, reports: list[Any]) -> bool:
    """Write the HTML report of ``reports`` (the drills' report objects) when ``--report``
    was given; say where, or why not. False only when it could not be written."""
    if path is None:
        return True
    import sys

    try:
        from lab.report.drills import write  # lazy: matplotlib (the test extra), only when a report is asked for
    except ImportError as exc:
        print(f"drill report: cannot draw it: {exc} (pip install 'lifeline[test]', or matplotlib>=3.6)",
              file=sys.stderr)
        return False
    try:
        written = write(path, "lifeline " + " ".join(sys.argv[1:2]) + " report", reports,
                        subtitle="lifeline " + " ".join(sys.argv[1:]) + ";")
    except OSError as exc:
        print(f"drill report: cannot write {path}: {exc}", file=sys.stderr)
        return False
    print(f"drill report: {written.resolve()} ({written.stat().st_size // 1024} KB; open it in a browser)",
          file=sys.stderr)
    return True
