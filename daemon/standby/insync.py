"""The in-sync rule: when the primary may call its standby synchronous. Sans-IO.

The lease store's synchronous mark (``set_sync_mark``) lets the marked standby promote
itself on the mark alone, so the primary may set it only when that is safe:

**Invariant.** Whenever :attr:`InSyncRule.in_sync` is true, the standby has acknowledged
as durable, in its current session, every seq this primary ever answered ``ok`` without
it (``durable_on = "primary"``: degrade-to-async) and every record the journal held
when that session began (acknowledged by an earlier session, or before a restart, and
maybe not on a re-seeded or truncated standby)::

    in_sync  =>  acked_seq >= max(alone_seq, target)

A record answered ``ok`` *with* the standby is covered by its own acknowledgement; one
answered ``in_doubt`` was never promised.

A session goes through three phases:

``catching up``  ``acked_seq < target``: the standby replays the backlog. Appends are
                 not waited for: under degrade-to-async they are answered alone, each
                 raising ``alone_seq``, as while no standby was connected.
``converging``   ``target <= acked_seq < alone_seq``: the backlog is replayed but
                 records answered alone during it may not be on the standby yet. New
                 appends now *wait* for the standby (:meth:`must_wait`) and no longer
                 raise ``alone_seq``, so the gap closes even under constant load. Not in
                 sync: the mark is not set. So that writers do not wait long, a gap of
                 more than :data:`CONVERGE_GAP` records starts another catch-up round
                 instead (``target`` moves to the journal's end, appends are answered
                 alone again), at most :data:`MAX_ROUNDS` times per session.
``in sync``      ``acked_seq >= max(alone_seq, target)`` and no write error reported:
                 appends wait for the standby; the mark may be set.

The bug this replaces (issue 14): ``in_sync`` once ``acked_seq >= target`` alone, while
records above ``target`` answered alone during the catch-up were not yet on the
standby; the mark followed, the standby promoted on it after a kill -9 of the primary,
and those records were lost (their seqs then acknowledged again with other payloads).

The trio shell (:class:`daemon.standby.replication.ReplicationPrimary`) feeds it the
events and asks :meth:`mark_refusal` once more right where the mark is set: a guard that
refuses (and the shell logs), never a crash of the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Converge (appends wait for the standby) once the records answered alone that the
#: standby still lacks are at most this many: one frame of the sender, a few ms of replay.
CONVERGE_GAP = 2000
#: Catch-up rounds per session before converging whatever the gap (a standby that
#: replays slower than the writers append would otherwise never be in sync).
MAX_ROUNDS = 8


@dataclass
class InSyncRule:
    """The primary's view of its standby; see the module docstring.

    ``alone_seq``: the highest seq answered ``ok`` without the standby, ever (in this
    process; records answered alone before a restart are below every later ``target``).
    ``acked_seq``: the seq the standby acknowledged durable in the current session
    (``None``: no session). ``target``: the journal's last seq when the session began.
    ``failed``: the standby reported a write error in this session (it stops
    acknowledging; it reconnects to retry, which starts a new session). ``rounds``:
    catch-up rounds in this session (see ``converging`` in the module docstring).
    """

    alone_seq: int = 0
    acked_seq: int | None = None
    target: int = 0
    failed: bool = False
    in_sync: bool = False
    rounds: int = 0
    converge_gap: int = CONVERGE_GAP
    max_rounds: int = MAX_ROUNDS

    # ------------------------------------------------------------------ events

    def session_started(self, common_seq: int, journal_last: int) -> bool:
        """A standby agreed that it holds the primary's history up to ``common_seq``;
        the journal ends at ``journal_last``. Answers whether it is in sync at once."""
        if common_seq < 0 or journal_last < common_seq:
            raise ValueError(f"session at common seq {common_seq} beyond the journal's last seq {journal_last}")
        self.acked_seq = common_seq
        self.target = journal_last
        self.failed = False
        self.in_sync = False
        self.rounds = 1
        return self._evaluate()

    def standby_acked(self, seq: int, journal_last: int) -> bool:
        """The standby holds everything up to ``seq`` durably; the journal ends at
        ``journal_last``. Answers whether the standby *became* in sync with it."""
        if self.acked_seq is None:
            return False  # a replaced session's last words
        if seq > self.acked_seq:
            self.acked_seq = seq
        if self.in_sync:
            return False
        if (self.acked_seq >= self.target and self.alone_seq - self.acked_seq > self.converge_gap
                and self.rounds < self.max_rounds and journal_last > self.target):
            # Another round: catch up to the journal's end with appends answered alone.
            self.target = journal_last
            self.rounds += 1
        return self._evaluate()

    def standby_failed(self) -> None:
        """The standby reported a write error: not in sync until its next session."""
        self.failed = True
        self.in_sync = False

    def link_lost(self) -> None:
        """The session ended (link down, replaced, replication stopped)."""
        self.acked_seq = None
        self.in_sync = False

    def answered_alone(self, seq: int) -> None:
        """Records up to ``seq`` were answered ``ok`` without the standby. The shell
        does so only while :meth:`must_wait` is false; if it was not (a bug), the
        standby is no longer counted in sync unless it already acknowledged ``seq``."""
        if seq > self.alone_seq:
            self.alone_seq = seq
        if self.in_sync and (self.acked_seq is None or seq > self.acked_seq):
            self.in_sync = False

    def revoke(self) -> None:
        """The shell's guard refused the mark: out of sync until the next evaluation."""
        self.in_sync = False

    # ------------------------------------------------------------------ questions

    def must_wait(self) -> bool:
        """Must a new append wait for the standby's acknowledgement (in sync, or
        converging), rather than be answered without it?"""
        return self.acked_seq is not None and not self.failed and self.acked_seq >= self.target

    @property
    def converging(self) -> bool:
        return self.must_wait() and not self.in_sync

    def mark_refusal(self, acked_seq: int) -> str | None:
        """The invariant, checked where the mark is set, against the shell's own record
        of the standby's acknowledged seq: ``None`` when the standby may be marked
        synchronous, else why not."""
        if not self.in_sync:
            return "the standby is not in sync"
        if self.failed:
            return "the standby reported a write error in this session"
        if self.acked_seq is None or acked_seq != self.acked_seq:
            return f"acknowledged seq {acked_seq} disagrees with the rule's {self.acked_seq}"
        if acked_seq < self.alone_seq:
            return (f"seqs up to {self.alone_seq} were answered ok without the standby, which has acknowledged "
                    f"only {acked_seq}")
        if acked_seq < self.target:
            return f"the standby has acknowledged {acked_seq}, below the session's catch-up target {self.target}"
        return None

    # ------------------------------------------------------------------ internals

    def _evaluate(self) -> bool:
        self.in_sync = (self.acked_seq is not None and not self.failed
                        and self.acked_seq >= self.target and self.acked_seq >= self.alone_seq)
        return self.in_sync
