"""The nemesis: a seeded random schedule of faults against a live pair, a writer that
logs every request and answer, and a checker over the whole history afterwards.

    lifeline drill nemesis [--duration 10m] [--seed S] [--classes C,...] [--json] [--history [PATH]]
                           [--report FILE.html]

The pair lab (:mod:`lab.pair`) runs two real ``lifeline run`` processes in
``llp-edge-a`` / ``llp-edge-b`` (sync mode, ``degrade-to-async``, the drills' replication
timers, the daemon's default lease timings) and a real witness. Then, until the duration
is spent, the nemesis applies one fault of its schedule at a time, holds it, undoes it
(heals the cut, SIGCONTs, restarts what it killed) and waits for a primary before the
next. The schedule comes from ``random.Random(seed)`` alone (:func:`make_schedule`), so
``--seed`` replays it; targets are roles (``primary``, ``standby``, ``witness``),
resolved to hosts when the fault is applied (both are in the history).

The fault classes (:data:`CLASSES`):

``kill9``      SIGKILL a daemon or the witness, restart it after the hold.
``pause``      SIGSTOP a daemon or the witness, SIGCONT after the hold.
``restart``    SIGTERM a daemon and start it again (a clean restart).
``crash``      a host crash: the daemon's packets to its peer stop at that instant (a
               one-way cut armed beforehand) and it is killed with SIGKILL; back after the
               hold. (kill -9 alone lets the kernel still deliver the dead process's
               socket buffers; a machine that dies does not.)
``partition``  cut two of primary / standby / witness from each other (nftables, both ways).
``one_way``    one of them drops everything the other sends (the reverse path works).
``flap``       cut and heal a pair every 0.2-0.8 s for the hold.
``blip_kill``  the targeted one (the catch-up hole of issue 14): cut primary ↔ standby
               long enough for the primary to acknowledge alone (2-6 s; peer_timeout is
               1 s), heal; the standby reconnects with a catch-up target (the primary's
               last seq then) while the writer keeps appending; once the primary has
               sent the target (``journal.stats``), the link drops again one way,
               primary → standby (a cut armed beforehand). The standby still
               acknowledges what it got, the primary declares it in sync and the store
               marks it synchronous; 0-5 ms later the primary is killed with SIGKILL.
               A primary that calls the standby in sync only once it holds every record
               answered without it never sets the mark here, and nothing is lost.

Slow fsync is not among them: the kernel here has no device-mapper (``dmsetup targets``:
"/dev/mapper/control: open failed"), so no ``dm-delay``; ``/dev/fuse`` exists but no FUSE
library is installed to build a slow pass-through file system. ``pause`` of a daemon
stalls its fsyncs with everything else.

The writer (:class:`Writer`) plays a trading engine: it appends through whichever node
its ``role.watch`` feed says is primary (and, when the feed carries one, before that
node's ``valid_until``), and like a confused engine through the other one too, now and
then. It logs every request (node, payloads, CLOCK_MONOTONIC send and receive times,
the answers: seq, epoch, status; refusals, timeouts, lost connections) and a watcher
(:class:`FeedWatcher`) logs every role.watch message of each node with its receive time.
When the feed carries no ``valid_until`` (before issue 14's fence deadline), a
``primary`` message counts as valid until the node's next message (or its feed ends).

At the end everything is healed and restarted, the pair settles (one primary, the other
caught up), both journals are read back and :func:`lab.nemesis_check.check` judges
the history: acknowledged records lost, seqs acknowledged twice with different payloads,
``ok`` answers outside the node's trading intervals, in-doubt records read back.
``--history`` writes the whole history and the verdict as JSON lines; ``--report`` the
HTML drill report (:func:`lab.report.drills.nemesis_section`: both nodes' roles and
trading intervals from the feeds, the faults, promotion times, the checks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import Duration
from daemon.core.control_client import ControlClient, ControlError
from daemon.standby.keys import generate_replication_key
from lab import pair as lab_pair
from lab.drills import add_report_argument, write_drill_report
from lab.ha_drills import CLUSTER, Node
from lab.nemesis_check import CheckResult, check, payload_text
from lab.pair import EDGES, REPLICATION_TIMERS, ArmedCut, LabProcess, PairLab, pair_unavailable
from lab.procs import journal_records, until

CLASSES = ("kill9", "pause", "restart", "crash", "partition", "one_way", "flap", "blip_kill")
#: The classes a run draws from unless told otherwise (all of them).
DEFAULT_CLASSES = CLASSES
ROLES = ("primary", "standby", "witness")
PAIRS = (("primary", "standby"), ("primary", "witness"), ("standby", "witness"))

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Fault:
    """One fault of the schedule: wait ``gap`` s, apply, hold ``hold`` s, undo."""

    index: int
    cls: str
    targets: tuple[str, ...]  # roles: "primary", "standby", "witness"
    gap: float
    hold: float
    period: float = 0.0  # flap: cut/heal every period s
    delay_ms: float = 0.0  # blip_kill: from the in-sync mark to the kill

    def describe(self) -> str:
        t = (*self.targets, "", "")  # the table below formats every entry
        what = {
            "kill9": f"kill -9 the {t[0]}, restart after {self.hold:.1f} s",
            "pause": f"SIGSTOP the {t[0]} for {self.hold:.1f} s",
            "restart": f"SIGTERM the {t[0]} and start it again",
            "crash": f"crash the {t[0]}'s host (its packets stop, kill -9), back after {self.hold:.1f} s",
            "partition": f"cut {t[0]} from {t[1]} for {self.hold:.1f} s",
            "one_way": f"{t[1]} drops what {t[0]} sends for {self.hold:.1f} s",
            "flap": f"flap {t[0]} <-> {t[1]} every {self.period:.2f} s for {self.hold:.1f} s",
            "blip_kill": f"cut primary <-> standby for {self.hold:.1f} s, heal, cut primary -> standby once "
                         f"the catch-up target is sent, kill -9 the primary {self.delay_ms:.1f} ms after "
                         "the store marks the standby synchronous",
        }[self.cls]
        return f"#{self.index} after {self.gap:.1f} s: {what}"


def make_schedule(seed: int, duration: float, classes: tuple[str, ...] = DEFAULT_CLASSES) -> list[Fault]:
    """The faults of a run, from the seed alone (more than ``duration`` can use: the run
    stops when its time is spent)."""
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"unknown fault class(es) {', '.join(unknown) or '(none given)'}; "
                         f"the classes are {', '.join(CLASSES)}")
    rng = random.Random(seed)
    out: list[Fault] = []
    planned = 0.0
    while planned < duration * 2 + 10:
        cls = rng.choice(classes)
        gap = round(rng.uniform(0.5, 3.0), 2)
        hold = round(rng.uniform(0.3, 4.0), 2)
        period = 0.0
        delay = 0.0
        if cls in ("kill9", "pause"):
            targets: tuple[str, ...] = (rng.choice(ROLES),)
        elif cls == "crash":
            targets = (rng.choice(ROLES[:2]),)
        elif cls == "restart":
            targets = (rng.choice(ROLES[:2]),)
            hold = 0.0
        elif cls == "partition":
            targets = rng.choice(PAIRS)
        elif cls == "one_way":
            a, b = rng.choice(PAIRS)
            targets = (a, b) if rng.random() < 0.5 else (b, a)
        elif cls == "flap":
            targets = rng.choice(PAIRS)
            hold = round(rng.uniform(2.0, 6.0), 2)
            period = round(rng.uniform(0.2, 0.8), 2)
        else:  # blip_kill
            targets = ("primary", "standby")
            # Longer than peer_timeout (the primary degrades), long enough for a backlog
            # whose catch-up takes a while (the writer keeps appending meanwhile).
            hold = round(rng.uniform(2.0, 6.0), 2)
            delay = round(rng.uniform(0.0, 5.0), 1)
        out.append(Fault(len(out) + 1, cls, targets, gap, hold, period, delay))
        planned += gap + hold + 2.0
    return out


# --------------------------------------------------------------------------- the history


class History:
    """Every record of a run, in arrival order (threads append; the GIL orders them)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)


