"""The executor: runs a verified playbook step by step, and the trigger matcher.

:class:`Executor` runs one playbook at a time. Each step runs under its own
``trio.move_on_after(step.timeout)``: a step that overruns is cancelled and reported
``timed_out``, never confused with one that reported ``failed``. On a failure the step's
``on_failure`` decides: ``abort`` (skip the rest), ``continue``, or ``rollback`` (run the
rollback steps of the steps that completed, newest first, each under its own timeout,
then skip the rest). Preconditions (and ``requires_role``) are asked of the runner before
any step: one that does not hold means nothing runs. Every decision goes to the audit
log (``audit.append(kind, **fields)``) and the :class:`RunReport` says it in sentences.

The executor does no I/O of its own: actions and checks go through the
:class:`ActionRunner` the daemon supplies (tests pass a fake), records through the
audit object. :class:`TriggerMatcher` is sans-IO: events and ``now`` in, playbooks out.

Decisions where the shared contract (spec/issue7.md) is silent:

* ``run()`` takes a :class:`~recovery.playbook.Playbook` or anything with a ``playbook``
  attribute (the verifier's ``Verified``); with the latter, ``verified_by`` defaults to
  its ``signers`` (each shown by its ``holder``, else ``key_id``, else ``str()``).
  Verification itself is the caller's job: the executor trusts what it is given.
* Outcomes: ``succeeded`` every step ok; ``aborted`` a step failed with ``abort`` (or the
  run was cancelled from outside); ``rolled_back`` a step failed with ``rollback`` and
  every rollback step succeeded; ``failed`` the run reached its end with steps that
  failed under ``continue``, or a rollback step failed (the rollback is incomplete);
  ``refused`` a precondition did not hold (or the anti-rollback state could not be
  recorded); ``dry_run`` a dry run whose every step's plan was accepted.
* A step that did not complete (failed, timed out) is not rolled back: "completed" means
  status ``ok``. A failed rollback step does not stop the others.
* Dry run: preconditions are checked, then *every* step is offered to the runner with
  ``dry_run=True`` (``on_failure`` is not applied, so one dry run shows every problem); a
  step the runner rejects makes the outcome ``failed`` with ``report.dry_run`` true.
  Rollback steps are listed in the plan but not offered. A dry run does not take the
  one-at-a-time lock, does not record the version and does not count for cooldowns.
* Preconditions are checked after the lock is taken (the world may change while a run
  waits), each bounded by :data:`PRECONDITION_TIMEOUT`; a check that raises or overruns
  does not hold.
* ``rollback_state`` (optional, ``record_run(name, version)``) is called when a real run
  starts: after its preconditions hold, before its first step. If it raises, the run is
  refused: fail closed, since an unrecorded version could later be rolled back.
* A runner raising something other than :class:`ActionFailed` is a bug there, but the
  step is still reported ``failed`` (with the exception's type) so ``on_failure`` and the
  rollback still apply; ``trio.Cancelled`` from outside is not caught: the run ends
  ``aborted`` in the audit log (no rollback runs while the daemon is being stopped) and
  the cancellation propagates. Errors raised by ``audit.append`` propagate.
* The cooldown runs from the moment :meth:`TriggerMatcher.match` returns a playbook
  (whether or not the executor then accepts it); manual runs do not touch it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from daemon.core.acl import audit_by
from daemon.core.durations import format_duration
from daemon.core.events import Event
from daemon.core.log import get_logger
from recovery.errors import RecoveryError
from recovery.playbook import Playbook, Precondition, Step

log = get_logger("recovery")

#: How long one precondition check may take before it counts as not holding.
PRECONDITION_TIMEOUT = 10.0

Outcome = Literal["succeeded", "failed", "aborted", "rolled_back", "refused", "dry_run"]
Status = Literal["ok", "failed", "timed_out", "skipped"]


class ActionFailed(RecoveryError):
    """An action could not be carried out; ``message`` is one line for the operators."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BusyError(RecoveryError):
    """A playbook was asked to run while another one runs and ``on_busy="refuse"``."""

    def __init__(self, requested: str, running: str) -> None:
        super().__init__(f"playbook {requested} refused: playbook {running} is running "
                         f'(one at a time; set recovery.on_busy = "wait" to queue instead)')
        self.requested = requested
        self.running = running


