"""The uplink capability end to end in the namespace lab: the drill command and its
figures, an interface vanishing under a running daemon, both uplinks down, a manual pin
over the real control socket, and a route changed behind the daemon's back.

Needs root, ``ip`` and ``nft``; skipped otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon.core.control_client import ControlClient
from lab import netns
from lab.procs import DaemonProcess
from lab.world import EDGE, PREFIX, LabWorld, edge_config, netns_unavailable, start_edge_daemon
from tests.support.cli import ROOT
from tests.support.waiting import until

UNAVAILABLE = netns_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the namespace lab needs {UNAVAILABLE}")



def default_route() -> str:
    return subprocess.run(["ip", "-n", EDGE, "route", "show", "default"], capture_output=True,
                          text=True).stdout.strip()


def test_drill_command_reports_failover_under_a_second_and_no_flaps(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "drill", "uplink", "--repeat", "3", "--soak", "2m",
         "--compress", "10", "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(figures["failover_ms"]) == 3 and len(figures["failback_ms"]) == 3
    assert all(0 < ms < 1000 for ms in figures["failover_ms"]), figures
    # Detection cannot beat the rule: at least (down_after - 1) rounds of 200 ms + timeout.
    assert all(ms >= 2 * 200 + 250 - 5 for ms in figures["detection_ms"]), figures
    assert figures["flaps"] == 0 and figures["route_errors"] == 0
    assert figures["soak_rounds"] >= 500  # 2 minutes of 200 ms rounds, run 10x faster
    assert netns.lab_namespaces(PREFIX) == [], "the drill leaves no namespace behind"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[LabWorld, DaemonProcess, Path]]:
    world = LabWorld(tmp_path / "lab")
    daemon = None
    try:
        world.up()
        config = edge_config(tmp_path / "edge", hold_down="2s", min_dwell="1s")
        config["failover"]["route_check_interval"] = "500ms"
        daemon = start_edge_daemon(tmp_path / "edge", config)
        assert daemon.wait_ready(30), daemon.log_text()
        sock = tmp_path / "edge" / "run" / "control.sock"
        assert until(lambda: "dev fibre0" in default_route(), 10), default_route()
        yield world, daemon, sock
    finally:
        if daemon is not None:
            code = daemon.stop(20)
            log = daemon.log_text()
            daemon.close()
            assert code == 0, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
        world.down()


def uplink_status(sock: Path) -> dict[str, Any]:
    with ControlClient(sock) as client:
        return client.call("uplink.status")


def test_interface_vanishing_and_returning(running: tuple[LabWorld, DaemonProcess, Path]) -> None:
    world, daemon, sock = running
    netns.ip(EDGE, "link", "set", "fibre0", "down")  # the edge's own NIC goes away
    assert until(lambda: "dev star0" in default_route(), 5), default_route()
    assert uplink_status(sock)["uplinks"]["fibre"]["state"] == "down"
    netns.ip(EDGE, "link", "set", "fibre0", "up")
    # The kernel dropped fibre0's routes with the link; the daemon re-installs its policy
    # routing, the probes resume, and after the hold-down the route returns.
    assert until(lambda: "dev fibre0" in default_route(), 30), (default_route(), daemon.log_text()[-2000:])
    status = uplink_status(sock)
    assert status["uplinks"]["fibre"]["state"] == "up"
    assert "event=event.UplinkHealthChanged" in daemon.log_text()


def test_both_uplinks_down_keeps_the_route_and_says_so(running: tuple[LabWorld, DaemonProcess, Path]) -> None:
    world, daemon, sock = running
    world.cut("fibre")
    assert until(lambda: "dev star0" in default_route(), 5)
    world.cut("starlink")
    assert until(lambda: uplink_status(sock)["all_down"], 10)
    # Let both uplinks be judged DOWN for another 10 rounds: the route must not move.
    rounds = uplink_status(sock)["uplinks"]["fibre"]["rounds"]
    assert until(lambda: uplink_status(sock)["uplinks"]["fibre"]["rounds"] >= rounds + 10, 10)
    assert "dev star0" in default_route(), "the route stays on the last good uplink"
    with ControlClient(sock) as client:
        events = client.call("events.recent", {"limit": 200})["events"]
    assert sum(1 for e in events if e["kind"] == "AllUplinksDown") == 1
    status = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--socket", str(sock)],
                            capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 1 and "uplinks" in status.stdout and "failing" in status.stdout
    world.restore("starlink")
    world.restore("fibre")
    assert until(lambda: "dev fibre0" in default_route(), 30)


def test_manual_pin_and_route_repair_over_the_real_socket(running: tuple[LabWorld, DaemonProcess, Path]) -> None:
    world, daemon, sock = running
    cli = [sys.executable, "-m", "daemon.cli"]
    use = subprocess.run([*cli, "uplink", "use", "starlink", "--socket", str(sock)], capture_output=True,
                         text=True, cwd=ROOT)
    assert use.returncode == 0 and "active uplink: starlink" in use.stdout, use.stdout + use.stderr
    assert until(lambda: "dev star0" in default_route(), 2)
    table = subprocess.run([*cli, "uplink", "status", "--socket", str(sock)], capture_output=True, text=True,
                           cwd=ROOT)
    assert "pinned starlink" in table.stdout and "fibre" in table.stdout
    # Someone replaces the default route by hand: the daemon puts its choice back.
    netns.ip(EDGE, "route", "replace", "default", "via", "10.71.1.1", "dev", "fibre0")
    assert until(lambda: "dev star0" in default_route(), 5), default_route()
    assert uplink_status(sock)["route_repairs"] >= 1
    auto = subprocess.run([*cli, "uplink", "auto", "--socket", str(sock)], capture_output=True, text=True, cwd=ROOT)
    assert auto.returncode == 0
    assert until(lambda: "dev fibre0" in default_route(), 10)
    bad = subprocess.run([*cli, "uplink", "use", "nope", "--socket", str(sock)], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 1 and "no uplink 'nope'" in bad.stderr
