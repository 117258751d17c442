"""Two real `lifeline run` processes on loopback: :class:`Pair`, a fixed primary and its
standby (the standby fault tests, the health endpoints, preflight), and
:class:`LeasePair`, two nodes with no fixed roles and one lease store, a real `lifeline
witness` (:class:`lab.procs.WitnessProcess`, as the hardware drills run it) or a real
etcd member (the lease pair, switchover, in-sync race and live drill tests).

Each node has its own directory under the test's tmp_path (config, state, runtime,
one log per incarnation) and is started the way systemd starts it
(:class:`lab.procs.DaemonProcess`: ``$NOTIFY_SOCKET``, wait for ``READY=1``).
Everything the tests observe goes through the real interfaces: the control socket
(``journal.append`` / ``journal.read`` / ``journal.stats`` / ``status`` /
``events.recent``) and the ``lifeline`` CLI as a subprocess.

Every wait has a deadline; :meth:`Pair.close` SIGKILLs whatever is still running.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from lab.etcd import EtcdAuth, EtcdCluster
from lab.pki import make_etcd_pki
from lab.procs import DaemonProcess, WitnessProcess, journal_records, quiet_system
from lab.pair import LEASE_TIMINGS, REPLICATION_TIMERS as TIMERS
from lab import replay_engine
from daemon.standby.keys import generate_replication_key
from tests.support.cli import cli
from tests.support.ports import free_port
from tests.support.waiting import wait_for


def feed_lines() -> Iterator[bytes]:
    """The recorded feed lines for a writer, starting over at the end: the repository ships
    20 s of each recording (18 816 lines), and some fault tests append more than that."""
    return replay_engine.feed_lines(endless=True)


@dataclass
class Node:
    """One host of the pair: its files and its current `lifeline run` process."""

    name: str
    root: Path
    settings: dict[str, Any]
    state_dir: Path
    incarnation: int = 0
    proc: DaemonProcess | None = None
    logs: list[Path] = field(default_factory=list)
    #: Extra top-level config tables (e.g. {"metrics": {...}}), replacing the defaults below.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "control.sock"

    @property
    def config(self) -> Path:
        return self.root / "lifeline.toml"

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / "journal"

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.proc is not None
        return self.proc.proc.pid

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "node": {"name": self.name, "state_dir": str(self.state_dir), "runtime_dir": str(self.root / "run")},
            "log": {"level": "info"},
            "control": {"socket": str(self.socket), "group": ""},
            "metrics": {"enabled": False},
            "system": quiet_system(),
            "standby": self.settings,
            **self.extra,
        }
        self.config.write_text(dump_toml(data))

    # ------------------------------------------------------------------ process

    def start(self, wait: bool = True) -> None:
        assert not self.alive(), f"{self.name} is already running"
        if self.proc is not None:
            self.proc.close()
        self.incarnation += 1
        workdir = self.root / f"proc{self.incarnation}"
        self.proc = DaemonProcess(config=self.config, workdir=workdir, watchdog_usec=None)
        self.logs.append(self.proc.stderr_path)
        self.proc.start()
        if wait:
            assert self.proc.wait_ready(30), f"{self.name}: no READY=1:\n{self.proc.log_text()}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc is not None and self.proc.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a crash."""
        assert self.proc is not None and self.proc.proc is not None
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(10)
        self.proc.stop()  # reaps, closes the log file
        assert self.proc.exit_code == -signal.SIGKILL

    def stop(self) -> int | None:
        """SIGTERM and wait (the clean stop systemd does)."""
        assert self.proc is not None
        return self.proc.stop(20)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()

    def log_text(self, all_incarnations: bool = False) -> str:
        paths = self.logs if all_incarnations else self.logs[-1:]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    # ------------------------------------------------------------------ control socket

    def client(self, timeout: float = 10.0) -> ControlClient:
        return ControlClient(self.socket, timeout=timeout).connect()

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with self.client() as client:
            return client.call(method, params)

    def stats(self) -> dict[str, Any]:
        return dict(self.call("journal.stats"))

    def replication(self) -> dict[str, Any]:
        return dict(self.stats()["replication"])

    def last_seq(self) -> int:
        return int(self.stats()["journal"]["last_seq"])

    def service_status(self) -> dict[str, Any]:
        """The standby service's entry of `status` (health, summary, details)."""
        status = self.call("status")
        for service in status["services"]:
            if service["name"] == "standby":
                return dict(service)
        raise AssertionError(f"{self.name}: no standby service in status: {status}")

    def records(self, start: int = 1, until: int | None = None) -> list[tuple[int, int, int, bytes]]:
        """(seq, epoch, timestamp_ns, payload) from ``start`` to the end (or ``until``)."""
        out: list[tuple[int, int, int, bytes]] = []
        with self.client() as client:
            for r, payload in journal_records(client, start):
                if until is not None and r["seq"] > until:
                    break
                out.append((r["seq"], r["epoch"], r["timestamp_ns"], payload))
        return out

    def events(self, limit: int = 500) -> list[dict[str, Any]]:
        """`lifeline events --json` (the CLI), parsed."""
        result = cli("events", "--json", "--limit", str(limit), "--socket", str(self.socket))
        assert result.returncode == 0, result.stdout + result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def status_cli(self) -> subprocess.CompletedProcess[str]:
        return cli("status", "--socket", str(self.socket))


