"""The supervisor: one root nursery, services started in order, loud failure, clean stop.

``Supervisor.run()`` opens the root nursery and starts each service with
``await nursery.start(service.run)``, in the order given, so a service can rely on the
ones before it being ready. When every service has reported ``started()`` it tells
systemd ``READY=1`` and starts the watchdog pings.

A service that raises takes the daemon down: the supervisor logs it with its traceback,
publishes ``ServiceFailed``, cancels the rest, and :func:`run` returns a non-zero exit
code so systemd's ``Restart=on-failure`` restarts the whole daemon. Limping on with a dead
uplink monitor or a dead lease renewer would be worse than a restart. A service that
*returns* while the daemon runs is a failure too: services run until cancelled.

SIGTERM and SIGINT cancel the root scope; each service cleans up on its way out (under
shielded, bounded cancel scopes of its own) and the daemon exits 0.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Literal

import trio

from daemon import __version__
from daemon.core.bus import EventBus
from daemon.core.errors import LifelineError
from daemon.core.events import DaemonReady, DaemonStopping, ServiceFailed, ServiceStarted
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample, Service, ServiceStatus, service_metrics
from daemon.notify import Notifier

log = get_logger("supervisor")

Lifecycle = Literal["pending", "starting", "running", "failed", "stopped"]

#: How long a service may take to report started() before the daemon gives up.
DEFAULT_START_TIMEOUT = 30.0

#: Longest wait for event subscribers to drain on a clean stop.
SHUTDOWN_DRAIN = 0.5

#: How often the one-line STATUS= summary is refreshed for systemctl status.
STATUS_REFRESH = 5.0


class ServiceCrashed(LifelineError):
    """A service raised or returned; the daemon must stop with a non-zero code."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"service {service} failed: {reason}")


@dataclass
class _Slot:
    service: Service
    lifecycle: Lifecycle = "pending"
    started_at: float | None = None
    start_ms: float | None = None
    error: str | None = None


