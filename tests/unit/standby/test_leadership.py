"""The leadership shell (daemon/standby/leadership.py) under MockClock: two nodes, one
in-memory lease store with the backends' semantics, partitions and crashes injected.

Every test runs in virtual time (``MockClock(autojump_threshold=0)``): sleeps and
timeouts are exact and instant, so "the old primary fenced before the new one was
promoted" is checked on one clock with no slack for scheduling noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from daemon.core.bus import EventBus
from daemon.core.events import LeaseStoreUnreachable, RoleChanged
from daemon.standby import Position
from daemon.standby.leadership import Leadership
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseLost,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
    Member,
)
from daemon.standby.roles import Role, RoleTimings
from recovery.service import DaemonActionRunner
from tests.support.events import drain

TIMINGS = RoleTimings()  # the defaults: ttl 1.5 s, renew 0.5 s, retry 0.5 s, margins 0.3 / 0.1 s


# --------------------------------------------------------------------------- the store


@dataclass
class _Lease:
    holder: str | None = None
    epoch: int = 1  # granted once before (the journals hold epoch-1 records), expired
    expires: float = 0.0
    last_holder: str | None = None
    sync_node: str | None = None
    sync_stamp: tuple[int, int] = (0, 0)
    members: dict[str, Member] = field(default_factory=dict)


class MemoryStore:
    """One lease, the duties of daemon/standby/lease.py, on trio's clock. ``cut`` holds
    the nodes that cannot reach it: their requests hang (the shell's timeout fires)."""

    def __init__(self) -> None:
        self.lease = _Lease()
        self.cut: set[str] = set()
        self.down = False
        #: Requests ("acquire", "set_sync_mark", ...) applied at the store whose answer
        #: is then lost on the way back (the caller times out).
        self.lose_answers: set[str] = set()
        self.grants: list[tuple[float, str, int]] = []

    def view(self, node: str) -> "StoreView":
        return StoreView(self, node)

    def state(self, now: float) -> LeaseState:
        lease = self.lease
        live = lease.holder is not None and lease.expires > now
        return LeaseState(holder=lease.holder if live else None, epoch=lease.epoch,
                          ttl_remaining=max(0.0, lease.expires - now) if live else 0.0,
                          sync_node=lease.sync_node, last_holder=lease.last_holder,
                          members=tuple(lease.members.values()))


class StoreView(LeaseStore):
    def __init__(self, store: MemoryStore, node: str) -> None:
        self.store = store
        self.node = node

    async def _reach(self) -> None:
        await trio.sleep(0.005)  # a round trip
        if self.node in self.store.cut or self.store.down:
            await trio.sleep_forever()

    async def _answer(self, op: str) -> None:
        if op in self.store.lose_answers:
            await trio.sleep_forever()

    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        await self._reach()
        now = trio.current_time()
        state = self.store.state(now)
        if not state.free or state.epoch != expected_epoch:
            raise LeaseConflict(f"held by {state.holder} at {state.epoch}", state)
        lease = self.store.lease
        lease.epoch += 1
        lease.holder = lease.last_holder = node
        lease.expires = now + TIMINGS.ttl
        self.store.grants.append((now, node, lease.epoch))
        await self._answer("acquire")
        return Grant(lease.epoch)

    async def renew(self, node: str, epoch: int) -> Grant:
        await self._reach()
        now = trio.current_time()
        lease = self.store.lease
        if lease.holder != node or lease.epoch != epoch or lease.expires <= now:
            raise LeaseLost(f"{node} does not hold epoch {epoch}")
        lease.expires = now + TIMINGS.ttl
        return Grant(epoch)

    async def read(self) -> LeaseState:
        await self._reach()
        return self.store.state(trio.current_time())

    async def release(self, node: str, epoch: int) -> None:
        await self._reach()
        lease = self.store.lease
        if lease.holder == node and lease.epoch == epoch:
            lease.holder = None
            lease.expires = 0.0

    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None, generation: int = 0) -> None:
        await self._reach()
        lease = self.store.lease
        if lease.holder != node or lease.epoch != epoch or lease.expires <= trio.current_time():
            raise LeaseLost(f"{node} does not hold epoch {epoch}")
        if (epoch, generation) > lease.sync_stamp:
            lease.sync_node, lease.sync_stamp = sync_node, (epoch, generation)
        await self._answer("set_sync_mark")

    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        await self._reach()
        self.store.lease.members[node] = Member(node, position, seen_epoch)


