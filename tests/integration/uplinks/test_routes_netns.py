"""The netlink route backend against a real kernel, in a throwaway network namespace.

World: namespace ``llt-routes-<pid>-<n>`` (the host) with two uplinks, veth ``fibre0``
(10.71.1.2/24) and ``star0`` (10.71.2.2/24), whose peers sit in ``...-r`` (the routers,
10.71.1.1 and 10.71.2.1). Both namespaces are deleted by the fixture's finalizer, pass or
fail.

The backend runs *inside* the host namespace: this file, run as a script by ``ip netns
exec NS python THIS_FILE --serve``, keeps one :class:`NetlinkRouteBackend` and answers
one JSON line per command on stdin. A separate process, because a network namespace is a
property of a thread and trio's worker threads (where pyroute2 runs) are not ours to
move; it is also how the daemon runs on the lab's edge hosts. The test process looks at
the result from outside with ``ip -n NS``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

import pytest
import trio

from daemon.uplinks import UplinkRoute
from daemon.uplinks.routes import CurrentRoute, NetlinkRouteBackend, RouteError, route_matches

FIBRE = UplinkRoute(name="fibre", interface="fibre0", source="10.71.1.2", gateway="10.71.1.1", table=1001)
STAR = UplinkRoute(name="starlink", interface="star0", source="10.71.2.2", gateway="10.71.2.1", table=1002)
FIBRE6 = UplinkRoute(name="fibre6", interface="fibre0", source="2001:db8:1::2", gateway="2001:db8:1::1", table=1001)
STAR6 = UplinkRoute(name="starlink6", interface="star0", source="2001:db8:2::2", gateway="2001:db8:2::1", table=1002)
UPLINKS = {u.name: u for u in (FIBRE, STAR, FIBRE6, STAR6)}
PRIORITY = 1000  # fibre's rule at 1000, starlink's at 1001
FAR = "198.51.100.1"  # somewhere beyond both routers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces and veth pairs"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip`"),
]

_counter = itertools.count()


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout + done.stderr


@dataclass
class World:
    host: str
    router: str

    def ip(self, *args: str, check: bool = True) -> str:
        return ip("-n", self.host, *args, check=check)

    def add_uplink(self, uplink: UplinkRoute) -> None:
        """A veth pair: the uplink's end in the host, the gateway's end in the router."""
        peer = f"r-{uplink.interface}"
        ip("link", "add", uplink.interface, "netns", self.host, "type", "veth", "peer", "name", peer,
           "netns", self.router)
        ip("-n", self.host, "addr", "add", f"{uplink.source}/24", "dev", uplink.interface)
        ip("-n", self.router, "addr", "add", f"{uplink.gateway}/24", "dev", peer)
        ip("-n", self.host, "link", "set", uplink.interface, "up")
        ip("-n", self.router, "link", "set", peer, "up")

    def rules(self) -> list[str]:
        """Our rules, as ``ip rule`` prints them."""
        return [" ".join(line.split()) for line in self.ip("-4", "rule").splitlines()
                if line.split(":")[0] in (str(PRIORITY), str(PRIORITY + 1))]

    def table(self, number: int) -> list[str]:
        return [line.strip() for line in self.ip("-4", "route", "show", "table", str(number)).splitlines()]

    def defaults(self) -> list[str]:
        return [line.strip() for line in self.ip("-4", "route", "show", "default").splitlines()]

    def route_get(self, source: str) -> str:
        """Where the kernel would send a packet to FAR from ``source`` (a bound probe)."""
        return self.ip("-4", "route", "get", FAR, "from", source, check=False).strip()


@pytest.fixture
def world() -> Iterator[World]:
    name = f"llt-routes-{os.getpid()}-{next(_counter)}"
    w = World(host=name, router=f"{name}-r")
    try:
        ip("netns", "add", w.host)
        ip("netns", "add", w.router)
        w.ip("link", "set", "lo", "up")
        w.add_uplink(FIBRE)
        w.add_uplink(STAR)
        yield w
    finally:
        for ns in (w.host, w.router):  # deleting a namespace deletes its veth ends too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Backend:
    """The NetlinkRouteBackend running in the host namespace, one call per JSON line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def call(self, op: str, *args: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.send_all(json.dumps({"op": op, "args": list(args)}).encode() + b"\n")
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"backend process died during {op}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        if "error" in answer:
            raise RouteError(answer["error"]) if answer["type"] == "RouteError" else AssertionError(answer)
        return answer["result"]

    async def prepare(self, *uplinks: UplinkRoute) -> None:
        await self.call("prepare", [u.name for u in uplinks])

    async def apply(self, uplink: UplinkRoute) -> None:
        await self.call("apply", uplink.name)

    async def current(self) -> CurrentRoute | None:
        result = await self.call("current")
        return None if result is None else CurrentRoute(**result)

    async def refresh(self, *uplinks: UplinkRoute) -> list[str]:
        return list(await self.call("refresh", [u.name for u in uplinks]))

    async def cleanup(self) -> None:
        await self.call("cleanup")

    async def pending(self) -> dict[str, str]:
        return dict(await self.call("pending"))


@asynccontextmanager
async def backend_in(world: World) -> AsyncIterator[Backend]:
    command = ["ip", "netns", "exec", world.host, sys.executable, __file__, "--serve"]
    process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield Backend(process)
    finally:
        with trio.move_on_after(5, shield=True):
            assert process.stdin is not None
            await process.stdin.aclose()  # EOF: the server exits
            await process.wait()
        process.kill()


# ---------------------------------------------------------------------------- the tests


async def test_prepare_installs_both_tables_and_rules_and_is_idempotent(world: World) -> None:
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            assert world.rules() == ["1000: from 10.71.1.2 lookup 1001", "1001: from 10.71.2.2 lookup 1002"]
            assert "default via 10.71.1.1 dev fibre0 proto static" in world.table(1001)
            assert "default via 10.71.2.1 dev star0 proto static" in world.table(1002)
            assert any(line.startswith("unreachable default") for line in world.table(1002))
            assert await backend.pending() == {}
            # A probe bound to an uplink's address leaves through that uplink, whatever
            # the main table says (here: nothing yet, then the fibre).
            assert "dev star0 table 1002" in world.route_get(STAR.source)
            await backend.apply(FIBRE)
            assert "dev star0 table 1002" in world.route_get(STAR.source)
            assert "dev fibre0 table 1001" in world.route_get(FIBRE.source)

            before = (world.rules(), world.table(1001), world.table(1002))
            await backend.prepare(FIBRE, STAR)
            assert (world.rules(), world.table(1001), world.table(1002)) == before
            assert await backend.refresh(FIBRE, STAR) == []


async def test_a_leftover_rule_at_our_priority_is_replaced(world: World) -> None:
    world.ip("rule", "add", "from", "10.71.9.9", "lookup", "999", "priority", str(PRIORITY))  # an older config's
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            assert world.rules() == ["1000: from 10.71.1.2 lookup 1001", "1001: from 10.71.2.2 lookup 1002"]


async def test_apply_switches_the_default_route_without_ever_removing_it(world: World) -> None:
    with trio.fail_after(20):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            await backend.apply(FIBRE)
            assert world.defaults() == ["default via 10.71.1.1 dev fibre0 proto static"]

            async with watch_default_routes(world) as watch:
                for i in range(50):
                    await backend.apply(STAR if i % 2 == 0 else FIBRE)
                    if i < 2:
                        current = await backend.current()
                        assert route_matches(current, STAR if i % 2 == 0 else FIBRE)
                        assert not route_matches(current, FIBRE if i % 2 == 0 else STAR)
            # The kernel announced every replace and not a single deletion.
            assert not [line for line in watch.monitor if line.startswith("Deleted")], watch.monitor
            assert sum("default via" in line for line in watch.monitor) >= 50, watch.monitor
            # Sampled from another process while the route moved: always exactly one.
            assert len(watch.samples) >= 5
            assert all(len(sample) == 1 for sample in watch.samples), [s for s in watch.samples if len(s) != 1]
            assert {s[0] for s in watch.samples} <= {"default via 10.71.1.1 dev fibre0 proto static",
                                                     "default via 10.71.2.1 dev star0 proto static"}

            assert world.defaults() == ["default via 10.71.1.1 dev fibre0 proto static"]
            assert await backend.current() == CurrentRoute(gateway="10.71.1.1", interface="fibre0", metric=0,
                                                           protocol="static")


async def test_a_default_route_changed_by_someone_else_is_detected_and_put_back(world: World) -> None:
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            await backend.apply(FIBRE)
            assert route_matches(await backend.current(), FIBRE)

            world.ip("route", "replace", "default", "via", "10.71.2.1", "dev", "star0")  # by hand
            current = await backend.current()
            assert current == CurrentRoute(gateway="10.71.2.1", interface="star0", metric=0, protocol="boot")
            assert not route_matches(current, FIBRE)

            await backend.apply(FIBRE)
            assert route_matches(await backend.current(), FIBRE)
            assert world.defaults() == ["default via 10.71.1.1 dev fibre0 proto static"]

            world.ip("route", "del", "default")
            assert await backend.current() is None
            assert not route_matches(None, FIBRE)


async def test_apply_on_a_vanished_interface_names_the_device_and_keeps_the_route(world: World) -> None:
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            await backend.apply(FIBRE)
            world.ip("link", "del", "star0")
            with pytest.raises(RouteError) as caught:
                await backend.apply(STAR)
            message = str(caught.value)
            assert message == "uplink starlink: replace default via 10.71.2.1 dev star0: No such device (ENODEV)"
            assert world.defaults() == ["default via 10.71.1.1 dev fibre0 proto static"]


async def test_cleanup_removes_rules_and_tables_but_leaves_the_default_route(world: World) -> None:
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            await backend.apply(STAR)
            await backend.cleanup()
            assert world.rules() == []
            assert world.table(1001) == []
            assert world.table(1002) == []
            assert world.defaults() == ["default via 10.71.2.1 dev star0 proto static"]
            await backend.cleanup()  # nothing left to do, nothing raised


async def test_refresh_reinstalls_a_deleted_rule_and_table_route(world: World) -> None:
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE, STAR)
            await backend.apply(STAR)
            world.ip("route", "del", "default", "via", "10.71.1.1", "table", "1001")
            # The backstop: fibre's probes are refused (an unreachable route answers
            # EHOSTUNREACH), they do not fall through to the main table and out of starlink.
            assert world.route_get(FIBRE.source) == "RTNETLINK answers: No route to host"
            world.ip("rule", "del", "priority", str(PRIORITY))

            repaired = await backend.refresh(FIBRE, STAR)
            assert repaired == ["fibre: add rule from 10.71.1.2 lookup 1001 priority 1000",
                                "fibre: replace default via 10.71.1.1 dev fibre0 table 1001"]
            assert len(world.rules()) == 2
            assert "default via 10.71.1.1 dev fibre0 proto static" in world.table(1001)
            assert "dev fibre0 table 1001" in world.route_get(FIBRE.source)
            assert await backend.refresh(FIBRE, STAR) == []


