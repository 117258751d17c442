"""The kill switch in a real `lifeline run` (a fixed primary with [standby] and two venues)
against the venue emulator as its own process (`python -m lab.venues`), driven as an
operator drives it: `lifeline kill` / `lifeline unkill`, the engine's `journal.append`,
the audit log, and a caller of another uid (setpriv) who is not admin.

50 open orders (25 at Kraken, 25 at Coinbase; the engine journalled 10 of each): after
`lifeline kill` the emulator's own book holds none, a new order record is refused, and
after `lifeline unkill` it is accepted again."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import ROOT, cli
from tests.support.ports import free_port

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient, ControlError
from lab.procs import DaemonProcess

KRAKEN_KEY = "lifeline-kill-kraken-key-P4t"
KRAKEN_SECRET = base64.b64encode(b"lifeline-kill-kraken-secret".ljust(64, b"#")).decode()
COINBASE_KEY = "lifeline-kill-coinbase-key-W2c"
COINBASE_SECRET = b"lifeline-kill-coinbase-secret".hex()  # hex: ccxt's legacy HMAC signing
OTHER_UID = 40021  # no passwd entry, in no admin group

CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while b"\n" not in buf:
    data = s.recv(65536)
    if not data:
        break
    buf += data
print(buf.decode().strip())
"""


class Emulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.venues", "--listen", "127.0.0.1:0",
             "--api-key", f"kraken={KRAKEN_KEY}", "--api-key", f"coinbase={COINBASE_KEY}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("venue-emulator ready http://"), line
        self.url = line.split()[-1]

    def control(self, action: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/_emulator/{action}", data=data,
                                         method="GET" if payload is None else "POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def open_ids(self, venue: str) -> set[str]:
        return {o["id"] for o in self.control("state")["venues"][venue]["orders"]}

    def close(self) -> None:
        self.proc.terminate()
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


@pytest.fixture
def rundir() -> Iterator[Path]:
    # A directory other uids can enter (pytest's tmp_path is root's alone).
    directory = Path(tempfile.mkdtemp(prefix="ll-kill-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def secret_file(tmp: Path, name: str, key: str, secret: str) -> Path:
    path = tmp / f"{name}.credentials.toml"
    path.write_text(f'api_key = "{key}"\nsecret = "{secret}"\n')
    path.chmod(0o600)
    return path


def write_config(tmp: Path, rundir: Path, emulator: Emulator) -> tuple[Path, Path]:
    socket = rundir / "control.sock"
    key = tmp / "replication.key"
    key.write_text(bytes(range(32)).hex() + "\n")
    key.chmod(0o600)
    common = {"api_url": emulator.url, "interval": "500ms", "timeout": "1s", "reconcile": "report-only",
              "deadman": False, "positions": False}
    document: dict[str, Any] = {
        "node": {"name": "edge-a", "state_dir": str(tmp / "state"), "runtime_dir": str(rundir)},
        "log": {"level": "info"},
        "control": {"socket": str(socket), "group": "", "mode": "0666"},
        "venues": {
            "kraken": {"exchange": "kraken", **common,
                       "credentials": str(secret_file(tmp, "kraken", KRAKEN_KEY, KRAKEN_SECRET))},
            "coinbase": {"exchange": "coinbase", **common,
                         "credentials": str(secret_file(tmp, "coinbase", COINBASE_KEY, COINBASE_SECRET))},
        },
        "standby": {"key_file": str(key), "mode": "async", "journal": {"fsync": "never"}, "role": "primary",
                    "listen": f"127.0.0.1:{free_port()}"},
    }
    path = tmp / "lifeline.toml"
    path.write_text(dump_toml(document))
    return path, socket


SYMBOLS = {"kraken": "BTC/USDT", "coinbase": "BTC/USD"}


def seed(emulator: Emulator) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for venue, symbol in SYMBOLS.items():
        orders = [{"id": f"{venue[:2].upper()}-KILL-{i:02d}", "symbol": symbol, "side": "buy", "amount": "0.01",
                   "price": "100", "client_order_id": f"mm-{venue}-{i}"} for i in range(25)]
        emulator.control("orders", {"venue": venue, "orders": orders, "replace": True})
        ids[venue] = [o["id"] for o in orders]
    return ids


def order_record(venue: str, n: int, state: str, venue_order_id: str | None = None) -> str:
    record: dict[str, Any] = {"record": "order", "v": 1, "client_order_id": f"mm-{venue}-{n}", "venue": venue,
                              "symbol": SYMBOLS[venue], "side": "buy", "amount": "0.01", "price": "100",
                              "state": state}
    if venue_order_id is not None:
        record["venue_order_id"] = venue_order_id
    return json.dumps(record, separators=(",", ":"))


def append(socket: Path, *payloads: str) -> Any:
    with ControlClient(socket) as client:
        return client.call("journal.append", {"payloads": list(payloads)})


def lifeline(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--socket", str(socket), timeout=60)


def test_kill_cancels_every_order_at_both_venues_refuses_new_orders_until_unkill(
        tmp_path: Path, rundir: Path, emulator: Emulator) -> None:
    ids = seed(emulator)
    config, socket = write_config(tmp_path, rundir, emulator)
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        # The engine journalled 10 orders per venue (sent and acknowledged); 15 more per venue
        # it never recorded (the venue's own list finds those).
        append(socket, *[order_record(v, i, "open", ids[v][i]) for v in SYMBOLS for i in range(10)])
        assert append(socket, order_record("kraken", 90, "new"))["results"][0]["status"] == "ok"

        # Not admin: refused by the ACL, nothing blocked, nothing cancelled.
        request = json.dumps({"id": 1, "method": "guard.kill", "params": {"reason": "not mine to pull"}})
        out = subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
                              "/usr/bin/python3", "-c", CLIENT, str(socket), request],
                             capture_output=True, text=True, timeout=20)
        reply = json.loads(out.stdout)
        assert reply["error"]["code"] == "forbidden" and "guard.kill needs the admin role" in reply["error"]["message"]
        assert len(emulator.open_ids("kraken")) == 25 and len(emulator.open_ids("coinbase")) == 25

        killed = lifeline(socket, "kill", "--reason", "desk says stop")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        # Measured by the emulator's own book, not by lifeline's report.
        assert emulator.open_ids("kraken") == set() and emulator.open_ids("coinbase") == set()
        lines = killed.stdout.splitlines()
        assert lines[0].startswith("KILLED every venue: new orders refused from ")
        assert "desk says stop" in lines[0] and "user=root" in lines[0]
        report = {line.split(":")[0].strip(): line for line in lines[1:]}
        for venue in SYMBOLS:
            assert f"{venue}: cancelled 25, left 0, cleared in " in report[venue], killed.stdout

        with pytest.raises(ControlError, match="killed on every venue .*desk says stop.*lifeline unkill"):
            append(socket, order_record("coinbase", 91, "new"))
        # What the venue did may still be journalled (the engine must record the cancels).
        assert append(socket, order_record("kraken", 0, "cancelled", ids["kraken"][0]))["results"][0]["status"] == "ok"

        unkilled = lifeline(socket, "unkill", "--reason", "all clear")
        assert unkilled.returncode == 0, unkilled.stderr
        assert "ended 1 kill(s)" in unkilled.stdout
        assert append(socket, order_record("coinbase", 92, "new"))["results"][0]["status"] == "ok"

        # The kill and the unkill are in the journal (they survive a restart and a failover).
        with ControlClient(socket) as client:
            records = client.call("journal.read", {"from": 1, "limit": 200})["records"]
        texts = [r.get("payload") or r.get("data") or json.dumps(r) for r in records]
        assert sum('"record":"guard"' in t and '"action":"kill"' in t for t in texts) == 1
        assert sum('"record":"guard"' in t and '"action":"unkill"' in t for t in texts) == 1

        # Every step in the audit log, naming the caller.
        audit = [json.loads(line) for line in (tmp_path / "state" / "recovery" / "audit.jsonl").read_text().splitlines()]
        kinds = [e.get("kind") for e in audit]
        for kind in ("guard.kill", "guard.kill.venue", "guard.kill.finished", "guard.unkill"):
            assert kind in kinds, kinds
        for entry in audit:
            if str(entry.get("kind", "")).startswith("guard."):
                assert "user=root" in json.dumps(entry), entry
        assert daemon.stop(20) == 0
    finally:
        daemon.close()


def test_a_kill_on_a_symbol_leaves_the_others_and_a_standby_refuses_naming_the_primary(
        tmp_path: Path, rundir: Path, emulator: Emulator) -> None:
    seed(emulator)
    emulator.control("orders", {"venue": "kraken", "orders": [
        {"id": "OTHER-1", "symbol": "LTC/USDT", "side": "sell", "amount": "1", "price": "90"}]})
    config, socket = write_config(tmp_path, rundir, emulator)
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        killed = lifeline(socket, "kill", "--venue", "kraken", "--symbol", "LTC/USDT", "--reason", "bad feed")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert "kraken: cancelled 1, left 0" in killed.stdout
        assert emulator.open_ids("kraken") == {f"KR-KILL-{i:02d}" for i in range(25)}
        assert len(emulator.open_ids("coinbase")) == 25
        assert daemon.stop(20) == 0
    finally:
        daemon.close()
    # The same host as a standby: the kill is refused, naming the primary; nothing cancelled.
    document = config.read_text().replace('role = "primary"', 'role = "standby"')
    peer = f"127.0.0.1:{free_port()}"
    document = document.replace("[standby]\n", f'[standby]\npeer = "{peer}"\n', 1)
    config.write_text(document)
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc2", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        refused = lifeline(socket, "kill", "--reason", "wrong host")
        assert refused.returncode == 2
        assert "not primary" in refused.stderr and peer in refused.stderr, refused.stderr
        assert len(emulator.open_ids("kraken")) == 25 and len(emulator.open_ids("coinbase")) == 25
        assert daemon.stop(20) == 0
    finally:
        daemon.close()


def test_the_kill_clients_calls_count_what_each_venue_cancelled(emulator: Emulator) -> None:
    """The ccxt shell's kill calls against the emulator: Kraken's batch and cancel-all say how
    many; Coinbase answers per id; an unknown id is "gone", never an error."""
    from daemon.venues.client import VenueClient, VenueCredentials

    ids = seed(emulator)
    keys = {"kraken": (KRAKEN_KEY, KRAKEN_SECRET), "coinbase": (COINBASE_KEY, COINBASE_SECRET)}
    clients = {v: VenueClient(v, v, uplink=None, source_address=None, api_url=emulator.url, timeout=5.0,
                              credentials=VenueCredentials(*keys[v])) for v in SYMBOLS}
    for client in clients.values():
        client.exchange.enableRateLimit = False
    kraken, coinbase = clients["kraken"], clients["coinbase"]
    assert kraken.supports("cancelAllOrders") and not coinbase.supports("cancelAllOrders")
    assert kraken.cancel_orders(ids["kraken"][:3] + ["NOT-THERE"], None) == (3, [])
    assert kraken.cancel_order_or_gone(ids["kraken"][0], SYMBOLS["kraken"]) is False
    assert kraken.cancel_order_or_gone(ids["kraken"][3], SYMBOLS["kraken"]) is True
    assert kraken.cancel_all_orders() == 21
    assert coinbase.cancel_orders(ids["coinbase"][:3] + ["not-there"], None) == (3, ["not-there"])
    assert coinbase.cancel_order_or_gone(ids["coinbase"][0], SYMBOLS["coinbase"]) is False
    assert coinbase.cancel_order_or_gone(ids["coinbase"][3], SYMBOLS["coinbase"]) is True
    assert emulator.open_ids("kraken") == set() and len(emulator.open_ids("coinbase")) == 21


def test_the_kraken_emulator_enforces_nonces_when_asked() -> None:
    """--kraken-nonce-window 0: a nonce not above the key's last is EAPI:Invalid nonce (Kraken's
    default); a window lets one within it through."""
    from daemon.venues.client import VenueCallError, VenueClient, VenueCredentials

    for window, refused in ((0, True), (10_000, False)):
        proc = subprocess.Popen([sys.executable, "-m", "lab.venues", "--listen", "127.0.0.1:0",
                                 "--api-key", f"kraken={KRAKEN_KEY}", "--kraken-nonce-window", str(window)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            # Two instances with one key (ccxt keeps each instance's nonces increasing, not the key's):
            # the later one's request arrives with the lower nonce.
            first, second = (VenueClient("kraken", "kraken", uplink=None, source_address=None, api_url=url,
                                         timeout=5.0, credentials=VenueCredentials(KRAKEN_KEY, KRAKEN_SECRET))
                             for _ in range(2))
            first.exchange.nonce = lambda: 5_000_001
            second.exchange.nonce = lambda: 5_000_000
            first.fetch_open_orders()
            if refused:
                with pytest.raises(VenueCallError, match="Invalid nonce"):
                    second.fetch_open_orders()
            else:
                second.fetch_open_orders()
            with urllib.request.urlopen(f"{url}/_emulator/state", timeout=5) as response:
                state = json.loads(response.read())["venues"]["kraken"]["nonces"]
            assert state == {"window": window, "last": 5_000_001, "invalid": 1 if refused else 0}
        finally:
            proc.terminate()
            proc.wait(10)
