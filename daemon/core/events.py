"""The events: typed, immutable values fanned out to every subscriber by the bus.

Services publish events (``UplinkChanged``, ``RoleChanged``, ``SystemOverloaded``, ...)
with :meth:`EventBus.publish`, which never blocks and never fails: each subscriber has
its own bounded trio memory channel, and when a subscriber falls behind, the *oldest*
event in its buffer is dropped and counted, so a slow reader (a stalled `lifeline
events --follow`, say) can never hold up the uplink policy. The counts show in status.

Every event is a frozen dataclass deriving from :class:`Event`; its ``kind`` is its class
name, and :meth:`Event.to_dict` is what the control socket and the audit log write.

The event *types* import no trio (sans-IO monitors build them); the trio bus is
:mod:`daemon.core.bus` (``EventBus`` and ``Subscription`` are still importable from here).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


from daemon.core.log import get_logger

log = get_logger("events")


_sequence = itertools.count(1)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event. ``source`` is the publishing service; ``wall_time`` is for
    humans (UNIX seconds), ``sequence`` orders events within this process."""

    source: str = ""
    wall_time: float = field(default_factory=time.time)
    sequence: int = field(default_factory=lambda: next(_sequence))

    #: Events a human should see at warning level in logs (overrides per class).
    severity: ClassVar[str] = "info"

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            data[f.name] = _plain(getattr(self, f.name))
        return data


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data. Containers are copied: an event is shared by every
    subscriber, so a consumer editing its dict must not edit the event itself."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


# --- lifecycle events (the supervisor's) -----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServiceStarted(Event):
    service: str
    took_ms: float


@dataclass(frozen=True, kw_only=True)
class ServiceFailed(Event):
    service: str
    error: str
    severity: ClassVar[str] = "error"


@dataclass(frozen=True, kw_only=True)
class DaemonReady(Event):
    services: list[str]


@dataclass(frozen=True, kw_only=True)
class DaemonStopping(Event):
    reason: str


# --- host health (daemon.system) -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SystemOverloaded(Event):
    """A host resource crossed its threshold for the sustain period (circuit breaker open)."""

    reasons: list[str]
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class SystemRecovered(Event):
    """Every host resource is back below its threshold less the margin (breaker closed)."""

    overloaded_for_s: float


def event_classes() -> dict[str, type[Event]]:
    """Every :class:`Event` subclass known now, by name (its ``kind``)."""
    found: dict[str, type[Event]] = {}
    pending: list[type[Event]] = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


