"""The executor under a MockClock: timeouts (timed_out, not failed), abort, continue,
rollback order, dry runs that change nothing, preconditions that block, one playbook at a
time (refuse or wait), the audit trail; and the trigger matcher's where and cooldown."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.executor import (
    PRECONDITION_TIMEOUT,
    ActionFailed,
    BusyError,
    Executor,
    RunReport,
    TriggerMatcher,
)
from recovery.playbook import Playbook, Precondition, Step, Trigger, parse_playbook

EXPIRES = datetime(2027, 6, 30, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- fakes


class FakeRunner:
    """Actions are identified by ``args["message"]`` (notify steps) or the action name.
    ``behaviour[id]``: "ok", "fail", "boom" (a bug: RuntimeError), "hang" (never returns),
    or a number of seconds to take before succeeding."""

    def __init__(self, behaviour: dict[str, Any] | None = None,
                 checks: dict[str, Any] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.checks = checks or {}
        self.calls: list[tuple[str, str, bool]] = []  # (id, action, dry_run)
        self.times: list[tuple[str, float]] = []
        self.check_calls: list[tuple[str, dict[str, Any]]] = []
        self.cancelled: list[str] = []

    async def run(self, action: str, args: dict[str, Any], *, dry_run: bool) -> str:
        ident = args.get("message", action)
        self.calls.append((ident, action, dry_run))
        self.times.append((ident, trio.current_time()))
        what = self.behaviour.get(ident, "ok")
        try:
            if what == "fail":
                raise ActionFailed(f"{ident} could not be done")
            if what == "boom":
                raise RuntimeError(f"bug in {ident}")
            if what == "hang":
                await trio.sleep_forever()
            if isinstance(what, (int, float)):
                await trio.sleep(what)
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancelled.append(ident)
            raise
        return f"{'would do' if dry_run else 'did'} {ident}"

    async def check(self, name: str, params: dict[str, Any]) -> tuple[bool, str]:
        self.check_calls.append((name, params))
        what = self.checks.get(name, True)
        if what == "hang":
            await trio.sleep_forever()
        if what == "boom":
            raise RuntimeError("checker broke")
        if what == "fail":
            raise ActionFailed(f"cannot tell {name}")
        await trio.lowlevel.checkpoint()
        return (bool(what), f"{name} {'holds' if what else 'does not hold'}")


class FakeAudit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.entries.append((kind, fields))
        return {"kind": kind, **fields}

    def kinds(self) -> list[str]:
        return [k for k, _ in self.entries]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f in self.entries if k == kind]


class FakeRollbackState:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.recorded: list[tuple[str, int]] = []

    def record_run(self, name: str, version: int) -> None:
        if self.fail:
            raise OSError("No space left on device")
        self.recorded.append((name, version))


def step(ident: str, *, timeout: float = 30.0, on_failure: str = "abort", undo: str | None = None,
         undo_timeout: float = 30.0) -> Step:
    rollback = (Step("notify", {"message": undo, "level": "info"}, undo_timeout, "continue", None)
                if undo is not None else None)
    return Step("notify", {"message": ident, "level": "info"}, timeout, on_failure, rollback)  # type: ignore[arg-type]


def playbook(*steps: Step, name: str = "drill", version: int = 2, requires_role: str = "any",
             preconditions: tuple[Precondition, ...] = (), triggers: tuple[Trigger, ...] = (),
             cooldown: float = 300.0) -> Playbook:
    return Playbook(name=name, version=version, expires=EXPIRES, description="a drill",
                    requires_role=requires_role, cooldown=cooldown, triggers=triggers,
                    preconditions=preconditions, steps=tuple(steps))


def ran(runner: FakeRunner) -> list[str]:
    return [ident for ident, _, _ in runner.calls]


# --------------------------------------------------------------------------- running


async def test_all_steps_succeed_in_order(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"a": 1.0, "b": 2.5}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(playbook(step("a"), step("b"), step("c")))
    assert report.outcome == "succeeded"
    assert ran(runner) == ["a", "b", "c"]
    assert all(not dry for _, _, dry in runner.calls)
    assert [(r.index, r.status, r.duration_ms) for r in report.steps] == [
        (0, "ok", 1000.0), (1, "ok", 2500.0), (2, "ok", 0.0)]
    assert report.steps[0].message == "did a"
    assert report.duration_ms == 3500.0
    assert report.summary == "playbook drill v2 succeeded: 3 steps in 3.5s"
    assert audit.kinds() == ["run.started", "step", "step", "step", "run.finished"]
    assert audit.of("run.started")[0]["trigger"] == "manual"
    assert audit.of("step")[1] == {"playbook": "drill", "version": 2, "dry_run": False, "index": 1,
                                   "action": "notify", "status": "ok", "duration_ms": 2500.0,
                                   "message": "did b"}
    assert audit.of("run.finished")[0]["outcome"] == "succeeded"


async def test_step_timeout_is_timed_out_not_failed(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"slow": "hang"}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(
            playbook(step("a"), step("slow", timeout=10.0), step("c")))
    assert report.outcome == "aborted"
    assert [r.status for r in report.steps] == ["ok", "timed_out", "skipped"]
    slow = report.steps[1]
    assert slow.duration_ms == 10000.0  # exactly the step's timeout, in virtual time
    assert slow.message == "no result within 10s; the action was cancelled"
    assert runner.cancelled == ["slow"]
    assert ran(runner) == ["a", "slow"]
    assert report.summary.startswith("playbook drill v2 aborted: step[1] notify timed_out: no result within 10s")


async def test_failed_and_timed_out_are_distinct_under_continue(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"bad": "fail", "slow": "hang"}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(playbook(
            step("bad", on_failure="continue"), step("slow", timeout=0.5, on_failure="continue"), step("c")))
    assert [r.status for r in report.steps] == ["failed", "timed_out", "ok"]
    assert report.steps[0].message == "bad could not be done"
    assert report.steps[1].duration_ms == 500.0
    assert ran(runner) == ["bad", "slow", "c"]
    assert report.outcome == "failed"
    assert report.summary == ("playbook drill v2 failed: 2 of 3 steps failed under on_failure = continue "
                              "(step[0] notify failed: bad could not be done)")
    assert [f["status"] for f in audit.of("step")] == ["failed", "timed_out", "ok"]


async def test_abort_skips_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"b": "fail"}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(
            playbook(step("a", undo="undo-a"), step("b"), step("c"), step("d")))
    assert ran(runner) == ["a", "b"]  # no rollback either: on_failure = abort
    assert report.outcome == "aborted"
    assert [r.status for r in report.steps] == ["ok", "failed", "skipped", "skipped"]
    assert report.steps[2].message == "step[1] failed, on_failure = abort"
    assert report.rollback == ()
    assert report.summary == "playbook drill v2 aborted: step[1] notify failed: b could not be done; 2 steps skipped"
    assert audit.kinds() == ["run.started", "step", "step", "step", "step", "run.finished"]


async def test_rollback_undoes_completed_steps_newest_first(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"d": "fail"}), FakeAudit()
    pb = playbook(step("a", undo="undo-a"), step("b"), step("c", undo="undo-c"),
                  step("d", on_failure="rollback", undo="undo-d"), step("e", undo="undo-e"))
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(pb)
    # b has no rollback; d did not complete; e never ran.
    assert ran(runner) == ["a", "b", "c", "d", "undo-c", "undo-a"]
    assert report.outcome == "rolled_back"
    assert [(r.index, r.status) for r in report.rollback] == [(2, "ok"), (0, "ok")]
    assert [r.status for r in report.steps] == ["ok", "ok", "ok", "failed", "skipped"]
    assert report.summary == ("playbook drill v2 rolled back: step[3] notify failed: d could not be done; "
                              "2 rollback steps ran, 1 steps skipped")
    assert audit.kinds() == ["run.started", "step", "step", "step", "step", "rollback.step", "rollback.step",
                             "step", "run.finished"]
    assert [f["index"] for f in audit.of("rollback.step")] == [2, 0]


async def test_a_failed_rollback_step_does_not_stop_the_others(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"x": "fail", "undo-b": "hang", "undo-c": "fail"}), FakeAudit()
    pb = playbook(step("a", undo="undo-a"), step("b", undo="undo-b", undo_timeout=3.0), step("c", undo="undo-c"),
                  step("x", on_failure="rollback"))
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(pb)
    assert ran(runner) == ["a", "b", "c", "x", "undo-c", "undo-b", "undo-a"]
    assert [(r.index, r.status) for r in report.rollback] == [(2, "failed"), (1, "timed_out"), (0, "ok")]
    assert report.rollback[1].duration_ms == 3000.0  # the rollback step's own timeout
    assert report.outcome == "failed"
    assert "rollback incomplete: rollback of step[2] notify failed: undo-c could not be done" in report.summary


async def test_rollback_after_a_timeout(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"b": "hang"}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(
            playbook(step("a", undo="undo-a"), step("b", timeout=2.0, on_failure="rollback", undo="undo-b")))
    assert ran(runner) == ["a", "b", "undo-a"]
    assert report.outcome == "rolled_back"


OUTCOMES = st.sampled_from(["ok", "fail", "hang"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(OUTCOMES, st.sampled_from(["abort", "continue", "rollback"]), st.booleans()),
                min_size=1, max_size=8))
def test_rollback_runs_exactly_the_completed_steps_in_reverse(script: list[tuple[str, str, bool]]) -> None:
    steps = [step(f"s{i}", timeout=1.0, on_failure=on_failure, undo=f"u{i}" if has_undo else None)
             for i, (_, on_failure, has_undo) in enumerate(script)]
    behaviour = {f"s{i}": outcome for i, (outcome, _, _) in enumerate(script)}

    # The model: run until the first failure whose on_failure is not "continue".
    expected_ran, completed, stop, expected_undo = [], [], None, []
    for i, (outcome, on_failure, has_undo) in enumerate(script):
        expected_ran.append(f"s{i}")
        if outcome == "ok":
            completed.append(i)
            continue
        if on_failure == "continue":
            continue
        stop = on_failure
        if on_failure == "rollback":
            expected_undo = [f"u{j}" for j in reversed(completed) if script[j][2]]
        break
    expected_outcome = {"abort": "aborted", "rollback": "rolled_back"}.get(stop or "") or (
        "succeeded" if all(o == "ok" for o, _, _ in script) else "failed")

    async def main() -> RunReport:
        with trio.fail_after(1000):
            return await Executor(runner, FakeAudit()).run(playbook(*steps))

    runner = FakeRunner(behaviour)
    report = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ran(runner) == expected_ran + expected_undo
    assert [r.action for r in report.rollback] == ["notify"] * len(expected_undo)
    assert [r.index for r in report.rollback] == [int(u[1:]) for u in expected_undo]
    assert report.outcome == expected_outcome
    assert len(report.steps) == len(script)
    assert all(r.status == "skipped" for r in report.steps[len(expected_ran):])


async def test_a_runner_bug_is_a_failed_step_and_still_rolls_back(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"b": "boom"}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(
            playbook(step("a", undo="undo-a"), step("b", on_failure="rollback")))
    assert report.steps[1].status == "failed"
    assert report.steps[1].message == "RuntimeError: bug in b"
    assert ran(runner) == ["a", "b", "undo-a"]
    assert report.outcome == "rolled_back"


# --------------------------------------------------------------------------- dry run


async def test_dry_run_calls_the_runner_only_with_dry_run(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit, state = FakeRunner(), FakeAudit(), FakeRollbackState()
    pb = playbook(step("a", undo="undo-a"), step("b", on_failure="rollback"), step("c"),
                  preconditions=(Precondition("uplink_active", {"equals": "starlink"}),), requires_role="primary")
    with trio.fail_after(100):
        report = await Executor(runner, audit, rollback_state=state).run(pb, dry_run=True)
    assert report.outcome == "dry_run" and report.dry_run
    assert runner.calls == [("a", "notify", True), ("b", "notify", True), ("c", "notify", True)]
    assert [name for name, _ in runner.check_calls] == ["role", "uplink_active"]
    assert state.recorded == []  # a dry run is not a run: the version is not recorded
    assert report.summary == "playbook drill v2 dry run: preconditions hold, 3 steps planned, nothing changed"
    assert all(f["dry_run"] for _, f in audit.entries)
    assert report.steps[0].message == "would do a"


async def test_dry_run_offers_every_step_and_reports_the_ones_rejected(
        autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"a": "fail", "b": "hang"}), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit).run(
            playbook(step("a", undo="undo-a"), step("b", timeout=1.0, on_failure="rollback"), step("c")),
            dry_run=True)
    assert runner.calls == [("a", "notify", True), ("b", "notify", True), ("c", "notify", True)]
    assert [r.status for r in report.steps] == ["failed", "timed_out", "ok"]
    assert report.outcome == "failed" and report.dry_run
    assert report.rollback == ()
    assert report.summary.startswith("playbook drill v2 dry run failed: 2 of 3 steps would not run")


async def test_dry_run_does_not_take_the_lock(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"long": 60.0}), FakeAudit()
    executor = Executor(runner, audit, on_busy="refuse")
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, playbook(step("long", timeout=120.0), name="first"))
            await trio.testing.wait_all_tasks_blocked()
            report = await executor.run(playbook(step("x")), dry_run=True)
            assert report.outcome == "dry_run"
            assert executor.running == "first"


# --------------------------------------------------------------------------- preconditions


async def test_a_failed_precondition_runs_nothing(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(checks={"uplink_active": False})
    audit, state = FakeAudit(), FakeRollbackState()
    pb = playbook(step("a"), preconditions=(Precondition("role", {"equals": "primary"}),
                                            Precondition("uplink_active", {"equals": "starlink"})))
    with trio.fail_after(100):
        report = await Executor(runner, audit, rollback_state=state).run(pb)
    assert runner.calls == []
    assert state.recorded == []
    assert report.outcome == "refused"
    assert [(c.check, c.ok) for c in report.preconditions] == [("role", True), ("uplink_active", False)]
    assert report.summary == ("playbook drill v2 refused: precondition uplink_active equals=starlink does not "
                              "hold (uplink_active does not hold); no step ran")
    assert audit.kinds() == ["run.refused"]
    assert audit.of("run.refused")[0]["reason"] == "precondition"
    assert any("NOT MET" in line for line in report.lines())


async def test_requires_role_is_checked_first(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(checks={"role": False})
    with trio.fail_after(100):
        report = await Executor(runner, FakeAudit()).run(
            playbook(step("a"), requires_role="standby",
                     preconditions=(Precondition("uplink_active", {"equals": "fibre"}),)))
    assert runner.check_calls[0] == ("role", {"equals": "standby"})
    assert report.outcome == "refused" and runner.calls == []


async def test_requires_role_any_asks_nothing(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner()
    with trio.fail_after(100):
        await Executor(runner, FakeAudit()).run(playbook(step("a")))
    assert runner.check_calls == []


@pytest.mark.parametrize(("behaviour", "message"), [
    ("boom", "RuntimeError: checker broke"),
    ("fail", "cannot tell role"),
    ("hang", "no answer within 10s"),
])
async def test_a_check_that_breaks_or_hangs_does_not_hold(
        autojump_clock: trio.testing.MockClock, behaviour: str, message: str) -> None:
    runner = FakeRunner(checks={"role": behaviour})
    with trio.fail_after(100):
        start = trio.current_time()
        report = await Executor(runner, FakeAudit()).run(playbook(step("a"), requires_role="primary"))
    assert report.outcome == "refused" and runner.calls == []
    assert report.preconditions[0].message == message
    if behaviour == "hang":
        assert trio.current_time() - start == PRECONDITION_TIMEOUT


async def test_a_failed_precondition_in_a_dry_run_is_refused_too(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(checks={"role": False})
    with trio.fail_after(100):
        report = await Executor(runner, FakeAudit()).run(playbook(step("a"), requires_role="primary"), dry_run=True)
    assert report.outcome == "refused" and runner.calls == []


# --------------------------------------------------------------------------- anti-rollback state


async def test_the_version_is_recorded_when_a_run_starts(autojump_clock: trio.testing.MockClock) -> None:
    state = FakeRollbackState()
    runner = FakeRunner()
    with trio.fail_after(100):
        await Executor(runner, FakeAudit(), rollback_state=state).run(playbook(step("a"), name="fibre-lost",
                                                                               version=7))
    assert state.recorded == [("fibre-lost", 7)]


async def test_a_version_that_cannot_be_recorded_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner(), FakeAudit()
    with trio.fail_after(100):
        report = await Executor(runner, audit, rollback_state=FakeRollbackState(fail=True)).run(playbook(step("a")))
    assert report.outcome == "refused" and runner.calls == []
    assert "cannot record version 2 in the anti-rollback state (OSError: No space left on device)" in report.summary
    assert audit.of("run.refused")[0]["reason"] == "state"


# --------------------------------------------------------------------------- one at a time


async def test_busy_refuse(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"long": 60.0}), FakeAudit()
    executor = Executor(runner, audit, on_busy="refuse")
    reports: list[RunReport] = []

    async def first() -> None:
        reports.append(await executor.run(playbook(step("long", timeout=120.0), name="first")))

    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            assert executor.running == "first"
            with pytest.raises(BusyError) as info:
                await executor.run(playbook(step("x"), name="second"), trigger={"kind": "RoleChanged"})
            assert info.value.running == "first" and info.value.requested == "second"
            assert str(info.value) == ('playbook second refused: playbook first is running (one at a time; set '
                                       'recovery.on_busy = "wait" to queue instead)')
        assert reports[0].outcome == "succeeded"
        assert executor.running is None
        # Free again.
        assert (await executor.run(playbook(step("y"), name="third"))).outcome == "succeeded"
    assert ran(runner) == ["long", "y"]
    refused = audit.of("run.refused")
    assert len(refused) == 1
    assert refused[0]["playbook"] == "second" and refused[0]["reason"] == "busy"
    assert refused[0]["trigger"] == "RoleChanged"


async def test_busy_wait_runs_them_in_order(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"p1": 10.0, "p2": 10.0, "p3": 10.0}), FakeAudit()
    executor = Executor(runner, audit, on_busy="wait")
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            for i in (1, 2, 3):
                nursery.start_soon(executor.run, playbook(step(f"p{i}"), name=f"pb{i}"))
                await trio.testing.wait_all_tasks_blocked()
            assert executor.running == "pb1"
            assert executor.waiting == 2
    assert runner.times == [("p1", 0.0), ("p2", 10.0), ("p3", 20.0)]
    assert [f["playbook"] for f in audit.of("run.started")] == ["pb1", "pb2", "pb3"]
    assert executor.waiting == 0 and executor.running is None


def test_on_busy_must_be_refuse_or_wait() -> None:
    with pytest.raises(ValueError, match='on_busy must be "refuse" or "wait"'):
        Executor(FakeRunner(), FakeAudit(), on_busy="queue")


async def test_cancelled_from_outside_ends_aborted_in_the_audit(autojump_clock: trio.testing.MockClock) -> None:
    runner, audit = FakeRunner({"b": "hang"}), FakeAudit()
    executor = Executor(runner, audit)
    with trio.fail_after(1000):
        with trio.move_on_after(5):
            await executor.run(playbook(step("a", undo="undo-a"), step("b", timeout=60.0, on_failure="rollback")))
        assert ran(runner) == ["a", "b"]  # no rollback while being stopped
        assert audit.kinds()[-1] == "run.finished"
        finished = audit.of("run.finished")[0]
        assert finished["outcome"] == "aborted"
        assert finished["summary"] == "playbook drill v2 aborted: interrupted (Cancelled) after 1 of 2 steps"
        assert executor.running is None
        assert (await executor.run(playbook(step("c")))).outcome == "succeeded"  # the lock was released


# --------------------------------------------------------------------------- reports and inputs


@dataclass
class Signer:
    key_id: str
    holder: str


@dataclass
class Verified:
    playbook: Playbook
    signers: list[Signer]


async def test_a_verified_playbook_reports_its_signers(autojump_clock: trio.testing.MockClock) -> None:
    audit = FakeAudit()
    verified = Verified(playbook(step("a")), [Signer("ab" * 16, "alice"), Signer("cd" * 16, "bob")])
    with trio.fail_after(100):
        report = await Executor(FakeRunner(), audit).run(verified, trigger={"kind": "ActiveUplinkChanged",
                                                                            "active": "starlink"})
    assert report.verified_by == ("alice", "bob")
    assert report.trigger == "ActiveUplinkChanged"
    started = audit.of("run.started")[0]
    assert started["verified_by"] == ["alice", "bob"]
    assert started["event"] == {"kind": "ActiveUplinkChanged", "active": "starlink"}
    assert report.lines()[0] == ("playbook drill v2 succeeded: 1 steps in 0ms (trigger ActiveUplinkChanged; "
                                 "signed by alice, bob)")


async def test_explicit_verified_by_wins(autojump_clock: trio.testing.MockClock) -> None:
    verified = Verified(playbook(step("a")), [Signer("ab" * 16, "alice")])
    report = await Executor(FakeRunner(), FakeAudit()).run(verified, verified_by=("k1", "k2"))
    assert report.verified_by == ("k1", "k2")


async def test_run_refuses_what_is_not_a_playbook() -> None:
    with pytest.raises(TypeError, match="needs a Playbook"):
        await Executor(FakeRunner(), FakeAudit()).run(object())


async def test_report_lines(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner({"b": "fail", "a": 0.25})
    with trio.fail_after(100):
        report = await Executor(runner, FakeAudit()).run(
            playbook(step("a", undo="undo-a"), step("b", on_failure="rollback"), step("c"),
                     preconditions=(Precondition("role", {"equals": "primary"}),)))
    assert report.lines() == [
        ("playbook drill v2 rolled back: step[1] notify failed: b could not be done; 1 rollback steps ran, "
         "1 steps skipped (trigger manual)"),
        "  precondition role equals=primary: ok - role holds",
        ("  step[0] notify message=a level=info (timeout 30s, on_failure abort, rollback notify message=undo-a "
         "level=info): ok in 250ms - did a"),
        ("  step[1] notify message=b level=info (timeout 30s, on_failure rollback): failed in 0ms - b could not "
         "be done"),
        ("  step[2] notify message=c level=info (timeout 30s, on_failure abort): skipped - step[1] failed, "
         "on_failure = rollback"),
        "  rollback of step[0] notify: ok in 0ms - did undo-a",
    ]


async def test_the_runner_gets_a_copy_of_the_args(autojump_clock: trio.testing.MockClock) -> None:
    class Mutating(FakeRunner):
        async def run(self, action: str, args: dict[str, Any], *, dry_run: bool) -> str:
            args["message"] = "changed"
            return "ok"

    pb = playbook(step("a"))
    await Executor(Mutating(), FakeAudit()).run(pb)
    assert pb.steps[0].args["message"] == "a"


async def test_a_parsed_playbook_runs(autojump_clock: trio.testing.MockClock) -> None:
    pb = parse_playbook(b"""
