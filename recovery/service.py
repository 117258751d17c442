"""The recovery service: signed playbooks run by the daemon, on events or by hand.

Every run starts with a full verification of the playbook *as it is on disk now*
(signatures over its exact bytes, threshold, revocations, expiry, anti-rollback,
name): a file changed after start-up, a key revoked since, an expiry that passed — all
refuse the run before a single step. Verification results, starts, steps and ends go
to the hash-chained audit log (:mod:`recovery.audit`).

The built-in actions act on the daemon's own services (:class:`DaemonActionRunner`):

``uplink.use`` / ``uplink.auto``  pin an uplink / back to automatic choice.
``standby.promote``  allow this node to take a free lease (``accept_loss`` must be
    true when it may lack acknowledged records; it never steals a live lease) and lift
    a block set by ``standby.demote``.
``standby.demote``   step down: fence, give the lease back, and do not take it again
    until ``standby.promote``.
``engine.halt`` / ``engine.resume``  the journal refuses appends while halted
    (``EngineHaltRequested`` / ``EngineResumeRequested`` tell the engine).
``venue.cancel_all``  fetch the venue's open orders and cancel each (audited one by one).
``guard.kill``  the kill switch on a scope (``by`` is ``playbook:NAME``); its report is the step's result.
``notify``   a ``PlaybookNotice`` event and a log line.
``wait_for`` an event (with ``where`` equality on its fields) within a timeout.
``exec``     an argv (no shell), its program on the keyring's allow-list (checked at
    verification), killed at the step's timeout.

Control methods: ``playbook.list``, ``playbook.run {"name", "dry_run"}``.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import trio

from daemon.core.acl import audit_by
from daemon.core.bus import EventBus
from daemon.core.control import ControlRegistry
from daemon.core.control_client import ControlError
from daemon.core.errors import Unavailable
from daemon.core.events import (
    EngineHaltRequested,
    EngineResumeRequested,
    Event,
    PlaybookFinished,
    PlaybookNotice,
    PlaybookRefused,
    PlaybookStarted,
)
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample, ServiceStatus
from recovery.audit import AuditLog, load_or_create_host_key
from recovery.config import RecoverySettings
from recovery.executor import ActionFailed, BusyError, Executor, TriggerMatcher
from recovery.keys import load_keyring
from recovery.playbook import valid_name
from recovery.verify import RefusalCoalescer, RollbackState, VerificationError, Verified, verify_playbook

log = get_logger("recovery")


def _audit_by() -> dict[str, Any]:
    """``{"by": {uid, pid, user}}`` when a control caller asked for this act."""
    by = audit_by()
    return {} if by is None else {"by": by}


def _now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class VenueActions(Protocol):
    """What a playbook may ask of the venues (:class:`daemon.venues.service.VenueService` is one,
    set by daemon/app.py); a call that cannot be made raises :class:`~daemon.core.errors.Unavailable`."""

    async def cancel_all(self, venue: str, /, *, dry_run: bool, reason: str) -> str: ...


class GuardActions(Protocol):
    """The kill switch (:class:`daemon.guard.killswitch.KillSwitch` is one, set by daemon/app.py)."""

    async def kill_named(self, venue: str | None, symbol: str | None, reason: str, by: str) -> dict[str, Any]:
        """Raises ValueError for a bad scope, Unavailable when this node may not kill."""


class RoleName(Protocol):
    @property
    def value(self) -> str: ...


class RoleMachineView(Protocol):
    @property
    def role(self) -> RoleName: ...


class LeadershipControl(Protocol):
    """The lease shell as a playbook moves it (:class:`daemon.standby.leadership.Leadership`)."""

    @property
    def machine(self) -> RoleMachineView | None: ...

    def allow_primary(self) -> None: ...

    def refuse_primary(self, reason: str) -> str | None: ...

    def operator_promote(self, accept_loss: bool) -> dict[str, Any]: ...


class StandbyControl(Protocol):
    """What a playbook reads and sets of the standby service (:class:`daemon.standby.service.StandbyService`)."""

    halted: str | None

    @property
    def role(self) -> str: ...

    @property
    def leadership(self) -> LeadershipControl | None: ...


class UplinkPolicyView(Protocol):
    @property
    def active(self) -> str | None: ...


class UplinkControl(Protocol):
    """The uplinks as a playbook pins them (:class:`daemon.uplinks.service.UplinkService`)."""

    @property
    def uplinks(self) -> Mapping[str, object]: ...

    @property
    def policy(self) -> UplinkPolicyView | None: ...

    async def use(self, name: str) -> object: ...

    async def auto(self) -> object: ...


class DaemonActionRunner:
    """The built-in actions, carried out on this daemon's services."""

    def __init__(self, bus: EventBus, *, uplinks: UplinkControl | None = None,
                 standby: StandbyControl | None = None) -> None:
        self.bus = bus
        self.uplinks = uplinks
        self.standby = standby
        #: The venues service (issue 9), set by the daemon when [venues] are configured.
        self.venues: VenueActions | None = None
        #: The kill switch (issue 19), set by the daemon.
        self.guard: GuardActions | None = None
        self.playbook = ""  # the running playbook's name (for notices)

    async def run(self, action: str, args: dict[str, Any], *, dry_run: bool) -> str:
        handler = getattr(self, "_" + action.replace(".", "_"), None)
        if handler is None:
            raise ActionFailed(f"no such action {action!r}")
        try:
            return str(await handler(args, dry_run))
        except ActionFailed:
            raise
        except ControlError as exc:
            raise ActionFailed(f"{action}: {exc}") from None

    # ------------------------------------------------------------------ actions

    def _need_uplinks(self) -> UplinkControl:
        if self.uplinks is None:
            raise ActionFailed("this daemon has no [uplinks] configured")
        return self.uplinks

    def _need_leadership(self) -> LeadershipControl:
        leadership = self.standby.leadership if self.standby is not None else None
        if leadership is None:
            raise ActionFailed("this daemon has no [standby.lease]: roles do not move")
        return leadership

    async def _uplink_use(self, args: dict[str, Any], dry_run: bool) -> str:
        uplinks = self._need_uplinks()
        name = args["name"]
        if name not in uplinks.uplinks:
            raise ActionFailed(f"no uplink {name!r}; configured: {', '.join(uplinks.uplinks)}")
        if dry_run:
            return f"would pin the uplink {name}"
        await uplinks.use(name)
        return f"pinned {name}; active: {uplinks.policy.active if uplinks.policy else '?'}"

    async def _uplink_auto(self, args: dict[str, Any], dry_run: bool) -> str:
        uplinks = self._need_uplinks()
        if dry_run:
            return "would return to automatic uplink choice"
        await uplinks.auto()
        return f"automatic choice; active: {uplinks.policy.active if uplinks.policy else '?'}"

    async def _standby_promote(self, args: dict[str, Any], dry_run: bool) -> str:
        leadership = self._need_leadership()
        accept = bool(args.get("accept_loss", False))
        if dry_run:
            return f"would allow this node to take a free lease (accept_loss={accept})"
        leadership.allow_primary()
        if not accept:
            return "block lifted; this node takes the lease by the usual rules"
        result = leadership.operator_promote(True)
        if not result.get("accepted"):
            raise ActionFailed(f"promotion refused: {result.get('reason')}")
        return f"override accepted: {result.get('reason')}"

    async def _standby_demote(self, args: dict[str, Any], dry_run: bool) -> str:
        leadership = self._need_leadership()
        if dry_run:
            return "would fence this node, give the lease back and stay standby until standby.promote"
        role = leadership.refuse_primary(f"demoted by playbook {self.playbook}")
        if role is None:
            raise ActionFailed("the role machine has not started")
        return f"demoted: {role}"

    async def _engine_halt(self, args: dict[str, Any], dry_run: bool) -> str:
        reason = args.get("reason") or f"playbook {self.playbook}"
        if dry_run:
            return f"would halt the engine ({reason})"
        if self.standby is not None:
            self.standby.halted = reason
        self.bus.publish(EngineHaltRequested(source="recovery", reason=reason))
        return f"engine halted: {reason}"

    async def _engine_resume(self, args: dict[str, Any], dry_run: bool) -> str:
        if dry_run:
            return "would resume the engine"
        if self.standby is not None:
            self.standby.halted = None
        self.bus.publish(EngineResumeRequested(source="recovery", reason=f"playbook {self.playbook}"))
        return "engine resumed"

    async def _venue_cancel_all(self, args: dict[str, Any], dry_run: bool) -> str:
        venue = str(args["venue"])
        if self.venues is None:
            raise ActionFailed(f"venue.cancel_all {venue}: no [venues] are configured in this daemon")
        try:
            return await self.venues.cancel_all(venue, dry_run=dry_run, reason=f"playbook {self.playbook}")
        except Unavailable as exc:  # the venues' VenueUnavailable
            raise ActionFailed(f"venue.cancel_all: {exc}") from None

    async def _guard_kill(self, args: dict[str, Any], dry_run: bool) -> str:
        venue, symbol = args.get("venue"), args.get("symbol")
        where = f"{symbol or 'every symbol'} on {venue or 'every venue'}"
        if dry_run:
            return f"would kill {where}: refuse new orders and cancel every open order there"
        if self.guard is None:
            raise ActionFailed("guard.kill: this daemon has no kill switch")
        try:
            result = await self.guard.kill_named(venue, symbol, str(args["reason"]), f"playbook:{self.playbook}")
        except (Unavailable, ValueError) as exc:
            raise ActionFailed(f"guard.kill: {exc}") from None
        text = "; ".join(line.strip() for line in result.get("lines", []))
        if not result.get("clear", False):
            raise ActionFailed(f"guard.kill: not every venue is clear: {text}")
        return text

    async def _notify(self, args: dict[str, Any], dry_run: bool) -> str:
        message = str(args["message"])
        level = str(args.get("level", "info"))
        if dry_run:
            return f"would notify: {message}"
        self.bus.publish(PlaybookNotice(source="recovery", playbook=self.playbook, message=message, level=level))
        return f"notified: {message}"

    async def _wait_for(self, args: dict[str, Any], dry_run: bool) -> str:
        kind = str(args["event"])
        where = dict(args.get("where") or {})
        timeout = float(args.get("timeout", 30.0))
        if dry_run:
            return f"would wait up to {timeout:g}s for {kind} {where or ''}".rstrip()
        with self.bus.subscribe("playbook-wait", kinds={kind}) as sub:
            with trio.move_on_after(timeout):
                async for event in sub:
                    fields = event.to_dict()
                    if all(fields.get(k) == v for k, v in where.items()):
                        return f"{kind} seen"
        raise ActionFailed(f"no {kind} {where or ''} within {timeout:g}s")

    async def _exec(self, args: dict[str, Any], dry_run: bool) -> str:
        argv = [str(a) for a in args["argv"]]
        if dry_run:
            return f"would run {argv}"
        try:
            result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False,
                                            start_new_session=True)
        except OSError as exc:
            raise ActionFailed(f"{argv[0]}: {exc.strerror or exc}") from None
        tail = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()[-3:]
        if result.returncode != 0:
            raise ActionFailed(f"{argv[0]} exited {result.returncode}: {' | '.join(tail)}")
        return f"{argv[0]} exited 0" + (f": {' | '.join(tail)}" if tail else "")

    # ------------------------------------------------------------------ preconditions

    async def check(self, name: str, params: dict[str, Any]) -> tuple[bool, str]:
        if name == "role":
            leadership = self.standby.leadership if self.standby is not None else None
            machine = leadership.machine if leadership is not None else None
            role = machine.role.value if machine is not None else (
                (self.standby.role if self.standby is not None else None) or "none")
            want = params.get("equals")
            return role == want, f"role is {role}, {'as' if role == want else 'not'} required ({want})"
        if name == "uplink_active":
            active = self.uplinks.policy.active if self.uplinks is not None and self.uplinks.policy else None
            want = params.get("equals")
            return active == want, f"active uplink is {active}, required {want}"
        if name == "event_seen":
            kind = params.get("event")
            window = float(params.get("within", 300.0))
            cutoff = time.time() - window
            where = dict(params.get("where") or {})
            seen = any(e.kind == kind and e.wall_time >= cutoff
                       and all(e.to_dict().get(k) == v for k, v in where.items()) for e in self.bus.recent)
            return seen, f"{kind} {'seen' if seen else 'not seen'} in the last {window:g}s"
        return False, f"unknown precondition {name!r}"