# --------------------------------------------------------------------------- the host


class FakeHost:
    """The standby service's side: a journal position and a log of what it was told."""

    def __init__(self, name: str, position: Position = Position(0, 0)) -> None:
        self.name = name
        self.position = position
        self.calls: list[tuple[float, str, Any]] = []
        self.primary_since: float | None = None
        self.intervals: list[tuple[float, float]] = []

    def journal_position(self) -> Position:
        return self.position

    def become_primary(self, epoch: int) -> None:
        now = trio.current_time()
        self.calls.append((now, "primary", epoch))
        self.primary_since = now

    def fence(self, reason: str) -> None:
        now = trio.current_time()
        self.calls.append((now, "fence", reason))
        self.end_interval(now)

    def end_interval(self, now: float) -> None:
        if self.primary_since is not None:
            self.intervals.append((self.primary_since, now))
            self.primary_since = None

    def follow(self, node: str, epoch: int) -> None:
        self.calls.append((trio.current_time(), "follow", (node, epoch)))

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.calls]


class Node:
    def __init__(self, name: str, store: MemoryStore, position: Position = Position(0, 0), **kwargs: Any) -> None:
        self.host = FakeHost(name, position)
        self.bus = EventBus(1024)
        self.leadership = Leadership(name, kwargs.pop("timings", TIMINGS), store.view(name), self.host,
                                     bus=self.bus, clock_ns=lambda: int(trio.current_time() * 1e9), **kwargs)
        self.scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scope = scope
                await self.leadership.run(task_status=task_status)

        await nursery.start(run)

    def crash(self) -> None:
        """kill -9: the task stops without a word to the store (no release)."""
        assert self.scope is not None
        now = trio.current_time()
        self.host.end_interval(now)
        # A crashed process neither fences nor releases: bypass the shell's exit path.
        self.leadership.machine = None
        self.scope.cancel()

    @property
    def role(self) -> Role:
        assert self.leadership.machine is not None
        return self.leadership.machine.role


async def wait_role(node: Node, role: Role, limit: float = 30.0) -> float:
    start = trio.current_time()
    with trio.fail_after(limit):
        while node.leadership.machine is None or node.role is not role:
            await trio.sleep(0.01)
    return trio.current_time() - start


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


# --------------------------------------------------------------------------- tests


async def test_cold_start_with_equal_journals_makes_exactly_one_primary(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 10))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await trio.sleep(5)
        roles = sorted([a.role, b.role], key=lambda r: r.value)
        assert roles == [Role.PRIMARY, Role.STANDBY]
        primary, standby = (a, b) if a.role is Role.PRIMARY else (b, a)
        assert ("follow", (primary.host.name, 2)) in [(k, v) for _, k, v in standby.host.calls]
        assert len(store.grants) == 1
        nursery.cancel_scope.cancel()


async def test_cold_start_waits_for_the_node_that_is_ahead(autojump_clock: trio.testing.MockClock) -> None:
    """No "first one up wins": the node behind never takes the lease, even alone."""
    store = MemoryStore()
    behind, ahead = Node("behind", store, Position(1, 5)), Node("ahead", store, Position(1, 9))
    async with trio.open_nursery() as nursery:
        await behind.start(nursery)
        await trio.sleep(10)  # alone: its peer's journal is unknown
        assert behind.role is Role.WAITING
        assert "not known to hold every acknowledged record" in behind.leadership.machine.reason
        await ahead.start(nursery)
        await wait_role(ahead, Role.PRIMARY)
        await wait_role(behind, Role.STANDBY)
        assert store.grants == [(store.grants[0][0], "ahead", 2)]
        nursery.cancel_scope.cancel()


async def test_primary_crash_promotes_the_synchronous_standby_within_the_lease_bound(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 9))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        await wait_role(b, Role.STANDBY)
        a.leadership.standby_sync_changed("b")  # replication: b caught up
        await trio.sleep(1)
        assert store.lease.sync_node == "b"
        b.host.position = Position(1, 10)
        crashed_at = trio.current_time()
        a.crash()
        took = await wait_role(b, Role.PRIMARY)
        # The lease outlives the crash by at most ttl; b reads within a renew
        # interval of expiry and waits the fencing margin; plus round trips.
        assert took <= TIMINGS.ttl + TIMINGS.renew + TIMINGS.fencing_margin + 0.1, took
        assert b.leadership.machine.epoch == 3
        assert trio.current_time() - crashed_at < 2.0
        # Each promotion (candidate to primary) is in the histogram: a's at the start, b's now.
        for node in (a, b):
            samples = {s.name: s.value for s in node.leadership.promotion_seconds.collect()[0].samples
                       if not s.name.endswith("_bucket")}
            assert samples["lifeline_promotion_seconds_count"] == 1
            assert 0 <= samples["lifeline_promotion_seconds_sum"] < 2.0
        nursery.cancel_scope.cancel()