class ActionRunner(Protocol):
    """Carries out actions for the executor. The daemon supplies the real one."""

    async def run(self, action: str, args: dict[str, Any], *, dry_run: bool) -> str:
        """Do ``action`` (or, with ``dry_run``, only say what would be done and whether it
        could be: change nothing). Return a one-line result; raise
        :class:`ActionFailed` with a one-line message on failure. Cancellation (the
        step's timeout) may arrive at any checkpoint."""
        ...

    async def check(self, name: str, params: dict[str, Any]) -> tuple[bool, str]:
        """Evaluate a precondition (see recovery.playbook.PRECONDITIONS) without changing
        anything: ``(holds, one-line explanation)``."""
        ...


class Audit(Protocol):
    def append(self, kind: str, /, **fields: Any) -> Any: ...


@dataclass(frozen=True)
class CheckResult:
    check: str
    params: dict[str, Any]
    ok: bool
    message: str

    def line(self) -> str:
        return f"precondition {self.check} {_args_text(self.params)}: {'ok' if self.ok else 'NOT MET'} - {self.message}"


@dataclass(frozen=True)
class StepResult:
    """One step's (or one rollback step's) fate. ``index`` is the step's position in the
    playbook (for a rollback step: the position of the step it undoes)."""

    index: int
    action: str
    status: Status
    duration_ms: float
    message: str


@dataclass(frozen=True)
class RunReport:
    playbook: str
    version: int
    outcome: Outcome
    summary: str
    dry_run: bool = False
    trigger: str = "manual"
    verified_by: tuple[str, ...] = ()
    preconditions: tuple[CheckResult, ...] = ()
    steps: tuple[StepResult, ...] = ()
    rollback: tuple[StepResult, ...] = ()
    duration_ms: float = 0.0
    #: The plan: each step as "action k=v ..." (and its rollback), for lines().
    plan: tuple[str, ...] = field(default=(), repr=False)

    def lines(self) -> list[str]:
        """The report for humans: the summary, then one line per check and step."""
        details = [f"trigger {self.trigger}"]
        if self.verified_by:
            details.append("signed by " + ", ".join(self.verified_by))
        out = [f"{self.summary} ({'; '.join(details)})"]
        out += [f"  {c.line()}" for c in self.preconditions]
        done = {r.index: r for r in self.steps}
        for i, planned in enumerate(self.plan):
            r = done.get(i)
            if r is None:
                out.append(f"  step[{i}] {planned}: not run")
            elif r.status == "skipped":
                out.append(f"  step[{i}] {planned}: skipped - {r.message}")
            else:
                out.append(f"  step[{i}] {planned}: {r.status} in {_ms(r.duration_ms)} - {r.message}")
        for r in self.rollback:
            out.append(f"  rollback of step[{r.index}] {r.action}: {r.status} in {_ms(r.duration_ms)} - {r.message}")
        return out


# --------------------------------------------------------------------------- the executor


