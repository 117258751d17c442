#!/usr/bin/env python3
"""Benchmark: hostile peers against every listener of a pair and its witness (issue 16).

    .venv/bin/python bench/hostile.py [--seconds 60] [--only KIND ...] [--rate 1000]

No root needed. Builds, under a temp dir, a witness (``lifeline witness``) and two
``lifeline run`` processes with a witness lease on loopback (as
tests/integration/standby/test_lease_pair.py does: no fixed roles, ``mode = "sync"``, fsync on
both, metrics on), each child given the systemd unit's ``LimitNOFILE=`` (read from
systemd/lifeline.service; set with ``prlimit`` right after the fork, before the daemon
opens its listeners — the effect of the unit's setting). Once one node is primary and
the other in sync:

* an **engine** thread appends ``--rate`` records/s (batches of ``--batch`` on a fixed
  schedule, one control connection) to the primary; a batch's latency is its reply's
  arrival minus its *scheduled* time (no coordinated omission);
* a **lease probe** (a witness client like the daemons', its own cluster, the pair's ttl)
  renews every ttl/3 and times each renewal: the daemons keep no renewal latencies, and
  the witness serves every cluster alike, so this is the renewal the pair sees;
* a sampler reads every daemon's RSS and open descriptors (/proc) every 0.2 s.

A **baseline** of ``--seconds`` (no flood), then, for each flood, a quiet window of
``--quiet`` seconds (half of ``--seconds`` by default) and the flood for ``--seconds``; a
flood's ratios are against the quiet window just before it (the machine is shared: other
tenants move the figures over minutes far more than within one pair of windows). Floods,
one at a time, each from a separate process (its own descriptor limit raised, nice 19) using source
addresses 127.0.0.2-127.0.0.51, every flood connection reconnecting after it is closed
(1 s later for a bare connection, 0.2 s for the others):

=====================  ==========================================================
replication-bare       2 000 bare TCP connections to the primary's replication port
replication-preauth    200 connections announcing an 8 MiB HELLO and streaming its body
witness-bare           2 000 bare TCP connections to the witness
witness-preauth        200 connections announcing a 64 KiB frame and streaming it
metrics-slowloris      200 connections to the primary's metrics port, a byte a second
control-slowloris      200 connections to the primary's control socket, a byte a
                       second and never a newline (the control socket is bounded by
                       another branch, ``acl``: its figures are reported as they are)
=====================  ==========================================================

With ``--sink``, each TCP flood is run a second time right after it (``sink-KIND``), against
a *sink* instead of the daemon: a separate process with the same accept loop and bounds
(``daemon.core.accept.BoundedListener``, default ``Limits``) whose handler reads one
pre-auth frame's worth and closes. The pair is not attacked then, so that window's ratio
(against the same quiet window) is what the flood generator and the kernel's loopback work
cost the legitimate appends on this host's two cores, not the daemon's share.

Per phase: each process's peak RSS growth over its RSS when the phase began, its peak
descriptors, the log bytes it wrote, its CPU seconds, whether it died (and the flood
process's CPU seconds, and how busy the whole host was); the append p99 and the renewal p99
and their ratio to the quiet window's; lease losses (role changes of either node, from
``role.status``) and in-doubt appends. Targets (issue 16): RSS growth < 20 MB, 0 lease
losses, 0 crashes, append p99 under flood <= 2x baseline. Human lines first; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from daemon.config import dump_toml  # noqa: E402
from daemon.core.control_client import ControlClient  # noqa: E402
from lab.procs import DaemonProcess, free_port, until  # noqa: E402
from daemon.standby.keys import generate_replication_key, load_replication_key  # noqa: E402

FLOODS = ("replication-bare", "replication-preauth", "witness-bare", "witness-preauth", "metrics-slowloris",
          "control-slowloris")
TARGET_RSS_MB = 20.0
TARGET_P99_RATIO = 2.0
SOURCES = [f"127.0.0.{i}" for i in range(2, 52)]
TTL = 1.5
#: How long a flood connection waits before reconnecting once it was closed: a bare
#: flood keeps its 2 000 connections knocking (up to 2 000 connects/s), a hostile one
#: comes back at once with another oversized frame.
RECONNECT_PAUSE = {"bare": 1.0, "hostile": 0.2}


def unit_nofile() -> int:
    match = re.search(r"^LimitNOFILE=(\d+)", (ROOT / "systemd" / "lifeline.service").read_text(), re.M)
    return int(match.group(1)) if match else 1024


def p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# --------------------------------------------------------------------------- the processes


@dataclass
class Proc:
    name: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    daemon: DaemonProcess | None = None

    def alive(self) -> bool:
        p = self.popen if self.popen is not None else (self.daemon.proc if self.daemon else None)
        return p is not None and p.poll() is None

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.pid).memory_info().rss / 1e6
        except psutil.Error:
            return 0.0

    def cpu_s(self) -> float:
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def log_bytes(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0


class Cluster:
    def __init__(self, workdir: Path, nofile: int) -> None:
        self.workdir = workdir
        self.nofile = nofile
        self.key = workdir / "replication.key"
        generate_replication_key(self.key)
        self.procs: dict[str, Proc] = {}
        self.witness_port = free_port()
        self.ports = {name: {"replication": free_port(), "metrics": free_port()} for name in ("edge-a", "edge-b")}

    def _limit(self, pid: int) -> None:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self) -> None:
        log = self.workdir / "witness.log"
        nofile = self.nofile
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "witness", "--listen", f"127.0.0.1:{self.witness_port}",
                 "--state", str(self.workdir / "witness.json"), "--key-file", str(self.key)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.procs["witness"] = Proc("witness", popen.pid, log, popen=popen)
        if not until(lambda: "witness.listening" in log.read_text(errors="replace"), 20):
            raise RuntimeError(f"the witness did not start:\n{log.read_text(errors='replace')}")
        for name, other in (("edge-a", "edge-b"), ("edge-b", "edge-a")):
            root = self.workdir / name
            root.mkdir()
            config = {
                "node": {"name": name, "state_dir": str(root / "state"), "runtime_dir": str(root / "run")},
                "log": {"level": "info"},
                "control": {"socket": str(root / "run" / "control.sock"), "group": ""},
                "metrics": {"enabled": True, "listen": f"127.0.0.1:{self.ports[name]['metrics']}"},
                # Two daemons, a witness, the floods and this client share the host: the
                # host-health breaker must not be what the figures measure.
                "system": {"interval": "2s", "sustain": "1h", "cpu_threshold": 1.0, "memory_threshold": 1.0,
                           "disk_threshold": 1.0, "temperature_threshold_c": 150.0},
                "standby": {
                    "key_file": str(self.key), "listen": f"127.0.0.1:{self.ports[name]['replication']}",
                    "peer": f"127.0.0.1:{self.ports[other]['replication']}", "mode": "sync",
                    "on_standby_loss": "degrade-to-async", "journal": {"fsync": "always"},
                    "lease": {"backend": "witness", "witness": f"127.0.0.1:{self.witness_port}", "cluster": "bench",
                              "ttl": f"{TTL}s"},
                },
            }
            (root / "lifeline.toml").write_text(dump_toml(config))
            daemon = DaemonProcess(config=root / "lifeline.toml", workdir=root / "proc", watchdog_usec=None)
            daemon.start()
            assert daemon.proc is not None
            self._limit(daemon.proc.pid)
            self.procs[name] = Proc(name, daemon.proc.pid, daemon.stderr_path, daemon=daemon)
        for name in ("edge-a", "edge-b"):
            daemon = self.procs[name].daemon
            assert daemon is not None
            if not daemon.wait_ready(40):
                raise RuntimeError(f"{name} did not become ready:\n{daemon.log_text()[-3000:]}")

    def socket(self, name: str) -> Path:
        return self.workdir / name / "run" / "control.sock"

    def call(self, name: str, method: str, params: dict[str, Any] | None = None) -> Any:
        with ControlClient(self.socket(name), timeout=10.0) as client:
            return client.call(method, params or {})

    def primary(self, timeout: float = 40.0) -> str:
        def check() -> str | None:
            for name in ("edge-a", "edge-b"):
                try:
                    info = self.call(name, "role.status")
                except Exception:
                    continue
                if info.get("role") == "primary" and info.get("accepting_appends"):
                    stats = self.call(name, "journal.stats")
                    if stats.get("replication", {}).get("in_sync"):
                        return name
            return None

        found = until(check, timeout, 0.2)
        if not found:
            raise RuntimeError("no primary in sync with its standby:\n" + "\n".join(
                f"--- {n}\n{p.log.read_text(errors='replace')[-2000:]}" for n, p in self.procs.items()))
        return str(found)

    def role_changes(self) -> int:
        total = 0
        for name in ("edge-a", "edge-b"):
            try:
                total += int(self.call(name, "role.status").get("role_changes", 0))
            except Exception:
                pass
        return total

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.daemon is not None:
                proc.daemon.stop(20)
                proc.daemon.close()
            elif proc.popen is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(10)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()


# --------------------------------------------------------------------------- load and probes


class Phase:
    """The current phase's label, read by every measuring thread."""

    def __init__(self) -> None:
        self.name = "warmup"


