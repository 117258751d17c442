"""The trio shell around the role machine: lease requests, timers, and what a role means.

:class:`~daemon.standby.roles.RoleMachine` decides; this module carries its decisions
out and feeds it the answers. One loop sleeps until the machine's next deadline or
until an answer arrives; each store request runs in its own task, bounded by
``retry_timeout``, and reports back with the monotonic time it was *sent* (the
primary's fence deadline counts from there: the store starts its ttl later).

What each action does here:

* ``PROMOTE``  the standby service stops following, starts serving replication and
  accepts appends stamped with the lease's epoch; ``FENCE`` refuses appends at once
  (synchronously, before anything else runs) and stops serving.
* ``FOLLOW``   replicate from the peer, refusing a primary older than the lease's epoch.
* ``ARM/FEED/DISARM_WATCHDOG``  the hardware watchdog; with ``watchdog = "required"`` a
  watchdog that will not arm makes this node give the lease back and never take it.
* role changes → ``RoleChanged`` on the bus, one log line, the exec hooks (in order),
  and every ``role.watch`` subscriber (the engine), in order, with ``monotonic_ns``.

The trading deadline (``valid_until``): a primary may trade until its fence deadline,
the send time of its last successful renewal (or acquire) + ``ttl - safety_margin``.
The shell keeps it on the host's CLOCK_MONOTONIC in integer ns (``time.monotonic_ns()``,
the clock every process on the host shares; trio's clock has a random offset): each
request is stamped on both clocks when it is sent, the monotonic stamp read *first*, so
the converted deadline is never later than the role machine's. ``may_trade()`` (checked
on every append) enforces both, so the deadline the feed publishes is exactly the one
the journal enforces. Every role.watch message and ``role.status`` carry ``valid_until``
(int ns) and ``valid_for`` (s, remaining when the message was made), both ``null`` when
the node may not trade; each successful renewal publishes one more message (same role,
``"renewal": true``) with the extended deadline. An engine that trades only while the
role is ``primary`` *and* CLOCK_MONOTONIC is before ``valid_until`` stops on its own
when its daemon hangs, before the lease can pass on.

Journal positions: while not primary the node reports its journal's last (epoch, seq)
to the store with the epoch it has seen (the cold-start rule compares them), and feeds
the machine its own position and the peer's report when it still speaks for the
peer's journal (reported at the current epoch).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol

import trio

from daemon.core.bus import EventBus
from daemon.core.events import LeaseStoreReachable, LeaseStoreUnreachable, OperatorPromotion, RoleChanged
from daemon.core.log import get_logger
from daemon.core.service import histogram
from daemon.standby import Position
from daemon.standby.hooks import HookRunner
from daemon.standby.lease import LeaseConflict, LeaseError, LeaseLost, LeaseState, LeaseStore
from daemon.standby.roles import Action, ActionKind, Role, RoleMachine, RoleTimings

log = get_logger("leadership")

#: The daemon side of the contract is in place (the lab's drills look for this line).
LEADERSHIP_READY = True

#: A role.watch subscriber that falls this far behind is disconnected (it re-subscribes
#: and gets the current role first): an engine must never act on a stale role. With a
#: renewal message every ``renew_interval`` (0.5 s at the defaults) that is ~2 minutes of
#: unread feed; a message read late is harmless meanwhile, its ``valid_until`` passes.
WATCH_BUFFER = 256

#: How often a node that is not primary re-sends its journal position at the latest
#: (a restarted witness has forgotten it).
REPORT_REFRESH = 2.0


class RoleHost(Protocol):
    """What a role means for this host: the standby service implements it."""

    def journal_position(self) -> Position: ...

    def become_primary(self, epoch: int) -> None: ...

    def fence(self, reason: str) -> None: ...

    def follow(self, node: str, epoch: int) -> None: ...

    # Switchover.
    def hold_appends(self, reason: str | None) -> None: ...

    async def drained(self, timeout: float) -> bool: ...


class Watchdog(Protocol):
    def arm(self, timeout_s: int) -> None: ...

    def keepalive(self) -> None: ...

    def disarm(self) -> None: ...


class Leadership:
    """Runs the role machine of this node against a lease store."""

    name = "leadership"

    def __init__(self, node: str, timings: RoleTimings, store: LeaseStore, host: RoleHost, *,
                 bus: EventBus | None = None, watchdog: Watchdog | None = None,
                 watchdog_required: bool = False, hooks: HookRunner | None = None, store_name: str = "lease store",
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.node = node
        self.timings = timings
        self.store = store
        self.host = host
        self.bus = bus
        self.watchdog = watchdog
        self.watchdog_required = watchdog_required
        self.hooks = hooks
        self.store_name = store_name
        self.clock_ns = clock_ns
        self.machine: RoleMachine | None = None
        self.lease: LeaseState | None = None
        self.store_reachable: bool | None = None
        self.store_error: str | None = None
        self.role_changes = 0
        self.promotion_seconds = histogram(
            "lifeline_promotion_seconds",
            "From deciding to take the lease (candidate) to serving as primary, each promotion.", "promotion")
        self._candidate_since: float | None = None
        self._published = 0  # machine.changes already published
        self._watchers: list[trio.MemorySendChannel[dict[str, Any]]] = []
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._fed: tuple[Position, Position | None] | None = None
        self._last_report: tuple[Position, int, float] | None = None
        self._last_wait = ""
        self._armed = False
        #: The fence deadline on CLOCK_MONOTONIC (ns), None while not primary; and the
        #: role machine's fence_at (trio seconds) it was converted from.
        self._valid_until_ns: int | None = None
        self._fence_at_seen: float | None = None
        self.renewals_published = 0
        #: Maintenance pause as last read or set: (until, trio time; who), None: not paused.
        self._pause: tuple[float, str] | None = None
        self._pause_read_at = -math.inf
        self.switchovers = 0
        self.last_switchover: dict[str, Any] | None = None

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = trio.current_time()
        self.machine = RoleMachine(self.node, self.timings, now=now, local=self.host.journal_position())
        log.info("leadership.starting", node=self.node, store=self.store_name, ttl=self.timings.ttl,
                 renew=self.timings.renew, safety_margin=self.timings.safety_margin,
                 local_epoch=self.machine.local.epoch, local_seq=self.machine.local.seq)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.hooks is not None:
                    await nursery.start(self.hooks.run)
                nursery.start_soon(self._reporter)
                task_status.started()
                while True:
                    now = trio.current_time()
                    self._feed_journal(now, wake=False)
                    self._apply(self.machine.tick(now), wake=False)
                    deadline = self.machine.next_deadline(trio.current_time())
                    with trio.move_on_at(deadline if deadline is not None else math.inf):
                        await self._wakeup.wait()
                    self._wakeup = trio.Event()
        finally:
            epoch = self._stop_on_exit()
            if epoch is not None:
                with trio.move_on_after(self.timings.retry_timeout, shield=True):
                    try:
                        await self.store.release(self.node, epoch)
                        log.info("lease.released", node=self.node, epoch=epoch, reason="the daemon is stopping")
                    except LeaseError as exc:
                        log.warning("lease.release_failed", node=self.node, epoch=epoch, error=str(exc))

    def _stop_on_exit(self) -> int | None:
        """The daemon is stopping: a primary stops trading and gives its lease back at
        once (best effort), so the peer need not wait for it to expire."""
        machine = self.machine
        for channel in self._watchers:
            channel.close()
        if machine is None or machine.role is not Role.PRIMARY:
            return None
        epoch = machine.epoch
        self._valid_until_ns = None
        self.host.fence("the daemon is stopping")
        if self.watchdog is not None:
            try:
                self.watchdog.disarm()
            except Exception as exc:  # never block the shutdown on it
                log.warning("watchdog.disarm_failed", error=str(exc))
        log.warning("leadership.stopping_as_primary", node=self.node, epoch=epoch,
                    detail="fenced; the lease is released if the store answers in time")
        self._publish_change(Role.PRIMARY, Role.FENCED, epoch, "the daemon is stopping", self.clock_ns())
        return epoch

    def wake(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: list[Action], *, wake: bool = True,
               sent: tuple[float, int] | None = None) -> None:
        """Carry out the machine's actions in order; publish role changes. ``wake``:
        have the loop recompute its deadline (every caller but the loop itself).
        ``sent``: (trio time, monotonic ns) the answered request was sent at."""
        machine = self.machine
        assert machine is not None
        before_ns = self.clock_ns()
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            kind = action.kind
            if kind is ActionKind.FENCE:
                self.host.fence(action.reason)
                log.warning("role.fence", node=self.node, epoch=action.epoch, reason=action.reason)
            elif kind is ActionKind.PROMOTE:
                assert action.epoch is not None
                self.host.become_primary(action.epoch)
                log.info("role.promote", node=self.node, epoch=action.epoch, reason=action.reason)
            elif kind is ActionKind.FOLLOW:
                assert action.node is not None and action.epoch is not None
                self.host.follow(action.node, action.epoch)
                log.info("role.follow", node=self.node, primary=action.node, epoch=action.epoch)
            elif kind is ActionKind.ARM_WATCHDOG:
                refused = self._arm_watchdog()
                if refused is not None:
                    # Skip the promotion that follows: give the lease back instead.
                    pending = [a for a in pending if a.kind not in (ActionKind.PROMOTE, ActionKind.FEED_WATCHDOG)]
                    pending = machine.refuse_primary(refused, trio.current_time()) + pending
            elif kind is ActionKind.FEED_WATCHDOG:
                self._watchdog_call("keepalive")
            elif kind is ActionKind.DISARM_WATCHDOG:
                self._watchdog_call("disarm")
                self._armed = False
            elif kind in (ActionKind.READ, ActionKind.ACQUIRE, ActionKind.RENEW, ActionKind.RELEASE,
                          ActionKind.SET_SYNC_MARK, ActionKind.CLEAR_SYNC_MARK):
                assert self._nursery is not None
                self._nursery.start_soon(self._request, action)
            elif kind is ActionKind.ALLOW_ASYNC:
                log.info("lease.sync_mark_cleared", node=self.node, epoch=machine.epoch, detail=action.reason)
            elif kind is ActionKind.WAIT:
                if action.reason != self._last_wait:
                    self._last_wait = action.reason
                    log.info("role.wait", node=self.node, role=machine.role.value, reason=action.reason)
        after_ns = self.clock_ns()
        extended = self._track_deadline(sent)
        changes = machine.changes
        changed = self._published < len(changes)
        while self._published < len(changes):
            _, old, new, why = changes[self._published]
            self._published += 1
            # A primary interval is stamped wide: it starts before PROMOTE took effect
            # and ends after FENCE did (the drills compare the intervals of two nodes).
            stamp = before_ns if new is Role.PRIMARY else after_ns
            self._publish_change(old, new, machine.epoch, why, stamp)
        if extended and not changed and machine.role is Role.PRIMARY:
            self._publish_renewal()
        if wake:
            self._wakeup.set()

    def _track_deadline(self, sent: tuple[float, int] | None) -> bool:
        """Follow the machine's fence deadline on CLOCK_MONOTONIC; True when it moved
        later (a renewal or the acquire extended it)."""
        machine = self.machine
        assert machine is not None
        fence_at = machine.fence_at
        if machine.role is not Role.PRIMARY or fence_at is None:
            self._valid_until_ns = None
            self._fence_at_seen = None
            return False
        if fence_at == self._fence_at_seen and self._valid_until_ns is not None:
            return False
        if sent is not None:
            sent_at, sent_ns = sent
        else:  # not from an answered request (never expected): convert at this moment
            sent_ns = self.clock_ns()
            sent_at = trio.current_time()
        # Floor: never a nanosecond past the deadline the machine enforces.
        valid_until = sent_ns + math.floor((fence_at - sent_at) * 1e9)
        previous = self._valid_until_ns
        self._fence_at_seen = fence_at
        if previous is not None and valid_until <= previous:
            return False  # a late answer to an older request: the deadline never moves back
        self._valid_until_ns = valid_until
        return True

    def valid_until_ns(self, now_ns: int | None = None) -> int | None:
        """Until when (CLOCK_MONOTONIC ns) this node may trade, or None if it may not now."""
        until = self._valid_until_ns
        machine = self.machine
        if until is None or machine is None or machine.role is not Role.PRIMARY:
            return None
        if (now_ns if now_ns is not None else self.clock_ns()) >= until:
            return None
        return until

    def _deadline_fields(self, role: Role, now_ns: int) -> dict[str, Any]:
        until = self.valid_until_ns(now_ns) if role is Role.PRIMARY else None
        return {"valid_until": until,
                "valid_for": None if until is None else round((until - now_ns) / 1e9, 3)}

    def _publish_renewal(self) -> None:
        """The lease was renewed: the same role with a later deadline, to every watcher."""
        machine = self.machine
        assert machine is not None
        now_ns = self.clock_ns()
        message = {"role": machine.role.value, "previous": self._previous(), "epoch": machine.epoch,
                   "reason": "lease renewed", "monotonic_ns": now_ns, "node": self.node, "renewal": True,
                   **self._deadline_fields(machine.role, now_ns)}
        self.renewals_published += 1
        self._send_watchers(message)

    def _publish_change(self, old: Role, new: Role, epoch: int, why: str, stamp_ns: int) -> None:
        self.role_changes += 1
        if new is Role.CANDIDATE:
            self._candidate_since = trio.current_time()
        elif new is Role.PRIMARY and self._candidate_since is not None:
            self.promotion_seconds.observe(trio.current_time() - self._candidate_since)
            self._candidate_since = None
        else:
            self._candidate_since = None
        if self.bus is None:  # else the bus logs the RoleChanged event: one line
            log_fn = log.warning if new is Role.FENCED else log.info
            log_fn("role.changed", node=self.node, role=new.value, previous=old.value, epoch=epoch, reason=why)
        message = {"role": new.value, "previous": old.value, "epoch": epoch, "reason": why,
                   "monotonic_ns": stamp_ns, "node": self.node, "renewal": False,
                   **self._deadline_fields(new, self.clock_ns())}
        if self.bus is not None:
            self.bus.publish(RoleChanged(source="standby", node=self.node, role=new.value, previous=old.value,
                                         epoch=epoch, reason=why, monotonic_ns=stamp_ns))
        if self.hooks is not None:
            self.hooks.submit(new.value, epoch, old.value)
        self._send_watchers(message)

    def _send_watchers(self, message: dict[str, Any]) -> None:
        for channel in list(self._watchers):
            try:
                channel.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # Too slow (or gone): cut it off rather than let it act on a stale role.
                channel.close()
                self._watchers.remove(channel)

    def _arm_watchdog(self) -> str | None:
        """Arm before promotion. Answers why this node may not be primary, or None."""
        if self.watchdog is None or self.timings.watchdog_timeout is None or self._armed:
            return None
        try:
            self.watchdog.arm(int(self.timings.watchdog_timeout))
            self._armed = True
        except Exception as exc:
            if self.watchdog_required:
                log.error("watchdog.arm_failed", node=self.node, error=str(exc), required=True,
                          detail="refusing to become primary (watchdog = required)")
                return f"watchdog = \"required\" and it would not arm: {exc}"
            log.warning("watchdog.arm_failed", node=self.node, error=str(exc), required=False)
        return None

    def _watchdog_call(self, what: str) -> None:
        if self.watchdog is None:
            return
        try:
            getattr(self.watchdog, what)()
        except Exception as exc:
            log.warning(f"watchdog.{what}_failed", node=self.node, error=str(exc))

    # ------------------------------------------------------------------ store requests

    async def _request(self, action: Action) -> None:
        machine = self.machine
        assert machine is not None
        kind = action.kind
        # Monotonic first: the deadline converted from it is never later than trio's.
        sent_ns = self.clock_ns()
        sent = trio.current_time()
        try:
            with trio.fail_after(self.timings.retry_timeout):
                if kind is ActionKind.READ:
                    state = await self.store.read()
                elif kind is ActionKind.ACQUIRE:
                    assert action.epoch is not None
                    grant = await self.store.acquire(self.node, action.epoch - 1)
                elif kind is ActionKind.RENEW:
                    assert action.epoch is not None
                    grant = await self.store.renew(self.node, action.epoch)
                elif kind is ActionKind.RELEASE:
                    assert action.epoch is not None
                    await self.store.release(self.node, action.epoch)
                elif kind is ActionKind.SET_SYNC_MARK:
                    assert action.epoch is not None
                    await self.store.set_sync_mark(self.node, action.epoch, action.node,
                                                   generation=action.generation or 0)
                elif kind is ActionKind.CLEAR_SYNC_MARK:
                    assert action.epoch is not None
                    await self.store.set_sync_mark(self.node, action.epoch, None, generation=action.generation or 0)
        except Exception as exc:
            if not isinstance(exc, (LeaseError, trio.TooSlowError, OSError)):
                # A backend bug or an answer it could not parse: a failed request, never
                # a dead daemon (both nodes would read the same answer and die).
                log.exception("lease.request_error", node=self.node, request=kind.value)
            reason = _describe(exc, self.timings.retry_timeout)
            now = trio.current_time()
            self._note_reachability(exc)
            if kind is ActionKind.READ:
                self._apply(machine.read_failed(reason, now))
            elif kind is ActionKind.ACQUIRE:
                self._apply(machine.acquire_failed(reason, now))
            elif kind is ActionKind.RENEW:
                self._apply(machine.renew_failed(reason, now, lost=isinstance(exc, LeaseLost)))
            elif kind in (ActionKind.SET_SYNC_MARK, ActionKind.CLEAR_SYNC_MARK):
                mark = action.node if kind is ActionKind.SET_SYNC_MARK else None
                if isinstance(exc, LeaseLost):
                    self._apply(machine.renew_failed(f"sync mark refused: {reason}", now, lost=True))
                else:
                    self._apply(machine.sync_mark_written(mark, now, ok=False, reason=reason))
            else:
                log.warning("lease.release_failed", node=self.node, epoch=action.epoch, error=reason)
            return
        now = trio.current_time()
        self._note_reachability(None)
        if kind is ActionKind.ACQUIRE and self.watchdog is not None and self.timings.watchdog_timeout is not None:
            # Arm before the machine hears of the grant: a required watchdog that will
            # not arm blocks the promotion outright (no "primary" is ever announced).
            refused = self._arm_watchdog()
            if refused is not None:
                self._apply(machine.refuse_primary(refused, now))
        if kind is ActionKind.READ:
            self.lease = state
            self._note_pause(state, now)
            self._feed_journal(now, state)
            self._apply(machine.observed(state, now))
        elif kind is ActionKind.ACQUIRE:
            self._apply(machine.acquired(grant.epoch, sent, now), sent=(sent, sent_ns))
            if self._armed and machine.role is not Role.PRIMARY:
                # Armed for a grant the machine did not use (late, stale): stand it down.
                self._watchdog_call("disarm")
                self._armed = False
        elif kind is ActionKind.RENEW:
            self._apply(machine.renewed(grant.epoch, sent, now), sent=(sent, sent_ns))
        elif kind in (ActionKind.SET_SYNC_MARK, ActionKind.CLEAR_SYNC_MARK):
            mark = action.node if kind is ActionKind.SET_SYNC_MARK else None
            log.info("lease.sync_mark", node=self.node, epoch=action.epoch, sync_node=mark or "")
            self._apply(machine.sync_mark_written(mark, now))
        else:
            log.info("lease.released", node=self.node, epoch=action.epoch, reason=action.reason)

    def _note_reachability(self, exc: BaseException | None) -> None:
        if exc is None:
            if self.store_reachable is False and self.bus is not None:
                self.bus.publish(LeaseStoreReachable(source="standby", node=self.node, store=self.store_name))
            self.store_reachable = True
            self.store_error = None
            return
        if isinstance(exc, (LeaseConflict, LeaseLost)):
            self.store_reachable = True  # it answered: a refusal, not an outage
            return
        reason = _describe(exc, self.timings.retry_timeout)
        self.store_error = reason
        if self.store_reachable is not False:
            self.store_reachable = False
            role = self.machine.role.value if self.machine else "?"
            if self.bus is None:
                log.warning("lease.store_unreachable", node=self.node, store=self.store_name, reason=reason,
                            role=role)
            else:
                self.bus.publish(LeaseStoreUnreachable(source="standby", node=self.node, store=self.store_name,
                                                       reason=reason, role=role))

    # ------------------------------------------------------------------ journal positions

    def _feed_journal(self, now: float, state: LeaseState | None = None, *, wake: bool = True) -> None:
        machine = self.machine
        assert machine is not None
        local = self.host.journal_position()
        lease = state if state is not None else self.lease
        peer = lease.peer_position(self.node) if lease is not None else None
        if self._fed != (local, peer):
            self._fed = (local, peer)
            self._apply(machine.journal(local, peer, now), wake=wake)

    async def _reporter(self) -> None:
        """Publish this node's journal position while it is not primary."""
        while True:
            machine = self.machine
            assert machine is not None
            lease = self.lease
            if machine.role is Role.PRIMARY and trio.current_time() - self._pause_read_at >= REPORT_REFRESH:
                # A primary renews and does not read: look at the store now and then so
                # a pause set from the other node shows here too.
                self._pause_read_at = trio.current_time()
                try:
                    with trio.fail_after(self.timings.retry_timeout):
                        state = await self.store.read()
                    self._note_pause(state, trio.current_time())
                except (LeaseError, trio.TooSlowError, OSError) as exc:
                    log.debug("lease.pause_read_failed", node=self.node, error=_describe(exc, 0))
            if machine.role not in (Role.PRIMARY, Role.CANDIDATE) and lease is not None:
                position = self.host.journal_position()
                now = trio.current_time()
                last = self._last_report
                if last is None or last[:2] != (position, lease.epoch) or now - last[2] >= REPORT_REFRESH:
                    try:
                        with trio.fail_after(self.timings.retry_timeout):
                            await self.store.report(self.node, position, lease.epoch)
                        self._last_report = (position, lease.epoch, now)
                    except (LeaseError, trio.TooSlowError, OSError) as exc:
                        log.debug("lease.report_failed", node=self.node, error=_describe(exc, 0))
            await trio.sleep(self.timings.renew / 2)

    # ------------------------------------------------------------------ inputs from the host

    def standby_sync_changed(self, node: str | None) -> None:
        """The primary's replication: ``node`` is in sync now (None: nobody is)."""
        if self.machine is None:
            return
        self._apply(self.machine.standby_sync_changed(node, trio.current_time()))

    # ------------------------------------------------------------------ switchover and pause

    def _note_pause(self, state: LeaseState, now: float) -> None:
        self._pause_read_at = now
        pause = (now + state.paused_for, state.paused_by or "?") if state.paused_for > 0 else None
        if (pause is None) != (self._pause is None) or (pause and self._pause and pause[1] != self._pause[1]):
            log.warning("role.paused" if pause else "role.resumed", node=self.node,
                        seconds=round(state.paused_for), by=pause[1] if pause else "")
        self._pause = pause
        if self.machine is not None:
            self._apply(self.machine.paused(pause[0] if pause else None, now))

    def pause_info(self) -> dict[str, Any] | None:
        pause = self._pause
        if pause is None:
            return None
        left = pause[0] - trio.current_time()
        return {"for_s": round(left), "by": pause[1]} if left > 0 else None

    async def set_pause(self, seconds: float, by: str) -> dict[str, Any]:
        """Pause (``seconds`` > 0) or resume (0) automatic promotion for the pair, in the store."""
        try:
            with trio.fail_after(self.timings.retry_timeout):
                await self.store.set_pause(self.node, seconds, by)
        except (LeaseError, trio.TooSlowError, OSError) as exc:
            reason = _describe(exc, self.timings.retry_timeout)
            return {"ok": False, "reason": f"the lease store did not take it ({reason}): nothing changed"}
        now = trio.current_time()
        self._pause = (now + seconds, f"{by} via {self.node}") if seconds > 0 else None
        if self.machine is not None:
            self._apply(self.machine.paused(self._pause[0] if self._pause else None, now))
        log.warning("role.paused" if seconds > 0 else "role.resumed", node=self.node, seconds=round(seconds), by=by)
        return {"ok": True, "paused": self.pause_info(),
                "reason": (f"no automatic promotion for {seconds:g}s (until `lifeline resume`)" if seconds > 0
                           else "automatic promotion is back")}

    async def switchover(self, target: str | None, *, by: str = "?", drain_lead: float = 0.1) -> dict[str, Any]:
        """A planned handover to the in-sync standby, with the engine's pause as short
        as the lease allows: stop renewing (valid_until is no longer extended) and keep
        trading until ``drain_lead`` before the fence deadline already given; then
        refuse appends, wait until the standby acknowledged the journal's end, fence,
        release the epoch once that deadline has passed, and wait (up to the handover
        timeout) for the target to hold the next epoch."""
        machine = self.machine
        if machine is None:
            return {"ok": False, "reason": "not started yet"}
        started, started_ns = trio.current_time(), self.clock_ns()
        actions = machine.switchover_prepare(target, started, store_ok=self.store_reachable is not False)
        refusal = next((a.reason for a in actions if a.kind is ActionKind.REFUSE), None)
        if refusal is not None:
            self._apply(actions)
            log.warning("role.switchover_refused", node=self.node, to=target or "", by=by, reason=refusal)
            return {"ok": False, "reason": refusal.removeprefix("switchover refused: "), "role": machine.role.value,
                    "epoch": machine.epoch}
        to = machine.winding_down
        assert to is not None and machine.fence_at is not None
        epoch = machine.epoch
        self._apply(actions)
        log.warning("role.switchover", node=self.node, to=to, epoch=epoch, by=by,
                    detail=f"renewals stopped; trading until {drain_lead:g}s before the fence deadline")
        drained = False
        held_at = started
        try:
            await trio.sleep_until(machine.fence_at - drain_lead if machine.fence_at is not None else started)
            held_at = trio.current_time()
            self.host.hold_appends(f"switching over to {to}")
            if machine.role is Role.PRIMARY and machine.fence_at is not None:
                drained = await self.host.drained(max(0.0, machine.fence_at - trio.current_time()))
            now = trio.current_time()
            if machine.role is Role.PRIMARY:
                actions = machine.switchover(to, now, store_ok=self.store_reachable is not False)
                refusal = next((a.reason for a in actions if a.kind is ActionKind.REFUSE), None)
                if refusal is not None:
                    self._apply(actions + machine.switchover_abort(refusal, now))
                    log.warning("role.switchover_refused", node=self.node, to=to, by=by, reason=refusal)
                    return {"ok": False, "reason": refusal.removeprefix("switchover refused: "),
                            "role": machine.role.value, "epoch": epoch}
                self._apply(actions)
            # Else the fence deadline came first: the machine fenced and hands over.
            fenced_at = trio.current_time()
            taken = False
            with trio.move_on_after(machine.handover_timeout + self.timings.ttl):
                while True:
                    lease = self.lease
                    if lease is not None and not lease.free and lease.epoch > epoch:
                        taken = lease.holder == to
                        break
                    await trio.sleep(0.005)
        finally:
            self.host.hold_appends(None)
        seen = trio.current_time()
        lease = self.lease
        result = {"ok": taken, "from": self.node, "to": to, "epoch": lease.epoch if lease else epoch,
                  "previous_epoch": epoch, "drained": drained,
                  "held_ms": round((fenced_at - held_at) * 1000, 1),
                  "wind_down_ms": round((held_at - started) * 1000, 1), "started_ns": started_ns,
                  "seen_ms": round((seen - held_at) * 1000, 1), "role": machine.role.value,
                  "reason": (f"{to} is primary at epoch {lease.epoch if lease else '?'}; this node follows it"
                             if taken else f"{to} did not take the lease within {machine.handover_timeout:g}s: "
                                           "the ordinary rules apply (this node may take it back)")}
        self.switchovers += 1
        self.last_switchover = {k: result[k] for k in ("ok", "from", "to", "epoch", "seen_ms")}
        log.warning("role.switchover_done", node=self.node, to=to, ok=taken, epoch=result["epoch"],
                    appends_refused_ms=result["seen_ms"], by=by)
        return result

    def may_trade(self) -> bool:
        """Primary, and before the fence deadline *now*: checked on every append, so a
        process that froze past its deadline refuses before its loop has even run."""
        machine = self.machine
        return (machine is not None and machine.role is Role.PRIMARY and machine.fence_at is not None
                and trio.current_time() < machine.fence_at and self.valid_until_ns() is not None)

    def async_allowed(self) -> bool:
        return self.may_trade() and self.machine is not None and self.machine.may_acknowledge_alone

    def allow_primary(self) -> None:
        """Lift a block set by :meth:`refuse_primary` (a playbook's standby.promote); no-op without one."""
        machine = self.machine
        if machine is not None and machine.blocked is not None:
            self._apply(machine.allow_primary(trio.current_time()))

    def refuse_primary(self, reason: str) -> str | None:
        """Step down and stay standby until :meth:`allow_primary` (a playbook's standby.demote):
        the role now; None (nothing done) before the role machine has started."""
        machine = self.machine
        if machine is None:
            return None
        self._apply(machine.refuse_primary(reason, trio.current_time()))
        return machine.role.value

    def operator_promote(self, accept_loss: bool) -> dict[str, Any]:
        machine = self.machine
        if machine is None:
            return {"accepted": False, "reason": "not started yet"}
        actions = machine.operator_promote(trio.current_time(), accept_loss=accept_loss)
        reason = next((a.reason for a in actions if a.kind is ActionKind.WAIT), "")
        accepted = machine.override
        self._apply(actions)
        if self.bus is not None:
            self.bus.publish(OperatorPromotion(source="standby", node=self.node, accept_loss=accept_loss,
                                               outcome=reason))
        log.warning("role.operator_promote", node=self.node, accept_loss=accept_loss, accepted=accepted,
                    reason=reason)
        return {"accepted": accepted, "reason": reason, "role": machine.role.value}

    # ------------------------------------------------------------------ watchers and status

    def current(self) -> dict[str, Any]:
        machine = self.machine
        now_ns = self.clock_ns()
        if machine is None:
            return {"node": self.node, "role": "waiting", "epoch": 0, "reason": "starting", "previous": "",
                    "monotonic_ns": now_ns, "renewal": False, "valid_until": None, "valid_for": None}
        return {"node": self.node, "role": machine.role.value, "epoch": machine.epoch, "reason": machine.reason,
                "previous": self._previous(), "monotonic_ns": now_ns, "renewal": False,
                **self._deadline_fields(machine.role, now_ns)}

    def _previous(self) -> str:
        machine = self.machine
        return machine.changes[-1][1].value if machine is not None and machine.changes else ""

    def watch(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """An ordered stream of role changes and renewals (``"renewal": true``: the same
        role, a later ``valid_until``), starting with the current role."""
        send, receive = trio.open_memory_channel[dict[str, Any]](WATCH_BUFFER)
        send.send_nowait(self.current())
        self._watchers.append(send)
        return receive

    def unwatch(self, channel: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        channel.close()

    def details(self) -> dict[str, Any]:
        machine = self.machine
        out: dict[str, Any] = self.current()
        out["store"] = self.store_name
        out["store_reachable"] = self.store_reachable
        if self.store_error:
            out["store_error"] = self.store_error
        lease = self.lease
        if machine is not None and machine.role is Role.PRIMARY and machine.fence_at is not None:
            # A primary renews and no longer reads: the last lease it READ is from before
            # its grant (free, or another holder). Show the one it holds.
            left = machine.fence_at + self.timings.safety_margin - trio.current_time()
            out["lease"] = {"holder": self.node, "epoch": machine.epoch, "ttl_remaining": round(max(left, 0.0), 3),
                            "sync_node": machine.sync_confirmed,
                            "last_holder": lease.last_holder if lease is not None else None}
        elif lease is not None:
            out["lease"] = {"holder": lease.holder, "epoch": lease.epoch,
                            "ttl_remaining": round(lease.ttl_remaining, 3), "sync_node": lease.sync_node,
                            "last_holder": lease.last_holder}
        if machine is not None:
            out["highest_epoch"] = machine.highest_epoch
            if machine.role is Role.PRIMARY:
                # The primary renews rather than reads: its own view of the mark.
                out["sync_mark"] = machine.sync_confirmed
            out["async_allowed"] = machine.may_acknowledge_alone
            if machine.blocked:
                out["blocked"] = machine.blocked
            if machine.handover is not None:
                out["handover_to"] = machine.handover[0]
        out["paused"] = self.pause_info()
        if self.last_switchover is not None:
            out["last_switchover"] = self.last_switchover
        out["role_changes"] = self.role_changes
        out["renewals_published"] = self.renewals_published
        out["watchers"] = len(self._watchers)
        if self.hooks is not None:
            out["hooks"] = self.hooks.details()
        return out


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within retry_timeout ({timeout:g}s)"
    return str(exc) or type(exc).__name__
