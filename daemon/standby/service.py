"""The standby service: the journal, its replication, and the writer API on the control
socket.

The trading engine talks to it over the control socket:

``journal.append`` ``{"payloads": ["text", ...]}`` (or ``"payloads_b64"`` for binary)
    appends the records in order and answers one result per record:
    ``{"seq": 42, "epoch": 1, "status": "ok" | "in_doubt", "durable_on": ..., "reason": ...}``.

    The writer's contract: **ok** means the record is durable as the mode promises (in
    ``sync`` mode, on the standby's disk too: a failover cannot lose it). **in_doubt**
    means the record *is* in the primary's journal with that seq but may not have
    reached the standby (the wait for its acknowledgement timed out or was cancelled,
    or the standby is gone under ``on_standby_loss = "block"``). The engine must not
    treat an in-doubt order as placed or as not placed: it must not resend it blindly
    (that could trade twice) — it reconciles first (ask the venue by client order id,
    or read the journal back after the pair is in sync) and then decides. A request the
    daemon refuses outright (not primary, payload too large) is an error reply: nothing
    was written.

``journal.read`` ``{"from": SEQ, "limit": N}``  records back, payloads as text when
they are UTF-8, else base64 (``"payload_b64"``).

``journal.stats``  the journal's and the replication link's figures.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol

import trio

from daemon.core.acl import audit_by
from daemon.core.audit import AuditFactory
from daemon.core.bus import EventBus
from daemon.core.control import ControlRegistry
from daemon.core.control_client import ControlError
from daemon.core.events import JournalTailTruncated
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample, ServiceStatus
from daemon.standby import MAX_PAYLOAD, Position, StandbyError, record_to_json
from daemon.standby.config import StandbySettings
from daemon.standby.hooks import HookRunner
from daemon.standby.journal import Journal
from daemon.standby.keys import load_replication_key
from daemon.standby.leadership import Leadership, Watchdog
from daemon.standby.lease import LeaseStore, check_pause_seconds
from daemon.standby.replication import ReplicationPrimary, ReplicationStandby
from daemon.standby.roles import Role
from daemon.standby.stores import open_lease_store

log = get_logger("standby")

#: How often closed segments are considered for removal (journal retention).
RETENTION_INTERVAL = 60.0

#: Most records one journal.append request may carry.
MAX_BATCH = 10_000


def journal_directory(config: StandbySettings) -> Path:
    return Path(config.node.state_dir) / "journal"


def _who(by: dict[str, Any] | None) -> str:
    """The control caller as a short name for the lease store and the logs."""
    if not by:
        return "daemon"
    return str(by.get("user") or f"uid {by.get('uid')}")


def payloads_from_params(params: dict[str, Any]) -> list[bytes]:
    """The payloads of a journal.append request, validated; ControlError otherwise."""
    if "payloads" in params:
        items = params["payloads"]
        # str.encode over the list in C; it refuses a non-string item (TypeError), which
        # is the same check as isinstance(item, str) without a second pass.
        if not isinstance(items, list):
            raise ControlError("bad_request", '"payloads" must be a list of strings')
        try:
            payloads = list(map(str.encode, items))
        except TypeError:
            raise ControlError("bad_request", '"payloads" must be a list of strings') from None
    elif "payloads_b64" in params:
        items = params["payloads_b64"]
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            raise ControlError("bad_request", '"payloads_b64" must be a list of base64 strings')
        try:
            payloads = [base64.b64decode(p, validate=True) for p in items]
        except (binascii.Error, ValueError) as exc:
            raise ControlError("bad_request", f"invalid base64 in payloads_b64: {exc}") from None
    elif "payload" in params and isinstance(params["payload"], str):
        payloads = [params["payload"].encode("utf-8")]
    else:
        raise ControlError("bad_request", 'expected {"payloads": ["...", ...]} or {"payloads_b64": [...]}')
    if not payloads:
        raise ControlError("bad_request", "no payloads")
    if len(payloads) > MAX_BATCH:
        raise ControlError("bad_request", f"at most {MAX_BATCH} payloads per request, found {len(payloads)}")
    if max(map(len, payloads)) > MAX_PAYLOAD:
        for i, payload in enumerate(payloads):
            if len(payload) > MAX_PAYLOAD:
                raise ControlError("too_large", f"payload {i} is {len(payload)} bytes; the limit is {MAX_PAYLOAD}")
    return payloads


class PayloadCheck(Protocol):
    """The order-record check on the append path (the venues', :func:`daemon.venues.orders.check_payload`):
    None for a payload that may be written, else the problem, one line. ``epoch``: the lease
    epoch this primary appends at (a ``new`` order of another epoch is refused)."""

    def __call__(self, payload: bytes, /, *, epoch: int | None = None) -> str | None: ...


class AppendGate(Protocol):
    """The checks on the append path (the guard's risk gate with the venues' order-record
    format check, composed by daemon/app.py): parse each payload once and decide the whole
    batch before anything is written, then hear whether it was written.

    ``check`` raises :class:`ControlError` to refuse the batch (nothing is written) and
    returns a ticket; exactly one of ``written`` (the records are in the journal, ok or in
    doubt, as ``first_seq..last_seq``) or ``abandoned`` follows (``unknown_end``: the append
    was cancelled and may have written up to that seq). ``internal``: lifeline's own
    records (guard records), not the control socket's."""

    def check(self, payloads: list[bytes], internal: bool = False, /) -> Any: ...

    def written(self, ticket: Any, first_seq: int, last_seq: int, /) -> None: ...

    def abandoned(self, ticket: Any, unknown_end: int | None = None, /) -> None: ...


class WatchdogOpener(Protocol):
    """Opens the hardware watchdog for leadership (:func:`hardware.watchdog.open_watchdog` is one)."""

    def __call__(self, mode: Literal["off", "optional", "required"], path: Path, /) -> Watchdog: ...


class StandbyService:
    """Owns the journal and the replication role of this host.

    With a fixed ``standby.role`` the role never changes. With ``[standby.lease]`` the
    leadership shell (:mod:`daemon.standby.leadership`) moves it: this service is its
    :class:`~daemon.standby.leadership.RoleHost` — ``become_primary`` / ``fence`` /
    ``follow`` — and one runner task switches the replication side to match, one
    switch at a time (the old side has stopped before the new one starts)."""

    name = "standby"

    def __init__(self, config: StandbySettings, bus: EventBus, *, key: bytes | None = None,
                 lease_store: LeaseStore | None = None, watchdog: Watchdog | None = None,
                 check_payload: PayloadCheck | None = None, open_watchdog: WatchdogOpener | None = None,
                 audit_factory: AuditFactory | None = None, append_gate: AppendGate | None = None) -> None:
        assert config.standby is not None
        self.config = config
        self.settings = config.standby
        self.bus = bus
        self.role: str = self.settings.role or "waiting"
        self._key = key
        self._lease_store = lease_store
        self._watchdog = watchdog
        self._check_payload = check_payload
        #: Set after construction by daemon/app.py (the guard is built after the standby).
        self.append_gate = append_gate
        self._open_watchdog = open_watchdog
        self._audit_factory = audit_factory
        self.journal: Journal | None = None
        self.replication: ReplicationPrimary | ReplicationStandby | None = None
        self.leadership: Leadership | None = None
        #: Appends are accepted only while this is True (primary, replication serving).
        self.accepting = False
        #: Set by a playbook's engine.halt: appends are refused until engine.resume.
        self.halted: str | None = None
        self.epoch = 0
        self.appends = 0
        self.in_doubt = 0
        #: Torn tails cut when the journal was opened (shown in status details).
        self.repairs: list[str] = []
        self._wanted: tuple[str, int, str] = ("none", 0, "")  # (side, epoch, primary node)
        self._wanted_changed = trio.Event()
        #: A switchover in progress: appends are refused with this reason.
        self.holding: str | None = None
        self._appends_in_flight = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        key = self._key if self._key is not None else load_replication_key(self.settings.key_file)
        self._key = key
        directory = journal_directory(self.config)
        # Opening scans and verifies every segment: blocking file I/O, off the loop.
        self.journal = await trio.to_thread.run_sync(Journal.open, directory, self.settings.journal)
        # The journal logged each repair as it made it; tell subscribers and status too.
        for report in self.journal.recoveries:
            self.repairs.append(str(report))
            self.bus.publish(JournalTailTruncated(
                source=self.name, file=str(report.file), records_dropped=report.records_dropped,
                bytes_dropped=report.bytes_dropped, reason=report.reason))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.journal.run)
                if self.settings.lease is None:
                    self._set_wanted("primary" if self.role == "primary" else "standby", 1, "")
                    if self.role == "primary":
                        self.epoch = max(self.journal.last.epoch, 1)
                    await nursery.start(self._replication_runner)
                else:
                    await nursery.start(self._replication_runner)
                    self.leadership = self._make_leadership()
                    await nursery.start(self.leadership.run)
                nursery.start_soon(self._retention_loop)
                log.info("standby.started", role=self.role, journal=str(directory),
                         last_seq=self.journal.last.seq, last_epoch=self.journal.last.epoch,
                         lease=self.settings.lease.backend if self.settings.lease else "none")
                task_status.started()
        finally:
            # Flush and release the files (and the directory lock) on the way out.
            self.accepting = False
            if self._lease_store is not None:
                with trio.move_on_after(1, shield=True):
                    await self._lease_store.aclose()
            self.journal.close()

    # ------------------------------------------------------------------ roles

    def _make_leadership(self) -> Leadership:
        lease = self.settings.lease
        assert lease is not None
        node = self.config.node.name
        if self._lease_store is None:
            assert self._key is not None  # loaded before leadership starts
            self._lease_store = open_lease_store(lease, node, self._key)
        watchdog = self._watchdog
        if watchdog is None and lease.watchdog != "off":
            if self._open_watchdog is None:
                raise StandbyError(f'standby.lease.watchdog = "{lease.watchdog}" but no watchdog was given to the '
                                   "standby service (daemon/app.py injects it)")
            watchdog = self._open_watchdog(lease.watchdog, lease.watchdog_device)
        # The hardware room's section is not part of StandbySettings (the rooms are independent):
        # only a hint in the log reads it, from a root config that has one.
        hardware = getattr(self.config, "hardware", None)
        if (lease.watchdog == "off" and getattr(hardware, "watchdog", None) is None
                and Path(lease.watchdog_device).exists()):
            log.info("watchdog.unused", device=str(lease.watchdog_device),
                     detail='[standby.lease] watchdog = "off": a hung primary host is not reset; its engine stops '
                            "by valid_until (README: what a hung daemon costs)")
        hooks = None
        if lease.on_primary or lease.on_fenced or lease.on_standby:
            hooks = HookRunner.from_lease_config(lease, node=node)
        store_name = lease.witness if lease.backend == "witness" else ",".join(lease.etcd_endpoints)
        return Leadership(node, lease.timings(), self._lease_store, self, bus=self.bus, watchdog=watchdog,
                          watchdog_required=lease.watchdog == "required", hooks=hooks,
                          store_name=f"{lease.backend} {store_name}")

    def current_role(self) -> str:
        machine = self.leadership.machine if self.leadership is not None else None
        if machine is not None:
            return f"{machine.role.value} (epoch {machine.epoch})" if machine.epoch else machine.role.value
        return self.role

    def journal_position(self) -> Position:
        assert self.journal is not None  # opened before leadership starts
        return self.journal.last

    def become_primary(self, epoch: int) -> None:
        """PROMOTE: serve replication and accept appends at ``epoch`` (once the runner
        has stopped following and started serving)."""
        self.role = "primary"
        self.epoch = epoch
        self._set_wanted("primary", epoch, self.config.node.name)

    def fence(self, reason: str) -> None:
        """FENCE: refuse appends now (before this returns), then stop serving."""
        self.accepting = False
        self.role = "fenced"
        self._set_wanted("none", self.epoch, "")
        log.warning("standby.fenced", epoch=self.epoch, reason=reason)

    def follow(self, node: str, epoch: int) -> None:
        self.accepting = False
        self.role = "standby"
        self._set_wanted("standby", epoch, node)

    def hold_appends(self, reason: str | None) -> None:
        """Switchover: refuse appends (not_primary, with ``reason``) from now; None lifts it."""
        self.holding = reason

    async def drained(self, timeout: float) -> bool:
        """Switchover: every append in flight answered and the standby has acknowledged
        the journal's end (``acked seq == last seq``), within ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while True:
                replication = self.replication
                acked = replication.standby_acked_seq if isinstance(replication, ReplicationPrimary) else None
                if (self._appends_in_flight == 0 and self.journal is not None and acked is not None
                        and acked >= self.journal.last.seq):
                    return True
                await trio.sleep(0.001)
        return False

    def _set_wanted(self, side: str, epoch: int, node: str) -> None:
        if self._wanted == (side, epoch, node):
            return  # already running that side: a restart would only drop its link
        self._wanted = (side, epoch, node)
        self._wanted_changed.set()

    async def _replication_runner(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the replication side the role wants, one at a time: the old side has
        fully stopped (its journal writes finished) before the new one starts."""
        node = self.config.node.name
        started = False
        async with trio.open_nursery() as nursery:
            while True:
                wanted = self._wanted
                self._wanted_changed = trio.Event()
                side, epoch, primary = wanted
                scope = trio.CancelScope()
                assert self._key is not None  # loaded before the runner starts
                assert self.journal is not None  # opened before the runner starts
                journal = self.journal
                if side == "primary":
                    # A fixed-role primary stamps the journal's epoch (at least 1); a
                    # leased one, the lease's epoch.
                    provider = (lambda e=epoch: e) if self.leadership is not None else None
                    primary_side = ReplicationPrimary(
                        journal, self.settings, node, self._key, bus=self.bus,
                        epoch_provider=provider, limits=self.config.listeners.limits())
                    if self.leadership is not None:
                        primary_side.sync_listener = self.leadership.standby_sync_changed
                        primary_side.async_gate = self.leadership.async_allowed
                    replication: ReplicationPrimary | ReplicationStandby | None = primary_side
                elif side == "standby":
                    replication = standby_side = ReplicationStandby(journal, self.settings, node, self._key,
                                                                    bus=self.bus)
                    standby_side.min_epoch = epoch if self.leadership is not None else 0
                    standby_side.divergent_dir = Path(self.config.node.state_dir) / "divergent"
                else:
                    replication = None
                done = trio.Event()
                if replication is not None:
                    self.replication = replication

                    async def side_task(r: ReplicationPrimary | ReplicationStandby = replication, s: trio.CancelScope = scope,
                                        d: trio.Event = done, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                                        ) -> None:
                        try:
                            with s:
                                await r.run(task_status=task_status)
                        finally:
                            d.set()

                    await nursery.start(side_task)
                else:
                    done.set()
                if side == "primary" and self._wanted == wanted:
                    self.accepting = True
                    log.info("standby.serving", epoch=epoch, listen=self.settings.listen,
                             last_seq=journal.last.seq)
                if not started:
                    started = True
                    task_status.started()
                await self._wanted_changed.wait()
                if side == "primary":
                    self.accepting = False
                scope.cancel()
                await done.wait()

    async def _retention_loop(self) -> None:
        """Remove old closed segments, but only ones both nodes hold: on the primary, up
        to what the standby acknowledged; on the standby, up to its own durable end (it
        received every record from the primary)."""
        while True:
            await trio.sleep(RETENTION_INTERVAL)
            if self.journal is None:
                continue
            if self.accepting:
                replication = self.replication
                through = replication.standby_acked_seq if isinstance(replication, ReplicationPrimary) else 0
            else:
                through = self.journal.last.seq
            if through <= 0:
                continue
            try:
                removed = self.journal.remove_segments_through(through)
            except StandbyError as exc:
                log.warning("journal.retention_failed", error=str(exc))
                continue
            if removed:
                log.info("journal.retention", segments_removed=removed, through_seq=through)

    # ------------------------------------------------------------------ control

    def register_control(self, control: ControlRegistry) -> None:
        control.register("journal.append", self._append,
                         help='Append records: {"payloads": ["...", ...]}; one result per record '
                              '(status ok | in_doubt; see the writer contract in the README).')
        control.register("journal.read", self._read, help='Records back: {"from": SEQ, "limit": N}.')
        control.register("journal.stats", self._stats, help="The journal's and the replication link's figures.")
        control.register("role.status", self._role_status,
                         help="This node's role, epoch and lease, and why; `lifeline role`.")
        control.register_stream("role.watch", self._role_watch,
                                help="The engine's role feed: the current {role, epoch, valid_until, ...} first, "
                                     "then every change and every lease renewal in order. Trade only while role "
                                     "is primary and CLOCK_MONOTONIC is before valid_until (ns).")
        control.register("standby.promote", self._promote,
                         help='Allow this node to take a FREE lease although it may lack acknowledged records: '
                              '{"accept_loss": true}. Never takes a live lease; `lifeline standby promote`.')
        control.register("standby.switchover", self._switchover,
                         help='Planned handover to the in-sync standby: {"to": NODE|null}. Refuses appends, drains, '
                              "fences, hands the lease over at the next epoch; `lifeline switchover`.")
        control.register("standby.pause", self._pause,
                         help='Maintenance mode for the pair: no automatic promotion for {"seconds": S} '
                              "(default 3600, at most 86400); `lifeline pause --for 2h`.")
        control.register("standby.resume", self._resume, help="End the maintenance pause; `lifeline resume`.")

    async def _append(self, params: dict[str, Any]) -> Any:
        if self.holding is not None:
            raise ControlError("not_primary", f"this host ({self.config.node.name}) is {self.holding}: appends are "
                                              "refused; append on the new primary once role.watch names it "
                                              "(nothing was written)")
        if not self.accepting or self.replication is None or (
                self.leadership is not None and not self.leadership.may_trade()):
            raise ControlError("not_primary", f"this host ({self.config.node.name}) is {self.role}, not an "
                                              "accepting primary; append on the primary (nothing was written)")
        if self.halted is not None:
            raise ControlError("halted", f"trading is halted ({self.halted}); a playbook's engine.resume or an "
                                         "operator lifts it (nothing was written)")
        payloads = payloads_from_params(params)
        return {"results": await self._append_payloads(payloads, False)}

    async def append_records(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        """Lifeline's own records (the guard's): the same path and checks as journal.append,
        with ``internal`` set; ControlError when this node does not accept appends."""
        if not self.accepting or self.replication is None:
            raise ControlError("not_primary", f"this host ({self.config.node.name}) is {self.role}, not an "
                                              "accepting primary (nothing was written)")
        return await self._append_payloads(payloads, True)

    async def _append_payloads(self, payloads: list[bytes], internal: bool) -> list[dict[str, Any]]:
        gate = self.append_gate
        ticket = self._check_order_records(payloads, internal)
        replication = self.replication
        # The callers checked: accepting means a primary side is serving.
        assert replication is not None and not isinstance(replication, ReplicationStandby)
        self._appends_in_flight += 1
        written = False
        try:
            runs = await replication.append_runs(payloads)
            written = True
        except StandbyError as exc:
            raise ControlError("refused", str(exc)) from None
        finally:
            self._appends_in_flight -= 1
            if gate is not None and not written:
                # Refused by the journal or cancelled: some records may be in it all the same
                # (logged in doubt), or still be written by the journal's queue: the gate holds
                # the batch until it has folded that far past the journal's end now.
                end = self.journal.last.seq if self.journal is not None else 0
                gate.abandoned(ticket, end + len(payloads))
        if gate is not None and runs:
            try:
                gate.written(ticket, runs[0].first, runs[-1].last)
            except Exception as exc:  # noqa: BLE001 - the records are written: the reply must say so
                log.error("journal.append_gate_failed", error=f"{type(exc).__name__}: {exc}",
                          first_seq=runs[0].first, last_seq=runs[-1].last)
        out: list[dict[str, Any]] = []
        for run in runs:
            count = run.last - run.first + 1
            self.appends += count
            if run.status != "ok":
                self.in_doubt += count
            epoch, status, durable_on, reason = run.epoch, run.status, run.durable_on, run.reason
            out += [{"seq": seq, "epoch": epoch, "status": status, "durable_on": durable_on, "reason": reason}
                    for seq in range(run.first, run.last + 1)]
        return out

    def _check_order_records(self, payloads: list[bytes], internal: bool = False) -> Any:
        """Order records must be valid and name a configured venue: reconciliation after a
        failover trusts them (the check is the venues', injected by daemon/app.py), and pass
        the risk gate (the :class:`AppendGate`, which does the venues' check with its own
        parse). Other payloads pass as they are. Returns the gate's ticket."""
        if self.append_gate is not None:
            return self.append_gate.check(payloads, internal)
        if self._check_payload is None:
            return None
        for i, payload in enumerate(payloads):
            problem = self._check_payload(payload, epoch=self.epoch)
            if problem is not None:
                raise ControlError("bad_record", f"payload {i}: order record: {problem} (nothing was written)")
        return None

    async def _read(self, params: dict[str, Any]) -> Any:
        start = params.get("from", 1)
        limit = params.get("limit", 100)
        if not isinstance(start, int) or isinstance(start, bool) or start < 1:
            raise ControlError("bad_request", '"from" must be a positive integer (a seq)')
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise ControlError("bad_request", '"limit" must be an integer from 1 to 10000')
        if self.journal is None:
            raise ControlError("not_ready", "the journal is not open yet")
        records = await trio.to_thread.run_sync(self.journal.read, start, limit)
        return {"records": [record_to_json(r) for r in records], "last_seq": self.journal.last.seq,
                "first_seq": self.journal.first_seq}

    async def _stats(self, params: dict[str, Any]) -> Any:
        return self.details()

    def _require_leadership(self) -> Leadership:
        if self.leadership is None:
            raise ControlError("no_lease", f"this host has a fixed role ({self.role}): roles move only with "
                                           "[standby.lease] configured")
        return self.leadership

    async def _role_status(self, params: dict[str, Any]) -> Any:
        if self.leadership is None:
            return {"node": self.config.node.name, "role": self.role, "epoch": self.epoch, "fixed": True,
                    "reason": "fixed role (no [standby.lease])"}
        out = self.leadership.details()
        out["accepting_appends"] = self.accepting
        return out

    async def _role_watch(self, params: dict[str, Any], reply: Any) -> None:
        leadership = self._require_leadership()
        channel = leadership.watch()
        with channel:
            await reply.start()
            async for message in channel:
                await reply.send(message)
        # The feed was cut (too slow, or the daemon is stopping): say so, so the
        # engine stops trading rather than act on a role it can no longer follow.
        await reply.send({"role": "unknown", "epoch": 0, "reason": "role feed closed: re-subscribe",
                          "valid_until": None, "valid_for": None})

    async def _promote(self, params: dict[str, Any]) -> Any:
        leadership = self._require_leadership()
        accept = params.get("accept_loss")
        if accept is not True:
            raise ControlError("bad_request", 'an override must say {"accept_loss": true}: this node may lack '
                                              "records the old primary acknowledged")
        result = leadership.operator_promote(True)
        await self._audit_promote(result)
        return result

    async def _switchover(self, params: dict[str, Any]) -> Any:
        leadership = self._require_leadership()
        to = params.get("to")
        if to is not None and (not isinstance(to, str) or not 0 < len(to) <= 64):
            raise ControlError("bad_request", '"to" must be a node name or null (the in-sync standby)')
        result = await leadership.switchover(to, by=_who(audit_by()))
        await self._audit("standby.switchover", to=to, ok=result.get("ok"), reason=result.get("reason"),
                          epoch=result.get("epoch"))
        return result

    async def _pause(self, params: dict[str, Any]) -> Any:
        leadership = self._require_leadership()
        seconds = params.get("seconds", 3600)
        try:
            seconds = check_pause_seconds(seconds)
        except ValueError as exc:
            raise ControlError("bad_request", f'"seconds": {exc}') from None
        if seconds == 0:
            raise ControlError("bad_request", '"seconds" must be above 0: `lifeline resume` ends a pause')
        result = await leadership.set_pause(seconds, _who(audit_by()))
        await self._audit("standby.pause", seconds=seconds, ok=result.get("ok"), reason=result.get("reason"))
        return result

    async def _resume(self, params: dict[str, Any]) -> Any:
        leadership = self._require_leadership()
        result = await leadership.set_pause(0.0, _who(audit_by()))
        await self._audit("standby.resume", ok=result.get("ok"), reason=result.get("reason"))
        return result

    async def _audit(self, action: str, **fields: Any) -> None:
        """One line in the audit chain with who asked (the control caller)."""
        def append() -> None:
            if self._audit_factory is None:
                raise StandbyError("no audit log was given to the standby service (daemon/app.py injects it)")
            audit = self._audit_factory()
            try:
                audit.append(action, node=self.config.node.name, by=by, **fields)
            finally:
                audit.close()

        by = audit_by()
        try:
            await trio.to_thread.run_sync(append)
        except Exception as exc:  # noqa: BLE001 - the action stands; the failure is reported
            log.error("standby.audit_failed", action=action, error=f"{type(exc).__name__}: {exc}", by=by)

    async def _audit_promote(self, result: Any) -> None:
        """The override goes to the audit chain with who asked (the control caller)."""
        def append() -> None:
            if self._audit_factory is None:
                raise StandbyError("no audit log was given to the standby service (daemon/app.py injects it)")
            audit = self._audit_factory()
            try:
                audit.append("standby.promote", accept_loss=True, node=self.config.node.name, by=by,
                             accepted=bool(result.get("accepted")) if isinstance(result, dict) else None,
                             reason=result.get("reason") if isinstance(result, dict) else None)
            finally:
                audit.close()

        by = audit_by()
        try:
            await trio.to_thread.run_sync(append)
        except Exception as exc:  # noqa: BLE001 - the override stands; the failure is reported
            log.error("standby.promote_audit_failed", error=f"{type(exc).__name__}: {exc}", by=by)

    # ------------------------------------------------------------------ reporting

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.current_role(), "appends": self.appends, "in_doubt": self.in_doubt,
                               "repaired_at_open": self.repairs}
        if self.journal is not None:
            out["journal"] = self.journal.stats()
        if self.replication is not None:
            out["replication"] = self.replication.details()
        return out

    def status(self) -> ServiceStatus:
        status = self._status()
        pause = self.leadership.pause_info() if self.leadership is not None else None
        if pause is None:
            return status
        left = int(pause["for_s"])
        return ServiceStatus(status.health, f"{status.summary}; PAUSED (maintenance, by {pause['by']}) for "
                                            f"{left // 3600}h{left % 3600 // 60:02d}m more: no automatic promotion",
                             status.details)

    def _status(self) -> ServiceStatus:
        if self.journal is None:
            return ServiceStatus("ok", "opening the journal")
        last = self.journal.last
        role = self.current_role()
        machine = self.leadership.machine if self.leadership is not None else None
        if self.replication is None or (machine is not None and machine.role.value in ("waiting", "fenced")):
            # No replication side running (yet): the role and its reason say it all.
            reason = machine.reason if machine is not None else "starting"
            health: Any = "degraded" if self.leadership is not None and self.leadership.store_reachable is False \
                else "ok"
            return ServiceStatus(health, f"{role}, journal at seq {last.seq} (epoch {last.epoch}): {reason}",
                                 self.details())
        replication = self.replication.status()
        summary = f"{role}, journal at seq {last.seq} (epoch {last.epoch}); {replication.summary}"
        return ServiceStatus(replication.health, summary, self.details())

    def metrics(self) -> Iterable[MetricFamily]:
        if self.journal is not None:
            last = self.journal.last
            yield MetricFamily.single("lifeline_journal_last_seq", "gauge", "Seq of the journal's last record.",
                                      last.seq)
            yield MetricFamily.single("lifeline_journal_epoch", "gauge", "Epoch of the journal's last record.",
                                      last.epoch)
            yield MetricFamily.single("lifeline_journal_appends_total", "counter",
                                      "Records appended through the control socket.", self.appends)
            yield MetricFamily.single("lifeline_journal_in_doubt_total", "counter",
                                      "Appends answered in-doubt.", self.in_doubt)
            yield from self.journal.fsync_seconds.collect()
        leadership = self.leadership
        machine = leadership.machine if leadership is not None else None
        if leadership is not None and machine is not None:
            yield MetricFamily("lifeline_role", "gauge", "1 for this node's current role, else 0.",
                               [Sample({"role": r.value}, 1.0 if machine.role is r else 0.0) for r in Role])
            yield MetricFamily.single("lifeline_lease_epoch", "gauge",
                                      "The epoch this node holds (primary) or last held; 0 if never.", machine.epoch)
            yield MetricFamily.single("lifeline_lease_highest_epoch", "gauge",
                                      "The highest epoch this node has seen in the store or its journal.",
                                      machine.highest_epoch)
            yield MetricFamily.single("lifeline_role_changes_total", "counter", "Role changes since start.",
                                      leadership.role_changes)
            yield MetricFamily.single("lifeline_lease_store_reachable", "gauge",
                                      "1 if the lease store answered the last request, else 0.",
                                      1.0 if leadership.store_reachable else 0.0)
            yield from leadership.promotion_seconds.collect()
        if self.replication is not None:
            yield from self.replication.metrics()
