"""`lifeline preflight` in the namespace lab (needs root): the uplink lab, two venue
emulators (kraken at 10.75.0.1, coinbase at 10.75.0.2) and an edge daemon probing both
venues through the fibre and through Starlink. Preflight passes; then the Starlink path
to coinbase alone is cut (an nftables drop in the satellite router, as the venue drill
cuts the fibre path) and preflight FAILs naming exactly that check."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab import netns
from lab import venue_drills
from lab import world as lab_world
from lab.venue_drills import EMULATOR_PORT, EmulatorProcess, VenueDrillReport, VenueDrillSettings, _Drill
from lab.procs import until
from lab.world import LabWorld, netns_unavailable
from tests.support.cli import cli

UNAVAILABLE = netns_unavailable()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the namespace lab needs {UNAVAILABLE}"),
]
COINBASE_HOST = "10.75.0.2"


def preflight(socket: Path) -> subprocess.CompletedProcess[str]:
    return cli("preflight", "--socket", str(socket), timeout=90)


def lines_of(out: str, result: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(result)]


def test_preflight_fails_naming_the_cut_starlink_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = LabWorld(tmp_path / "lab")
    coinbase = EmulatorProcess(tmp_path / "emulator-coinbase", host=COINBASE_HOST, port=EMULATOR_PORT)
    original = venue_drills.venue_config

    def venue_config(api_url: str, credentials: Path) -> dict[str, Any]:
        out = original(api_url, credentials)
        out["coinbase"]["api_url"] = coinbase.url  # its own address: a per-venue cut is possible
        return out

    monkeypatch.setattr(venue_drills, "venue_config", venue_config)
    drill = _Drill(world, tmp_path, VenueDrillSettings(repeat=1), VenueDrillReport(1), lambda line: None)
    try:
        world.up(tmp_path / "lab")
        coinbase.start()
        drill.start()
        drill.wait_route_on_fibre()
        drill.wait_all_up()
        # The dead-man switch is armed (kraken's emulator has the key): nothing left to settle.
        drill.wait_deadman_armed(20)

        out = preflight(drill.socket)
        assert out.returncode == 0, out.stdout + out.stderr
        for venue in ("kraken", "coinbase"):
            for uplink in ("fibre", "starlink"):
                assert any(line.startswith(f"PASS  venue {venue} via {uplink}: up, ")
                           for line in out.stdout.splitlines()), out.stdout
        assert lines_of(out.stdout, "FAIL") == [], out.stdout

        # Cut Starlink to coinbase only: TCP to 10.75.0.2:8080 dropped in the satellite router.
        netns.nft(lab_world.RSAT,
                  f"flush chain inet {lab_world.NFT_TABLE} forward\n"
                  f"add rule inet {lab_world.NFT_TABLE} forward ip daddr {COINBASE_HOST} tcp dport "
                  f'{EMULATOR_PORT} counter drop comment "preflight test: starlink to coinbase cut"\n')
        until(lambda: drill.path_states().get("coinbase/starlink") == "down", 30, every=0.2)
        assert drill.path_states().get("coinbase/starlink") == "down", drill.path_states()

        out = preflight(drill.socket)
        print(out.stdout)  # pytest -s shows the operator's view
        assert out.returncode == 1, out.stdout + out.stderr
        failed = lines_of(out.stdout, "FAIL")
        assert len(failed) == 1 and failed[0].startswith("FAIL  venue coinbase via starlink: down"), out.stdout
        assert "FAILED: venue coinbase via starlink" in out.stdout
        for still_up in ("kraken via fibre", "kraken via starlink", "coinbase via fibre"):
            assert any(line.startswith(f"PASS  venue {still_up}:") for line in out.stdout.splitlines()), out.stdout
    finally:
        try:
            drill.close()
        finally:
            coinbase.stop()
            world.down()
