"""The composition root: turns a :class:`Config` into the running daemon.

This is the one place that knows which services exist, in which order they start and
which control methods they answer. Each later capability (uplinks, standby, venues,
hardware, recovery) adds its service here.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import trio

from daemon.config import Config
from daemon.control import ControlError, ControlServer, StreamReply
from daemon.events import EventBus
from daemon.log import get_logger
from daemon.metrics import MetricsServer
from daemon.notify import Notifier
from daemon.service import Service
from daemon.supervisor import ServiceCrashed, Supervisor
from daemon.standby.service import StandbyService
from daemon.system import SystemHealthService
from daemon.uplinks.service import UplinkService

log = get_logger("app")


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
            self.standby = StandbyService(config, self.bus)
            self.standby.register_control(self.control)
            services.append(self.standby)
        self.recovery: Any = None
        if config.recovery is not None:
            from recovery.service import RecoveryService

            self.recovery = RecoveryService(config, self.bus, uplinks=self.uplinks, standby=self.standby)
            self.recovery.register_control(self.control)
            services.append(self.recovery)
        self.hardware: Any = None
        if config.hardware is not None:
            # After recovery: its playbooks subscribe before the first hardware event.
            from daemon.hardware_service import HardwareService

            self.hardware = HardwareService(config, self.bus,
                                            clean_stop=lambda: self.supervisor.stop_reason is not None)
            services.append(self.hardware)
        self.venues: Any = None
        if config.venues:
            from daemon.venues.service import VenueService

            self.venues = VenueService(config, self.bus, standby=self.standby)
            self.venues.register_control(self.control)
            services.append(self.venues)
            if self.recovery is not None:
                self.recovery.runner.venues = self.venues
        self.metrics: MetricsServer | None = None
        if config.metrics.enabled:
            host, port = config.metrics.host_port
            self.metrics = MetricsServer(host, port, self._collect_metrics, limits=config.listeners.limits())
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
                              help="The last events published (params: limit).")
        self.control.register_stream("events.subscribe", self._subscribe,
                                     help="Stream events as they happen (params: kinds); `lifeline events --follow`.")

    def _collect_metrics(self) -> Any:
        return self.supervisor.metrics()

    async def _status(self, params: dict[str, Any]) -> Any:
        return self.supervisor.status()

    async def _recent_events(self, params: dict[str, Any]) -> Any:
        limit = params.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ControlError("bad_request", '"limit" must be a positive integer')
        events = list(self.bus.recent)[-limit:]
        return {"events": [e.to_dict() for e in events]}

    async def _subscribe(self, params: dict[str, Any], reply: StreamReply) -> None:
        kinds = params.get("kinds")
        if kinds is not None and (not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds)):
            raise ControlError("bad_request", '"kinds" must be a list of event names')
        with self.bus.subscribe("control-client", kinds=set(kinds) if kinds else None) as sub:
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
