"""The promotion drills' namespace lab (lab/pair.py): built and removed without a
trace, also after a failed build; a partition cuts exactly the pair it names, in both
directions, established connections included; losing a site cuts all of its hosts.

Paths are probed with real TCP connects from inside the namespaces to real listeners
in the others. Needs root, ``ip`` and ``nft``; skipped otherwise.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import netns
from lab.netns import LabError
from lab.pair import HOSTS, NAMESPACES, PREFIX, SITES, PairLab, pair_unavailable
from lab.world import LabLock
from tests.support.cli import cli

UNAVAILABLE = pair_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the pair lab needs {UNAVAILABLE}")

PORT = 7099


@pytest.fixture
def lab() -> Iterator[PairLab]:
    world = PairLab()
    try:
        world.up()
        yield world
    finally:
        world.down()
        assert netns.lab_namespaces(PREFIX) == []


class Listeners:
    """A TCP listener on every host (port :data:`PORT`), made inside its namespace."""

    def __init__(self) -> None:
        self.socks: dict[str, socket.socket] = {}
        for name, h in HOSTS.items():
            sock = netns.socket_in_netns(h.ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((h.address, PORT))
            sock.listen(64)
            self.socks[name] = sock

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


@pytest.fixture
def listeners(lab: PairLab) -> Iterator[Listeners]:
    ears = Listeners()
    try:
        yield ears
    finally:
        ears.close()


def connects(a: str, b: str, timeout: float = 0.4) -> bool:
    """A full TCP handshake from host ``a`` to the listener on host ``b``."""
    sock = netns.socket_in_netns(HOSTS[a].ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((HOSTS[b].address, PORT))
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def blocked_pairs() -> set[tuple[str, str]]:
    """Every ordered pair of hosts whose connect fails (probed in parallel)."""
    pairs = [(a, b) for a in HOSTS for b in HOSTS if a != b]
    with ThreadPoolExecutor(len(pairs)) as pool:
        results = list(pool.map(lambda p: connects(*p), pairs))
    return {p for p, ok in zip(pairs, results) if not ok}


def test_up_and_down_are_idempotent_and_leave_nothing_behind() -> None:
    world = PairLab()
    try:
        world.up()
        assert netns.lab_namespaces(PREFIX) == sorted(NAMESPACES)
        # Up again over a world that exists: it is rebuilt, not doubled.
        built = world.up()
        assert len(built) == len(NAMESPACES)
        assert netns.lab_namespaces(PREFIX) == sorted(NAMESPACES)
        # The uplink lab (and any other user of the lab lock) waits meanwhile.
        with pytest.raises(LabError, match="another lab is in use"):
            LabLock().acquire(timeout=0.2)
        removed = world.down()
        assert {f"namespace {ns}" for ns in NAMESPACES} <= set(removed)
        assert world.down() == []
        assert netns.lab_namespaces(PREFIX) == []
        assert not [ns for ns in netns.list_netns() if ns.startswith(PREFIX)]
        # The lock is free again, and no link of the lab appeared in the host's namespace.
        other = LabLock()
        other.acquire(timeout=1.0)
        other.release()
        host_links = netns.run(["ip", "-o", "link", "show"]).stdout.splitlines()
        names = {line.split(":")[1].strip().split("@")[0] for line in host_links}
        assert not names & {h.port for h in HOSTS.values()}, names
    finally:
        world.down()


def test_a_failed_up_removes_what_it_made_and_frees_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    real_addr = netns.addr

    def failing_addr(ns: str, ifname: str, cidr: str) -> None:
        if ns == HOSTS["witness"].ns:
            raise LabError("injected: cannot address the witness")
        real_addr(ns, ifname, cidr)

    monkeypatch.setattr(netns, "addr", failing_addr)
    world = PairLab()
    with pytest.raises(LabError, match="injected"):
        world.up()
    assert netns.lab_namespaces(PREFIX) == []
    assert not world.lock.held
    other = LabLock()
    other.acquire(timeout=1.0)
    other.release()


def test_every_host_reaches_every_other(listeners: Listeners) -> None:
    assert blocked_pairs() == set()


def test_a_partition_cuts_only_that_pair_both_ways_established_connections_too(lab: PairLab,
                                                                              listeners: Listeners) -> None:
    # A connection edge-a -> witness made before the cut.
    client = netns.socket_in_netns(HOSTS["edge-a"].ns, socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(2)
    client.connect((HOSTS["witness"].address, PORT))
    server, _ = listeners.socks["witness"].accept()
    server.settimeout(0.5)
    try:
        lab.partition("edge-a", "witness")
        assert blocked_pairs() == {("edge-a", "witness"), ("witness", "edge-a")}
        assert lab.cuts()["edge-a"] == [HOSTS["witness"].address]
        assert lab.cuts()["witness"] == [HOSTS["edge-a"].address]
        assert lab.reachable("edge-a", "edge-b") and not lab.reachable("edge-a", "witness")

        client.sendall(b"during the cut")
        with pytest.raises(socket.timeout):
            server.recv(100)  # silently dropped, the connection itself still open

        lab.heal()
        assert all(v == [] for v in lab.cuts().values())
        assert blocked_pairs() == set()
        server.settimeout(5)  # TCP retransmits what was dropped
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < len(b"during the cut") and time.monotonic() < deadline:
            got += server.recv(100)
        assert got == b"during the cut"
    finally:
        client.close()
        server.close()


def test_a_one_way_cut_drops_one_direction_of_an_established_connection(lab: PairLab,
                                                                       listeners: Listeners) -> None:
    """edge-b drops what edge-a sends (an armed cut, as the nemesis fires it): edge-a's
    bytes stop arriving, edge-b's still reach edge-a."""
    client = netns.socket_in_netns(HOSTS["edge-a"].ns, socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(2)
    client.connect((HOSTS["edge-b"].address, PORT))
    server, _ = listeners.socks["edge-b"].accept()
    server.settimeout(0.5)
    try:
        armed = lab.arm_one_way("edge-a", "edge-b")
        armed.fire()
        assert lab.cuts()["edge-b"] == [HOSTS["edge-a"].address] and lab.cuts()["edge-a"] == []
        assert lab.one_way == {("edge-a", "edge-b")}
        client.sendall(b"a to b")
        with pytest.raises(socket.timeout):
            server.recv(100)
        server.sendall(b"b to a")
        assert client.recv(100) == b"b to a"
        lab.heal()
        assert lab.one_way == set() and all(v == [] for v in lab.cuts().values())
        lab.cut_one_way("witness", "edge-a")
        assert lab.cuts()["edge-a"] == [HOSTS["witness"].address] and lab.cuts()["witness"] == []
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("site", [1, 3])
def test_losing_a_site_cuts_every_host_of_it_and_nothing_else(lab: PairLab, listeners: Listeners,
                                                              site: int) -> None:
    members = lab.lose_site(site)
    assert members == list(SITES[site])
    expected = {(a, b) for a in HOSTS for b in HOSTS if a != b and (a in members or b in members)}
    assert blocked_pairs() == expected
    lab.heal()
    assert blocked_pairs() == set()


def test_lab_down_removes_the_pair_lab_too() -> None:
    """`lifeline lab down` is the one command an operator has to clean up after a crashed
    drill: it removes the promotion drills' llp-* namespaces as well as the uplink lab's."""
    world = PairLab()
    try:
        world.up()
        world.lock.release()  # as a crashed drill would leave it: namespaces, no lock holder
        assert netns.lab_namespaces(PREFIX) == sorted(NAMESPACES)
        down = cli("lab", "down", timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"namespace {PREFIX}edge-a" in down.stdout, down.stdout
        assert netns.lab_namespaces(PREFIX) == []
    finally:
        world.down()