class Executor:
    """Runs playbooks one at a time; see the module docstring."""

    def __init__(self, runner: ActionRunner, audit: Audit, *, on_busy: str = "refuse",
                 rollback_state: Any = None) -> None:
        if on_busy not in ("refuse", "wait"):
            raise ValueError(f'on_busy must be "refuse" or "wait", not {on_busy!r}')
        self.runner = runner
        self.audit = audit
        self.on_busy = on_busy
        self.rollback_state = rollback_state
        # trio.Lock is fair: runs that wait start in the order they asked.
        self._lock = trio.Lock()
        #: The playbook running now (None when idle), and how many wait behind it.
        self.running: str | None = None
        self.waiting = 0

    async def run(self, playbook: Any, *, dry_run: bool = False, trigger: Any = None,
                  verified_by: Sequence[str] = ()) -> RunReport:
        """Run ``playbook`` (a Playbook or a verifier's Verified) and report how it went.
        Raises :class:`BusyError` when another runs and ``on_busy="refuse"``."""
        pb, signers = _unwrap(playbook, verified_by)
        trigger_text = _trigger_text(trigger)
        if dry_run:
            return await self._run(pb, dry_run=True, trigger=trigger, trigger_text=trigger_text, signers=signers)
        if self.on_busy == "refuse":
            try:
                self._lock.acquire_nowait()
            except trio.WouldBlock:
                running = self.running or "?"
                error = BusyError(pb.name, running)
                self.audit.append("run.refused", playbook=pb.name, version=pb.version, reason="busy",
                                  message=str(error), trigger=trigger_text, dry_run=False, **_by())
                log.warning("playbook.refused", playbook=pb.name, reason="busy", running=running)
                raise error from None
        else:
            self.waiting += 1
            try:
                if self._lock.locked():
                    log.info("playbook.waiting", playbook=pb.name, running=self.running)
                await self._lock.acquire()
            finally:
                self.waiting -= 1
        try:
            self.running = pb.name
            return await self._run(pb, dry_run=False, trigger=trigger, trigger_text=trigger_text, signers=signers)
        finally:
            self.running = None
            self._lock.release()

    async def _run(self, pb: Playbook, *, dry_run: bool, trigger: Any, trigger_text: str,
                   signers: tuple[str, ...]) -> RunReport:
        started = trio.current_time()
        plan = tuple(_plan_line(s) for s in pb.steps)
        base: dict[str, Any] = {"playbook": pb.name, "version": pb.version, "dry_run": dry_run,
                                "trigger": trigger_text, "verified_by": signers, "plan": plan}

        def elapsed_ms() -> float:
            return (trio.current_time() - started) * 1000

        checks = await self._preconditions(pb)
        failed_checks = [c for c in checks if not c.ok]
        if failed_checks:
            first = failed_checks[0]
            summary = (f"playbook {pb.name} v{pb.version} refused: precondition {first.check} "
                       f"{_args_text(first.params)} does not hold ({first.message}); no step ran")
            return self._refused(base, "precondition", summary, checks, elapsed_ms())
        if not dry_run and self.rollback_state is not None:
            try:
                self.rollback_state.record_run(pb.name, pb.version)
            except Exception as exc:
                summary = (f"playbook {pb.name} v{pb.version} refused: cannot record version {pb.version} in the "
                           f"anti-rollback state ({type(exc).__name__}: {exc}); no step ran")
                return self._refused(base, "state", summary, checks, elapsed_ms())

        self.audit.append("run.started", playbook=pb.name, version=pb.version, dry_run=dry_run,
                          trigger=trigger_text, event=trigger if isinstance(trigger, Mapping) else None,
                          verified_by=list(signers), steps=len(pb.steps),
                          preconditions=[c.line() for c in checks], **_by())
        log.info("playbook.started", playbook=pb.name, version=pb.version, dry_run=dry_run,
                 trigger=trigger_text, steps=len(pb.steps))

        results: list[StepResult] = []
        undone: list[StepResult] = []
        outcome: Outcome | None = None
        stopped: str | None = None  # why the remaining steps are skipped
        try:
            for index, step in enumerate(pb.steps):
                if stopped is not None:
                    result = StepResult(index, step.action, "skipped", 0.0, stopped)
                    results.append(result)
                    self._audit_step("step", pb, result, dry_run)
                    continue
                result = await self._step(index, step, dry_run=dry_run)
                results.append(result)
                self._audit_step("step", pb, result, dry_run)
                if result.status == "ok" or dry_run or step.on_failure == "continue":
                    continue
                if step.on_failure == "abort":
                    outcome = "aborted"
                    stopped = f"step[{index}] {result.status}, on_failure = abort"
                else:
                    undone = await self._rollback(pb, results)
                    outcome = "rolled_back" if all(r.status == "ok" for r in undone) else "failed"
                    stopped = f"step[{index}] {result.status}, on_failure = rollback"
        except BaseException as exc:
            # Cancelled from outside (the daemon stopping) or a bug: the audit log must
            # still say the run ended. append() is synchronous, so no checkpoint here.
            summary = (f"playbook {pb.name} v{pb.version} aborted: interrupted ({type(exc).__name__}) "
                       f"after {len(results)} of {len(pb.steps)} steps")
            self.audit.append("run.finished", playbook=pb.name, version=pb.version, dry_run=dry_run,
                              outcome="aborted", duration_ms=elapsed_ms(), summary=summary)
            log.warning("playbook.finished", playbook=pb.name, outcome="aborted", reason=type(exc).__name__)
            raise

        bad = [r for r in results if r.status in ("failed", "timed_out")]
        if outcome is None:
            outcome = "failed" if bad else ("dry_run" if dry_run else "succeeded")
        summary = _summary(pb, outcome, dry_run, results, undone, elapsed_ms())
        report = RunReport(outcome=outcome, summary=summary, preconditions=tuple(checks), steps=tuple(results),
                           rollback=tuple(undone), duration_ms=elapsed_ms(), **base)
        self.audit.append("run.finished", playbook=pb.name, version=pb.version, dry_run=dry_run,
                          outcome=outcome, duration_ms=report.duration_ms, summary=summary)
        level = log.info if outcome in ("succeeded", "dry_run") else log.warning
        level("playbook.finished", playbook=pb.name, version=pb.version, outcome=outcome,
              duration_ms=round(report.duration_ms, 3), summary=summary)
        return report

    def _refused(self, base: dict[str, Any], reason: str, summary: str, checks: list[CheckResult],
                 duration_ms: float) -> RunReport:
        self.audit.append("run.refused", playbook=base["playbook"], version=base["version"], reason=reason,
                          message=summary, trigger=base["trigger"], dry_run=base["dry_run"], **_by())
        log.warning("playbook.refused", playbook=base["playbook"], reason=reason, summary=summary)
        return RunReport(outcome="refused", summary=summary, preconditions=tuple(checks),
                         duration_ms=duration_ms, **base)

    async def _preconditions(self, pb: Playbook) -> list[CheckResult]:
        wanted = list(pb.preconditions)
        if pb.requires_role != "any":
            wanted.insert(0, Precondition(check="role", params={"equals": pb.requires_role}))
        results: list[CheckResult] = []
        for pre in wanted:
            ok, message = False, f"no answer within {format_duration(PRECONDITION_TIMEOUT)}"
            with trio.move_on_after(PRECONDITION_TIMEOUT):
                try:
                    ok, message = await self.runner.check(pre.check, copy.deepcopy(pre.params))
                    ok = ok is True
                except ActionFailed as exc:
                    ok, message = False, exc.message
                except Exception as exc:
                    ok, message = False, _exception_text(exc)
            results.append(CheckResult(pre.check, pre.params, ok, message))
        return results

    async def _step(self, index: int, step: Step, *, dry_run: bool) -> StepResult:
        started = trio.current_time()
        status: Status = "failed"
        message = ""
        with trio.move_on_after(step.timeout) as scope:
            try:
                message = await self.runner.run(step.action, copy.deepcopy(step.args), dry_run=dry_run)
                status = "ok"
            except ActionFailed as exc:
                message = exc.message
            except Exception as exc:
                log.exception("playbook.runner_error", action=step.action)
                message = _exception_text(exc)
        if scope.cancelled_caught:
            status = "timed_out"
            message = f"no result within {format_duration(step.timeout)}; the action was cancelled"
        duration_ms = (trio.current_time() - started) * 1000
        return StepResult(index, step.action, status, duration_ms, _one_line(str(message)))

    async def _rollback(self, pb: Playbook, results: list[StepResult]) -> list[StepResult]:
        undone: list[StepResult] = []
        for done in reversed(results):
            undo = pb.steps[done.index].rollback
            if done.status != "ok" or undo is None:
                continue
            result = await self._step(done.index, undo, dry_run=False)
            undone.append(result)
            self._audit_step("rollback.step", pb, result, False)
        return undone

    def _audit_step(self, kind: str, pb: Playbook, result: StepResult, dry_run: bool) -> None:
        self.audit.append(kind, playbook=pb.name, version=pb.version, dry_run=dry_run, index=result.index,
                          action=result.action, status=result.status, duration_ms=result.duration_ms,
                          message=result.message, **_by())
        level = log.info if result.status in ("ok", "skipped") else log.warning
        level(f"playbook.{kind.replace('.', '_')}", playbook=pb.name, index=result.index, action=result.action,
              status=result.status, duration_ms=round(result.duration_ms, 3), message=result.message)


