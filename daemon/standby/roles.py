"""The role machine: lease results, journal positions and ``now`` in; actions out. Sans-IO.

No sockets, no trio, no wall clock: every input takes ``now``, the caller's *monotonic*
time in seconds, and returns the actions to carry out, in order, each with a one-line
reason (Patroni's ``run_cycle`` message). :meth:`RoleMachine.next_deadline` says when
to call :meth:`RoleMachine.tick` next, so a shell sleeps exactly that long.

States (:class:`Role`)
----------------------
``WAITING``   not primary, and may not take the lease now: store not read yet or
              unreachable, or the lease is free but this node is not known to hold
              every acknowledged record (not synchronous, peer ahead or unknown).
``STANDBY``   not primary; the lease is held by another node, or it is free and this
              node will take it once the fencing margin has passed.
``CANDIDATE`` an ACQUIRE is in flight.
``PRIMARY``   holds the lease at ``epoch``; the engine may trade.
``FENCED``    was primary at ``epoch`` and stopped (self-fence, lease lost, higher
              epoch seen). Never primary again at that epoch.

Transitions (:data:`TRANSITIONS`, with why)::

    WAITING   -> STANDBY    the lease is held by another node, or became takeable
    WAITING   -> CANDIDATE  the lease is free and this node may take it
    STANDBY   -> WAITING    the lease is free but this node may not take it
    STANDBY   -> CANDIDATE  lease expired (as observed) + fencing margin, and eligible
    CANDIDATE -> PRIMARY    acquired at a new epoch, before its own fence deadline
    CANDIDATE -> STANDBY    acquire refused, timed out, or answered too late
    PRIMARY   -> FENCED     fence deadline reached without a newer successful renewal;
                            renewal refused; the store shows another holder, a higher
                            epoch, or a free lease
    FENCED    -> STANDBY    another node holds the lease, or the epoch moved past ours
    FENCED    -> CANDIDATE  the lease is free at our own epoch: we were the last
                            primary, our journal has every record we acknowledged
                            (not while handing over: see below)
    PRIMARY   -> FENCED     also a planned switchover: fence, then release for the
                            in-sync standby

Switchover and pause
--------------------
* **Switchover** (:meth:`RoleMachine.switchover`): only a primary whose store confirms
  the target as the synchronous standby (it holds every acknowledged record), with the
  store reachable and the pair not paused. :meth:`RoleMachine.switchover_prepare`
  stops the renewals (``valid_until`` is no longer extended; the primary trades on);
  :meth:`RoleMachine.switchover`, once the shell has held appends and drained, fences
  and releases the epoch once the last ``valid_until`` it gave the engine has passed
  (its fence deadline; a standby polls a lease that stopped being renewed from
  ``safety_margin`` before its expiry, so it sees the release at once); the target,
  marked synchronous,
  takes ``epoch + 1`` by compare-and-set like any free lease. The old primary does not
  take its own released epoch back for ``handover_timeout`` (``2 * ttl``); past that,
  if nobody took it, the ordinary last-holder rule lets it (the switchover failed, the
  pair is not left without a primary).
* **Pause** (:meth:`RoleMachine.paused`): maintenance mode, stored in the lease store
  with a wall-clock expiry the shell converts: no *automatic* take-over while paused
  (a live primary keeps renewing; an operator override still works).

Rules
-----
* **Self-fence first.** The primary's deadline is ``sent + ttl - safety_margin``, where
  ``sent`` is when the last *successful* renewal (or the acquire) was sent, on the local
  monotonic clock. The store starts its ttl when it handles the request, later than
  ``sent``, so the lease cannot expire on the store before ``sent + ttl`` (up to clock
  rate error, which ``safety_margin`` covers: see :func:`validate_timings`). Every input
  first fires the timers that are due, so a late success never undoes a due fence.
* **Take the lease only after it expired**: ``ACQUIRE`` is sent no sooner than the
  observed expiry (``now + ttl_remaining`` at the read) plus ``fencing_margin``, with
  the epoch the store showed; the store grants ``epoch + 1`` by compare-and-set.
* **Promote only a node holding every acknowledged record**: the last holder (its
  journal acknowledged them), the node the store marks synchronous, or — cold start,
  corosync's ``wait_for_all`` — a node whose journal is at least as far as its peer's
  (by epoch, then seq) as the peer reported it while not primary. Anyone else waits for
  :meth:`RoleMachine.operator_promote` with ``accept_loss=True``.
* **No automatic failback**: a live lease is never contested; a returning old primary
  follows the holder.
* **Epochs never go backwards**: a lease state or grant with an epoch lower than the
  highest seen (in the store or in the local journal) is refused and reported.
* **Watchdog**: armed before PROMOTE, fed only right after a successful renewal and
  only if its timeout would fire no later than the fence deadline; disarmed on fence.

Actions (:class:`ActionKind`): see each member's comment.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from daemon.standby import Position, StandbyError
from daemon.standby.lease import LeaseState


class Role(enum.Enum):
    WAITING = "waiting"
    STANDBY = "standby"
    CANDIDATE = "candidate"
    PRIMARY = "primary"
    FENCED = "fenced"


#: Every allowed (from, to) change of role. Anything else is a bug: :class:`RoleError`.
TRANSITIONS: Final[frozenset[tuple[Role, Role]]] = frozenset({
    (Role.WAITING, Role.STANDBY),
    (Role.WAITING, Role.CANDIDATE),
    (Role.STANDBY, Role.WAITING),
    (Role.STANDBY, Role.CANDIDATE),
    (Role.CANDIDATE, Role.PRIMARY),
    (Role.CANDIDATE, Role.STANDBY),
    (Role.PRIMARY, Role.FENCED),
    (Role.FENCED, Role.STANDBY),
    (Role.FENCED, Role.CANDIDATE),
})


class ActionKind(enum.Enum):
    READ = "read"                        # read the lease store; answer observed() / read_failed()
    ACQUIRE = "acquire"                  # acquire(expected_epoch = epoch - 1); answer acquired() / acquire_failed()
    RENEW = "renew"                      # renew(epoch); answer renewed() / renew_failed()
    RELEASE = "release"                  # release(epoch): a grant we will not use (late or too slow)
    SET_SYNC_MARK = "set-sync-mark"      # store: node is the synchronous standby; answer sync_mark_written()
    CLEAR_SYNC_MARK = "clear-sync-mark"  # store: no synchronous standby; answer sync_mark_written(None)
    ALLOW_ASYNC = "allow-async"          # the mark is cleared: the primary may acknowledge without its standby
    ARM_WATCHDOG = "arm-watchdog"        # open and arm the watchdog (before PROMOTE)
    PROMOTE = "promote"                  # start trading at epoch; journal appends stamped with it
    FEED_WATCHDOG = "feed-watchdog"      # keepalive (only right after a successful renewal)
    FENCE = "fence"                      # stop trading NOW (engine halt, refuse appends); RoleChanged(fenced)
    DISARM_WATCHDOG = "disarm-watchdog"  # magic-close the watchdog: no longer primary, not hung
    FOLLOW = "follow"                    # replicate from node (the holder at epoch); truncate a divergent tail
    WAIT = "wait"                        # nothing to do; the reason says why (status, log)
    REFUSE = "refuse"                    # an operator request (switchover) refused; the reason says why


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str
    epoch: int | None = None
    node: str | None = None
    #: SET/CLEAR_SYNC_MARK: the write's number within the epoch; the store applies a
    #: write only if (epoch, generation) is newer than the mark's, so a late one
    #: cannot overwrite a later one.
    generation: int | None = None

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in (("epoch", self.epoch), ("node", self.node),
                                                 ("generation", self.generation)) if v is not None)
        return f"{self.kind.value}{extra}: {self.reason}"


class RoleError(StandbyError):
    """The machine was driven wrongly (time going backwards, an illegal transition): a
    bug in the shell, not a fault of the world."""


# --------------------------------------------------------------------------- timings


@dataclass(frozen=True)
class RoleTimings:
    """Seconds. Defaults aim at promotion in under 2 s after the primary dies."""

    ttl: float = 1.5
    renew_interval: float | None = None  # default ttl / 3
    retry_timeout: float = 0.5           # longest wait for one store request
    safety_margin: float = 0.3           # the primary fences this long before its lease can expire
    fencing_margin: float = 0.1          # a standby waits this long past the observed expiry
    watchdog_timeout: float | None = None
    max_clock_rate_error: float = 0.01   # |rate - 1| bound of any clock involved (NTP keeps it far below)
    retry_delay: float | None = None     # pause after a failed request; default renew_interval / 4

    @property
    def renew(self) -> float:
        return self.renew_interval if self.renew_interval is not None else self.ttl / 3

    @property
    def retry_pause(self) -> float:
        return self.retry_delay if self.retry_delay is not None else self.renew / 4

    def problems(self) -> list[str]:
        return validate_timings(
            ttl=self.ttl, renew_interval=self.renew, retry_timeout=self.retry_timeout,
            safety_margin=self.safety_margin, fencing_margin=self.fencing_margin,
            watchdog_timeout=self.watchdog_timeout, max_clock_rate_error=self.max_clock_rate_error)


def _s(x: float) -> str:
    return f"{x:g}s"


def validate_timings(
    *,
    ttl: float,
    renew_interval: float,
    retry_timeout: float,
    safety_margin: float,
    fencing_margin: float = 0.0,
    watchdog_timeout: float | None = None,
    max_clock_rate_error: float = 0.0,
) -> list[str]:
    """Every violated invariant, one message each, naming the value to change.

    ``renew_interval + 2 * retry_timeout <= ttl`` (Patroni's rule: a renewal and a retry
    both time out and the lease is still live); ``safety_margin < ttl``;
    ``safety_margin > 2 * max_clock_rate_error * ttl`` (the primary's clock may run slow
    and the store's fast: the fence must still come first); ``renew_interval < ttl -
    safety_margin`` (else the primary fences between two renewals);
    ``watchdog_timeout < ttl - safety_margin`` (a hung daemon reboots before the fence
    deadline, hence before the lease can pass on).
    """
    problems: list[str] = []
    for name, value in (("ttl", ttl), ("renew_interval", renew_interval), ("retry_timeout", retry_timeout),
                        ("safety_margin", safety_margin)):
        if not value > 0:
            problems.append(f"{name} must be positive, found {value!r}: raise {name}")
    if fencing_margin < 0:
        problems.append(f"fencing_margin must not be negative, found {fencing_margin!r}: raise fencing_margin")
    if not 0 <= max_clock_rate_error < 0.5:
        problems.append(f"max_clock_rate_error must be in [0, 0.5), found {max_clock_rate_error!r}")
    if problems:
        return problems
    if renew_interval + 2 * retry_timeout > ttl:
        problems.append(
            f"renew_interval + 2 * retry_timeout must be <= ttl ({_s(renew_interval)} + 2 * {_s(retry_timeout)} = "
            f"{_s(renew_interval + 2 * retry_timeout)} > {_s(ttl)}): raise ttl to at least "
            f"{_s(renew_interval + 2 * retry_timeout)}, or lower renew_interval or retry_timeout")
    if safety_margin >= ttl:
        problems.append(f"safety_margin ({_s(safety_margin)}) must be below ttl ({_s(ttl)}): lower safety_margin")
    elif renew_interval >= ttl - safety_margin:
        problems.append(
            f"renew_interval ({_s(renew_interval)}) must be below ttl - safety_margin ({_s(ttl - safety_margin)}), "
            "or the primary fences itself between two renewals: lower renew_interval or safety_margin")
    drift = 2 * max_clock_rate_error * ttl
    if safety_margin <= drift:
        problems.append(
            f"safety_margin ({_s(safety_margin)}) must exceed 2 * max_clock_rate_error * ttl ({_s(drift)}), or a "
            "slow local clock and a fast store clock could let the lease pass on before the fence: raise "
            "safety_margin")
    if watchdog_timeout is not None:
        if not watchdog_timeout > 0:
            problems.append(f"watchdog_timeout must be positive, found {watchdog_timeout!r}: raise watchdog_timeout")
        elif safety_margin < ttl and watchdog_timeout >= ttl - safety_margin:
            problems.append(
                f"watchdog_timeout ({_s(watchdog_timeout)}) must be below ttl - safety_margin "
                f"({_s(ttl - safety_margin)}), or a hung primary could outlive its lease: lower watchdog_timeout "
                "or raise ttl")
    return problems


# --------------------------------------------------------------------------- the machine

_Pending = Literal["read", "acquire", "renew", "sync"]


class RoleMachine:
    """One node's role. Drive it with the input methods; carry out what they return.

    The shell runs one store request at a time (the machine never asks for a second
    while one is pending) and gives each up after ``retry_timeout``; a request the
    machine has not heard back from by then counts as failed, and a late answer is
    handled safely (a late grant is released; a late renewal never revives a fence).
    """

    def __init__(self, node: str, timings: RoleTimings | None = None, *, now: float,
                 local: Position = Position(0, 0)) -> None:
        self.node = node
        self.timings = timings or RoleTimings()
        problems = self.timings.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.role = Role.WAITING
        self.reason = "starting: the lease store has not been read yet"
        self.epoch = 0  # the epoch this node holds (PRIMARY) or last held (FENCED), else 0
        self.highest_epoch = local.epoch
        self.local = local
        self.peer: Position | None = None
        self.lease: LeaseState | None = None
        self.expires_at: float | None = None  # the observed lease's expiry, local clock (latest estimate)
        self.fence_at: float | None = None
        self.next_renew_at: float | None = None
        self.next_read_at: float = now
        self.pending: _Pending | None = None
        self.pending_since = 0.0
        self.override = False
        self.blocked: str | None = None
        self.sync_wanted: str | None = None     # the primary's view of its in-sync standby
        self.sync_confirmed: str | None = None  # what the store was confirmed to hold
        # What the store may hold: a SET counts from the moment it is sent (its answer
        # may be lost while it took effect); only a confirmed CLEAR undoes it.
        self.sync_maybe: str | None = None
        self.sync_generation = 0
        self._sync_sending: str | None = None
        self.sync_next_at = now
        #: The store epochs this process sent ACQUIRE from (compare-and-set on them): a
        #: later grant to this node whose answer was lost is still ours.
        self.attempted_from: set[int] = set()
        self.async_allowed = False
        self.changes: list[tuple[float, Role, Role, str]] = []
        self._following: tuple[str | None, int] = (None, -1)
        self._eligible_reason = ""
        self._last_now = now
        #: A switchover in progress: (target, the epoch released, give up at).
        self.handover: tuple[str, int, float] | None = None
        #: When to release the fenced epoch for the target: the last valid_until given.
        self.handover_release_at: float | None = None
        #: A switchover being prepared: the target; renewals stop (valid_until is no
        #: longer extended) so the lease can pass on as soon as the last one ends.
        self.winding_down: str | None = None
        #: Maintenance mode until this local monotonic time (None: not paused).
        self.paused_until: float | None = None

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> list[Action]:
        """Time passed; fire what is due."""
        return self._run(now, [])

    def observed(self, lease: LeaseState, now: float) -> list[Action]:
        """Answer to READ (or a watch): the lease as the store reported it."""
        out: list[Action] = []
        self._begin(now, out)
        if self.pending == "read":
            self.pending = None
        self.next_read_at = now + self.timings.renew
        if not self._epoch_ok(lease.epoch, "lease store", out):
            return self._end(now, out)
        self.lease = lease
        if lease.free:
            if self.expires_at is None or self.expires_at > now:
                self.expires_at = now
        else:
            self.expires_at = now + lease.ttl_remaining
            # Look again as soon as it could have expired, not a whole interval later.
            self.next_read_at = min(self.next_read_at, self.expires_at + self.timings.fencing_margin)
            if lease.holder != self.node:
                # A holder that stopped renewing (a switchover winding down) releases at
                # its fence deadline, ``safety_margin`` before the store's expiry: look
                # then, and every ``retry_pause / 2`` after, rather than only at the
                # expiry. (A live primary renews long before: no extra reads.)
                released_at = self.expires_at - self.timings.safety_margin + 0.01
                poll = released_at if now < released_at else now + self.timings.retry_pause / 2
                self.next_read_at = min(self.next_read_at, poll)
        if self.role is Role.PRIMARY:
            if lease.free:
                self._fence(now, out, f"the store shows the lease free at epoch {lease.epoch}: fencing now")
            elif lease.holder != self.node or lease.epoch != self.epoch:
                self._fence(now, out, f"the store shows {lease.holder} holding epoch {lease.epoch}; "
                                      f"we held {self.epoch}: fencing now")
        elif self.role is Role.FENCED:
            if not lease.free and lease.holder != self.node:
                self._goto(Role.STANDBY, now, out, f"{lease.holder} holds the lease at epoch {lease.epoch}")
                out.append(Action(ActionKind.FOLLOW, f"following the primary {lease.holder}", lease.epoch,
                                  lease.holder))
            elif lease.epoch > self.epoch:
                self._goto(Role.STANDBY, now, out, f"the store is at epoch {lease.epoch}, past our {self.epoch}")
        elif self.role in (Role.STANDBY, Role.WAITING):
            if not lease.free:
                self.override = self.override and lease.holder == self.node
                if self.role is Role.WAITING or self._following != (lease.holder, lease.epoch):
                    self._goto(Role.STANDBY, now, out, f"{lease.holder} holds the lease at epoch {lease.epoch}")
                if lease.holder != self.node and self._following != (lease.holder, lease.epoch):
                    out.append(Action(ActionKind.FOLLOW, f"following the primary {lease.holder}", lease.epoch,
                                      lease.holder))
                    self._following = (lease.holder, lease.epoch)
        return self._end(now, out)

    def read_failed(self, reason: str, now: float) -> list[Action]:
        out: list[Action] = []
        self._begin(now, out)
        if self.pending == "read":
            self.pending = None
        self.next_read_at = now + self.timings.retry_pause
        if self.role is not Role.PRIMARY:
            self.reason = f"lease store unreachable ({reason}): staying {self.role.value}, not primary"
            out.append(Action(ActionKind.WAIT, self.reason))
        return self._end(now, out)

    def acquired(self, epoch: int, sent_at: float, now: float) -> list[Action]:
        """The store granted us the lease at ``epoch``; the request was sent at ``sent_at``."""
        out: list[Action] = []
        self._begin(now, out)
        was_pending = self.pending == "acquire"
        if was_pending:
            self.pending = None
        deadline = sent_at + self.timings.ttl - self.timings.safety_margin
        if self.role is not Role.CANDIDATE or not was_pending:
            out.append(Action(ActionKind.RELEASE, f"late grant of epoch {epoch} (the request had been given up): "
                                                  "releasing it unused", epoch))
            self._note_epoch(epoch)
            return self._end(now, out)
        if self.blocked is not None:
            self._note_epoch(epoch)
            self._back_to_standby(now, out, f"may not become primary: {self.blocked}")
            out.append(Action(ActionKind.RELEASE, "giving the grant back unused", epoch))
            return self._end(now, out)
        if epoch <= self.highest_epoch:
            self._note_epoch(epoch)
            self._back_to_standby(now, out, f"granted epoch {epoch}, not above {self.highest_epoch} already seen: "
                                            "refusing it")
            out.append(Action(ActionKind.RELEASE, "a grant at a stale epoch is never used", epoch))
            return self._end(now, out)
        self._note_epoch(epoch)
        if now >= deadline:
            self._back_to_standby(now, out, f"epoch {epoch} granted too late to use "
                                            f"({now - sent_at:.3f}s after sending)")
            out.append(Action(ActionKind.RELEASE, "the grant is past its fence deadline already", epoch))
            return self._end(now, out)
        self.epoch = epoch
        self.fence_at = deadline
        self.next_renew_at = sent_at + self.timings.renew
        why = "operator override, possible loss accepted" if self.override else self._eligible_reason
        self.override = False
        # The mark as the store held it at our read (only a holder writes it, and the
        # last one's lease had expired). Nobody is in sync with us yet: clear it, unless
        # replication says otherwise first.
        self.sync_confirmed = self.sync_maybe = self.lease.sync_node if self.lease else None
        self.sync_wanted = None
        self.sync_generation = 0
        self.sync_next_at = now
        self.async_allowed = False
        if self.timings.watchdog_timeout is not None:
            out.append(Action(ActionKind.ARM_WATCHDOG, "armed before promotion", epoch))
        self._goto(Role.PRIMARY, now, out, f"acquired the lease at epoch {epoch} ({why})")
        out.append(Action(ActionKind.PROMOTE, f"primary at epoch {epoch}; fencing at +{deadline - now:.3f}s "
                                              "unless renewed", epoch))
        self._feed(now, out)
        return self._end(now, out)

    def acquire_failed(self, reason: str, now: float) -> list[Action]:
        out: list[Action] = []
        self._begin(now, out)
        if self.pending == "acquire":
            self.pending = None
            if self.role is Role.CANDIDATE:
                self._back_to_standby(now, out, f"acquire refused or failed: {reason}")
        return self._end(now, out)

    def renewed(self, epoch: int, sent_at: float, now: float) -> list[Action]:
        """The renewal sent at ``sent_at`` succeeded at ``epoch``."""
        out: list[Action] = []
        self._begin(now, out)  # a due fence fires first: a late success never undoes it
        if self.pending == "renew":
            self.pending = None
        if self.role is not Role.PRIMARY:
            out.append(Action(ActionKind.WAIT, f"renewal of epoch {epoch} answered while {self.role.value}: ignored "
                                               "(never primary again at that epoch)"))
            return self._end(now, out)
        if epoch != self.epoch:
            self._fence(now, out, f"renewal answered epoch {epoch}, we hold {self.epoch}: fencing")
            return self._end(now, out)
        assert self.fence_at is not None
        self.fence_at = max(self.fence_at, sent_at + self.timings.ttl - self.timings.safety_margin)
        self.next_renew_at = sent_at + self.timings.renew
        self._feed(now, out)
        return self._end(now, out)

    def renew_failed(self, reason: str, now: float, *, lost: bool = False) -> list[Action]:
        """The renewal failed: ``lost`` when the store refused it (not the holder any
        more), else transient (timeout, unreachable)."""
        out: list[Action] = []
        self._begin(now, out)
        if self.pending == "renew":
            self.pending = None
        if self.role is Role.PRIMARY:
            if lost:
                self._fence(now, out, f"the store refused our renewal ({reason}): fencing now")
            else:
                assert self.fence_at is not None
                self.next_renew_at = now + self.timings.retry_pause
                out.append(Action(ActionKind.WAIT, f"renewal failed ({reason}): retrying; fencing in "
                                                   f"{self.fence_at - now:.3f}s unless one succeeds"))
        return self._end(now, out)

    def journal(self, local: Position, peer: Position | None, now: float) -> list[Action]:
        """The local journal's last position, and the peer's as *it* reported it while
        not primary (``None`` when unknown, unreachable, or the peer is primary: its
        journal may still grow)."""
        out: list[Action] = []
        self._begin(now, out)
        self.local = local
        self.peer = peer
        self._note_epoch(local.epoch)
        return self._end(now, out)

    def operator_promote(self, now: float, *, accept_loss: bool) -> list[Action]:
        """An operator or a signed playbook asks this node to take a *free* lease even
        though it may lack acknowledged records. Never steals a live lease."""
        out: list[Action] = []
        self._begin(now, out)
        if not accept_loss:
            out.append(Action(ActionKind.WAIT, "override refused: it must explicitly accept possible loss"))
        elif self.role in (Role.PRIMARY, Role.CANDIDATE):
            out.append(Action(ActionKind.WAIT, f"override ignored: already {self.role.value}"))
        elif self.lease is not None and not self.lease.free and self.lease.holder != self.node:
            out.append(Action(ActionKind.WAIT, f"override refused: {self.lease.holder} holds a live lease at epoch "
                                               f"{self.lease.epoch}; an override never steals a live lease"))
        else:
            self.override = True
            out.append(Action(ActionKind.WAIT, "override accepted: will take the lease once it is free, "
                                               "possible loss of acknowledged records accepted"))
        return self._end(now, out)

    def refuse_primary(self, reason: str, now: float) -> list[Action]:
        """This node cannot serve as primary (``watchdog = "required"`` and the device
        would not arm): fence if primary, release the lease, and never take it again
        until :meth:`allow_primary`."""
        out: list[Action] = []
        self._begin(now, out)
        self.blocked = reason
        if self.role is Role.PRIMARY:
            epoch = self.epoch
            self._fence(now, out, f"cannot serve as primary: {reason}")
            out.append(Action(ActionKind.RELEASE, "giving the lease up at once so the peer need not wait for "
                                                  "it to expire", epoch))
        return self._end(now, out)

    def allow_primary(self, now: float) -> list[Action]:
        out: list[Action] = []
        self._begin(now, out)
        self.blocked = None
        return self._end(now, out)

    def standby_sync_changed(self, node: str | None, now: float) -> list[Action]:
        """The primary's replication says which standby is in sync now (``None``: none).
        The mark is written before the primary acts on the change."""
        out: list[Action] = []
        self._begin(now, out)
        self.sync_wanted = node
        if node is not None:
            self.async_allowed = False
        return self._end(now, out)

    def sync_mark_written(self, node: str | None, now: float, *, ok: bool = True, reason: str = "") -> list[Action]:
        out: list[Action] = []
        self._begin(now, out)
        if self.pending == "sync":
            self.pending = None
        if not ok:
            self.sync_next_at = now + self.timings.retry_pause
            out.append(Action(ActionKind.WAIT, f"writing the sync mark failed ({reason}): retrying"))
        elif self.role is Role.PRIMARY:
            # Writes are ordered by generation at the store: once one is confirmed, an
            # older one still in flight can no longer change the mark.
            self.sync_confirmed = self.sync_maybe = node
            if node is None and self.sync_wanted is None and not self.async_allowed:
                self.async_allowed = True
                out.append(Action(ActionKind.ALLOW_ASYNC, "sync mark cleared in the store: acknowledging without "
                                                          "the standby is allowed"))
        return self._end(now, out)

    @property
    def may_acknowledge_alone(self) -> bool:
        """May the primary acknowledge a write its standby does not have (degrade to
        async)? Only while the store marks no *other* node synchronous: a node so
        marked may promote itself and must hold every acknowledged record. The mark
        cannot change behind our back: only the holder writes it; a SET counts as
        written from the moment it is sent."""
        return self.role is Role.PRIMARY and self.sync_maybe in (None, self.node) and self.sync_wanted is None

    def switchover_refusal(self, target: str | None, now: float, *, store_ok: bool) -> str | None:
        """Why a switchover to ``target`` (None: the in-sync standby) may not start
        now, or None when it may. No state changes (the shell asks before it drains)."""
        if self.role is not Role.PRIMARY:
            return f"this node is {self.role.value}, not primary: run the switchover on the primary"
        if self.handover is not None:
            return f"a switchover to {self.handover[0]} is already under way"
        if self.paused_until is not None and now < self.paused_until:
            return "the pair is paused (maintenance): `lifeline resume` first"
        if not store_ok:
            return "the lease store is unreachable: the handover needs it (compare-and-set); try again when it answers"
        synced = self.sync_confirmed
        if synced is None or self.sync_wanted != synced or self.sync_maybe != synced:
            return ("no standby is in sync (the store marks none synchronous): it may lack acknowledged records; "
                    "wait until `lifeline role` shows a sync_mark")
        if target is not None and target != synced:
            return f"{target} is not the in-sync standby ({synced} is): switch over to {synced}, or omit --to"
        if synced == self.node:
            return "the store marks this node itself synchronous: no standby to hand over to"
        return None

    def switchover(self, target: str | None, now: float, *, store_ok: bool) -> list[Action]:
        """Hand the lease to the in-sync standby: fence now, then release the epoch so the
        standby (marked synchronous) takes ``epoch + 1``; a refusal is a REFUSE action.
        The shell stops appends and drains replication *before* calling this."""
        out: list[Action] = []
        self._begin(now, out)
        refusal = self.switchover_refusal(target, now, store_ok=store_ok)
        if refusal is not None:
            out.append(Action(ActionKind.REFUSE, f"switchover refused: {refusal}"))
            return self._end(now, out)
        node = self.sync_confirmed
        assert node is not None and self.fence_at is not None
        epoch = self.epoch
        # The engine may trade until the fence deadline it was last given (valid_until):
        # the lease passes on only after it, so the two never overlap, even for an
        # engine that missed the FENCE message.
        release_at = self.fence_at
        self.handover = (node, epoch, release_at + self.handover_timeout)
        self._fence(now, out, f"switching over to {node}: fenced before the lease is handed over")
        self.handover_release_at = release_at
        return self._end(now, out)

    def switchover_prepare(self, target: str | None, now: float, *, store_ok: bool) -> list[Action]:
        """First step of a switchover: stop renewing, so ``valid_until`` is no longer
        extended and the lease can pass on at the fence deadline already given; the
        primary keeps trading until the shell holds its appends and calls
        :meth:`switchover` (or :meth:`switchover_abort`). Should the deadline come
        first, the node fences as always and hands over at once."""
        out: list[Action] = []
        self._begin(now, out)
        refusal = self.switchover_refusal(target, now, store_ok=store_ok)
        if refusal is None and self.winding_down is not None:
            refusal = f"a switchover to {self.winding_down} is already under way"
        if refusal is not None:
            out.append(Action(ActionKind.REFUSE, f"switchover refused: {refusal}"))
            return self._end(now, out)
        self.winding_down = self.sync_confirmed
        assert self.fence_at is not None
        out.append(Action(ActionKind.WAIT, f"switching over to {self.winding_down}: no more renewals; trading until "
                                           f"the fence deadline in {self.fence_at - now:.3f}s"))
        return self._end(now, out)

    def switchover_abort(self, reason: str, now: float) -> list[Action]:
        """The shell gave the switchover up before :meth:`switchover`: renew again."""
        out: list[Action] = []
        self._begin(now, out)
        if self.winding_down is not None and self.role is Role.PRIMARY:
            self.winding_down = None
            out.append(Action(ActionKind.WAIT, f"switchover abandoned ({reason}): renewing again"))
        return self._end(now, out)

    @property
    def handover_timeout(self) -> float:
        """How long an old primary leaves its released epoch to the switchover target."""
        return 2 * self.timings.ttl

    def paused(self, until: float | None, now: float) -> list[Action]:
        """Maintenance mode as the store holds it: no automatic take-over before
        ``until`` (local monotonic seconds; None: not paused)."""
        out: list[Action] = []
        self._begin(now, out)
        if until is not None and until <= now:
            until = None
        if until != self.paused_until:
            self.paused_until = until
            out.append(Action(ActionKind.WAIT, f"paused (maintenance) for {until - now:.0f}s more: no automatic "
                                               "promotion" if until is not None else "not paused"))
        return self._end(now, out)

    # ------------------------------------------------------------------ time

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`tick` must next be called (None: only inputs can change anything)."""
        times: list[float] = []
        if self.pending is not None:
            times.append(self.pending_since + self.timings.retry_timeout)
        if self.handover_release_at is not None:
            times.append(self.handover_release_at)
        if self.role is Role.PRIMARY:
            assert self.fence_at is not None and self.next_renew_at is not None
            times.append(self.fence_at)
            if self.pending is None:
                if self.winding_down is None:
                    times.append(self.next_renew_at)
                if self._sync_write_needed():
                    times.append(self.sync_next_at)
        elif self.role is not Role.CANDIDATE and self.pending is None:
            times.append(self.next_read_at)
            if self.handover is not None:
                times.append(self.handover[2])
            if self.paused_until is not None:
                times.append(self.paused_until)
            take = self._take_at()
            if take is not None:
                times.append(take)
        return max(min(times), now) if times else None

    # ------------------------------------------------------------------ internals

    def _run(self, now: float, out: list[Action]) -> list[Action]:
        self._begin(now, out)
        return self._end(now, out)

    def _begin(self, now: float, out: list[Action]) -> None:
        if now < self._last_now:
            raise RoleError(f"time went backwards ({now} < {self._last_now}): pass monotonic time only")
        self._last_now = now
        if self.handover is not None and now >= self.handover[2]:
            target, epoch, _ = self.handover
            self.handover = None
            out.append(Action(ActionKind.WAIT, f"switchover: {target} did not take epoch {epoch + 1} within "
                                               f"{self.handover_timeout:g}s: the ordinary rules apply again"))
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            out.append(Action(ActionKind.WAIT, "the pause expired: automatic promotion is back"))
        if self.role is Role.PRIMARY and self.fence_at is not None and now >= self.fence_at:
            winding_down, epoch = self.winding_down, self.epoch
            self._fence(now, out, f"no successful renewal by the fence deadline (ttl {self.timings.ttl:g}s - "
                                  f"safety margin {self.timings.safety_margin:g}s after the last one was sent)")
            if winding_down is not None:
                # Winding down for a switchover that did not finish in time: the last
                # valid_until has passed, hand over now (the target is marked in sync).
                self.handover = (winding_down, epoch, now + self.handover_timeout)
                self.handover_release_at = now
        if self.pending is not None and now >= self.pending_since + self.timings.retry_timeout:
            kind, self.pending = self.pending, None
            if kind == "acquire" and self.role is Role.CANDIDATE:
                self._back_to_standby(now, out, "acquire got no answer within retry_timeout")
            elif kind == "renew":
                self.next_renew_at = now
            elif kind == "read":
                self.next_read_at = now
            elif kind == "sync":
                self.sync_next_at = now

    def _end(self, now: float, out: list[Action]) -> list[Action]:
        """Decide what to ask the store next."""
        if self.handover_release_at is not None and now >= self.handover_release_at and self.handover is not None:
            target, epoch, _ = self.handover
            self.handover_release_at = None
            out.append(Action(ActionKind.RELEASE, f"handing the lease over to {target} (in sync) at epoch "
                                                  f"{epoch + 1}: our last valid_until has passed", epoch, target))
        if self.pending is not None:
            return out
        t = self.timings
        if self.role is Role.PRIMARY:
            assert self.next_renew_at is not None
            if now >= self.next_renew_at and self.winding_down is None:
                self._send("renew", now)
                out.append(Action(ActionKind.RENEW, f"renewing epoch {self.epoch} every {t.renew:g}s", self.epoch))
            elif self._sync_write_needed() and now >= self.sync_next_at:
                self._send("sync", now)
                self.sync_generation += 1
                if self.sync_wanted is None:
                    out.append(Action(ActionKind.CLEAR_SYNC_MARK, "no standby in sync: clearing the mark before "
                                                                  "acknowledging without it", self.epoch,
                                      generation=self.sync_generation))
                else:
                    self.sync_maybe = self.sync_wanted
                    out.append(Action(ActionKind.SET_SYNC_MARK, f"{self.sync_wanted} is in sync", self.epoch,
                                      self.sync_wanted, generation=self.sync_generation))
            return out
        if self.role is Role.CANDIDATE:
            return out
        # WAITING / STANDBY / FENCED: take the lease if we may, else keep reading.
        if self.lease is not None and self.lease.free:
            ok, why = self._eligible()
            if not ok:
                if self.role is Role.STANDBY:
                    self._goto(Role.WAITING, now, out, why)
                elif self.reason != why:
                    self.reason = why
                    out.append(Action(ActionKind.WAIT, why))
            else:
                take = self._take_at()
                assert take is not None
                if self.role is Role.WAITING:
                    self._goto(Role.STANDBY, now, out, f"the lease is free and {why}")
                if now >= take:
                    self._eligible_reason = why
                    new_epoch = self.lease.epoch + 1
                    self.attempted_from.add(self.lease.epoch)
                    self._goto(Role.CANDIDATE, now, out, f"lease free since +{self.timings.fencing_margin:g}s "
                                                         f"fencing margin; {why}")
                    self._send("acquire", now)
                    out.append(Action(ActionKind.ACQUIRE, f"taking the lease at epoch {new_epoch} "
                                                          f"(compare-and-set on {self.lease.epoch})", new_epoch))
                    return out
        if now >= self.next_read_at:
            self._send("read", now)
            out.append(Action(ActionKind.READ, "watching the lease"))
        return out

    def _sync_write_needed(self) -> bool:
        """The store may hold (or is not confirmed to hold) another mark than wanted."""
        return self.sync_wanted != self.sync_confirmed or self.sync_wanted != self.sync_maybe

    def _take_at(self) -> float | None:
        if self.lease is None or self.expires_at is None:
            return None
        if self.lease.free:
            if not self._eligible()[0]:
                return None
            return self.expires_at + self.timings.fencing_margin
        return None

    def _eligible(self) -> tuple[bool, str]:
        """May this node take the free lease: does it hold every acknowledged record?"""
        lease = self.lease
        assert lease is not None
        if self.blocked is not None:
            return False, f"may not become primary: {self.blocked}"
        if lease.epoch < self.highest_epoch:
            return False, f"the store's epoch {lease.epoch} is below {self.highest_epoch} already seen"
        if self.handover is not None and lease.epoch == self.handover[1]:
            return False, (f"handed over to {self.handover[0]}: leaving epoch {lease.epoch + 1} to it for "
                           f"{self.handover[2] - self._last_now:.1f}s")
        if self.paused_until is not None and not self.override:
            return False, (f"paused (maintenance) for {self.paused_until - self._last_now:.0f}s more: no automatic "
                           "promotion; `lifeline resume` ends it")
        if self.role is Role.FENCED and lease.epoch == self.epoch and lease.last_holder == self.node:
            return True, f"we held epoch {lease.epoch} last: our journal has every record we acknowledged"
        if self.override:
            return True, "operator override: possible loss accepted"
        if (lease.last_holder == self.node and lease.epoch > self.epoch
                and any(e < lease.epoch for e in self.attempted_from)):
            return True, (f"the last grant, epoch {lease.epoch}, was ours (its answer never came): nobody "
                          "wrote at it, and we held every record when we asked")
        if lease.last_holder == self.node and lease.epoch > 0 and self.local.epoch == lease.epoch:
            return True, f"we held epoch {lease.epoch} last and our journal is at it"
        if lease.sync_node == self.node:
            return True, "the store marks us synchronous: we hold every acknowledged record"
        if self.peer is not None and self.local >= self.peer:
            return True, (f"our journal ({self.local.epoch}, {self.local.seq}) is at least as far as the peer's "
                          f"({self.peer.epoch}, {self.peer.seq})")
        if self.peer is not None:
            return False, (f"the peer's journal ({self.peer.epoch}, {self.peer.seq}) is ahead of ours "
                           f"({self.local.epoch}, {self.local.seq}): waiting for it to take the lease")
        if lease.sync_node is not None:
            return False, (f"not marked synchronous ({lease.sync_node} is): waiting for an operator override "
                           "that accepts possible loss")
        return False, ("not known to hold every acknowledged record (not synchronous, peer's journal unknown): "
                       "waiting for the peer or an operator override that accepts possible loss")

    def _epoch_ok(self, epoch: int, where: str, out: list[Action]) -> bool:
        if epoch < self.highest_epoch:
            self.reason = (f"{where} reports epoch {epoch}, below {self.highest_epoch} already seen (in the store or "
                           "this journal): the store is new or lost its state, and granting epochs again from "
                           f"{epoch + 1} could reuse one. Not acting on it: restore the store, or restart the "
                           f"witness with --min-epoch {self.highest_epoch}")
            out.append(Action(ActionKind.WAIT, self.reason))
            return False
        self._note_epoch(epoch)
        if self.handover is not None and epoch > self.handover[1]:
            self.handover = None  # the target (or someone) took the next epoch: done
        return True

    def _note_epoch(self, epoch: int) -> None:
        self.highest_epoch = max(self.highest_epoch, epoch)

    def _send(self, kind: _Pending, now: float) -> None:
        self.pending = kind
        self.pending_since = now

    def _feed(self, now: float, out: list[Action]) -> None:
        wd = self.timings.watchdog_timeout
        if wd is None:
            return
        assert self.fence_at is not None
        if now + wd <= self.fence_at:
            out.append(Action(ActionKind.FEED_WATCHDOG, "lease renewed", self.epoch))
        else:
            out.append(Action(ActionKind.WAIT, f"renewal too slow to feed the watchdog safely "
                                               f"({wd:g}s timeout would outlast the fence deadline)"))

    def _fence(self, now: float, out: list[Action], why: str) -> None:
        self.winding_down = None
        self._goto(Role.FENCED, now, out, why)
        out.append(Action(ActionKind.FENCE, why, self.epoch))
        if self.timings.watchdog_timeout is not None:
            out.append(Action(ActionKind.DISARM_WATCHDOG, "fenced and alive: no longer primary", self.epoch))
        self.fence_at = None
        self.lease = None  # what we knew is stale now: read before deciding anything
        self.expires_at = None
        self.next_read_at = now
        self.async_allowed = False
        if self.pending == "renew" or self.pending == "sync":
            self.pending = None

    def _back_to_standby(self, now: float, out: list[Action], why: str) -> None:
        # Whatever the store said before the acquire is stale now: read it again
        # before anything else (and never retry the acquire on an old view).
        self._goto(Role.STANDBY, now, out, why)
        self.lease = None
        self.expires_at = None
        self.next_read_at = now

    def _goto(self, new: Role, now: float, out: list[Action], why: str) -> None:
        old = self.role
        if old is new:
            self.reason = why
            return
        if (old, new) not in TRANSITIONS:
            raise RoleError(f"can't go from {old.value} to {new.value} ({why})")
        self.role = new
        self.reason = why
        self.changes.append((now, old, new, why))
        if new is not Role.STANDBY:
            self._following = (None, -1)
        if new is Role.WAITING:
            out.append(Action(ActionKind.WAIT, why))
