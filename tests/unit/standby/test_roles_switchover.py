"""Switchover and pause in the role machine, without I/O: scripted timelines, then the
two-node world of test_roles (never two primaries; the target takes the next epoch)."""

from __future__ import annotations

import pytest
from tests.unit.standby.test_roles import T, World, free, held, kinds, primary_at

from daemon.standby import Position
from daemon.standby.roles import TRANSITIONS, ActionKind, Role, RoleMachine

K = ActionKind


def synced_primary(now: float = 0.0) -> RoleMachine:
    """Primary "a" at epoch 1 whose store confirms "b" synchronous."""
    m = primary_at(now)
    m.standby_sync_changed("b", now + 0.11)
    m.sync_mark_written("b", now + 0.12)
    assert m.sync_confirmed == "b"
    return m


def test_switchover_fences_first_then_releases_for_the_in_sync_standby() -> None:
    m = synced_primary()
    fence_at = m.fence_at
    assert fence_at is not None and fence_at > 0.15
    acts = m.switchover(None, 0.15, store_ok=True)
    assert kinds(acts)[:2] == [K.FENCE, K.DISARM_WATCHDOG] and K.RELEASE not in kinds(acts)
    assert m.role is Role.FENCED and m.fence_at is None  # valid_until stops before the lease is released
    assert m.handover == ("b", 1, fence_at + 2 * T.ttl)
    # The release waits until the last valid_until given to the engine has passed.
    assert m.next_deadline(0.16) <= fence_at
    acts = m.tick(0.16)
    if m.pending == "read":
        acts += m.observed(held("a", 1, ttl=1.0, sync="b"), 0.17)
    assert K.RELEASE not in kinds(acts)
    acts = m.tick(fence_at)
    release = next(a for a in acts if a.kind is K.RELEASE)
    assert release.epoch == 1 and release.node == "b" and "handing the lease over to b" in release.reason
    assert (Role.PRIMARY, Role.FENCED) in TRANSITIONS


def test_switchover_to_the_named_standby() -> None:
    m = synced_primary()
    assert K.FENCE in kinds(m.switchover("b", 0.15, store_ok=True)) and m.handover is not None


@pytest.mark.parametrize("setup, target, store_ok, words", [
    ("standby", None, True, "not primary"),
    ("unsynced", None, True, "no standby is in sync"),
    ("synced", "c", True, "c is not the in-sync standby (b is)"),
    ("synced", None, False, "lease store is unreachable"),
    ("paused", None, True, "paused"),
    ("mark_in_flight", None, True, "no standby is in sync"),
    ("twice", None, True, "fenced, not primary"),
])
def test_switchover_refusals_name_the_reason_and_change_nothing(setup: str, target: str | None, store_ok: bool,
                                                                 words: str) -> None:
    if setup == "standby":
        m = RoleMachine("b", T, now=0.0)
        m.observed(held("a", 1), 0.0)
    elif setup == "unsynced":
        m = primary_at(0.0)
    elif setup == "mark_in_flight":
        m = primary_at(0.0)
        m.standby_sync_changed("b", 0.11)  # SET sent, not confirmed yet
    else:
        m = synced_primary()
        if setup == "paused":
            m.paused(100.0, 0.13)
        if setup == "twice":
            m.switchover(None, 0.13, store_ok=True)
    role, epoch = m.role, m.epoch
    acts = m.switchover(target, 0.15, store_ok=store_ok)
    refused = [a for a in acts if a.kind is K.REFUSE]
    assert len(refused) == 1 and words in refused[0].reason, refused
    assert K.FENCE not in kinds(acts) and K.RELEASE not in kinds(acts)
    assert (m.role, m.epoch) == (role, epoch)


def test_old_primary_does_not_take_its_released_epoch_back_then_follows() -> None:
    m = synced_primary()
    m.switchover(None, 0.15, store_ok=True)
    acts = m.tick(0.15)
    # Reads at once: the lease is free at its own epoch, it was the last holder...
    m.observed(free(1, sync="b", last="a"), 0.17)
    for t in (0.3, 0.6, 1.0, 2.0):
        acts = m.tick(t)
        if m.pending == "read":
            acts = m.observed(free(1, sync="b", last="a"), t)
        assert K.ACQUIRE not in kinds(acts), (t, m.reason)
    assert "handed over to b" in m.reason
    acts = m.observed(held("b", 2, sync=None), 2.1)
    assert m.role is Role.STANDBY and acts[-1].kind is K.FOLLOW and acts[-1].node == "b"
    assert m.handover is None