class Engine:
    """Open-loop appends: a batch is due every batch/rate seconds on a fixed schedule and
    goes out on the first of ``connections`` idle control connections (the daemon
    serves one request at a time per connection; several let its group commit share
    fsyncs, as a real engine's threads would). Latency = reply arrival - due time."""

    def __init__(self, socket_path: Path, phase: Phase, rate: float, batch: int, connections: int = 4) -> None:
        self.socket_path = socket_path
        self.phase = phase
        self.interval = batch / rate
        self.batch = batch
        self.latencies: dict[str, list[float]] = {}
        self.statuses: dict[str, dict[str, int]] = {}
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._next_due = 0.0
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"engine-{i}")
                         for i in range(connections)]

    def start(self) -> None:
        self._next_due = time.monotonic()
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _claim(self) -> float:
        with self._lock:
            due = self._next_due
            self._next_due += self.interval
            return due

    def _worker(self, i: int) -> None:
        payloads = [f"order {i}-{n:06d} buy 0.001 BTC-USD limit 43000.0 client-id bench-{n}" for n in range(self.batch)]
        try:
            client = ControlClient(self.socket_path, timeout=30.0).connect()
        except Exception as exc:
            self.errors.append(repr(exc))
            return
        try:
            while not self.stop_event.is_set():
                due = self._claim()
                wait = due - time.monotonic()
                if wait > 0 and self.stop_event.wait(wait):
                    return
                phase = self.phase.name
                try:
                    answer = client.call("journal.append", {"payloads": payloads})
                except Exception as exc:
                    self.errors.append(f"{phase}: {exc!r}")
                    return
                latency = (time.monotonic() - due) * 1000
                with self._lock:
                    self.latencies.setdefault(phase, []).append(latency)
                    counts = self.statuses.setdefault(phase, {})
                    for result in answer["results"]:
                        counts[result["status"]] = counts.get(result["status"], 0) + 1
        finally:
            client.close()