name = "fibre-lost"
version = 3
expires = 2027-06-30T00:00:00Z
description = "Fibre is gone: pin Starlink, tell the desk."
requires_role = "primary"
[[step]]
action = "uplink.use"
args = { name = "starlink" }
timeout = "10s"
on_failure = "rollback"
[step.rollback]
action = "uplink.auto"
[[step]]
action = "exec"
args = { argv = ["/usr/local/bin/page-desk", "--fibre"] }
timeout = "2s"
on_failure = "rollback"
""", "fibre-lost.toml")
    runner = FakeRunner({"exec": "hang"})
    with trio.fail_after(100):
        report = await Executor(runner, FakeAudit()).run(pb)
    assert runner.check_calls == [("role", {"equals": "primary"})]
    assert [a for _, a, _ in runner.calls] == ["uplink.use", "exec", "uplink.auto"]
    assert [r.status for r in report.steps] == ["ok", "timed_out"]
    assert report.steps[1].duration_ms == 2000.0
    assert report.outcome == "rolled_back"


# --------------------------------------------------------------------------- triggers


def triggered(name: str, *triggers: Trigger, cooldown: float = 300.0) -> Playbook:
    return playbook(step("a"), name=name, triggers=triggers, cooldown=cooldown)


def uplink_event(active: str = "starlink", **extra: Any) -> dict[str, Any]:
    return {"kind": "ActiveUplinkChanged", "previous": "fibre", "active": active, "change": "failover",
            "reason": "fibre down", "detection_ms": 850.0, "route_ms": 3.0, **extra}


def test_trigger_matches_kind_and_where() -> None:
    fibre = triggered("fibre-lost", Trigger("ActiveUplinkChanged", {"active": "starlink"}))
    any_change = triggered("any-change", Trigger("ActiveUplinkChanged", {}))
    matcher = TriggerMatcher([fibre, any_change])
    assert matcher.match(uplink_event("fibre"), now=0.0) == [any_change]
    assert matcher.match({"kind": "RoleChanged", "role": "primary"}, now=1000.0) == []
    assert matcher.match(uplink_event("starlink"), now=2000.0) == [fibre, any_change]


def test_where_needs_every_field_present_and_equal() -> None:
    pb = triggered("p", Trigger("RoleChanged", {"role": "primary", "previous": "candidate"}), cooldown=0.0)
    matcher = TriggerMatcher([pb])
    assert matcher.match({"kind": "RoleChanged", "role": "primary", "previous": "candidate"}, 0.0) == [pb]
    assert matcher.match({"kind": "RoleChanged", "role": "primary", "previous": "standby"}, 1.0) == []
    assert matcher.match({"kind": "RoleChanged", "role": "primary"}, 2.0) == []  # field missing
    assert matcher.match({"role": "primary", "previous": "candidate"}, 3.0) == []  # no kind


def test_where_does_not_confuse_true_with_one() -> None:
    pb = triggered("p", Trigger("OperatorPromotion", {"accept_loss": True}), cooldown=0.0)
    counts = triggered("q", Trigger("UplinkFlowsFlushed", {"flows": 1}), cooldown=0.0)
    matcher = TriggerMatcher([pb, counts])
    assert matcher.match({"kind": "OperatorPromotion", "accept_loss": 1}, 0.0) == []
    assert matcher.match({"kind": "OperatorPromotion", "accept_loss": True}, 0.0) == [pb]
    assert matcher.match({"kind": "UplinkFlowsFlushed", "flows": True}, 0.0) == []
    assert matcher.match({"kind": "UplinkFlowsFlushed", "flows": 1.0}, 0.0) == [counts]


def test_an_event_storm_starts_a_playbook_once() -> None:
    pb = triggered("fibre-lost", Trigger("ActiveUplinkChanged", {"active": "starlink"}), cooldown=300.0)
    matcher = TriggerMatcher([pb])
    started = [p for i in range(100) for p in matcher.match(uplink_event(), now=1000.0 + i / 100)]
    assert started == [pb]
    assert matcher.cooldown_remaining(pb, 1001.0) == 299.0
    assert matcher.match(uplink_event(), now=1299.999) == []
    assert matcher.match(uplink_event(), now=1300.0) == [pb]  # the cooldown runs from the start


def test_cooldown_is_per_playbook() -> None:
    short = triggered("short", Trigger("UpsOnBattery", {}), cooldown=10.0)
    long = triggered("long", Trigger("UpsOnBattery", {}), cooldown=60.0)
    matcher = TriggerMatcher([short, long])
    event = {"kind": "UpsOnBattery", "device": "ups0"}
    assert matcher.match(event, 0.0) == [short, long]
    assert matcher.match(event, 10.0) == [short]
    assert matcher.match(event, 60.0) == [short, long]


def test_zero_cooldown_starts_every_time() -> None:
    pb = triggered("p", Trigger("UpsOnBattery", {}), cooldown=0.0)
    matcher = TriggerMatcher([pb])
    assert sum(len(matcher.match({"kind": "UpsOnBattery"}, 5.0)) for _ in range(3)) == 3


def test_two_triggers_of_one_playbook_start_it_once() -> None:
    pb = triggered("p", Trigger("RoleChanged", {}), Trigger("RoleChanged", {"role": "primary"}))
    assert TriggerMatcher([pb]).match({"kind": "RoleChanged", "role": "primary"}, 0.0) == [pb]


def test_update_keeps_the_cooldown_of_playbooks_still_present() -> None:
    a = triggered("a", Trigger("UpsOnBattery", {}))
    b = triggered("b", Trigger("UpsOnBattery", {}))
    matcher = TriggerMatcher([a, b])
    assert matcher.match({"kind": "UpsOnBattery"}, 0.0) == [a, b]
    a2 = triggered("a", Trigger("UpsOnBattery", {}))
    matcher.update([a2])
    assert matcher.match({"kind": "UpsOnBattery"}, 1.0) == []
    matcher.update([a2, b])  # b was dropped and came back: no cooldown remembered
    assert matcher.match({"kind": "UpsOnBattery"}, 2.0) == [b]


def test_match_accepts_an_event_object() -> None:
    from daemon.core.events import UpsOnBattery

    pb = triggered("ups", Trigger("UpsOnBattery", {"device": "ups0"}))
    assert TriggerMatcher([pb]).match(UpsOnBattery(device="ups0"), 0.0) == [pb]  # type: ignore[arg-type]


def test_a_parsed_trigger_matches_a_real_event() -> None:
    from daemon.core.events import ActiveUplinkChanged

    pb = parse_playbook(b"""
name = "fibre-lost"
version = 1
expires = 2027-06-30T00:00:00Z
description = "d"
cooldown = "1m"
[[trigger]]
event = "ActiveUplinkChanged"
where = { active = "starlink", change = "failover" }
[[step]]
action = "uplink.auto"
""", "fibre-lost.toml")
    event = ActiveUplinkChanged(previous="fibre", active="starlink", change="failover", reason="down",
                                detection_ms=1.0, route_ms=1.0).to_dict()
    matcher = TriggerMatcher([pb])
    assert matcher.match(event, 0.0) == [pb]
    assert matcher.match(event, 59.0) == []
    assert matcher.match(event, 60.0) == [pb]