@dataclass
class Pair:
    """A primary (edge-a) and a standby (edge-b) on loopback, one shared key file."""

    tmp_path: Path
    primary: Node
    standby: Node
    port: int

    @classmethod
    def create(cls, tmp_path: Path, *, standby_key: Path | None = None, standby_state_dir: Path | None = None,
               **standby_settings: Any) -> "Pair":
        tmp_path.mkdir(parents=True, exist_ok=True)
        key = tmp_path / "replication.key"
        generate_replication_key(key)
        port = free_port()
        common = {"mode": "sync", "on_standby_loss": "degrade-to-async", **TIMERS,
                  "journal": {"fsync": "always", "segment_bytes": 1024 * 1024}}
        for name, value in standby_settings.items():
            if name == "journal":
                common["journal"] = {**common["journal"], **value}
            else:
                common[name] = value
        primary = Node("edge-a", tmp_path / "edge-a", {
            "role": "primary", "key_file": str(key), "listen": f"127.0.0.1:{port}", **common},
            tmp_path / "edge-a" / "state")
        standby = Node("edge-b", tmp_path / "edge-b", {
            "role": "standby", "key_file": str(standby_key or key), "listen": "127.0.0.1:0",
            "peer": f"127.0.0.1:{port}", **common},
            standby_state_dir or tmp_path / "edge-b" / "state")
        for node in (primary, standby):
            node.write_config()
        return cls(tmp_path, primary, standby, port)

    def start(self) -> None:
        # Both at once: each pays its own interpreter start-up.
        self.primary.start(wait=False)
        self.standby.start(wait=False)
        for node in (self.primary, self.standby):
            assert node.proc is not None
            assert node.proc.wait_ready(30), f"{node.name}: no READY=1:\n{node.proc.log_text()}"

    def close(self) -> None:
        for node in (self.primary, self.standby):
            node.close()

    def diagnosis(self) -> str:
        parts = []
        for node in (self.primary, self.standby):
            try:
                state = json.dumps(node.replication(), default=str)[:3000] if node.alive() else "(not running)"
            except Exception as exc:
                state = f"(no answer: {exc!r})"
            parts.append(f"--- {node.name}: {state}\n--- {node.name} log (tail):\n{node.log_text()[-3000:]}")
        return "\n".join(parts)

    def wait_in_sync(self, timeout: float = 15.0) -> None:
        """The primary says its standby is in sync and the standby holds its last seq."""

        def check() -> bool:
            p = self.primary.replication()
            if not p["in_sync"]:
                return False
            return bool(self.standby.last_seq() == self.primary.last_seq())

        wait_for(check, "the pair to be in sync", timeout, detail=self.diagnosis)


class Writer(threading.Thread):
    """A trading engine stand-in: appends feed lines to the primary in batches over one
    control-socket connection, and records every answer. Stops on ``stop()``, at
    ``limit`` lines, or when the primary goes away (then ``in_flight`` holds the
    request that was never answered)."""

    def __init__(self, node: Node, lines: Iterator[bytes], *, batch: Callable[[], int] = lambda: 100,
                 limit: int | None = None, pause: float = 0.0) -> None:
        super().__init__(daemon=True, name=f"writer-{node.name}")
        self.node = node
        self.lines = lines
        self.batch = batch
        self.limit = limit
        self.pause = pause
        self.results: list[tuple[dict[str, Any], bytes]] = []  # (answer, payload) in request order
        self.in_flight: list[bytes] = []
        self.error: BaseException | None = None
        self.disconnected = False
        self._stop_event = threading.Event()
        self.batches = 0

    def stop(self, timeout: float = 15.0) -> None:
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "the writer did not stop"

    @property
    def sent(self) -> int:
        return len(self.results)

    def ok(self) -> dict[int, bytes]:
        return {int(r["seq"]): p for r, p in self.results if r["status"] == "ok"}

    def run(self) -> None:
        try:
            client = ControlClient(self.node.socket, timeout=15.0).connect()
        except ConnectionError:
            self.disconnected = True  # the primary died before the first request
            return
        except BaseException as exc:
            self.error = exc
            return
        try:
            while not self._stop_event.is_set():
                want = self.batch()
                if self.limit is not None:
                    want = min(want, self.limit - self.sent)
                    if want <= 0:
                        break
                payloads = [line for _, line in zip(range(want), self.lines)]
                if not payloads:
                    break
                self.in_flight = payloads
                try:
                    answer = client.call("journal.append", {"payloads": [p.decode() for p in payloads]})
                except (ConnectionError, OSError):
                    self.disconnected = True  # the primary died under us: in_flight unanswered
                    return
                self.in_flight = []
                results = answer["results"]
                assert len(results) == len(payloads), answer
                self.results.extend(zip(results, payloads))
                self.batches += 1
                if self.pause:
                    self._stop_event.wait(self.pause)
        except BaseException as exc:
            self.error = exc
        finally:
            client.close()


