"""The kill switch: block new orders on a scope, then cancel every open order on it at every
venue, through every usable uplink at once (:mod:`daemon.guard.kill` decides; this runs it).

    KillSwitch(blocks, venues, audit_factory=...).kill(scope, reason, by)

1. The ``kill`` :class:`~daemon.guard.blocks.GuardRecord` is written through the
   :class:`BlocksWriter` *first* (the journal, on the primary): from that instant the
   journal refuses new order records on the scope. A node that may not write it (a
   standby) refuses the whole kill, naming the primary: the primary owns the orders.
2. Every venue on the scope at once, and at each venue every usable path (venue x uplink)
   at once, runs :class:`~daemon.guard.kill.VenueKill`'s script through the venues'
   :class:`VenueOrders`: the venue's cancel-all (whole-venue scope) and the journal's open
   orders by id, then fetch, cancel what is left, fetch ... until a fetch shows nothing on
   the scope or ``deadline`` passes. The first path to see the venue clear ends it there;
   a path that hangs (its uplink just died) is abandoned.
3. The report per venue (cancelled, already gone, left open with ids, errors, time to
   clear) is returned, logged, and every step is in the audit log with the caller.

It needs nothing of the trading engine: a hung or dead engine does not slow it down.
``unkill`` writes the ``unkill`` record (nothing is sent to any venue).

Callers: the control methods ``guard.kill`` / ``guard.unkill`` (admin; ``by`` is the
socket's peer), the playbook action ``guard.kill`` (``playbook:NAME``) and the breakers
(``breaker:NAME``), both through :meth:`KillSwitch.kill`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from daemon.core.acl import current_caller
from daemon.core.audit import AuditFactory, AuditSink
from daemon.core.control import ControlError, ControlRegistry
from daemon.core.errors import Unavailable
from daemon.core.log import get_logger
from daemon.guard.blocks import BlocksWriter, GuardRecord, GuardRecordError, Scope, TradingBlocks
from daemon.guard.kill import (
    Cancel,
    CancelResult,
    KnownOrder,
    VenueFeatures,
    VenueKill,
    VenueKillReport,
    format_report,
)

__all__ = ["KillSwitch", "MemoryBlocks", "VenueOrders", "DEFAULT_DEADLINE"]

log = get_logger("guard")

#: How long a kill waits for every venue to show no open order on the scope.
DEFAULT_DEADLINE = 5.0


class VenueOrders(Protocol):
    """What the kill needs of the venues (:class:`daemon.venues.service.VenueService` is one).
    The calls raise :class:`~daemon.core.errors.Unavailable` (with the error) when they fail."""

    def kill_venues(self) -> dict[str, str | None]:
        """Every configured venue -> ``None`` if the kill can act there, else why not."""

    def kill_paths(self, venue: str, /) -> list[str]:
        """The paths (uplinks) to send through: every one not DOWN (all when all are)."""

    def kill_features(self, venue: str, /) -> tuple[bool, bool]:
        """(the venue has a cancel-all, a batch cancel by ids): ccxt's ``has``."""

    def journal_open(self, venue: str, /) -> list[tuple[str, str, str | None]]:
        """(venue order id, symbol, client order id) of the journal's open orders at ``venue``."""

    async def kill_fetch(self, venue: str, path: str, /) -> list[dict[str, Any]]: ...

    async def kill_cancel_all(self, venue: str, path: str, /) -> int | None:
        """How many orders the venue's cancel-all cancelled (None: it did not say)."""

    async def kill_cancel_ids(self, venue: str, path: str, ids: list[str], symbol: str | None, batch: bool,
                              /) -> tuple[int | None, list[str]]:
        """(how many cancelled, the ids the venue does not know)."""


