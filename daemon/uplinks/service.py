"""The uplink service: probes → health machines → policy machine → route backend.

Per uplink, a round of probes leaves every ``interval`` (each round is its own task, so
a slow round never delays the next); its results go into that uplink's
:class:`LinkHealth`. After every round, DNS result or hint, the :class:`UplinkPolicy`
looks at all uplinks and may decide a switch, which this shell carries out: the route
backend replaces the default route (retried with backoff until it works or the decision
changes), the dead uplink's conntrack entries are flushed, and ``ActiveUplinkChanged``
tells the engine to re-dial. A route check loop puts the chosen route back if someone
else changed it, and re-installs the per-uplink policy routing after an interface
returns.

Nothing here decides anything: the machines do. This module only moves bytes and time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import trio

from daemon.core.bus import EventBus
from daemon.core.control import ControlRegistry
from daemon.core.control_client import ControlError
from daemon.core.events import (
    ActiveUplinkChanged,
    AllUplinksDown,
    RouteChangeFailed,
    RouteRepaired,
    UplinkFlowsFlushed,
    UplinkHealthChanged,
)
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample, ServiceStatus, histogram
from daemon.uplinks import UplinkRoute
from daemon.uplinks.config import UplinkConfig, UplinksSettings, check_uplinks_on_host  # noqa: F401 - re-exported
from daemon.uplinks.conntrack import flush_uplink_flows
from daemon.uplinks.health import HealthChange, HealthSettings, LinkHealth, LinkState
from daemon.uplinks.policy import PolicyDecision, UplinkPolicy, UplinkView
from daemon.uplinks.probe import DnsProber, UplinkProber
from daemon.uplinks.routes import make_route_backend, route_matches
from daemon.uplinks.starlink import StarlinkDishMonitor
from daemon.uplinks.targets import parse_target

log = get_logger("uplinks")

#: Backoff of a failed route change: first retry after this, doubling up to the cap.
ROUTE_RETRY_FIRST = 0.05
ROUTE_RETRY_CAP = 2.0
#: Base table number of the per-uplink policy-routing tables (table = base + position).
TABLE_BASE = 1000


@dataclass
class Uplink:
    """One uplink's runtime parts."""

    name: str
    config: UplinkConfig
    route: UplinkRoute
    health: LinkHealth
    prober: Any
    dns: Any | None
    seq: int = 0
    rounds_in_flight: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def uplink_routes(config: UplinksSettings) -> list[UplinkRoute]:
    routes = []
    for position, (name, uplink) in enumerate(config.uplinks.items(), start=1):
        routes.append(UplinkRoute(name=name, interface=uplink.interface, source=uplink.source,
                                  gateway=uplink.gateway, table=uplink.table or TABLE_BASE + position,
                                  metric=config.failover.route_metric))
    return routes


