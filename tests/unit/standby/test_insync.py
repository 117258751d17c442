"""The in-sync rule (daemon/standby/insync.py), sans-IO, against a model of the pair.

The property test drives :class:`InSyncRule` the way the trio shell does, over random
interleavings of appends (waiting for the standby while the rule says so, answered alone
otherwise), link loss, reconnects at a common seq no higher than what the standby really
holds, the standby's receives, fsyncs and acknowledgements (monotonic, of what it really
wrote), acknowledgements delivered late, write errors, waiters timing out or woken by a
loss, and the store's mark being set and cleared. The model keeps the standby's *real*
durable seq; after every step:

* whenever the rule says ``in_sync`` — or the store marks the standby synchronous —
  every seq ever answered ``ok`` (alone or not) is at or below the standby's real
  durable seq;
* nothing is answered alone while the store marks the standby;
* the rule never believes the standby holds more than it does;
* and, at the end, a standby that has written and acknowledged everything is in sync
  (the rule is not merely always false).

The same machine run with the rule this replaced (in sync once the catch-up target is
acknowledged) finds the hole of issue 14.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from daemon.standby.insync import InSyncRule


class CatchUpTargetOnly(InSyncRule):
    """The rule before issue 14: in sync once the session's catch-up target is
    acknowledged; appends wait for the standby only while in sync; no guard."""

    def _evaluate(self) -> bool:
        self.in_sync = self.acked_seq is not None and not self.failed and self.acked_seq >= self.target
        return self.in_sync

    def must_wait(self) -> bool:
        return self.in_sync

    def answered_alone(self, seq: int) -> None:
        self.alone_seq = max(self.alone_seq, seq)

    def mark_refusal(self, acked_seq: int) -> str | None:
        return None


def upto(data: st.DataObject, low: int, high: int) -> int:
    """A value in [low, high], often ``high`` itself (everything so far): the draws
    that make progress, which plain integers rarely hit."""
    return data.draw(st.one_of(st.just(high), st.integers(low, high)))


class Model:
    """A primary (journal last seq ``P``) and its standby, with the rule under test in
    the primary's place. ``durable`` is what the standby really holds."""

    def __init__(self, rule: InSyncRule) -> None:
        self.rule = rule
        self.P = 0
        self.connected = False
        self.failed = False
        self.sent = 0          # the primary streamed up to here in this session
        self.received = 0      # the standby received up to here (not yet durable beyond `durable`)
        self.durable = 0       # the standby's real durable seq
        self.ack_sent = 0      # the standby acknowledged up to here (<= durable when sent)
        self.primary_ack = 0   # the primary has processed acknowledgements up to here
        self.waiting: list[tuple[int, int]] = []       # appends waiting for the standby
        self.released: list[tuple[int, int]] = []      # woken by a loss, not yet re-decided
        self.ok_max = 0
        self.alone_max = 0
        self.mark = False        # the store marks the standby synchronous
        self.steps: list[str] = []

    # ------------------------------------------------------------------ the shell's moves

    def _mark_if(self, became: bool) -> None:
        if became:
            refusal = self.rule.mark_refusal(self.primary_ack)
            assert refusal is None, refusal
            self.mark = True

    def _decide(self, first: int, last: int) -> None:
        """ReplicationPrimary._wait_for_standby's choice (degrade-to-async)."""
        if self.rule.must_wait():
            if last <= self.primary_ack:
                self.ok_max = max(self.ok_max, last)
            else:
                self.waiting.append((first, last))
        elif self.mark or self.rule.in_sync:
            pass  # the async gate: in doubt (the store may still mark the standby)
        else:
            self.rule.answered_alone(last)
            self.ok_max = max(self.ok_max, last)
            self.alone_max = max(self.alone_max, last)

    def _lose(self) -> None:
        """_lose_sync: the mark's clear is requested; waiters are released."""
        self.released += self.waiting
        self.waiting = []

    def append(self, n: int) -> None:
        first, self.P = self.P + 1, self.P + n
        self._decide(first, self.P)

    def send(self) -> None:
        if self.connected:
            self.sent = self.P

    def receive(self, data: st.DataObject) -> None:
        if self.connected:
            self.received = upto(data, self.received, self.sent)

    def write(self, data: st.DataObject) -> None:
        # Also after the link dropped: the standby writes what it had received.
        self.durable = upto(data, self.durable, self.received)

    def standby_ack(self, data: st.DataObject) -> None:
        if self.connected and not self.failed:
            self.ack_sent = upto(data, self.ack_sent, self.durable)

    def deliver_ack(self, data: st.DataObject) -> None:
        if not self.connected:
            return
        self.primary_ack = upto(data, self.primary_ack, self.ack_sent)
        became = self.rule.standby_acked(self.primary_ack, self.P)
        still = []
        for first, last in self.waiting:
            if last <= self.primary_ack:
                self.ok_max = max(self.ok_max, last)
            else:
                still.append((first, last))
        self.waiting = still
        self._mark_if(became)

    def flow(self, data: st.DataObject) -> None:
        """The stream moving: sent, received, written, acknowledged, delivered (each
        step drawn, often all the way)."""
        self.send()
        self.receive(data)
        self.write(data)
        self.standby_ack(data)
        self.deliver_ack(data)

    def link_lost(self) -> None:
        if self.connected:
            self.connected = False
            self.rule.link_lost()
            self._lose()

    def standby_error(self) -> None:
        if self.connected and not self.failed:
            self.failed = True
            self.rule.standby_failed()
            self._lose()

    def mark_cleared(self) -> None:
        if self.mark and not self.rule.in_sync:
            self.mark = False

    def reconnect(self, data: st.DataObject) -> None:
        if self.connected:
            return
        # The common point is at most what the standby really holds; below it when the
        # standby was re-seeded or cut back (never while the store still marks it).
        common = self.durable if self.mark else data.draw(st.integers(0, self.durable))
        self.durable = self.received = self.sent = self.ack_sent = self.primary_ack = common
        self.connected, self.failed = True, False
        self._mark_if(self.rule.session_started(common, self.P))

    def wake_released(self, data: st.DataObject) -> None:
        if self.released:
            first, last = self.released.pop(data.draw(st.integers(0, len(self.released) - 1)))
            if self.primary_ack >= last and self.connected:
                self.ok_max = max(self.ok_max, last)
                return
            if self.connected and self.primary_ack >= first:
                self.ok_max = max(self.ok_max, self.primary_ack)
                first = self.primary_ack + 1
            self._decide(first, last)

    def time_out(self, data: st.DataObject) -> None:
        if self.waiting:
            first, last = self.waiting.pop(data.draw(st.integers(0, len(self.waiting) - 1)))
            if self.primary_ack >= first:
                self.ok_max = max(self.ok_max, min(self.primary_ack, last))
            # the rest is in doubt: never promised

    # ------------------------------------------------------------------ the checks

    def check(self) -> None:
        if self.rule.in_sync:
            assert self.alone_max <= self.durable, (
                f"in sync, but seq {self.alone_max} was answered alone and the standby holds {self.durable}")
            assert self.ok_max <= self.durable, f"in sync, ok up to {self.ok_max}, standby holds {self.durable}"
        if self.mark:
            assert self.ok_max <= self.durable, (
                f"the store marks the standby, ok up to {self.ok_max}, standby holds {self.durable}")
        if self.connected and self.rule.acked_seq is not None:
            assert self.rule.acked_seq <= self.durable

    def settle(self) -> None:
        """Everything reaches the standby and is acknowledged: it must be in sync."""
        if not self.connected or self.failed:
            self.link_lost()
            self.durable = self.received
            self.connected = False
            self.reconnect_at(self.durable)
        self.sent = self.received = self.durable = self.ack_sent = self.P
        self.primary_ack = self.P
        self._mark_if(self.rule.standby_acked(self.P, self.P))
        self.check()
        assert self.rule.in_sync, f"everything acknowledged, yet not in sync: {self.rule}"

    def reconnect_at(self, common: int) -> None:
        self.durable = self.received = self.sent = self.ack_sent = self.primary_ack = common
        self.connected, self.failed = True, False
        self._mark_if(self.rule.session_started(common, self.P))


