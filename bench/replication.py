#!/usr/bin/env python3
"""Benchmark: journal replication between two real ``lifeline run`` processes on loopback.

    .venv/bin/python bench/replication.py [--repeat 3] [--batch 500] [--latency-batch 20]
                                          [--latency-seconds 10] [--profile DIR]

No root needed. Every repeat builds a fresh pair under a temp dir (two configs, a new
replication key, the primary listening on 127.0.0.1:<free port>, the standby following
it; ``fsync = "always"`` on both; metrics on port 0), starts both as real processes
(:class:`lab.procs.DaemonProcess`, which waits for sd_notify READY) and waits
until the primary reports the standby in sync. Then:

1. **Throughput**: the whole replay of the recorded Binance feeds
   (``lab.replay_engine``, 440 641 lines merged by receive time, each line one
   record) at maximum speed, ``mode = "sync"``. One control connection, requests
   *pipelined* (request k+1 is on the wire before reply k is read; at most
   ``--window`` outstanding). The daemon answers one request at a time per connection
   in arrival order, so the journal's order is the feed's order; the benchmark checks
   it (the acknowledged seqs are consecutive in feed order) and, after stopping the
   standby, reads its segment files read-only and checks every acknowledged record is
   there byte-identical to its source line (and ``verify_directory`` on both journals).
   Several connections would overlap requests inside the daemon but would let the
   journal interleave them out of feed order, which an engine's journal must not do.
   ``--batch`` (records per request) defaults to 500, as in the issue's manual run.
2. **Latency**: an open-loop run at an offered ``--rate`` records/s (10 000): a batch of
   ``--latency-batch`` records (20) is due every ``batch / rate`` seconds (2 ms) on a
   fixed schedule, sent on the same kind of pipelined connection whether or not earlier
   replies are in. A record's latency is its reply's arrival minus its batch's
   *scheduled* time, so a stall delays every batch due during it and shows up in the
   figures (no coordinated omission). p50 / p99 / p99.9 over records, after a warm-up.
   The daemon serves one connection's requests one at a time, so this shape leaves
   little slack: a request costs about 1.2-1.5 ms end to end on this kind of host.
3. **Baseline**: the same max-speed replay against a single primary with
   ``mode = "async"`` and no standby — local-only fsync'd appends through the very
   same path (control socket, request handling, journal group commit with one fsync per
   batch). We did not use ``mode = "sync"`` without a standby: that answers through
   ``on_standby_loss`` (in-doubt or degraded), a failure path rather than the baseline.
   ``ratio`` = sync records/s ÷ baseline records/s (1.0 would mean replication is free).

RSS is each daemon's resident set (psutil) at the end of its run; ``rss_mb`` is the
larger of the pair's. The machine is shared: with ``--repeat`` > 1 every figure is the
median over repeats (each repeat runs sync and baseline back to back), and each phase
reports how much CPU the rest of the host used meanwhile (other tenants), because that
is what moves the figures between repeats. The daemons' CPU time during the replay is
reported per record.

The measuring client must not measure itself: it sleeps rather than spins until a
batch is due (a spinning client takes a core from the daemons), keeps no reply objects
(only seqs, status counts and arrival times), and runs with its garbage collector off
while it measures (full collections over hundreds of thousands of reply dicts paused
its reader thread for tens of milliseconds, which read as daemon latency).

``--profile DIR`` samples both daemons with py-spy during the replays (collapsed
stacks; ``BENCH_PYSPY_NATIVE=1`` adds native frames). Human lines go to stdout first;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from daemon.config import dump_toml  # noqa: E402
from lab.lifecycle import default_lab_config  # noqa: E402
from lab.procs import DaemonProcess, free_port  # noqa: E402
from lab.replay_engine import FULL_FEEDS, feed_paths, merged_lines  # noqa: E402
from daemon.standby.journal import verify_directory  # noqa: E402
from daemon.standby.journal_format import SEGMENT_HEADER_SIZE, decode_records  # noqa: E402
from daemon.standby.keys import generate_replication_key  # noqa: E402

TARGET_RECORDS_PER_S = 50_000
TARGET_P99_MS = 5.0
TARGET_RSS_MB = 100.0
#: Largest request line the client builds (the daemon's default limit is 4 MiB).
MAX_REQUEST_BYTES = 2 * 1024 * 1024


# --------------------------------------------------------------------------- the pair


def node_config(workdir: Path, name: str, standby: dict[str, Any]) -> dict[str, Any]:
    config = default_lab_config(workdir, node=name)
    config["system"] = {"interval": "2s", "sustain": "10s"}  # the daemon's defaults, not the lab's
    config["standby"] = {"journal": {"fsync": "always"}, **standby}
    return config


@dataclass
class Node:
    name: str
    workdir: Path
    proc: DaemonProcess

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "control.sock"

    @property
    def journal_dir(self) -> Path:
        return self.workdir / "state" / "journal"

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return rpc(self.socket, method, params)

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds used so far, threads included."""
        assert self.proc.proc is not None
        times = psutil.Process(self.proc.proc.pid).cpu_times()
        return times.user, times.system

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MB."""
        assert self.proc.proc is not None
        p = psutil.Process(self.proc.proc.pid)
        rss = p.memory_info().rss / 1e6
        peak = rss
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024 / 1e6
        except OSError:
            pass
        return rss, peak


def start_node(workdir: Path, name: str, standby: dict[str, Any]) -> Node:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "lifeline.toml"
    path.write_text(dump_toml(node_config(workdir, name, standby)))
    proc = DaemonProcess(config=path, workdir=workdir, watchdog_usec=None)
    proc.start()
    if not proc.wait_ready(30):
        proc.stop()
        raise RuntimeError(f"{name} did not become ready:\n{proc.log_text()[-3000:]}")
    return Node(name, workdir, proc)


def stop_node(node: Node) -> None:
    node.proc.stop()
    node.proc.close()


def rpc(path: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"id": 1, "method": method, "params": params or {}}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            data = s.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{path}: closed")
            buf += data
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise RuntimeError(f"{method}: {reply.get('error')}")
    return reply["result"]


def wait_in_sync(primary: Node, timeout: float = 30.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        details = primary.call("journal.stats")
        if details.get("replication", {}).get("in_sync"):
            return time.monotonic() - began
        time.sleep(0.05)
    raise RuntimeError(f"the standby did not get in sync within {timeout:g}s: {primary.call('journal.stats')}")


class Background:
    """CPU the rest of the host used during a phase: host busy time minus what this
    client and the daemons used, as a percentage of all CPUs (the machine is shared;
    other tenants' load is the main source of spread between repeats)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.procs = [psutil.Process()] + [psutil.Process(n.proc.proc.pid) for n in nodes if n.proc.proc]

    @staticmethod
    def _host_busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _ours(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def __enter__(self) -> Background:
        self.began, self.host, self.ours = time.monotonic(), self._host_busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.began
        other = (self._host_busy() - self.host) - (self._ours() - self.ours)
        self.pct = max(0.0, 100.0 * other / (wall * (psutil.cpu_count() or 1))) if wall > 0 else 0.0


# --------------------------------------------------------------------------- the pipelined writer


class PipelinedWriter:
    """One control connection; ``submit`` writes a journal.append request at once (the
    daemon queues it behind the ones it is serving); a reader thread takes the replies
    in order and keeps, per request, ``(request index, seqs, status counts, arrival
    time)``. It keeps no reply objects: a measuring client that holds hundreds of
    thousands of dicts spends tens of milliseconds in each full garbage collection,
    and those pauses would show up as "latency" of the daemon."""

    def __init__(self, path: Path, window: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.window = threading.Semaphore(window)
        self.sent = 0
        self.error: BaseException | None = None
        self.replies: deque[tuple[int, list[int], dict[str, int], float]] = deque()
        self._expected: deque[int] = deque()
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def submit(self, texts: list[str]) -> None:
        self.window.acquire()
        line = json.dumps({"id": self.sent, "method": "journal.append", "params": {"payloads": texts}},
                          separators=(",", ":")).encode() + b"\n"
        self._expected.append(len(texts))
        self.sent += 1
        self.sock.sendall(line)

    def _read(self) -> None:
        buf = bytearray()
        start = 0
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                buf += data
                while True:
                    newline = buf.find(b"\n", start)
                    if newline < 0:
                        start = len(buf)
                        break
                    now = time.perf_counter()
                    reply = json.loads(buf[:newline])
                    del buf[:newline + 1]
                    start = 0
                    if not reply.get("ok"):
                        raise RuntimeError(f"journal.append refused: {reply.get('error')}")
                    results = reply["result"]["results"]
                    if len(results) != self._expected.popleft():
                        raise RuntimeError("a reply with the wrong number of results")
                    kinds: dict[str, int] = {}
                    for result in results:
                        kind = f"ok ({result['durable_on']})" if result["status"] == "ok" else result["status"]
                        kinds[kind] = kinds.get(kind, 0) + 1
                    self.replies.append((int(reply["id"]), [r["seq"] for r in results], kinds, now))
                    self.window.release()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
            for _ in range(64):
                self.window.release()
        finally:
            self._done.set()

    def drain(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.replies) < self.sent and self.error is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replies missing: {len(self.replies)} of {self.sent}")
            time.sleep(0.001)
        if self.error is not None:
            raise RuntimeError(f"writer failed: {self.error}")

    def close(self) -> None:
        self.sock.close()
        self._reader.join(5)


def batches(texts: list[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the first line, up to ``size`` lines) within MAX_REQUEST_BYTES."""
    i = 0
    while i < len(texts):
        j, used = i, 0
        while j < len(texts) and j - i < size:
            used += len(texts[j]) + 16
            if used > MAX_REQUEST_BYTES and j > i:
                break
            j += 1
        yield i, texts[i:j]
        i = j


@dataclass
class Throughput:
    records: int
    bytes: int
    seconds: float
    statuses: dict[str, int]
    seqs: list[int] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


class no_gc:
    """The client's collector off while it measures (it makes no reference cycles)."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was:
            gc.enable()


def run_throughput(node: Node, texts: list[str], payload_bytes: int, batch: int, window: int) -> Throughput:
    with no_gc():
        return _run_throughput(node, texts, payload_bytes, batch, window)


def _run_throughput(node: Node, texts: list[str], payload_bytes: int, batch: int, window: int) -> Throughput:
    writer = PipelinedWriter(node.socket, window)
    starts: list[int] = []
    began = time.perf_counter()
    for first, chunk in batches(texts, batch):
        starts.append(first)
        writer.submit(chunk)
    writer.drain()
    seconds = time.perf_counter() - began
    writer.close()
    statuses: dict[str, int] = {}
    seqs: list[int] = [0] * len(texts)
    for index, reply_seqs, kinds, _at in writer.replies:
        seqs[starts[index]:starts[index] + len(reply_seqs)] = reply_seqs
        for kind, n in kinds.items():
            statuses[kind] = statuses.get(kind, 0) + n
    return Throughput(len(texts), payload_bytes, seconds, statuses, seqs)


def run_latency(node: Node, texts: list[str], rate: float, batch: int, seconds: float, warmup: float,
                window: int, connections: int = 1) -> dict[str, Any]:
    with no_gc():
        return _run_latency(node, texts, rate, batch, seconds, warmup, window, connections)


def _run_latency(node: Node, texts: list[str], rate: float, batch: int, seconds: float, warmup: float,
                 window: int, connections: int = 1) -> dict[str, Any]:
    """Open loop: batch i is due at t0 + i * batch / rate, whatever the replies do; batch
    i goes on connection i mod ``connections``."""
    interval = batch / rate
    count = int(seconds * rate / batch)
    writers = [PipelinedWriter(node.socket, window) for _ in range(connections)]
    due: list[float] = []
    t0 = time.perf_counter() + 0.05
    late = 0
    for i in range(count):
        at = t0 + i * interval
        # Sleep, never spin: on a 2-core box a spinning client takes a core from the
        # daemons. Oversleeping only adds to the measured latency (it counts from `at`).
        if (left := at - time.perf_counter()) > 0:
            time.sleep(left)
        if time.perf_counter() - at > interval:
            late += 1
        due.append(at)
        lo = (i * batch) % (len(texts) - batch)
        writers[i % connections].submit(texts[lo:lo + batch])
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    skip = int(warmup * rate / batch)
    for k, writer in enumerate(writers):
        writer.drain()
        writer.close()
        for index, reply_seqs, kinds, arrived in writer.replies:
            for kind, n in kinds.items():
                statuses[kind] = statuses.get(kind, 0) + n
            scheduled = index * connections + k  # the writer numbers its own requests
            if scheduled >= skip:
                latencies.extend([(arrived - due[scheduled]) * 1000] * len(reply_seqs))
    latencies.sort()
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "p999": percentile(latencies, 99.9),
            "max": latencies[-1], "records": len(latencies), "statuses": statuses, "late_sends": late,
            "interval_ms": interval * 1000}


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


# --------------------------------------------------------------------------- profiling (optional)


def profile_start(directory: str | None, n: int, run: str, nodes: dict[str, Node]) -> list[Any]:
    """With --profile DIR: py-spy (``pip install py-spy``) samples each daemon during
    the run and writes collapsed stacks to DIR/<run>-<node>-<repeat>.txt."""
    if not directory:
        return []
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    Path(directory).mkdir(parents=True, exist_ok=True)
    procs = []
    for name, node in nodes.items():
        assert node.proc.proc is not None
        out = Path(directory) / f"{run}-{name}-{n}.txt"
        procs.append(subprocess.Popen([spy, "record", "--pid", str(node.proc.proc.pid), "--format", "raw",
                                       "--rate", "250", "--output", str(out),
                                       *(["--native"] if os.environ.get("BENCH_PYSPY_NATIVE") else ["--nonblocking"])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attaches
    return procs


def profile_stop(procs: list[Any]) -> None:
    import signal

    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        proc.wait(30)


# --------------------------------------------------------------------------- checks


def read_journal_files(directory: Path) -> Iterator[tuple[int, bytes]]:
    """(seq, payload) of every record in the segment files, read-only."""
    for path in sorted(directory.glob("*.seg")):
        data = path.read_bytes()
        records, _consumed, reason = decode_records(data, SEGMENT_HEADER_SIZE)
        if reason is not None:
            raise RuntimeError(f"{path}: stopped decoding: {reason}")
        for record in records:
            yield record.seq, record.payload


def check_standby(standby_dir: Path, primary_dir: Path, expected: dict[int, bytes]) -> str:
    problems = []
    for d in (primary_dir, standby_dir):
        report = verify_directory(d)
        if not report.ok:
            problems.append("; ".join(report.lines()))
    found = 0
    mismatched = 0
    for seq, payload in read_journal_files(standby_dir):
        want = expected.get(seq)
        if want is None:
            continue
        found += 1
        if payload != want:
            mismatched += 1
    missing = len(expected) - found
    if missing or mismatched:
        problems.append(f"standby journal: {missing} acknowledged records missing, {mismatched} differ")
    return "; ".join(problems)


# --------------------------------------------------------------------------- one repeat


def one_repeat(tmp: Path, n: int, texts: list[str], lines: list[bytes], payload_bytes: int,
               args: argparse.Namespace, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    workdir = tmp / f"r{n}"
    key_file = workdir / "replication.key"
    workdir.mkdir(parents=True)
    generate_replication_key(key_file)
    port = free_port()
    common = {"key_file": str(key_file), "mode": "sync", "on_standby_loss": "degrade-to-async"}
    primary = start_node(workdir / "primary", "bench-primary",
                         {**common, "role": "primary", "listen": f"127.0.0.1:{port}"})
    standby: Node | None = None
    try:
        standby = start_node(workdir / "standby", "bench-standby",
                             {**common, "role": "standby", "listen": "127.0.0.1:0", "peer": f"127.0.0.1:{port}"})
        out["sync_wait_s"] = wait_in_sync(primary)
        spies = profile_start(args.profile, n, "sync", {"primary": primary, "standby": standby})
        cpu_before = {"primary": primary.cpu_seconds(), "standby": standby.cpu_seconds()}
        with Background([primary, standby]) as bg_sync:
            tp = run_throughput(primary, texts, payload_bytes, args.batch, args.window)
        cpu = {name: tuple(b - a for a, b in zip(cpu_before[name], node.cpu_seconds()))
               for name, node in (("primary", primary), ("standby", standby))}
        profile_stop(spies)
        out["sync"] = tp
        ok_both = tp.statuses.get("ok (primary+standby)", 0)
        in_order = all(b == a + 1 for a, b in zip(tp.seqs, tp.seqs[1:]))
        out["order_ok"] = in_order
        out["background_sync"] = bg_sync.pct
        log(f"  [{n}] sync:     {tp.records_per_s:9,.0f} records/s, {tp.mb_per_s:6.1f} MB/s, {tp.seconds:.2f} s, "
            f"statuses {tp.statuses}, journal order = feed order: {in_order}; "
            f"other tenants' CPU {bg_sync.pct:.0f}% of the host")
        log(f"  [{n}] CPU during the replay: " + ", ".join(
            f"{name} {u + s_:.2f} s (user {u:.2f}, sys {s_:.2f}; {(u + s_) / tp.records * 1e6:.1f} us/record)"
            for name, (u, s_) in cpu.items()))
        out["cpu"] = cpu
        if ok_both != len(texts):
            out.setdefault("problems", []).append(f"sync: only {ok_both} of {len(texts)} ok on primary+standby")
        if not in_order:
            out.setdefault("problems", []).append("sync: the journal's order is not the feed's order")
        wait_in_sync(primary)
        # No window here: an open-loop sender must not wait for replies.
        with Background([primary, standby]) as bg_lat:
            lat = run_latency(primary, texts, args.rate, args.latency_batch, args.latency_seconds, args.warmup,
                              window=1 << 20, connections=args.latency_connections)
        out["latency"] = lat
        out["background_latency"] = bg_lat.pct
        log(f"  [{n}] latency:  {args.rate:,.0f} records/s offered in batches of {args.latency_batch} every "
            f"{lat['interval_ms']:.2f} ms on {args.latency_connections} connection(s): p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
            f"p99.9 {lat['p999']:.2f} ms, max {lat['max']:.2f} ms ({lat['records']} records, "
            f"statuses {lat['statuses']}, {lat['late_sends']} sends late; other tenants' CPU {bg_lat.pct:.0f}%)")
        rss = {"primary": primary.rss_mb(), "standby": standby.rss_mb()}
        out["rss"] = rss
        log(f"  [{n}] RSS:      primary {rss['primary'][0]:.1f} MB (peak {rss['primary'][1]:.1f}), "
            f"standby {rss['standby'][0]:.1f} MB (peak {rss['standby'][1]:.1f})")
    finally:
        if standby is not None:
            stop_node(standby)
        stop_node(primary)
    expected = {seq: line for seq, line in zip(out["sync"].seqs, lines)}
    problem = check_standby(standby.journal_dir, primary.journal_dir, expected)
    out["standby_ok"] = not problem
    log(f"  [{n}] standby:  {len(expected):,} acknowledged records "
        + ("all byte-identical to the source lines" if not problem else f"PROBLEM: {problem}"))
    if problem:
        out.setdefault("problems", []).append(problem)

    baseline = start_node(workdir / "baseline", "bench-baseline",
                          {"key_file": str(key_file), "role": "primary", "mode": "async",
                           "listen": f"127.0.0.1:{free_port()}"})
    try:
        spies = profile_start(args.profile, n, "baseline", {"primary": baseline})
        with Background([baseline]) as bg_base:
            bt = run_throughput(baseline, texts, payload_bytes, args.batch, args.window)
        out["background_baseline"] = bg_base.pct
        profile_stop(spies)
        out["baseline"] = bt
        out["baseline_rss"] = baseline.rss_mb()
        log(f"  [{n}] baseline: {bt.records_per_s:9,.0f} records/s, {bt.mb_per_s:6.1f} MB/s, {bt.seconds:.2f} s "
            f"(async, no standby), statuses {bt.statuses}; other tenants' CPU {bg_base.pct:.0f}%")
    finally:
        stop_node(baseline)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh pairs; figures are medians")
    parser.add_argument("--batch", type=int, default=500, help="records per journal.append in the replay")
    parser.add_argument("--window", type=int, default=4, help="requests in flight on the connection")
    parser.add_argument("--lines", type=int, default=None, help="replay only the first N lines")
    parser.add_argument("--rate", type=float, default=10_000, help="offered records/s in the latency run")
    parser.add_argument("--latency-batch", type=int, default=20, help="records per request in the latency run")
    parser.add_argument("--latency-connections", type=int, default=1,
                        help="control connections the latency run's batches take turns on")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of the latency run not counted")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="replay the full recordings from DIR (e.g. ../shared/data/hftbacktest_feeds) "
                             "instead of the trimmed sample shipped in lab/data")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="sample the daemons with py-spy during the replays (collapsed stacks in DIR)")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, flush=True)

    paths = feed_paths(Path(args.data), FULL_FEEDS) if args.data else feed_paths()
    lines = [line for _, line in merged_lines(paths)]
    if args.lines:
        lines = lines[:args.lines]
    texts = [line.decode("utf-8") for line in lines]
    payload_bytes = sum(len(line) for line in lines)
    log(f"replication benchmark: {len(lines):,} recorded feed lines ({payload_bytes / 1e6:.1f} MB), "
        f"{args.repeat} repeat(s), fsync always on both nodes, {psutil.cpu_count()} CPUs")
    log(f"  replay: batches of {args.batch}, pipelined ({args.window} in flight) on one control connection")
    runs = []
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-repl-") as tmp:
        for n in range(args.repeat):
            runs.append(one_repeat(Path(tmp), n, texts, lines, payload_bytes, args, log))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    sync_rps = med([r["sync"].records_per_s for r in runs])
    sync_mbps = med([r["sync"].mb_per_s for r in runs])
    base_rps = med([r["baseline"].records_per_s for r in runs])
    base_mbps = med([r["baseline"].mb_per_s for r in runs])
    p50 = med([r["latency"]["p50"] for r in runs])
    p99 = med([r["latency"]["p99"] for r in runs])
    p999 = med([r["latency"]["p999"] for r in runs])
    rss = med([max(r["rss"]["primary"][0], r["rss"]["standby"][0]) for r in runs])
    peak = max(max(r["rss"]["primary"][1], r["rss"]["standby"][1]) for r in runs)
    problems = [p for r in runs for p in r.get("problems", [])]
    figures = {
        "sync_records_per_s": round(sync_rps), "mb_per_s": round(sync_mbps, 1),
        "ack_p50_ms": round(p50, 3), "ack_p99_ms": round(p99, 3), "ack_p999_ms": round(p999, 3),
        "baseline_records_per_s": round(base_rps), "baseline_mb_per_s": round(base_mbps, 1),
        "ratio": round(sync_rps / base_rps, 3), "rss_mb": round(rss, 1), "rss_peak_mb": round(peak, 1),
        "records": len(lines), "batch": args.batch, "latency_batch": args.latency_batch,
        "offered_records_per_s": args.rate, "repeat": len(runs),
        "sync_records_per_s_runs": [round(r["sync"].records_per_s) for r in runs],
        "baseline_records_per_s_runs": [round(r["baseline"].records_per_s) for r in runs],
        "ack_p99_ms_runs": [round(r["latency"]["p99"], 3) for r in runs],
        "background_cpu_pct": {phase: round(med([r[f"background_{phase}"] for r in runs]))
                               for phase in ("sync", "latency", "baseline")},
        "standby_verified": all(r.get("standby_ok") for r in runs), "problems": problems,
    }
    mark = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    log(f"medians over {len(runs)} repeat(s):")
    log(f"  sync throughput:  {sync_rps:,.0f} records/s, {sync_mbps:.1f} MB/s "
        f"(target >= {TARGET_RECORDS_PER_S:,}: {mark(sync_rps >= TARGET_RECORDS_PER_S)})")
    log(f"  baseline (local): {base_rps:,.0f} records/s, {base_mbps:.1f} MB/s; sync/baseline = {sync_rps / base_rps:.2f}")
    log(f"  ack latency at {args.rate:,.0f} records/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms "
        f"(target p99 <= {TARGET_P99_MS} ms: {mark(p99 <= TARGET_P99_MS)})")
    log(f"  daemon RSS: {rss:.1f} MB at the end (largest of the pair), peak {peak:.1f} MB "
        f"(target <= {TARGET_RSS_MB:.0f} MB: {mark(rss <= TARGET_RSS_MB)})")
    log(f"  other tenants' CPU during the runs (median, % of the host): {figures['background_cpu_pct']}")
    if problems:
        log(f"  PROBLEMS: {problems}")
    print(json.dumps(figures), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