async def test_partitioned_primary_fences_before_the_standby_is_promoted(autojump_clock: trio.testing.MockClock) -> None:
    for seed in range(8):
        store = MemoryStore()
        a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 10))
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await trio.sleep(0.1)
            await b.start(nursery)
            await wait_role(a, Role.PRIMARY)
            await wait_role(b, Role.STANDBY)
            a.leadership.standby_sync_changed("b")
            feed_a, feed_b = a.leadership.watch(), b.leadership.watch()
            await trio.sleep(1 + seed * 0.07)  # cut at different phases of the renew cycle
            store.cut.add("a")
            await wait_role(b, Role.PRIMARY)
            assert a.role is Role.FENCED
            # An engine following a's feed stopped before b's said primary.
            last_a = max(m["valid_until"] for m in drain(feed_a) if m["valid_until"] is not None)
            promoted = next(m for m in drain(feed_b) if m["role"] == "primary")
            assert last_a < promoted["monotonic_ns"], (seed, last_a, promoted)
            fenced_at = next(t for t, kind, _ in a.host.calls if kind == "fence")
            promoted_at = next(t for t, kind, _ in b.host.calls if kind == "primary")
            assert fenced_at < promoted_at, (seed, fenced_at, promoted_at)
            assert overlap(a.host.intervals, b.host.intervals + [(promoted_at, math.inf)]) == 0
            # Heal: the old primary follows the new one, never fails back.
            store.cut.clear()
            await wait_role(a, Role.STANDBY)
            await trio.sleep(5)
            assert a.role is Role.STANDBY and b.role is Role.PRIMARY
            assert ("follow", ("b", 3)) in [(k, v) for _, k, v in a.host.calls]
            nursery.cancel_scope.cancel()


async def test_standby_not_marked_synchronous_waits_for_an_operator(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 3))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        await wait_role(b, Role.STANDBY)
        a.crash()  # never marked b synchronous: b may lack acknowledged records
        await trio.sleep(10)
        assert b.role is Role.WAITING
        assert "operator override" in b.leadership.machine.reason
        answer = b.leadership.operator_promote(True)
        assert answer["accepted"] is True
        await wait_role(b, Role.PRIMARY)
        assert b.leadership.machine.epoch == 3
        nursery.cancel_scope.cancel()


async def test_operator_override_never_steals_a_live_lease(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 3))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        await wait_role(b, Role.STANDBY)
        answer = b.leadership.operator_promote(True)
        assert answer["accepted"] is False and "live lease" in answer["reason"]
        await trio.sleep(5)
        assert a.role is Role.PRIMARY and b.role is Role.STANDBY
        nursery.cancel_scope.cancel()


async def test_store_unreachable_at_start_stays_waiting_and_says_why(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.down = True
    a = Node("a", store, Position(1, 10))
    async with trio.open_nursery() as nursery:
        with a.bus.subscribe("test") as sub:
            await a.start(nursery)
            await trio.sleep(5)
            assert a.role is Role.WAITING
            assert "lease store unreachable" in a.leadership.machine.reason
            events = drain(sub)
            unreachable = [e for e in events if isinstance(e, LeaseStoreUnreachable)]
            assert len(unreachable) == 1 and "retry_timeout" in unreachable[0].reason
            assert a.leadership.details()["store_reachable"] is False
        nursery.cancel_scope.cancel()


async def test_sync_mark_is_cleared_before_async_is_allowed(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 10))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await trio.sleep(0.1)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        a.leadership.standby_sync_changed("b")
        await trio.sleep(1)
        assert store.lease.sync_node == "b" and not a.leadership.async_allowed()
        store.cut.add("a")
        a.leadership.standby_sync_changed(None)  # the standby fell behind
        await trio.sleep(0.2)
        assert not a.leadership.async_allowed(), "async allowed while the store still marks b synchronous"
        assert store.lease.sync_node == "b"
        nursery.cancel_scope.cancel()

    store = MemoryStore()
    a = Node("a", store, Position(1, 10))
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        a.leadership.standby_sync_changed("b")
        await trio.sleep(1)
        a.leadership.standby_sync_changed(None)
        with trio.fail_after(1):
            while not a.leadership.async_allowed():
                await trio.sleep(0.01)
        assert store.lease.sync_node is None
        nursery.cancel_scope.cancel()