def unknown_kinds(kinds: list[str]) -> str | None:
    """None if every name in ``kinds`` is an event kind; else a message naming the first
    unknown one and the closest known kind."""
    import difflib

    known = event_classes()
    for kind in kinds:
        if kind not in known:
            close = difflib.get_close_matches(kind, list(known), n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            return (f'unknown event kind "{kind}"{hint} (kinds are class names such as RoleChanged, '
                    f"UplinkHealthChanged; {len(known)} in all)")
    return None


def log_event(event: Event) -> None:
    """The event's one log line (see :meth:`EventBus.publish`)."""
    fields = {k: v for k, v in event.to_dict().items() if k not in ("kind", "wall_time", "sequence")}
    level = "warning" if event.severity in ("warning", "error") else "info"
    getattr(log, level)(f"event.{event.kind}", **fields)


# --- uplinks (daemon.uplinks) -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UplinkHealthChanged(Event):
    uplink: str
    previous: str
    state: str
    reason: str

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "warning" if self.state in ("down", "degraded") else "info"


@dataclass(frozen=True, kw_only=True)
class ActiveUplinkChanged(Event):
    """The default route moved. ``change``: initial, failover, failback or manual. The
    engine should re-dial its venue connections on this event."""

    previous: str | None
    active: str
    change: str
    reason: str
    #: From the last good probe round of the previous uplink to the decision (failover).
    detection_ms: float | None
    #: How long the route change itself took.
    route_ms: float | None
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class UplinkFlowsFlushed(Event):
    """Conntrack entries of the uplink traffic left were deleted (after the switch, so a
    large table never delays ActiveUplinkChanged)."""

    uplink: str
    flows: int
    took_ms: float


@dataclass(frozen=True, kw_only=True)
class AllUplinksDown(Event):
    reason: str
    severity: ClassVar[str] = "error"


@dataclass(frozen=True, kw_only=True)
class RouteRepaired(Event):
    """Someone else changed the default route; lifeline put its choice back."""

    uplink: str
    found: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class RouteChangeFailed(Event):
    uplink: str
    error: str
    attempt: int
    severity: ClassVar[str] = "error"


# --- the journal's replication (daemon.standby) ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JournalTailTruncated(Event):
    """A torn or corrupt tail was cut when the journal was opened (after a crash or
    power loss): these records were never acknowledged durable, or the peer has them."""

    file: str
    records_dropped: int
    bytes_dropped: int
    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class StandbyConnected(Event):
    """The primary accepted its standby (authenticated) and agreed where to stream from."""

    standby: str
    address: str
    standby_last_seq: int
    standby_last_epoch: int
    common_seq: int
    backlog: int


@dataclass(frozen=True, kw_only=True)
class StandbyLost(Event):
    standby: str
    address: str
    reason: str
    acked_seq: int
    connected_for_s: float
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class ReplicationDegraded(Event):
    """Sync mode without an in-sync standby: appends are acknowledged on the primary's
    disk alone (degrade-to-async) or answered in-doubt (block)."""

    mode: str
    on_standby_loss: str
    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class ReplicationRecovered(Event):
    standby: str
    degraded_for_s: float
    acked_seq: int


@dataclass(frozen=True, kw_only=True)
class ReplicationRejected(Event):
    """A peer on the replication port failed authentication or the protocol."""

    address: str
    peer: str
    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class DriftDetected(Event):
    """The pair runs different software or replication settings."""

    peer: str
    differences: list[str]
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class StandbyDiskFull(Event):
    node: str
    error: str
    durable_seq: int
    severity: ClassVar[str] = "error"


@dataclass(frozen=True, kw_only=True)
class StandbyWriteError(Event):
    node: str
    error: str
    durable_seq: int
    severity: ClassVar[str] = "error"


@dataclass(frozen=True, kw_only=True)
class StandbyTruncated(Event):
    """The standby's tail was not on the primary's history: cut back to the common
    point (never merged)."""

    node: str
    primary: str
    from_seq: int
    to_seq: int
    dropped_records: int
    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class PrimaryConnected(Event):
    primary: str
    address: str
    epoch: int
    primary_last_seq: int
    local_last_seq: int


@dataclass(frozen=True, kw_only=True)
class PrimaryLost(Event):
    primary: str
    address: str
    reason: str
    durable_seq: int
    severity: ClassVar[str] = "warning"


# --- roles and the leader lease (daemon/standby/leadership.py) ----------------------------


@dataclass(frozen=True, kw_only=True)
class RoleChanged(Event):
    """This node's role changed. ``role`` is one of waiting, standby, candidate, primary,
    fenced; the engine may trade only while it is ``primary``, stamping orders with
    ``epoch``. ``monotonic_ns`` is CLOCK_MONOTONIC when the change took effect (drills on
    one machine compare both nodes' intervals with it)."""

    node: str
    role: str
    previous: str
    epoch: int
    reason: str
    monotonic_ns: int

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "warning" if self.role == "fenced" else "info"


@dataclass(frozen=True, kw_only=True)
class LeaseStoreUnreachable(Event):
    """The lease store did not answer; a node that is not primary stays so."""

    node: str
    store: str
    reason: str
    role: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class LeaseStoreReachable(Event):
    node: str
    store: str


@dataclass(frozen=True, kw_only=True)
class OperatorPromotion(Event):
    """An operator (or a signed playbook) allowed this node to take a free lease although
    it may lack acknowledged records."""

    node: str
    accept_loss: bool
    outcome: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class DivergentTailSaved(Event):
    """A returning old primary cut records the new primary never had; they are saved
    to ``file`` for reconciliation, never lost silently."""

    node: str
    records: int
    from_seq: int
    to_seq: int
    file: str
    severity: ClassVar[str] = "warning"


# --- recovery playbooks (recovery/service.py) ------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlaybookRefused(Event):
    """A playbook failed verification (or was not allowed to run): no step ran."""

    playbook: str
    reason: str
    message: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class PlaybookStarted(Event):
    playbook: str
    version: int
    trigger: str
    dry_run: bool


@dataclass(frozen=True, kw_only=True)
class PlaybookFinished(Event):
    playbook: str
    version: int
    outcome: str
    duration_ms: float

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "info" if self.outcome in ("succeeded", "dry_run") else "warning"


@dataclass(frozen=True, kw_only=True)
class PlaybookNotice(Event):
    """A playbook's ``notify`` step: a message for the operators."""

    playbook: str
    message: str
    level: str


@dataclass(frozen=True, kw_only=True)
class EngineHaltRequested(Event):
    """Stop sending orders (a playbook's ``engine.halt``); the journal refuses appends
    until ``EngineResumeRequested``."""

    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class EngineResumeRequested(Event):
    reason: str


# --- hardware (hardware/*, hardware/service.py) ----------------------------------


@dataclass(frozen=True, kw_only=True)
class UpsOnBattery(Event):
    """Mains failed: the UPS runs on its battery."""

    device: str
    runtime_s: float | None = None
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class UpsOnline(Event):
    device: str


@dataclass(frozen=True, kw_only=True)
class UpsBatteryLow(Event):
    device: str
    battery_v: float | None = None
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class UpsRuntimeBelow(Event):
    device: str
    runtime_s: float
    threshold_s: float
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class GnssFixLost(Event):
    device: str
    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class GnssFixAcquired(Event):
    device: str
    satellites: int
    quality: int


@dataclass(frozen=True, kw_only=True)
class ClockOffsetHigh(Event):
    device: str
    offset_ms: float
    threshold_ms: float
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class EnclosureTemperatureHigh(Event):
    device: str
    celsius: float
    threshold_c: float
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class EnclosureHumidityHigh(Event):
    device: str
    percent: float
    threshold_percent: float
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class EnclosureOpened(Event):
    device: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class EnclosureClosed(Event):
    device: str


@dataclass(frozen=True, kw_only=True)
class DeviceStale(Event):
    """A device stopped answering: its last reading no longer counts."""

    device: str
    device_type: str  # ups | gnss | enclosure | door (``kind`` is the event's own name)
    silent_s: float
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class DeviceRecovered(Event):
    device: str
    device_type: str


# --- venues ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VenueHealthChanged(Event):
    """A venue as seen through one uplink changed state (up, degraded, down, unknown).
    ``venue_state`` is the venue's best state over all its uplinks after this change: the
    engine routes away from a venue whose ``venue_state`` is not ``up``. ``error_class``
    is timeout, dns, tls, connect, http, rate_limit, auth, exchange, busy or other.
    ``monotonic_ns`` is CLOCK_MONOTONIC when the change was decided (drills time it)."""

    venue: str
    uplink: str
    state: str
    previous: str
    reason: str
    error_class: str | None
    latency_ms: float | None
    venue_state: str
    monotonic_ns: int

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "warning" if self.state in ("down", "degraded") else "info"


@dataclass(frozen=True, kw_only=True)
class VenueDeadmanFailed(Event):
    """Re-arming a venue's dead-man switch failed while primary: if it keeps failing, the
    venue cancels every order when the last arm runs out."""

    venue: str
    error_class: str
    detail: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class VenueDeadmanArmed(Event):
    """The dead-man switch is armed again after a failure, or for the first time in this
    primary term."""

    venue: str
    timeout_s: float


@dataclass(frozen=True, kw_only=True)
class ReconciliationFinished(Event):
    """Open orders at one venue compared with the journal (after a promotion or by hand).
    ``report`` is the path of the JSON report; counts are in ``counts``."""

    venue: str
    policy: str
    dry_run: bool
    trigger: str
    counts: dict[str, int]
    errors: list[str]
    report: str

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "warning" if self.errors or self.counts.get("failed") else "info"


# --- the operator's day (daemon/operate.py) ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PreflightFinished(Event):
    """`lifeline preflight` ran: how many checks passed, warned and failed (by name)."""

    node: str
    passed: int
    warned: int
    failed: int
    failed_checks: list[str]
    duration_ms: float

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "warning" if self.failed else "info"


@dataclass(frozen=True, kw_only=True)
class ConfigReloaded(Event):
    """A reload (SIGHUP or `lifeline reload`): the keys applied, or those refused (then
    nothing was applied and the old config stays)."""

    file: str
    applied: list[str]
    refused: list[str]
    by: str

    @property
    def severity(self) -> str:  # type: ignore[override]
        return "warning" if self.refused else "info"


# --- the trading guard's circuit breakers (daemon/guard/breaker_service.py) ---------------


@dataclass(frozen=True, kw_only=True)
class BreakerTripped(Event):
    """A circuit breaker's figure went above its threshold. ``breaker`` is
    market_volatility, execution_failure_rate, venue_unavailability or system_load;
    ``subject`` the symbol for market_volatility (else null); ``response`` what the daemon
    does about it (pause, throttle, kill or none); playbooks may add their own."""

    breaker: str
    subject: str | None
    figure: float
    threshold: float
    window_s: float
    recovery_s: float
    response: str
    reason: str
    severity: ClassVar[str] = "warning"


@dataclass(frozen=True, kw_only=True)
class BreakerRecovered(Event):
    """A tripped breaker's figure stayed at or below its recover level for its recovery
    time: the breaker is closed again (its pause or throttle ends by itself; a kill stays)."""

    breaker: str
    subject: str | None
    figure: float
    tripped_for_s: float
    reason: str
