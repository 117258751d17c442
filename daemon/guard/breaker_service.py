"""The circuit breakers' trio shell: feeds :class:`daemon.guard.breakers.Breakers`, ticks it,
publishes ``BreakerTripped`` / ``BreakerRecovered`` and carries out the responses.

Inputs (all injected by daemon/app.py; any may be absent and its breaker then stays at 0):

* the journal (``standby.journal``, either role): its ``mark`` records (market_volatility)
  and the order records that end an order (execution_failure_rate), tailed like the
  venues' order index; a record is timed by its ``timestamp_ns`` (the primary's wall
  clock at append). At start only the records within the longest window are read.
* ``paths()``: the venues' venue x uplink matrix (venue_unavailability), read every tick.
* ``load()``: the host load of daemon/system.py's last sample (system_load), every tick.

Responses go through :class:`GuardActions` (:class:`BlocksActions`: guard records through
the :class:`BlocksWriter`, kills through the :class:`KillSwitch`); every one says
``by = "breaker:NAME"``. On a standby the writer raises ``Unavailable``: the breaker still
trips and publishes (both nodes fold the same journal), the response is offered again
every tick and carried out if this node becomes primary while it holds.
"""

from __future__ import annotations

import math
import time
from typing import Any, Awaitable, Callable, Iterable, Protocol

import trio

from daemon.core.audit import AuditFactory
from daemon.core.bus import EventBus
from daemon.core.errors import Unavailable
from daemon.core.events import BreakerRecovered, BreakerTripped
from daemon.core.journal import JournalHolder, JournalReader
from daemon.core.log import get_logger
from daemon.core.service import Health, MetricFamily, Sample, ServiceStatus
from daemon.guard.blocks import BlocksWriter, GuardRecord, Scope, TradingBlocks
from daemon.guard.breakers import BREAKERS, Action, Breakers, Transition
from daemon.guard.breakers_config import BreakersConfig

log = get_logger("breakers")

__all__ = ["BlocksActions", "BlocksWriter", "BreakerService", "GuardActions", "KillSwitch"]


class KillSwitch(Protocol):
    """The kill helper's seam: refuse new orders on the scope and cancel what is open there."""

    async def kill(self, scope: Scope, reason: str, by: str) -> Any: ...


class GuardActions(Protocol):
    """What a breaker may do: the built-in responses risk.pause, risk.throttle, kill."""

    async def pause(self, scope: Scope, reason: str, by: str, until: float | None) -> None: ...

    async def throttle(self, rate: float, burst: float, reason: str, by: str, until: float | None) -> None: ...

    async def kill(self, scope: Scope, reason: str, by: str) -> None: ...