async def test_an_interface_missing_at_start_is_reported_and_installed_once_it_appears(world: World) -> None:
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            world.ip("link", "del", "star0")
            await backend.prepare(FIBRE, STAR)  # does not raise: fibre is usable
            pending = await backend.pending()
            assert list(pending) == ["starlink"]
            assert "dev star0 table 1002: No such device (ENODEV)" in pending["starlink"]
            assert "default via 10.71.1.1 dev fibre0 proto static" in world.table(1001)
            assert world.table(1002) == [f"unreachable default proto static metric {0xFFFFFFFF}"]
            assert len(world.rules()) == 2  # starlink's rule is there, backed by the unreachable

            assert await backend.refresh(FIBRE, STAR) == []  # still missing: nothing to repair yet
            world.add_uplink(STAR)
            repaired = await backend.refresh(FIBRE, STAR)
            assert repaired == ["starlink: replace default via 10.71.2.1 dev star0 table 1002"]
            assert await backend.pending() == {}
            assert "dev star0 table 1002" in world.route_get(STAR.source)


async def test_ipv6_uplinks_get_the_same_treatment(world: World) -> None:
    for uplink in (FIBRE6, STAR6):
        # nodad: usable at once instead of after duplicate address detection
        world.ip("addr", "add", f"{uplink.source}/64", "dev", uplink.interface, "nodad")
        ip("-n", world.router, "addr", "add", f"{uplink.gateway}/64", "dev", f"r-{uplink.interface}", "nodad")
    with trio.fail_after(10):
        async with backend_in(world) as backend:
            await backend.prepare(FIBRE6, STAR6)
            rules = [" ".join(line.split()) for line in world.ip("-6", "rule").splitlines()]
            assert "1001: from 2001:db8:2::2 lookup 1002" in rules
            assert "dev star0 table 1002" in world.ip("-6", "route", "get", "2001:db8:99::1", "from", STAR6.source)
            await backend.apply(FIBRE6)
            await backend.apply(STAR6)
            defaults = world.ip("-6", "route", "show", "default").splitlines()
            assert [" ".join(d.split()) for d in defaults] == [
                "default via 2001:db8:2::1 dev star0 proto static metric 1024 pref medium"]
            current = await backend.current()
            assert current == CurrentRoute(gateway="2001:db8:2::1", interface="star0", metric=1024, protocol="static")
            assert route_matches(current, STAR6) and not route_matches(current, FIBRE6)
            await backend.cleanup()
            assert world.ip("-6", "route", "show", "table", "1002").strip() == ""
            assert len(world.ip("-6", "route", "show", "default").splitlines()) == 1


