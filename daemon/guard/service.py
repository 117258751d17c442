"""The guard's service: owns the blocks, the risk book and the gate; sits on the journal's
append path (the standby's :class:`~daemon.standby.service.AppendGate` seam, injected by
:mod:`daemon.app`) and folds the journal on either role.

- **On the append path** (:meth:`check` / :meth:`written` / :meth:`abandoned`): each
  payload is parsed once (the venues' order-record parser, injected, shared with their
  format check), invalid order / mark records are refused as before (``bad_record``), guard
  records from the control socket are refused (only lifeline writes them), and the gate
  decides the batch (``risk_refused``: limit, figure, field; nothing written).
- **The fold**: the primary folds what it writes as soon as the append returns (so the
  next decision sees it); a loop tails the journal on both roles (the venues' index does
  the same) for everything else — what the standby receives, what another writer wrote.
  After a failover the new primary's book is the one it folded as a standby. A journal
  whose tail was cut and rewritten (a divergent standby) is folded again from its start.
- **Limits**: loaded at start and on ``config.reload`` (SIGHUP); a refused file leaves the
  last good limits in force (status shows why); with no last good one the daemon does not
  start (``lifeline run`` checks first: exit 78).
- :class:`BlocksWriter` for the kill switch and the breakers: :meth:`write` puts a guard
  record through the journal (primary) and applies it; without a journal the blocks live
  in memory only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import trio

from daemon.core.acl import audit_by
from daemon.core.audit import AuditFactory
from daemon.core.bus import EventBus
from daemon.core.control import ControlRegistry
from daemon.core.control_client import ControlError
from daemon.core.errors import Unavailable
from daemon.core.journal import JournalHolder, JournalReader
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample, ServiceStatus
from daemon.guard.blocks import BlocksWriter, GuardRecord, GuardRecordError, Scope, TradingBlocks, parse_guard_record
from daemon.guard.book import Book, Mark, MarkError, RecordParser, parse_mark
from daemon.guard.config import GuardSettings
from daemon.guard.gate import Gate, Reservation, RiskRefused
from daemon.guard.limits import LimitsError, LimitsVerifier, SignedLimits, load_limits

log = get_logger("guard")

#: Records folded per batch before the fold loop yields to the event loop (~5 ms of work:
#: the standby's replication and acks must not wait behind a long catch-up fold).
FOLD_BATCH = 500


#: How long a guard record waits for a promotion under way on this node (it holds the lease,
#: appends not accepted yet) before it is refused.
PROMOTION_WAIT = 5.0

class JournalHost(JournalHolder, Protocol):
    """What the guard needs of the standby (:class:`daemon.standby.service.StandbyService`):
    its journal once open, whether it accepts appends, and the append path."""

    @property
    def accepting(self) -> bool: ...

    async def append_records(self, payloads: list[bytes], /) -> list[dict[str, Any]]: ...


def caller_name(by: dict[str, Any] | None) -> str:
    """``uid=N pid=N user=NAME`` of the control caller, or ``daemon``."""
    if not by:
        return "daemon"
    return " ".join(f"{k}={by[k]}" for k in ("uid", "pid", "user") if by.get(k) is not None) or "daemon"


class GuardService:
    name = "guard"

    def __init__(self, config: GuardSettings, bus: EventBus, *, standby: JournalHost | None = None,
                 parse_order: RecordParser | None = None, check_order: RecordParser | None = None,
                 verifier: LimitsVerifier | None = None,
                 audit_factory: AuditFactory | None = None, clock: Callable[[], float] = time.time,
                 why_not: Callable[[], str] | None = None, promoting: Callable[[], bool] | None = None) -> None:
        self.config = config
        #: Why this node may not write guard records (names the primary), for the refusal.
        self.why_not = why_not or (lambda: "this host is not the accepting primary: guard records are written "
                                           "on the primary")
        #: True while this node holds the lease but does not accept appends yet: a write waits
        #: for the promotion (at most PROMOTION_WAIT) instead of being refused.
        self.promoting = promoting or (lambda: False)
        self.settings = config.guard
        self.bus = bus
        self.standby = standby
        self.parse_order = parse_order
        #: the append path's parser: the fold's plus the venues' "configured venue" check
        self.check_order = check_order if check_order is not None else parse_order
        self.verifier = verifier
        self.audit_factory = audit_factory
        self.clock = clock
        self.book = Book(parse_order=parse_order)
        self.gate = Gate(self.book)
        self.signed: SignedLimits | None = None
        self.limits_error: str | None = None
        #: The initial fold has reached the journal's end at start: the gate may decide.
        self.ready = standby is None
        self._pending: dict[int, Any] = {}
        self._tip: tuple[int, int] | None = None  # (seq, epoch) of the last record folded from the journal
        self._target = 0  # the journal's end when the current fold started
        self.fold_seconds: float | None = None
        #: Records the fold never saw (removed by retention first), if any.
        self.gap: str | None = None
        self.folded_at_start = 0
        self.refused_batches = 0

    # ------------------------------------------------------------------ limits

    def load_limits(self) -> SignedLimits | None:
        """Load (or reload) the limits file; keep the last good limits when it is refused.
        Blocking (file reads, signature checks): call it off the event loop."""
        path = self.settings.limits
        if path is None:
            return None
        if self.verifier is None:
            raise LimitsError("no_signatures", f"{path}: no signature checker was given to the guard (daemon/app.py)")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise LimitsError("missing", f"{path}: cannot read the limits file ({exc.strerror}); fix the path "
                                         "([guard] limits) or its permissions") from None
        return load_limits(Path(path), data, self.verifier, self.clock())

    async def reload_limits(self, by: str = "daemon") -> dict[str, Any]:
        try:
            signed = await trio.to_thread.run_sync(self.load_limits)
        except LimitsError as exc:
            self.limits_error = exc.message
            log.warning("guard.limits_refused", reason=exc.reason, error=exc.message, by=by,
                        kept=self.signed.limits.version if self.signed else None)
            await self._audit("risk.limits_refused", reason=exc.reason, error=exc.message, by=by)
            return {"ok": False, "reason": exc.reason, "error": exc.message,
                    "kept": self.signed.describe() if self.signed else None}
        if signed is None:
            return {"ok": True, "limits": None}
        self.limits_error = None
        changed = self.signed is None or self.signed.sha256 != signed.sha256
        self.signed = signed
        self.gate.limits = signed.limits
        if changed:
            log.info("guard.limits_loaded", file=str(signed.path), version=signed.limits.version,
                     signers=",".join(signed.signers), expires=signed.describe()["expires"], by=by)
            await self._audit("risk.limits_loaded", version=signed.limits.version, signers=list(signed.signers),
                              sha256=signed.sha256, by=by)
        return {"ok": True, "limits": signed.describe()}

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.settings.limits is not None:
            result = await self.reload_limits()
            if not result["ok"]:
                # `lifeline run` checked it first (exit 78): this is a file changed since.
                raise LimitsError(result["reason"], result["error"])
        async with trio.open_nursery() as nursery:
            if self.standby is not None:
                # The journal as it is at start is folded before this service says it started
                # (READY=1 then means the gate decides on every record already written).
                await nursery.start(self._fold_loop)
            else:
                log.info("guard.memory_only", detail="no [standby] journal: kill / pause / throttle blocks are kept in "
                                                     "memory only (lost on restart)")
            task_status.started()
            await trio.sleep_forever()  # a service runs until the daemon stops

    async def _fold_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fold the journal in order, on either role (as the venues' order index does)."""
        standby = self.standby
        assert standby is not None
        while (journal := standby.journal) is None:
            await trio.sleep(0.05)
        started = time.perf_counter()
        self._target = journal.last.seq
        announced = False
        while True:
            if self.ready and not announced:
                announced = True
                task_status.started()
            if not self._consistent(journal):
                log.warning("guard.book_rebuilt", reason="the journal's tail was cut and rewritten",
                            position=self.book.position, last=journal.last.seq)
                self._reset()
            last = journal.last.seq
            start = max(self.book.position + 1, journal.first_seq)
            if start > self.book.position + 1 and last >= start:
                # Removed by retention before this node folded them: positions from those
                # fills are unknown here (open orders come back with the next snapshot).
                self.gap = f"journal records {self.book.position + 1}-{start - 1} were no longer retained"
                log.warning("guard.fold_gap", detail=self.gap)
            if start <= last:
                try:
                    self._fold_from(journal, start)
                except Exception as exc:  # noqa: BLE001 - retention or a cut under us: fold again
                    log.warning("guard.fold_error", error=f"{type(exc).__name__}: {exc}")
                    self._reset()
                    await trio.sleep(0.2)
                    continue
                if not self.ready and self.book.position >= self._target:
                    self._mark_ready(started)
                await trio.lowlevel.checkpoint()
                continue
            if not self.ready:
                self._mark_ready(started)
                continue
            with trio.move_on_after(0.5):
                try:
                    await journal.wait_beyond(last)
                except Exception:  # noqa: BLE001 - the journal closed: the daemon is stopping
                    return

    def _mark_ready(self, started: float) -> None:
        self.ready = True
        self.fold_seconds = time.perf_counter() - started
        self.folded_at_start = self.book.position
        log.info("guard.folded", through_seq=self.book.position, seconds=round(self.fold_seconds, 3),
                 open_orders=len(self.book.orders), instruments=len(self.book.instruments))

    def _fold_from(self, journal: JournalReader, start: int) -> None:
        now = self.clock()
        # At start (not yet ready) in bigger reads: the journal decodes a whole chunk per read.
        for record in journal.read(start, FOLD_BATCH if self.ready else 10 * FOLD_BATCH):
            parsed = self._pending.pop(record.seq, _MISSING)
            if parsed is _MISSING:
                self.book.apply(record.seq, record.payload, now)
            else:
                self.book.apply_parsed(record.seq, parsed, now)
            self._tip = (record.seq, record.epoch)
        self.gate.release_folded()

    def _consistent(self, journal: JournalReader) -> bool:
        if self._tip is None:
            return True
        seq, epoch = self._tip
        if journal.last.seq < seq:
            return False
        try:
            now = journal.epoch_at(seq)
        except Exception:  # noqa: BLE001 - not retained any more: retention, not a cut
            return True
        return now is None or now == epoch

    def _reset(self) -> None:
        """Fold again from the journal's start; the gate refuses new orders (not_ready) until then."""
        journal = self.standby.journal if self.standby is not None else None
        if journal is not None:
            self.ready = False
            self._target = journal.last.seq
        limits, tickers = self.gate.limits, self.gate.tickers
        self.book = Book(parse_order=self.parse_order)
        self.gate = Gate(self.book, limits, tickers)
        self._pending.clear()
        self._tip = None

    # ------------------------------------------------------------------ the append path

    def check(self, payloads: list[bytes], internal: bool = False) -> Any:
        """Parse and decide one ``journal.append`` batch; ControlError refuses it whole."""
        parse = self.check_order
        parsed: list[Any] = []
        any_new = False
        for i, payload in enumerate(payloads):
            if b'"record"' not in payload:
                parsed.append(None)
                continue
            try:
                # A mark record first (one JSON parse, not two); None for anything else.
                record: Any = parse_mark(payload) if b'"mark"' in payload else None
                if record is None and parse is not None:
                    record = parse(payload)
                if record is None:
                    if b'"guard"' in payload:

                        record = parse_guard_record(payload)
                        if record is not None and not internal:
                            raise ControlError("bad_record", f"payload {i}: guard records are written by lifeline "
                                               "only (lifeline kill / unkill, lifeline risk pause / resume / throttle);"
                                               " nothing was written")
            except (MarkError, GuardRecordError) as exc:
                raise ControlError("bad_record", f"payload {i}: {'mark' if isinstance(exc, MarkError) else 'guard'} "
                                                 f"record: {exc} (nothing was written)") from None
            except ValueError as exc:
                raise ControlError("bad_record", f"payload {i}: order record: {exc} (nothing was written)") from None
            if record is not None and getattr(record, "state", None) == "new":
                any_new = True
            parsed.append(record)
        if any_new and not self.ready:
            raise ControlError("not_ready", f"the risk gate is still folding the journal (at seq {self.book.position}"
                                            "); retry in a moment (nothing was written)")
        try:
            ticket = self.gate.check(parsed, self.clock())
        except RiskRefused as exc:
            self.refused_batches += 1
            raise ControlError("risk_refused", exc.message()) from None
        return _Ticket(ticket, parsed)

    def written(self, ticket: Any, first_seq: int, last_seq: int) -> None:
        """The batch is in the journal (ok or in doubt) as ``first_seq..last_seq``: fold it now
        (what follows it in seq order waits for the records before it)."""
        if not isinstance(ticket, _Ticket):
            return
        book = self.book
        if last_seq - first_seq + 1 == len(ticket.parsed):
            now = self.clock()
            if first_seq == book.position + 1:  # the common case: nothing else in between
                for seq, parsed in enumerate(ticket.parsed, first_seq):
                    book.apply_parsed(seq, parsed, now)
            else:
                pending = self._pending
                for seq, parsed in enumerate(ticket.parsed, first_seq):
                    if seq > book.position:
                        pending[seq] = parsed
            pending = self._pending
            while pending and book.position + 1 in pending:
                seq = book.position + 1
                book.apply_parsed(seq, pending.pop(seq), now)
            journal = self.standby.journal if self.standby is not None else None
            if journal is not None and book.position >= last_seq:
                end = journal.last  # the divergence check's tip: the epoch of what was folded
                if end.seq == book.position:
                    self._tip = (end.seq, end.epoch)
        self.gate.written(ticket.reservation, last_seq)

    def abandoned(self, ticket: Any, unknown_end: int | None = None) -> None:
        """The batch was not written; ``unknown_end``: it may have been (a cancelled append):
        keep its reservation until the journal is folded through that seq."""
        if not isinstance(ticket, _Ticket):
            return
        if unknown_end is not None:
            self.gate.written(ticket.reservation, unknown_end)
        else:
            self.gate.abandon(ticket.reservation)

    # ------------------------------------------------------------------ BlocksWriter

    def blocks(self) -> TradingBlocks:
        return self.book.blocks

    async def write(self, record: GuardRecord, /) -> None:
        payload = record.to_payload()
        if self.standby is None:
            self.book.blocks.apply(record)
        else:
            if not self.standby.accepting:
                with trio.move_on_after(PROMOTION_WAIT):
                    while self.promoting():
                        await trio.sleep(0.05)
            if not self.standby.accepting:
                raise Unavailable(f"{self.why_not()} (guard records, here a {record.action}, are written on the "
                                  "primary)")
            try:
                results = await self.standby.append_records([payload])
            except ControlError as exc:
                raise Unavailable(f"the journal refused the guard record: {exc.message}") from None
            status = results[0].get("status") if results else None
            if status != "ok":
                log.warning("guard.record_in_doubt", action=record.action, status=status)
        log.warning("guard.block_changed", action=record.action, scope=record.scope.describe(), reason=record.reason,
                    by=record.by)
        await self._audit(f"risk.{record.action}", scope=record.scope.describe(), reason=record.reason,
                          by=record.by, until=record.until, rate=record.rate)

    # ------------------------------------------------------------------ control

    def register_control(self, control: ControlRegistry) -> None:
        control.register("risk.status", self._status_method,
                         help="The risk gate: limits and their use (nearest first), positions, P&L, open orders, "
                              "blocks, the limits file; `lifeline risk`.")
        for action, text in (("pause", 'Refuse new orders on a scope: {"venue", "symbol", "seconds", "reason"}.'),
                             ("resume", 'End the pauses in a scope: {"venue", "symbol", "reason"}.'),
                             ("throttle", 'At most "rate" new orders per second: {"rate", "burst", "seconds", '
                                          '"reason"}.'),
                             ("unthrottle", 'Lift the throttle: {"reason"}.')):
            control.register(f"risk.{action}", self._action(action), help=text + f" `lifeline risk {action}`.")

    def _action(self, action: str) -> Callable[[dict[str, Any]], Any]:
        async def handler(params: dict[str, Any]) -> Any:

            reason = params.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise ControlError("bad_request", '"reason" is required: say why (--reason TEXT)')
            now = self.clock()
            seconds = params.get("seconds")
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                        or not 0 < seconds <= 7 * 86400):
                raise ControlError("bad_request", '"seconds" must be above 0 and at most 7 days')
            rate = params.get("rate")
            burst = params.get("burst")
            if action == "throttle" and burst is None and isinstance(rate, (int, float)):
                burst = max(1.0, float(rate))
            try:
                record = GuardRecord(action, Scope(params.get("venue"), params.get("symbol")), reason,  # type: ignore[arg-type]
                                     caller_name(audit_by()), now,
                                     until=now + seconds if seconds is not None and action in ("pause", "throttle")
                                     else None,
                                     rate=float(rate) if action == "throttle" and rate is not None else None,
                                     burst=float(burst) if action == "throttle" and burst is not None else None)
            except GuardRecordError as exc:
                raise ControlError("bad_request", str(exc)) from None
            try:
                await self.write(record)
            except Unavailable as exc:
                raise ControlError("not_primary", str(exc)) from None
            return {"ok": True, "action": action, "scope": record.scope.describe(), "by": record.by,
                    "summary": f"{action} on {record.scope.describe()} by {record.by}: {reason}"}

        return handler

    async def _status_method(self, params: dict[str, Any]) -> Any:
        return self.details()

    def details(self) -> dict[str, Any]:
        now = self.clock()
        self.book.blocks.expire(now)
        return {"limits": self.signed.describe() if self.signed else None,
                "limits_error": self.limits_error, "ready": self.ready,
                "utilisation": self.gate.utilisation(now), "book": self.book.snapshot(now),
                "blocks": self.book.blocks.snapshot(now), "refusals": dict(self.gate.refusals),
                "last_refusal": self.gate.last_refusal, "checked": self.gate.checked,
                "fold_seconds_at_start": self.fold_seconds, "fold_gap": self.gap, "folded_at_start": self.folded_at_start,
                "limits_rules": self.signed.limits.to_dict() if self.signed else None}

    def status(self) -> ServiceStatus:
        now = self.clock()
        blocks = self.book.blocks.snapshot(now)
        parts = []
        if self.signed is not None:
            parts.append(f"limits v{self.signed.limits.version} (signed by {', '.join(self.signed.signers)})")
        else:
            parts.append("no limits")
        if self.standby is None:
            parts.append("no journal: blocks kept in memory only")
        if not self.ready:
            parts.append(f"folding the journal (seq {self.book.position})")
        parts.append(f"{len(self.book.orders)} open orders, day P&L {self.book.day_pnl(now)}")
        if blocks["blocks"]:
            parts.append("BLOCKED: " + "; ".join(f"{b['kind']} on {b['scope']}" for b in blocks["blocks"]))
        if blocks["throttle"]:
            parts.append(f"throttled to {blocks['throttle']['rate']}/s")
        refused = sum(self.gate.refusals.values())
        if refused:
            parts.append(f"{refused} new order(s) refused")
        health: Any = "ok"
        if self.limits_error:
            parts.append(f"LIMITS RELOAD REFUSED ({self.limits_error}); the last good limits stay")
            health = "degraded"
        return ServiceStatus(health, "; ".join(parts), self.details())

    def metrics(self) -> Iterable[MetricFamily]:
        now = self.clock()
        use = self.gate.utilisation(now)
        yield MetricFamily("lifeline_risk_limit_utilisation", "gauge",
                           "Use of each risk limit per venue and symbol (1 = at the limit).",
                           [Sample({"limit": u["limit"], "venue": u["venue"], "symbol": u["symbol"]}, u["utilisation"])
                            for u in use])
        yield MetricFamily("lifeline_risk_refusals_total", "counter", "New order records refused, by limit.",
                           [Sample({"limit": k}, float(v)) for k, v in sorted(self.gate.refusals.items())])
        insts = sorted(self.book.instruments.items())
        yield MetricFamily("lifeline_risk_position", "gauge", "Position folded from the fills, per venue and symbol.",
                           [Sample({"venue": v, "symbol": s}, float(i.position)) for (v, s), i in insts])
        yield MetricFamily("lifeline_risk_open_orders", "gauge", "Open orders folded from the journal.",
                           [Sample({"venue": v, "symbol": s}, float(i.open_orders)) for (v, s), i in insts])
        yield MetricFamily.single("lifeline_risk_day_pnl", "gauge",
                                  "The day's P&L (realised since 00:00 UTC + unrealised at the last mark).",
                                  float(self.book.day_pnl(now)))
        yield MetricFamily.single("lifeline_risk_blocks", "gauge", "Kill and pause blocks in force.",
                                  float(len(self.book.blocks.snapshot(now)["blocks"])))
        if self.signed is not None:
            yield MetricFamily.single("lifeline_risk_limits_version", "gauge", "Version of the limits in force.",
                                      float(self.signed.limits.version))

    async def _audit(self, action: str, **fields: Any) -> None:
        factory = self.audit_factory
        if factory is None:
            return

        def append() -> None:
            audit = factory()
            try:
                audit.append(action, node=self.config.node.name, **fields)
            finally:
                audit.close()

        try:
            await trio.to_thread.run_sync(append)
        except Exception as exc:  # noqa: BLE001 - the act stands; the failure is reported
            log.error("guard.audit_failed", action=action, error=f"{type(exc).__name__}: {exc}")


_MISSING = object()


class _Ticket:
    __slots__ = ("reservation", "parsed")

    def __init__(self, reservation: Reservation | None, parsed: list[Any]) -> None:
        self.reservation = reservation
        self.parsed = parsed


__all__ = ["BlocksWriter", "GuardService", "JournalHost", "Mark", "caller_name"]