class FeedWatcher(threading.Thread):
    """Follows one node's ``role.watch`` across its restarts; logs every message with
    its receive time, and every end of a feed connection."""

    def __init__(self, node: Node, history: History, feeds: FeedIds, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"nemesis-feed-{node.name}")
        self.node = node
        self.history = history
        self.feeds = feeds
        self.stop_event = stop
        self.current: dict[str, Any] | None = None
        self.connected = False

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                client = ControlClient(self.node.socket, timeout=2).connect()
            except (ConnectionError, OSError):
                self.stop_event.wait(0.05)
                continue
            feed = self.feeds.next()
            try:
                client.call("role.watch")
                first = True
                while not self.stop_event.is_set():
                    try:
                        message = client.read_line(timeout=0.5)
                    except TimeoutError:
                        continue
                    recv = time.monotonic_ns()
                    self.history.add({"kind": "role", "node": self.node.name, "feed": feed, "first": first,
                                      "recv_ns": recv, "msg": message})
                    self.current = message
                    self.connected = True
                    first = False
            except (ConnectionError, OSError, ValueError, ControlError):
                pass
            finally:
                client.close()
                self.connected = False
                self.current = None
                self.history.add({"kind": "feed_end", "node": self.node.name, "feed": feed,
                                  "recv_ns": time.monotonic_ns()})
            self.stop_event.wait(0.05)

    def trading(self, now_ns: int) -> tuple[int, int] | None:
        """(epoch, valid_until or 0) when the feed says this node may trade now."""
        msg = self.current
        if not self.connected or msg is None or msg.get("role") != "primary":
            return None
        valid_until = msg.get("valid_until")
        if "valid_until" in msg and not isinstance(valid_until, int):
            return None  # the feed has deadlines and says none: may not trade
        if isinstance(valid_until, int) and now_ns >= valid_until:
            return None
        return int(msg.get("epoch", 0) or 0), int(valid_until or 0)


