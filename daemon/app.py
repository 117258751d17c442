"""The composition root: turns a :class:`Config` into the running daemon.

This is the one place that knows which services exist, in which order they start and
which control methods they answer. Each later capability (uplinks, standby, venues,
hardware, recovery) adds its service here.
"""

from __future__ import annotations

import gc
import os
from functools import partial
from pathlib import Path
from typing import Any

import trio

from daemon import livedrills_run, operate
from daemon.config import Config
from daemon.control import ControlError, ControlServer, StreamReply
from daemon.core.audit import AuditFactory
from daemon.core.bus import EventBus
from daemon.core.events import unknown_kinds
from daemon.core.log import get_logger
from daemon.core.service import Service
from daemon.health import HealthFacts
from daemon.metrics import MetricsServer
from daemon.notify import Notifier
from daemon.standby.service import StandbyService
from daemon.supervisor import ServiceCrashed, Supervisor
from daemon.system import SystemHealthService
from daemon.uplinks.service import UplinkService
from daemon.venues.orders import check_payload
from hardware.watchdog import open_watchdog
from recovery.audit import host_audit_factory
from recovery.service import RecoveryService

log = get_logger("app")


# The seams between capabilities, injected here (README "Layout"): what one capability needs
# of another, as the keyword arguments of its service.


def audit_for(config: Config) -> AuditFactory:
    """The audit sink (recovery's hash-chained log) for the venues and the standby."""
    return host_audit_factory(config.node.state_dir,
                              config.recovery.audit_log if config.recovery is not None else None)


def standby_seams(config: Config) -> dict[str, Any]:
    """The standby's: the order-record check on the append path (the venues'), the watchdog
    for leadership (hardware's), the audit sink (recovery's)."""
    return {"check_payload": partial(check_payload, venues=list(config.venues)), "open_watchdog": open_watchdog,
            "audit_factory": audit_for(config)}


def guard_check(check: Any, blocks: Any) -> Any:
    """The venues' order-record check, then the kill switch's blocks: a ``new`` order record
    on a killed scope is refused (the gate's service takes this seam over when merged)."""
    import time

    from daemon.venues.orders import parse_order_record

    def checked(payload: bytes, /, *, epoch: int | None = None) -> str | None:
        problem = check(payload, epoch=epoch)
        if problem is not None:
            return str(problem)
        if not blocks.blocks().blocks:
            return None
        try:
            record = parse_order_record(payload)
        except ValueError:
            return None
        if record is None or record.state != "new":
            return None
        refusal = blocks.blocks().refusal(record.venue, record.symbol, time.time())
        return None if refusal is None else refusal.message()

    return checked


def primary_hint(standby: Any) -> str:
    """Who is primary, as a standby knows it: the lease holder, or the peer of a fixed role."""
    leadership = getattr(standby, "leadership", None)
    if leadership is not None:
        try:
            holder = (leadership.details().get("lease") or {}).get("holder")
        except Exception:  # noqa: BLE001 - a hint only
            holder = None
        if holder:
            return f"the primary is {holder} (the lease holder): run it there"
        return "no node holds the lease now: run it on the primary once one does (lifeline role)"
    peer = getattr(getattr(standby.config, "standby", None), "peer", None)
    return f"the primary is the peer at {peer}: run it there" if peer else "run it on the primary"


def guard_seams(config: Config, standby: Any) -> dict[str, Any]:
    """The kill switch's blocks writer: through the journal on the primary (a standby refuses,
    naming the primary), in memory on a host without a journal."""
    from daemon.core.control_client import ControlError as _ControlError
    from daemon.core.errors import Unavailable
    from daemon.guard.killswitch import MemoryBlocks

    if standby is None:
        return {"blocks": MemoryBlocks()}

    def may_write() -> bool:
        leadership = standby.leadership
        if leadership is not None:
            return bool(leadership.may_trade()) and bool(standby.accepting)
        return standby.role == "primary" and bool(standby.accepting)

    async def persist(payload: bytes) -> None:
        try:
            result = await standby._append({"payloads": [payload.decode("utf-8")]})
        except _ControlError as exc:
            raise Unavailable(f"the journal refused the guard record: {exc}") from None
        status = (result.get("results") or [{}])[0] if isinstance(result, dict) else {}
        if status.get("status", "ok") != "ok":
            raise Unavailable(f"the guard record was not acknowledged ({status.get('reason') or status.get('status')})")

    return {"blocks": MemoryBlocks(may_write=may_write, persist=persist,
                                   why_not=lambda: f"this node ({config.node.name}) is not primary; "
                                   + primary_hint(standby))}


def venue_seams(config: Config) -> dict[str, Any]:
    """The venues': the audit sink of reconciliation (recovery's)."""
    return {"audit_factory": audit_for(config)}


class _Later:
    """The standby, for seams built before it exists (the check on its own append path)."""

    def __init__(self, daemon: "Daemon") -> None:
        self._daemon = daemon

    def __getattr__(self, name: str) -> Any:
        return getattr(self._daemon.standby, name)