def test_handover_not_taken_in_time_lets_the_old_primary_take_it_back() -> None:
    m = synced_primary()
    m.switchover(None, 0.15, store_ok=True)
    assert m.handover is not None
    deadline = m.handover[2]
    assert m.next_deadline(2.0) <= deadline
    t, acts = 0.2, []
    while t < deadline + 1.0 and K.ACQUIRE not in kinds(acts):
        acts = m.tick(t)
        if m.pending == "read":
            acts = m.observed(free(1, sync="b", last="a"), t)
        if K.ACQUIRE not in kinds(acts):
            t = m.next_deadline(t) or t + 0.1
    assert K.ACQUIRE in kinds(acts) and t >= deadline
    assert m.handover is None


def test_target_polls_a_lease_that_stopped_being_renewed_near_its_release() -> None:
    b = RoleMachine("b", T, now=0.0, local=Position(1, 50))
    b.journal(Position(1, 50), None, 0.0)
    b.tick(0.0)
    b.observed(held("a", 1, ttl=1.0, sync="b"), 0.0)
    # Renewed normally: the next read is a renew interval away, no extra read.
    assert b.next_deadline(0.0) == pytest.approx(T.renew)
    b.tick(0.5)
    b.observed(held("a", 1, ttl=0.5, sync="b"), 0.5)  # not renewed since: expires at 1.0
    assert b.next_deadline(0.5) == pytest.approx(1.0 - T.safety_margin + 0.01)


def test_target_in_sync_takes_the_released_lease_promptly() -> None:
    b = RoleMachine("b", T, now=0.0, local=Position(1, 50))
    b.journal(Position(1, 50), None, 0.0)
    b.tick(0.0)
    b.observed(held("a", 1, sync="b"), 0.0)
    b.tick(0.5)
    b.observed(free(1, sync="b", last="a"), 0.5)
    acts = b.tick(0.5 + T.fencing_margin)
    assert kinds(acts) == [K.ACQUIRE] and acts[0].epoch == 2


# --------------------------------------------------------------------------- pause


def standby_b(now: float = 0.0) -> RoleMachine:
    m = RoleMachine("b", T, now=now, local=Position(1, 50))
    m.journal(Position(1, 50), None, now)
    m.tick(now)
    m.observed(held("a", 1, ttl=1.0, sync="b"), now)
    return m


def test_paused_standby_does_not_take_an_expired_lease_until_the_pause_ends() -> None:
    m = standby_b()
    m.paused(10.0, 0.1)
    t = 1.2
    for t in (1.2, 2.0, 5.0, 9.9):
        acts = m.tick(t)
        if m.pending == "read":
            acts = m.observed(free(1, sync="b", last="a"), t)
        assert K.ACQUIRE not in kinds(acts)
    assert "paused" in m.reason
    # The pause's expiry is a deadline of its own: the machine wakes for it.
    assert m.next_deadline(9.95) <= 10.0
    acts = m.tick(10.0)
    if m.pending == "read":
        acts = m.observed(free(1, sync="b", last="a"), 10.0)
    acts += m.tick(10.0 + T.fencing_margin)
    assert K.ACQUIRE in kinds(acts) and m.paused_until is None


def test_resume_lifts_the_pause_at_once() -> None:
    m = standby_b()
    m.paused(100.0, 0.1)
    m.tick(1.2)
    m.observed(free(1, sync="b", last="a"), 1.2)
    assert K.ACQUIRE not in kinds(m.tick(1.4))
    acts = m.paused(None, 1.5) + m.tick(1.5)
    assert K.ACQUIRE in kinds(acts)


def test_a_pause_never_stops_a_live_primary_from_renewing() -> None:
    m = primary_at(0.0)
    m.paused(100.0, 0.15)
    assert kinds(m.tick(0.6)) == [K.RENEW]
    m.renewed(1, 0.6, 0.61)
    assert m.role is Role.PRIMARY