# ---------------------------------------------------------------------------- watching


@dataclass
class Watch:
    monitor: list[str] = dataclasses.field(default_factory=list)
    samples: list[list[str]] = dataclasses.field(default_factory=list)


@asynccontextmanager
async def watch_default_routes(world: World) -> AsyncIterator[Watch]:
    """While the body runs: ``ip monitor route`` records every route event, and a shell
    loop lists the main table's default routes as fast as it can."""
    watch = Watch()
    marker = "192.0.2.99"  # a route in a scratch table tells us the monitor is listening
    monitor = await trio.lowlevel.open_process(["ip", "-n", world.host, "monitor", "route"],
                                               stdout=subprocess.PIPE)
    poller = await trio.lowlevel.open_process(
        ["ip", "netns", "exec", world.host, "sh", "-c",
         "while :; do ip -4 route show default; echo ---; done"], stdout=subprocess.PIPE)
    lines: list[str] = []
    polled = bytearray()

    async def read_monitor(until: str) -> None:
        buffer = b""
        assert monitor.stdout is not None
        while True:
            chunk = await monitor.stdout.receive_some()
            assert chunk, "ip monitor stopped"
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                lines.append(raw.decode())
                if until in lines[-1]:
                    return

    async def read_poller() -> None:
        assert poller.stdout is not None
        while chunk := await poller.stdout.receive_some():
            polled.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_poller)
            world.ip("route", "add", "blackhole", f"{marker}/32", "table", "4242")
            await read_monitor(until=marker)
            lines.clear()
            yield watch
            world.ip("route", "del", "blackhole", f"{marker}/32", "table", "4242")
            await read_monitor(until=marker)
            poller.kill()
            await poller.wait()
    finally:
        for process in (monitor, poller):
            process.kill()
        with trio.move_on_after(2, shield=True):
            await monitor.wait()
            await poller.wait()
    watch.monitor = [line for line in lines if marker not in line]
    # The last chunk may end mid-sample: keep only samples closed by their "---".
    for sample in polled.decode().split("---\n")[:-1]:
        watch.samples.append([line.strip() for line in sample.splitlines() if line.strip()])


# ---------------------------------------------------------------------------- the server


def _serve() -> None:
    """Inside the namespace: one NetlinkRouteBackend, one JSON command per stdin line."""
    from daemon.core import log

    log.setup("debug")
    backend = NetlinkRouteBackend(rule_priority=PRIORITY, metric=None)

    async def handle(op: str, args: list[Any]) -> Any:
        if op == "prepare":
            return await backend.prepare([UPLINKS[n] for n in args[0]])
        if op == "apply":
            return await backend.apply(UPLINKS[args[0]])
        if op == "current":
            current = await backend.current()
            return None if current is None else dataclasses.asdict(current)
        if op == "refresh":
            return await backend.refresh([UPLINKS[n] for n in args[0]])
        if op == "cleanup":
            return await backend.cleanup()
        if op == "pending":
            return backend.pending()
        raise ValueError(f"unknown op {op!r}")

    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"result": trio.run(handle, request["op"], request["args"])}
        except Exception as exc:
            answer = {"error": str(exc), "type": type(exc).__name__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