async def test_role_watch_streams_the_current_role_then_every_change_in_order(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a = Node("a", store, Position(1, 10))
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        channel = a.leadership.watch()
        await wait_role(a, Role.PRIMARY)
        store.cut.add("a")
        await wait_role(a, Role.FENCED)
        seen = []
        while True:
            try:
                seen.append(channel.receive_nowait())
            except trio.WouldBlock:
                break
        assert [m["role"] for m in seen] == ["waiting", "standby", "candidate", "primary", "fenced"]
        stamps = [m["monotonic_ns"] for m in seen]
        assert stamps == sorted(stamps)
        assert seen[3]["epoch"] == 2 and seen[4]["epoch"] == 2
        nursery.cancel_scope.cancel()


async def test_role_changes_are_published_and_hooks_submitted_in_order(autojump_clock: trio.testing.MockClock) -> None:
    class Hooks:
        def __init__(self) -> None:
            self.submitted: list[tuple[str, int, str]] = []

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await trio.sleep_forever()

        def submit(self, role: str, epoch: int, previous: str) -> None:
            self.submitted.append((role, epoch, previous))

    store = MemoryStore()
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    hooks = Hooks()
    a = Node("a", store, Position(1, 10), hooks=hooks)
    async with trio.open_nursery() as nursery:
        with a.bus.subscribe("test", kinds={"RoleChanged"}) as sub:
            await a.start(nursery)
            await wait_role(a, Role.PRIMARY)
            store.cut.add("a")
            await wait_role(a, Role.FENCED)
            events = drain(sub)
        assert [(e.role, e.previous) for e in events] == [
            ("standby", "waiting"), ("candidate", "standby"), ("primary", "candidate"), ("fenced", "primary")]
        assert [h[0] for h in hooks.submitted] == ["standby", "candidate", "primary", "fenced"]
        nursery.cancel_scope.cancel()


class BrokenWatchdog:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def arm(self, timeout_s: int) -> None:
        self.calls.append("arm")
        raise OSError("/dev/watchdog: No such file or directory")

    def keepalive(self) -> None:
        self.calls.append("keepalive")

    def disarm(self) -> None:
        self.calls.append("disarm")


class GoodWatchdog(BrokenWatchdog):
    def arm(self, timeout_s: int) -> None:
        self.calls.append(f"arm {timeout_s}")


WATCHDOG_TIMINGS = RoleTimings(watchdog_timeout=1.0)


async def test_required_watchdog_that_will_not_arm_refuses_primary_and_gives_the_lease_back(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    watchdog = BrokenWatchdog()
    a = Node("a", store, Position(1, 10), timings=WATCHDOG_TIMINGS, watchdog=watchdog, watchdog_required=True)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await trio.sleep(5)
        assert "primary" not in a.host.kinds(), "promoted without a working watchdog"
        assert Role.PRIMARY not in [new for _, _, new, _ in a.leadership.machine.changes], \
            "announced primary without a working watchdog"
        assert a.role is not Role.PRIMARY
        assert "watchdog" in a.leadership.details().get("blocked", "")
        assert store.lease.holder is None  # released at once
        assert watchdog.calls.count("arm") == 1  # blocked: never tries again
        nursery.cancel_scope.cancel()


async def test_watchdog_is_armed_before_promotion_fed_after_renewals_and_disarmed_on_fence(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    watchdog = GoodWatchdog()
    a = Node("a", store, Position(1, 10), timings=WATCHDOG_TIMINGS, watchdog=watchdog, watchdog_required=True)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        await trio.sleep(2)
        assert watchdog.calls[0] == "arm 1"
        feeds = watchdog.calls.count("keepalive")
        assert 4 <= feeds <= 6  # one per renewal (every 0.5 s) plus the one at promotion
        store.cut.add("a")
        await wait_role(a, Role.FENCED)
        assert watchdog.calls[-1] == "disarm"
        assert watchdog.calls.count("keepalive") == feeds  # no renewal, no feed
        nursery.cancel_scope.cancel()


async def test_wall_clock_jumps_change_nothing(autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 10))
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await trio.sleep(0.1)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        for jump in (3600.0, -7200.0, 86400.0):
            offset[0] += jump
            await trio.sleep(3)
            assert a.role is Role.PRIMARY and b.role is Role.STANDBY
        assert len(store.grants) == 1
        nursery.cancel_scope.cancel()


async def test_clean_stop_of_the_primary_fences_and_releases_so_the_peer_takes_over_at_once(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 10))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await trio.sleep(0.1)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        await wait_role(b, Role.STANDBY)
        a.leadership.standby_sync_changed("b")
        await trio.sleep(1)
        assert a.scope is not None
        a.scope.cancel()  # SIGTERM: the shell's exit path runs
        await trio.sleep(0.05)
        assert a.host.kinds()[-1] == "fence"
        assert store.lease.holder is None
        took = await wait_role(b, Role.PRIMARY)
        assert took < TIMINGS.renew + TIMINGS.fencing_margin + 0.1
        nursery.cancel_scope.cancel()



# --------------------------------------------------------------------------- lost answers (review findings)


async def test_a_sync_mark_whose_answer_is_lost_still_blocks_acknowledging_alone(
        autojump_clock: trio.testing.MockClock) -> None:
    """SET reaches the store, its answer never comes back, and the standby falls out
    of sync: the store marks it synchronous, so the primary must clear that (and hear
    the clear confirmed) before it acknowledges anything alone."""
    store = MemoryStore()
    a = Node("a", store, Position(1, 10))
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        store.lose_answers.add("set_sync_mark")
        a.leadership.standby_sync_changed("b")
        await trio.sleep(0.1)
        assert store.lease.sync_node == "b"  # applied, unconfirmed
        a.leadership.standby_sync_changed(None)
        for _ in range(30):
            await trio.sleep(0.1)
            assert not (a.leadership.async_allowed() and store.lease.sync_node == "b"), \
                "acknowledging alone while the store marks b synchronous"
        store.lose_answers.clear()
        with trio.fail_after(2):
            while not a.leadership.async_allowed():
                await trio.sleep(0.01)
        assert store.lease.sync_node is None
        nursery.cancel_scope.cancel()


async def test_a_grant_whose_answer_was_lost_is_still_ours_once_it_expires(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.lease.sync_node = "b"
    b = Node("b", store, Position(1, 10))
    async with trio.open_nursery() as nursery:
        store.lose_answers.add("acquire")
        await b.start(nursery)
        with trio.fail_after(3):
            while not store.grants:
                await trio.sleep(0.01)
        store.lose_answers.clear()
        store.lease.sync_node = None  # a store that clears the mark on grants (the old witness did)
        took = await wait_role(b, Role.PRIMARY, 10)
        assert took < 5 and b.leadership.machine.epoch == 3
        reasons = [why for _, _, new, why in b.leadership.machine.changes if new is Role.CANDIDATE]
        assert "was ours" in reasons[-1], reasons
        nursery.cancel_scope.cancel()


async def test_a_new_primary_clears_a_stale_mark_before_acknowledging_alone(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.lease.sync_node = "b"  # b was in sync with the previous primary, and is gone now
    a = Node("a", store, Position(1, 10))
    store.lease.last_holder = "a"
    store.lose_answers.add("set_sync_mark")  # the clear is applied, its answer lost
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        for _ in range(20):
            await trio.sleep(0.1)
            assert not a.leadership.async_allowed(), "acknowledging alone before the clear was confirmed"
        store.lose_answers.clear()
        with trio.fail_after(1):
            while not a.leadership.async_allowed():
                await trio.sleep(0.01)
        assert store.lease.sync_node is None
        nursery.cancel_scope.cancel()


async def test_past_the_fence_deadline_the_node_may_not_trade_even_before_its_loop_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    a = Node("a", store, Position(1, 10))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        assert a.leadership.may_trade()
        machine = a.leadership.machine
        assert machine is not None and machine.fence_at is not None
        # As after a freeze: the deadline has passed, the loop has not run yet.
        machine.fence_at = trio.current_time()
        assert machine.role is Role.PRIMARY
        assert not a.leadership.may_trade() and not a.leadership.async_allowed()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the trading deadline (valid_until)

TRADE_WINDOW_NS = round((TIMINGS.ttl - TIMINGS.safety_margin) * 1e9)


def node_alone() -> tuple[MemoryStore, Node]:
    """Node a, whose peer b reported an equal journal: a takes the lease on its own."""
    store = MemoryStore()
    store.lease.members["b"] = Member("b", Position(1, 10), 1)
    return store, Node("a", store, Position(1, 10))


def ns_now() -> int:
    return int(trio.current_time() * 1e9)  # the Node's clock_ns: CLOCK_MONOTONIC in these tests


async def test_each_renewal_extends_valid_until_on_the_feed(autojump_clock: trio.testing.MockClock) -> None:
    store, a = node_alone()
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        channel = a.leadership.watch()
        await wait_role(a, Role.PRIMARY)
        await trio.sleep(2.6)  # five renewals at the default 0.5 s
        seen = drain(channel)
        first = seen[0]
        assert first["role"] == "waiting" and first["valid_until"] is None and first["valid_for"] is None
        became = next(i for i, m in enumerate(seen) if m["role"] == "primary")
        promoted = seen[became]
        assert promoted["renewal"] is False and promoted["valid_until"] is not None
        renewals = seen[became + 1:]
        assert len(renewals) == 5, renewals
        for message in renewals:
            assert message["role"] == "primary" and message["renewal"] is True
            assert message["reason"] == "lease renewed" and message["epoch"] == promoted["epoch"]
            assert {"node", "previous", "monotonic_ns", "valid_for"} <= message.keys()
            # Never more than ttl - safety_margin ahead of when it was made (the
            # renewal was sent before that).
            assert 0 < message["valid_until"] - message["monotonic_ns"] <= TRADE_WINDOW_NS
            assert message["valid_for"] == round((message["valid_until"] - message["monotonic_ns"]) / 1e9, 3)
        deadlines = [m["valid_until"] for m in [promoted, *renewals]]
        assert deadlines == sorted(deadlines) and len(set(deadlines)) == len(deadlines)
        # Each renewal moves it by one renew interval (sent every 0.5 s, exactly, here).
        steps = {round((b - a_) / 1e6) for a_, b in zip(deadlines, deadlines[1:])}
        assert steps == {round(TIMINGS.renew * 1e3)}, steps
        # role.status says the same as the feed's last message.
        status = a.leadership.details()
        assert status["valid_until"] == renewals[-1]["valid_until"]
        assert status["valid_for"] == round((status["valid_until"] - status["monotonic_ns"]) / 1e9, 3)
        nursery.cancel_scope.cancel()


async def test_valid_until_is_the_deadline_the_append_path_enforces(autojump_clock: trio.testing.MockClock) -> None:
    store, a = node_alone()
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        channel = a.leadership.watch()
        await wait_role(a, Role.PRIMARY)
        await trio.sleep(1.1)
        store.cut.add("a")  # no renewal succeeds from here on
        machine = a.leadership.machine
        assert machine is not None and machine.fence_at is not None
        last = drain(channel)[-1]
        until = last["valid_until"]
        # The machine's fence deadline on the monotonic clock, never a ns later.
        assert int(machine.fence_at * 1e9) - 1 <= until <= machine.fence_at * 1e9
        await trio.sleep((until - ns_now() - 1000) / 1e9)  # 1 µs before it
        assert a.leadership.may_trade() and a.leadership.valid_until_ns() == until
        assert a.role is Role.PRIMARY
        await trio.sleep(2e-6)  # 1 µs after it
        assert not a.leadership.may_trade()
        assert a.leadership.valid_until_ns() is None
        assert a.leadership.current()["valid_until"] is None
        nursery.cancel_scope.cancel()


async def test_a_primary_that_cannot_renew_publishes_no_deadline_past_its_fence(autojump_clock: trio.testing.MockClock) -> None:
    for seed in range(6):
        store, a = node_alone()
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            channel = a.leadership.watch()
            await wait_role(a, Role.PRIMARY)
            await trio.sleep(1 + seed * 0.09)  # cut at different phases of the renew cycle
            store.cut.add("a")
            cut_ns = ns_now()
            await wait_role(a, Role.FENCED)
            fenced_ns = round(next(t for t, kind, _ in a.host.calls if kind == "fence") * 1e9)
            await trio.sleep(3)
            seen = drain(channel)
            deadlines = [m["valid_until"] for m in seen if m["valid_until"] is not None]
            assert deadlines and max(deadlines) <= fenced_ns, (seed, deadlines, fenced_ns)
            # The last deadline published is that of the last renewal sent before the cut.
            assert max(deadlines) <= cut_ns + TRADE_WINDOW_NS
            fenced_at = next(i for i, m in enumerate(seen) if m["role"] == "fenced")
            assert all(m["role"] == "primary" for m in seen[fenced_at - 1:fenced_at])
            after = seen[fenced_at:]
            assert after[0]["renewal"] is False and after[0]["monotonic_ns"] >= fenced_ns - 1
            assert all(m["valid_until"] is None and m["valid_for"] is None for m in after), after
            assert a.leadership.current()["valid_until"] is None
            assert a.leadership.details()["valid_for"] is None
            nursery.cancel_scope.cancel()


async def test_a_frozen_primary_reports_no_deadline_once_it_passed(autojump_clock: trio.testing.MockClock) -> None:
    """SIGSTOP, then SIGCONT: before the loop has run, neither role.status nor a new
    subscriber's first message says the node may trade."""
    store, a = node_alone()
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        assert a.leadership.current()["valid_for"] is not None
        autojump_clock.jump(4.5)  # time passes, no task runs
        assert a.role is Role.PRIMARY
        first = a.leadership.watch().receive_nowait()
        assert first["role"] == "primary" and first["valid_until"] is None and first["valid_for"] is None
        assert a.leadership.details()["valid_until"] is None
        assert not a.leadership.may_trade()
        nursery.cancel_scope.cancel()


async def test_a_subscriber_that_stops_reading_is_cut_off_while_others_follow_every_renewal(autojump_clock: trio.testing.MockClock) -> None:
    from daemon.standby.leadership import WATCH_BUFFER

    store, a = node_alone()
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        slow, fast = a.leadership.watch(), a.leadership.watch()
        got: list[dict[str, Any]] = []
        for _ in range(WATCH_BUFFER + 20):
            await trio.sleep(TIMINGS.renew)
            got += drain(fast)
        assert len(got) >= WATCH_BUFFER + 19 and all(m["role"] == "primary" for m in got)
        assert a.leadership.details()["watchers"] == 1  # the slow one was cut off
        buffered = []
        with pytest.raises(trio.EndOfChannel):
            while True:
                buffered.append(slow.receive_nowait())
        assert len(buffered) == WATCH_BUFFER
        # What it still holds is stale, and says so by itself: every deadline has passed.
        assert all(m["valid_until"] < ns_now() for m in buffered[1:])
        nursery.cancel_scope.cancel()


async def test_the_primary_shows_the_lease_it_holds_not_the_last_one_it_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    a, b = Node("a", store, Position(1, 10)), Node("b", store, Position(1, 9))
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        await wait_role(a, Role.PRIMARY)
        await wait_role(b, Role.STANDBY)
        await trio.sleep(TIMINGS.ttl * 3)  # renewals, no reads
        lease = a.leadership.details()["lease"]
        assert (lease["holder"], lease["epoch"]) == ("a", a.leadership.machine.epoch)
        assert a.leadership.machine.epoch >= 1
        assert 0 < lease["ttl_remaining"] <= TIMINGS.ttl
        # The standby shows what it reads: a holding the same epoch.
        seen = b.leadership.details()["lease"]
        assert (seen["holder"], seen["epoch"]) == ("a", a.leadership.machine.epoch)
        nursery.cancel_scope.cancel()


async def test_a_playbooks_demote_blocks_the_primary_until_its_promote(autojump_clock: trio.testing.MockClock) -> None:
    """recovery's standby.demote / standby.promote through Leadership.refuse_primary /
    allow_primary (the seam daemon/app.py hands the playbook runner)."""
    store, a = node_alone()
    runner = DaemonActionRunner(a.bus, standby=SimpleNamespace(leadership=a.leadership, role="primary", halted=None))
    runner.playbook = "drill"
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await wait_role(a, Role.PRIMARY)
        said = await runner.run("standby.demote", {}, dry_run=False)
        assert said.startswith("demoted: ") and a.role is not Role.PRIMARY
        assert a.leadership.machine is not None and a.leadership.machine.blocked == "demoted by playbook drill"
        await trio.sleep(10)
        assert a.role is not Role.PRIMARY
        assert await runner.run("standby.promote", {}, dry_run=False) == \
            "block lifted; this node takes the lease by the usual rules"
        assert a.leadership.machine.blocked is None
        await wait_role(a, Role.PRIMARY)
        nursery.cancel_scope.cancel()