def test_operator_override_still_promotes_while_paused() -> None:
    m = standby_b()
    m.paused(100.0, 0.1)
    m.tick(1.2)
    m.observed(free(1, sync="b", last="a"), 1.2)
    acts = m.operator_promote(1.3, accept_loss=True) + m.tick(1.4)
    assert K.ACQUIRE in kinds(acts)


def test_a_pause_already_expired_is_no_pause() -> None:
    m = standby_b()
    m.paused(0.5, 1.0)
    assert m.paused_until is None


# --------------------------------------------------------------------------- two nodes


def run_switchover_world(seed: int) -> World:
    w = World(T, locals_={"a": Position(0, 0), "b": Position(0, 0)}, seed=seed)
    w.run(5.0)
    first = w.primary()
    assert first is not None
    node = w.nodes[first]
    w.t = 5.0
    node_m = node.machine
    assert node_m.sync_confirmed is not None and node_m.fence_at is not None
    w.valid_until = node_m.fence_at  # type: ignore[attr-defined]  # rate 1, offset 0: local == real
    w._apply(node, node_m.switchover(None, node.local(5.0), store_ok=True))
    w.run(12.0)
    return w


@pytest.mark.parametrize("seed", range(5))
def test_world_switchover_moves_the_primary_once_never_two(seed: int) -> None:
    w = run_switchover_world(seed)
    w.assert_safe()
    iv = w.intervals()
    assert len(iv) == 2 and iv[0][2] != iv[1][2] and (iv[0][3], iv[1][3]) == (1, 2)
    pause = iv[1][0] - iv[0][1]
    # The new primary starts only after the old one's last valid_until (its fence
    # deadline at the switchover): no overlap even for an engine that missed FENCE.
    assert iv[1][0] > w.valid_until  # type: ignore[attr-defined]
    # And not much later: the target polls once the holder could have released.
    assert 0 < pause < (T.ttl - T.safety_margin) + T.retry_pause / 2 + T.fencing_margin + 0.05, pause
    assert iv[1][0] - w.valid_until < T.retry_pause / 2 + T.fencing_margin + 0.05  # type: ignore[attr-defined]
    # And back again.
    second = w.primary()
    node = w.nodes[second]
    w.t = 12.0
    w._apply(node, node.machine.switchover(None, node.local(12.0), store_ok=True))
    w.run(20.0)
    w.assert_safe()
    assert len(w.intervals()) == 3 and w.primary() == iv[0][2] and w.store.epoch == 3


# --------------------------------------------------------------------------- winding down


def test_prepare_stops_renewals_so_valid_until_is_no_longer_extended() -> None:
    m = synced_primary()
    fence_at = m.fence_at
    acts = m.switchover_prepare(None, 0.15, store_ok=True)
    assert K.REFUSE not in kinds(acts) and m.winding_down == "b" and m.role is Role.PRIMARY
    # No renewal, and the machine sleeps until the fence deadline (no busy loop).
    assert m.next_deadline(0.7) == fence_at
    assert K.RENEW not in kinds(m.tick(0.7)) and m.fence_at == fence_at
    acts = m.switchover("b", 0.9, store_ok=True)
    assert kinds(acts)[0] is K.FENCE and K.RELEASE not in kinds(acts)
    assert K.RELEASE in kinds(m.tick(fence_at))


def test_deadline_reached_while_winding_down_fences_and_hands_over_at_once() -> None:
    m = synced_primary()
    fence_at = m.fence_at
    m.switchover_prepare(None, 0.15, store_ok=True)
    acts = m.tick(fence_at)
    assert kinds(acts)[0] is K.FENCE and K.RELEASE in kinds(acts)
    assert m.handover is not None and m.handover[0] == "b" and m.winding_down is None


def test_abort_renews_again_and_a_second_prepare_is_refused() -> None:
    m = synced_primary()
    m.switchover_prepare(None, 0.15, store_ok=True)
    again = m.switchover_prepare(None, 0.2, store_ok=True)
    assert [a for a in again if a.kind is K.REFUSE]
    acts = m.switchover_abort("drain failed", 0.7)
    assert K.RENEW in kinds(acts) and m.winding_down is None


def test_prepare_refuses_like_switchover() -> None:
    m = primary_at(0.0)
    acts = m.switchover_prepare(None, 0.15, store_ok=True)
    assert "no standby is in sync" in next(a for a in acts if a.kind is K.REFUSE).reason
    assert m.winding_down is None
