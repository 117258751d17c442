"""The selective conntrack flush against real NATed flows, in throwaway namespaces.

World (all deleted by the fixture's finalizer, pass or fail):

    lan (10.71.9.2) --lan0-- host --fibre0 (10.71.1.2)--> router 10.71.1.1
                                  --star0  (10.71.2.2)--> router 10.71.2.1

The host forwards and masquerades out of both uplinks (nftables); the router owns
198.51.100.1 (reached via the fibre: the host's default route) and 198.51.100.2 (a
host route via starlink). Flows: UDP and ping from the LAN through each uplink, UDP sent
by the host from each uplink's address, and one LAN-only flow that belongs to neither.
``flush_uplink_flows`` runs inside the host namespace (conntrack tables are per
namespace) through ``ip netns exec``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, TypeVar

import pytest
import trio

from daemon.uplinks.conntrack import belongs_to, flush_uplink_flows, kernel_filters_reliably

FIBRE_SRC, STAR_SRC = "10.71.1.2", "10.71.2.2"
VIA_FIBRE, VIA_STAR = "198.51.100.1", "198.51.100.2"
LAN_HOST, LAN_PEER = "10.71.9.1", "10.71.9.2"

_NEEDS_ROOT = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces, nftables NAT"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft") and shutil.which("conntrack")),
                       reason="needs iproute2, nft and the conntrack CLI (to check from outside)"),
]

T = TypeVar("T")


def needs_root(test: T) -> T:
    """The namespace tests; the sans-IO ones below run anywhere."""
    for mark in _NEEDS_ROOT:
        test = mark(test)
    return test

_counter = itertools.count()

NAT = """
table ip lifeline_test {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname { "fibre0", "star0" } masquerade
    }
}
table ip6 lifeline_test {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname { "fibre0", "star0" } masquerade
    }
}
"""

FLUSH = """
import functools, json, sys, trio
from daemon.core import log
from daemon.uplinks.conntrack import flush_uplink_flows
log.setup("debug")
kernel_filter = json.loads(sys.argv[1])
flush = functools.partial(flush_uplink_flows, kernel_filter=kernel_filter)
print(json.dumps([trio.run(flush, source) for source in sys.argv[2:]]))
"""

SEND = """
import socket, sys
for spec in sys.argv[1:]:
    bind, dst, port = spec.split(",")
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        s.bind((bind, 0))
    s.sendto(b"x", (dst, int(port)))
    s.close()