def _by() -> dict[str, Any]:
    """``{"by": {uid, pid, user}}`` when a control caller asked for this run (the
    privileged act names who did it); nothing for a trigger."""
    by = audit_by()
    return {} if by is None else {"by": by}


# --------------------------------------------------------------------------- triggers


class TriggerMatcher:
    """Which playbooks an event starts, honouring each playbook's cooldown (sans-IO).

    An event is a dict as :meth:`daemon.core.events.Event.to_dict` makes it (``kind`` plus
    the fields). A trigger matches when ``kind`` equals its event and every ``where``
    field is present and equal (``true`` never equals ``1``). A playbook returned by
    :meth:`match` at ``now`` is not returned again before ``now + cooldown``, so a storm
    of events starts it once.
    """

    def __init__(self, playbooks: Iterable[Playbook]) -> None:
        self.playbooks: tuple[Playbook, ...] = tuple(playbooks)
        self._started: dict[str, float] = {}

    def update(self, playbooks: Iterable[Playbook]) -> None:
        """Replace the playbooks (a reload); cooldowns of names still present are kept."""
        self.playbooks = tuple(playbooks)
        names = {pb.name for pb in self.playbooks}
        self._started = {n: t for n, t in self._started.items() if n in names}

    def match(self, event: Mapping[str, Any] | Event, now: float) -> list[Playbook]:
        if isinstance(event, Event):
            event = event.to_dict()
        kind = event.get("kind")
        started: list[Playbook] = []
        for pb in self.playbooks:
            if not any(t.event == kind and _where_matches(t.where, event) for t in pb.triggers):
                continue
            if self.cooldown_remaining(pb, now) > 0:
                continue
            self._started[pb.name] = now
            started.append(pb)
        return started

    def cooldown_remaining(self, playbook: Playbook, now: float) -> float:
        """Seconds until ``playbook`` may be started by a trigger again (0: it may)."""
        last = self._started.get(playbook.name)
        if last is None:
            return 0.0
        return max(0.0, last + playbook.cooldown - now)