def breaker_service(config: Config, bus: EventBus, *, system: SystemHealthService, standby: Any,
                    venues: Any, writer: Any = None, killswitch: Any = None) -> Any:
    """The circuit breakers (daemon/guard): fed by the journal, the venues' matrix and the
    host's load; they act through guard records appended on the primary (until the gate's
    GuardService is merged: a plain BlocksWriter on journal.append) and, for a kill
    response, through the kill switch when one is given."""
    from daemon.core.errors import Unavailable
    from daemon.guard.breaker_service import BlocksActions, BreakerService, JournalBlocksWriter

    async def append(payload: bytes) -> None:
        if standby is None:
            return  # no journal: the blocks live in memory only
        try:
            await standby._append({"payloads": [payload.decode()]})
        except ControlError as exc:
            raise Unavailable(str(exc)) from None

    def load() -> float | None:
        # The larger of CPU busy and memory used, of those [system] judges: a threshold of 1.0
        # there (which nothing exceeds; the test pairs use it) leaves the resource out here too.
        sample, judged = system.machine.last_sample, config.system
        if sample is None:
            return None
        return max([sample.cpu_fraction] * (judged.cpu_threshold < 1.0)
                   + [sample.memory_used_fraction] * (judged.memory_threshold < 1.0), default=0.0)

    def paths() -> list[tuple[str, str, str]]:
        return [(p["venue"], p["uplink"], p["state"]) for p in venues.matrix()]

    actions = BlocksActions(writer if writer is not None else JournalBlocksWriter(append), killswitch)
    return BreakerService(config.guard.breakers, bus, actions=actions,
                          journal_holder=standby, paths=paths if venues is not None else None, load=load,
                          audit_factory=audit_for(config), node=config.node.name)