class BlocksActions:
    """:class:`GuardActions` on a :class:`BlocksWriter` and an optional :class:`KillSwitch`
    (without one, a kill response writes the kill record: new orders are refused, nothing
    is cancelled at the venues, and the log says so)."""

    def __init__(self, writer: BlocksWriter, killswitch: KillSwitch | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.killswitch = killswitch
        self.clock = clock

    async def pause(self, scope: Scope, reason: str, by: str, until: float | None) -> None:
        await self.writer.write(GuardRecord("pause", scope, reason, by, self.clock(), until=until))

    async def throttle(self, rate: float, burst: float, reason: str, by: str, until: float | None) -> None:
        await self.writer.write(GuardRecord("throttle", Scope(), reason, by, self.clock(), until=until,
                                            rate=rate, burst=burst))

    async def kill(self, scope: Scope, reason: str, by: str) -> None:
        if self.killswitch is not None:
            await self.killswitch.kill(scope, reason, by)
            return
        log.warning("breaker.kill_without_killswitch", scope=scope.describe(), by=by,
                    detail="no kill switch injected: new orders are refused, open orders are not cancelled")
        await self.writer.write(GuardRecord("kill", scope, reason, by, self.clock()))


Paths = Callable[[], Iterable[tuple[str, str, str]]]


class BreakerService:
    """One service: ``run`` tails the journal and ticks the breakers every ``config.tick``."""

    name = "breakers"

    def __init__(self, config: BreakersConfig, bus: EventBus, *, actions: GuardActions | None = None,
                 journal_holder: JournalHolder | None = None, paths: Paths | None = None,
                 load: Callable[[], float | None] | None = None, clock: Callable[[], float] = time.time,
                 audit_factory: AuditFactory | None = None, node: str = "") -> None:
        self.config = config
        self.bus = bus
        self.actions = actions
        self.journal_holder = journal_holder
        self.paths = paths
        self.load = load
        self.clock = clock
        self.audit_factory = audit_factory
        self.node = node
        self.breakers = Breakers(config.specs(), renew_margin=float(config.renew_margin))
        self.position = 0
        self.responses_done = 0
        self.response_failures = 0
        self.last_response_error: str | None = None
        self._failing: set[tuple[str, str]] = set()
        self.started = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.journal_holder is not None:
                nursery.start_soon(self._journal_loop)
            self.started = True
            specs = self.breakers.specs
            log.info("breakers.started", **{n: f"{specs[n].threshold:g}/{specs[n].window:g}s/{specs[n].recovery:g}s/"
                                                f"{specs[n].response}" for n in BREAKERS})
            task_status.started()
            await self._tick_loop(nursery)

    # ------------------------------------------------------------------ inputs

    async def _journal_loop(self) -> None:
        holder = self.journal_holder
        assert holder is not None  # started only with one
        while (journal := holder.journal) is None:
            await trio.sleep(0.05)
        self.position = self._first_in_window(journal) - 1
        while True:
            last = journal.last.seq
            if last < self.position:  # the tail was cut (a divergent tail after a promotion)
                self.position = last
            start = max(self.position + 1, journal.first_seq)
            if start <= last:
                try:
                    records = journal.read(start, 1000)
                except Exception as exc:  # noqa: BLE001 - retention or a cut under us: read on from the tip
                    log.warning("breakers.journal_error", error=f"{type(exc).__name__}: {exc}")
                    self.position = journal.last.seq
                    await trio.sleep(0.2)
                    continue
                for record in records:
                    self.breakers.observe_payload(record.payload, record.timestamp_ns / 1e9)
                    self.position = record.seq
                await trio.lowlevel.checkpoint()
                continue
            with trio.move_on_after(0.5):
                try:
                    await journal.wait_beyond(last)
                except Exception:  # noqa: BLE001 - the journal closed: the daemon is stopping
                    return

    def _first_in_window(self, journal: JournalReader) -> int:
        """The first seq appended within the longest window (a binary search on the records'
        ``timestamp_ns``, which the primary's wall clock makes non-decreasing but for a
        clock step): at start, older records cannot count, and a long journal is not
        folded from its beginning for nothing."""
        longest = max(spec.window for spec in self.breakers.specs.values())
        cutoff_ns = int((self.clock() - longest) * 1e9)
        lo, hi = journal.first_seq, journal.last.seq + 1
        try:
            while lo < hi:
                mid = (lo + hi) // 2
                (record,) = journal.read(mid, 1)
                if record.timestamp_ns < cutoff_ns:
                    lo = mid + 1
                else:
                    hi = mid
        except Exception as exc:  # noqa: BLE001 - retention under us: fold from the start instead
            log.info("breakers.window_search_failed", error=f"{type(exc).__name__}: {exc}")
            return int(journal.first_seq)
        return lo

    def _poll(self, now: float) -> None:
        if self.paths is not None:
            try:
                self.breakers.observe_paths(list(self.paths()), now)
            except Exception as exc:  # noqa: BLE001 - a bad feed must not stop the other breakers
                log.warning("breakers.paths_error", error=f"{type(exc).__name__}: {exc}")
        if self.load is not None:
            figure = self.load()
            if figure is not None:
                self.breakers.observe_load(figure, now)

    # ------------------------------------------------------------------ judging, acting

    async def _tick_loop(self, nursery: trio.Nursery) -> None:
        interval = float(self.config.tick)
        while True:
            await self.tick(nursery)
            await trio.sleep(interval)

    async def tick(self, nursery: trio.Nursery | None = None) -> list[Transition]:
        now = self.clock()
        self._poll(now)
        transitions = self.breakers.tick(now)
        for t in transitions:
            self._publish(t)
        if self.actions is not None:
            for action in self.breakers.actions(now):
                await self._act(action, nursery)
        return transitions

    def _publish(self, t: Transition) -> None:
        spec = self.breakers.specs[t.breaker]
        if t.change == "tripped":
            self.bus.publish(BreakerTripped(source=self.name, breaker=t.breaker, subject=t.subject, figure=t.figure,
                                            threshold=t.threshold, window_s=spec.window, recovery_s=spec.recovery,
                                            response=spec.response, reason=t.reason))
        else:
            self.bus.publish(BreakerRecovered(source=self.name, breaker=t.breaker, subject=t.subject,
                                              figure=t.figure, tripped_for_s=t.held_s, reason=t.reason))

    async def _act(self, action: Action, nursery: trio.Nursery | None) -> None:
        assert self.actions is not None
        key = (action.breaker, action.kind)
        if action.kind == "kill":
            # The kill switch cancels at the venues (seconds): it runs beside the ticks, once.
            self.breakers.done(action)
            if nursery is not None:
                nursery.start_soon(self._kill, action)
            else:
                await self._kill(action)
            return
        try:
            if action.kind == "pause":
                await self.actions.pause(action.scope, action.reason, action.by, action.until)
            else:
                assert action.rate is not None and action.burst is not None
                await self.actions.throttle(action.rate, action.burst, action.reason, action.by, action.until)
        except Exception as exc:  # noqa: BLE001 - offered again next tick; never stops the breakers
            self._failed(key, action, exc)
            return
        self.breakers.done(action)
        self.responses_done += 1
        self._failing.discard(key)
        log.warning(f"breaker.{action.kind}", breaker=action.breaker, scope=action.scope.describe(),
                    until=action.until, by=action.by)
        await self._audit(action)

    async def _kill(self, action: Action) -> None:
        assert self.actions is not None
        try:
            await self.actions.kill(action.scope, action.reason, action.by)
        except Exception as exc:  # noqa: BLE001 - reported; a person decides
            self._failed((action.breaker, "kill"), action, exc)
            return
        self.responses_done += 1
        log.warning("breaker.kill", breaker=action.breaker, scope=action.scope.describe(), by=action.by)
        await self._audit(action)

    async def _audit(self, action: Action) -> None:
        """The response in the host's audit log, by ``breaker:NAME`` (the guard record names
        it too); a failing audit log is reported, the response stands."""
        factory = self.audit_factory
        if factory is None:
            return
        fields = {"node": self.node, "by": action.by, "breaker": action.breaker, **action.scope.to_dict(),
                  "scope": action.scope.describe(), "reason": action.reason, "until": action.until}
        if action.kind == "throttle":
            fields.update(rate=action.rate, burst=action.burst)

        def append() -> None:
            audit = factory()
            try:
                audit.append(f"guard.breaker.{action.kind}", **fields)
            finally:
                audit.close()

        try:
            await trio.to_thread.run_sync(append)
        except Exception as exc:  # noqa: BLE001 - the response stands; the failure is reported
            log.error("breaker.audit_failed", breaker=action.breaker, error=f"{type(exc).__name__}: {exc}")

    def _failed(self, key: tuple[str, str], action: Action, exc: Exception) -> None:
        self.response_failures += 1
        self.last_response_error = f"{action.kind} by {action.by}: {type(exc).__name__}: {exc}"
        if key not in self._failing:  # one line per breaker and response until it works
            self._failing.add(key)
            (log.info if isinstance(exc, Unavailable) else log.error)(
                "breaker.response_failed", breaker=action.breaker, response=action.kind,
                scope=action.scope.describe(), error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ reporting

    def details(self) -> dict[str, Any]:
        return {"breakers": self.breakers.snapshot(), "journal_position": self.position,
                "responses": self.responses_done, "response_failures": self.response_failures,
                "last_response_error": self.last_response_error,
                "recent": [{"breaker": t.breaker, "change": t.change, "subject": t.subject, "at": t.at,
                            "reason": t.reason} for t in self.breakers.transitions[-5:]]}

    def status(self) -> ServiceStatus:
        if not self.started:
            return ServiceStatus("ok", "starting")
        snap = self.breakers.snapshot()
        parts = []
        health: Health = "ok"
        for name in BREAKERS:
            entry = snap[name]
            if entry["state"] != "closed":
                health = "degraded"
                subjects = ",".join(entry.get("symbols", {}))
                parts.append(f"{name} {entry['state'].upper()}{f' ({subjects})' if subjects else ''} "
                             f"{entry['figure']:.3g}/{entry['threshold']:g}")
        if not parts:
            parts.append("all closed (" + ", ".join(f"{n} {snap[n]['figure']:.3g}/{snap[n]['threshold']:g}"
                                                    for n in BREAKERS) + ")")
        return ServiceStatus(health, "; ".join(parts), self.details())

    def metrics(self) -> list[MetricFamily]:
        snap = self.breakers.snapshot()
        states = ("closed", "tripped", "recovering")

        def family(metric: str, kind: Any, help: str, value: Callable[[dict[str, Any]], float]) -> MetricFamily:
            return MetricFamily(metric, kind, help, [Sample({"breaker": n}, value(snap[n])) for n in BREAKERS])

        return [
            MetricFamily("lifeline_breaker_state", "gauge", "1 for the breaker's state (closed, tripped, recovering).",
                         [Sample({"breaker": n, "state": s}, 1.0 if snap[n]["state"] == s else 0.0)
                          for n in BREAKERS for s in states]),
            family("lifeline_breaker_tripped", "gauge", "1 while the breaker is tripped or recovering.",
                   lambda e: 0.0 if e["state"] == "closed" else 1.0),
            family("lifeline_breaker_figure", "gauge", "The breaker's figure over its window.",
                   lambda e: float(e["figure"]) if math.isfinite(e["figure"]) else 0.0),
            family("lifeline_breaker_threshold", "gauge", "The figure above which the breaker trips.",
                   lambda e: float(e["threshold"])),
            family("lifeline_breaker_trips_total", "counter", "Times the breaker tripped.",
                   lambda e: float(e["trips"])),
            MetricFamily.single("lifeline_breaker_responses_total", "counter",
                                "Responses carried out (pause, throttle, kill records written).",
                                float(self.responses_done)),
            MetricFamily.single("lifeline_breaker_response_failures_total", "counter",
                                "Responses that could not be carried out (e.g. not primary).",
                                float(self.response_failures)),
        ]