def compress_results(results: list[dict[str, Any]]) -> list[list[Any]]:
    """A journal.append answer as runs ``[first_seq, last_seq, epoch, status]``."""
    runs: list[list[Any]] = []
    for r in results:
        seq, epoch, status = int(r["seq"]), int(r.get("epoch", 0)), str(r["status"])
        if runs and runs[-1][1] == seq - 1 and runs[-1][2] == epoch and runs[-1][3] == status:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq, epoch, status])
    return runs


class FeedIds:
    """A thread-safe counter (feed connection ids)."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._n += 1
            return self._n


class Writer(threading.Thread):
    """The engine stand-in: appends unique payloads through the node its feeds say may
    trade; with probability ``confused`` through the other one. Logs every request."""

    def __init__(self, nodes: dict[str, Node], watchers: dict[str, FeedWatcher], history: History, seed: int,
                 *, batch_max: int = 50, pause: float = 0.0, confused: float = 0.03,
                 request_timeout: float = 3.0) -> None:
        super().__init__(daemon=True, name="nemesis-writer")
        self.nodes = nodes
        self.watchers = watchers
        self.history = history
        self.seed = seed
        self.rng = random.Random(seed ^ 0x5EED)
        self.batch_max = batch_max
        self.pause = pause
        self.confused = confused
        self.request_timeout = request_timeout
        self.counter = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.ok = 0
        self._clients: dict[str, ControlClient] = {}

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout)

    def _pick(self) -> str | None:
        now = time.monotonic_ns()
        trading = {n: w.trading(now) for n, w in self.watchers.items()}
        claims = sorted((v[0], n) for n, v in trading.items() if v is not None)
        names = list(self.nodes)
        if claims:
            target = claims[-1][1]  # two claims (a stale feed): the higher epoch
            other = next(n for n in names if n != target)
            if self.watchers[other].connected and self.rng.random() < self.confused:
                target = other
            return target
        # Confused with no primary in sight: any node whose feed is followed (an ok from
        # a node whose feed nobody watched could not be judged).
        followed = [n for n in names if self.watchers[n].connected]
        return self.rng.choice(followed) if followed and self.rng.random() < self.confused else None

    def _drop(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                name = self._pick()
                if name is None:
                    self.stop_event.wait(0.005)
                    continue
                count = self.rng.randint(1, self.batch_max)
                payloads = [payload_text(self.seed, self.counter + i) for i in range(count)]
                record: dict[str, Any] = {"kind": "append", "node": name, "first_n": self.counter, "count": count}
                self.counter += count
                client = self._clients.get(name)
                if client is None:
                    try:
                        client = ControlClient(self.nodes[name].socket, timeout=self.request_timeout).connect()
                        self._clients[name] = client
                    except (ConnectionError, OSError):
                        now = time.monotonic_ns()
                        self.history.add({**record, "sent_ns": now, "recv_ns": now, "outcome": "not_sent"})
                        self.stop_event.wait(0.005)
                        continue
                record["sent_ns"] = time.monotonic_ns()
                try:
                    answer = client.call("journal.append", {"payloads": payloads})
                except ControlError as exc:
                    record.update(recv_ns=time.monotonic_ns(), outcome="refused", error=exc.code)
                    self.history.add(record)
                    self.stop_event.wait(0.002)
                    continue
                except (ConnectionError, OSError, ValueError) as exc:
                    outcome = "timeout" if isinstance(exc, TimeoutError) else "lost"
                    record.update(recv_ns=time.monotonic_ns(), outcome=outcome, error=repr(exc)[:200])
                    self.history.add(record)
                    self._drop(name)
                    self.stop_event.wait(0.002)
                    continue
                record["recv_ns"] = time.monotonic_ns()
                record["outcome"] = "answered"
                record["runs"] = runs = compress_results(answer["results"])
                self.ok += sum(last - first + 1 for first, last, _, status in runs if status == "ok")
                self.history.add(record)
                if self.pause:
                    self.stop_event.wait(self.pause)
        except Exception as exc:  # reported by the run
            self.error = exc
        finally:
            for name in list(self._clients):
                self._drop(name)


# --------------------------------------------------------------------------- the run


@dataclass
class NemesisSettings:
    duration: float = 600.0
    seed: int | None = None
    classes: tuple[str, ...] = DEFAULT_CLASSES
    batch_max: int = 50
    #: Between answered requests (0: back to back, the load that opens the catch-up hole).
    pause: float = 0.0
    #: How often the writer appends through the node its feed does not name.
    confused: float = 0.03
    ready_timeout: float = 30.0
    #: Longest wait for a primary after a fault is undone, before the next one.
    recover_timeout: float = 20.0
    settle_timeout: float = 60.0
    #: Extra ``[standby.lease]`` keys (empty: the daemon's default timings).
    lease: dict[str, Any] = field(default_factory=dict)


@dataclass
class NemesisReport:
    seed: int
    duration: float
    schedule: list[Fault]
    applied: list[dict[str, Any]] = field(default_factory=list)
    result: CheckResult | None = None
    errors: list[str] = field(default_factory=list)
    workdir: str = ""
    history_path: str = ""
    elapsed: float = 0.0
    #: The history without the requests (start, role, feed_end and fault records): what
    #: the HTML report draws.
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.result is not None and self.result.ok

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"drill": "nemesis", "ok": self.ok, "seed": self.seed, "duration_s": self.duration,
                               "elapsed_s": round(self.elapsed, 1), "faults_applied": len(self.applied)}
        if self.result is not None:
            out.update(self.result.figures)
            out["violations"] = [f"{f.rule}: {f.message}" for f in self.result.violations][:20]
        out["errors"] = self.errors
        if self.history_path:
            out["history"] = self.history_path
        if self.workdir:
            out["workdir"] = self.workdir
        return out


class Nemesis:
    def __init__(self, lab: PairLab, workdir: Path, settings: NemesisSettings, seed: int, progress: Progress) -> None:
        self.lab = lab
        self.workdir = workdir
        self.settings = settings
        self.seed = seed
        self.progress = progress
        self.history = History()
        self.nodes: dict[str, Node] = {}
        self.witness: LabProcess | None = None
        self.key = workdir / "replication.key"
        self.paused: set[str] = set()
        self.stop_feeds = threading.Event()
        self.watchers: dict[str, FeedWatcher] = {}
        #: The final primary's first retained seq (its journal is checked from there).
        self.retained_from = 1

    # ------------------------------------------------------------------ processes

    def _start_witness(self) -> None:
        self.witness = self.lab.start_witness(self.workdir / "witness", self.key)

    def _roles(self) -> dict[str, str]:
        """role → host now: the feed's primary (else the last known), the other edge,
        the witness."""
        primary = next((n for n, w in self.watchers.items() if w.trading(time.monotonic_ns())), None)
        if primary is None:
            statuses = {n: node.try_call("role.status") for n, node in self.nodes.items()}
            primary = next((n for n, s in statuses.items() if s and s.get("role") == "primary"), EDGES[0])
        standby = next(n for n in EDGES if n != primary)
        return {"primary": primary, "standby": standby, "witness": "witness"}

    def _signal(self, host: str, sig: int) -> None:
        if host == "witness":
            assert self.witness is not None
            if self.witness.alive():
                self.witness.proc.send_signal(sig)
        else:
            node = self.nodes[host]
            if node.alive():
                assert node.proc is not None and node.proc.proc is not None
                node.proc.proc.send_signal(sig)

    def _kill(self, host: str) -> None:
        if host in self.paused:
            self.paused.discard(host)
        if host == "witness":
            assert self.witness is not None
            self.witness.kill()
        elif self.nodes[host].alive():
            self.nodes[host].kill9()

    def _restart(self, host: str) -> None:
        if host == "witness":
            if self.witness is None or not self.witness.alive():
                self._start_witness()
            return
        node = self.nodes[host]
        if not node.alive():
            node.start(self.lab)
            node.wait_ready(self.settings.ready_timeout)

    def _restore_all(self) -> None:
        for host in list(self.paused):
            self._signal(host, signal.SIGCONT)
        self.paused.clear()
        self.lab.heal()
        for host in ("witness", *EDGES):
            self._restart(host)

    # ------------------------------------------------------------------ faults

    def _apply(self, fault: Fault, deadline: float) -> dict[str, Any]:
        roles = self._roles()
        hosts = [roles[t] for t in fault.targets]
        entry: dict[str, Any] = {"kind": "fault", "class": fault.cls, "index": fault.index, "targets": list(fault.targets),
                                 "hosts": hosts, "start_ns": time.monotonic_ns()}
        hold = min(fault.hold, max(0.0, deadline - time.monotonic()))
        if fault.cls == "kill9":
            self._kill(hosts[0])
            time.sleep(hold)
            self._restart(hosts[0])
        elif fault.cls == "pause":
            self._signal(hosts[0], signal.SIGSTOP)
            self.paused.add(hosts[0])
            time.sleep(hold)
            self._signal(hosts[0], signal.SIGCONT)
            self.paused.discard(hosts[0])
        elif fault.cls == "restart":
            node = self.nodes[hosts[0]]
            code = node.stop()
            entry["exit_code"] = code
            node.close()
            self._restart(hosts[0])
        elif fault.cls == "partition":
            self.lab.partition(hosts[0], hosts[1])
            time.sleep(hold)
            self.lab.heal()
        elif fault.cls == "one_way":
            self.lab.cut_one_way(hosts[0], hosts[1])
            time.sleep(hold)
            self.lab.heal()
        elif fault.cls == "flap":
            end = time.monotonic() + hold
            flaps = 0
            while time.monotonic() < end:
                self.lab.partition(hosts[0], hosts[1])
                time.sleep(fault.period)
                self.lab.heal()
                flaps += 1
                time.sleep(fault.period)
            entry["flaps"] = flaps
        elif fault.cls == "crash":
            self._crash(hosts[0], entry)
            time.sleep(hold)
            self.lab.heal()
            self._restart(hosts[0])
        elif fault.cls == "blip_kill":
            self._blip_kill(hosts[0], hosts[1], hold, fault.delay_ms, entry)
        entry["end_ns"] = time.monotonic_ns()
        return entry

    def _crash(self, host: str, entry: dict[str, Any], armed: ArmedCut | None = None) -> None:
        """A host crash: the daemon's packets to its peer stop at once (a one-way cut
        armed beforehand) and the daemon is killed. A kill -9 alone lets the kernel still
        deliver what sat in the dead process's socket buffers; a machine that dies does not."""
        other = next(n for n in EDGES if n != host)
        armed = armed or self.lab.arm_one_way(host, other)
        try:
            armed.fire()
        finally:
            armed.cancel()
        entry["cut_ns"] = time.monotonic_ns()
        self._kill(host)
        entry["killed_ns"] = time.monotonic_ns()

    def _blip_kill(self, primary: str, standby: str, hold: float, delay_ms: float, entry: dict[str, Any]) -> None:
        node = self.nodes[primary]
        self.lab.partition(primary, standby)
        time.sleep(hold)
        # Out of sync by now? (peer_timeout 1 s: the primary has been acknowledging alone.)
        stats = node.try_call("journal.stats") or {}
        entry["in_sync_before_heal"] = bool(stats.get("replication", {}).get("in_sync"))
        assert node.proc is not None
        log = node.proc.stderr_path
        offset = log.stat().st_size if log.exists() else 0
        armed = self.lab.arm_one_way(primary, standby)

        def lines() -> list[str]:
            with open(log, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace").splitlines()

        def logged(*needles: str) -> bool:
            return any(all(n in line for n in needles) for line in lines())

        def connected_line() -> str | None:
            return next((line for line in lines() if f"event=standby.connected standby={standby} " in line), None)

        try:
            self.lab.heal()
            entry["healed_ns"] = time.monotonic_ns()
            # The standby reconnects; its catch-up target is fixed then (the primary's
            # last seq: common_seq + backlog), while the writer keeps appending.
            connected = until(lambda: connected_line(), 10.0, every=0.001)
            target = None
            if connected:
                fields = dict(f.split("=", 1) for f in connected.split() if "=" in f)
                target = int(fields.get("common_seq", 0)) + int(fields.get("backlog", 0))
            entry["catch_up_target"] = target

            def sent_past_target() -> bool:
                replication = (node.try_call("journal.stats") or {}).get("replication", {})
                peer = replication.get("peer") or {}
                entry["sent_seq"] = peer.get("sent_seq")
                return replication.get("in_sync") or (target is not None and int(peer.get("sent_seq") or 0) >= target)

            until(sent_past_target, 10.0, every=0.001)
            # Everything up to the target is on its way: the link drops again, one way
            # (primary -> standby). The standby still acknowledges what it received, so
            # the primary declares it in sync and writes the mark; what it answered alone
            # after the standby's last frame never arrives.
            armed.fire()
            entry["cut_ns"] = time.monotonic_ns()
        finally:
            armed.cancel()
        # The primary still writes the mark to the store (the witness it reaches): from
        # then on the standby may promote on the mark alone. Crash the primary then.
        found = until(lambda: logged(f"event=lease.sync_mark node={primary} ", f"sync_node={standby}"),
                      5.0, every=0.001)
        entry["sync_mark_ns"] = time.monotonic_ns() if found else None
        if delay_ms:
            time.sleep(delay_ms / 1000)
        self._kill(primary)
        entry["killed_ns"] = time.monotonic_ns()
        time.sleep(1.0)
        self.lab.heal()
        self._restart(primary)

    def _wait_primary(self, timeout: float) -> bool:
        def accepting() -> bool:
            for node in self.nodes.values():
                s = node.try_call("role.status")
                if s and s.get("role") == "primary" and s.get("accepting_appends"):
                    return True
            return False

        return bool(until(accepting, timeout, every=0.05))

    def _journals(self, primary: str, report: NemesisReport) -> dict[str, dict[int, bytes]]:
        """The final primary's whole journal; of the other node's, the records that differ
        from it (read page by page: a long run's journals are millions of records)."""
        journals: dict[str, dict[int, bytes]] = {}
        final: dict[int, bytes] = {}
        for name in (primary, *(n for n in self.nodes if n != primary)):
            mine: dict[int, bytes] = {}
            try:
                with ControlClient(self.nodes[name].socket, timeout=30) as client:
                    start = int(client.call("journal.stats")["journal"].get("first_seq") or 1)
                    if name == primary:
                        self.retained_from = start
                    for r, payload in journal_records(client, start):
                        seq = int(r["seq"])
                        if name == primary or final.get(seq) != payload:
                            mine[seq] = payload
            except (ConnectionError, OSError, ControlError) as exc:
                report.errors.append(f"cannot read {name}'s journal: {exc}")
                if name == primary:
                    return journals
                continue
            journals[name] = mine
            if name == primary:
                final = mine
        return journals

    def _settle(self) -> tuple[str | None, str]:
        """Wait for one accepting primary whose standby is caught up and in sync; returns
        (the primary, what was seen)."""
        state: dict[str, Any] = {}

        def settled() -> bool:
            statuses = {n: node.try_call("role.status") for n, node in self.nodes.items()}
            state["roles"] = {n: (s or {}).get("role") for n, s in statuses.items()}
            primaries = [n for n, s in statuses.items() if s and s.get("role") == "primary"
                         and s.get("accepting_appends")]
            if len(primaries) != 1:
                return False
            primary = self.nodes[primaries[0]]
            other = next(n for n in self.nodes.values() if n is not primary)
            try:
                a, b = primary.last_seq(), other.last_seq()
                stats = primary.call("journal.stats")
            except (ConnectionError, OSError, ControlError):
                return False
            state["positions"] = (a, b)
            if a == b and stats.get("replication", {}).get("in_sync"):
                state["primary"] = primary.name
                return True
            return False

        until(settled, self.settings.settle_timeout, every=0.1)
        return state.get("primary"), json.dumps({k: v for k, v in state.items() if k != "primary"})

    # ------------------------------------------------------------------ the whole run

    def run(self, report: NemesisReport) -> list[dict[str, Any]]:
        generate_replication_key(self.key)
        for name in EDGES:
            other = next(n for n in EDGES if n != name)
            settings = {"key_file": str(self.key), "listen": lab_pair.replication_address(name),
                        "peer": lab_pair.replication_address(other), "mode": "sync",
                        "on_standby_loss": "degrade-to-async", **REPLICATION_TIMERS,
                        # Keep every segment: the checker reads the whole journal back at
                        # the end (a 10-minute run writes ~7 M records, ~400 MB a node).
                        "journal": {"fsync": "always", "segment_bytes": 16 * 1024 * 1024,
                                    "retain_segments": 1_000_000},
                        "lease": {"backend": "witness", "witness": lab_pair.witness_address(), "cluster": CLUSTER,
                                  **self.settings.lease}}
            self.nodes[name] = Node(name, self.workdir / name, settings)
        self.history.add({"kind": "start", "seed": self.seed, "duration_s": self.settings.duration,
                          "classes": list(self.settings.classes), "now_ns": time.monotonic_ns(),
                          "schedule": [asdict(f) for f in report.schedule]})
        writer: Writer | None = None
        feeds = FeedIds()
        try:
            self._start_witness()
            for node in self.nodes.values():
                node.start(self.lab)
            for node in self.nodes.values():
                node.wait_ready(self.settings.ready_timeout)
            for node in self.nodes.values():
                watcher = FeedWatcher(node, self.history, feeds, self.stop_feeds)
                watcher.start()
                self.watchers[node.name] = watcher
            if not self._wait_primary(self.settings.ready_timeout):
                raise RuntimeError(f"no primary within {self.settings.ready_timeout:g} s")
            writer = Writer(self.nodes, self.watchers, self.history, self.seed, batch_max=self.settings.batch_max,
                            pause=self.settings.pause, confused=self.settings.confused)
            writer.start()
            began = time.monotonic()
            deadline = began + self.settings.duration
            for fault in report.schedule:
                if time.monotonic() + fault.gap >= deadline:
                    break
                time.sleep(fault.gap)
                self.progress(f"  {time.monotonic() - began:6.1f} s  {fault.describe()}")
                try:
                    entry = self._apply(fault, deadline)
                except Exception as exc:  # a daemon that would not restart...
                    entry = {"kind": "fault", "class": fault.cls, "index": fault.index, "error": repr(exc)[:500]}
                    report.errors.append(f"fault #{fault.index} ({fault.cls}): {exc}")
                    self.history.add(entry)
                    report.applied.append(entry)
                    self._restore_all()
                    continue
                self.history.add(entry)
                report.applied.append(entry)
                if not self._wait_primary(self.settings.recover_timeout):
                    self.progress(f"  no primary {self.settings.recover_timeout:g} s after fault #{fault.index}: "
                                  "restoring everything")
                    self._restore_all()
            self.progress("  end of the schedule: healing, restarting, letting the pair settle")
            self._restore_all()
            self._wait_primary(self.settings.recover_timeout)
            time.sleep(1.0)  # the writer appends on the restored pair
            writer.stop()
            if writer.is_alive():
                report.errors.append("the writer did not stop")
            if writer.error is not None:
                report.errors.append(f"the writer failed: {writer.error!r}")
            primary, seen = self._settle()
            if primary is None:
                report.errors.append(f"the pair did not settle (one primary, the standby caught up) within "
                                     f"{self.settings.settle_timeout:g} s: {seen}")
                statuses = {n: node.try_call("role.status") for n, node in self.nodes.items()}
                primary = next((n for n, s in statuses.items() if s and s.get("role") == "primary"), EDGES[0])
            journals = self._journals(primary, report)
            end_ns = time.monotonic_ns()
            self.stop_feeds.set()
            for watcher in self.watchers.values():
                watcher.join(3)
            records = self.history.snapshot()
            report.result = check(records, journals, primary, end_ns=end_ns, retained_from=self.retained_from)
            return records
        finally:
            if writer is not None and writer.is_alive():
                writer.stop(5)
            self.stop_feeds.set()
            for host in list(self.paused):
                with contextlib.suppress(Exception):
                    self._signal(host, signal.SIGCONT)
            with contextlib.suppress(Exception):
                self.lab.heal()
            for node in self.nodes.values():
                if node.alive():
                    code = node.stop()
                    if code not in (0, None):
                        report.errors.append(f"{node.name} exited {code} on SIGTERM:\n{node.log_tail(1500)}")
                node.close()
            if self.witness is not None:
                self.witness.stop()


def run_nemesis(workdir: Path, settings: NemesisSettings, *, progress: Progress = lambda s: None,
                history_path: Path | None = None, lab: PairLab | None = None) -> NemesisReport:
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(1 << 32)
    schedule = make_schedule(seed, settings.duration, settings.classes)
    report = NemesisReport(seed, settings.duration, schedule, workdir=str(workdir))
    progress(f"nemesis: {settings.duration:g} s, seed {seed} (--seed {seed} replays the schedule), "
             f"classes {', '.join(settings.classes)}")
    workdir.mkdir(parents=True, exist_ok=True)
    lab = lab or PairLab()
    began = time.monotonic()
    records: list[dict[str, Any]] = []
    try:
        lab.up()
    except Exception as exc:  # another lab in use, a namespace that would not build
        report.errors.append(f"the pair lab: {type(exc).__name__}: {exc}")
        report.elapsed = time.monotonic() - began
        return report
    try:
        nemesis = Nemesis(lab, workdir, settings, seed, progress)
        try:
            records = nemesis.run(report)
        except Exception as exc:
            report.errors.append(f"{type(exc).__name__}: {exc}")
            records = nemesis.history.snapshot()
    finally:
        lab.down()
    report.elapsed = time.monotonic() - began
    report.timeline = [r for r in records if r.get("kind") in TIMELINE_KINDS]
    if history_path is not None:
        write_history(history_path, report, records)
        report.history_path = str(history_path)
    return report


#: The history records the HTML report needs (all but the requests).
TIMELINE_KINDS = ("start", "role", "feed_end", "fault")


def write_history(path: Path, report: NemesisReport, records: list[dict[str, Any]]) -> None:
    """The history, then the findings and the figures, one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for record in records:
            out.write(json.dumps(record, default=str) + "\n")
        if report.result is not None:
            for finding in report.result.findings:
                out.write(json.dumps({"kind": "finding", **asdict(finding)}, default=str) + "\n")
        out.write(json.dumps({"kind": "figures", **report.figures()}, default=str) + "\n")


def format_report(report: NemesisReport) -> str:
    fig = report.figures()
    lines = [f"nemesis: seed {report.seed}, {report.duration:g} s of faults ({fig['elapsed_s']} s in all)"]
    if report.result is not None:
        lines.append("  faults injected: " + (", ".join(f"{k} {v}" for k, v in fig["faults"].items()) or "none"))
        lines.append(f"  requests {fig['requests']}: records acknowledged {fig['records_acked']}, in doubt "
                     f"{fig['records_in_doubt']} ({fig['in_doubt_present']} present / {fig['in_doubt_absent']} "
                     f"absent when read back), unanswered {fig['records_unanswered']} "
                     f"({fig['unanswered_present']} present / {fig['unanswered_absent']} absent)")
        lines.append(f"  promotions {fig['promotions']}; final primary {fig['final_primary']} at seq "
                     f"{fig['final_last_seq']}; feeds both primary for {fig['feed_overlap_ms']} ms")
        lines.append(f"  lost {fig['lost']}, acknowledged twice {fig['double_acked']}, ok outside the trading "
                     f"interval {fig['outside_interval']}, duplicates {fig['duplicates']}, unknown "
                     f"{fig['unknown_payloads']}, diverged {fig['diverged']}")
        for finding in report.result.violations[:10]:
            lines.append(f"  VIOLATION {finding.rule}: {finding.message}")
    for error in report.errors:
        lines.append(f"  ERROR: {error.splitlines()[0] if error else error}")
    if report.history_path:
        lines.append(f"  history and findings: {report.history_path}")
    lines.append(f"result: {'PASS' if report.ok else 'FAIL'} (seed {report.seed})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_nemesis_parser(drill_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = drill_sub.add_parser("nemesis", help="a seeded random schedule of faults against the pair while an "
                                                   "engine writes; check the whole history afterwards")
    parser.add_argument("--duration", default="10m", help='how long faults are injected (default "10m")')
    parser.add_argument("--seed", type=int, default=None, help="seed of the schedule (printed; replays it)")
    parser.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                        help=f"fault classes to draw from, comma-separated (default all: {','.join(CLASSES)})")
    parser.add_argument("--batch-max", type=int, default=NemesisSettings.batch_max,
                        help=f"most records per append request (default {NemesisSettings.batch_max})")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run's files (logs, journals) here")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--history", nargs="?", const="", default=None, metavar="PATH",
                        help="write the history and the findings as JSON lines (default PATH: "
                             "nemesis-SEED.jsonl in the current directory)")
    add_report_argument(parser)


def run_nemesis_drill(args: argparse.Namespace) -> int:
    reason = pair_unavailable()
    if reason is not None:
        print(f"lifeline drill nemesis: cannot build the lab: {reason}; run it as root", file=sys.stderr)
        return 2
    try:
        duration = float(Duration.parse(args.duration))
    except ValueError as exc:
        print(f'lifeline drill nemesis: --duration: expected a duration such as "10m" or "90s" ({exc})',
              file=sys.stderr)
        return 2
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    bad = [c for c in classes if c not in CLASSES]
    if bad or not classes:
        print(f"lifeline drill nemesis: --classes: unknown {', '.join(bad) or '(empty)'}; "
              f"choose from {', '.join(CLASSES)}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    settings = NemesisSettings(duration=duration, seed=seed, classes=classes, batch_max=max(1, args.batch_max))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifeline-drill-nemesis-"))
    history_path = None
    if args.history is not None:
        history_path = Path(args.history) if args.history else Path(f"nemesis-{seed}.jsonl")
    progress = (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_nemesis(Path(workdir), settings, progress=progress, history_path=history_path)
    if args.workdir is None:
        if report.ok:
            shutil.rmtree(workdir, ignore_errors=True)
            report.workdir = ""
        else:
            progress(f"lifeline drill nemesis: failed; its files are kept in {workdir}")
    written = write_drill_report(args.report, [report])
    print(json.dumps(report.figures()) if args.json else format_report(report))
    return 0 if report.ok and written else 1