class MemoryBlocks:
    """A :class:`BlocksWriter` that keeps the blocks in memory only (a host without a journal,
    and the stand-in until the guard service is wired): ``may_write`` says whether this node
    may write (else :class:`Unavailable` with ``why_not()``), ``persist`` (optional) writes the
    record's payload to the journal before it is applied."""

    def __init__(self, *, may_write: Callable[[], bool] = lambda: True,
                 why_not: Callable[[], str] = lambda: "this node is not primary",
                 persist: Callable[[bytes], Any] | None = None) -> None:
        self._blocks = TradingBlocks()
        self._may_write = may_write
        self._why_not = why_not
        self._persist = persist

    async def write(self, record: GuardRecord, /) -> None:
        if not self._may_write():
            raise Unavailable(self._why_not())
        if self._persist is not None:
            await self._persist(record.to_payload())
        self._blocks.apply(record)

    def blocks(self) -> TradingBlocks:
        return self._blocks


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KillSwitch:
    def __init__(self, blocks: BlocksWriter, venues: VenueOrders | None, *,
                 audit_factory: AuditFactory | None = None, deadline: float = DEFAULT_DEADLINE,
                 wall: Callable[[], float] = time.time) -> None:
        self.blocks_writer = blocks
        self.venues = venues
        self.audit_factory = audit_factory
        self.deadline = float(deadline)
        self.wall = wall
        self._audit: AuditSink | None = None
        self._audit_lock = trio.Lock()
        self.kills = 0
        self.last: dict[str, Any] | None = None

    # ---------------------------------------------------------------- audit

    async def _audit_append(self, kind: str, **fields: Any) -> str | None:
        """Append to the audit log; an audit failure is logged and returned, never raised
        (the kill's cancels must not wait on it)."""
        if self.audit_factory is None:
            return None
        async with self._audit_lock:
            try:
                if self._audit is None:
                    self._audit = await trio.to_thread.run_sync(self.audit_factory)
                audit = self._audit
                await trio.to_thread.run_sync(lambda: audit.append(kind, **fields))
            except Exception as exc:  # noqa: BLE001 - the audit's failure is reported, the kill goes on
                log.error("guard.audit_failed", kind=kind, error=str(exc))
                return f"the audit log refused {kind}: {exc}"
        return None

    def close(self) -> None:
        if self._audit is not None:
            self._audit.close()
            self._audit = None

    # ---------------------------------------------------------------- kill / unkill

    async def kill(self, scope: Scope, reason: str, by: str) -> dict[str, Any]:
        """Block new orders on ``scope``, cancel every open order on it, report per venue.
        Raises :class:`Unavailable` (nothing done) when this node may not write the block,
        :class:`GuardRecordError` for a bad reason/by."""
        started = trio.current_time()
        now = self.wall()
        record = GuardRecord("kill", scope, reason, by, now)  # checks reason and by first
        venues = self.venues.kill_venues() if self.venues is not None else {}
        if scope.venue is not None and scope.venue not in venues:
            raise GuardRecordError("venue", f"{scope.venue!r} is not a configured venue",
                                   f"use one of {', '.join(venues) or '(none configured)'}, or leave --venue out")
        try:
            await self.blocks_writer.write(record)
        except Unavailable as exc:
            log.warning("guard.kill_refused", scope=scope.describe(), by=by, reason=str(exc))
            await self._audit_append("guard.kill.refused", scope=scope.to_dict(), reason=reason, by=by,
                                     refused=str(exc))
            raise
        blocked_ms = (trio.current_time() - started) * 1000.0
        log.warning("guard.killed", scope=scope.describe(), by=by, reason=reason, blocked_ms=round(blocked_ms, 2))
        targets = [v for v, why in venues.items() if why is None and (scope.venue is None or scope.venue == v)]
        skipped = [f"{v}: skipped: {why}" for v, why in venues.items()
                   if why is not None and (scope.venue is None or scope.venue == v)]
        reports: dict[str, VenueKillReport] = {}
        audit_errors: list[str] = []

        async def audit_start() -> None:
            problem = await self._audit_append("guard.kill", scope=scope.to_dict(), reason=reason, by=by,
                                               time=now, venues=targets, skipped=skipped)
            if problem:
                audit_errors.append(problem)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(audit_start)
            for name in targets:
                nursery.start_soon(self._kill_venue, name, scope, started, reports)
        venue_reports = [reports[name].to_dict() for name in targets if name in reports]
        for data in venue_reports:
            log.warning("guard.kill_venue", venue=data["venue"], cancelled=data["cancelled"],
                        left_open=len(data["left_open"]), already_gone=data["already_gone"],
                        clear_ms=data["clear_ms"], errors=len(data["errors"]), paths=",".join(data["paths"]))
            problem = await self._audit_append("guard.kill.venue", by=by, **data)
            if problem:
                audit_errors.append(problem)
        total_ms = (trio.current_time() - started) * 1000.0
        clear = all(r["clear"] for r in venue_reports)
        result: dict[str, Any] = {
            "action": "kill", "scope": scope.describe(), **scope.to_dict(), "reason": reason, "by": by,
            "blocked_at": now, "blocked_at_iso": _iso(now), "blocked_ms": round(blocked_ms, 2),
            "venues": venue_reports, "skipped": skipped, "clear": clear, "total_ms": round(total_ms, 1),
            "deadline_s": self.deadline, "audit_errors": audit_errors,
        }
        problem = await self._audit_append("guard.kill.finished", scope=scope.to_dict(), by=by, clear=clear,
                                           total_ms=result["total_ms"])
        if problem:
            audit_errors.append(problem)
        result["lines"] = format_report(result)
        self.kills += 1
        self.last = result
        return result

    async def kill_named(self, venue: str | None, symbol: str | None, reason: str, by: str) -> dict[str, Any]:
        """:meth:`kill` on the scope (venue, symbol) (a playbook's step names them)."""
        return await self.kill(Scope(venue, symbol), reason, by)

    async def unkill(self, scope: Scope, reason: str, by: str) -> dict[str, Any]:
        now = self.wall()
        record = GuardRecord("unkill", scope, reason, by, now)
        before = [b for b in self.blocks_writer.blocks().killed() if scope.contains(b.scope)]
        try:
            await self.blocks_writer.write(record)
        except Unavailable as exc:
            await self._audit_append("guard.unkill.refused", scope=scope.to_dict(), reason=reason, by=by,
                                     refused=str(exc))
            raise
        ended = [b.to_dict(now) for b in before]
        log.warning("guard.unkilled", scope=scope.describe(), by=by, reason=reason, ended=len(ended))
        problem = await self._audit_append("guard.unkill", scope=scope.to_dict(), reason=reason, by=by, time=now,
                                           ended=ended)
        remaining = [b.to_dict(now) for b in self.blocks_writer.blocks().killed()]
        lines = [f"UNKILLED {scope.describe()} (by {by}; reason: {reason}): "
                 + (f"ended {len(ended)} kill(s)" if ended else "no kill on this scope was in force")]
        lines += [f"  still killed: {b['scope']} ({b['reason']}, by {b['by']})" for b in remaining]
        return {"action": "unkill", "scope": scope.describe(), **scope.to_dict(), "reason": reason, "by": by,
                "ended": ended, "still_killed": remaining, "audit_errors": [problem] if problem else [],
                "lines": lines}

    # ---------------------------------------------------------------- one venue

    async def _kill_venue(self, name: str, scope: Scope, started: float, out: dict[str, VenueKillReport]) -> None:
        assert self.venues is not None
        venues = self.venues
        try:
            cancel_all, cancel_batch = venues.kill_features(name)
            features = VenueFeatures(cancel_all=cancel_all, cancel_batch=cancel_batch)
            journal = [KnownOrder(i, s, c) for i, s, c in venues.journal_open(name)]
            paths = venues.kill_paths(name)
        except Exception as exc:  # noqa: BLE001 - one venue's trouble must not stop the others
            kill = VenueKill(name, scope, [], VenueFeatures(), started, started + self.deadline)
            kill.errors.append(f"cannot start: {type(exc).__name__}: {exc}")
            kill.gave_up = True
            out[name] = kill.report()
            return
        kill = VenueKill(name, scope, journal, features, started, started + self.deadline, paths=list(paths))
        done = trio.Event()
        wave = kill.first_wave()

        remaining = len(paths)

        async def path_script(path: str) -> None:
            nonlocal remaining
            try:
                await run_path(path)
            finally:
                remaining -= 1
                if kill.finished or remaining == 0:
                    done.set()

        async def run_path(path: str) -> None:
            for cancel in wave:
                if kill.finished:
                    return
                await self._cancel(kill, path, cancel)
            while not kill.finished:
                try:
                    orders = await venues.kill_fetch(name, path)
                except Exception as exc:  # noqa: BLE001 - Unavailable, or a bug: this path's error, not the kill's end
                    text = str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"
                    kill.on_fetch_error(path, text, trio.current_time())
                    await trio.sleep(0.05)  # a path that fails fast must not spin
                    continue
                cancels = kill.on_fetch(orders, trio.current_time())
                for cancel in cancels:
                    if kill.finished:
                        return
                    await self._cancel(kill, path, cancel)

        with trio.move_on_at(started + self.deadline):
            async with trio.open_nursery() as nursery:
                for path in paths:
                    nursery.start_soon(path_script, path)
                if paths:
                    # The first path to see the venue clear ends it: the others' calls are abandoned.
                    await done.wait()
                    nursery.cancel_scope.cancel()
        kill.expire(trio.current_time())
        if not paths:
            kill.errors.append("no path to the venue")
        out[name] = kill.report()

    async def _cancel(self, kill: VenueKill, path: str, cancel: Cancel) -> None:
        assert self.venues is not None
        try:
            if cancel.kind == "all":
                result = CancelResult(cancelled=await self.venues.kill_cancel_all(kill.venue, path))
            else:
                count, gone = await self.venues.kill_cancel_ids(kill.venue, path, list(cancel.ids), cancel.symbol,
                                                                cancel.batch)
                result = CancelResult(cancelled=count, not_found=tuple(gone))
        except Exception as exc:  # noqa: BLE001 - Unavailable, or a bug: this request's error, not the kill's end
            result = CancelResult(error=str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}")
        kill.on_cancel(path, cancel, result, trio.current_time())

    # ---------------------------------------------------------------- control

    def register_control(self, control: ControlRegistry) -> None:
        def who() -> str:
            caller = current_caller()
            if caller is None:
                return "control (unknown caller)"
            return f"uid={caller.uid} pid={caller.pid} user={caller.user}"

        def scope_and_reason(params: dict[str, Any]) -> tuple[Scope, str]:
            unknown = sorted(set(params) - {"venue", "symbol", "reason"})
            if unknown:
                raise ControlError("bad_request", f'"{unknown[0]}": unknown parameter; use venue, symbol, reason')
            reason = params.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise ControlError("bad_request", '"reason" is required: say why (--reason TEXT)')
            for key in ("venue", "symbol"):
                if params.get(key) is not None and not isinstance(params[key], str):
                    raise ControlError("bad_request", f'"{key}" must be a string')
            try:
                return Scope(params.get("venue"), params.get("symbol")), reason
            except GuardRecordError as exc:
                raise ControlError("bad_request", str(exc)) from None

        async def kill(params: dict[str, Any]) -> Any:
            scope, reason = scope_and_reason(params)
            try:
                return await self.kill(scope, reason, who())
            except GuardRecordError as exc:
                raise ControlError("bad_request", str(exc)) from None
            except Unavailable as exc:
                raise ControlError("not_primary", f"not killed: {exc} (nothing was blocked or cancelled)") from None

        async def unkill(params: dict[str, Any]) -> Any:
            scope, reason = scope_and_reason(params)
            try:
                return await self.unkill(scope, reason, who())
            except GuardRecordError as exc:
                raise ControlError("bad_request", str(exc)) from None
            except Unavailable as exc:
                raise ControlError("not_primary", f"not unkilled: {exc}") from None

        async def status(params: dict[str, Any]) -> Any:
            now = self.wall()
            return {**self.blocks_writer.blocks().snapshot(now), "kills": self.kills, "last_kill": self.last}

        control.register("guard.kill", kill,
                         help='Kill switch: {"venue", "symbol", "reason"}: refuse new orders on the scope and cancel '
                              "every open order there at every venue; `lifeline kill`.")
        control.register("guard.unkill", unkill,
                         help='Lift a kill: {"venue", "symbol", "reason"}; `lifeline unkill`.')
        control.register("guard.status", status, help="The blocks in force and the last kill's report.")

