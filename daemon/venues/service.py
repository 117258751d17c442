"""The venues service: each venue seen through each uplink, its dead-man switch, and
reconciliation after a promotion.

**Probes.** For every ``[venues.NAME]`` and every uplink it lists (default: all of them;
no uplinks: one path over the default route) one loop runs a probe round every
``interval`` — never more often than the venue's rate limit allows (ccxt's ``rateLimit``
× calls per round). A round is ccxt's *synchronous* client (ccxt's async client is
asyncio-only) in a worker thread, its HTTP session bound to the uplink's source address
(so the kernel's per-uplink policy routing sends it out of that uplink only). Each
venue × uplink has its own ccxt instance and a capacity limiter of one: a round still
stuck in its thread when the next one is due is a failure of class ``busy`` — never a
second thread piling up behind it. A round's deadline (``timeout`` x calls + 0.2 s) does
not count what ccxt's rate limiter may sleep before each request (``rateLimit`` x the
endpoint's cost: Kraken's private Balance waits 3 s), so a venue's own pacing is never a
timeout. Samples go into the sans-IO health machine
(:mod:`daemon.venues.health`); a change is a ``VenueHealthChanged`` event, a log line,
and a line on every ``venues.watch`` stream (the engine routes away from a venue at once).

**Dead-man switch.** While this node may trade (primary, before its fence deadline; or
always on a host without a journal), every venue with ``deadman = true`` whose exchange
implements ``cancelAllOrdersAfter`` is re-armed every ``deadman_interval`` with
``deadman_timeout``. Nothing is sent when the node stops being primary: the last arm runs
out and the venue cancels every order by itself — also when this daemon is fenced, hangs,
crashes or loses every uplink. With a lease, an arm is sent only while the lease stays
valid longer than the arm's bound (``deadman_arm_timeout``), checked again in the worker
thread right before the request leaves (:mod:`daemon.venues.fencing`): a primary that
cannot renew stops re-arming before it fences. Private calls go through the best uplink for that venue
(UP first, in the configured order), one at a time per venue (nonces must increase).

**Reconciliation.** When this node becomes primary (``RoleChanged``), each venue with
``reconcile_on_promotion`` is reconciled: its open orders (and positions, for the report)
are fetched and compared with the orders the journal says are open (the journal's order
records, :mod:`daemon.venues.orders`, folded in journal order by a tail that follows the
journal on either role); :mod:`daemon.venues.reconcile` decides, the venue's policy
applies (cancel-orphans, adopt, report-only), and every decision and outcome goes to the
hash-chained audit log (:mod:`recovery.audit`) and to a JSON report in
``STATE_DIR/venues/reconcile/``. ``lifeline reconcile [--dry-run]`` runs it by hand.

Control methods: ``venues.status``, ``venues.watch`` (stream: the matrix, then every
change), ``venues.reconcile {"venue", "dry_run"}``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import trio

from daemon.core.acl import audit_by
from daemon.core.audit import AuditFactory
from daemon.core.bus import EventBus
from daemon.core.control import ControlError, ControlRegistry, ReplyStream
from daemon.core.errors import Unavailable
from daemon.core.events import (
    ReconciliationFinished,
    RoleChanged,
    VenueDeadmanArmed,
    VenueDeadmanFailed,
    VenueHealthChanged,
)
from daemon.core.files import create_new_file
from daemon.core.journal import JournalHolder
from daemon.core.log import get_logger
from daemon.core.service import Health, MetricFamily, Sample, ServiceStatus, histogram
from daemon.venues.config import VenueConfig, VenuesSettings
from daemon.venues.errors import VenueError
from daemon.venues.fencing import arm_decision
from daemon.venues.health import (
    HealthChange,
    HealthSettings,
    ProbeSample,
    VenueHealth,
    VenueState,
    best_state,
    effective_interval,
)
from daemon.venues.orders import OpenOrders, looks_like_record
from daemon.venues.reconcile import ReconciliationReport, VenueOrder, adoption_record, reconcile as decide

log = get_logger("venues")

#: Private calls (open orders, cancels, the dead-man switch) get this long per HTTP phase.
PRIVATE_TIMEOUT = 10.0
#: A private call (with the market list it may load first) is abandoned after this.
PRIVATE_DEADLINE = 30.0
#: After a failed re-arm, try again this soon (the last good arm is still running down).
DEADMAN_RETRY = 1.0
#: While the lease is valid for less than an arm's bound, ask the fencing rule again this often
#: (a renewal moves valid_until: every renew_interval, 500 ms at the defaults).
DEADMAN_WINDOW_POLL = 0.05
#: Reconciliation waits at most this long for the order index to reach the journal's end.
INDEX_CATCH_UP = 30.0
WATCH_BUFFER = 256
#: The kill switch's calls get this long per HTTP phase (a hung path is abandoned anyway).
KILL_TIMEOUT = 2.0
#: The name of the path over the default route when no uplink is configured.
DEFAULT_PATH = "default"


class VenueUnavailable(VenueError, Unavailable):
    """A private call could not be made (no credentials, no usable path, the call failed)."""

    def __init__(self, message: str, error_class: str = "other") -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass
class VenuePath:
    """One venue seen through one uplink."""

    venue: str
    uplink: str
    source: str | None
    health: VenueHealth
    interval: float
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    client: Any = None
    changed_at: float | None = None     # wall time of the last state change
    last_error: str | None = None
    last_error_class: str | None = None
    error_counts: dict[str, int] = field(default_factory=dict)
    #: Seconds ccxt's rate limiter may sleep in the current round (written by the probe
    #: thread before each request): the round's deadline does not count them.
    rate_allowance: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        last = self.health.last
        median = self.health.latency_median()
        return {
            "venue": self.venue, "uplink": self.uplink, "state": self.health.state.value,
            "latency_ms": round(last.latency * 1000, 1) if last is not None and last.ok and last.latency is not None
            else None,
            "median_ms": round(median * 1000, 1) if median is not None else None,
            "error_class": self.last_error_class if last is not None and not last.ok else None,
            "error": self.last_error if last is not None and not last.ok else None,
            "since": self.changed_at, "interval_s": round(self.interval, 3),
            "probes": self.health.samples_total, "failures": self.health.failures_total,
        }


@dataclass
class Venue:
    name: str
    config: VenueConfig
    paths: dict[str, VenuePath]
    credentials: Any = None
    private_lock: trio.Lock = field(default_factory=trio.Lock)
    private_clients: dict[str, Any] = field(default_factory=dict)
    deadman_supported: bool | None = None
    deadman_armed_at: float | None = None     # wall time of the last good arm
    deadman_error: str | None = None
    deadman_arms: int = 0
    deadman_failures: int = 0
    deadman_failing: int = 0                  # consecutive failed re-arms (backoff)
    deadman_holding: str | None = None        # why the fencing rule holds the next arm back
    deadman_held: int = 0                     # times it did while primary (the lease too short for B)
    #: Held inside the worker thread around every signed request: one API key's nonces
    #: must increase, whichever ccxt instance (probe or private, any uplink) sends them.
    key_lock: threading.Lock = field(default_factory=threading.Lock)
    #: ccxt's timestamp (ms) of the last signed request sent with this key, by any instance:
    #: ccxt paces each instance on its own, the venue counts per key.
    last_signed_ms: float = 0.0

    def signed(self, client: Any, call: Callable[[], Any]) -> Any:
        """Run ``call`` (in a worker thread) as one signed exchange with this venue's key:
        one at a time (nonces increase), paced as one client (the instance's rate limiter
        starts from the key's last request, not its own)."""
        exchange = getattr(client, "exchange", None)
        with self.key_lock:
            if exchange is not None:
                exchange.lastRestRequestTimestamp = max(float(exchange.lastRestRequestTimestamp or 0),
                                                        self.last_signed_ms)
            try:
                return call()
            finally:
                if exchange is not None:
                    self.last_signed_ms = max(self.last_signed_ms, float(exchange.lastRestRequestTimestamp or 0))
    reconciliations: int = 0
    last_report: str | None = None
    #: The kill switch's own clients, one per path (ccxt's rate limiter off, markets loaded
    #: ahead), each used by one kill call at a time (its lock).
    kill_clients: dict[str, Any] = field(default_factory=dict)
    kill_locks: dict[str, trio.Lock] = field(default_factory=dict)
    #: The kill clients' nonces (ms, as ccxt's): one increasing counter for every path, so
    #: only the network's reordering can put one below the venue's last (README "Kill switch").
    kill_nonce: int = 0
    kill_nonce_lock: threading.Lock = field(default_factory=threading.Lock)

    def next_kill_nonce(self) -> int:
        with self.kill_nonce_lock:
            self.kill_nonce = max(int(time.time() * 1000), self.kill_nonce + 1)
            return self.kill_nonce

    def state(self) -> VenueState:
        return best_state(p.health.state for p in self.paths.values())

    def best_paths(self) -> list[VenuePath]:
        """Paths for a private call, best first: UP, then DEGRADED, then the rest, each in
        the configured order."""
        rank = {VenueState.UP: 0, VenueState.DEGRADED: 1, VenueState.UNKNOWN: 2, VenueState.DOWN: 3}
        order = list(self.paths.values())
        return sorted(order, key=lambda p: (rank[p.health.state], order.index(p)))


def _default_client_factory(venue: str, config: VenueConfig, *, uplink: str | None, source: str | None,
                            timeout: float, credentials: Any) -> Any:
    from daemon.venues.client import VenueClient  # lazy: ccxt (the venues extra, ~0.35 s), only for a venue

    client = VenueClient(venue, config.exchange, uplink=uplink, source_address=source, api_url=config.api_url,
                         timeout=timeout, credentials=credentials, ticker_symbol=config.ticker_symbol,
                         options=None)
    if config.sandbox:
        client.exchange.set_sandbox_mode(True)
    return client


class LeadershipView(Protocol):
    """The lease shell as the venues see it (:class:`daemon.standby.leadership.Leadership`)."""

    def may_trade(self) -> bool: ...


class LeaseSection(Protocol):
    """``[standby]`` as the venues see it: whether roles move with a lease."""

    @property
    def lease(self) -> object | None: ...


class StandbyConfigView(Protocol):
    @property
    def standby(self) -> LeaseSection | None: ...


class StandbyView(JournalHolder, Protocol):
    """What the venues read of the standby service (:class:`daemon.standby.service.StandbyService`),
    injected by daemon/app.py: the role, the lease epoch, the journal for the order index, and
    the control socket's append path for an adoption record (checked as the engine's are)."""

    @property
    def config(self) -> StandbyConfigView: ...

    @property
    def leadership(self) -> LeadershipView | None: ...

    @property
    def role(self) -> str: ...

    @property
    def accepting(self) -> bool: ...

    @property
    def epoch(self) -> int: ...

    async def _append(self, params: dict[str, Any]) -> Any: ...


class VenueService:
    name = "venues"

    def __init__(self, config: VenuesSettings, bus: EventBus, *, standby: StandbyView | None = None,
                 client_factory: Callable[..., Any] | None = None,
                 audit_factory: AuditFactory | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config
        self.bus = bus
        self.standby = standby
        self.client_factory = client_factory or _default_client_factory
        self._audit_factory = audit_factory
        self._audit: Any = None
        self.clock_ns = clock_ns
        self.venues: dict[str, Venue] = {}
        self._watchers: list[trio.MemorySendChannel[dict[str, Any]]] = []
        self._cut: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._role_changed = trio.Event()
        self._primary_term = 0            # counts promotions: one reconciliation per term and venue
        self.orders: Any = None           # daemon.venues.orders.OpenOrders, built from the journal
        #: venue -> (symbol, last price, wall time) from the fetch_ticker probe (the risk gate's reference)
        self.tickers: dict[str, tuple[str, float, float]] = {}
        self._index_advanced = trio.Event()
        self.index_error: str | None = None
        self.index_gap: str | None = None
        self.index_gap_end = 0
        self._index_tip: tuple[int, int] | None = None   # (seq, epoch) of the last record folded
        self._reconcile_lock = trio.Lock()
        self._started = False
        self.probe_latency = histogram("lifeline_venue_probe_latency_seconds",
                                       "Latency of each answered venue probe round, by venue and uplink.",
                                       "venue", ("venue", "uplink"))
        for name, vc in config.venues.items():
            uplinks = vc.uplinks if vc.uplinks is not None else list(config.uplinks)
            settings = HealthSettings(degraded_latency=float(vc.degraded_latency), down_after=vc.down_after,
                                      up_after=vc.up_after, slow_after=vc.slow_after)
            paths: dict[str, VenuePath] = {}
            for uplink in uplinks or [DEFAULT_PATH]:
                source = config.uplinks[uplink].source if uplink in config.uplinks else None
                paths[uplink] = VenuePath(name, uplink, source, VenueHealth(settings), float(vc.interval))
            self.venues[name] = Venue(name, vc, paths)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Subscribed before anything slow: a promotion while the clients are being built
        # must not be missed (its term would never be reconciled).
        with self.bus.subscribe("venues-role", kinds={"RoleChanged"}) as role_events:
            await self._run(role_events, task_status)

    async def _run(self, role_events: Any, task_status: trio.TaskStatus[None]) -> None:
        for venue in self.venues.values():
            if venue.config.credentials is not None:
                from daemon.venues.client import load_credentials  # lazy: ccxt (the venues extra)

                # A bad credentials file refuses to start, naming the file and the field.
                venue.credentials = load_credentials(venue.config.credentials)
        for venue in self.venues.values():
            for path in venue.paths.values():
                # Built before "started": an unusable probe list refuses to start, naming the key.
                client = await self._client(venue, path)
                problems = client.check_calls(list(venue.config.probes))
                if problems:
                    raise ValueError(f"{self.config.source}: venues.{venue.name}.probes: " + "; ".join(problems))
        try:
            async with trio.open_nursery() as nursery:
                for venue in self.venues.values():
                    for path in venue.paths.values():
                        nursery.start_soon(self._probe_loop, venue, path)
                    nursery.start_soon(self._deadman_loop, venue)
                    if venue.credentials is not None:
                        nursery.start_soon(self._warm_kill_clients, venue)
                if self.standby is not None:
                    nursery.start_soon(self._index_loop)
                # Primary already (fixed, or a lease taken while the clients were built): this
                # term exists from now on, so an operator's reconcile right after start binds to it.
                self._primary_at_start = self.standby is not None and self.may_trade()
                if self._primary_at_start:
                    self._primary_term += 1
                nursery.start_soon(self._role_loop, role_events)
                self._nursery = nursery
                self._started = True
                log.info("venues.started", venues=",".join(self.venues),
                         paths=sum(len(v.paths) for v in self.venues.values()))
                task_status.started()
        finally:
            for channel in self._watchers:
                channel.close()
            if self._audit is not None:
                self._audit.close()

    # ------------------------------------------------------------------ probes

    async def _client(self, venue: Venue, path: VenuePath) -> Any:
        if path.client is None:
            vc = venue.config
            path.client = await trio.to_thread.run_sync(lambda: self.client_factory(
                venue.name, vc, uplink=None if path.uplink == DEFAULT_PATH else path.uplink, source=path.source,
                timeout=float(vc.timeout), credentials=venue.credentials))
            self._count_rate_limit_sleeps(path)
            rate_limit = float(getattr(path.client, "rate_limit", 0.0) or 0.0)
            path.interval = effective_interval(float(vc.interval), rate_limit, len(vc.probes))
            if path.interval > float(vc.interval):
                log.info("venue.interval_raised", venue=venue.name, uplink=path.uplink,
                         configured=float(vc.interval), interval=round(path.interval, 3),
                         reason="the venue's rate limit")
        return path.client

    @staticmethod
    def _count_rate_limit_sleeps(path: VenuePath) -> None:
        """Before each request ccxt's rate limiter may sleep up to ``rateLimit x cost`` (the
        endpoint's cost: Kraken's Balance is 3 s, Coinbase's v2 time 360 ms): add that to the
        round's allowance first, so the round's deadline never mistakes the venue's own pacing
        for a venue that does not answer."""
        exchange: Any = getattr(path.client, "exchange", None)
        original = getattr(exchange, "throttle", None)
        if original is None:
            return

        def throttle(cost: Any = None) -> Any:
            units = 1.0 if cost is None else float(cost)
            path.rate_allowance += max(0.0, float(getattr(exchange, "rateLimit", 0) or 0) * units / 1000.0)
            return original(cost)

        exchange.throttle = throttle

    async def _probe_loop(self, venue: Venue, path: VenuePath) -> None:
        vc = venue.config
        deadline_per_round = float(vc.timeout) * len(vc.probes) + 0.2
        next_at = trio.current_time()
        while True:
            await trio.sleep_until(next_at)
            sample = await self._probe_once(venue, path, deadline_per_round)
            self._observe(venue, path, sample)
            next_at = max(next_at + path.interval, trio.current_time())

    async def _probe_once(self, venue: Venue, path: VenuePath, deadline: float) -> ProbeSample:
        now = trio.current_time()
        if path.limiter.borrowed_tokens:
            return ProbeSample(ok=False, at=now, error_class="busy",
                               detail="the previous probe is still waiting for an answer")
        try:
            client = await self._client(venue, path)
        except Exception as exc:  # noqa: BLE001 - a client that cannot be built is a failed probe
            return ProbeSample(ok=False, at=trio.current_time(), error_class="other",
                               detail=f"cannot create the ccxt client: {type(exc).__name__}")
        calls = list(venue.config.probes)
        result = None
        path.rate_allowance = 0.0
        started = trio.current_time()
        done = trio.Event()

        private = "fetch_balance" in calls

        def probe_round() -> Any:
            if not private:
                return client.probe(calls)
            return venue.signed(client, lambda: client.probe(calls))

        async def run_round() -> None:
            nonlocal result
            try:
                result = await trio.to_thread.run_sync(probe_round, limiter=path.limiter, abandon_on_cancel=True)
            except Exception as exc:  # noqa: BLE001 - a broken round is a failed probe, never a dead daemon
                log.error("venue.probe_error", venue=venue.name, uplink=path.uplink, error=type(exc).__name__)
                result = False
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_round)
            while not done.is_set():
                # The deadline moves by what the rate limiter may sleep (added before it sleeps).
                with trio.move_on_at(started + deadline + path.rate_allowance):
                    await done.wait()
                if not done.is_set() and trio.current_time() >= started + deadline + path.rate_allowance:
                    nursery.cancel_scope.cancel()
                    break
        at = trio.current_time()
        if result is None:
            return ProbeSample(ok=False, at=at, error_class="timeout",
                               detail=f"no answer within {deadline:.1f}s")
        if result is False:
            return ProbeSample(ok=False, at=at, error_class="other", detail="the probe round failed (see the log)")
        self._note_ticker(venue, result)
        return ProbeSample(ok=result.ok, at=at, latency=result.latency, error_class=result.error_class,
                           detail=result.detail)

    def _note_ticker(self, venue: Venue, result: Any) -> None:
        ticker = (getattr(result, "value", None) or {}).get("fetch_ticker")
        last = ticker.get("last") if isinstance(ticker, dict) else None
        if isinstance(last, (int, float)) and not isinstance(last, bool) and last > 0 and venue.config.ticker_symbol:
            self.tickers[venue.name] = (venue.config.ticker_symbol, float(last), time.time())

    def ticker_price(self, venue: str, symbol: str) -> tuple[float, float] | None:
        """The last price of ``symbol`` at ``venue`` seen by the fetch_ticker probe, and when
        (wall time); None if the probes do not read that symbol's ticker."""
        entry = self.tickers.get(venue)
        return (entry[1], entry[2]) if entry is not None and entry[0] == symbol else None

    def _observe(self, venue: Venue, path: VenuePath, sample: ProbeSample) -> None:
        before = venue.state()
        if sample.ok and sample.latency is not None:
            self.probe_latency.labels(venue=venue.name, uplink=path.uplink).observe(sample.latency)
        if not sample.ok:
            path.last_error = sample.detail
            path.last_error_class = sample.error_class
            key = sample.error_class or "other"
            path.error_counts[key] = path.error_counts.get(key, 0) + 1
        change = path.health.observe(sample)
        if change is None:
            return
        path.changed_at = time.time()
        self._publish_change(venue, path, change, before)

    def _publish_change(self, venue: Venue, path: VenuePath, change: HealthChange, before: VenueState) -> None:
        sample = change.sample
        after = venue.state()
        latency_ms = round(sample.latency * 1000, 1) if sample.latency is not None else None
        event = VenueHealthChanged(
            source=self.name, venue=venue.name, uplink=path.uplink, state=change.state.value,
            previous=change.previous.value, reason=change.reason,
            error_class=None if sample.ok else sample.error_class, latency_ms=latency_ms,
            venue_state=after.value, monotonic_ns=self.clock_ns())
        self.bus.publish(event)
        if after is not before:
            log.info("venue.state", venue=venue.name, state=after.value, previous=before.value)
        self._tell_watchers({"change": event.to_dict()})

    def _tell_watchers(self, message: dict[str, Any]) -> None:
        for channel in list(self._watchers):
            try:
                channel.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # A watcher that does not keep up is cut, never allowed to hold the probes up.
                self._cut.add(channel)
                channel.close()
                self._watchers.remove(channel)

    # ------------------------------------------------------------------ role

    def may_trade(self) -> bool:
        """May this node send orders now? Without a journal (no [standby]) the host is on
        its own: always. With one: primary, and (with a lease) before the fence deadline."""
        standby = self.standby
        if standby is None:
            return True
        leadership = standby.leadership
        if leadership is not None:
            return bool(leadership.may_trade())
        return standby.role == "primary" and standby.accepting

    def _epoch(self) -> int | None:
        return self.standby.epoch if self.standby is not None else None

    async def _role_loop(self, sub: Any) -> None:
        """Wake the dead-man loops on every role change; reconcile on becoming primary."""
        was_primary = False
        if self._primary_at_start:
            was_primary = True
            self._became_primary("start", new_term=False)
        elif self.standby is not None and (section := self.standby.config.standby) is not None \
                and section.lease is None:
            # A fixed primary never sees RoleChanged: wait until it accepts appends.
            with trio.move_on_after(60):
                while not self.may_trade():
                    await trio.sleep(0.05)
            if self.may_trade():
                was_primary = True
                self._became_primary("start")
        async for event in sub:
            assert isinstance(event, RoleChanged)
            self._role_changed.set()
            self._role_changed = trio.Event()
            is_primary = event.role == "primary"
            if is_primary and not was_primary:
                self._became_primary(f"promotion (epoch {event.epoch})")
            was_primary = is_primary

    def _became_primary(self, trigger: str, *, new_term: bool = True) -> None:
        if new_term:
            self._primary_term += 1
        self._role_changed.set()
        self._role_changed = trio.Event()
        for venue in self.venues.values():
            if not venue.config.reconcile_on_promotion or self.standby is None:
                continue
            if venue.credentials is None:
                # A probe-only venue: nothing can be fetched; say so once per term, no report.
                log.info("venue.reconcile_skipped", venue=venue.name, trigger=trigger,
                         reason="no credentials (a probe-only venue)")
                continue
            self._reconcile_soon(venue, trigger)

    def _reconcile_soon(self, venue: Venue, trigger: str) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        nursery.start_soon(self._reconcile_logged, venue, trigger)

    _nursery: trio.Nursery | None = None
    _primary_at_start = False

    async def _reconcile_logged(self, venue: Venue, trigger: str) -> None:
        try:
            await self.reconcile(venue.name, dry_run=False, trigger=trigger)
        except (VenueUnavailable, ControlError) as exc:
            log.error("venue.reconcile_failed", venue=venue.name, trigger=trigger, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a background reconciliation never takes the daemon down
            log.error("venue.reconcile_failed", venue=venue.name, trigger=trigger,
                      error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ private calls

    def _still_primary(self, term: int | None) -> bool:
        return self.may_trade() and (term is None or term == self._primary_term)

    async def _private(self, venue: Venue, method: str, *args: Any, primary_term: int | None = None,
                       primary_only: bool = False, deadline: float = PRIVATE_DEADLINE,
                       kwargs: dict[str, Any] | None = None) -> Any:
        """One private call at ``venue`` through its best path; VenueUnavailable if none works.

        ``primary_only`` (cancels, the dead-man switch): checked again after the lock was
        taken and before each attempt — with ``primary_term``, also that this is still the
        same primary term — so nothing goes out once the node is fenced. ``deadline``
        bounds the whole call, the wait for the lock included."""
        if venue.credentials is None:
            raise VenueUnavailable(f"venue {venue.name}: no credentials configured "
                                   f"(set venues.{venue.name}.credentials to a 0600 TOML file)")
        with trio.move_on_after(deadline):
            return await self._private_unbounded(venue, method, args, primary_term, primary_only, kwargs or {})
        raise VenueUnavailable(f"venue {venue.name}: {method} failed: no answer within {deadline:g}s", "timeout")

    async def _private_unbounded(self, venue: Venue, method: str, args: tuple[Any, ...], primary_term: int | None,
                                 primary_only: bool, kwargs: dict[str, Any]) -> Any:
        from daemon.venues.client import VenueCallError  # lazy: ccxt (the venues extra)

        errors: list[str] = []
        error_class = "other"
        async with venue.private_lock:
            paths = venue.best_paths()
            # DOWN paths only when nothing better exists (a probe may not have run yet).
            paths = [p for p in paths if p.health.state is not VenueState.DOWN] or paths
            for path in paths:
                if primary_only and not self._still_primary(primary_term):
                    raise VenueUnavailable(f"venue {venue.name}: {method} not sent: this node is no longer "
                                           "primary (or a new term began)", "fenced")
                client = venue.private_clients.get(path.uplink)
                try:
                    if client is None:
                        client = await trio.to_thread.run_sync(lambda: self.client_factory(
                            venue.name, venue.config, uplink=None if path.uplink == DEFAULT_PATH else path.uplink,
                            source=path.source, timeout=PRIVATE_TIMEOUT, credentials=venue.credentials))
                        venue.private_clients[path.uplink] = client
                    fn = getattr(client, method)

                    def call() -> Any:
                        return venue.signed(client, lambda: fn(*args, **kwargs))

                    with trio.fail_after(PRIVATE_DEADLINE):
                        return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
                except VenueCallError as exc:
                    error_class = exc.error_class
                    errors.append(f"{path.uplink}: {exc.error_class}: {exc.detail}")
                    if exc.error_class in ("auth", "exchange", "lease"):  # lease: the fencing rule said no
                        break  # the venue answered: another uplink gets the same answer
                except trio.TooSlowError:
                    error_class = "timeout"
                    errors.append(f"{path.uplink}: timeout: no answer within {PRIVATE_DEADLINE:g}s")
                    venue.private_clients.pop(path.uplink, None)  # its thread may still be running
                except trio.Cancelled:
                    venue.private_clients.pop(path.uplink, None)  # abandoned: never reuse a busy client
                    raise
                except Exception as exc:  # noqa: BLE001 - the client builder or ccxt misbehaved: next path
                    error_class = "other"
                    errors.append(f"{path.uplink}: other: {type(exc).__name__}")
                    venue.private_clients.pop(path.uplink, None)
        raise VenueUnavailable(f"venue {venue.name}: {method} failed: " + "; ".join(errors or ["no path"]),
                               error_class)

    # ------------------------------------------------------------------ dead-man switch

    async def _deadman_loop(self, venue: Venue) -> None:
        vc = venue.config
        if not vc.deadman:
            return
        if venue.credentials is None:
            venue.deadman_supported = None
            venue.deadman_error = "no credentials: the dead-man switch cannot be armed"
            return
        term = -1
        while True:
            changed = self._role_changed
            if self.may_trade():
                if venue.deadman_supported is None:
                    venue.deadman_supported = await self._supports(venue, "cancelAllOrdersAfter")
                    if not venue.deadman_supported:
                        venue.deadman_error = f"{vc.exchange} has no dead-man switch (cancelAllOrdersAfter)"
                        log.warning("venue.deadman_unsupported", venue=venue.name, exchange=vc.exchange)
                        return
                # Venue-side fencing: an arm goes out only while the lease outlives its flight.
                lease, valid_until = self._lease_deadline()
                decision = arm_decision(self.clock_ns(), valid_until, _ns(vc.deadman_arm_timeout), lease=lease,
                                        retry_ns=_ns(DEADMAN_WINDOW_POLL))
                venue.deadman_holding = None if decision.send else decision.reason
                if not decision.send and decision.retry_in != math.inf:
                    venue.deadman_held += 1
                if not decision.send:
                    wait = decision.retry_in if decision.retry_in != math.inf else float(vc.deadman_interval)
                else:
                    current = self._primary_term
                    try:
                        wait = await self._arm(venue, first=term != current, term=current,
                                               valid_until=valid_until if lease else None)
                    except Exception as exc:  # noqa: BLE001 - never take the daemon down; retry
                        log.error("venue.deadman_error", venue=venue.name, error=f"{type(exc).__name__}: {exc}")
                        wait = DEADMAN_RETRY
                    term = current if venue.deadman_failing == 0 else term
            else:
                wait = float(vc.deadman_interval)
            with trio.move_on_after(wait):
                await changed.wait()

    async def _supports(self, venue: Venue, feature: str) -> bool:
        path = next(iter(venue.paths.values()))
        try:
            client = await self._client(venue, path)
        except Exception:  # noqa: BLE001
            return False
        return bool(client.supports(feature))

    def _lease_deadline(self) -> tuple[bool, int | None]:
        """(roles move with a lease, its trading deadline on CLOCK_MONOTONIC ns or None)."""
        leadership = self.standby.leadership if self.standby is not None else None
        # Leadership has it; the tests' leadership doubles have none (then: no deadline).
        deadline = getattr(leadership, "valid_until_ns", None)
        if deadline is None:
            return False, None  # no journal, or a fixed role: no deadline
        return True, deadline(self.clock_ns())

    async def _arm(self, venue: Venue, *, first: bool, term: int | None = None,
                   valid_until: int | None = None) -> float:
        vc = venue.config
        bound_ns = _ns(vc.deadman_arm_timeout)
        lease = valid_until is not None

        def send_if() -> str | None:
            # In the worker thread, right before the request leaves (ccxt's rate limiter may have
            # slept seconds since the loop asked): the same rule, with the deadline as it is now
            # (plain attribute reads of leadership's state; renewals since moved it later).
            has_lease, until = self._lease_deadline() if lease else (False, None)
            decision = arm_decision(self.clock_ns(), until, bound_ns, lease=has_lease)
            return None if decision.send else decision.reason

        try:
            # Bounded: a hung call must not use up the running arm (half its timeout at most),
            # nor be cut shorter than the re-arm interval (ccxt paces Kraken's call ~3 s).
            bound = min(PRIVATE_DEADLINE, max(float(vc.deadman_interval), float(vc.deadman_timeout) / 2))
            await self._private(venue, "cancel_all_orders_after", float(vc.deadman_timeout), primary_only=True,
                                primary_term=term, deadline=bound,
                                kwargs={"send_if": send_if, "bound": float(vc.deadman_arm_timeout)})
        except VenueUnavailable as exc:
            if exc.error_class == "fenced":
                return float(vc.deadman_interval)
            if exc.error_class == "lease":
                venue.deadman_holding = str(exc)
                venue.deadman_held += 1
                return 0.0  # the loop asks the rule again (and waits as it says)
            venue.deadman_failures += 1
            venue.deadman_failing += 1
            venue.deadman_error = str(exc)
            self.bus.publish(VenueDeadmanFailed(source=self.name, venue=venue.name, error_class=exc.error_class,
                                                detail=str(exc)[:300]))
            # Back off (1, 2, 4 ... s, at most the interval): an auth error will not fix itself
            # in a second, and every attempt holds the venue's private calls.
            return min(float(vc.deadman_interval), DEADMAN_RETRY * 2.0 ** min(venue.deadman_failing - 1, 10))
        if not self.may_trade():
            # Fenced while the arm was in flight: do not keep it alive any longer than this one.
            log.warning("venue.deadman_armed_after_fence", venue=venue.name)
        recovered = venue.deadman_error is not None or first
        venue.deadman_failing = 0
        venue.deadman_error = None
        venue.deadman_armed_at = time.time()
        venue.deadman_arms += 1
        if recovered:
            self.bus.publish(VenueDeadmanArmed(source=self.name, venue=venue.name,
                                               timeout_s=float(vc.deadman_timeout)))
        return float(vc.deadman_interval)

    # ------------------------------------------------------------------ the journal's open orders

    async def _index_loop(self) -> None:
        """Fold the journal's order records, in journal order, on either role.

        Reads run on the trio thread (the journal is not thread-safe), a bounded batch at a
        time. The index remembers the epoch of the last record it applied: when the record
        at that seq has another epoch now (a divergent tail was cut and refilled), or the
        journal ends before it, the index is rebuilt from the start."""
        standby = self.standby
        assert standby is not None  # started only with one
        while (journal := standby.journal) is None:
            await trio.sleep(0.05)
        self.orders = OpenOrders()
        while True:
            if not self._index_consistent():
                log.warning("venue.index_rebuilt", reason="the journal's tail was cut and rewritten",
                            position=self.orders.position, last=journal.last.seq)
                self._index_reset()
            last = journal.last.seq
            start = max(self.orders.position + 1, journal.first_seq)
            if start > self.orders.position + 1:
                # Records before ``start`` are gone (retention): orders only they described are
                # unknown until an open_orders snapshot of the venue comes after them.
                self.index_gap = f"journal records {self.orders.position + 1}-{start - 1} were no longer retained"
                self.index_gap_end = start - 1
            if start <= last:
                try:
                    records = journal.read(start, 1000)
                    for record in records:
                        if record.seq != self.orders.position + 1 and self.orders.position:
                            self.index_gap = f"journal records {self.orders.position + 1}-{record.seq - 1} missing"
                            self.index_gap_end = record.seq - 1
                        if looks_like_record(record.payload):
                            self.orders.apply(record.seq, record.payload)
                        else:
                            self.orders.position = record.seq
                        self._index_tip = (record.seq, record.epoch)
                except Exception as exc:  # noqa: BLE001 - retention or a cut under us: rebuild
                    self.index_error = f"{type(exc).__name__}: {exc}"
                    log.warning("venue.index_error", error=self.index_error)
                    self._index_reset()
                    await trio.sleep(0.2)
                    continue
                self._index_advanced.set()
                self._index_advanced = trio.Event()
                await trio.lowlevel.checkpoint()  # let the loop breathe between batches
                continue
            with trio.move_on_after(0.5):  # also re-check consistency: a cut does not wake wait_beyond
                try:
                    await journal.wait_beyond(last)
                except Exception as exc:  # noqa: BLE001 - the journal closed: the daemon is stopping
                    self.index_error = str(exc)
                    return

    def _index_reset(self) -> None:
        if self.orders is not None:
            self.orders.reset()
        self._index_tip = None
        self.index_gap = None
        self.index_gap_end = 0

    def _index_consistent(self) -> bool:
        journal = self.standby.journal if self.standby is not None else None
        if journal is None or self.orders is None or self._index_tip is None:
            return True
        seq, epoch = self._index_tip
        if journal.last.seq < seq:
            return False
        try:
            now = journal.epoch_at(seq)
        except Exception:  # noqa: BLE001 - not retained any more: retention, not a cut
            return True
        return now is None or now == epoch

    def index_incomplete(self, venue: str | None = None) -> str | None:
        """Why the journal's view of open orders at ``venue`` may miss orders (then
        reconciliation only reports): records removed by retention or missing, invalid order
        records — unless an open_orders snapshot of that venue came after them. Without a
        venue: whether any such reason exists at all."""
        if self.orders is None:
            return "the journal's order index has not started"
        covered = self.orders.snapshots.get(venue, 0) if venue is not None else 0
        if self.index_gap and self.index_gap_end > covered:
            return f"{self.index_gap} and no open_orders snapshot of the venue came after them"
        if self.orders.invalid and self.orders.last_invalid_seq > covered:
            return (f"{self.orders.invalid} invalid order record(s) in the journal (the last at seq "
                    f"{self.orders.last_invalid_seq}) and no open_orders snapshot of the venue came after them")
        return None

    async def _index_caught_up(self) -> None:
        """Wait until the index has folded every record the journal holds *now*."""
        journal = self.standby.journal if self.standby is not None else None
        if journal is None:
            raise VenueUnavailable("the journal is not open yet")
        target = journal.last.seq
        with trio.move_on_after(INDEX_CATCH_UP):
            while (self.orders is None or self.orders.position < target or not self._index_consistent()):
                with trio.move_on_after(0.1):
                    await self._index_advanced.wait()
            return
        raise VenueUnavailable(f"the journal's order index did not reach seq {target} within {INDEX_CATCH_UP:g}s")

    # ------------------------------------------------------------------ reconciliation

    def _audit_log(self) -> Any:
        if self._audit is None:
            if self._audit_factory is None:
                raise VenueUnavailable("no audit log was given to the venue service (daemon/app.py injects it)")
            self._audit = self._audit_factory()
        return self._audit

    async def _audit_append(self, kind: str, **fields: Any) -> None:
        try:
            audit = await trio.to_thread.run_sync(self._audit_log)
            await trio.to_thread.run_sync(lambda: audit.append(kind, **fields))
        except Exception as exc:  # noqa: BLE001 - an audit failure is reported, the report still written
            log.error("venue.audit_failed", kind=kind, error=str(exc))
            raise VenueUnavailable(f"the audit log refused the entry: {exc}") from None

    async def reconcile(self, venue_name: str, *, dry_run: bool, trigger: str = "operator") -> Any:
        """Reconcile one venue; return the :class:`ReconciliationReport`.

        Order matters. The venue's open orders are fetched *first*; then the journal's
        order index is brought up to the journal's end as it stands *after* that answer;
        only then are the two compared. The engine journals an order before it sends it,
        so every order the venue listed is in the journal by then: an order placed while
        this runs is never taken for an orphan. Decisions are audited before anything is
        done; each cancel is sent only while this node is still primary in the same term
        and the journal still does not know the order. When the journal's view may be
        incomplete (records removed by retention, invalid order records) nothing is
        cancelled or adopted: the report says why."""
        venue = self.venues.get(venue_name)
        if venue is None:
            raise ControlError("no_such_venue", f"no venue {venue_name!r}; venues: {', '.join(self.venues) or 'none'}")
        if self.standby is None and not dry_run:
            raise ControlError("no_journal", "this daemon has no journal ([standby]): there is nothing to compare "
                                             "the venue's orders with; only --dry-run reports them")
        if not dry_run and not self.may_trade():
            raise ControlError("not_primary", "only the primary reconciles (it owns the orders); --dry-run reports "
                                              "from any node")
        term = self._primary_term
        policy = venue.config.reconcile
        async with self._reconcile_lock:
            report = ReconciliationReport(venue=venue.name, policy=policy, dry_run=dry_run,
                                          node=self.config.node.name, epoch=self._epoch(), started_at=time.time())
            try:
                raw = await self._private(venue, "fetch_open_orders")
                venue_open = []
                for order in raw if isinstance(raw, list) else []:
                    try:
                        venue_open.append(VenueOrder.from_ccxt(order))
                    except (TypeError, ValueError) as exc:
                        report.errors.append(f"a venue order could not be read (left alone): {exc}")
                if self.standby is not None:
                    await self._index_caught_up()
                    journal_open = self.orders.open_at(venue.name)
                else:
                    journal_open = []
                if venue.config.positions:
                    try:
                        if await self._supports(venue, "fetchPositions"):
                            report.positions = list(await self._private(venue, "fetch_positions"))
                    except VenueUnavailable as exc:
                        report.errors.append(f"positions: {exc}")
                await self._decide_and_act(venue, report, journal_open, venue_open, dry_run, trigger, term)
            except VenueUnavailable as exc:
                report.errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - reported, never a dead daemon
                log.error("venue.reconcile_error", venue=venue.name, error=f"{type(exc).__name__}: {exc}")
                report.errors.append(f"internal error: {type(exc).__name__}: {exc}")
            finally:
                report.finished_at = time.time()
                with trio.CancelScope(shield=True):
                    await self._finish(venue, report, trigger)
            return report

    async def _decide_and_act(self, venue: Venue, report: Any, journal_open: list[Any], venue_open: list[Any],
                              dry_run: bool, trigger: str, term: int) -> None:
        decisions = decide(venue.name, report.policy, journal_open, venue_open)
        incomplete = self.index_incomplete(venue.name) if self.standby is not None else None
        unmatched_new = [r for r in journal_open if r.state == "new" and not r.venue_order_id]
        held: list[Any] = []
        for d in decisions:
            if d.action in ("cancel", "adopt") and incomplete:
                d = dataclasses.replace(d, action="report", reason=f"{d.reason}; not acted on: {incomplete}")
            elif d.action == "cancel" and any(
                    r.symbol == d.symbol and r.side == d.side and (d.amount is None or r.amount == d.amount)
                    for r in unmatched_new):
                d = dataclasses.replace(d, action="report", reason=f"{d.reason}; not cancelled: it may be the "
                                        "engine's order still in state new (the venue did not echo its client id)")
            held.append(d)
        report.decisions = held
        if incomplete:
            report.errors.append(f"the journal's view of open orders may be incomplete ({incomplete}): nothing "
                                 "was cancelled or adopted; check the report and act by hand")
        await self._audit_append("venue.reconcile.started", venue=venue.name, policy=report.policy, dry_run=dry_run,
                                 trigger=trigger, node=self.config.node.name, epoch=self._epoch(),
                                 journal_open=len(journal_open), venue_open=len(venue_open),
                                 decisions=[d.to_dict() for d in report.decisions], **_audit_by())
        by_id = {o.id: o for o in venue_open}
        for i, decision in enumerate(report.decisions):
            outcome = await self._act(venue, decision, by_id, dry_run, term)
            report.outcomes[i] = outcome
            if decision.action in ("cancel", "adopt"):
                try:
                    await self._audit_append("venue.reconcile.action", venue=venue.name, action=decision.action,
                                             venue_order_id=decision.venue_order_id,
                                             client_order_id=decision.client_order_id, symbol=decision.symbol,
                                             outcome=outcome, dry_run=dry_run)
                except VenueUnavailable as exc:
                    report.errors.append(str(exc))

    def _journal_knows(self, venue: str, decision: Any) -> bool:
        """Does the journal (as folded now) hold an open order with this venue id or client id?"""
        if self.orders is None:
            return False
        for record in self.orders.open_at(venue):
            if decision.venue_order_id and record.venue_order_id == decision.venue_order_id:
                return True
            if decision.client_order_id and record.client_order_id == decision.client_order_id:
                return True
        return False

    async def _act(self, venue: Venue, decision: Any, by_id: dict[str, Any], dry_run: bool, term: int) -> str:
        if decision.action not in ("cancel", "adopt"):
            return decision.action if decision.action != "keep" else "kept"
        if dry_run:
            return f"would {decision.action}"
        if not self._still_primary(term):
            return "skipped: this node is no longer primary"
        if self.standby is not None and self._journal_knows(venue.name, decision):
            return "skipped: the journal has it now"
        if decision.action == "cancel":
            try:
                await self._private(venue, "cancel_order", decision.venue_order_id, decision.symbol,
                                    primary_only=True, primary_term=term)
            except VenueUnavailable as exc:
                return f"failed: {exc}"
            log.warning("venue.order_cancelled", venue=venue.name, venue_order_id=decision.venue_order_id,
                        symbol=decision.symbol, reason="orphan after promotion")
            return "cancelled"
        order = by_id.get(decision.venue_order_id or "")
        if order is None or self.standby is None:
            return "failed: the venue order is gone"
        record = adoption_record(venue.name, order, self._epoch())
        try:
            result = await self.standby._append({"payloads": [record.to_payload().decode("utf-8")]})
        except ControlError as exc:
            return f"failed: the journal refused the adoption record: {exc}"
        status = (result.get("results") or [{}])[0] if isinstance(result, dict) else {}
        if status.get("status", "ok") != "ok":
            return f"in doubt: the adoption record was not acknowledged ({status.get('reason') or status.get('status')})"
        return "adopted"

    async def _finish(self, venue: Venue, report: Any, trigger: str) -> None:
        directory = self.config.node.state_dir / "venues" / "reconcile"
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = directory / f"{stamp}-{venue.name}{'-dry-run' if report.dry_run else ''}.json"
        data = report.to_dict()
        data["trigger"] = trigger

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            create_new_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o640,
                            exists_message=f"{path} exists")

        try:
            await trio.to_thread.run_sync(write)
        except OSError as exc:
            report.errors.append(f"the report could not be written to {path}: {exc}")
        venue.reconciliations += 1
        venue.last_report = str(path)
        counts = report.counts()
        try:
            await self._audit_append("venue.reconcile.finished", venue=venue.name, policy=report.policy,
                                     dry_run=report.dry_run, trigger=trigger, counts=counts, errors=report.errors,
                                     report=str(path))
        except VenueUnavailable as exc:
            report.errors.append(str(exc))
        self.bus.publish(ReconciliationFinished(source=self.name, venue=venue.name, policy=report.policy,
                                                dry_run=report.dry_run, trigger=trigger, counts=counts,
                                                errors=list(report.errors), report=str(path)))

    async def cancel_all(self, venue_name: str, *, dry_run: bool = False, reason: str = "operator") -> str:
        """Cancel every open order at one venue (the playbook action ``venue.cancel_all``)."""
        venue = self.venues.get(venue_name)
        if venue is None:
            raise VenueUnavailable(f"no venue {venue_name!r}; venues: {', '.join(self.venues) or 'none'}")
        if not dry_run and not self.may_trade():
            raise VenueUnavailable(f"{venue_name}: not cancelling: this node is not primary (the primary owns the "
                                   "orders; run the playbook there)", "fenced")
        term = self._primary_term
        orders = await self._private(venue, "fetch_open_orders")
        if dry_run:
            return f"would cancel {len(orders)} open order(s) at {venue_name}"
        cancelled, failed = 0, []
        for order in orders:
            try:
                await self._private(venue, "cancel_order", str(order.get("id")), order.get("symbol"),
                                    primary_only=True, primary_term=term)
                cancelled += 1
                outcome = "cancelled"
            except VenueUnavailable as exc:
                failed.append(str(exc))
                outcome = f"failed: {exc}"
            try:
                await self._audit_append("venue.cancel", venue=venue_name, venue_order_id=str(order.get("id")),
                                         symbol=order.get("symbol"), reason=reason, outcome=outcome)
            except VenueUnavailable as exc:
                failed.append(str(exc))
        if failed:
            raise VenueUnavailable(f"{venue_name}: cancelled {cancelled}, {len(failed)} failed: {failed[0]}")
        return f"cancelled {cancelled} open order(s) at {venue_name}"

    # ------------------------------------------------------------------ the kill switch's side

    # daemon.guard.killswitch.VenueOrders: the kill sends through every usable path at once,
    # each path with its own client and no ccxt rate limiter (an emergency sends a handful
    # of requests; Kraken's ccxt cost of CancelAll is 3 s of pacing). These calls do not
    # take the private lock nor the key lock: a Kraken nonce a duplicate loses is covered
    # by the same request through the other path (README "Kill switch").

    def kill_venues(self) -> dict[str, str | None]:
        return {name: None if v.credentials is not None else
                "no credentials (a probe-only venue): nothing can be cancelled there"
                for name, v in self.venues.items()}

    def kill_paths(self, venue_name: str) -> list[str]:
        venue = self.venues[venue_name]
        paths = [p for p in venue.best_paths() if p.health.state is not VenueState.DOWN] or venue.best_paths()
        return [p.uplink for p in paths]

    def kill_features(self, venue_name: str) -> tuple[bool, bool]:
        """(has a cancel-all, has a batch cancel by ids), from ccxt's ``has``."""
        venue = self.venues[venue_name]
        client = next((c for c in [*venue.kill_clients.values(), *(p.client for p in venue.paths.values())]
                       if c is not None and hasattr(c, "supports")), None)
        if client is None:
            return False, False
        return bool(client.supports("cancelAllOrders")), bool(client.supports("cancelOrders"))

    def journal_open(self, venue_name: str) -> list[tuple[str, str, str | None]]:
        """(venue order id, symbol, client order id) of the journal's open orders at the venue."""
        if self.orders is None:
            return []
        return [(r.venue_order_id, r.symbol, r.client_order_id)
                for r in self.orders.open_at(venue_name) if r.venue_order_id]

    async def _kill_client(self, venue: Venue, uplink: str) -> Any:
        client = venue.kill_clients.get(uplink)
        if client is None:
            path = venue.paths[uplink]

            def build() -> Any:
                made = self.client_factory(venue.name, venue.config,
                                           uplink=None if uplink == DEFAULT_PATH else uplink, source=path.source,
                                           timeout=KILL_TIMEOUT, credentials=venue.credentials)
                exchange = getattr(made, "exchange", None)
                if exchange is not None:
                    exchange.enableRateLimit = False
                    exchange.nonce = venue.next_kill_nonce
                    exchange.load_markets()
                return made

            client = await trio.to_thread.run_sync(build, abandon_on_cancel=True)
            venue.kill_clients.setdefault(uplink, client)
            client = venue.kill_clients[uplink]
        return client

    async def _warm_kill_clients(self, venue: Venue) -> None:
        """Build each path's kill client (and load its markets) ahead: the kill's first
        request must not wait for the market list. A failure is retried at the kill."""
        for uplink in venue.paths:
            try:
                with trio.fail_after(PRIVATE_DEADLINE):
                    await self._kill_client(venue, uplink)
            except Exception as exc:  # noqa: BLE001 - warming is best effort
                log.info("venue.kill_client_not_ready", venue=venue.name, uplink=uplink, error=type(exc).__name__)

    async def _kill_call(self, venue_name: str, uplink: str, what: str, fn: Callable[[Any], Any]) -> Any:
        from daemon.venues.client import VenueCallError  # lazy: ccxt (the venues extra)

        venue = self.venues[venue_name]
        lock = venue.kill_locks.setdefault(uplink, trio.Lock())
        async with lock:
            try:
                client = await self._kill_client(venue, uplink)
                return await trio.to_thread.run_sync(lambda: fn(client), abandon_on_cancel=True)
            except VenueCallError as exc:
                raise VenueUnavailable(f"{exc.error_class}: {exc.detail}", exc.error_class) from None
            except trio.Cancelled:
                venue.kill_clients.pop(uplink, None)  # its thread may still be running: never reuse it
                if self._nursery is not None:
                    self._nursery.start_soon(self._warm_kill_clients, venue)  # ready for the next kill
                raise
            except Exception as exc:  # noqa: BLE001 - the client builder or ccxt misbehaved
                venue.kill_clients.pop(uplink, None)
                raise VenueUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None

    async def kill_fetch(self, venue_name: str, uplink: str) -> list[dict[str, Any]]:
        return list(await self._kill_call(venue_name, uplink, "fetch_open_orders", lambda c: c.fetch_open_orders()))

    async def kill_cancel_all(self, venue_name: str, uplink: str) -> int | None:
        """The venue's cancel-all through ``uplink``: how many it cancelled, if it says."""
        count = await self._kill_call(venue_name, uplink, "cancel_all_orders", lambda c: c.cancel_all_orders())
        return None if count is None else int(count)

    async def kill_cancel_ids(self, venue_name: str, uplink: str, ids: list[str], symbol: str | None,
                              batch: bool) -> tuple[int | None, list[str]]:
        """Cancel by venue order id (one batch, or the one id): (how many the venue cancelled,
        the ids it does not know)."""
        if batch:
            count, gone = await self._kill_call(venue_name, uplink, "cancel_orders",
                                                lambda c: c.cancel_orders(list(ids), symbol))
            return count, list(gone)
        order_id = ids[0]
        done = await self._kill_call(venue_name, uplink, "cancel_order",
                                     lambda c: c.cancel_order_or_gone(order_id, symbol))
        return (1, []) if done else (0, [order_id])

    # ------------------------------------------------------------------ control

    def register_control(self, control: ControlRegistry) -> None:
        async def status(params: dict[str, Any]) -> Any:
            return self.details()

        async def watch(params: dict[str, Any], reply: ReplyStream) -> None:
            send, receive = trio.open_memory_channel[dict[str, Any]](WATCH_BUFFER)
            self._watchers.append(send)
            await reply.start()
            await reply.send({"matrix": self.matrix()})
            async with receive:
                async for message in receive:
                    await reply.send(message)
            if send in self._cut:
                self._cut.discard(send)
                await reply.send({"cut": "this watcher fell behind; subscribe again"})

        async def reconcile(params: dict[str, Any]) -> Any:
            dry_run = params.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise ControlError("bad_request", '"dry_run" must be true or false')
            names = params.get("venue")
            if names is None:
                names = list(self.venues)
            elif isinstance(names, str):
                names = [names]
            else:
                raise ControlError("bad_request", '"venue" must be a venue name')
            reports = []
            for name in names:
                report = await self.reconcile(name, dry_run=dry_run, trigger="operator")
                data = report.to_dict()
                data["lines"] = report.lines()
                data["report"] = self.venues[name].last_report
                reports.append(data)
            return {"reports": reports}

        control.register("venues.status", status, help="Every venue through every uplink; `lifeline venues`.")
        control.register_stream("venues.watch", watch,
                                help="The venue x uplink matrix, then every health change (the engine's feed).")
        control.register("venues.reconcile", reconcile,
                         help='Compare open orders with the journal: {"venue": NAME, "dry_run": true}; '
                              "`lifeline reconcile`.")

    def matrix(self) -> list[dict[str, Any]]:
        return [p.snapshot() for v in self.venues.values() for p in v.paths.values()]

    def details(self) -> dict[str, Any]:
        venues = {}
        for v in self.venues.values():
            venues[v.name] = {
                "exchange": v.config.exchange, "state": v.state().value,
                "paths": [p.snapshot() for p in v.paths.values()],
                "deadman": {"enabled": v.config.deadman, "supported": v.deadman_supported,
                            "armed_at": v.deadman_armed_at, "timeout_s": float(v.config.deadman_timeout),
                            "error": v.deadman_error, "arms": v.deadman_arms, "failures": v.deadman_failures,
                            "arm_timeout_s": float(v.config.deadman_arm_timeout), "holding": v.deadman_holding,
                            "held": v.deadman_held},
                "reconcile": {"policy": v.config.reconcile, "runs": v.reconciliations, "last_report": v.last_report},
                "credentials": "configured" if v.config.credentials is not None else "none",
            }
        out: dict[str, Any] = {"venues": venues, "may_trade": self.may_trade()}
        if self.orders is not None:
            reasons = {name: self.index_incomplete(name) for name in self.venues}
            out["order_index"] = {"position": self.orders.position, "invalid": self.orders.invalid,
                                  "incomplete": "; ".join(f"{v}: {r}" for v, r in reasons.items() if r) or None,
                                  "incomplete_by_venue": reasons, "snapshots": dict(self.orders.snapshots),
                                  "error": self.index_error}
        return out

    def status(self) -> ServiceStatus:
        if not self._started:
            return ServiceStatus("ok", "starting")
        parts: list[str] = []
        health: Health = "ok"
        for v in self.venues.values():
            state = v.state()
            if state is not VenueState.UP:
                health = "degraded"
            paths = " ".join(f"{p.uplink}={p.health.state.value}" for p in v.paths.values())
            parts.append(f"{v.name} {state.value} ({paths})")
            # Only a switch that exists and fails to arm degrades; "unsupported" and "no
            # credentials" (a probe-only venue) are reported in the details, not alarms.
            if v.deadman_error and v.config.deadman and v.deadman_supported and self.may_trade():
                health = "degraded"
        return ServiceStatus(health, "; ".join(parts) or "no venues", self.details())

    def metrics(self) -> Iterable[MetricFamily]:
        states, latency, probes, failures = [], [], [], []
        for v in self.venues.values():
            for p in v.paths.values():
                labels = {"venue": v.name, "uplink": p.uplink}
                for s in VenueState:
                    states.append(Sample({**labels, "state": s.value}, 1.0 if p.health.state is s else 0.0))
                median = p.health.latency_median()
                if median is not None:
                    latency.append(Sample(labels, median))
                probes.append(Sample(labels, p.health.samples_total))
                for error_class, count in sorted(p.error_counts.items()):
                    failures.append(Sample({**labels, "error_class": error_class}, count))
        yield MetricFamily("lifeline_venue_state", "gauge",
                           "1 for the current state of each venue through each uplink.", states)
        yield MetricFamily("lifeline_venue_latency_seconds", "gauge",
                           "Median probe round latency over the window.", latency)
        yield MetricFamily("lifeline_venue_probes_total", "counter", "Probe rounds run.", probes)
        yield MetricFamily("lifeline_venue_probe_failures_total", "counter", "Failed probe rounds by error class.",
                           failures)
        yield MetricFamily("lifeline_venue_up", "gauge", "1 while the venue is UP through at least one uplink.",
                           [Sample({"venue": v.name}, 1.0 if v.state() is VenueState.UP else 0.0)
                            for v in self.venues.values()])
        yield MetricFamily("lifeline_venue_deadman_arms_total", "counter", "Dead-man switch re-arms.",
                           [Sample({"venue": v.name}, v.deadman_arms) for v in self.venues.values()])
        yield MetricFamily("lifeline_venue_deadman_failures_total", "counter", "Failed dead-man re-arms.",
                           [Sample({"venue": v.name}, v.deadman_failures) for v in self.venues.values()])
        yield MetricFamily("lifeline_venue_deadman_held_total", "counter",
                           "Re-arms the fencing rule held back while primary: the lease was valid for less than "
                           "deadman_arm_timeout (each waits for the next renewal).",
                           [Sample({"venue": v.name}, v.deadman_held) for v in self.venues.values()])
        yield MetricFamily("lifeline_venue_deadman_failing", "gauge",
                           "Dead-man re-arms failed in a row (0 once one succeeds).",
                           [Sample({"venue": v.name}, v.deadman_failing) for v in self.venues.values()])
        yield MetricFamily("lifeline_venue_reconciliations_total", "counter", "Reconciliations run.",
                           [Sample({"venue": v.name}, v.reconciliations) for v in self.venues.values()])
        yield from self.probe_latency.collect()


def _ns(seconds: float) -> int:
    """Seconds as integer ns, rounded up (a bound is never shortened)."""
    return math.ceil(float(seconds) * 1e9)


def _audit_by() -> dict[str, Any]:
    """``{"by": {uid, pid, user}}`` when a control caller asked for this act."""
    by = audit_by()
    return {} if by is None else {"by": by}
