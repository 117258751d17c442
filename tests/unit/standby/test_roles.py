"""The role machine, exactly: scripted timelines, then a discrete-event world of two nodes and a
lease store checked for the safety property (never two primaries at once).

The world: A discrete-event world for the role machine: two (or more) nodes, one lease store,
messages with delays and losses, partitions, crashes, clocks at different rates.

Real time ``t`` drives everything; each node sees ``offset + rate * t`` as its monotonic
clock, the store its own ``store_rate * t``. The store implements the compare-and-set
lease exactly as :mod:`daemon.standby.lease` requires. Every PROMOTE..FENCE (or crash)
of a node is recorded as a primary interval in real time, so tests can assert that no
two intervals overlap.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Callable

from daemon.standby import Position
from daemon.standby.lease import LeaseState
from daemon.standby.roles import TRANSITIONS, Action, ActionKind, Role, RoleMachine, RoleTimings


@dataclass
class Store:
    ttl: float
    rate: float = 1.0
    holder: str | None = None
    epoch: int = 0
    expiry: float = 0.0  # store clock
    sync_node: str | None = None
    last_holder: str | None = None
    grants: list[tuple[float, str, int]] = field(default_factory=list)  # (real t, node, epoch)

    def clock(self, t: float) -> float:
        return self.rate * t

    def live(self, t: float) -> bool:
        return self.holder is not None and self.clock(t) < self.expiry

    def state(self, t: float) -> LeaseState:
        if self.live(t):
            return LeaseState(self.holder, self.epoch, self.expiry - self.clock(t), self.sync_node, self.last_holder)
        return LeaseState(None, self.epoch, 0.0, self.sync_node, self.last_holder)

    def handle(self, t: float, node: str, action: Action) -> tuple[str, object]:
        kind = action.kind
        if kind is ActionKind.READ:
            return "observed", self.state(t)
        if kind is ActionKind.ACQUIRE:
            assert action.epoch is not None
            if not self.live(t) and self.epoch == action.epoch - 1:
                self.holder, self.epoch, self.last_holder = node, action.epoch, node
                self.expiry = self.clock(t) + self.ttl
                self.grants.append((t, node, self.epoch))
                return "acquired", self.epoch
            return "acquire_failed", "conflict"
        if kind is ActionKind.RENEW:
            if self.live(t) and self.holder == node and self.epoch == action.epoch:
                self.expiry = self.clock(t) + self.ttl
                return "renewed", self.epoch
            return "renew_lost", "not the holder"
        if kind is ActionKind.RELEASE:
            if self.live(t) and self.holder == node and self.epoch == action.epoch:
                self.holder = None
            return "none", None
        if kind in (ActionKind.SET_SYNC_MARK, ActionKind.CLEAR_SYNC_MARK):
            if self.live(t) and self.holder == node and self.epoch == action.epoch:
                self.sync_node = action.node
                return "sync_ok", action.node
            return "sync_failed", "not the holder"
        raise AssertionError(kind)


@dataclass
class Node:
    name: str
    machine: RoleMachine
    rate: float = 1.0
    offset: float = 0.0
    crashed_at: float | None = None
    primary_since: float | None = None
    intervals: list[tuple[float, float, int]] = field(default_factory=list)
    wake_version: int = 0
    outstanding: dict[int, tuple[Action, float]] = field(default_factory=dict)  # id -> (action, sent local)
    given_up: dict[int, float] = field(default_factory=dict)  # id -> sent local
    log: list[tuple[float, Action]] = field(default_factory=list)

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def real(self, local: float) -> float:
        return (local - self.offset) / self.rate


LinkDown = Callable[[str, float], bool]  # (node, real t) -> is the node<->store link down


class World:
    def __init__(self, timings: RoleTimings, names: tuple[str, ...] = ("a", "b"), *, store_rate: float = 1.0,
                 rates: dict[str, float] | None = None, offsets: dict[str, float] | None = None,
                 link_down: LinkDown | None = None, delay: Callable[[], float] | None = None,
                 loss: float = 0.0, seed: int = 0, locals_: dict[str, Position] | None = None,
                 peers_known: bool = True, sync_mark_peer: bool = True) -> None:
        self.timings = timings
        self.store = Store(timings.ttl, store_rate)
        self.rng = random.Random(seed)
        self.link_down = link_down or (lambda node, t: False)
        self.delay = delay or (lambda: 0.001)
        self.loss = loss
        self.queue: list[tuple[float, int, str, tuple]] = []
        self.counter = itertools.count()
        self.ids = itertools.count(1)
        self.t = 0.0
        self.sync_mark_peer = sync_mark_peer
        self.nodes: dict[str, Node] = {}
        self.store.epoch = max((p.epoch for p in (locals_ or {}).values()), default=0)
        for name in names:
            rate = (rates or {}).get(name, 1.0)
            offset = (offsets or {}).get(name, 0.0)
            local = (locals_ or {}).get(name, Position(0, 0))
            machine = RoleMachine(name, timings, now=offset, local=local)
            self.nodes[name] = Node(name, machine, rate, offset)
        for name, node in self.nodes.items():
            others = [n for n in names if n != name]
            peer = (locals_ or {}).get(others[0], Position(0, 0)) if peers_known and others else None
            self._apply(node, node.machine.journal(node.machine.local, peer, node.local(0.0)))

    # ---------------------------------------------------------------- plumbing

    def _push(self, t: float, kind: str, payload: tuple) -> None:
        heapq.heappush(self.queue, (t, next(self.counter), kind, payload))

    def _apply(self, node: Node, actions: list[Action]) -> None:
        t = self.t
        for action in actions:
            node.log.append((t, action))
            k = action.kind
            if k is ActionKind.PROMOTE:
                assert node.primary_since is None
                node.primary_since = t
                if self.sync_mark_peer:
                    others = [n for n in self.nodes if n != node.name]
                    self._apply(node, node.machine.standby_sync_changed(others[0] if others else None,
                                                                        node.local(t)))
            elif k is ActionKind.FENCE:
                self._end_primary(node, t)
            elif k in (ActionKind.READ, ActionKind.ACQUIRE, ActionKind.RENEW, ActionKind.RELEASE,
                       ActionKind.SET_SYNC_MARK, ActionKind.CLEAR_SYNC_MARK):
                rid = next(self.ids)
                sent = node.local(t)
                if k is not ActionKind.RELEASE:
                    node.outstanding[rid] = (action, sent)
                    self._push(node.real(sent + self.timings.retry_timeout), "timeout", (node.name, rid))
                if not self._lost(node.name, t):
                    self._push(t + self.delay(), "at_store", (node.name, rid, action))
        self._schedule_wake(node)

    def _lost(self, name: str, t: float) -> bool:
        return self.link_down(name, t) or (self.loss > 0 and self.rng.random() < self.loss)

    def _end_primary(self, node: Node, t: float) -> None:
        if node.primary_since is not None:
            node.intervals.append((node.primary_since, t, node.machine.epoch))
            node.primary_since = None

    def _schedule_wake(self, node: Node) -> None:
        if node.crashed_at is not None:
            return
        deadline = node.machine.next_deadline(node.local(self.t))
        node.wake_version += 1
        if deadline is not None:
            at = max(node.real(deadline), self.t)
            while node.local(at) < deadline:  # float rounding across the clock mapping
                at = math.nextafter(at, math.inf)
            self._push(at, "wake", (node.name, node.wake_version))

    def crash(self, name: str, at: float) -> None:
        self._push(at, "crash", (name,))

    # ---------------------------------------------------------------- the loop

    def run(self, until: float) -> None:
        for node in self.nodes.values():
            self._schedule_wake(node)
        budget = 200_000  # a machine that keeps asking to be woken without progress is a bug
        while self.queue and self.queue[0][0] <= until:
            budget -= 1
            assert budget > 0, f"no progress at t={self.t}: {[(n.name, n.machine.role, n.machine.reason) for n in self.nodes.values()]}"
            t, _, kind, payload = heapq.heappop(self.queue)
            self.t = t
            if kind == "crash":
                node = self.nodes[payload[0]]
                self._end_primary(node, t)
                node.crashed_at = t
                continue
            node = self.nodes[payload[0]]
            if node.crashed_at is not None:
                if kind == "at_store":  # a request already on the wire still arrives
                    self.store.handle(t, node.name, payload[2])
                continue
            now = node.local(t)
            m = node.machine
            if kind == "wake":
                if payload[1] == node.wake_version:
                    self._apply(node, m.tick(now))
            elif kind == "timeout":
                rid = payload[1]
                if rid in node.outstanding:
                    action, sent = node.outstanding.pop(rid)
                    node.given_up[rid] = sent
                    self._apply(node, self._failure(m, action, "timeout", now, lost=False))
            elif kind == "at_store":
                rid, action = payload[1], payload[2]
                answer = self.store.handle(t, node.name, action)
                if answer[0] != "none" and not self._lost(node.name, t):
                    self._push(t + self.delay(), "at_node", (node.name, rid, answer))
            elif kind == "at_node":
                rid, (what, value) = payload[1], payload[2]
                entry = node.outstanding.pop(rid, None)
                if entry is None:
                    # The shell gave up on it; a late grant is still reported (the machine
                    # must release it), anything else is dropped.
                    if what == "acquired":
                        self._apply(node, m.acquired(value, node.given_up[rid], now))  # type: ignore[arg-type]
                    continue
                action, sent = entry
                if what == "observed":
                    self._apply(node, m.observed(value, now))  # type: ignore[arg-type]
                elif what == "acquired":
                    self._apply(node, m.acquired(value, sent, now))  # type: ignore[arg-type]
                elif what == "renewed":
                    self._apply(node, m.renewed(value, sent, now))  # type: ignore[arg-type]
                elif what == "sync_ok":
                    self._apply(node, m.sync_mark_written(value, now))  # type: ignore[arg-type]
                else:
                    self._apply(node, self._failure(m, action, str(value), now, lost=what == "renew_lost"))
        self.t = until
        for node in self.nodes.values():
            if node.crashed_at is None:
                self._end_primary(node, until)

    @staticmethod
    def _failure(m: RoleMachine, action: Action, reason: str, now: float, *, lost: bool) -> list[Action]:
        if action.kind is ActionKind.READ:
            return m.read_failed(reason, now)
        if action.kind is ActionKind.ACQUIRE:
            return m.acquire_failed(reason, now)
        if action.kind is ActionKind.RENEW:
            return m.renew_failed(reason, now, lost=lost)
        return m.sync_mark_written(action.node, now, ok=False, reason=reason)

    # ---------------------------------------------------------------- checks

    def intervals(self) -> list[tuple[float, float, str, int]]:
        return sorted((s, e, n.name, ep) for n in self.nodes.values() for s, e, ep in n.intervals)

    def assert_safe(self) -> None:
        iv = self.intervals()
        for (s1, e1, n1, ep1), (s2, e2, n2, ep2) in zip(iv, iv[1:]):
            assert e1 < s2 or (e1 == s2 == self.t), f"overlap: {n1} primary {s1}..{e1} (epoch {ep1}) and {n2} " \
                                                     f"from {s2} (epoch {ep2})"
            assert ep2 > ep1, f"epoch did not increase: {ep1} then {ep2}"
        for n in self.nodes.values():
            for when, old, new, _why in n.machine.changes:
                assert (old, new) in TRANSITIONS
            epochs = [a.epoch for _, a in n.log if a.kind is ActionKind.PROMOTE]
            assert epochs == sorted(set(epochs)), f"{n.name} promoted twice in one epoch or backwards: {epochs}"

    def primary(self) -> str | None:
        live = [n.name for n in self.nodes.values() if n.crashed_at is None and n.machine.role is Role.PRIMARY]
        assert len(live) <= 1
        return live[0] if live else None


# =========================================================================== tests

import itertools as _it

import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from daemon.standby.roles import RoleError, validate_timings

T = RoleTimings(ttl=1.5, retry_timeout=0.5, safety_margin=0.3, fencing_margin=0.1, watchdog_timeout=1.0)
K = ActionKind


def kinds(actions: list[Action]) -> list[ActionKind]:
    return [a.kind for a in actions]


def free(epoch: int = 0, sync: str | None = None, last: str | None = None) -> LeaseState:
    return LeaseState(None, epoch, 0.0, sync, last)


def held(holder: str, epoch: int, ttl: float = 1.5, sync: str | None = None) -> LeaseState:
    return LeaseState(holder, epoch, ttl, sync, holder)


def primary_at(now: float = 0.0, epoch: int = 1, timings: RoleTimings = T) -> RoleMachine:
    """A machine that just became primary at ``epoch`` by an acquire sent at ``now``."""
    m = RoleMachine("a", timings, now=now, local=Position(epoch - 1, 5))
    m.journal(Position(epoch - 1, 5), Position(epoch - 1, 5), now)
    m.observed(free(epoch - 1), now)
    acts = m.tick(now + timings.fencing_margin)
    assert kinds(acts) == [K.ACQUIRE] and acts[0].epoch == epoch
    acts = m.acquired(epoch, now + timings.fencing_margin, now + timings.fencing_margin)
    assert m.role is Role.PRIMARY
    return m


# --------------------------------------------------------------------------- timings


def test_default_timings_are_valid_and_renew_is_a_third_of_ttl() -> None:
    assert RoleTimings().problems() == []
    assert RoleTimings(ttl=3.0, retry_timeout=1.0).renew == 1.0


def test_patroni_rule_names_the_values_to_change() -> None:
    problems = validate_timings(ttl=1.0, renew_interval=0.5, retry_timeout=0.5, safety_margin=0.2)
    assert problems == ["renew_interval + 2 * retry_timeout must be <= ttl (0.5s + 2 * 0.5s = 1.5s > 1s): raise ttl "
                        "to at least 1.5s, or lower renew_interval or retry_timeout"]


def test_safety_margin_and_watchdog_rules() -> None:
    problems = validate_timings(ttl=3.0, renew_interval=1.0, retry_timeout=1.0, safety_margin=3.0)
    assert any("safety_margin (3s) must be below ttl (3s): lower safety_margin" in p for p in problems)
    problems = validate_timings(ttl=3.0, renew_interval=1.0, retry_timeout=1.0, safety_margin=0.5,
                                watchdog_timeout=2.5)
    assert problems == ["watchdog_timeout (2.5s) must be below ttl - safety_margin (2.5s), or a hung primary could "
                        "outlive its lease: lower watchdog_timeout or raise ttl"]
    problems = validate_timings(ttl=10.0, renew_interval=1.0, retry_timeout=1.0, safety_margin=0.1,
                                max_clock_rate_error=0.01)
    assert len(problems) == 1 and "raise safety_margin" in problems[0] and "0.2s" in problems[0]
    problems = validate_timings(ttl=3.0, renew_interval=2.8, retry_timeout=0.1, safety_margin=0.5)
    assert len(problems) == 1 and "fences itself between two renewals" in problems[0]
    assert validate_timings(ttl=0, renew_interval=1, retry_timeout=1, safety_margin=1) == [
        "ttl must be positive, found 0: raise ttl"]


def test_invalid_timings_refuse_to_build_a_machine() -> None:
    with pytest.raises(ValueError, match="raise ttl"):
        RoleMachine("a", RoleTimings(ttl=1.0, retry_timeout=0.5), now=0.0)


# --------------------------------------------------------------------------- cold start


def test_starts_waiting_and_reads_the_store_first() -> None:
    m = RoleMachine("a", T, now=5.0)
    assert m.role is Role.WAITING
    assert kinds(m.tick(5.0)) == [K.READ]
    assert m.next_deadline(5.0) == 5.5  # the read's timeout


def test_store_unreachable_at_start_stays_waiting_and_says_why() -> None:
    m = RoleMachine("a", T, now=0.0)
    m.tick(0.0)
    acts = m.read_failed("connection refused", 0.01)
    assert m.role is Role.WAITING
    assert acts[0].kind is K.WAIT and "unreachable (connection refused)" in acts[0].reason
    assert "not primary" in m.reason


def test_cold_start_peer_unknown_waits_like_wait_for_all() -> None:
    m = RoleMachine("a", T, now=0.0, local=Position(3, 100))
    m.tick(0.0)
    acts = m.observed(free(3), 0.01)
    assert m.role is Role.WAITING and K.ACQUIRE not in kinds(acts)
    assert "waiting for the peer" in m.reason
    for t in (0.5, 1.0, 5.0, 60.0):
        assert K.ACQUIRE not in kinds(m.tick(t))
        m.observed(free(3), t) if m.pending == "read" else None
    assert m.role is Role.WAITING


def test_cold_start_behind_peer_waits_ahead_peer_takes() -> None:
    behind = RoleMachine("b", T, now=0.0, local=Position(3, 99))
    behind.journal(Position(3, 99), Position(3, 100), 0.0)
    behind.tick(0.0)
    behind.observed(free(3), 0.01)
    assert behind.role is Role.WAITING and "ahead of ours" in behind.reason
    assert K.ACQUIRE not in kinds(behind.tick(1.0))

    ahead = RoleMachine("a", T, now=0.0, local=Position(3, 100))
    ahead.journal(Position(3, 100), Position(3, 99), 0.0)
    ahead.tick(0.0)
    assert kinds(ahead.observed(free(3), 0.01)) == []
    assert ahead.role is Role.STANDBY
    assert ahead.next_deadline(0.01) == pytest.approx(0.11)  # free as observed + fencing margin
    assert kinds(ahead.tick(0.10)) == []
    acts = ahead.tick(0.11)
    assert kinds(acts) == [K.ACQUIRE] and acts[0].epoch == 4 and ahead.role is Role.CANDIDATE


def test_epoch_beats_seq_in_the_journal_comparison() -> None:
    m = RoleMachine("a", T, now=0.0, local=Position(4, 1))
    m.journal(Position(4, 1), Position(3, 1000), 0.0)
    m.tick(0.0)
    m.observed(free(4), 0.0)
    assert kinds(m.tick(0.2)) == [K.ACQUIRE]


# --------------------------------------------------------------------------- primary


def test_acquire_promotes_with_watchdog_armed_first_and_fed() -> None:
    m = RoleMachine("a", T, now=0.0)
    m.journal(Position(0, 0), Position(0, 0), 0.0)
    m.tick(0.0)
    m.observed(free(0), 0.0)
    m.tick(0.1)
    acts = m.acquired(1, 0.1, 0.12)
    assert kinds(acts) == [K.ARM_WATCHDOG, K.PROMOTE, K.FEED_WATCHDOG]
    assert acts[1].epoch == 1 and m.epoch == 1
    assert m.fence_at == pytest.approx(0.1 + 1.5 - 0.3)
    assert m.next_deadline(0.12) == pytest.approx(0.6)  # renew at sent + ttl/3


def test_primary_renews_every_interval_and_feeds_only_after_success() -> None:
    m = primary_at(0.0)  # acquire sent at 0.1
    t = 0.6
    for i in range(5):
        acts = m.tick(t)
        assert kinds(acts) == [K.RENEW] and acts[0].epoch == 1
        assert K.FEED_WATCHDOG not in kinds(acts)
        acts = m.renewed(1, t, t + 0.01)
        assert kinds(acts) == [K.FEED_WATCHDOG]
        assert m.fence_at == pytest.approx(t + 1.2)
        assert m.next_deadline(t + 0.01) == pytest.approx(t + 0.5)
        t += 0.5
    assert m.role is Role.PRIMARY


def test_fence_deadline_counts_from_send_time_not_answer_time() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    m.renewed(1, 0.6, 1.05)  # slow answer
    assert m.fence_at == pytest.approx(0.6 + 1.2)  # not 1.05 + 1.2


def test_slow_renewal_does_not_feed_the_watchdog_past_the_fence() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    acts = m.renewed(1, 0.6, 0.9)  # 0.9 + 1.0 > 0.6 + 1.2
    assert K.FEED_WATCHDOG not in kinds(acts) and "too slow to feed the watchdog" in acts[0].reason


def test_renewal_failures_then_fence_exactly_at_deadline() -> None:
    m = primary_at(0.0)  # fence_at 1.3
    assert kinds(m.tick(0.6)) == [K.RENEW]
    acts = m.renew_failed("timeout", 1.1)
    assert kinds(acts) == [K.WAIT] and "fencing in 0.200s" in acts[0].reason
    assert m.next_deadline(1.1) == pytest.approx(1.1 + 0.125)
    assert kinds(m.tick(1.225)) == [K.RENEW]
    assert m.next_deadline(1.225) == pytest.approx(1.3)
    assert kinds(m.tick(1.2999)) == []
    acts = m.tick(1.3)
    assert kinds(acts) == [K.FENCE, K.DISARM_WATCHDOG, K.READ] and m.role is Role.FENCED
    assert "no successful renewal by the fence deadline" in acts[0].reason
    # The success that was in flight arrives late: ignored, never primary again at epoch 1.
    acts = m.renewed(1, 1.225, 1.31)
    assert m.role is Role.FENCED and K.PROMOTE not in kinds(acts) and K.FEED_WATCHDOG not in kinds(acts)


def test_a_late_success_processed_after_the_deadline_fences_first() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    # No tick at the deadline (the shell was slow); the answer comes at 1.4 > 1.3.
    acts = m.renewed(1, 0.6, 1.4)
    assert kinds(acts)[:2] == [K.FENCE, K.DISARM_WATCHDOG] and m.role is Role.FENCED


def test_renewal_refused_fences_at_once() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    acts = m.renew_failed("not the holder", 0.61, lost=True)
    assert kinds(acts)[:1] == [K.FENCE] and m.role is Role.FENCED


def test_renewal_answered_at_another_epoch_fences() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    assert kinds(m.renewed(2, 0.6, 0.61))[:1] == [K.FENCE]


@pytest.mark.parametrize("lease", [held("b", 2), free(1, last="a"), held("a", 2)])
def test_primary_seeing_another_holder_or_free_lease_fences(lease: LeaseState) -> None:
    m = primary_at(0.0)
    acts = m.observed(lease, 0.3)
    assert kinds(acts)[:1] == [K.FENCE] and m.role is Role.FENCED


def test_watchdog_actions_absent_without_watchdog() -> None:
    t = RoleTimings(ttl=1.5, retry_timeout=0.5, safety_margin=0.3, fencing_margin=0.1)
    m = primary_at(0.0, timings=t)
    m.tick(0.6)
    assert kinds(m.renewed(1, 0.6, 0.61)) == []
    assert kinds(m.tick(2.0)) == [K.FENCE, K.READ]


def test_renew_request_without_answer_counts_as_failed_after_retry_timeout() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    assert m.next_deadline(0.6) == pytest.approx(1.1)
    assert kinds(m.tick(1.1)) == [K.RENEW]  # given up, renewed again at once


# --------------------------------------------------------------------------- fenced


def test_fenced_follows_the_new_holder() -> None:
    m = primary_at(0.0)
    assert kinds(m.tick(1.3))[-1] is K.READ
    assert m.role is Role.FENCED
    acts = m.observed(held("b", 2, sync="a"), 1.31)
    assert m.role is Role.STANDBY
    assert acts[-1].kind is K.FOLLOW and acts[-1].node == "b" and acts[-1].epoch == 2
    # No automatic failback while b's lease is live, however far ahead our journal is.
    m.journal(Position(1, 999), Position(1, 5), 1.4)
    for t in (1.5, 2.0, 2.5):
        acts = m.tick(t)
        if m.pending == "read":
            acts = m.observed(held("b", 2, sync="a"), t)
        assert K.ACQUIRE not in kinds(acts)


def test_fenced_last_holder_retakes_a_free_lease_at_a_new_epoch() -> None:
    m = primary_at(0.0)
    m.tick(1.3)
    m.tick(1.3)
    m.observed(free(1, last="a"), 1.4)
    acts = m.tick(1.5)
    assert kinds(acts) == [K.ACQUIRE] and acts[0].epoch == 2
    assert kinds(m.acquired(2, 1.5, 1.51))[1] is K.PROMOTE and m.epoch == 2


def test_fenced_sees_higher_epoch_then_standby() -> None:
    m = primary_at(0.0)
    m.tick(1.3)
    m.tick(1.3)
    m.observed(free(5, last="b"), 1.4)
    assert m.role is Role.STANDBY or m.role is Role.WAITING
    assert m.highest_epoch == 5


# --------------------------------------------------------------------------- standby


def standby(sync: bool, now: float = 0.0, peer: Position | None = None) -> RoleMachine:
    m = RoleMachine("b", T, now=now, local=Position(1, 50))
    m.journal(Position(1, 50), peer, now)
    m.tick(now)
    m.observed(held("a", 1, ttl=1.0, sync="b" if sync else None), now + 0.01)
    assert m.role is Role.STANDBY
    return m


def test_standby_waits_for_expiry_plus_margin_then_takes_epoch_plus_one() -> None:
    m = standby(sync=True)
    # Reads every renew interval, and again at the observed expiry (0.01 + 1.0) + fencing margin.
    assert m.next_deadline(0.02) == pytest.approx(0.51)
    assert kinds(m.tick(0.51)) == [K.READ]
    m.observed(held("a", 1, ttl=0.2, sync="b"), 0.52)
    # Within safety_margin of the expiry and not renewed: the holder may have released
    # it (a switchover): polled every retry_pause / 2 until the expiry + margin (0.82).
    assert m.next_deadline(0.53) == pytest.approx(0.52 + T.retry_pause / 2)
    acts = m.tick(1.11)
    assert kinds(acts) == [K.READ]
    assert kinds(m.observed(free(1, sync="b", last="a"), 1.12)) == [K.ACQUIRE]  # 1.01 + 0.1 <= 1.12
    assert m.role is Role.CANDIDATE
    acts = m.acquired(2, 1.12, 1.13)
    assert m.role is Role.PRIMARY and acts[1].kind is K.PROMOTE and acts[1].epoch == 2


def test_standby_whose_estimate_was_early_gets_a_conflict_and_reads_again() -> None:
    m = standby(sync=True)
    m.tick(1.11)
    m.observed(free(1, sync="b"), 1.12)
    acts = m.acquire_failed("conflict", 1.13)
    assert m.role is Role.STANDBY
    assert kinds(acts) == [K.READ] or kinds(m.tick(1.13)) == [K.READ]


def test_unsynchronised_standby_never_auto_promotes() -> None:
    m = standby(sync=False)
    t = 1.11
    seen = []
    while t < 120:
        acts = m.tick(t)
        if m.pending == "read":
            acts += m.observed(free(1, sync=None, last="a"), t)
        seen += kinds(acts)
        t += 0.37
    assert K.ACQUIRE not in seen and m.role is Role.WAITING
    assert "operator override" in m.reason


def test_standby_marked_other_node_waits() -> None:
    m = standby(sync=False)
    m.tick(1.11)
    m.observed(free(1, sync="c", last="a"), 1.12)
    assert m.role is Role.WAITING and "not marked synchronous (c is)" in m.reason


def test_operator_override_accepting_loss_promotes() -> None:
    m = standby(sync=False)
    m.tick(1.11)
    m.observed(free(1, last="a"), 1.12)
    assert m.role is Role.WAITING
    assert "must explicitly accept" in m.operator_promote(1.2, accept_loss=False)[0].reason
    acts = m.operator_promote(1.3, accept_loss=True)
    assert acts[-1].kind is K.ACQUIRE and acts[-1].epoch == 2
    assert "operator" in m.changes[-1][3]
    acts = m.acquired(2, 1.3, 1.31)
    assert m.role is Role.PRIMARY and "possible loss accepted" in m.changes[-1][3]


def test_operator_override_never_steals_a_live_lease() -> None:
    m = standby(sync=False)
    acts = m.operator_promote(0.2, accept_loss=True)
    assert "never steals a live lease" in acts[0].reason and not m.override


def test_standby_restarted_while_store_says_it_holds_the_lease_waits_for_expiry() -> None:
    m = RoleMachine("a", T, now=0.0, local=Position(1, 10))
    m.tick(0.0)
    acts = m.observed(held("a", 1, ttl=1.2, sync="b"), 0.01)
    assert m.role is Role.STANDBY and K.ACQUIRE not in kinds(acts)
    assert kinds(m.tick(1.31)) == [K.READ]
    acts = m.observed(free(1, sync="b", last="a"), 1.32)
    assert kinds(acts) == [K.ACQUIRE], "last holder with its journal at that epoch may retake"


def test_acquire_without_answer_goes_back_to_standby() -> None:
    m = standby(sync=True)
    m.tick(1.11)
    m.observed(free(1, sync="b"), 1.12)
    acts = m.tick(1.62)
    assert m.role is Role.STANDBY
    # and a grant arriving after that is released, never used
    acts = m.acquired(2, 1.12, 1.7)
    assert kinds(acts)[0] is K.RELEASE and m.role is not Role.PRIMARY


def test_grant_too_late_to_use_is_released() -> None:
    m = standby(sync=True)
    m.tick(1.11)
    m.observed(free(1, sync="b"), 1.12)
    # The shell reports the grant far too late (retry_timeout not honoured): no promotion.
    m.pending_since = 10.0  # pretend the shell re-sent it
    acts = m.acquired(2, 1.12, 3.0)
    assert m.role is Role.STANDBY and K.RELEASE in kinds(acts) and K.PROMOTE not in kinds(acts)


# --------------------------------------------------------------------------- epochs and time


def test_store_epoch_below_highest_seen_is_refused() -> None:
    m = RoleMachine("a", T, now=0.0, local=Position(7, 3))
    m.journal(Position(7, 3), Position(7, 3), 0.0)
    m.tick(0.0)
    acts = m.observed(free(5), 0.01)
    assert kinds(acts)[0] is K.WAIT and "below 7 already seen" in acts[0].reason
    assert K.ACQUIRE not in kinds(m.tick(1.0) + m.tick(2.0))


def test_stale_grant_is_refused_and_released() -> None:
    m = standby(sync=True)
    m.tick(1.11)
    m.observed(free(1, sync="b"), 1.12)
    m.highest_epoch = 3  # learnt meanwhile (say from the journal)
    acts = m.acquired(2, 1.12, 1.13)
    assert m.role is Role.STANDBY and K.RELEASE in kinds(acts)


def test_time_going_backwards_is_a_shell_bug() -> None:
    m = RoleMachine("a", T, now=10.0)
    with pytest.raises(RoleError, match="time went backwards"):
        m.tick(9.0)


def test_no_wall_clock_anywhere_so_a_jump_cannot_move_a_deadline() -> None:
    import inspect

    import daemon.standby.roles as roles

    source = inspect.getsource(roles)
    assert "import time" not in source and "datetime" not in source


@settings(max_examples=60, deadline=None)
@given(shift=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       script=st.lists(st.sampled_from(["tick", "ok", "fail", "lost", "read"]), max_size=30),
       dts=st.lists(st.floats(min_value=0.0, max_value=0.7), min_size=30, max_size=30))
def test_deadlines_depend_only_on_elapsed_monotonic_time(shift: float, script: list[str], dts: list[float]) -> None:
    """Clock-jump immunity: translating every ``now`` (what a wall-clock jump would do to
    a wrong implementation's arithmetic) changes no action and moves every deadline by
    exactly the translation."""
    shift = round(shift, 3)

    def run(base: float) -> list[tuple[str, float | None]]:
        m = primary_at(base)
        t = base + 0.2
        trace = []
        for step, dt in zip(script, dts):
            t = round(t + dt, 6)
            if step == "tick":
                acts = m.tick(t)
            elif step == "ok" and m.pending == "renew":
                acts = m.renewed(m.epoch, m.pending_since, t)
            elif step == "fail":
                acts = m.renew_failed("x", t)
            elif step == "lost":
                acts = m.renew_failed("x", t, lost=True)
            elif m.pending == "read":
                acts = m.observed(free(m.epoch, last="a"), t)
            else:
                acts = m.tick(t)
            d = m.next_deadline(t)
            # Kinds and epochs, not reason texts: those print times to the millisecond,
            # whose last digit float rounding may flip under a translation.
            trace.append((",".join(f"{a.kind.value}/{a.epoch}/{a.node}" for a in acts), None if d is None else d - base))
        return trace

    plain, shifted = run(0.0), run(shift)
    assert [a for a, _ in plain] == [a for a, _ in shifted]
    # Deadlines agree to float rounding: translating by `shift` changes the last digits
    # of the arithmetic, which is not a clock-jump effect.
    for (_, d0), (_, d1) in zip(plain, shifted):
        assert (d0 is None) == (d1 is None)
        if d0 is not None and d1 is not None:
            assert abs(d0 - d1) < 1e-5


# --------------------------------------------------------------------------- sync mark


def test_primary_clears_the_sync_mark_before_acknowledging_without_its_standby() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    m.renewed(1, 0.6, 0.61)
    acts = m.standby_sync_changed("b", 0.62)
    assert kinds(acts) == [K.SET_SYNC_MARK] and acts[0].node == "b"
    assert kinds(m.sync_mark_written("b", 0.63)) == []
    acts = m.standby_sync_changed(None, 0.8)
    assert kinds(acts) == [K.CLEAR_SYNC_MARK] and not m.async_allowed
    acts = m.sync_mark_written(None, 0.81)
    assert kinds(acts) == [K.ALLOW_ASYNC] and m.async_allowed


def test_failed_sync_mark_write_is_retried_and_async_stays_forbidden() -> None:
    m = primary_at(0.0)
    m.tick(0.6)
    m.renewed(1, 0.6, 0.61)
    m.standby_sync_changed("b", 0.62)
    m.sync_mark_written("b", 0.63)
    m.standby_sync_changed(None, 0.8)
    acts = m.sync_mark_written(None, 0.81, ok=False, reason="timeout")
    assert not m.async_allowed and kinds(acts) == [K.WAIT]
    assert kinds(m.tick(0.81 + 0.125)) == [K.CLEAR_SYNC_MARK]


# --------------------------------------------------------------------------- two nodes and a store


def cluster(**kw) -> World:
    kw.setdefault("locals_", {"a": Position(0, 0), "b": Position(0, 0)})
    return World(T, **kw)


def test_cluster_elects_exactly_one_and_keeps_it() -> None:
    w = cluster()
    w.run(30.0)
    w.assert_safe()
    assert len(w.intervals()) == 1 and w.store.epoch == 1
    assert w.store.sync_node is not None


def test_kill_primary_standby_takes_over_within_two_seconds() -> None:
    w = cluster()
    w.run(5.0)
    first = w.primary()
    assert first is not None
    w.crash(first, 5.0)
    w.run(10.0)
    w.assert_safe()
    second = w.primary()
    assert second is not None and second != first
    start = [s for s, e, n, ep in w.intervals() if n == second][0]
    assert start - 5.0 < 2.0, start


def test_partition_primary_from_store_fence_strictly_before_takeover() -> None:
    """The primary cannot reach the store; the standby can. Scripted at many phases
    relative to the renew schedule."""
    for cut in [5.0 + i * 0.037 for i in range(30)]:
        holder: list[str] = []

        def down(node: str, t: float) -> bool:
            return bool(holder) and node == holder[0] and t >= cut

        w = cluster(link_down=down, delay=lambda: 0.004)
        w.run(cut - 0.5)
        holder.append(w.primary() or "")
        w.run(cut + 6.0)
        w.assert_safe()
        old, new = holder[0], [n for n in w.nodes if n != holder[0]][0]
        fenced = [e for s, e, n, ep in w.intervals() if n == old]
        promoted = [s for s, e, n, ep in w.intervals() if n == new]
        assert fenced and promoted and fenced[0] < promoted[0]
        assert w.nodes[old].machine.role in (Role.FENCED, Role.WAITING, Role.STANDBY)


def test_partition_heals_old_primary_follows_no_failback() -> None:
    holder: list[str] = []
    w = cluster(link_down=lambda n, t: bool(holder) and n == holder[0] and 5.0 <= t < 9.0)
    w.run(4.9)
    holder.append(w.primary() or "")
    w.run(20.0)
    w.assert_safe()
    new = [n for n in w.nodes if n != holder[0]][0]
    assert w.primary() == new
    assert w.nodes[holder[0]].machine.role is Role.STANDBY


@pytest.mark.parametrize("order", list(_it.permutations(["cut", "renew_loss", "standby_read"])))
def test_every_ordering_of_renew_failure_expiry_and_takeover(order: tuple[str, ...]) -> None:
    """Three disturbances in every order, 0.2 s apart: the primary's link to the store is
    cut, the primary's renewal answers are lost (store saw them), the standby reads. The
    store's lease expiry and the standby's takeover follow; fence always comes first."""
    at = {name: 5.0 + 0.2 * i for i, name in enumerate(order)}
    holder: list[str] = []

    def down(node: str, t: float) -> bool:
        return bool(holder) and node == holder[0] and t >= at["cut"]

    w = cluster(link_down=down, delay=lambda: 0.003)
    w.run(4.0)
    holder.append(w.primary() or "")
    standby_name = [n for n in w.nodes if n != holder[0]][0]
    for name in sorted(at, key=at.__getitem__):
        w.run(at[name])
        if name == "renew_loss":
            # Lose every answer to the primary from now on (the store still handles its requests).
            w.link_down = lambda node, t: down(node, t) or (node == holder[0] and t > at["renew_loss"])
        elif name == "standby_read":
            sb = w.nodes[standby_name]
            if sb.machine.pending is None:
                sb.machine.next_read_at = sb.local(w.t)
                w._apply(sb, sb.machine.tick(sb.local(w.t)))
    w.run(15.0)
    w.assert_safe()
    assert w.primary() == standby_name


def test_store_clock_fast_within_bound_is_still_safe() -> None:
    t = RoleTimings(ttl=1.5, retry_timeout=0.5, safety_margin=0.3, fencing_margin=0.0, max_clock_rate_error=0.05)
    for store_rate in (0.95, 1.05):
        for cut in (5.0, 5.11, 5.23, 5.37):
            holder: list[str] = []
            w = World(t, store_rate=store_rate, rates={"a": 0.95, "b": 1.05},
                      link_down=lambda n, tt: bool(holder) and n == holder[0] and tt >= cut,
                      locals_={"a": Position(0, 0), "b": Position(0, 0)})
            w.run(cut - 0.5)
            holder.append(w.primary() or "")
            w.run(cut + 8)
            w.assert_safe()


def test_violating_the_clock_bound_is_what_breaks_safety() -> None:
    """The model check has teeth: a store clock far faster than the margin allows lets
    the lease pass on while the old primary still trades."""
    t = RoleTimings(ttl=1.5, retry_timeout=0.5, safety_margin=0.3, fencing_margin=0.0, max_clock_rate_error=0.05)
    holder: list[str] = []
    w = World(t, store_rate=3.0, link_down=lambda n, tt: bool(holder) and n == holder[0] and tt >= 5.0,
              locals_={"a": Position(0, 0), "b": Position(0, 0)})
    w.run(4.5)
    holder.append(w.primary() or "")
    w.run(12.0)
    with pytest.raises(AssertionError, match="overlap"):
        w.assert_safe()


# --------------------------------------------------------------------------- the safety property


@st.composite
def worlds(draw: st.DrawFn) -> tuple[World, float]:
    err = 0.05
    timings = RoleTimings(ttl=1.5, retry_timeout=0.5, safety_margin=0.3,
                          fencing_margin=draw(st.sampled_from([0.0, 0.1])),
                          watchdog_timeout=draw(st.sampled_from([None, 1.0])), max_clock_rate_error=err)
    rate = st.floats(min_value=1 - err, max_value=1 + err)
    windows = draw(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 30), st.floats(0.05, 6)),
                            max_size=5))
    crashes = draw(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 30)), max_size=1))
    seed = draw(st.integers(0, 2**32 - 1))
    max_delay = draw(st.sampled_from([0.001, 0.05, 0.3, 0.6]))
    rng = __import__("random").Random(seed ^ 0x5EED)
    sync_mark = draw(st.booleans())

    def down(node: str, t: float) -> bool:
        return any(n == node and s <= t < s + d for n, s, d in windows)

    w = World(timings, store_rate=draw(rate), rates={"a": draw(rate), "b": draw(rate)},
              offsets={"a": draw(st.floats(-1e5, 1e5)), "b": draw(st.floats(-1e5, 1e5))},
              link_down=down, delay=lambda: rng.uniform(0, max_delay), loss=draw(st.sampled_from([0, 0.05, 0.3])),
              seed=seed, locals_={"a": Position(2, draw(st.integers(5, 7))), "b": Position(2, 6)},
              sync_mark_peer=sync_mark)
    for name, at in crashes:
        w.crash(name, at)
    return w, 40.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_never_two_primaries_at_once(case: tuple[World, float]) -> None:
    """The core safety property: with random delays, losses, partitions, a crash, and
    clocks (nodes and store) running at rates within the configured bound, no two
    primary intervals overlap in real time, and epochs strictly increase."""
    w, until = case
    w.run(until)
    w.assert_safe()