"""


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=20, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass
class World:
    host: str
    router: str
    lan: str

    def in_host(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.host, *args, check=check, input=input)

    def flows(self) -> list[str]:
        """``conntrack -L`` of the host, one line per entry."""
        return [line for line in self.in_host("conntrack", "-L").stdout.splitlines() if line.strip()]


def veth(a_ns: str, a: str, a_addr: str, b_ns: str, b: str, b_addr: str) -> None:
    run("ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns)
    for ns, dev, addr in ((a_ns, a, a_addr), (b_ns, b, b_addr)):
        run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")


@pytest.fixture
def world() -> Iterator[World]:
    name = f"llt-conntrack-{os.getpid()}-{next(_counter)}"
    w = World(host=name, router=f"{name}-r", lan=f"{name}-l")
    try:
        for ns in (w.host, w.router, w.lan):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        veth(w.host, "fibre0", f"{FIBRE_SRC}/24", w.router, "r-fibre0", "10.71.1.1/24")
        veth(w.host, "star0", f"{STAR_SRC}/24", w.router, "r-star0", "10.71.2.1/24")
        veth(w.host, "lan0", f"{LAN_HOST}/24", w.lan, "l-lan0", f"{LAN_PEER}/24")
        run("ip", "-n", w.router, "addr", "add", f"{VIA_FIBRE}/32", "dev", "lo")
        run("ip", "-n", w.router, "addr", "add", f"{VIA_STAR}/32", "dev", "lo")
        run("ip", "-n", w.lan, "route", "add", "default", "via", LAN_HOST)
        run("ip", "-n", w.host, "route", "add", "default", "via", "10.71.1.1", "dev", "fibre0")
        run("ip", "-n", w.host, "route", "add", f"{VIA_STAR}/32", "via", "10.71.2.1", "dev", "star0")
        w.in_host("sysctl", "-qw", "net.ipv4.ip_forward=1")
        w.in_host("nft", "-f", "-", input=NAT)
        yield w
    finally:
        for ns in (w.host, w.router, w.lan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def make_flows(w: World) -> None:
    # From the LAN, NATed out of each uplink: three UDP flows and a ping each.
    lan = [f",{dst},{port}" for dst in (VIA_FIBRE, VIA_STAR) for port in (9001, 9002, 9003)]
    run("ip", "netns", "exec", w.lan, sys.executable, "-c", SEND, *lan)
    for dst in (VIA_FIBRE, VIA_STAR):
        run("ip", "netns", "exec", w.lan, "ping", "-c1", "-W1", dst)
    # Sent by the host itself from each uplink's address (as a probe does), and a LAN-only
    # flow that belongs to neither uplink.
    w.in_host(sys.executable, "-c", SEND, f"{FIBRE_SRC},{VIA_FIBRE},7000", f"{STAR_SRC},{VIA_STAR},7000",
              f"{LAN_HOST},{LAN_PEER},7000")


async def wait_for_flows(w: World, count: int) -> list[str]:
    # Forwarded packets are tracked in the host's softirq, a moment after the sender returns.
    with trio.fail_after(5):
        while len(flows := w.flows()) < count:
            await trio.sleep(0.01)
    return flows


def flush_in(w: World, *sources: str, as_nobody: bool = False,
             kernel_filter: bool | None = None) -> tuple[list[int], str]:
    command = [sys.executable, "-c", FLUSH, json.dumps(kernel_filter), *sources]
    if as_nobody:
        command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
                   *command]
    done = w.in_host(*command)
    return json.loads(done.stdout), done.stderr


@needs_root
@pytest.mark.parametrize("kernel_filter", [True, False], ids=["kernel-filtered", "full-dump"])
async def test_flush_deletes_only_the_uplinks_flows(world: World, kernel_filter: bool) -> None:
    if kernel_filter and not kernel_filters_reliably():
        pytest.skip(f"kernel {os.uname().release} does not filter conntrack dumps reliably (< 5.15)")
    make_flows(world)
    flows = await wait_for_flows(world, 11)
    assert len(flows) == 11, flows
    fibre = [f for f in flows if FIBRE_SRC in f]
    assert len(fibre) == 5  # 3 UDP + 1 ping from the LAN, 1 UDP from the host

    deleted, log = flush_in(world, FIBRE_SRC, FIBRE_SRC, kernel_filter=kernel_filter)
    assert deleted == [5, 0]  # the second flush finds nothing left
    assert "event=conntrack.flushed source=10.71.1.2 deleted=5" in log

    left = world.flows()
    assert not [f for f in left if FIBRE_SRC in f], left
    assert sorted(left) == sorted(f for f in flows if FIBRE_SRC not in f)
    assert len([f for f in left if STAR_SRC in f]) == 5
    assert len([f for f in left if f"dst={LAN_PEER} sport=" in f and "dport=7000" in f]) == 1


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop privileges")
async def test_without_permission_the_flush_returns_zero_and_says_why_once(world: World) -> None:
    make_flows(world)
    flows = await wait_for_flows(world, 11)
    deleted, log = flush_in(world, STAR_SRC, STAR_SRC, as_nobody=True)
    assert deleted == [0, 0]
    assert log.count("event=conntrack.unavailable") == 1, log
    assert 'reason="Operation not permitted (EPERM)"' in log
    assert sorted(world.flows()) == sorted(flows)


@needs_root
async def test_ipv6_flows_are_flushed_by_the_uplinks_ipv6_address(world: World) -> None:
    fibre6, star6 = "2001:db8:1::2", "2001:db8:2::2"
    for dev, address, gateway in (("fibre0", fibre6, "2001:db8:1::1"), ("star0", star6, "2001:db8:2::1")):
        run("ip", "-n", world.host, "addr", "add", f"{address}/64", "dev", dev, "nodad")
        run("ip", "-n", world.router, "addr", "add", f"{gateway}/64", "dev", f"r-{dev}", "nodad")
    world.in_host(sys.executable, "-c", SEND, f"{fibre6},2001:db8:1::1,7000", f"{fibre6},2001:db8:1::1,7001",
                  f"{star6},2001:db8:2::1,7000")
    v6 = [line for line in world.in_host("conntrack", "-L", "-f", "ipv6").stdout.splitlines() if line.strip()]
    assert len(v6) == 3, v6

    deleted, _ = flush_in(world, fibre6)
    assert deleted == [2]
    left = world.in_host("conntrack", "-L", "-f", "ipv6").stdout.splitlines()
    assert len(left) == 1 and f"src={star6}" in left[0], left


async def test_a_source_that_is_not_an_address_is_refused_before_anything_is_touched() -> None:
    # An empty or garbled source must never become a filter that matches every flow.
    for source in ("", "fibre0", "10.71.1.0/24"):
        with pytest.raises(ValueError):
            await flush_uplink_flows(source)


def test_an_entry_belongs_to_the_uplink_by_reply_destination_or_original_source() -> None:
    import ipaddress

    me = ipaddress.ip_address(FIBRE_SRC)
    assert belongs_to(me, LAN_PEER, FIBRE_SRC)  # LAN flow masqueraded to the uplink
    assert belongs_to(me, FIBRE_SRC, VIA_FIBRE)  # sent by the host from the uplink's address
    assert not belongs_to(me, LAN_PEER, STAR_SRC)  # the other uplink's
    assert not belongs_to(me, LAN_HOST, LAN_PEER)  # LAN only
    assert not belongs_to(me, None, None)
    v6 = ipaddress.ip_address("2001:db8::2")
    assert belongs_to(v6, "2001:db8:9::5", "2001:0db8::2")


def test_kernel_side_filtering_is_trusted_from_5_15() -> None:
    assert kernel_filters_reliably("6.18.44-fc-v509")
    assert kernel_filters_reliably("5.15.0-91-generic")
    assert not kernel_filters_reliably("5.10.0-28-amd64")
    assert not kernel_filters_reliably("4.19.0")
    assert not kernel_filters_reliably("weird")
