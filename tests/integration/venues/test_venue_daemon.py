"""Venues in a real `lifeline run`: daemon processes with [venues] (and [standby]) against
the venue emulator running as its own process (`python -m lab.venues`),
driven the way an operator and the engine drive them: the CLI (`lifeline venues`,
`lifeline reconcile`, `lifeline status`, `lifeline audit verify`), the control socket
(`venues.watch`, `journal.read`) and /metrics.

The emulator serves Kraken's three recorded open orders (ccxt's static test responses,
``lab/data/ccxt_static``, MIT, https://github.com/ccxt/ccxt). The daemons use the
production ccxt client, so Kraken's rate limiter paces their private calls (3 s apart):
these tests keep the number of private calls small.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import ROOT, cli
from tests.support.ports import free_port
from tests.support.waiting import until

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from lab.procs import DaemonProcess

KRAKEN_KEY = "lifeline-daemon-kraken-key-Q3v8"
KRAKEN_SECRET = base64.b64encode(b"lifeline-daemon-kraken-secret".ljust(64, b"%")).decode()
WRONG_KEY = "lifeline-daemon-wrong-key-Z1x5"
WRONG_SECRET = base64.b64encode(b"lifeline-daemon-wrong-secret".ljust(64, b"&")).decode()
SECRETS = (KRAKEN_KEY, KRAKEN_SECRET, WRONG_KEY, WRONG_SECRET)

SEEDED_KRAKEN = {"OXCZ7B-EMVZQ-MTJTQJ", "OIIQBL-6PV3A-7M2AJJ", "OF7S76-H2IMS-N2ML4U"}


# --------------------------------------------------------------------------- the emulator process

class Emulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.venues", "--listen", "127.0.0.1:0",
             "--api-key", f"kraken={KRAKEN_KEY}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("venue-emulator ready http://"), line + self.proc.stderr.read()  # type: ignore[union-attr]
        self.url = line.split()[-1]

    def control(self, action: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/_emulator/{action}", data=data,
                                         method="GET" if payload is None else "POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def kraken(self) -> dict[str, Any]:
        return self.control("state")["venues"]["kraken"]

    def open_ids(self) -> set[str]:
        return {o["id"] for o in self.kraken()["orders"]}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[Emulator]:
    emulator = Emulator()
    try:
        yield emulator
    finally:
        emulator.close()


@pytest.fixture
def emulator(emulator_process: Emulator) -> Emulator:
    emulator_process.control("reset", {})
    return emulator_process


# --------------------------------------------------------------------------- helpers

def secret_file(tmp: Path, name: str, key: str, secret: str, mode: int = 0o600) -> Path:
    path = tmp / f"{name}.credentials.toml"
    path.write_text(f'api_key = "{key}"\nsecret = "{secret}"\n')
    path.chmod(mode)
    return path


def replication_key(tmp: Path) -> Path:
    path = tmp / "replication.key"
    path.write_text(bytes(range(32)).hex() + "\n")
    path.chmod(0o600)
    return path


def write_config(tmp: Path, venues: dict[str, Any], *, standby: dict[str, Any] | None = None,
                 metrics_port: int | None = None) -> tuple[Path, Path]:
    socket = tmp / "run" / "control.sock"
    document: dict[str, Any] = {
        "node": {"name": "edge-a", "state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "log": {"level": "debug"},
        "control": {"socket": str(socket), "group": ""},
        "metrics": {"enabled": metrics_port is not None, "listen": f"127.0.0.1:{metrics_port or 0}"},
        "venues": venues,
    }
    if standby is not None:
        document["standby"] = {"key_file": str(replication_key(tmp)), "mode": "async",
                               "journal": {"fsync": "never"}, **standby}
    path = tmp / "lifeline.toml"
    path.write_text(dump_toml(document))
    return path, socket


def lifeline(socket: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--socket", str(socket), timeout=timeout)


def venues_json(socket: Path) -> dict[str, Any]:
    result = lifeline(socket, "venues", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def events(socket: Path) -> list[dict[str, Any]]:
    result = lifeline(socket, "events", "--json", "--limit", "200")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def journal_records(socket: Path) -> list[dict[str, Any]]:
    with ControlClient(socket) as client:
        return client.call("journal.read", {"from": 1, "limit": 100})["records"]


def assert_no_secrets(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential appears in {where}"


# --------------------------------------------------------------------------- the primary

def test_a_primary_daemon_probes_adopts_reconciles_and_shows_its_venues(tmp_path: Path, emulator: Emulator) -> None:
    """A fixed primary with [standby] and three venues: Kraken (adopt, good key), Kraken
    again under another name with a key the venue refuses, Coinbase (probes only). At start
    it reconciles (adopting Kraken's three recorded orders into the journal); `lifeline
    reconcile` then finds everything matched; a new orphan is reported by --dry-run and not
    adopted; the matrix is on `lifeline venues`, venues.watch and /metrics; no credential
    appears anywhere."""
    metrics_port = free_port()
    kraken = {"exchange": "kraken", "api_url": emulator.url, "interval": "200ms", "timeout": "1s",
              "credentials": str(secret_file(tmp_path, "kraken", KRAKEN_KEY, KRAKEN_SECRET)),
              "reconcile": "adopt", "deadman": False, "positions": False}
    config, socket = write_config(tmp_path, {
        "kraken": kraken,
        "kraken_alt": {**kraken, "credentials": str(secret_file(tmp_path, "alt", WRONG_KEY, WRONG_SECRET)),
                       "reconcile": "cancel-orphans"},
        "coinbase": {"exchange": "coinbase", "api_url": emulator.url, "interval": "200ms", "timeout": "1s",
                     "down_after": 2},
    }, standby={"role": "primary", "listen": f"127.0.0.1:{free_port()}"}, metrics_port=metrics_port)
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()

        def reconciled_at_start() -> Any:
            found = {e["venue"]: e for e in events(socket) if e["kind"] == "ReconciliationFinished"}
            return found if {"kraken", "kraken_alt"} <= set(found) else None

        finished = until(reconciled_at_start, 30)
        assert finished, daemon.log_text()[-3000:]
        assert finished["kraken"]["trigger"] == "start" and finished["kraken"]["policy"] == "adopt"
        assert finished["kraken"]["counts"]["adopted"] == 3 and finished["kraken"]["errors"] == []
        assert finished["kraken_alt"]["errors"] and "auth" in finished["kraken_alt"]["errors"][0]
        # Coinbase is probe-only (no credentials): skipped with a log line, no failed report.
        assert "coinbase" not in finished
        assert "event=venue.reconcile_skipped venue=coinbase" in daemon.log_text()
        records = [json.loads(r["payload"]) for r in journal_records(socket)]
        assert {r["venue_order_id"] for r in records} == SEEDED_KRAKEN
        assert all(r["record"] == "order" and r["adopted"] is True and r["venue"] == "kraken" for r in records)
        assert emulator.open_ids() == SEEDED_KRAKEN  # adopted, not cancelled

        # `lifeline venues` (and --json): every venue up through the default route
        assert until(lambda: all(v["state"] == "up" for v in venues_json(socket)["venues"].values()), 20), \
            venues_json(socket)
        details = venues_json(socket)
        assert details["may_trade"] is True and details["order_index"]["position"] == 3
        assert details["venues"]["kraken"]["credentials"] == "configured"
        assert details["venues"]["kraken"]["paths"][0]["interval_s"] == 1.0  # Kraken's rate limit
        table = lifeline(socket, "venues")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["VENUE", "UPLINK", "STATE", "LATENCY", "MEDIAN", "SINCE", "LAST", "ERROR"]
        rows = {line.split()[0]: line.split() for line in lines[1:4]}
        assert set(rows) == {"kraken", "kraken_alt", "coinbase"}
        assert all(row[1:3] == ["default", "UP"] for row in rows.values())
        summary = {line.split(":")[0]: line for line in lines[5:]}
        assert "dead-man off" in summary["kraken"] and "reconcile policy adopt" in summary["kraken"]
        assert "reconcile policy cancel-orphans" in summary["kraken_alt"]
        assert str(tmp_path / "state" / "venues" / "reconcile") in summary["kraken"]
        assert "dead-man off (no credentials)" in summary["coinbase"]  # probes only: no alarm

        # by hand: everything the journal adopted now matches
        again = lifeline(socket, "reconcile", "--venue", "kraken", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        (answer,) = json.loads(again.stdout)["reports"]
        assert (answer["counts"]["matched"], answer["counts"]["orphans"], answer["counts"]["adopted"]) == (3, 0, 0)
        report = json.loads(Path(answer["report"]).read_text())
        assert report["trigger"] == "operator" and report["counts"] == answer["counts"]
        assert Path(answer["report"]).parent == tmp_path / "state" / "venues" / "reconcile"
        assert len(journal_records(socket)) == 3
        # the act names who asked for it (the control caller), the start-up run nobody
        audit = [json.loads(line) for line in (tmp_path / "state" / "recovery" / "audit.jsonl").read_text().splitlines()]
        started = [e["fields"] for e in audit if e["kind"] == "venue.reconcile.started"]
        assert "by" not in started[0] and started[-1]["trigger"] == "operator"
        assert started[-1]["by"]["uid"] == os.getuid() and started[-1]["by"]["pid"] > 1

        # a new orphan: --dry-run reports it, adopts nothing
        emulator.control("orders", {"venue": "kraken", "orders": [
            {"symbol": "LTC/USDT", "side": "buy", "amount": "1.5", "price": "61", "id": "ONEW02-AAAAA-BBBBBB"}]})
        dry = lifeline(socket, "reconcile", "--venue", "kraken", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "ONEW02-AAAAA-BBBBBB" in dry.stdout and "would adopt" in dry.stdout
        assert "dry run: nothing was cancelled or adopted" in dry.stdout
        assert len(journal_records(socket)) == 3

        refused = lifeline(socket, "reconcile", "--venue", "kraken_alt")
        assert refused.returncode == 1 and "ERROR" in refused.stdout and "auth" in refused.stdout
        unknown = lifeline(socket, "reconcile", "--venue", "nope")
        assert unknown.returncode == 2 and "no venue 'nope'" in unknown.stderr

        # the engine's feed: the matrix, then each change
        with ControlClient(socket, timeout=10) as watcher:
            assert watcher.call("venues.watch") == {"streaming": True}
            matrix = watcher.read_line()["matrix"]
            assert {(p["venue"], p["uplink"], p["state"]) for p in matrix} == \
                {("kraken", "default", "up"), ("kraken_alt", "default", "up"), ("coinbase", "default", "up")}
            emulator.control("fault", {"venue": "coinbase", "mode": "error", "status": 502})
            change = watcher.read_line()["change"]
            while change["venue"] != "coinbase":
                change = watcher.read_line()["change"]
            assert (change["state"], change["error_class"], change["venue_state"]) == ("degraded", "http", "degraded")

        # `lifeline venues --follow`: the matrix, then each change as one line
        follower = subprocess.Popen([sys.executable, "-m", "daemon.cli", "venues", "--follow", "--socket", str(socket)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        guard = threading.Timer(30, follower.kill)
        guard.start()
        try:
            assert follower.stdout is not None
            first = [follower.stdout.readline().strip() for _ in range(3)]
            assert "coinbase via default: DOWN" in first or "coinbase via default: DEGRADED" in first, first
            emulator.control("fault", {"venue": "coinbase", "mode": "ok"})
            followed = ""
            while "coinbase via default:" not in followed or "-> UP" not in followed:
                followed = follower.stdout.readline()
                assert followed, "the follower stopped"
            assert "(venue UP)" in followed
        finally:
            follower.terminate()
            follower.wait(10)
            guard.cancel()

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'lifeline_venue_state{state="up",uplink="default",venue="kraken"} 1.0' in metrics
        assert 'lifeline_venue_up{venue="kraken"} 1.0' in metrics
        assert re.search(r'lifeline_venue_reconciliations_total\{venue="kraken"\} [3-9]', metrics), metrics
        assert 'lifeline_venue_deadman_arms_total{venue="kraken"} 0.0' in metrics
        assert 'lifeline_venue_probe_failures_total{error_class="http",uplink="default",venue="coinbase"}' in metrics

        status = lifeline(socket, "status", "--json")
        venues_status = next(s for s in json.loads(status.stdout)["services"] if s["name"] == "venues")
        assert venues_status["details"]["venues"]["kraken_alt"]["reconcile"]["runs"] == 2
        verify = cli("audit", "verify", "--state-dir", str(tmp_path / "state"))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        texts = [status.stdout, lifeline(socket, "venues", "--json").stdout, lifeline(socket, "venues").stdout,
                 refused.stdout, refused.stderr, dry.stdout, json.dumps(events(socket)), metrics,
                 (tmp_path / "state" / "recovery" / "audit.jsonl").read_text()]
        texts += [p.read_text() for p in (tmp_path / "state" / "venues" / "reconcile").iterdir()]
        assert daemon.stop(20) == 0
    finally:
        daemon.close()
    log = daemon.log_text()
    assert "event=event.ReconciliationFinished" in log and "auth" in log  # the failures were logged, at debug level
    assert_no_secrets(log, "the daemon's log")
    assert_no_secrets("\n".join(texts), "status, venues, reconcile output, events, metrics, reports or the audit log")


# --------------------------------------------------------------------------- a standby

def test_a_standby_daemon_refuses_to_reconcile_but_reports_a_dry_run(tmp_path: Path, emulator: Emulator) -> None:
    """Not primary: no reconciliation at start, no dead-man arm, `lifeline reconcile`
    refused (exit 2, saying why and what to do); --dry-run reports what the primary would
    do and changes nothing at the venue."""
    config, socket = write_config(tmp_path, {"kraken": {
        "exchange": "kraken", "api_url": emulator.url, "interval": "1s", "timeout": "500ms",
        "credentials": str(secret_file(tmp_path, "kraken", KRAKEN_KEY, KRAKEN_SECRET)),
        "deadman_timeout": "10s", "deadman_interval": "1s", "positions": False}},
        standby={"role": "standby", "listen": "127.0.0.1:0", "peer": f"127.0.0.1:{free_port()}"})
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        refused = lifeline(socket, "reconcile")
        assert refused.returncode == 2
        assert "only the primary reconciles" in refused.stderr and "--dry-run" in refused.stderr
        dry = lifeline(socket, "reconcile", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert dry.stdout.count("would cancel") == 3
        assert all(order_id in dry.stdout for order_id in SEEDED_KRAKEN)
        assert emulator.open_ids() == SEEDED_KRAKEN
        assert emulator.kraken()["deadman"]["arms"] == 0  # a standby never arms the switch
        details = venues_json(socket)
        assert details["may_trade"] is False and details["venues"]["kraken"]["deadman"]["arms"] == 0
        assert "not armed (this node is not primary)" in lifeline(socket, "venues").stdout
        kinds = [(e["kind"], e.get("dry_run")) for e in events(socket)]
        assert ("ReconciliationFinished", False) not in kinds and ("ReconciliationFinished", True) in kinds
        assert daemon.stop(20) == 0
    finally:
        daemon.close()
    assert_no_secrets(daemon.log_text(), "the daemon's log")


# --------------------------------------------------------------------------- orders by epoch

def test_reconcile_reports_orders_by_the_epoch_that_placed_them(tmp_path: Path, emulator: Emulator) -> None:
    """A fixed primary (epoch 1): the engine's records say which epoch placed each order;
    `lifeline reconcile --dry-run` groups the venue's and the journal's orders by it (an
    earlier primary's, this primary's, records without epoch, orphans nobody recorded), and
    the daemon refuses a `new` order of another epoch on journal.append."""
    config, socket = write_config(tmp_path, {"kraken": {
        "exchange": "kraken", "api_url": emulator.url, "interval": "1s", "timeout": "1s",
        "credentials": str(secret_file(tmp_path, "kraken", KRAKEN_KEY, KRAKEN_SECRET)),
        "deadman": False, "positions": False, "reconcile_on_promotion": False}},
        standby={"role": "primary", "listen": f"127.0.0.1:{free_port()}"})
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()

    def order(coid: str, **fields: Any) -> str:
        return json.dumps({"record": "order", "v": 1, "client_order_id": coid, "venue": "kraken",
                           "symbol": "LTC/USDT", "side": "sell", "amount": "0.1", "price": None, "state": "open",
                           **fields})

    try:
        assert daemon.wait_ready(30), daemon.log_text()
        with ControlClient(socket) as client:
            assert client.call("role.status")["epoch"] == 1
            with pytest.raises(Exception) as refused:
                client.call("journal.append", {"payloads": [order("eng-0", state="new", epoch=0)]})
            assert ("epoch: a new order placed under lease epoch 0, but this primary holds epoch 1" in
                    str(refused.value))
            results = client.call("journal.append", {"payloads": [
                order("eng-1", venue_order_id="OIIQBL-6PV3A-7M2AJJ", price="54.0", epoch=0),
                order("eng-2", venue_order_id="OGONE1-AAAAA-BBBBBB", epoch=1),
                order("eng-3", venue_order_id="OGONE2-AAAAA-BBBBBB"),
            ]})["results"]
            assert [r["status"] for r in results] == ["ok"] * 3
        dry = lifeline(socket, "reconcile", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert ("  by epoch: epoch 0 (an earlier primary): 1 matched; epoch 1 (this primary): 1 missing; "
                "epoch unknown: 1 missing; not in the journal: 2 orphans") in dry.stdout, dry.stdout
        as_json = json.loads(lifeline(socket, "reconcile", "--dry-run", "--json").stdout)
        [report] = as_json["reports"]
        assert report["by_epoch"]["not in the journal"] == {"orphan": 2}
        placed = {d["client_order_id"]: d["placed_by"] for d in report["decisions"]}
        assert placed["eng-1"] == "epoch 0 (an earlier primary)" and placed["eng-3"] == "epoch unknown"
        assert emulator.open_ids() == SEEDED_KRAKEN
        assert daemon.stop(20) == 0
    finally:
        daemon.close()


# --------------------------------------------------------------------------- refusing to start

@pytest.mark.parametrize("case", ["credentials-mode", "unsupported-probe"])
def test_the_daemon_refuses_to_start_naming_the_problem(tmp_path: Path, case: str) -> None:
    if case == "credentials-mode":
        creds = secret_file(tmp_path, "kraken", KRAKEN_KEY, KRAKEN_SECRET, mode=0o644)
        venues = {"kraken": {"exchange": "kraken", "api_url": "http://127.0.0.1:9", "credentials": str(creds)}}
        expected = [str(creds), "chmod 600"]
    else:
        venues = {"coinbase": {"exchange": "coinbase", "api_url": "http://127.0.0.1:9", "probes": ["fetch_status"]}}
        expected = ["venues.coinbase.probes", "fetch_status"]
    config, _ = write_config(tmp_path, venues)
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert not daemon.wait_ready(20), "the daemon started"
        assert daemon.proc is not None and daemon.proc.wait(20) != 0
    finally:
        daemon.close()
    log = daemon.log_text()
    for text in expected:
        assert text in log, log
    assert_no_secrets(log, "the daemon's log")