class Daemon:
    """Every service of one lifeline process, wired together."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None,
                 handle_signals: bool = True) -> None:
        self.config = config
        self.bus = EventBus(config.events.subscriber_buffer)
        self.control = ControlServer(
            config.control.socket,
            mode=config.control.mode_bits,
            group=config.control.group,
            max_request_bytes=config.control.max_request_bytes,
            max_append_bytes=config.control.max_append_bytes,
            max_connections=config.control.max_connections,
            max_connections_per_user=config.control.max_connections_per_user,
            idle_timeout=float(config.control.idle_timeout),
            request_timeout=float(config.control.request_timeout),
            roles={"engine": config.control.roles.engine, "operator": config.control.roles.operator,
                   "admin": config.control.roles.admin},
        )
        self.system = SystemHealthService(config.system, config.node.state_dir, self.bus)
        services: list[Service] = [self.control, self.system]
        self.uplinks: UplinkService | None = None
        if config.uplinks:
            self.uplinks = UplinkService(config, self.bus)
            self.uplinks.register_control(self.control)
            services.append(self.uplinks)
        self.standby: StandbyService | None = None
        self.guard_blocks: Any = None
        if config.standby is not None:
            seams = standby_seams(config)
            self.guard_blocks = guard_seams(config, _Later(self))["blocks"]
            seams["check_payload"] = guard_check(seams["check_payload"], self.guard_blocks)
            self.standby = StandbyService(config, self.bus, **seams)
            self.standby.register_control(self.control)
            services.append(self.standby)
        self.recovery: Any = None
        if config.recovery is not None:
            self.recovery = RecoveryService(config, self.bus, uplinks=self.uplinks, standby=self.standby)
            self.recovery.register_control(self.control)
            services.append(self.recovery)
        self.hardware: Any = None
        if config.hardware is not None:
            # After recovery: its playbooks subscribe before the first hardware event.
            # lazy: the device drivers and pyserial (~40 ms) only with [hardware]
            from hardware.service import HardwareService

            self.hardware = HardwareService(config, self.bus,
                                            clean_stop=lambda: self.supervisor.stop_reason is not None)
            services.append(self.hardware)
        self.venues: Any = None
        if config.venues:
            # lazy: the venues extra (ccxt is loaded by its client) only with [venues] (~30 ms, 1.5 MB)
            from daemon.venues.service import VenueService

            self.venues = VenueService(config, self.bus, standby=self.standby, **venue_seams(config))
            self.venues.register_control(self.control)
            services.append(self.venues)
            if self.recovery is not None:
                self.recovery.runner.venues = self.venues
        from daemon.guard.killswitch import KillSwitch

        if self.guard_blocks is None:
            self.guard_blocks = guard_seams(config, None)["blocks"]
        self.killswitch = KillSwitch(self.guard_blocks, self.venues, audit_factory=audit_for(config))
        self.killswitch.register_control(self.control)
        if self.recovery is not None:
            self.recovery.runner.guard = self.killswitch
        self.breakers = breaker_service(config, self.bus, system=self.system, standby=self.standby,
                                        venues=self.venues, writer=self.guard_blocks, killswitch=self.killswitch)
        services.append(self.breakers)
        self.metrics: MetricsServer | None = None
        if config.metrics.enabled:
            host, port = config.metrics.host_port
            self.metrics = MetricsServer(host, port, self._collect_metrics, health=self.health_facts,
                                         limits=config.listeners.limits())
            services.append(self.metrics)
        self.supervisor = Supervisor(
            node=config.node.name,
            services=services,
            bus=self.bus,
            notifier=notifier if notifier is not None else Notifier(),
            handle_signals=handle_signals,
        )
        self.control.register("status", self._status, help="Every service's state; `lifeline status`.")
        self.control.register("events.recent", self._recent_events,
                              help="The last events published (params: limit, kinds).")
        self.control.register_stream("events.subscribe", self._subscribe,
                                     help="Stream events as they happen (params: kinds); `lifeline events --follow`.")

        operate.register(self)  # preflight.run (the operator's day)

        livedrills_run.register(self)  # drill.switchover, drill.uplink (live drills, admin)

    def _collect_metrics(self) -> Any:
        return self.supervisor.metrics()

    def health_facts(self, path: str = "/health") -> Any:
        """What /primary, /standby and /health answer from (:mod:`daemon.health`). Only
        /health asks every service for its status (a load balancer polls the others)."""
        unhealthy: dict[str, str] = {}
        if path == "/health":
            for entry in self.supervisor.status()["services"]:
                if entry.get("health") != "ok":
                    unhealthy[entry["name"]] = str(entry.get("health"))
        standby = self.standby
        if standby is None:
            return HealthFacts(self.config.node.name, "none", unhealthy=unhealthy)
        leadership = standby.leadership
        machine = getattr(leadership, "machine", None)
        role = machine.role.value if machine is not None else str(standby.role)
        epoch = machine.epoch if machine is not None else int(getattr(standby, "epoch", 0) or 0)
        may_trade = leadership.may_trade() if leadership is not None else role == "primary"
        replication = standby.replication
        connected = bool(role == "standby" and replication is not None and getattr(replication, "connected", False))
        return HealthFacts(self.config.node.name, role, epoch=epoch, accepting=bool(standby.accepting),
                           may_trade=may_trade, standby_connected=connected, unhealthy=unhealthy)

    async def _status(self, params: dict[str, Any]) -> Any:
        return self.supervisor.status()

    async def _recent_events(self, params: dict[str, Any]) -> Any:
        limit = params.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ControlError("bad_request", '"limit" must be a positive integer')
        kinds = _kinds(params)
        # Filter first, then take the last `limit`: "--kind K --limit N" is the last N of K.
        events = [e for e in self.bus.recent if kinds is None or e.kind in kinds][-limit:]
        return {"events": [e.to_dict() for e in events]}

    async def _subscribe(self, params: dict[str, Any], reply: StreamReply) -> None:
        kinds = _kinds(params)
        with self.bus.subscribe("control-client", kinds=kinds) as sub:
            await reply.start()
            reported_drops = 0
            async for event in sub:
                if sub.dropped != reported_drops:
                    # Tell the client it missed events rather than let it believe it saw all.
                    await reply.send({"dropped": sub.dropped - reported_drops})
                    reported_drops = sub.dropped
                await reply.send({"event": event.to_dict()})

    def prepare_directories(self) -> None:
        """Create the state and runtime directories if missing (systemd's StateDirectory=
        and RuntimeDirectory= normally do it)."""
        for path in (self.config.node.state_dir, self.config.node.runtime_dir,
                     Path(self.config.control.socket).parent):
            path.mkdir(mode=0o750, parents=True, exist_ok=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.prepare_directories()

        await livedrills_run.startup_cleanup(self)  # a live drill's nftables table left by a crash
        await self.supervisor.run(task_status=task_status)


def run_daemon(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit 0) or a service failure (exit 1)."""
    daemon = Daemon(config)
    # The daemon allocates many short-lived objects per journal append; CPython's default
    # generation-0 threshold (700) then runs a collection every few appends, which is
    # what the p99 append latency was made of. Startup objects never die: freeze them.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    try:
        trio.run(daemon.run)
    except ServiceCrashed as exc:
        log.error("daemon.failed", service=exc.service, reason=exc.reason, exit_code=1)
        return 1
    except OSError as exc:
        # Startup errors outside a service (directories) are operator-fixable.
        log.error("daemon.failed", error=str(exc), exit_code=1)
        return 1
    log.info("daemon.stopped", reason=daemon.supervisor.stop_reason or "cancelled", exit_code=0, pid=os.getpid())
    return 0


def _kinds(params: dict[str, Any]) -> set[str] | None:
    """The "kinds" parameter: None (every kind) or a set of known event kinds; a
    misspelt kind is refused with the closest known one."""
    kinds = params.get("kinds")
    if kinds is None or kinds == []:
        return None
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise ControlError("bad_request", '"kinds" must be a list of event names')
    problem = unknown_kinds(kinds)
    if problem is not None:
        raise ControlError("bad_request", problem)
    return set(kinds)