class UplinkService:
    """Watches every uplink and keeps the default route on the best one."""

    name = "uplinks"

    def __init__(
        self,
        config: UplinksSettings,
        bus: EventBus,
        *,
        route_backend: Any | None = None,
        prober_factory: Callable[[str, UplinkConfig], Any] | None = None,
        dns_factory: Callable[[str, UplinkConfig], Any] | None = None,
        flush_flows: Callable[[str], Any] | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.failover = config.failover
        if route_backend is None:
            route_backend = make_route_backend(config.failover)
        self.backend = route_backend
        self._prober_factory = prober_factory or _default_prober
        self._dns_factory = dns_factory or _default_dns
        if flush_flows is None:
            flush_flows = flush_uplink_flows
        self._flush_flows = flush_flows
        self.uplinks: dict[str, Uplink] = {}
        self.policy: UplinkPolicy | None = None
        self._route_lock = trio.Lock()
        self._wanted: str | None = None  # the uplink the route should point at
        self.route_installed: str | None = None
        self.route_errors = 0
        self.route_repairs = 0
        self.last_route_error: str | None = None
        self.last_decision: PolicyDecision | None = None
        self.last_switch_wall: float | None = None
        self._nursery: trio.Nursery | None = None
        self.probe_rtt = histogram("lifeline_uplink_probe_rtt_seconds",
                                   "Round-trip time of each answered probe, by uplink.", "rtt", ("uplink",))

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = trio.current_time()
        routes = {r.name: r for r in uplink_routes(self.config)}
        for name, cfg in self.config.uplinks.items():
            self.uplinks[name] = Uplink(
                name=name, config=cfg, route=routes[name],
                health=LinkHealth(name, HealthSettings.from_config(cfg), now),
                prober=self._prober_factory(name, cfg),
                dns=self._dns_factory(name, cfg) if cfg.dns_server else None,
            )
        self.policy = UplinkPolicy(hold_down=float(self.failover.hold_down),
                                   min_dwell=float(self.failover.min_dwell), now=now)
        try:
            await self.backend.prepare(list(routes.values()))
        except Exception as exc:  # an interface may be down at boot: report and retry later
            self.route_errors += 1
            self.last_route_error = f"policy routing: {exc}"
            log.warning("uplinks.prepare_failed", error=str(exc), retry="every route check")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for uplink in self.uplinks.values():
                    await nursery.start(uplink.prober.run)
                for uplink in self.uplinks.values():
                    nursery.start_soon(self._probe_loop, uplink, name=f"probe-{uplink.name}")
                    if uplink.dns is not None:
                        nursery.start_soon(self._dns_loop, uplink, name=f"dns-{uplink.name}")
                nursery.start_soon(self._route_check_loop)
                for uplink in self.uplinks.values():
                    if uplink.config.starlink_dish:
                        monitor = StarlinkDishMonitor(uplink.name, uplink.config.starlink_dish, self.set_hint)
                        nursery.start_soon(monitor.run, name=f"starlink-{uplink.name}")
                log.info("uplinks.started", uplinks=list(self.uplinks), backend=self.backend.name)
                task_status.started()
        finally:
            self._nursery = None
            with trio.move_on_after(2, shield=True):
                try:
                    await self.backend.cleanup()
                except Exception as exc:
                    log.warning("uplinks.cleanup_failed", error=str(exc))

    async def _probe_loop(self, uplink: Uplink) -> None:
        assert uplink.config.interval is not None  # filled from the kind's defaults
        interval = float(uplink.config.interval)
        next_at = trio.current_time()
        async with trio.open_nursery() as rounds:
            while True:
                uplink.seq += 1
                rounds.start_soon(self._round, uplink, uplink.seq)
                next_at += interval
                now = trio.current_time()
                if next_at < now:  # we fell behind (a blocked loop): skip, do not burst
                    next_at = now + interval
                await trio.sleep_until(next_at)

    async def _round(self, uplink: Uplink, seq: int) -> None:
        uplink.rounds_in_flight += 1
        try:
            results = await uplink.prober.probe_round(seq)
        finally:
            uplink.rounds_in_flight -= 1
        now = trio.current_time()
        results = list(results)
        rtt = self.probe_rtt.labels(uplink=uplink.name)
        for result in results:
            if result.ok and result.rtt is not None:
                rtt.observe(result.rtt)
        self._on_change(uplink.health.observe_round(results, now))
        await self._decide(now)

    async def _dns_loop(self, uplink: Uplink) -> None:
        assert uplink.dns is not None  # started only for an uplink with a dns_server
        seq = 0
        while True:
            seq += 1
            result = await uplink.dns.probe(seq)
            now = trio.current_time()
            self._on_change(uplink.health.observe_dns(result.ok, result.error, now))
            await self._decide(now)
            await trio.sleep(float(uplink.config.dns_interval))

    def set_hint(self, name: str, hint: str | None) -> None:
        """An early warning about an uplink from outside the probes (the Starlink dish)."""
        self._on_change(self.uplinks[name].health.set_hint(hint, trio.current_time()))

    def _on_change(self, change: HealthChange | None) -> None:
        if change is None:
            return
        self.bus.publish(UplinkHealthChanged(source=self.name, uplink=change.uplink,
                                             previous=change.previous.value, state=change.state.value,
                                             reason=change.reason))

    # ------------------------------------------------------------------ decisions

    def views(self) -> dict[str, UplinkView]:
        return {n: UplinkView(u.health.state, u.health.since, u.config.priority) for n, u in self.uplinks.items()}

    async def _decide(self, now: float) -> None:
        assert self.policy is not None
        decision = self.policy.step(self.views(), now)
        if decision is not None:
            await self._carry_out(decision, now)

    async def _carry_out(self, decision: PolicyDecision, now: float) -> None:
        self.last_decision = decision
        if decision.kind == "all_down":
            self.bus.publish(AllUplinksDown(source=self.name, reason=decision.reason))
            return
        assert decision.active is not None
        detection_ms = None
        previous = self.uplinks.get(decision.previous) if decision.previous else None
        if decision.kind == "failover" and previous is not None and previous.health.last_good_at is not None:
            detection_ms = (now - previous.health.last_good_at) * 1000
        self._wanted = decision.active
        route_ms = await self._apply_route(decision.active)
        self.last_switch_wall = time.time()
        self.bus.publish(ActiveUplinkChanged(
            source=self.name, previous=decision.previous, active=decision.active, change=decision.kind,
            reason=decision.reason, detection_ms=_r(detection_ms), route_ms=_r(route_ms)))
        if previous is not None and self.failover.flush_conntrack and self._nursery is not None:
            if decision.kind in ("failover", "manual") or (decision.kind == "failback"
                                                           and self.failover.failback_flows == "move"):
                if self.failover.route_backend == "none":
                    # "decide and report only": another tool (mwan3, keepalived) owns the
                    # routes and the flows; deleting its conntrack entries is not ours to do.
                    log.info("conntrack.flush_skipped", uplink=previous.name,
                             reason='route_backend = "none": decide and report only')
                else:
                    self._nursery.start_soon(self._flush, previous)

    async def _apply_route(self, name: str) -> float | None:
        """Point the default route at ``name``; retry with backoff until it works or the
        wanted uplink changes. Returns how long the successful change took (ms)."""
        delay = ROUTE_RETRY_FIRST
        attempt = 0
        async with self._route_lock:
            while self._wanted == name:
                attempt += 1
                began = trio.current_time()
                try:
                    await self.backend.apply(self.uplinks[name].route)
                except Exception as exc:
                    self.route_errors += 1
                    self.last_route_error = f"{name}: {exc}"
                    self.bus.publish(RouteChangeFailed(source=self.name, uplink=name, error=str(exc),
                                                       attempt=attempt))
                    await trio.sleep(delay)
                    delay = min(delay * 2, ROUTE_RETRY_CAP)
                    continue
                self.route_installed = name
                self.last_route_error = None
                return (trio.current_time() - began) * 1000
        return None

    async def _flush(self, uplink: Uplink) -> None:
        """Delete the conntrack entries of flows through ``uplink`` (only those), so NATed
        connections re-establish on the new uplink instead of hanging."""
        began = trio.current_time()
        try:
            flows = int(await self._flush_flows(uplink.config.source))
        except Exception as exc:
            log.warning("conntrack.flush_failed", uplink=uplink.name, error=str(exc))
            return
        took_ms = (trio.current_time() - began) * 1000
        self.bus.publish(UplinkFlowsFlushed(source=self.name, uplink=uplink.name, flows=flows,
                                            took_ms=round(took_ms, 2)))

    async def _route_check_loop(self) -> None:
        interval = float(self.failover.route_check_interval)
        routes = [u.route for u in self.uplinks.values()]
        while True:
            await trio.sleep(interval)
            try:
                await self.backend.refresh(routes)
            except Exception as exc:
                log.debug("uplinks.refresh_failed", error=str(exc))
            wanted = self._wanted
            if wanted is None or self._route_lock.locked():
                continue
            try:
                current = await self.backend.current()
            except Exception as exc:
                log.warning("route.check_failed", error=str(exc))
                continue
            if not route_matches(current, self.uplinks[wanted].route):
                found = _describe_route(current)
                self.route_repairs += 1
                self.bus.publish(RouteRepaired(source=self.name, uplink=wanted, found=found))
                await self._apply_route(wanted)

    # ------------------------------------------------------------------ operator

    async def use(self, name: str) -> PolicyDecision | None:
        if name not in self.uplinks:
            raise ControlError("unknown_uplink", f"no uplink {name!r}; configured: {', '.join(self.uplinks)}")
        assert self.policy is not None
        now = trio.current_time()
        decision = self.policy.use(name, self.views(), now)
        log.warning("uplink.pinned", uplink=name, by="operator")
        if decision is not None:
            await self._carry_out(decision, now)
        return decision

    async def auto(self) -> PolicyDecision | None:
        assert self.policy is not None
        now = trio.current_time()
        decision = self.policy.auto(self.views(), now)
        log.warning("uplink.unpinned", by="operator")
        if decision is not None:
            await self._carry_out(decision, now)
        return decision

    def register_control(self, control: ControlRegistry) -> None:
        async def status(params: dict[str, Any]) -> Any:
            return self.details()

        async def use(params: dict[str, Any]) -> Any:
            name = params.get("name")
            if not isinstance(name, str):
                raise ControlError("bad_request", 'expected {"name": UPLINK}')
            decision = await self.use(name)
            return {"pinned": name, "switched": decision is not None and decision.switches,
                    "active": self.policy.active if self.policy else None,
                    "note": None if decision else (f"{name} is active" if self._wanted == name
                                                   else f"{name} is not usable now; it becomes active when it is")}

        async def auto(params: dict[str, Any]) -> Any:
            decision = await self.auto()
            return {"pinned": None, "switched": decision is not None and decision.switches,
                    "active": self.policy.active if self.policy else None}

        control.register("uplink.status", status, help="Every uplink's health and the active one.")
        control.register("uplink.use", use, help='Pin an uplink: {"name": "starlink"}; `lifeline uplink use`.')
        control.register("uplink.auto", auto, help="Remove the pin; automatic choice; `lifeline uplink auto`.")

    # ------------------------------------------------------------------ reporting

    def details(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "active": policy.active if policy else None,
            "route": self.route_installed,
            "pinned": policy.override if policy else None,
            "all_down": policy.all_down if policy else False,
            "switches": policy.switches if policy else 0,
            "backend": self.backend.name,
            "route_errors": self.route_errors,
            "route_repairs": self.route_repairs,
            "last_route_error": self.last_route_error,
            "last_decision": self.last_decision.reason if self.last_decision else None,
            "uplinks": {
                name: {
                    **{k: v for k, v in u.health.snapshot().items() if k != "since"},
                    "for_s": round(trio.current_time() - u.health.since, 3) if self.policy else None,
                    "interface": u.config.interface, "source": u.config.source, "priority": u.config.priority,
                    "kind": u.config.kind, "probes": dict(getattr(u.prober, "counters", {})),
                    # The thresholds in force (a reload may change them: daemon/reload.py).
                    "thresholds": {k: getattr(u.health.settings, k) for k in
                                   ("down_after", "up_after", "min_targets", "degraded_loss", "recovered_loss",
                                    "degraded_rtt", "dns_failures")},
                }
                for name, u in self.uplinks.items()
            },
        }

    def status(self) -> ServiceStatus:
        policy = self.policy
        if policy is None:
            return ServiceStatus("ok", "starting")
        parts = []
        for name, u in self.uplinks.items():
            snap = u.health.snapshot()
            rtt = f" {snap['rtt_ms']:.1f}ms" if snap["rtt_ms"] is not None else ""
            parts.append(f"{name} {snap['state'].upper()}{rtt} {snap['loss']:.0%} loss")
        active = policy.active or "none"
        pin = f" (pinned {policy.override})" if policy.override else ""
        summary = f"active {active}{pin}; " + ", ".join(parts)
        if self.last_route_error:
            summary += f"; ROUTE ERROR: {self.last_route_error}"
        health = "ok"
        if policy.all_down or self.last_route_error:
            health = "failing"
        elif any(u.health.state is not LinkState.UP for u in self.uplinks.values()):
            health = "degraded"
        return ServiceStatus(health, summary, self.details())  # type: ignore[arg-type]

    def metrics(self) -> Iterable[MetricFamily]:
        states, rtt, loss, active, jitter = [], [], [], [], []
        for name, u in self.uplinks.items():
            snap = u.health.snapshot()
            for state in LinkState:
                states.append(Sample({"uplink": name, "state": state.value}, 1 if u.health.state is state else 0))
            if snap["rtt_ms"] is not None:
                rtt.append(Sample({"uplink": name}, snap["rtt_ms"] / 1000))
            if snap["jitter_ms"] is not None:
                jitter.append(Sample({"uplink": name}, snap["jitter_ms"] / 1000))
            loss.append(Sample({"uplink": name}, snap["loss"]))
            active.append(Sample({"uplink": name}, 1 if self._wanted == name else 0))
        yield MetricFamily("lifeline_uplink_state", "gauge", "1 for the uplink's current health state.", states)
        yield MetricFamily("lifeline_uplink_rtt_seconds", "gauge", "Median probe RTT over the window.", rtt)
        yield MetricFamily("lifeline_uplink_jitter_seconds", "gauge", "Mean RTT change between rounds.", jitter)
        yield MetricFamily("lifeline_uplink_loss_ratio", "gauge", "Lost rounds over the window.", loss)
        yield MetricFamily("lifeline_uplink_active", "gauge", "1 for the uplink carrying the default route.", active)
        yield MetricFamily.single("lifeline_uplink_switches_total", "counter", "Active-uplink changes.",
                                  self.policy.switches if self.policy else 0)
        yield MetricFamily.single("lifeline_route_errors_total", "counter", "Failed route changes.", self.route_errors)
        yield MetricFamily.single("lifeline_route_repairs_total", "counter",
                                  "Default routes changed outside lifeline and put back.", self.route_repairs)
        # One metric per quantity: sent and received are separate counters (so a sum()
        # means something); the rest of the prober's tallies are kinds of odd answers.
        sent, received, odd = [], [], []
        for name, u in self.uplinks.items():
            for counter, value in getattr(u.prober, "counters", {}).items():
                if counter == "sent":
                    sent.append(Sample({"uplink": name}, value))
                elif counter == "received":
                    received.append(Sample({"uplink": name}, value))
                else:
                    odd.append(Sample({"uplink": name, "kind": counter}, value))
        yield MetricFamily("lifeline_uplink_probes_sent_total", "counter", "Probe packets sent.", sent)
        yield MetricFamily("lifeline_uplink_probes_received_total", "counter", "Probe answers received.", received)
        yield MetricFamily("lifeline_uplink_probe_anomalies_total", "counter",
                           "Probes that went wrong, by kind: late, duplicate, wrong_source, garbage, "
                           "refused (ICMP), errors (could not send).", odd)
        yield from self.probe_rtt.collect()


def _r(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _describe_route(current: Any) -> str:
    if current is None:
        return "no default route"
    gateway = getattr(current, "gateway", None)
    interface = getattr(current, "interface", None)
    return f"default via {gateway} dev {interface}"


def _default_prober(name: str, config: UplinkConfig) -> Any:
    assert config.timeout is not None  # filled from the kind's defaults
    return UplinkProber(name, config.source, [parse_target(t) for t in config.targets],
                        float(config.timeout), interface=config.interface)


def _default_dns(name: str, config: UplinkConfig) -> Any:
    assert config.timeout is not None and config.dns_server is not None  # only with a dns_server
    # A resolver may recurse before answering: allow it more than a probe's timeout.
    return DnsProber(name, config.source, config.dns_server, config.dns_name, max(1.0, 4 * float(config.timeout)))
