"""The promotion drills: kill the primary, partition it from the witness, lose its whole
site; time the promotion, count lost acknowledged records and overlapping primaries.

    lifeline drill standby|partition|region [--repeat N] [--seed S] [--json] [--workdir DIR] [--report FILE.html]

Each repetition runs in the pair lab (:mod:`lab.pair`) from a fresh state: a new
replication key, empty journals, a fresh lease store (the witness, or three etcd members
for ``region``), and two real ``lifeline run`` processes in ``llp-edge-a`` and
``llp-edge-b`` that start with no role. Whichever takes the lease is "the primary"; the
drill waits until the other follows it in sync and is marked synchronous in the store.

A writer thread plays the trading engine: it appends the recorded Binance lines
(:mod:`lab.replay_engine`) in small batches through the primary's control socket
and keeps every answer. It follows the README's engine contract: it appends only
through a node whose ``role.watch`` feed says ``primary`` and whose last message's
``valid_until`` is still ahead of CLOCK_MONOTONIC, and waits (a few ms at a time) while
no node's is. When that node refuses anyway (``not_primary``: nothing written) or its
socket is gone, it decides again from the feeds. A request unanswered after 3 s (the
replication's ``sync_timeout`` of 2 s, plus 1 s) is given up as in doubt, and the writer
moves on the same way. At a random point (``--seed`` replays it; the window spans at
least one lease renewal period) the drill applies the fault:

* ``standby``: ``kill -9`` of the primary;
* ``partition``: the primary is cut from the witness (nftables, both ways) while it
  still reaches the standby;
* ``region``: etcd backend, three members in three sites; the primary's whole site
  (the primary and the etcd member beside it) is cut from everything.

Figures, all from CLOCK_MONOTONIC (shared by every namespace of this machine, and the
clock of the daemons' ``RoleChanged.monotonic_ns``):

* ``promotion_ms``: from the fault (the start of the kill / nft command) until the
  writer received the first ``ok`` from the *other* node: the standby is primary and
  trading. ``role_ms``: until its ``RoleChanged(primary)``.
* ``lost_acked_records``: records answered ``ok`` (by seq and payload, on either node)
  that the new primary's journal (``journal.read``) does not hold, byte for byte.
* ``overlap_ms``: total overlap of the two nodes' primary intervals. A primary interval
  starts at ``RoleChanged(primary)`` and ends at the node's next role change (``fenced``),
  or when the drill's SIGKILL had taken effect, or at the end of the repetition; both
  nodes' changes are recorded from their ``role.watch`` feeds and completed from
  ``events.recent``. It must be 0 in every repetition.

Then recovery: the killed primary is started again (``standby``) or the cut healed
(``partition``, ``region``); it must come back as standby — no automatic failback — and
catch up: both journals at the same position, record for record identical. A divergent
tail it had to cut (records it wrote but nobody acknowledged) is reported.

Targets (DESIGN.md): promotion p95 < 2000 ms (standby, partition), < 10 s (region); 0
lost; 0 overlap. The exit code is 0 only if every repetition met them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import Duration
from daemon.core.control_client import ControlClient, ControlError
from daemon.standby.keys import generate_replication_key, generate_witness_key
from lab import pair as lab_pair
from lab.drills import add_report_argument, percentile, run_drill_command
from lab.etcd import EtcdAuth, EtcdCluster, EtcdMember
from lab.pair import EDGES, HOSTS, REPLICATION_TIMERS, LabProcess, PairLab, pair_unavailable
from lab.pki import make_etcd_pki
from lab.procs import DaemonProcess, journal_records, quiet_system, until
from lab.replay_engine import feed_lines

DRILLS = ("standby", "partition", "region")
TARGET_MS = {"standby": 2000.0, "partition": 2000.0, "region": 10000.0}
CLUSTER = "lab"

Progress = Callable[[str], None]


@dataclass
class HaSettings:
    repeat: int = 5
    seed: int | None = None
    #: Extra ``[standby.lease]`` keys (the benchmark's Patroni timings), on top of the
    #: drill's backend settings; empty: the daemon's defaults.
    lease: dict[str, Any] = field(default_factory=dict)
    #: The writer: records per request and the pause between requests (an engine at a
    #: few thousand records/s; the two daemons share this machine's CPUs with it).
    batch: int = 20
    pause: float = 0.005
    #: The fault comes this long (uniform, seeded) after the writer got going; None:
    #: from 0.2 s to 0.2 s + max(1 s, renew interval), so it falls at a random phase of
    #: the primary's renewals (with Patroni's 10 s loop too).
    fault_after: tuple[float, float] | None = None
    #: How long the new primary trades before the old one is brought back.
    trade_after: float = 0.3
    #: Longest wait for the promotion; None: 20 s, or 30 s for region, or 3 * ttl + 20 s.
    timeout: float | None = None
    ready_timeout: float = 30.0
    #: etcd's raft timers for the region drill (EtcdCluster's lab defaults).
    etcd_heartbeat_ms: int = 25
    etcd_election_ms: int = 250

    def _seconds(self, key: str) -> float | None:
        value = self.lease.get(key)
        return float(Duration.parse(str(value))) if value is not None else None

    def fault_window(self) -> tuple[float, float]:
        if self.fault_after is not None:
            return self.fault_after
        renew = self._seconds("renew_interval") or (self._seconds("ttl") or 1.5) / 3
        return (0.2, 0.2 + max(1.0, renew))

    def promotion_timeout(self, drill: str) -> float:
        if self.timeout is not None:
            return self.timeout
        base = 30.0 if drill == "region" else 20.0
        ttl = self._seconds("ttl")
        return max(base, 3 * ttl + 20) if ttl is not None else base


# --------------------------------------------------------------------------- figures


@dataclass
class Repetition:
    index: int
    primary: str = ""
    new_primary: str = ""
    fault: str = ""
    acked_before: int = 0
    promotion_ms: float | None = None
    role_ms: float | None = None
    fenced_ms: float | None = None  # the old primary's own fence, from the fault
    acked: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    overlap_ms: float | None = None
    back_as_standby: bool | None = None
    caught_up: bool | None = None
    identical: bool | None = None
    catchup_ms: float | None = None
    failback: bool = False
    divergent_records: int = 0
    writer: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    #: For the drill report (lab.report): every role.watch message of both nodes
    #: (renewals included, with ``valid_until``), the fault, the SIGKILLs taking effect,
    #: the new node's first ``ok`` and the end of the repetition (CLOCK_MONOTONIC ns).
    feed: list[dict[str, Any]] = field(default_factory=list)
    fault_ns: int | None = None
    deaths_ns: list[int] = field(default_factory=list)
    promoted_ns: int | None = None
    end_ns: int | None = None

    @property
    def ok(self) -> bool:
        return (not self.errors and self.promotion_ms is not None and self.lost == 0 and self.overlap_ms == 0
                and not self.failback and bool(self.back_as_standby) and bool(self.caught_up)
                and bool(self.identical))


@dataclass
class HaReport:
    drill: str
    seed: int
    settings: HaSettings
    repetitions: list[Repetition] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def target_ms(self) -> float:
        return TARGET_MS[self.drill]

    def series(self, name: str) -> list[float]:
        return [getattr(r, name) for r in self.repetitions if getattr(r, name) is not None]

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.repetitions)

    @property
    def ok(self) -> bool:
        promotions = self.series("promotion_ms")
        return (not self.errors and bool(self.repetitions) and len(self.repetitions) == self.settings.repeat
                and all(r.ok for r in self.repetitions) and len(promotions) == len(self.repetitions)
                and percentile(promotions, 95) < self.target_ms)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"drill": self.drill, "seed": self.seed, "repeat": len(self.repetitions)}
        for name in ("promotion_ms", "role_ms", "fenced_ms", "catchup_ms"):
            values = self.series(name)
            out[name] = [round(v, 1) for v in values]
            if values:
                stem = name.removesuffix("_ms")
                out[f"{stem}_p50_ms"] = round(percentile(values, 50), 1)
                out[f"{stem}_p95_ms"] = round(percentile(values, 95), 1)
                out[f"{stem}_max_ms"] = round(max(values), 1)
        out["target_ms"] = self.target_ms
        out["lost_acked_records"] = self.lost
        out["acked_records"] = sum(r.acked for r in self.repetitions)
        out["overlap_ms"] = [round(r.overlap_ms, 3) if r.overlap_ms is not None else None for r in self.repetitions]
        out["missed"] = sum(1 for r in self.repetitions if r.promotion_ms is None)
        out["failbacks"] = sum(1 for r in self.repetitions if r.failback)
        out["back_as_standby"] = [r.back_as_standby for r in self.repetitions]
        out["caught_up"] = [bool(r.caught_up and r.identical) for r in self.repetitions]
        out["divergent_records"] = [r.divergent_records for r in self.repetitions]
        out["faults"] = [r.fault for r in self.repetitions]
        out["writer"] = [r.writer for r in self.repetitions]
        out["lease"] = dict(self.settings.lease)
        out["errors"] = self.errors + [f"repetition {r.index}: {e}" for r in self.repetitions for e in r.errors]
        if self.workdir:
            out["workdir"] = self.workdir
        return out


# --------------------------------------------------------------------------- the pair's nodes


@dataclass
class Node:
    """One edge host of the pair: its files, its config, its current process."""

    name: str
    root: Path
    settings: dict[str, Any]
    incarnation: int = 0
    proc: DaemonProcess | None = None
    killed_ns: int | None = None

    @property
    def run_dir(self) -> Path:
        """The runtime directory (control socket): under the node's files when the path
        is short enough for a unix socket, else in a short one of its own."""
        run = self.root / "run"
        if len(str(run / "control.sock").encode()) <= 100:
            return run
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"llp-run-{digest}"

    @property
    def socket(self) -> Path:
        return self.run_dir / "control.sock"

    def config(self) -> dict[str, Any]:
        return {
            "node": {"name": self.name, "state_dir": str(self.root / "state"), "runtime_dir": str(self.run_dir)},
            "log": {"level": "info"},
            "control": {"socket": str(self.socket), "group": ""},
            "metrics": {"enabled": False},
            "system": quiet_system(),
            "standby": self.settings,
        }

    def start(self, lab: PairLab) -> None:
        if self.proc is not None:
            self.proc.close()
        self.incarnation += 1
        self.killed_ns = None
        self.proc = lab.start_daemon(self.name, self.root / f"proc{self.incarnation}", self.config())
        # start_daemon writes the config into the incarnation's directory.

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        if not self.proc.wait_ready(timeout):
            raise DrillError(f"{self.name}: no READY=1 within {timeout:g} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc is not None and self.proc.proc.poll() is None

    def kill9(self) -> int:
        """SIGKILL; returns CLOCK_MONOTONIC (ns) once the process is certainly gone."""
        assert self.proc is not None and self.proc.proc is not None
        self.proc.proc.kill()
        self.proc.proc.wait(10)
        self.killed_ns = time.monotonic_ns()
        self.proc.stop()  # reaps, closes the log
        return self.killed_ns

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(20)
        self.proc.close()
        return code

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()

    def log_tail(self, chars: int = 3000) -> str:
        return self.proc.log_text()[-chars:] if self.proc is not None else ""

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        with ControlClient(self.socket, timeout=timeout) as client:
            return client.call(method, params)

    def try_call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return self.call(method, params)
        except (ConnectionError, OSError, ControlError, ValueError):
            return None

    def records(self) -> list[tuple[int, int, bytes]]:
        """(seq, epoch, payload) of the whole journal."""
        with ControlClient(self.socket, timeout=30) as client:
            return [(int(r["seq"]), int(r["epoch"]), payload) for r, payload in journal_records(client)]

    def last_seq(self) -> int:
        return int(self.call("journal.stats")["journal"]["last_seq"])


class DrillError(Exception):
    """A repetition could not be carried out (a daemon would not start, no primary...)."""


# --------------------------------------------------------------------------- role feeds


class RoleLog:
    """Every role change of both nodes, from their ``role.watch`` feeds (one thread per
    process incarnation) and from ``events.recent``; de-duplicated."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.changes: dict[tuple[str, int, str], dict[str, Any]] = {}
        #: The current role of each node as its feed last said (snapshots included).
        self.current: dict[str, dict[str, Any]] = {}
        #: Every message of the feeds as it came (snapshots and renewals included).
        self.feed: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, node: str, message: dict[str, Any], *, snapshot: bool = False, history: bool = False) -> None:
        """One message of ``node``'s feed (``snapshot``: the first, the role at
        subscription; a ``renewal`` only moves ``valid_until``), or with ``history`` a
        ``RoleChanged`` event, which never replaces a newer feed message as current."""
        role = message.get("role")
        if not isinstance(role, str) or role == "unknown":
            if role == "unknown":  # the feed was cut: nothing may be assumed of the node
                with self._cond:
                    self.current[node] = dict(message, node=node)
                    self.feed.append(dict(message, node=node))
                    self._cond.notify_all()
            return
        with self._cond:
            if not history:
                self.feed.append(dict(message, node=node))
            stamp = int(message.get("monotonic_ns", 0))
            last = self.current.get(node)
            if not history or last is None or stamp > int(last.get("monotonic_ns", 0)):
                self.current[node] = dict(message, node=node)
            if not snapshot and not message.get("renewal"):
                key = (node, int(message["monotonic_ns"]), role)
                self.changes.setdefault(key, {
                    "node": node, "role": role, "previous": message.get("previous", ""),
                    "epoch": int(message.get("epoch", 0)), "reason": message.get("reason", ""),
                    "monotonic_ns": int(message["monotonic_ns"])})
            self._cond.notify_all()

    def follow(self, node: Node) -> None:
        """Start following ``node``'s current incarnation."""
        client = ControlClient(node.socket, timeout=5).connect()
        try:
            client.call("role.watch")
        except BaseException:
            client.close()
            raise

        def loop() -> None:
            first = True
            try:
                while not self._stop.is_set():
                    try:
                        line = client.read_line(timeout=0.5)
                    except TimeoutError:
                        continue
                    # The first message is the role at subscription time, not a change.
                    self.add(node.name, line, snapshot=first)
                    first = False
            except (ConnectionError, OSError, ValueError):
                pass  # the process died or the feed was cut
            finally:
                client.close()

        thread = threading.Thread(target=loop, name=f"role-watch-{node.name}-{node.incarnation}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def merge_recent(self, node: Node) -> None:
        """Fill in changes from ``events.recent`` (those before the feed was opened)."""
        result = node.try_call("events.recent", {"limit": 1000})
        for event in (result or {}).get("events", []):
            if event.get("kind") == "RoleChanged" and "monotonic_ns" in event:
                self.add(node.name, event, history=True)

    def role(self, node: str) -> str | None:
        with self._lock:
            entry = self.current.get(node)
            return entry.get("role") if entry else None

    def may_trade(self, node: str, now_ns: int | None = None) -> bool:
        """The engine's contract: ``node``'s feed says primary, and this host's
        CLOCK_MONOTONIC is before the ``valid_until`` of its last message."""
        with self._lock:
            entry = self.current.get(node)
        if entry is None or entry.get("role") != "primary":
            return False
        until = entry.get("valid_until")
        return isinstance(until, int) and (now_ns if now_ns is not None else time.monotonic_ns()) < until

    def wait_role(self, node: str, roles: tuple[str, ...], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                entry = self.current.get(node)
                if entry is not None and entry.get("role") in roles:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    def of(self, node: str, since_ns: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((c for c in self.changes.values() if c["node"] == node and c["monotonic_ns"] >= since_ns),
                          key=lambda c: c["monotonic_ns"])

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self.changes.values(), key=lambda c: (c["monotonic_ns"], c["node"]))

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)


def primary_intervals(changes: list[dict[str, Any]], node: str, deaths_ns: list[int], end_ns: int
                      ) -> list[tuple[int, int]]:
    """``node``'s primary intervals: from ``RoleChanged(primary)`` to its next change, or
    to the first death (SIGKILL taken effect) after it, or to ``end_ns``."""
    mine = sorted((c for c in changes if c["node"] == node), key=lambda c: c["monotonic_ns"])
    out: list[tuple[int, int]] = []
    start: int | None = None
    for change in mine:
        at = change["monotonic_ns"]
        if start is not None:
            death = next((d for d in sorted(deaths_ns) if start <= d < at), None)
            out.append((start, death if death is not None else at))
            start = None
        if change["role"] == "primary":
            start = at
    if start is not None:
        death = next((d for d in sorted(deaths_ns) if d >= start), None)
        out.append((start, death if death is not None else end_ns))
    return out


def overlap_ns(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    return sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


# --------------------------------------------------------------------------- the writer


@dataclass
class Answer:
    node: str
    at: float  # time.monotonic() when the answer arrived
    seq: int
    epoch: int
    status: str
    payload: bytes


class Writer(threading.Thread):
    """The trading engine stand-in. Appends ``batch`` feed lines per request to the node
    it believes primary; on ``not_primary`` (nothing written) it retries the same lines
    on the other node, on a lost connection (unknown outcome) it moves on with new
    lines, every ``retry`` seconds until one node accepts.

    With ``roles`` (the nodes' role.watch feeds) it follows the README's engine
    contract: it appends only through a node whose feed says ``primary`` and whose last
    message's ``valid_until`` is still ahead of CLOCK_MONOTONIC, and waits while none
    is (``waits`` counts the pauses)."""

    def __init__(self, nodes: dict[str, Node], first: str, lines: Iterator[bytes], *, batch: int, pause: float,
                 retry: float = 0.002, request_timeout: float = 3.0, roles: RoleLog | None = None) -> None:
        super().__init__(daemon=True, name="drill-writer")
        self.nodes = nodes
        self.roles = roles
        self.waits = 0
        self.target = first
        self.lines = lines
        self.batch = batch
        self.pause = pause
        self.retry = retry
        self.request_timeout = request_timeout
        self.answers: list[Answer] = []
        self.unanswered = 0
        self.timeouts = 0
        self.refusals: dict[str, int] = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._clients: dict[str, ControlClient] = {}

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            statuses: dict[str, int] = {}
            for a in self.answers:
                key = f"{a.node} {a.status}"
                statuses[key] = statuses.get(key, 0) + 1
        return {"answers": statuses, "refusals": dict(self.refusals), "unanswered": self.unanswered,
                "timeouts": self.timeouts, "waits_for_a_valid_primary": self.waits}

    def ok_count(self) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.status == "ok")

    def first_ok(self, *, not_node: str, after: float) -> float | None:
        with self._lock:
            for answer in self.answers:
                if answer.node != not_node and answer.status == "ok" and answer.at >= after:
                    return answer.at
        return None

    def wait_first_ok(self, *, not_node: str, after: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.first_ok(not_node=not_node, after=after)
            if found is not None or time.monotonic() >= deadline or not self.is_alive():
                return found
            time.sleep(0.005)

    def acknowledged(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.status == "ok"]

    def _client(self, name: str) -> ControlClient:
        client = self._clients.get(name)
        if client is None:
            client = ControlClient(self.nodes[name].socket, timeout=self.request_timeout).connect()
            self._clients[name] = client
        return client

    def _drop(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def _other(self, name: str) -> str:
        return next(n for n in self.nodes if n != name)

    def _pick(self) -> str | None:
        """The node to append through now: by the feeds (role AND valid_until) when
        followed, else the one believed primary."""
        if self.roles is None:
            return self.target
        now_ns = time.monotonic_ns()
        valid = [name for name in self.nodes if self.roles.may_trade(name, now_ns)]
        if self.target in valid:
            return self.target
        if valid:
            self.target = valid[0]
            return self.target
        return None

    def run(self) -> None:
        pending: list[bytes] = []
        try:
            while not self._stop_event.is_set():
                if not pending:
                    pending = [line for _, line in zip(range(self.batch), self.lines)]
                    if not pending:
                        return
                picked = self._pick()
                if picked is None:  # no node may trade now, as the feeds say: wait for one
                    self.waits += 1
                    self._stop_event.wait(self.retry)
                    continue
                name = picked
                try:
                    client = self._client(name)
                    answer = client.call("journal.append", {"payloads": [p.decode() for p in pending]})
                except ControlError as exc:
                    # not_primary (or not ready): nothing was written; the other node may be.
                    self.refusals[exc.code] = self.refusals.get(exc.code, 0) + 1
                    self.target = self._other(name)
                    self._stop_event.wait(self.retry)
                    continue
                except (ConnectionError, OSError, ValueError) as exc:
                    # Gone mid-request (or never there), or no answer within the
                    # engine's patience (sync_timeout + 1 s): the outcome is unknown, so
                    # these lines are in doubt; new lines go to whichever node accepts.
                    if isinstance(exc, TimeoutError):
                        self.timeouts += 1
                    self._drop(name)
                    self.unanswered += len(pending)
                    pending = []
                    self.target = self._other(name)
                    self._stop_event.wait(self.retry)
                    continue
                now = time.monotonic()
                results = answer["results"]
                with self._lock:
                    for result, payload in zip(results, pending):
                        self.answers.append(Answer(name, now, int(result["seq"]), int(result.get("epoch", 0)),
                                                   str(result["status"]), payload))
                pending = []
                if self.pause:
                    self._stop_event.wait(self.pause)
        except Exception as exc:  # reported by the drill
            self.error = exc
        finally:
            for name in list(self._clients):
                self._drop(name)


# --------------------------------------------------------------------------- one repetition


class Drill:
    def __init__(self, kind: str, lab: PairLab, workdir: Path, settings: HaSettings, rng: random.Random,
                 lines: Iterator[bytes], progress: Progress) -> None:
        self.kind = kind
        self.lab = lab
        self.workdir = workdir
        self.settings = settings
        self.rng = rng
        self.lines = lines
        self.progress = progress

    # ------------------------------------------------------------------ the lease store

    def _etcd(self, root: Path) -> Any:
        """The region drill's three etcd members as production runs them: TLS on the
        client and peer ports with client certificates required (a CA and certificates
        made for this repetition), etcd's authentication on."""
        pki = make_etcd_pki(root / "pki", [HOSTS[name].address for name in lab_pair.ETCD_HOSTS])
        members = [EtcdMember(name, host=HOSTS[name].address, netns=HOSTS[name].ns)
                   for name in lab_pair.ETCD_HOSTS]
        return EtcdCluster(members, root / "etcd", heartbeat_ms=self.settings.etcd_heartbeat_ms,
                           election_ms=self.settings.etcd_election_ms, tls=pki, auth=EtcdAuth.generate())

    def _lease(self, node: str, etcd: Any, directory: Path) -> dict[str, Any]:
        if self.kind == "region":
            # Each node lists the etcd member of its own site first.
            site = HOSTS[node].site
            order = sorted(lab_pair.ETCD_HOSTS, key=lambda h: (HOSTS[h].site != site, h))
            lease: dict[str, Any] = etcd.lease_settings(directory, [etcd.member(h).client_url for h in order])
            lease.update(cluster=CLUSTER, ttl="2s")
        else:
            lease = {"backend": "witness", "witness": lab_pair.witness_address(), "cluster": CLUSTER}
            # The witness's own key, not the replication key (the witness host never holds that).
            lease["witness_key_file"] = str(self._witness_key)
        lease.update(self.settings.lease)
        return lease

    def _start_store(self, root: Path, key: Path, etcd: Any) -> Any:
        if etcd is not None:
            etcd.start()
            return etcd
        return self.lab.start_witness(root / "witness", self._witness_key)

    @staticmethod
    def _stop_store(store: LabProcess | Any) -> None:
        if store is not None:
            store.stop()  # a LabProcess (the witness) or an EtcdCluster

    # ------------------------------------------------------------------ the run

    def run(self, index: int) -> Repetition:
        rep = Repetition(index)
        root = self.workdir / f"{self.kind}-{index}"
        root.mkdir(parents=True, exist_ok=True)
        key = root / "replication.key"
        generate_replication_key(key)
        etcd = self._etcd(root) if self.kind == "region" else None
        self._witness_key = root / "witness.key"
        generate_witness_key(self._witness_key)
        nodes: dict[str, Node] = {}
        for name in EDGES:
            other = next(n for n in EDGES if n != name)
            settings = {"key_file": str(key), "listen": lab_pair.replication_address(name),
                        "peer": lab_pair.replication_address(other), "mode": "sync",
                        "on_standby_loss": "degrade-to-async", **REPLICATION_TIMERS,
                        "journal": {"fsync": "always", "segment_bytes": 1024 * 1024},
                        "lease": self._lease(name, etcd, root / name)}
            nodes[name] = Node(name, root / name, settings)
        roles = RoleLog()
        store: Any = None
        writer: Writer | None = None
        fault_ns_box: list[int] = []
        try:
            store = self._start_store(root, key, etcd)
            for node in nodes.values():
                node.start(self.lab)
            for node in nodes.values():
                node.wait_ready(self.settings.ready_timeout)
                roles.follow(node)
            primary, standby = self._wait_pair(nodes, roles, rep)
            rep.primary, rep.new_primary = primary.name, standby.name
            writer = Writer(nodes, primary.name, self.lines, batch=self.settings.batch, pause=self.settings.pause,
                            roles=roles)
            writer.start()
            if not until(lambda: writer.ok_count() >= 20 or not writer.is_alive(), 10) or writer.error:
                raise DrillError(f"the writer got no 20 acknowledgements from {primary.name} in 10 s "
                                 f"(refusals {writer.refusals}, error {writer.error!r})")
            time.sleep(self.rng.uniform(*self.settings.fault_window()))
            deaths: list[int] = []
            fault_at, fault_ns = self._fault(primary, rep, deaths)
            fault_ns_box.append(fault_ns)
            rep.acked_before = sum(1 for a in writer.acknowledged() if a.node == primary.name)
            promoted = writer.wait_first_ok(not_node=primary.name, after=fault_at,
                                            timeout=self.settings.promotion_timeout(self.kind))
            if promoted is None:
                rep.errors.append(f"{standby.name} never accepted an append within "
                                  f"{self.settings.promotion_timeout(self.kind):g} s of the {rep.fault} "
                                  f"(the writer's answers: {writer.summary()})")
            else:
                rep.promotion_ms = (promoted - fault_at) * 1000
                rep.promoted_ns = int(promoted * 1e9)
            roles.merge_recent(standby)
            became = [c for c in roles.of(standby.name, fault_ns) if c["role"] == "primary"]
            if became:
                rep.role_ms = (became[0]["monotonic_ns"] - fault_ns) / 1e6
            if primary.alive():
                roles.merge_recent(primary)
            fenced = [c for c in roles.of(primary.name, fault_ns) if c["role"] == "fenced"]
            if fenced:
                rep.fenced_ms = (fenced[0]["monotonic_ns"] - fault_ns) / 1e6
            time.sleep(self.settings.trade_after)

            # Recovery: the old primary comes back, as standby, and catches up.
            recovered_at = time.monotonic()
            if self.kind == "standby":
                primary.start(self.lab)
                primary.wait_ready(self.settings.ready_timeout)
                roles.follow(primary)
            else:
                self.lab.heal()
            rep.back_as_standby = roles.wait_role(primary.name, ("standby",), 20)
            if not rep.back_as_standby:
                rep.errors.append(f"{primary.name} did not come back as standby within 20 s "
                                  f"(role {roles.role(primary.name)})")
            time.sleep(0.2)  # the new primary keeps trading while its old peer catches up
            writer.stop()
            rep.writer = writer.summary()
            if writer.is_alive():
                rep.errors.append("the writer did not stop")
            if writer.error is not None:
                rep.errors.append(f"the writer failed: {writer.error!r}")
            self._check_catch_up(primary, standby, rep, recovered_at)
            end_ns = time.monotonic_ns()
            for node in nodes.values():
                if node.alive():
                    roles.merge_recent(node)
            rep.roles = roles.all()
            rep.feed, rep.fault_ns, rep.deaths_ns, rep.end_ns = list(roles.feed), fault_ns, list(deaths), end_ns
            self._check_roles(primary, standby, rep, deaths, fault_ns, end_ns)
            self._check_loss(writer, standby, rep)
            divergent = [e for e in ((primary.try_call("events.recent", {"limit": 1000}) or {}).get("events", []))
                         if e.get("kind") == "DivergentTailSaved"]
            rep.divergent_records = sum(int(e.get("records", 0)) for e in divergent)
        except DrillError as exc:
            rep.errors.append(str(exc))
        except Exception as exc:  # a store that would not start, a daemon that vanished...
            rep.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if writer is not None and writer.is_alive():
                writer.stop(5)
            roles.close()
            with contextlib.suppress(Exception):
                self.lab.heal()
            for node in nodes.values():
                code = node.stop() if node.alive() else None
                if code not in (0, None):
                    rep.errors.append(f"{node.name} exited {code} on SIGTERM:\n{node.log_tail(1500)}")
                node.close()
            self._stop_store(store)
            # The repetition's record, for whoever reads the workdir after a failure.
            record = {k: v for k, v in rep.__dict__.items()}
            record["fault_ns"] = fault_ns_box[0] if fault_ns_box else None
            with contextlib.suppress(Exception):
                (root / "repetition.json").write_text(json.dumps(record, indent=1, default=str))
        return rep

    def _wait_pair(self, nodes: dict[str, Node], roles: RoleLog, rep: Repetition) -> tuple[Node, Node]:
        """Wait until one node is an accepting primary, the other its standby, in sync
        and marked synchronous in the store."""
        state: dict[str, Any] = {}

        def settled() -> bool:
            statuses = {name: node.try_call("role.status") for name, node in nodes.items()}
            state["statuses"] = statuses
            primaries = [n for n, s in statuses.items() if s and s.get("role") == "primary"]
            if len(primaries) != 1:
                return False
            primary = nodes[primaries[0]]
            standby = next(n for n in nodes.values() if n is not primary)
            p, s = statuses[primary.name], statuses[standby.name]
            if not p.get("accepting_appends") or s.get("role") != "standby":
                return False
            stats = primary.try_call("journal.stats")
            if not stats or not stats.get("replication", {}).get("in_sync"):
                return False
            # The standby promotes itself only if the store marks it synchronous.
            lease = s.get("lease") or {}
            if lease.get("sync_node") != standby.name:
                return False
            state["pair"] = (primary, standby)
            return True

        if not until(settled, self.settings.ready_timeout, every=0.05):
            statuses = json.dumps(state.get("statuses"), default=str)[:2000]
            tails = "\n".join(f"--- {n.name} log:\n{n.log_tail(2000)}" for n in nodes.values())
            raise DrillError(f"no primary with a synchronous standby within {self.settings.ready_timeout:g} s; "
                             f"role.status: {statuses}\n{tails}")
        primary, standby = state["pair"]
        for node in nodes.values():
            roles.merge_recent(node)
        return primary, standby

    def _fault(self, primary: Node, rep: Repetition, deaths: list[int]) -> tuple[float, int]:
        """Apply this drill's fault to ``primary``; returns when it began (monotonic s, ns)."""
        fault_ns = time.monotonic_ns()
        fault_at = fault_ns / 1e9
        if self.kind == "standby":
            deaths.append(primary.kill9())
            rep.fault = f"kill -9 {primary.name}"
        elif self.kind == "partition":
            self.lab.partition(primary.name, "witness")
            rep.fault = f"cut {primary.name} from the witness"
        else:
            site = HOSTS[primary.name].site
            assert site is not None
            cut = self.lab.lose_site(site)
            rep.fault = f"lose site {site} ({', '.join(cut)})"
        return fault_at, fault_ns

    def _check_catch_up(self, old: Node, new: Node, rep: Repetition, since: float) -> None:
        state: dict[str, Any] = {}

        def caught_up() -> bool:
            try:
                a, b = old.last_seq(), new.last_seq()
                stats = new.call("journal.stats")
            except (ConnectionError, OSError, ControlError):
                return False
            state["positions"] = (a, b)
            return a == b and bool(stats.get("replication", {}).get("in_sync"))

        rep.caught_up = bool(until(caught_up, 20, every=0.05))
        if not rep.caught_up:
            rep.errors.append(f"{old.name} did not catch up with {new.name} within 20 s "
                              f"(last seqs {state.get('positions')})")
            rep.identical = False
            return
        rep.catchup_ms = (time.monotonic() - since) * 1000
        mine, theirs = old.records(), new.records()
        rep.identical = mine == theirs
        if not rep.identical:
            first = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
            rep.errors.append(f"{old.name}'s journal differs from {new.name}'s from record index {first} "
                              f"({len(mine)} vs {len(theirs)} records)")

    def _check_roles(self, old: Node, new: Node, rep: Repetition, deaths: list[int], fault_ns: int,
                     end_ns: int) -> None:
        changes = rep.roles
        a = primary_intervals(changes, old.name, deaths, end_ns)
        b = primary_intervals(changes, new.name, [], end_ns)
        rep.overlap_ms = overlap_ns(a, b) / 1e6
        if not any(s <= fault_ns for s, _ in a):
            rep.errors.append(f"no RoleChanged(primary) of {old.name} before the fault was recorded")
        later = [c for c in changes if c["node"] == old.name and c["role"] == "primary" and c["monotonic_ns"] > fault_ns]
        if later:
            rep.failback = True
            rep.errors.append(f"{old.name} became primary again after the fault (automatic failback)")
        if not any(s > fault_ns for s, _ in b):
            rep.errors.append(f"no RoleChanged(primary) of {new.name} after the fault was recorded")
        elif any(e < end_ns for s, e in b if s > fault_ns):
            rep.errors.append(f"{new.name} stopped being primary before the end of the repetition")

    def _check_loss(self, writer: Writer, new: Node, rep: Repetition) -> None:
        acked = writer.acknowledged()
        rep.acked = len(acked)
        try:
            journal = {seq: (epoch, payload) for seq, epoch, payload in new.records()}
        except (ConnectionError, OSError, ControlError) as exc:
            rep.errors.append(f"cannot read {new.name}'s journal: {exc}")
            rep.lost = len(acked)
            return
        lost = [a for a in acked if journal.get(a.seq, (None, None))[1] != a.payload]
        rep.lost = len(lost)
        rep.lost_examples = [f"seq {a.seq} (acknowledged by {a.node} at epoch {a.epoch})" for a in lost[:5]]
        if lost:
            rep.errors.append(f"{len(lost)} acknowledged record(s) missing from {new.name}'s journal: "
                              + ", ".join(rep.lost_examples))


# --------------------------------------------------------------------------- the drill runner


def run_drill(kind: str, workdir: Path, settings: HaSettings, *, progress: Progress = lambda s: None,
              lab: PairLab | None = None) -> HaReport:
    """Run ``settings.repeat`` repetitions of drill ``kind`` in a pair lab of its own
    (built here and removed at the end)."""
    if kind not in DRILLS:
        raise ValueError(f"no drill {kind!r}; the promotion drills are {', '.join(DRILLS)}")
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(1 << 32)
    report = HaReport(kind, seed, settings, workdir=str(workdir))
    rng = random.Random(seed)
    lease = ", ".join(f"{k} {v}" for k, v in settings.lease.items()) or "defaults"
    progress(f"{kind} drill: {settings.repeat} repetition(s), seed {seed} (--seed {seed} replays it), "
             f"lease timings: {lease}")
    workdir.mkdir(parents=True, exist_ok=True)
    lab = lab or PairLab()
    lab.up()
    try:
        lines = feed_lines(endless=True)
        drill = Drill(kind, lab, workdir, settings, rng, lines, progress)
        for i in range(1, settings.repeat + 1):
            rep = drill.run(i)
            report.repetitions.append(rep)
            progress(f"  {repetition_line(rep, settings.repeat)}")
            for error in rep.errors:
                progress(f"    ERROR: {error.splitlines()[0] if error else error}")
    except Exception as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        lab.down()
    return report


def _fmt(ms: float | None) -> str:
    if ms is None:
        return "MISSED"
    return f"{ms / 1000:.2f} s" if ms >= 10_000 else f"{ms:.0f} ms"


def repetition_line(rep: Repetition, total: int) -> str:
    if rep.promotion_ms is None and not rep.primary:
        return f"drill {rep.index}/{total}: not run: {rep.errors[0].splitlines()[0] if rep.errors else '?'}"
    parts = [f"drill {rep.index}/{total}: {rep.fault} after {rep.acked_before} acknowledged records"]
    parts.append(f"{rep.new_primary} trading after {_fmt(rep.promotion_ms)} (primary at {_fmt(rep.role_ms)})")
    if rep.fenced_ms is not None:
        parts.append(f"{rep.primary} fenced at {_fmt(rep.fenced_ms)}")
    parts.append(f"lost {rep.lost}/{rep.acked}")
    parts.append(f"overlap {rep.overlap_ms:.0f} ms" if rep.overlap_ms is not None else "overlap ?")
    back = ("back as standby" if rep.back_as_standby else "NOT back as standby")
    if rep.caught_up and rep.identical:
        back += f", caught up in {_fmt(rep.catchup_ms)}"
    elif rep.caught_up is not None:
        back += ", NOT caught up"
    if rep.divergent_records:
        back += f" (divergent tail of {rep.divergent_records} record(s) cut and saved)"
    parts.append(back)
    if rep.failback:
        parts.append("FAILBACK")
    return "; ".join(parts)


def format_report(report: HaReport) -> str:
    figures = report.figures()
    titles = {"standby": "standby drill (kill -9 of the primary; times from the kill)",
              "partition": "partition drill (primary cut from the witness; times from the cut)",
              "region": "region drill (the primary's whole site lost, etcd in 3 sites; times from the loss)"}
    lines = [titles[report.drill] + f", seed {report.seed}"]
    for rep in report.repetitions:
        lines.append("  " + repetition_line(rep, len(report.repetitions)))
    rows = [("", "p50", "p95", "max", "n")]
    for label, key in (("promotion (new primary trading)", "promotion"), ("new primary's RoleChanged", "role"),
                       ("old primary fenced", "fenced"), ("old primary caught up", "catchup")):
        values = figures.get(f"{key}_ms", [])
        if values:
            rows.append((label, _fmt(figures[f"{key}_p50_ms"]), _fmt(figures[f"{key}_p95_ms"]),
                         _fmt(figures[f"{key}_max_ms"]), str(len(values))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        lines.append("  " + "  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(row)))
    overlaps = [o for o in figures["overlap_ms"] if o is not None]
    lines.append(f"  acknowledged records lost: {figures['lost_acked_records']} of {figures['acked_records']}")
    lines.append(f"  overlapping primaries: max {max(overlaps):.0f} ms over {len(overlaps)} repetition(s)"
                 if overlaps else "  overlapping primaries: not measured")
    lines.append(f"  automatic failbacks: {figures['failbacks']}")
    for error in report.errors:
        lines.append(f"  ERROR: {error}")
    promotions = report.series("promotion_ms")
    target = (f"p95 promotion {_fmt(percentile(promotions, 95))} (target < {_fmt(report.target_ms)})"
              if promotions else "no promotion measured")
    overlap = f"max overlap {max(overlaps):.0f} ms (target 0)" if overlaps else "overlap not measured"
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(f"result: {verdict}: {target}, {figures['lost_acked_records']} lost (target 0), {overlap}")
    return "\n".join(lines)


def report_json(report: HaReport) -> str:
    return json.dumps({"ok": report.ok, **report.figures()})


# --------------------------------------------------------------------------- CLI


def add_ha_drill_parsers(drill_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = {
        "standby": "kill -9 the primary while an engine writes; time the promotion, count lost records",
        "partition": "cut the primary from the witness; check it fences before the standby takes over",
        "region": "etcd in three sites; lose the primary's whole site; time the failover",
    }
    for name in DRILLS:
        parser = drill_sub.add_parser(name, help=helps[name])
        parser.add_argument("--repeat", type=int, default=5, help="repetitions, each from a fresh pair (default 5)")
        parser.add_argument("--seed", type=int, default=None, help="seed of the random fault points (printed)")
        parser.add_argument("--workdir", type=Path, default=None,
                            help="keep the drill's files (configs, logs, journals) here")
        parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
        add_report_argument(parser)


def run_ha_drill(args: argparse.Namespace) -> int:
    kind = args.drill_command
    reason = pair_unavailable()
    if reason is not None:
        print(f"lifeline drill {kind}: cannot build the lab: {reason}; run it as root", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f"lifeline drill {kind}: --repeat must be at least 1", file=sys.stderr)
        return 2
    settings = HaSettings(repeat=args.repeat, seed=args.seed)
    return run_drill_command(kind, args, lambda workdir, progress: run_drill(kind, workdir, settings, progress=progress),
                             report_json, format_report)