OPS = ["append"] * 4 + ["send", "receive", "write", "standby_ack", "deliver_ack"] * 2 + ["flow"] * 3 + [
    "link_lost", "standby_error", "mark_cleared", "reconnect", "reconnect", "wake_released", "time_out"]
NEEDS_DATA = {"receive", "write", "standby_ack", "deliver_ack", "flow", "reconnect", "wake_released", "time_out"}


def run(rule: InSyncRule, data: st.DataObject) -> None:
    model = Model(rule)
    for _ in range(data.draw(st.integers(1, 80), label="steps")):
        op = data.draw(st.sampled_from(OPS), label="op")
        if op == "append":
            model.append(data.draw(st.integers(1, 50), label="records"))
        elif op in NEEDS_DATA:
            getattr(model, op)(data)
        else:
            getattr(model, op)()
        model.check()
    model.settle()


@settings(max_examples=400)
@given(st.data(), st.integers(0, 100), st.integers(1, 4))
def test_in_sync_implies_the_standby_holds_every_acknowledged_record(data: st.DataObject, gap: int,
                                                                     rounds: int) -> None:
    """With small converge gaps and round limits, so that extra catch-up rounds happen."""
    run(InSyncRule(converge_gap=gap, max_rounds=rounds), data)


def test_the_rule_it_replaces_is_caught_by_the_same_property() -> None:
    """The property has teeth: with the old rule the hole of issue 14 is found."""

    @settings(max_examples=2000, phases=[Phase.generate], database=None)
    @given(st.data())
    def old(data: st.DataObject) -> None:
        run(CatchUpTargetOnly(), data)

    with pytest.raises(AssertionError, match="answered alone|ok up to"):
        old()


