"""Probes leave through their own uplink: two veth uplinks between a fresh pair of
network namespaces, policy routing per source address, nftables to cut one uplink.

    edge (llt-e-PID)                          far (llt-f-PID)
      llt-a0 10.201.1.1/24  ---- uplink A ----  llt-a1 10.201.1.2/24
      llt-b0 10.201.2.1/24  ---- uplink B ----  llt-b1 10.201.2.2/24
      main: default via B                       lo 10.201.9.1/32: the echo responder (udp 7),
      from 10.201.1.1 lookup 101 (via A)           tcp 9 closed (RST = path ok), ICMP
      from 10.201.2.1 lookup 102 (via B)

The probers run in a subprocess inside the edge namespace (printing one JSON line per
round); the lab echo responder runs in the far one. Needs root and ``ip``/``nft``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from tests.support.cli import ROOT as REPO

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 `ip`"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs `nft`"),
]

TARGET = "10.201.9.1"
UPLINKS = {"a": ("10.201.1.1", "10.201.1.2", 101), "b": ("10.201.2.1", "10.201.2.2", 102)}

RUNNER = r"""
import json, sys, trio
from daemon.uplinks.probe import UplinkProber
from daemon.uplinks.targets import parse_target

config = json.loads(sys.argv[1])

async def main():
    probers = [UplinkProber(u["name"], u["source"], [parse_target(t) for t in u["targets"]],
                            config["timeout"], interface=u.get("interface")) for u in config["uplinks"]]
    async with trio.open_nursery() as nursery:
        for p in probers:
            await nursery.start(p.run)
        seq = 0
        while True:
            started = trio.current_time()
            rounds = {}
            async def one(p):
                rounds[p.uplink] = await p.probe_round(seq)
            async with trio.open_nursery() as inner:
                for p in probers:
                    inner.start_soon(one, p)
            line = {"seq": seq, "results": {name: [[r.target, r.ok, r.error, r.rtt] for r in results]
                                            for name, results in rounds.items()},
                    "counters": {p.uplink: p.counters for p in probers},
                    "icmp": {p.uplink: p.icmp_socket for p in probers}}
            print(json.dumps(line), flush=True)
            seq += 1
            await trio.sleep_until(started + config["interval"])

