"""`lifeline drill uplink --live` against a real `lifeline run` in a network namespace
of its own, as on a real host: the drill's nftables table cuts the fibre in the
daemon's own netns, the route moves to Starlink, the table goes at the deadline and the
route comes back; a table left over by a crash is removed at daemon start.

The first tests build namespaces of their own, ``lld-edge`` and ``lld-wan`` (the shared
``ll-*`` lab's lock may be held by long drills): two veth pairs (the fibre and the dish)
and an echo responder behind both. The last runs on the shared lab's edge daemon, the
CLI inside ll-edge. Needs root, ``ip`` and ``nft``."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from lab import netns
from lab.procs import DaemonProcess, quiet_system
from lab.world import netns_unavailable
from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from tests.support.cli import ROOT
from tests.support.waiting import until

UNAVAILABLE = netns_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the namespace lab needs {UNAVAILABLE}")

EDGE, WAN = "lld-edge", "lld-wan"
TARGET = "10.98.9.1"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def in_edge(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", EDGE, *argv, check=check)


def teardown() -> None:
    for ns in (EDGE, WAN):
        for pid in netns.netns_pids(ns) if ns in sh("ip", "netns", "list").stdout else []:
            sh("kill", "-9", str(pid), check=False)
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    teardown()
    try:
        for ns in (EDGE, WAN):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for edge_if, wan_if, net in (("fib0", "fibgw", "10.98.1"), ("sl0", "slgw", "10.98.2")):
            sh("ip", "link", "add", edge_if, "netns", EDGE, "type", "veth", "peer", "name", wan_if, "netns", WAN)
            sh("ip", "-n", EDGE, "addr", "add", f"{net}.2/24", "dev", edge_if)
            sh("ip", "-n", WAN, "addr", "add", f"{net}.1/24", "dev", wan_if)
            sh("ip", "-n", EDGE, "link", "set", edge_if, "up")
            sh("ip", "-n", WAN, "link", "set", wan_if, "up")
        sh("ip", "-n", WAN, "addr", "add", f"{TARGET}/32", "dev", "lo")
        echo = subprocess.Popen(netns.exec_argv(WAN, [sys.executable, "-m", "lab.echo", "--listen",
                                                      f"{TARGET}:7007"]),
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "echo.log", "wb"), cwd=ROOT)
        assert until(lambda: "echo.ready" in (tmp_path / "echo.log").read_text(), 10)
        yield echo
        echo.kill()
        echo.wait(5)
    finally:
        teardown()


def outside_now() -> str:
    hour = (dt.datetime.now(dt.timezone.utc).hour + 3) % 22
    return f"{hour:02d}:00-{hour + 1:02d}:00"


def config(workdir: Path, **drills: Any) -> dict[str, Any]:
    uplink = {"gateway": "", "targets": [f"udp://{TARGET}:7007"]}
    return {
        "node": {"name": "lld-edge", "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run")},
        "control": {"socket": str(workdir / "run" / "control.sock"), "group": ""},
        "metrics": {"enabled": False},
        "system": quiet_system(),
        "uplinks": {"fibre": {**uplink, "interface": "fib0", "source": "10.98.1.2", "gateway": "10.98.1.1",
                              "kind": "terrestrial", "priority": 10},
                    "starlink": {**uplink, "interface": "sl0", "source": "10.98.2.2", "gateway": "10.98.2.1",
                                 "kind": "starlink", "priority": 20}},
        "failover": {"route_backend": "netlink", "hold_down": "2s", "min_dwell": "1s"},
        "drills": {"live": True, "timezone": "UTC", "trading_hours": outside_now(), "max_duration": "20s", **drills},
    }


def start(workdir: Path, data: dict[str, Any]) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "lifeline.toml"
    path.write_text(dump_toml(data))
    daemon = DaemonProcess(config=path, workdir=workdir,
                           argv_prefix=netns.exec_argv(EDGE, [sys.executable, "-m", "daemon.cli"]))
    daemon.start()
    assert daemon.wait_ready(30), daemon.log_text()
    return daemon


def route() -> str:
    return sh("ip", "-n", EDGE, "route", "show", "default").stdout.strip()


def tables() -> str:
    return in_edge("nft", "list", "tables").stdout


def drill(workdir: Path, *extra: str) -> tuple[int, Any]:
    done = in_edge(sys.executable, "-m", "daemon.cli", "drill", "uplink", "--live", "--json",
                   "--socket", str(workdir / "run" / "control.sock"), *extra, check=False)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.returncode, done.stdout + done.stderr


def test_live_uplink_drill_fails_over_and_back_and_leaves_no_table(world: Any, tmp_path: Path) -> None:
    # A crashed drill's table, there before the daemon starts: removed at start, logged.
    in_edge("nft", "add", "table", "inet", "lifeline_drill")
    workdir = tmp_path / "edge"
    daemon = start(workdir, config(workdir))
    try:
        assert "lifeline_drill" not in tables()
        assert "drill.table_removed" in daemon.log_text()
        assert until(lambda: "dev fib0" in route(), 15), route()
        def ok() -> dict[str, Any]:
            with ControlClient(workdir / "run" / "control.sock").connect() as client:
                return dict(client.call("uplink.status"))

        assert until(lambda: all(u.get("state") == "up" for u in (ok().get("uplinks") or {"x": {}}).values()), 20)
        started = time.monotonic()
        code, result = drill(workdir, "--seconds", "5", "--report", str(tmp_path / "uplink.html"))
        took = time.monotonic() - started
        assert code == 0 and isinstance(result, dict) and result["ok"], result
        assert result["fibre"] == "fibre" and result["backup"] == "starlink" and result["seconds"] == 5
        assert 0 < result["fibre_down_s"] <= result["route_on_backup_s"] < 5, result
        assert result["failback_s"] > 0 and result["table_left"] is False
        assert took < 5 + 20 + 5
        assert "lifeline_drill" not in tables()
        assert until(lambda: "dev fib0" in route(), 5), route()
        assert (tmp_path / "uplink.html").exists()
        print(f"fibre down {result['fibre_down_s']}s, route on starlink {result['route_on_backup_s']}s, "
              f"failback {result['failback_s']}s after the restore")
        # Refused, with nothing cut, when there is no backup to fail over to.
        sh("ip", "-n", EDGE, "link", "set", "sl0", "down")
        assert until(lambda: (ok().get("uplinks") or {}).get("starlink", {}).get("state") == "down", 20)
        code, text = drill(workdir, "--seconds", "5")
        assert code == 1 and "no backup uplink is up" in str(text), text
        assert "lifeline_drill" not in tables() and "dev fib0" in route()
    finally:
        code = daemon.stop()
        log = daemon.log_text()
        daemon.close()
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert "event=drill.started" in log or "drill.started" in log


def test_live_uplink_drill_is_refused_when_live_drills_are_off(
        world: Any, tmp_path: Path) -> None:
    workdir = tmp_path / "edge"
    daemon = start(workdir, config(workdir, live=False))
    try:
        code, text = drill(workdir)
        assert code == 1 and "live drills are off" in str(text), text
        assert "lifeline_drill" not in tables()
    finally:
        daemon.stop()
        daemon.close()


def test_live_uplink_drill_on_the_labs_edge_daemon(tmp_path: Path) -> None:
    """The shared namespace lab (``ll-*``, behind its lock) as if it were the real host:
    the CLI inside ll-edge asks the edge daemon; the fibre's table cuts fibre0 there."""
    from lab.world import EDGE as LAB_EDGE
    from lab.world import LabWorld, edge_config, start_edge_daemon

    world = LabWorld(tmp_path / "lab")
    daemon = None
    try:
        world.up()
        workdir = tmp_path / "edge"
        data = edge_config(workdir, hold_down="2s", min_dwell="1s")
        data["drills"] = {"live": True, "timezone": "UTC", "trading_hours": outside_now(), "max_duration": "20s"}
        daemon = start_edge_daemon(workdir, data)
        assert daemon.wait_ready(30), daemon.log_text()
        lab_route = lambda: sh("ip", "-n", LAB_EDGE, "route", "show", "default").stdout  # noqa: E731
        assert until(lambda: "dev fibre0" in lab_route(), 15), lab_route()
        sock = workdir / "run" / "control.sock"

        def states() -> dict[str, Any]:
            with ControlClient(sock).connect() as client:
                return {n: u["state"] for n, u in client.call("uplink.status")["uplinks"].items()}

        assert until(lambda: set(states().values()) == {"up"}, 20), states()
        done = sh("ip", "netns", "exec", LAB_EDGE, sys.executable, "-m", "daemon.cli", "drill", "uplink", "--live",
                  "--seconds", "5", "--socket", str(sock), check=False)
        print(done.stdout)
        assert done.returncode == 0 and "drill PASSED" in done.stdout, done.stdout + done.stderr
        assert "PASS  the route moved to starlink" in done.stdout
        assert "lifeline_drill" not in sh("ip", "netns", "exec", LAB_EDGE, "nft", "list", "tables").stdout
        assert until(lambda: "dev fibre0" in lab_route(), 5), lab_route()
    finally:
        if daemon is not None:
            daemon.stop(20)
            daemon.close()
        world.down()
