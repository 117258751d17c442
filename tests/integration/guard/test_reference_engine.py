"""examples/engine.py, the README's reference engine, as a real process against a real `lifeline
run` (a fixed primary with a journal, signed limits and the Kraken venue) and the venue emulator
as its own process: orders within the limits are journalled and rest in the emulator's book;
an order over the size, the notional or the position limit is refused by journal.append and
never reaches the emulator (its own book and its AddOrder count); after `lifeline kill` the
engine's next order is refused and the emulator holds no open order; after `lifeline unkill`
the engine trades again. And with a witness lease: the engine stamps the epoch role.watch
names and sends nothing once the frozen primary's last valid_until has passed."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.integration.guard.test_kill_switch import KRAKEN_KEY, KRAKEN_SECRET, Emulator, secret_file
from tests.support.cli import ROOT, cli
from tests.support.ports import free_port
from tests.support.waiting import until

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from daemon.risk import LIMITS_CONTEXT
from lab.procs import DaemonProcess
from recovery.keys import init_keyring, write_keyring
from recovery.signing import sign_playbook

# The emulator's recorded BTC/USDT ticker: last 73380.6 (the engine's mark and order price).
LIMITS = '''version = 1
expires = 2099-01-01T00:00:00Z
no_reference = "refuse"

[[limits]]
venue = "kraken"
symbol = "BTC/USDT"
max_order_amount = "0.05"
max_order_notional = "3000"
max_position = "0.08"
price_collar = "0.05"
'''


class EngineProcess:
    """examples/engine.py with a pipe on stdin and every stdout line in a queue."""

    def __init__(self, socket: Path, emulator: Emulator, credentials: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "engine.py"), "--socket", str(socket), "--venue", "kraken",
             "--exchange", "kraken", "--symbol", "BTC/USDT", "--api-url", emulator.url,
             "--credentials", str(credentials), "--prefix", "ref", "--interval", "0.3"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.pending: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, *prefixes: str, timeout: float = 20) -> str:
        """The first line not yet taken that starts with one of ``prefixes`` (a sync's CANCELLED
        may come before the answer to an order sent meanwhile)."""
        for line in self.pending:
            if line.startswith(prefixes):
                self.pending.remove(line)
                return line
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {prefixes} line from the engine; it said:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if line.startswith(prefixes):
                return line
            self.pending.append(line)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def order(self, command: str) -> str:
        self.send(command)
        return self.expect("SENT", "REFUSED", "NOT SENT", "REJECTED", "ERROR")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emulator = Emulator()
    try:
        yield emulator
    finally:
        emulator.close()


def start_daemon(tmp: Path, emulator: Emulator) -> tuple[DaemonProcess, Path, Path]:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    write_keyring(init_keyring(2, [(k.public_key(), h) for k, h in zip(keys, ["alice", "bob"])]),
                  tmp / "keyring.toml", create=True)
    limits = tmp / "limits.toml"
    limits.write_text(LIMITS)
    for key in keys:
        sign_playbook(limits, key, context=LIMITS_CONTEXT)
    replication = tmp / "replication.key"
    replication.write_text(bytes(range(32)).hex() + "\n")
    replication.chmod(0o600)
    credentials = secret_file(tmp, "kraken", KRAKEN_KEY, KRAKEN_SECRET)
    socket = tmp / "run" / "control.sock"
    config = tmp / "lifeline.toml"
    config.write_text(dump_toml({
        "node": {"name": "edge-a", "state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "control": {"socket": str(socket), "group": ""},
        "metrics": {"enabled": False},
        "venues": {"kraken": {"exchange": "kraken", "api_url": emulator.url, "interval": "500ms", "timeout": "1s",
                              "reconcile": "report-only", "deadman": False, "positions": False,
                              "credentials": str(credentials)}},
        "standby": {"role": "primary", "key_file": str(replication), "mode": "async",
                    "listen": f"127.0.0.1:{free_port()}", "journal": {"fsync": "never"}},
        "guard": {"limits": str(limits), "keyring": str(tmp / "keyring.toml")},
    }))
    daemon = DaemonProcess(config=config, workdir=tmp / "proc", watchdog_usec=None)
    daemon.start()
    return daemon, socket, credentials


def journalled(socket: Path) -> list[dict[str, Any]]:
    with ControlClient(socket) as client:
        records = client.call("journal.read", {"from": 1, "limit": 1000})["records"]
    return [json.loads(r["payload"]) for r in records]


def orders(socket: Path, coid: str) -> list[str]:
    """The states journalled for one order, in order."""
    return [r["state"] for r in journalled(socket) if r.get("record") == "order" and r["client_order_id"] == coid]


def test_the_reference_engine_trades_within_limits_and_is_refused_outside_them(
        tmp_path: Path, emulator: Emulator) -> None:
    emulator.control("orders", {"venue": "kraken", "orders": [], "replace": True})  # not the recorded ones
    daemon, socket, credentials = start_daemon(tmp_path, emulator)
    engine: EngineProcess | None = None
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        with ControlClient(socket) as client:
            assert until(lambda: client.call("risk.status")["ready"], 10)
        engine = EngineProcess(socket, emulator, credentials)
        ready = engine.expect("READY")
        assert "role=primary" in ready and "mark=73380.6" in ready, ready

        def book() -> dict[str, dict[str, Any]]:
            return {o["client_order_id"]: o for o in emulator.control("state")["venues"]["kraken"]["orders"]}

        def add_orders() -> int:
            return int(emulator.control("state")["venues"]["kraken"]["requests"]["by_path"].get(
                "/0/private/AddOrder", 0))

        # Within the limits: journalled (new, then open with the venue's id), resting at the venue.
        sent = engine.order("buy 0.02")
        assert sent.startswith("SENT ref-000001 buy 0.02 BTC/USDT @ 73380.6 venue_order_id="), sent
        assert orders(socket, "ref-000001") == ["new", "open"]
        assert book()["ref-000001"]["amount"] == "0.02000000"
        assert engine.order("buy 0.04").startswith("SENT ref-000002")
        assert set(book()) == {"ref-000001", "ref-000002"} and add_orders() == 2

        # Over a limit: refused by journal.append, nothing journalled, nothing sent.
        over = {"buy 0.5": "limit max_order_amount", "buy 0.045": "limit max_order_notional",
                "buy 0.03": "limit max_position"}  # 0.06 open + 0.03 > 0.08
        for n, (command, limit) in enumerate(over.items(), start=3):
            refused = engine.order(command)
            assert refused.startswith(f"REFUSED ref-00000{n}: risk_refused: ") and limit in refused, refused
            assert "nothing was written" in refused, refused
            assert orders(socket, f"ref-00000{n}") == []
        assert set(book()) == {"ref-000001", "ref-000002"} and add_orders() == 2, "no refused order reached the venue"

        # The kill switch: every open order gone from the emulator, the next new order refused.
        killed = cli("kill", "--reason", "reference engine test", "--socket", str(socket), timeout=60)
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert book() == {}
        refused = engine.order("buy 0.01")
        assert refused.startswith("REFUSED ref-000006: risk_refused: ") and "killed" in refused, refused
        assert "reference engine test" in refused and add_orders() == 2 and book() == {}
        # The engine sees its orders gone at the venue and journals them cancelled (records of
        # what the venue did pass a kill).
        engine.expect("CANCELLED ref-000001", "CANCELLED ref-000002")
        engine.expect("CANCELLED ref-000001", "CANCELLED ref-000002")
        assert orders(socket, "ref-000001")[-1] == orders(socket, "ref-000002")[-1] == "cancelled"

        # Unkill: it trades again; the cancelled orders no longer count against the position
        # limit (0.04 + 0.04 = 0.08: at the limit, which passes).
        unkilled = cli("unkill", "--reason", "test over", "--socket", str(socket), timeout=60)
        assert unkilled.returncode == 0, unkilled.stdout + unkilled.stderr
        assert engine.order("buy 0.04").startswith("SENT ref-000007")
        assert engine.order("buy 0.04").startswith("SENT ref-000008")
        assert set(book()) == {"ref-000007", "ref-000008"} and add_orders() == 4
        assert orders(socket, "ref-000007") == ["new", "open"]
        epochs = {r.get("epoch") for r in journalled(socket) if r.get("record") == "order" and r["state"] == "new"}
        assert len(epochs) == 1 and None not in epochs, "every new order carries the epoch role.* names"
        assert any(r.get("record") == "mark" and r["price"] == "73380.6" for r in journalled(socket))
    finally:
        if engine is not None:
            engine.close()
        daemon.stop()


def test_the_reference_engine_follows_role_watch_and_stops_at_valid_until(tmp_path: Path, emulator: Emulator) -> None:
    """A witness pair: the engine on the primary stamps the epoch role.watch names; with the
    primary's daemon frozen (SIGSTOP) it sends nothing once the last valid_until has passed —
    its own clock check, journal.append cannot answer — and after the daemon is deposed it
    sees the new role and still sends nothing."""
    from tests.support.pair import LeasePair

    emulator.control("orders", {"venue": "kraken", "orders": [], "replace": True})
    credentials = secret_file(tmp_path, "kraken", KRAKEN_KEY, KRAKEN_SECRET)
    pair = LeasePair(tmp_path, "witness")
    engine: EngineProcess | None = None
    stopped: int | None = None
    try:
        pair.start()
        first = pair.wait_primary()
        epoch = pair.role(first)["epoch"]
        engine = EngineProcess(pair.nodes[first].socket, emulator, credentials)
        assert f"role=primary epoch={epoch} " in engine.expect("READY")
        assert engine.order("buy 0.01").startswith("SENT ref-000001")
        new = [json.loads(r["payload"]) for r in pair.nodes[first].call("journal.read", {"from": 1, "limit": 100})[
            "records"] if '"ref-000001"' in r["payload"]]
        assert [r["state"] for r in new] == ["new", "open"] and {r["epoch"] for r in new} == {epoch}

        stopped = pair.nodes[first].pid
        os.kill(stopped, signal.SIGSTOP)
        time.sleep(1.5)  # > ttl: the feed's last valid_until is behind us
        refused = engine.order("buy 0.01")
        assert refused.startswith("NOT SENT ref-000002: the lease deadline (valid_until) has passed"), refused
        assert pair.wait_primary(among=(pair.other(first),), timeout=20) == pair.other(first)
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        engine.expect("ROLE fenced", "ROLE standby", "ROLE candidate")
        refused = engine.order("buy 0.01")
        assert refused.startswith("NOT SENT ref-000003: this node is "), refused
        book = emulator.control("state")["venues"]["kraken"]
        assert [o["client_order_id"] for o in book["orders"]] == ["ref-000001"]
        assert book["requests"]["by_path"].get("/0/private/AddOrder") == 1
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if engine is not None:
            engine.close()
        pair.close()