trio.run(main)
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class World:
    def __init__(self) -> None:
        self.edge = f"llt-e-{os.getpid()}"
        self.far = f"llt-f-{os.getpid()}"
        self.procs: list[subprocess.Popen[str]] = []

    def e(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.edge, *argv, check=check)

    def f(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.far, *argv, check=check)

    def create(self) -> None:
        run("ip", "netns", "add", self.edge)
        run("ip", "netns", "add", self.far)

    def build(self) -> None:
        for ns in (self.e, self.f):
            ns("ip", "link", "set", "lo", "up")
        self.f("ip", "addr", "add", f"{TARGET}/32", "dev", "lo")
        for name in UPLINKS:
            self.add_uplink(name)
        self.e("ip", "route", "add", "default", "via", UPLINKS["b"][1])
        for name, (source, _gw, table) in UPLINKS.items():
            self.e("ip", "rule", "add", "pref", str(table + 900), "from", source, "lookup", str(table))
        ruleset = (
            "table inet llt {\n"
            "  chain leak { type filter hook prerouting priority -300; "
            f'iifname "llt-b1" ip saddr {UPLINKS["a"][0]} counter; }}\n'
            "  chain block { type filter hook prerouting priority -200; }\n"
            "}\n"
        )
        proc = subprocess.run(["ip", "netns", "exec", self.far, "nft", "-f", "-"], input=ruleset,
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed: {proc.stderr}")

    def add_uplink(self, name: str) -> None:
        source, gateway, table = UPLINKS[name]
        near, far = f"llt-{name}0", f"llt-{name}1"
        self.e("ip", "link", "add", near, "type", "veth", "peer", "name", far, "netns", self.far)
        self.e("ip", "addr", "add", f"{source}/24", "dev", near)
        self.f("ip", "addr", "add", f"{gateway}/24", "dev", far)
        self.e("ip", "link", "set", near, "up")
        self.f("ip", "link", "set", far, "up")
        self.e("ip", "route", "add", "default", "via", gateway, "dev", near, "table", str(table))

    def remove_uplink(self, name: str) -> None:
        self.e("ip", "link", "del", f"llt-{name}0")  # takes its peer in the far namespace too

    def block(self, name: str) -> None:
        self.f("nft", "add", "rule", "inet", "llt", "block", "iifname", f"llt-{name}1", "drop")

    def unblock(self) -> None:
        self.f("nft", "flush", "chain", "inet", "llt", "block")

    def leaked(self) -> int:
        """Packets from A's source address that arrived over B."""
        data = json.loads(self.f("nft", "-j", "list", "chain", "inet", "llt", "leak").stdout)
        for item in data["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise AssertionError(f"no counter in {data}")

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def start_echo(self) -> None:
        proc = self.spawn(self.far, sys.executable, "-m", "lab.echo", "--listen", f"{TARGET}:7",
                          "--delay", "10.201.2.0/24=5ms..10ms")
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith(f"echo.ready listen={TARGET}:7"), line

    def start_probers(self, uplinks: list[dict[str, Any]], timeout: float = 0.2, interval: float = 0.25) -> "Rounds":
        config = {"uplinks": uplinks, "timeout": timeout, "interval": interval}
        return Rounds(self.spawn(self.edge, sys.executable, "-c", RUNNER, json.dumps(config)))

    def destroy(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in (self.edge, self.far):
            run("ip", "netns", "del", ns, check=False)


class Rounds:
    """The runner's JSON lines, read by a thread so a test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        item = self.lines.get(timeout=timeout)
        if item is None:
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the prober runner died (exit {self.proc.wait()}): {stderr}")
        return item

    def until(self, condition: Callable[[dict[str, Any]], bool], within: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        seen = []
        while time.monotonic() < deadline:
            line = self.next()
            seen.append(line)
            if condition(line):
                return line
        raise AssertionError(f"condition not met within {within}s; last rounds: {seen[-3:]}")


def all_ok(line: dict[str, Any], uplink: str) -> bool:
    return all(ok for _t, ok, _e, _rtt in line["results"][uplink])


def none_ok(line: dict[str, Any], uplink: str) -> bool:
    return not any(ok for _t, ok, _e, _rtt in line["results"][uplink])


def errors(line: dict[str, Any], uplink: str) -> set[str | None]:
    return {error for _t, _ok, error, _rtt in line["results"][uplink]}


def uplink(name: str, *, interface: bool = True, label: str | None = None) -> dict[str, Any]:
    config = {"name": label or name, "source": UPLINKS[name][0],
              "targets": [f"udp://{TARGET}:7", f"icmp://{TARGET}", f"tcp://{TARGET}:9"]}
    if interface:
        config["interface"] = f"llt-{name}0"
    return config


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        try:
            w.create()
        except RuntimeError as exc:
            pytest.skip(f"cannot create network namespaces here: {exc}")
        w.build()
        w.start_echo()
        yield w
    finally:
        w.destroy()  # even when the test (or the build) failed


def test_a_probe_bound_to_an_uplink_leaves_through_it(world: World) -> None:
    # Unprivileged ping sockets in the edge namespace, so ICMP takes the SOCK_DGRAM path.
    world.e("sh", "-c", "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range")
    rounds = world.start_probers([uplink("a"), uplink("b")])
    line = rounds.until(lambda l: all_ok(l, "a") and all_ok(l, "b"))
    assert line["icmp"] == {"a": "ping", "b": "ping"}, "ping sockets were allowed"
    b_udp_rtt = line["results"]["b"][0][3]
    assert b_udp_rtt >= 0.005, "B's echo carries the responder's 5-10 ms delay"

    world.block("a")
    line = rounds.until(lambda l: none_ok(l, "a"))
    assert all_ok(line, "b"), line
    assert errors(line, "a") == {"timeout"}
    for _ in range(3):
        line = rounds.next()
        assert none_ok(line, "a") and all_ok(line, "b"), line

    world.unblock()
    line = rounds.until(lambda l: all_ok(l, "a"))
    assert all_ok(line, "b")
    assert world.leaked() == 0
    counters = line["counters"]["a"]
    assert counters["refused"] > 0, "tcp :9 answers RST, and that counts as a working path"
    assert counters["garbage"] == counters["wrong_source"] == 0


def test_device_binding_keeps_probes_on_the_uplink_without_policy_routing(world: World) -> None:
    # Without its policy rule, A's source would route by the main table: out of B.
    world.e("ip", "rule", "del", "pref", str(UPLINKS["a"][2] + 900))
    world.block("a")
    rounds = world.start_probers([uplink("a", interface=False, label="unbound"),
                                  uplink("a", label="bound"), uplink("b")])
    line = rounds.until(lambda l: l["seq"] >= 3)
    assert world.leaked() > 0, "the unbound prober's packets left through B (what device binding prevents)"
    assert all_ok(line, "unbound"), "... and were answered there"
    assert none_ok(line, "bound"), line
    assert all_ok(line, "b"), line

    # Count only the bound prober's packets from here on.
    proc = rounds.proc
    proc.terminate()
    proc.wait(timeout=5)
    before = world.leaked()
    rounds = world.start_probers([uplink("a", label="bound"), uplink("b")])
    line = rounds.until(lambda l: l["seq"] >= 3)
    assert none_ok(line, "bound") and all_ok(line, "b"), line
    assert world.leaked() == before, "a device-bound probe never leaves through another uplink"


def test_uplink_vanishes_and_returns(world: World) -> None:
    rounds = world.start_probers([uplink("a"), uplink("a", interface=False, label="a-src"), uplink("b")])
    rounds.until(lambda l: all_ok(l, "a") and all_ok(l, "a-src") and all_ok(l, "b"))

    world.remove_uplink("a")
    # The first failed send says "unreachable"; the sockets are re-opened next round, and
    # then say why: the device-bound ones that the device is gone, the others the address.
    line = rounds.until(lambda l: errors(l, "a") == {"no interface"} and errors(l, "a-src") == {"no source address"})
    assert none_ok(line, "a") and none_ok(line, "a-src") and all_ok(line, "b"), line
    for _ in range(3):  # and it keeps going, round after round, without crashing
        line = rounds.next()
        assert none_ok(line, "a") and all_ok(line, "b"), line

    world.add_uplink("a")
    line = rounds.until(lambda l: all_ok(l, "a") and all_ok(l, "a-src"), within=8)
    assert all_ok(line, "b")
    assert rounds.proc.poll() is None