# ------------------------------------------------------------------ the schedule, by hand


def test_records_answered_alone_during_catch_up_keep_the_standby_out_of_sync() -> None:
    """Issue 14's numbers: common 11 900, target 83 600, records answered alone up to
    90 000 while the standby acknowledges 87 100."""
    rule = InSyncRule()
    rule.answered_alone(11_900 + 71_700)  # the link was cut: everything alone
    assert not rule.session_started(11_900, 83_600)
    assert not rule.must_wait()  # catching up: appends are not held back
    rule.answered_alone(90_000)  # the writer keeps appending during the catch-up
    # Past the target, not past the records answered alone: 2 900 behind, more than
    # CONVERGE_GAP, so another catch-up round to the journal's end (appends alone).
    assert not rule.standby_acked(87_100, 90_000)
    assert not rule.in_sync and not rule.must_wait() and rule.target == 90_000 and rule.rounds == 2
    assert rule.mark_refusal(87_100) == "the standby is not in sync"
    rule.answered_alone(90_500)
    # The round's target reached, 500 behind: converging, appends wait for the standby.
    assert not rule.standby_acked(90_000, 90_500)
    assert not rule.in_sync and rule.converging and rule.must_wait()
    assert not rule.standby_acked(90_499, 90_600)
    assert rule.standby_acked(90_500, 90_600)  # now it holds every record answered alone
    assert rule.in_sync and rule.mark_refusal(90_500) is None


def test_the_guard_refuses_a_mark_the_invariant_does_not_allow() -> None:
    rule = InSyncRule()
    assert rule.session_started(10, 10)
    assert rule.mark_refusal(10) is None
    assert rule.mark_refusal(9) is not None  # the shell's own view disagrees
    rule.alone_seq = 20  # as if a bug bypassed answered_alone's bookkeeping
    assert "answered ok without the standby" in (rule.mark_refusal(10) or "")
    rule.revoke()
    assert not rule.in_sync


def test_answered_alone_while_in_sync_drops_sync_and_a_write_error_keeps_it_out() -> None:
    rule = InSyncRule()
    assert rule.session_started(5, 5)
    rule.answered_alone(5)
    assert rule.in_sync  # already acknowledged
    rule.answered_alone(6)
    assert not rule.in_sync
    assert rule.standby_acked(6, 6)
    rule.standby_failed()
    assert not rule.in_sync and not rule.must_wait()
    assert not rule.standby_acked(7, 7)
    rule.link_lost()
    assert not rule.standby_acked(8, 8)  # a replaced session's last words change nothing
    assert rule.acked_seq is None
    assert rule.session_started(8, 8)  # a new session starts clean


def test_rounds_are_bounded_then_appends_wait() -> None:
    """A standby that replays slower than the writers append still ends in sync: after
    MAX_ROUNDS rounds the appends wait for it."""
    rule = InSyncRule(converge_gap=10, max_rounds=3)
    assert not rule.session_started(0, 100)
    last = 100
    for _ in range(5):
        last += 100
        rule.answered_alone(last)
        rule.standby_acked(rule.target, last)
    assert rule.rounds == 3 and rule.converging and rule.must_wait()
    assert rule.standby_acked(last, last)


def test_a_session_beyond_the_journal_is_refused() -> None:
    with pytest.raises(ValueError):
        InSyncRule().session_started(5, 4)