class LeasePair:
    """edge-a and edge-b, no fixed roles, one lease store."""

    def __init__(self, tmp_path: Path, backend: str) -> None:
        self.tmp_path = tmp_path
        self.backend = backend
        key = tmp_path / "replication.key"
        generate_replication_key(key)
        self.etcd: EtcdCluster | None = None
        self.witness: WitnessProcess | None = None
        if backend == "etcd":
            if not EtcdCluster.available():
                pytest.skip("etcd is not installed (apt-get install etcd-server; .ci/run does)")
            # As production runs it: TLS with client certificates, etcd's auth on.
            self.etcd = EtcdCluster.local(1, tmp_path / "etcd", tls=make_etcd_pki(tmp_path / "pki"),
                                          auth=EtcdAuth.generate())
            self.etcd.start()
            lease: dict[str, Any] = self.etcd.lease_settings(tmp_path)
        else:
            self.witness = WitnessProcess(tmp_path / "witness", key)
            self.witness.start(15)
            lease = {"backend": "witness", "witness": self.witness.address}
        lease = {**lease, "cluster": "test", **LEASE_TIMINGS}
        ports = {"edge-a": free_port(), "edge-b": free_port()}
        self.nodes: dict[str, Node] = {}
        for name, other in (("edge-a", "edge-b"), ("edge-b", "edge-a")):
            settings = {"key_file": str(key), "listen": f"127.0.0.1:{ports[name]}",
                        "peer": f"127.0.0.1:{ports[other]}", "mode": "sync", "on_standby_loss": "degrade-to-async",
                        **TIMERS, "journal": {"fsync": "always", "segment_bytes": 1024 * 1024}, "lease": lease}
            node = Node(name, tmp_path / name, settings, tmp_path / name / "state")
            node.write_config()
            self.nodes[name] = node

    def start(self, *names: str) -> None:
        for name in names or tuple(self.nodes):
            self.nodes[name].start(wait=False)
        for name in names or tuple(self.nodes):
            proc = self.nodes[name].proc
            assert proc is not None and proc.wait_ready(30), f"{name}: no READY=1:\n{proc.log_text()}"

    def role(self, name: str) -> dict[str, Any]:
        return dict(self.nodes[name].call("role.status"))

    def wait_primary(self, timeout: float = 15.0, among: tuple[str, ...] | None = None) -> str:
        def check() -> str | None:
            for name in among or tuple(self.nodes):
                node = self.nodes[name]
                if node.alive():
                    info = self.role(name)
                    if info["role"] == "primary" and info.get("accepting_appends"):
                        return name
            return None

        return str(wait_for(check, "a primary accepting appends", timeout, detail=self.diagnosis))

    def wait_role(self, name: str, role: str, timeout: float = 15.0) -> dict[str, Any]:
        return dict(wait_for(lambda: (info := self.role(name))["role"] == role and info, f"{name} to be {role}",
                             timeout, detail=self.diagnosis))

    def other(self, name: str) -> str:
        return "edge-b" if name == "edge-a" else "edge-a"

    def diagnosis(self) -> str:
        parts = []
        for name, node in self.nodes.items():
            try:
                state = json.dumps(self.role(name), default=str) if node.alive() else "(not running)"
            except Exception as exc:
                state = f"(no answer: {exc!r})"
            parts.append(f"--- {name}: {state}\n--- log tail:\n{node.log_text()[-2500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        if self.etcd is not None:
            self.etcd.stop()
        if self.witness is not None:
            self.witness.stop()


class Feed(threading.Thread):
    """An engine's role.watch subscription: every message, as received."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True, name=f"feed-{node.name}")
        self.client = ControlClient(node.socket, timeout=5).connect()
        self.client.call("role.watch")
        self.messages: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self.messages.append(self.client.read_line(timeout=0.2))
                except TimeoutError:
                    continue
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self.client.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


@pytest.fixture
def witness_pair(tmp_path: Path) -> Iterator[LeasePair]:
    """A :class:`LeasePair` on a witness, closed after the test (import it as ``pair``)."""
    p = LeasePair(tmp_path, "witness")
    try:
        yield p
    finally:
        p.close()


def settled(pair: LeasePair) -> tuple[str, str]:
    """The primary and its standby, once the store marks the standby synchronous."""
    pair.start()
    first = pair.wait_primary()
    second = pair.other(first)
    pair.wait_role(second, "standby")
    wait_for(lambda: pair.role(first).get("sync_mark") == second, "the standby marked synchronous", 15,
             detail=pair.diagnosis)
    return first, second