@dataclass
class Supervisor:
    node: str
    services: list[Service]
    bus: EventBus
    notifier: Notifier = field(default_factory=lambda: Notifier({}))
    start_timeout: float = DEFAULT_START_TIMEOUT
    handle_signals: bool = True
    #: Called (in the root nursery) on SIGHUP: the config reload (daemon/operate.py).
    on_reload: Callable[[], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"duplicate service names: {sorted(duplicates)}")
        self._slots = {s.name: _Slot(s) for s in self.services}
        self.ready = trio.Event()
        self.started_wall: float = time.time()
        self.stop_reason: str | None = None
        self._root: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._last_status_line = ""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every service until cancelled, a signal arrives, or one fails (raises
        :class:`ServiceCrashed`)."""
        self.started_wall = time.time()
        log.info("daemon.starting", node=self.node, version=__version__, pid=os.getpid(),
                 services=[s.name for s in self.services])
        try:
            async with trio.open_nursery() as nursery:
                self._root = nursery.cancel_scope
                self._nursery = nursery
                if self.handle_signals:
                    await nursery.start(self._watch_signals, nursery.cancel_scope)
                for service in self.services:
                    await self._start(nursery, service)
                line = self.status_line()
                self.notifier.ready(line)
                self._last_status_line = line
                # systemd arms the watchdog once the unit is up; ping from then on.
                await nursery.start(self.notifier.run_watchdog)
                self.bus.publish(DaemonReady(source="supervisor", services=[s.name for s in self.services]))
                self.ready.set()
                task_status.started()
                nursery.start_soon(self._refresh_status)
        except BaseException as exc:
            crashed = _find(exc, ServiceCrashed)
            if crashed is not None:
                self.notifier.stopping(f"failed: {crashed}")
                raise crashed from exc
            raise
        finally:
            self._nursery = None
            for slot in self._slots.values():
                if slot.lifecycle in ("running", "starting"):
                    slot.lifecycle = "stopped"
            self.notifier.close()

    def stop(self, reason: str) -> None:
        """Ask the daemon to stop cleanly (as SIGTERM does). A second call stops at once."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.bus.publish(DaemonStopping(source="supervisor", reason=reason))
            self.notifier.stopping(f"stopping: {reason}")
            if self._nursery is not None:
                self._nursery.start_soon(self._drain_then_cancel)
                return
        if self._root is not None:
            self._root.cancel()

    async def _drain_then_cancel(self) -> None:
        """Give event subscribers (`lifeline events --follow`, the audit log) a bounded
        moment to take the last events, DaemonStopping among them, then cancel."""
        with trio.move_on_after(SHUTDOWN_DRAIN):
            while self.bus.pending() > 0:
                await trio.sleep(0.01)
            await trio.sleep(0.05)  # let the subscribers' writes go out
        if self._root is not None:
            self._root.cancel()

    async def _start(self, nursery: trio.Nursery, service: Service) -> None:
        slot = self._slots[service.name]
        slot.lifecycle = "starting"
        began = trio.current_time()
        self.notifier.status(f"starting {service.name}")
        try:
            with trio.fail_after(self.start_timeout):
                await nursery.start(self._supervise, service)
        except trio.TooSlowError:
            slot.lifecycle = "failed"
            slot.error = f"did not report started within {self.start_timeout:g}s"
            self.bus.publish(ServiceFailed(source="supervisor", service=service.name, error=slot.error))
            raise ServiceCrashed(service.name, slot.error) from None
        slot.start_ms = (trio.current_time() - began) * 1000
        slot.started_at = time.time()
        slot.lifecycle = "running"
        self.bus.publish(ServiceStarted(source="supervisor", service=service.name, took_ms=slot.start_ms))

    async def _supervise(self, service: Service, *, task_status: trio.TaskStatus[None]) -> None:
        slot = self._slots[service.name]
        try:
            await service.run(task_status=task_status)
        except trio.Cancelled:
            slot.lifecycle = "stopped"
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            # A cancellation wrapped in a group is still a cancellation.
            if isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None:
                slot.lifecycle = "stopped"
                raise
            slot.lifecycle = "failed"
            slot.error = f"{type(exc).__name__}: {exc}"
            # One line: the crash with its traceback (the event is not logged again).
            log.exception("service.crashed", service=service.name, error=slot.error)
            self.bus.publish(ServiceFailed(source="supervisor", service=service.name, error=slot.error), log=False)
            raise ServiceCrashed(service.name, slot.error) from exc
        slot.lifecycle = "failed"
        slot.error = "returned while the daemon was running"
        self.bus.publish(ServiceFailed(source="supervisor", service=service.name, error=slot.error))
        raise ServiceCrashed(service.name, slot.error)

    async def _watch_signals(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self.on_reload is not None and self._nursery is not None:
                        self._nursery.start_soon(self.on_reload)
                    else:
                        log.warning("daemon.sighup_ignored", reason="no reload handler")
                    continue
                self.stop(f"signal {signal.Signals(signum).name}")

    async def _refresh_status(self) -> None:
        while True:
            await trio.sleep(STATUS_REFRESH)
            line = self.status_line()
            if line != self._last_status_line:
                self.notifier.status(line)
                self._last_status_line = line

    # ------------------------------------------------------------------ reporting

    def service_status(self, name: str) -> tuple[Lifecycle, ServiceStatus | None]:
        slot = self._slots[name]
        if slot.lifecycle != "running":
            return slot.lifecycle, None
        try:
            return slot.lifecycle, slot.service.status()
        except Exception as exc:  # a status bug must not break `lifeline status`
            log.exception("service.status_failed", service=name)
            return slot.lifecycle, ServiceStatus("degraded", f"status unavailable: {type(exc).__name__}: {exc}")

    def _statuses(self) -> dict[str, tuple[Lifecycle, ServiceStatus | None]]:
        return {name: self.service_status(name) for name in self._slots}

    def status_line(self, statuses: dict[str, tuple[Lifecycle, ServiceStatus | None]] | None = None) -> str:
        """The one-line summary for systemd's STATUS= and the top of `lifeline status`."""
        statuses = statuses if statuses is not None else self._statuses()
        running = sum(1 for lifecycle, _ in statuses.values() if lifecycle == "running")
        unhealthy = [f"{name} {status.health}" for name, (_, status) in statuses.items()
                     if status is not None and status.health != "ok"]
        tail = "; " + ", ".join(unhealthy) if unhealthy else "; all ok"
        return f"{self.node}: {running}/{len(self._slots)} services running{tail}"

    def status(self) -> dict[str, Any]:
        # Each service's status() once per request: the summary line reuses them.
        statuses = self._statuses()
        services = []
        for name, slot in self._slots.items():
            lifecycle, status = statuses[name]
            entry: dict[str, Any] = {"name": name, "lifecycle": lifecycle}
            if status is not None:
                entry.update(health=status.health, summary=status.summary, details=status.details)
            else:
                entry.update(health="failing" if lifecycle == "failed" else "stopped",
                             summary=slot.error or lifecycle, details={})
            if slot.start_ms is not None:
                entry["start_ms"] = round(slot.start_ms, 1)
            services.append(entry)
        return {
            "node": self.node,
            "version": __version__,
            "pid": os.getpid(),
            "ready": self.ready.is_set(),
            "uptime_s": round(time.time() - self.started_wall, 3),
            "summary": self.status_line(statuses),
            "services": services,
            "events": self.bus.stats(),
            "systemd": {"notify": self.notifier.enabled, "watchdog_s": self.notifier.watchdog_interval},
        }

    def metrics(self) -> Iterable[MetricFamily]:
        yield MetricFamily("lifeline_build_info", "gauge", "Version of the running daemon.",
                           [Sample({"version": __version__, "node": self.node}, 1)])
        yield MetricFamily.single("lifeline_uptime_seconds", "gauge", "Seconds since the daemon started.",
                                  time.time() - self.started_wall)
        yield MetricFamily.single("lifeline_ready", "gauge", "1 once every service reported started.",
                                  1 if self.ready.is_set() else 0)
        up, healthy = [], []
        for name, slot in self._slots.items():
            lifecycle, status = self.service_status(name)
            up.append(Sample({"service": name}, 1 if lifecycle == "running" else 0))
            healthy.append(Sample({"service": name}, 1 if status is not None and status.health == "ok" else 0))
        yield MetricFamily("lifeline_service_up", "gauge", "1 while the service is running.", up)
        yield MetricFamily("lifeline_service_healthy", "gauge", "1 while the service reports ok.", healthy)
        yield MetricFamily.single("lifeline_events_published_total", "counter", "Events published on the bus.",
                                  self.bus.published)
        yield MetricFamily.single("lifeline_events_dropped_total", "counter",
                                  "Events dropped because a subscriber was slow.", self.bus.dropped_total)
        for slot in self._slots.values():
            if slot.lifecycle == "running":
                try:
                    yield from service_metrics(slot.service)
                except Exception:
                    log.exception("service.metrics_failed", service=slot.service.name)


def _find(exc: BaseException, kind: type[ServiceCrashed]) -> ServiceCrashed | None:
    """The first ``kind`` inside ``exc`` (which may be a nested exception group)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None