def _where_matches(where: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    for key, wanted in where.items():
        if key not in event:
            return False
        found = event[key]
        if isinstance(wanted, bool) or isinstance(found, bool):
            if type(wanted) is not type(found) or wanted != found:
                return False
        elif found != wanted:
            return False
    return True


# --------------------------------------------------------------------------- helpers


def _unwrap(playbook: Any, verified_by: Sequence[str]) -> tuple[Playbook, tuple[str, ...]]:
    if isinstance(playbook, Playbook):
        return playbook, tuple(verified_by)
    inner = getattr(playbook, "playbook", None)
    if not isinstance(inner, Playbook):
        raise TypeError(f"Executor.run needs a Playbook or a verified playbook, not {type(playbook).__name__}")
    if not verified_by:
        verified_by = [_signer_name(s) for s in getattr(playbook, "signers", ()) or ()]
    return inner, tuple(verified_by)


def _signer_name(signer: Any) -> str:
    if isinstance(signer, str):
        return signer
    for attribute in ("holder", "key_id"):
        value = getattr(signer, attribute, None)
        if isinstance(value, str) and value:
            return value
    return str(signer)


def _trigger_text(trigger: Any) -> str:
    if trigger is None:
        return "manual"
    if isinstance(trigger, str):
        return trigger
    if isinstance(trigger, Mapping):
        return str(trigger.get("kind", "event"))
    return type(trigger).__name__


def _plan_line(step: Step) -> str:
    line = f"{step.action} {_args_text(step.args)}".rstrip()
    line += f" (timeout {format_duration(step.timeout)}, on_failure {step.on_failure}"
    if step.rollback is not None:
        line += f", rollback {step.rollback.action} {_args_text(step.rollback.args)}".rstrip()
    return line + ")"


def _args_text(args: Mapping[str, Any]) -> str:
    parts = []
    for key, value in args.items():
        if isinstance(value, str) and value and value.isprintable() and " " not in value and '"' not in value:
            text = value
        elif isinstance(value, float) and math.isfinite(value) and key in ("timeout", "within"):
            text = format_duration(value)
        else:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _summary(pb: Playbook, outcome: Outcome, dry_run: bool, results: list[StepResult],
             undone: list[StepResult], duration_ms: float) -> str:
    head = f"playbook {pb.name} v{pb.version}"
    took = _ms(duration_ms)
    bad = [r for r in results if r.status in ("failed", "timed_out")]
    first = f"step[{bad[0].index}] {bad[0].action} {bad[0].status}: {bad[0].message}" if bad else ""
    if dry_run:
        if outcome == "dry_run":
            return f"{head} dry run: preconditions hold, {len(results)} steps planned, nothing changed"
        return (f"{head} dry run failed: {len(bad)} of {len(results)} steps would not run ({first}); "
                "nothing changed")
    if outcome == "succeeded":
        return f"{head} succeeded: {len(results)} steps in {took}"
    skipped = sum(1 for r in results if r.status == "skipped")
    if outcome == "aborted":
        return f"{head} aborted: {first}; {skipped} steps skipped"
    if outcome == "rolled_back":
        return f"{head} rolled back: {first}; {len(undone)} rollback steps ran, {skipped} steps skipped"
    broken = [r for r in undone if r.status != "ok"]
    if broken:
        return (f"{head} failed: {first}; rollback incomplete: rollback of step[{broken[0].index}] "
                f"{broken[0].action} {broken[0].status}: {broken[0].message}")
    return f"{head} failed: {len(bad)} of {len(results)} steps failed under on_failure = continue ({first})"


def _exception_text(exc: BaseException) -> str:
    return _one_line(f"{type(exc).__name__}: {exc}")


def _one_line(text: str) -> str:
    return " ".join(text.split()) if ("\n" in text or "\r" in text) else text


def _ms(duration_ms: float) -> str:
    if duration_ms >= 1000:
        return f"{duration_ms / 1000:.3g}s"
    return f"{duration_ms:.0f}ms"
