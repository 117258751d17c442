"""The lab's namespace world: built, impaired, torn down (also after a crash), and one
real `lifeline run` failing over inside it.

Needs root, ``ip`` and ``nft``; skipped otherwise. The world's names are fixed, so
``LabWorld.up()`` holds :class:`LabLock` until ``down()``: a test run and a drill on one
machine take turns instead of tearing down each other's lab. Every test that builds the
world calls ``down()``, also when it fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from daemon.config import dump_toml, parse_config
from lab import netns
from lab.world import (
    EDGE,
    NAMESPACES,
    PREFIX,
    RSAT,
    VENUE,
    VENUE_TARGETS,
    LabLock,
    LabWorld,
    LoopbackWorld,
    edge_config,
    netns_unavailable,
)
from tests.support.cli import cli
from tests.support.waiting import until

UNAVAILABLE = netns_unavailable()
needs_netns = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the lab's namespace world needs {UNAVAILABLE}")


@pytest.fixture
def lab_lock() -> Iterator[None]:
    """For tests that make ll-* namespaces without a LabWorld."""
    with LabLock():
        yield


@pytest.fixture
def world(tmp_path: Path) -> Iterator[LabWorld]:
    lab = LabWorld(tmp_path / "lab")
    try:
        lab.up()
        yield lab
    finally:
        try:
            lab.down(release=False)
            assert netns.lab_namespaces(PREFIX) == []
        finally:
            lab.lock.release()



# --------------------------------------------------------------------------- plumbing


@needs_netns
def test_socket_in_netns_lives_in_that_namespace_and_the_thread_comes_back(lab_lock: None) -> None:
    ns = f"{PREFIX}t-sock"
    own = os.readlink("/proc/thread-self/ns/net")
    netns.del_netns(ns)
    netns.add_netns(ns)
    try:
        netns.addr(ns, "lo", "10.99.0.1/32")
        sock = netns.socket_in_netns(ns)
        sock.bind(("10.99.0.1", 0))  # only that namespace has the address
        sock.close()
        assert os.readlink("/proc/thread-self/ns/net") == own
        with pytest.raises(OSError):  # and this thread is back in its own
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
                plain.bind(("10.99.0.1", 0))

        # A worker thread: only it moves, and it moves back.
        seen: list[str] = []

        def worker() -> None:
            with netns.in_netns(ns):
                seen.append(os.readlink("/proc/thread-self/ns/net"))
                assert os.readlink(f"/proc/{os.getpid()}/task/{threading.main_thread().native_id}/ns/net") == own
            seen.append(os.readlink("/proc/thread-self/ns/net"))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen[0] != own and seen[1] == own
    finally:
        netns.del_netns(ns)
    with pytest.raises(netns.LabError, match="no network namespace"):
        netns.socket_in_netns(ns)
    with pytest.raises(netns.LabError, match="ip netns del"):
        netns.run(["ip", "netns", "del", ns])


def test_edge_config_is_a_valid_config(tmp_path: Path) -> None:
    config = parse_config(dump_toml(edge_config(tmp_path, hold_down="2s", min_dwell="1s")))
    assert list(config.uplinks) == ["fibre", "starlink"]
    fibre, starlink = config.uplinks["fibre"], config.uplinks["starlink"]
    assert (fibre.interface, fibre.source, fibre.gateway, fibre.kind, fibre.priority) == \
        ("fibre0", "10.71.1.2", "10.71.1.1", "terrestrial", 10)
    assert (starlink.interface, starlink.source, starlink.gateway, starlink.kind, starlink.priority) == \
        ("star0", "10.72.1.2", "10.72.1.1", "starlink", 20)
    assert fibre.targets == starlink.targets == ["udp://10.75.0.1:7", "udp://10.75.0.2:7"]
    assert config.failover.route_backend == "netlink"
    assert (config.failover.hold_down, config.failover.min_dwell) == (2.0, 1.0)
    assert config.node.name == "lab-edge" and config.control.group == ""
    assert str(config.control.socket).startswith(str(tmp_path))
    assert parse_config(dump_toml(edge_config(tmp_path, backend="none"))).failover.route_backend == "none"


def test_without_root_lab_up_falls_back_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    # As if this host had no lab namespaces either (a drill may be running beside us).
    monkeypatch.setattr(netns, "lab_namespaces", lambda prefix="ll-": [])
    try:
        assert main(["lab", "up", "--workdir", str(tmp_path)]) == 0
        out, err = capsys.readouterr()
        assert "not root" in err and "loopback mode" in err
        assert "mode: loopback" in out
        lab = LoopbackWorld(tmp_path)
        assert lab.echo_through("fibre", 10).received == 10
        lab.cut("fibre")
        assert lab.echo_through("fibre", 10).received == 0
        assert lab.echo_through("starlink", 10).received == 10
        lab.restore("fibre")
        assert lab.echo_through("fibre", 10).received == 10
        with pytest.raises(netns.LabError, match="loopback mode cannot add random loss"):
            lab.loss("fibre", 10)
    finally:
        assert main(["lab", "down", "--workdir", str(tmp_path)]) == 0
    assert "echo responder" in capsys.readouterr().out
    assert LoopbackWorld(tmp_path).status().echo_pids == []


# --------------------------------------------------------------------------- the world


@needs_netns
def test_up_builds_every_namespace_and_the_venue_answers_through_both_routers(world: LabWorld) -> None:
    assert netns.lab_namespaces(PREFIX) == sorted(NAMESPACES)
    for target in VENUE_TARGETS:
        fibre = world.echo_through("fibre", 20, target)
        starlink = world.echo_through("starlink", 20, target)
        assert fibre.received == 20 and starlink.received == 20, (target, fibre, starlink)
        assert fibre.median_ms is not None and fibre.median_ms < 20, fibre
        assert starlink.median_ms is not None and 20 <= starlink.median_ms <= 100, starlink
    # The daemon starts from a clean edge: no default route, none of the check's rules.
    assert world.default_route() is None
    rules = netns.ip(EDGE, "rule", "show").stdout
    assert "lookup 71" not in rules and "lookup 72" not in rules
    assert world.echo is not None and world.status().echo_pids == [world.echo.pid]


@needs_netns
def test_cut_loss_and_restore_act_on_one_uplink(world: LabWorld) -> None:
    world.cut("fibre")
    assert world.echo_through("fibre", 20).received == 0
    assert world.echo_through("starlink", 20).received == 20
    world.restore("fibre")
    assert world.echo_through("fibre", 20).received == 20

    # 50 % per direction: a round trip survives both, 25 % of the time.
    world.loss("fibre", 50)
    both = world.echo_through("fibre", 200)
    assert 0.55 <= both.loss <= 0.92, both
    world.loss("fibre", 50, direction="up")
    up = world.echo_through("fibre", 200)
    assert 0.30 <= up.loss <= 0.70, up
    assert world.echo_through("starlink", 20).received == 20
    world.restore("fibre")
    assert world.impairment("fibre") == "none"
    assert world.echo_through("fibre", 20).received == 20

    world.link_down("fibre")
    assert "NO-CARRIER" in netns.ip(EDGE, "link", "show", "fibre0").stdout
    assert world.echo_through("fibre", 10).received == 0
    assert world.echo_through("starlink", 10).received == 10
    world.link_up("fibre")
    # The edge's ARP entry for the gateway may wait for the kernel's next retry (1 s).
    assert until(lambda: world.echo_through("fibre", 5, wait=0.2).received == 5, timeout=3) is not None


@needs_netns
def test_down_after_a_crash_removes_everything(world: LabWorld) -> None:
    assert world.echo is not None
    subprocess.run(["ip", "netns", "del", RSAT], check=True)
    world.echo.send_signal(signal.SIGKILL)
    world.echo.wait()
    removed = LabWorld(world.workdir).down()  # a new process: nothing remembered but the names
    assert netns.lab_namespaces(PREFIX) == []
    assert {f"namespace {ns}" for ns in NAMESPACES if ns != RSAT} <= set(removed)
    assert LabWorld(world.workdir).down() == []


@needs_netns
def test_down_stops_a_responder_whose_namespace_was_deleted_by_hand(world: LabWorld) -> None:
    assert world.echo is not None
    pid = world.echo.pid
    subprocess.run(["ip", "netns", "del", VENUE], check=True)  # the responder lives on, unnamed
    assert world.echo.poll() is None
    removed = LabWorld(world.workdir).down()
    assert f"echo responder {pid}" in removed
    assert until(lambda: world.echo is not None and world.echo.poll() is not None, timeout=3) is not None
    assert netns.lab_namespaces(PREFIX) == []


@needs_netns
def test_lab_cli_up_status_down(tmp_path: Path) -> None:
    def lab(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("lab", *args, timeout=60)

    try:
        up = lab("up", "--workdir", str(tmp_path))
        assert up.returncode == 0, up.stderr
        assert "ll-venue lo 10.75.0.1/32, 10.75.0.2/32" in up.stdout and "echo responder: pid" in up.stdout
        status = lab("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "lab namespaces: ll-edge, ll-rfib, ll-rsat, ll-venue" in status.stdout
        assert "echo responder: running" in status.stdout and "edge default route: none" in status.stdout
    finally:
        down = lab("down")
    assert down.returncode == 0 and "namespace ll-venue" in down.stdout, down.stdout + down.stderr
    again = lab("down")
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    assert lab("status").returncode == 1


# --------------------------------------------------------------------------- end to end


@needs_netns
def test_a_real_daemon_fails_over_to_starlink_and_back(world: LabWorld, tmp_path: Path) -> None:
    workdir = tmp_path / "edge"
    daemon = world.start_edge_daemon(workdir, world.edge_config(workdir, hold_down="2s", min_dwell="1s"))
    try:
        assert daemon.wait_ready(30), "no READY=1:\n" + daemon.log_text()[-4000:]

        def route_via(text: str) -> Callable[[], bool]:
            return lambda: text in (world.default_route() or "")

        on_fibre, on_starlink = "via 10.71.1.1 dev fibre0", "via 10.72.1.1 dev star0"
        assert until(route_via(on_fibre), 10) is not None, \
            f"default route {world.default_route()!r}\n" + daemon.log_text()[-4000:]
        world.cut("fibre")
        failover = until(route_via(on_starlink), 5)
        assert failover is not None, f"default route {world.default_route()!r}\n" + daemon.log_text()[-4000:]
        world.restore("fibre")
        failback = until(route_via(on_fibre), 2 + 10)
        assert failback is not None, f"default route {world.default_route()!r}\n" + daemon.log_text()[-4000:]
        assert daemon.stop(timeout=20) == 0, daemon.log_text()[-4000:]
    finally:
        daemon.close()
