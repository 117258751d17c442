"""A kill during a promotion (issue 19): two real `lifeline run` with a witness lease on
loopback (the lease pair of test_lease_pair.py), both with the same two venues at the venue
emulator; `lifeline switchover` moves the primary while `lifeline kill` is run on the old
primary. Whichever way the race goes — the old primary kills before it steps down, or it
refuses because it no longer is primary and names the new one, where the kill is run — no
order is left open at any venue (the emulator's own book)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.guard.test_kill_switch import COINBASE_KEY, COINBASE_SECRET, KRAKEN_KEY, KRAKEN_SECRET, Emulator, secret_file, seed
from tests.support.pair import LeasePair
from tests.support.pair import settled
from tests.support.cli import cli


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emulator = Emulator()
    try:
        yield emulator
    finally:
        emulator.close()


@pytest.mark.parametrize("delay", [0.0, 0.4, 0.8, 1.5])
def test_a_kill_during_a_switchover_leaves_no_order_open_at_any_venue(tmp_path: Path, emulator: Emulator,
                                                                       delay: float) -> None:
    pair = LeasePair(tmp_path, "witness")
    try:
        common = {"api_url": emulator.url, "interval": "500ms", "timeout": "1s", "reconcile": "report-only",
                  "deadman": False, "positions": False}
        for node in pair.nodes.values():
            node.extra = {"venues": {
                "kraken": {"exchange": "kraken", **common,
                           "credentials": str(secret_file(node.root, "kraken", KRAKEN_KEY, KRAKEN_SECRET))},
                "coinbase": {"exchange": "coinbase", **common,
                             "credentials": str(secret_file(node.root, "coinbase", COINBASE_KEY, COINBASE_SECRET))}}}
            node.write_config()
        old, new = settled(pair)
        seed(emulator)
        switched: list[object] = []
        mover = threading.Thread(target=lambda: switched.append(
            cli("switchover", "--to", new, "--socket", str(pair.nodes[old].socket), timeout=60)))
        mover.start()
        time.sleep(delay)
        killed = cli("kill", "--reason", "during the switchover", "--socket", str(pair.nodes[old].socket),
                     timeout=60)
        mover.join(60)
        if killed.returncode == 2:
            # Refused: no longer primary; the message names the new primary, where it is run.
            assert "not primary" in killed.stderr and new in killed.stderr, killed.stderr
            pair.wait_role(new, "primary")
            killed = cli("kill", "--reason", "during the switchover", "--socket", str(pair.nodes[new].socket),
                         timeout=60)
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert "kraken: cancelled" in killed.stdout and "coinbase: cancelled" in killed.stdout
        assert emulator.open_ids("kraken") == set() and emulator.open_ids("coinbase") == set()
        assert switched and getattr(switched[0], "returncode", None) == 0, switched
    finally:
        pair.close()