class LeaseProbe(threading.Thread):
    """A witness client renewing its own lease every ttl/3, timing each renewal."""

    def __init__(self, address: str, key: bytes, phase: Phase) -> None:
        super().__init__(daemon=True, name="lease-probe")
        self.address = address
        self.key = key
        self.phase = phase
        self.latencies: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        import trio

        from daemon.standby.lease import LeaseError
        from daemon.standby.witness import WitnessLeaseStore

        async def main() -> None:
            store = WitnessLeaseStore(self.address, self.key, "bench-probe", "probe", TTL, 1.0)
            epoch = None
            while not self.stop_event.is_set():
                phase = self.phase.name
                began = time.monotonic()
                try:
                    if epoch is None:
                        state = await store.read()
                        epoch = (await store.acquire("probe", state.epoch)).epoch
                    else:
                        await store.renew("probe", epoch)
                        self.latencies.setdefault(phase, []).append((time.monotonic() - began) * 1000)
                except (LeaseError, OSError):
                    self.failures[phase] = self.failures.get(phase, 0) + 1
                    epoch = None
                await trio.sleep(max(0.0, TTL / 3 - (time.monotonic() - began)))
            await store.aclose()

        trio.run(main)


class Sampler(threading.Thread):
    def __init__(self, procs: dict[str, Proc], phase: Phase) -> None:
        super().__init__(daemon=True, name="sampler")
        self.procs = procs
        self.phase = phase
        self.rss: dict[tuple[str, str], float] = {}
        self.fds: dict[tuple[str, str], int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            phase = self.phase.name
            for name, proc in self.procs.items():
                key = (phase, name)
                self.rss[key] = max(self.rss.get(key, 0.0), proc.rss_mb())
                self.fds[key] = max(self.fds.get(key, 0), proc.fds())


# --------------------------------------------------------------------------- the floods (a child process)


def flood_main(kind: str, target: str, seconds: float, connections: int) -> None:
    """Run one flood for ``seconds``; print its own figures as one JSON line."""
    import trio

    # The attacker's CPU is not the server's: on a real network it is another host. Here
    # it shares the two cores, so it runs at the lowest priority to disturb the figures
    # as little as it can (it still takes what the daemons leave idle).
    os.nice(19)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats = {"connects": 0, "connect_errors": 0, "closed_by_server": 0, "bytes_sent": 0}

    async def open_stream(i: int) -> trio.abc.Stream:
        if kind == "control-slowloris":
            return await trio.open_unix_socket(target)
        host, port = target.rsplit(":", 1)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await sock.bind((SOURCES[i % len(SOURCES)], 0))
            await sock.connect((host, int(port)))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def behave(stream: trio.abc.Stream) -> None:
        if kind.endswith("-bare"):
            while await stream.receive_some(4096):
                pass
        elif kind == "replication-preauth":
            import struct

            await stream.send_all(b"LLRP" + struct.pack("!BBHI", 1, 1, 0, 8 * 1024 * 1024 - 12))
            stats["bytes_sent"] += 12
            chunk = b"\0" * 65536
            for _ in range(128):
                await stream.send_all(chunk)
                stats["bytes_sent"] += len(chunk)
        elif kind == "witness-preauth":
            import struct

            await stream.send_all(struct.pack("!I", 64 * 1024) + b"{" + b" " * (64 * 1024 - 1))
            stats["bytes_sent"] += 4 + 64 * 1024
            while await stream.receive_some(4096):
                pass
        else:  # slow-loris: a byte a second, never the end of a request
            data = b"GET /metrics HTTP/1.1\r\n" if kind == "metrics-slowloris" else b'{"id": 1, "method": "status"'
            i = 0
            while True:
                await stream.send_all(data[i % len(data):i % len(data) + 1] if i < len(data) else b" ")
                stats["bytes_sent"] += 1
                i += 1
                await trio.sleep(1.0)

    pause = RECONNECT_PAUSE["bare" if kind.endswith("-bare") else "hostile"]

    async def worker(i: int) -> None:
        while True:
            try:
                stream = await open_stream(i)
            except OSError:
                stats["connect_errors"] += 1
                await trio.sleep(pause)
                continue
            stats["connects"] += 1
            try:
                await behave(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            stats["closed_by_server"] += 1
            await trio.aclose_forcefully(stream)
            await trio.sleep(pause)

    async def main() -> None:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for i in range(connections):
                    nursery.start_soon(worker, i)
                    if i % 100 == 99:
                        await trio.sleep(0.01)  # ramp up over a few hundred ms

    trio.run(main)
    print(json.dumps(stats), flush=True)


def sink_main() -> None:
    """A stand-in for the attacked daemon (``--sink``): the same accept loop and bounds,
    a handler that reads one pre-auth frame's worth and closes; prints its port."""
    import trio

    from daemon.core.accept import BoundedListener
    from daemon.core.listeners import Limits
    from daemon.core.log import get_logger

    async def handler(stream: trio.SocketStream, connection: Any) -> None:
        with trio.move_on_after(Limits().handshake_timeout):
            try:
                await stream.receive_some(8192)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def main() -> None:
        listener = BoundedListener("sink", Limits(), handler, get_logger("sink"))
        _, port = await listener.open("127.0.0.1", 0)
        print(port, flush=True)
        await listener.serve()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    trio.run(main)


# --------------------------------------------------------------------------- the run


@dataclass
class PhaseResult:
    name: str
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    append_p99_ms: float | None = None
    renew_p99_ms: float | None = None
    append_ratio: float | None = None
    renew_ratio: float | None = None
    lease_losses: int = 0
    in_doubt: int = 0
    appends: int = 0
    renew_failures: int = 0
    flood: dict[str, Any] = field(default_factory=dict)
    host_busy_pct: float = 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = unit_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-hostile-"))
    cluster = Cluster(workdir, nofile)
    phase = Phase()
    results: list[PhaseResult] = []
    sink: subprocess.Popen[str] | None = None
    sink_port = 0
    try:
        cluster.start()
        primary = cluster.primary()
        print(f"pair up: primary {primary}, witness 127.0.0.1:{cluster.witness_port}, LimitNOFILE={nofile}, "
              f"{args.seconds:g} s per phase", flush=True)
        engine = Engine(cluster.socket(primary), phase, args.rate, args.batch)
        probe = LeaseProbe(f"127.0.0.1:{cluster.witness_port}", load_replication_key(cluster.key), phase)
        sampler = Sampler(cluster.procs, phase)
        gc.disable()  # the measuring threads must not pause themselves
        engine.start()
        probe.start()
        sampler.start()
        time.sleep(3.0)  # warm-up
        targets = {
            "replication-bare": f"127.0.0.1:{cluster.ports[primary]['replication']}",
            "replication-preauth": f"127.0.0.1:{cluster.ports[primary]['replication']}",
            "witness-bare": f"127.0.0.1:{cluster.witness_port}",
            "witness-preauth": f"127.0.0.1:{cluster.witness_port}",
            "metrics-slowloris": f"127.0.0.1:{cluster.ports[primary]['metrics']}",
            "control-slowloris": str(cluster.socket(primary)),
        }
        floods = [k for k in FLOODS if not args.only or k in args.only]
        # Each flood is compared with the quiet window just before it: other tenants of a
        # shared host move the figures over minutes, far more than within one pair of windows.
        phases = ["baseline"] + [p for k in floods for p in (f"quiet-{k}", k)
                                 + ((f"sink-{k}",) if args.sink and k != "control-slowloris" else ())]
        if args.sink:
            with open(workdir / "sink.log", "wb") as sink_log:
                sink = subprocess.Popen([sys.executable, __file__, "--sink-worker"], stdout=subprocess.PIPE,
                                        stderr=sink_log, text=True, cwd=ROOT)
            assert sink.stdout is not None
            sink_port = int(sink.stdout.readline())
            sink_proc = Proc("sink", sink.pid, workdir / "sink.log")
        for name in phases:
            quiet = name == "baseline" or name.startswith("quiet-")
            kind = name.removeprefix("sink-")
            sink_cpu = sink_proc.cpu_s() if name.startswith("sink-") else 0.0
            before = {n: (p.rss_mb(), p.log_bytes(), p.cpu_s()) for n, p in cluster.procs.items()}
            changes = cluster.role_changes()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            psutil.cpu_percent()  # starts the host's busy-time window
            phase.name = name
            flood_out = ""
            if quiet:
                time.sleep(args.seconds if name == "baseline" else args.quiet)
            else:
                connections = args.connections if name.endswith("-bare") else args.hostile
                target = f"127.0.0.1:{sink_port}" if name.startswith("sink-") else targets[kind]
                child = subprocess.run(
                    [sys.executable, __file__, "--flood-worker", kind, "--target", target, "--seconds",
                     str(args.seconds), "--connections", str(connections)],
                    capture_output=True, text=True, timeout=args.seconds + 120)
                flood_out = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else child.stderr[-500:]
            phase.name = f"{name}-settle"
            host_busy = psutil.cpu_percent()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = PhaseResult(name)
            result.host_busy_pct = host_busy
            try:
                result.flood = json.loads(flood_out) if flood_out else {}
            except ValueError:
                result.flood = {"error": flood_out}
            if not quiet:
                result.flood["cpu_s"] = round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 1)
            if name.startswith("sink-"):
                result.flood["sink_cpu_s"] = round(sink_proc.cpu_s() - sink_cpu, 1)
            for n, p in cluster.procs.items():
                result.processes[n] = {
                    "rss_growth_mb": round(max(0.0, sampler.rss.get((name, n), before[n][0]) - before[n][0]), 1),
                    "fds_peak": sampler.fds.get((name, n), 0),
                    "log_bytes": p.log_bytes() - before[n][1],
                    "crashed": not p.alive(),
                    "cpu_s": round(p.cpu_s() - before[n][2], 1),
                }
            result.lease_losses = cluster.role_changes() - changes
            lat = engine.latencies.get(name, [])
            result.appends = len(lat) * args.batch
            result.append_p99_ms = _round(p99(lat))
            result.renew_p99_ms = _round(p99(probe.latencies.get(name, [])))
            result.renew_failures = probe.failures.get(name, 0)
            result.in_doubt = engine.statuses.get(name, {}).get("in_doubt", 0)
            if not quiet:
                base = next(r for r in results if r.name == f"quiet-{kind}")
                result.append_ratio = _ratio(result.append_p99_ms, base.append_p99_ms)
                result.renew_ratio = _ratio(result.renew_p99_ms, base.renew_p99_ms)
            results.append(result)
            _print_phase(result)
            if not quiet:
                time.sleep(3.0)  # let the flood's connections drain before the next window
        engine.stop_event.set()
        probe.stop_event.set()
        sampler.stop_event.set()
        for thread in (engine, probe, sampler):
            thread.join(10)
        gc.enable()
        if engine.errors:
            print(f"engine errors: {engine.errors[:3]}")
    finally:
        if sink is not None and sink.poll() is None:
            sink.terminate()
            sink.wait(10)
        cluster.close()
    return summarize(results, args, nofile)


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def _print_phase(r: PhaseResult) -> None:
    procs = "  ".join(f"{n}: +{p['rss_growth_mb']} MB, {p['fds_peak']} fds, {p['log_bytes']} B log, {p['cpu_s']} s CPU"
                      f"{', CRASHED' if p['crashed'] else ''}" for n, p in r.processes.items())
    ratio = f" ({r.append_ratio}x)" if r.append_ratio is not None else ""
    renew_ratio = f" ({r.renew_ratio}x)" if r.renew_ratio is not None else ""
    print(f"{r.name:20} append p99 {r.append_p99_ms} ms{ratio}, renew p99 {r.renew_p99_ms} ms{renew_ratio}, "
          f"lease losses {r.lease_losses}, in-doubt {r.in_doubt}, renew failures {r.renew_failures}, "
          f"host CPU {r.host_busy_pct:.0f}% busy", flush=True)
    print(f"{'':20} {procs}", flush=True)
    if r.flood:
        print(f"{'':20} flood: {r.flood}", flush=True)


def summarize(results: list[PhaseResult], args: argparse.Namespace, nofile: int) -> dict[str, Any]:
    floods = [r for r in results if r.name != "baseline" and not r.name.startswith(("quiet-", "sink-"))]
    rss = max((p["rss_growth_mb"] for r in floods for p in r.processes.values()), default=0.0)
    ratios = [r.append_ratio for r in floods if r.append_ratio is not None]
    crashes = sum(p["crashed"] for r in floods for p in r.processes.values())
    losses = sum(r.lease_losses for r in floods)
    meets = {r.name: (max(p["rss_growth_mb"] for p in r.processes.values()) < TARGET_RSS_MB
                      and r.lease_losses == 0 and not any(p["crashed"] for p in r.processes.values())
                      and (r.append_ratio or 0) <= TARGET_P99_RATIO) for r in floods}
    return {
        "benchmark": "hostile", "seconds_per_phase": args.seconds, "rate": args.rate, "limit_nofile": nofile,
        "phases": {r.name: {"append_p99_ms": r.append_p99_ms, "append_ratio": r.append_ratio,
                            "renew_p99_ms": r.renew_p99_ms, "renew_ratio": r.renew_ratio,
                            "lease_losses": r.lease_losses, "in_doubt": r.in_doubt,
                            "renew_failures": r.renew_failures, "host_busy_pct": r.host_busy_pct,
                            "processes": r.processes, "flood": r.flood}
                   for r in results},
        "max_rss_growth_mb": rss, "max_append_ratio": max(ratios) if ratios else None, "crashes": crashes,
        "lease_losses": losses, "targets_met": meets,
        "sink_append_ratios": {r.name.removeprefix("sink-"): r.append_ratio for r in results
                               if r.name.startswith("sink-")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--quiet", type=float, default=None,
                        help="length of the quiet window before each flood (default: half of --seconds)")
    parser.add_argument("--only", action="append", choices=FLOODS, help="run only this flood (repeatable)")
    parser.add_argument("--rate", type=float, default=1000.0, help="engine records/s (default 1000)")
    parser.add_argument("--batch", type=int, default=10, help="records per append request (default 10)")
    parser.add_argument("--connections", type=int, default=2000, help="bare connections per flood (2000)")
    parser.add_argument("--hostile", type=int, default=200, help="pre-auth / slow-loris connections (200)")
    parser.add_argument("--sink", action="store_true",
                        help="also run each TCP flood against a sink process (same accept loop and bounds, not the "
                             "pair): the flood generator's and the kernel's share of the ratio on this host")
    parser.add_argument("--flood-worker", choices=FLOODS, help=argparse.SUPPRESS)
    parser.add_argument("--sink-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quiet is None:
        args.quiet = args.seconds / 2
    if args.sink_worker:
        sink_main()
        return 0
    if args.flood_worker:
        flood_main(args.flood_worker, args.target, args.seconds, args.connections)
        return 0
    summary = run(args)
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