class RecoveryService:
    """Verifies and runs signed playbooks; see the module docstring."""

    name = "recovery"

    def __init__(self, config: RecoverySettings, bus: EventBus, *, uplinks: UplinkControl | None = None,
                 standby: StandbyControl | None = None) -> None:
        assert config.recovery is not None
        self.config = config
        self.settings = config.recovery
        self.bus = bus
        self.runner = DaemonActionRunner(bus, uplinks=uplinks, standby=standby)
        self.state_dir = Path(config.node.state_dir) / "recovery"
        self.audit: AuditLog | None = None
        self.executor: Executor | None = None
        self.matcher: TriggerMatcher | None = None
        self.playbooks: dict[str, Any] = {}   # name -> parsed playbook (verified at load)
        self.refused: dict[str, str] = {}     # file -> reason (at load)
        self.runs = 0
        self.outcomes: dict[str, int] = {}   # outcome (ok, failed, rolled_back, ...) -> runs
        self.last: dict[str, Any] | None = None
        self._nursery: trio.Nursery | None = None

        #: Identical refusals by playbook.run: one audit line per window, with a count.
        self.refusals = RefusalCoalescer()
        self._to_publish: list[PlaybookRefused] = []

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host_key, _ = await trio.to_thread.run_sync(load_or_create_host_key, self.state_dir.parent)
        audit_path = self.settings.audit_log or self.state_dir / "audit.jsonl"
        self.audit = await trio.to_thread.run_sync(AuditLog, audit_path, host_key)
        self.executor = Executor(self.runner, self.audit, on_busy=self.settings.on_busy)
        await trio.to_thread.run_sync(self._load_all)
        self._publish_refusals()
        with self.bus.subscribe("recovery") as sub:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                log.info("recovery.started", playbooks=",".join(sorted(self.playbooks)) or "-",
                         refused=len(self.refused), directory=str(self.settings.playbooks),
                         triggers=self.settings.triggers)
                task_status.started()
                async for event in sub:
                    self._on_event(event)

    def _load_all(self) -> None:
        """Verify every playbook in the directory (refusals are logged and audited).
        Blocking (keyring, signatures, fsynced audit lines): call it from a thread once
        the service runs; the refusals' events are published by the caller."""
        playbooks: dict[str, Any] = {}
        refused: dict[str, str] = {}
        directory = Path(self.settings.playbooks)
        files = sorted(directory.glob("*.toml")) if directory.is_dir() else []
        if not directory.is_dir():
            log.warning("recovery.no_playbooks", directory=str(directory), reason="not a directory")
        published: list[PlaybookRefused] = []
        for path in files:
            verified, reason, message = self._check(path)
            if self._record(path, verified, reason, message, refused=refused, now=time.monotonic(), coalesce=False):
                published.append(PlaybookRefused(source=self.name, playbook=path.stem, reason=reason,
                                                 message=message))
            if verified is not None:
                playbooks[verified.playbook.name] = verified.playbook
        self.playbooks, self.refused = playbooks, refused
        self.matcher = TriggerMatcher(list(self.playbooks.values()))
        self._to_publish = published

    def _publish_refusals(self) -> None:
        for event in self._to_publish:
            self.bus.publish(event)
        self._to_publish = []

    def _check(self, path: Path) -> tuple[Verified | None, str, str]:
        """Full verification of ``path`` now: (verified, "", "") or (None, reason, message).
        Blocking: keyring read, Ed25519, TOML."""
        try:
            keyring = load_keyring(self.settings.keyring)
            state = RollbackState(self.state_dir / "versions.json")
            verified = verify_playbook(path, keyring, now=_now_utc(), rollback_state=state)
            # Seen: older versions are refused from now on, and this version's bytes pinned.
            state.record_seen(verified.playbook.name, verified.playbook.version, verified.sha256)
        except VerificationError as exc:
            return None, exc.reason, str(exc)
        except Exception as exc:  # a keyring that does not load, an unreadable file
            return None, "invalid", str(exc)
        return verified, "", ""

    def _record(self, path: Path, verified: Verified | None, reason: str, message: str, *, refused: dict[str, str],
                now: float, coalesce: bool = True) -> bool:
        """Audit the verification's result (blocking: an fsynced line). Identical refusals
        are coalesced: the first is written, repeats within the window are counted and the
        count is written with the next one after it; past the rate limit, refusals are
        only counted. True when a refusal was written (then publish its event)."""
        assert self.audit is not None  # opened by run() before any playbook is loaded
        if verified is not None:
            self.audit.append("verify.ok", playbook=verified.playbook.name, version=verified.playbook.version,
                              file=str(path), signers=list(verified.signers),
                              sha256=verified.sha256)
            return False
        name = path.stem
        refused[name] = f"{reason}: {message}"
        repeated = self.refusals.note((name, reason, message), now) if coalesce else 0
        if repeated is None:
            return False
        extra = {"repeated": repeated} if repeated else {}
        self.audit.append("verify.refused", playbook=name, reason=reason, message=message, **extra,
                          **_audit_by())
        return True

    def _on_event(self, event: Event) -> None:
        if not self.settings.triggers or self.matcher is None or event.source == self.name:
            return
        if event.kind.startswith("Playbook"):
            return  # a playbook's own events never start another
        for playbook in self.matcher.match(event.to_dict(), trio.current_time()):
            assert self._nursery is not None
            log.info("playbook.triggered", playbook=playbook.name, trigger=event.kind)
            self._nursery.start_soon(self._run_safely, playbook.name, False, event.kind)

    async def _run_safely(self, name: str, dry_run: bool, trigger: str) -> None:
        try:
            await self.run_playbook(name, dry_run=dry_run, trigger=trigger)
        except ControlError as exc:
            log.warning("playbook.not_run", playbook=name, trigger=trigger, error=str(exc))

    async def run_playbook(self, name: str, *, dry_run: bool = False, trigger: str = "operator") -> dict[str, Any]:
        """Verify ``name`` from disk now, then run it (or plan it, ``dry_run``). ``name``
        must be spelled as a playbook name and be one found in the playbook directory at
        the last (re)load: no path reaches a file elsewhere, and the answer says nothing
        about files that are not playbooks."""
        if not valid_name(name) or (name not in self.playbooks and name not in self.refused):
            known = ", ".join(sorted(self.playbooks)) or "none"
            shown = name if valid_name(name) else "that name"
            raise ControlError("unknown_playbook", f"no playbook {shown} in {self.settings.playbooks} (a name such "
                                                   f"as fibre-lost, not a path); verified: {known}; add it there "
                                                   "and run `lifeline playbook reload`")
        path = Path(self.settings.playbooks) / f"{name}.toml"
        verified, reason, message = await trio.to_thread.run_sync(self._check, path)
        now = trio.current_time()
        if await trio.to_thread.run_sync(
                lambda: self._record(path, verified, reason, message, refused=self.refused, now=now)):
            self.bus.publish(PlaybookRefused(source=self.name, playbook=name, reason=reason, message=message))
        if verified is None:
            raise ControlError("refused", f"{name}: {reason}: {message}")
        playbook = verified.playbook
        if not dry_run:
            await trio.to_thread.run_sync(RollbackState(self.state_dir / "versions.json").record_run,
                                          playbook.name, playbook.version)
        self.bus.publish(PlaybookStarted(source=self.name, playbook=playbook.name, version=playbook.version,
                                         trigger=trigger, dry_run=dry_run))
        self.runner.playbook = playbook.name
        started = time.monotonic()
        assert self.executor is not None  # made by run() before the control methods answer
        try:
            report = await self.executor.run(playbook, dry_run=dry_run, trigger=trigger,
                                             verified_by=verified.signers)
        except BusyError as exc:
            raise ControlError("busy", str(exc)) from None
        self.runs += 1
        self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        self.last = {"playbook": playbook.name, "outcome": report.outcome, "duration_ms": duration_ms,
                     "trigger": trigger}
        self.bus.publish(PlaybookFinished(source=self.name, playbook=playbook.name, version=playbook.version,
                                          outcome=report.outcome, duration_ms=duration_ms))
        return {"playbook": playbook.name, "version": playbook.version, "outcome": report.outcome,
                "lines": report.lines(), "duration_ms": duration_ms}

    # ------------------------------------------------------------------ control

    def register_control(self, control: ControlRegistry) -> None:
        async def list_(params: dict[str, Any]) -> Any:
            return {"playbooks": [{"name": p.name, "version": p.version, "expires": p.expires.isoformat(),
                                   "triggers": [t.event for t in p.triggers], "description": p.description}
                                  for p in sorted(self.playbooks.values(), key=lambda p: p.name)],
                    "refused": self.refused}

        async def run(params: dict[str, Any]) -> Any:
            name = params.get("name")
            if not isinstance(name, str) or not name:
                raise ControlError("bad_request", 'expected {"name": PLAYBOOK, "dry_run": false}')
            return await self.run_playbook(name, dry_run=bool(params.get("dry_run", False)))

        async def reload(params: dict[str, Any]) -> Any:
            await trio.to_thread.run_sync(self._load_all)
            self._publish_refusals()
            return await list_(params)

        control.register("playbook.list", list_, help="Verified playbooks and the refused ones, with reasons.")
        control.register("playbook.run", run, help='Verify and run a playbook: {"name": N, "dry_run": false}; '
                                                   "`lifeline playbook run`.")
        control.register("playbook.reload", reload, help="Verify the playbook directory again.")

    # ------------------------------------------------------------------ reporting

    def status(self) -> ServiceStatus:
        summary = f"{len(self.playbooks)} verified playbook(s)"
        if self.refused:
            summary += f", {len(self.refused)} REFUSED ({', '.join(sorted(self.refused))})"
        if self.last:
            summary += f"; last: {self.last['playbook']} {self.last['outcome']}"
        health: Any = "degraded" if self.refused else "ok"
        return ServiceStatus(health, summary, {"playbooks": sorted(self.playbooks), "refused": self.refused,
                                               "runs": self.runs, "last": self.last})

    def metrics(self) -> Iterable[MetricFamily]:
        yield MetricFamily.single("lifeline_playbooks_verified", "gauge", "Playbooks that passed verification.",
                                  len(self.playbooks))
        yield MetricFamily.single("lifeline_playbooks_refused", "gauge", "Playbooks refused at verification.",
                                  len(self.refused))
        yield MetricFamily.single("lifeline_playbook_runs_total", "counter", "Playbook runs since start.",
                                  self.runs)
        yield MetricFamily("lifeline_playbook_outcomes_total", "counter",
                           "Playbook runs by outcome (succeeded, failed, aborted, rolled_back, refused, dry_run).",
                           [Sample({"outcome": o}, n) for o, n in sorted(self.outcomes.items())])
        if self.audit is not None:
            yield MetricFamily.single("lifeline_audit_chain_ok", "gauge",
                                      "1 while the audit log's hash chain continues; 0 once its last entry is "
                                      "damaged or an append could not be undone (see `lifeline audit verify`).",
                                      0.0 if self.audit.broken else 1.0)
