"""Leadership.switchover and set_pause under MockClock: the shell's timing, exactly.

Two nodes and the in-memory store of test_leadership.py; the host additionally holds
appends and reports the drain. Checked on one virtual clock: renewals stop, appends
are held only shortly before the fence deadline, the old primary's last valid_until
ends before the target is primary, and the target holds the next epoch.
"""

from __future__ import annotations

import trio
import trio.testing
from tests.unit.standby.test_leadership import TIMINGS, FakeHost, MemoryStore, Node, wait_role

from daemon.standby import Position
from daemon.standby.roles import Role


class SwitchHost(FakeHost):
    def __init__(self, name: str, position: Position) -> None:
        super().__init__(name, position)
        self.holds: list[tuple[float, str | None]] = []
        self.drain_ok = True

    def hold_appends(self, reason: str | None) -> None:
        self.holds.append((trio.current_time(), reason))

    async def drained(self, timeout: float) -> bool:
        await trio.sleep(0.002)
        return self.drain_ok


def pair(store: MemoryStore) -> tuple[Node, Node]:
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 9))
    for node in (a, b):
        node.host = SwitchHost(node.host.name, node.host.position)
        node.leadership.host = node.host
    return a, b


async def settle(a: Node, b: Node) -> None:
    await wait_role(a, Role.PRIMARY)
    await wait_role(b, Role.STANDBY)
    a.leadership.standby_sync_changed("b")
    with trio.fail_after(5):
        while a.leadership.machine.sync_confirmed != "b":
            await trio.sleep(0.01)
    await trio.sleep(2.0)


async def test_switchover_hands_over_after_the_last_valid_until_with_a_short_hold(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = pair(store)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await settle(a, b)
        epoch = a.leadership.machine.epoch
        valid_until_ns = a.leadership.valid_until_ns()
        assert valid_until_ns is not None
        started = trio.current_time()
        result = await a.leadership.switchover(None, by="test")
        assert result["ok"] and result["to"] == "b" and result["epoch"] == epoch + 1, result
        # Renewals stopped at once: the deadline given before the call is the last one.
        grant_time = next(t for t, node, e in store.grants if node == "b" and e == epoch + 1)
        assert grant_time * 1e9 > valid_until_ns
        assert grant_time - valid_until_ns / 1e9 < TIMINGS.retry_pause / 2 + TIMINGS.fencing_margin + 0.05
        # Appends were held only from 0.1 s before that deadline, then released.
        (held_at, reason), (freed_at, none) = a.host.holds
        assert reason == "switching over to b" and none is None
        assert valid_until_ns / 1e9 - held_at <= 0.1 + 1e-6 and held_at >= started
        await wait_role(b, Role.PRIMARY)
        await wait_role(a, Role.STANDBY)
        assert ("follow", ("b", epoch + 1)) in [(k, v) for _, k, v in a.host.calls]
        assert len(store.grants) == 2
        nursery.cancel_scope.cancel()


async def test_switchover_refusal_changes_nothing_and_pause_blocks_it(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = pair(store)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await settle(a, b)
        refused = await b.leadership.switchover(None)
        assert not refused["ok"] and "not primary" in refused["reason"]
        result = await a.leadership.set_pause(3600, "test")  # this store cannot hold a pause
        assert not result["ok"] and "did not take it" in result["reason"]
        a.leadership.machine.paused(trio.current_time() + 60, trio.current_time())
        refused = await a.leadership.switchover("b")
        assert not refused["ok"] and "paused" in refused["reason"]
        await trio.sleep(2.0)
        assert a.role is Role.PRIMARY and a.host.holds == [] and len(store.grants) == 1
        nursery.cancel_scope.cancel()
