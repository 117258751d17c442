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
from typing import TYPE_CHECKING, Any, Iterable

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
from daemon.standby.replication import ReplicationStandby
from daemon.standby.service import StandbyService
from daemon.supervisor import ServiceCrashed, Supervisor
from daemon.system import SystemHealthService
from daemon.uplinks.service import UplinkService
from daemon.venues.orders import check_payload, parse_for_append, parse_journal_record
from daemon.guard.breaker_service import BlocksActions, BreakerService
from daemon.guard.blocks import BlocksWriter
from daemon.guard.killswitch import KillSwitch
from daemon.guard.service import GuardService
from daemon.risk import verifier_for
from hardware.watchdog import open_watchdog
from recovery.audit import host_audit_factory
from recovery.service import RecoveryService

if TYPE_CHECKING:  # imported lazily below (only with [hardware] / [venues])
    from daemon.core.service import MetricFamily
    from daemon.venues.service import VenueService
    from hardware.service import HardwareService

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


def primary_hint(standby: StandbyService | None) -> str:
    """Who is primary, as a standby knows it: the lease holder, or the peer of a fixed role."""
    if standby is None:
        return "run it on the primary"
    leadership = standby.leadership
    if leadership is not None:
        try:
            holder = (leadership.details().get("lease") or {}).get("holder")
        except Exception:  # noqa: BLE001 - a hint only
            holder = None
        if holder:
            return f"the primary is {holder} (the lease holder): run it there"
        return "no node holds the lease now: run it on the primary once one does (lifeline role)"
    peer = standby.settings.peer
    return f"the primary is the peer at {peer}: run it there" if peer else "run it on the primary"


def guard_seams(config: Config, standby: StandbyService | None) -> dict[str, Any]:
    """The guard's: the journal (the standby), the venues' order-record parser (for the fold,
    and with the configured-venue and lease-epoch checks for the append path), the limits'
    signature check (recovery's keyring), the audit sink, and who is primary when this node
    is not (for a refused kill or pause)."""
    venues = list(config.venues)

    def check_order(payload: bytes, /) -> object:
        return parse_for_append(payload, venues, epoch=standby.epoch if standby is not None else None)

    def promoting() -> bool:
        """This node holds the lease but does not accept appends yet (a promotion under way)."""
        leadership = standby.leadership if standby is not None else None
        if leadership is None or standby is None or standby.accepting:
            return False
        try:
            holder = (leadership.details().get("lease") or {}).get("holder")
        except Exception:  # noqa: BLE001 - a hint only
            return False
        return bool(holder == config.node.name)

    return {"standby": standby, "parse_order": parse_journal_record, "check_order": check_order,
            "verifier": verifier_for(config), "audit_factory": audit_for(config),
            "why_not": (lambda: f"this node ({config.node.name}) is not primary; " + primary_hint(standby)),
            "promoting": promoting}


def venue_seams(config: Config) -> dict[str, Any]:
    """The venues': the audit sink of reconciliation (recovery's)."""
    return {"audit_factory": audit_for(config)}


def breaker_service(config: Config, bus: EventBus, *, system: SystemHealthService, standby: StandbyService | None,
                    venues: VenueService | None, writer: BlocksWriter, killswitch: KillSwitch) -> BreakerService:
    """The circuit breakers (daemon/guard): fed by the journal, the venues' matrix and the
    host's load; they act through guard records the guard writes through the journal on the
    primary (``writer``) and, for a kill response, through the kill switch."""

    def load() -> float | None:
        # The larger of CPU busy and memory used, of those [system] judges: a threshold of 1.0
        # there (which nothing exceeds; the test pairs use it) leaves the resource out here too.
        sample, judged = system.machine.last_sample, config.system
        if sample is None:
            return None
        return max([sample.cpu_fraction] * (judged.cpu_threshold < 1.0)
                   + [sample.memory_used_fraction] * (judged.memory_threshold < 1.0), default=0.0)

    def paths() -> list[tuple[str, str, str]]:
        assert venues is not None  # given only with venues
        return [(p["venue"], p["uplink"], p["state"]) for p in venues.matrix()]

    actions = BlocksActions(writer, killswitch)
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
        if config.standby is not None:
            self.standby = StandbyService(config, self.bus, **standby_seams(config))
            self.standby.register_control(self.control)
            services.append(self.standby)
        # The guard (issue 19): the risk gate on the standby's append path, the blocks.
        self.guard = GuardService(config, self.bus, **guard_seams(config, self.standby))
        self.guard.register_control(self.control)
        services.append(self.guard)
        if self.standby is not None:
            self.standby.append_gate = self.guard
        self.recovery: RecoveryService | None = None
        if config.recovery is not None:
            self.recovery = RecoveryService(config, self.bus, uplinks=self.uplinks, standby=self.standby)
            self.recovery.register_control(self.control)
            services.append(self.recovery)
        self.hardware: HardwareService | None = None
        if config.hardware is not None:
            # After recovery: its playbooks subscribe before the first hardware event.
            # lazy: the device drivers and pyserial (~40 ms) only with [hardware]
            from hardware.service import HardwareService

            self.hardware = HardwareService(config, self.bus,
                                            clean_stop=lambda: self.supervisor.stop_reason is not None)
            services.append(self.hardware)
        self.venues: VenueService | None = None
        if config.venues:
            # lazy: the venues extra (ccxt is loaded by its client) only with [venues] (~30 ms, 1.5 MB)
            from daemon.venues.service import VenueService

            self.venues = VenueService(config, self.bus, standby=self.standby, **venue_seams(config))
            self.venues.register_control(self.control)
            services.append(self.venues)
            self.guard.gate.tickers = self.venues.ticker_price  # the collar's reference, besides marks
            if self.recovery is not None:
                self.recovery.runner.venues = self.venues
        self.killswitch = KillSwitch(self.guard, self.venues, audit_factory=audit_for(config),
                                     deadline=float(config.guard.kill_deadline))
        self.killswitch.register_control(self.control)
        if self.recovery is not None:
            self.recovery.runner.guard = self.killswitch
        self.breakers = breaker_service(config, self.bus, system=self.system, standby=self.standby,
                                        venues=self.venues, writer=self.guard, killswitch=self.killswitch)
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

    def _collect_metrics(self) -> Iterable[MetricFamily]:
        return self.supervisor.metrics()

    def health_facts(self, path: str = "/health") -> HealthFacts:
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
        machine = leadership.machine if leadership is not None else None
        role = machine.role.value if machine is not None else str(standby.role)
        epoch = machine.epoch if machine is not None else standby.epoch
        may_trade = leadership.may_trade() if leadership is not None else role == "primary"
        replication = standby.replication
        connected = role == "standby" and isinstance(replication, ReplicationStandby) and replication.connected
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
