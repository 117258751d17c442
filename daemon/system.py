"""Host health and its circuit breaker (the brief's "system_load" breaker at 0.90).

This module owns three things, in three layers:

* :class:`HostHealthMachine`, the sans-IO core. It takes a :class:`HostSample` and the
  time ``now`` and decides when the host becomes OVERLOADED (the breaker opens) and when
  it is back to NORMAL (the breaker closes), each decision with a one-line reason. It
  uses neither trio nor psutil, so it is tested with plain floats.
* :func:`read_host_sample`, the only code that touches psutil (imported there, lazily).
* :class:`SystemHealthService`, the thin trio shell: it samples every ``interval``,
  steps the machine with ``trio.current_time()``, publishes ``SystemOverloaded`` /
  ``SystemRecovered`` on the bus, and reports status and metrics.

The rules (see :class:`HostHealthMachine`): a resource is *over* when its value is above
its threshold; the host is OVERLOADED once one resource has been continuously over for
``sustain`` seconds; it is NORMAL again once *every* resource has been continuously at
or below its recover level (threshold - margin) for ``sustain`` seconds. Between the two
levels a value neither arms nor recovers, so a host hovering at the threshold cannot
flap. Each resource is judged by :class:`daemon.core.breaker.BreakerMachine` (``sustain`` as
both its arming and its recovery time), the machine the trading guard's four breakers use
(:mod:`daemon.guard.breakers`; its ``system_load`` breaker takes this service's samples).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import trio

from daemon.core.bus import EventBus
from daemon.core.events import SystemOverloaded, SystemRecovered
from daemon.core.log import get_logger
from daemon.core.service import Health, MetricFamily, ServiceStatus
from daemon.core.breaker import BreakerMachine
from daemon.system_config import SystemConfig

log = get_logger("system")

# ======================================================================= sans-IO core
# Nothing in this section may use trio or psutil: it is a pure function of samples and
# times (tests/unit/host/test_system.py checks the source).


@dataclass(frozen=True)
class HostSample:
    """One reading of the host. Fractions are 0..1."""

    cpu_fraction: float
    """Busy fraction over all cores since the previous reading."""
    load1: float
    load5: float
    load15: float
    cpu_count: int
    memory_used_fraction: float
    """``1 - available / total``: what the kernel could not hand out without swapping."""
    memory_available_bytes: int
    disk_used_fraction: float
    """Of the filesystem holding the state directory (journal, audit log)."""
    disk_free_bytes: int
    temperature_c: float | None = None
    """The hottest sensor, or None where the host exposes no sensors."""


class HostState(Enum):
    NORMAL = "normal"
    OVERLOADED = "overloaded"


@dataclass(frozen=True)
class Decision:
    """A change of host state, decided by :meth:`HostHealthMachine.step`."""

    state: HostState
    """The state entered."""
    at: float
    """The ``now`` of the sample that decided it."""
    reason: str
    """One line for the log and status: ``"overloaded: cpu 0.97 > 0.90 for 10s"``."""
    reasons: tuple[str, ...]
    """One entry per resource that tripped (for ``SystemOverloaded.reasons``); for a
    recovery, the single line of ``reason``."""
    overloaded_for_s: float = 0.0
    """For a recovery: how long the host was OVERLOADED."""


# Names of the judged resources, in the order reasons and status list them.
RESOURCES = ("cpu", "memory", "disk", "temperature")

# Sample times are floats: a sustain of 1s sampled every 100 ms must trip on the 11th
# sample, even though ten adds of 0.1 make 0.9999999999999999.
_TIME_EPSILON = 1e-9


@dataclass(frozen=True)
class _Reading:
    resource: str
    value: float
    threshold: float
    recover_level: float

    def show(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        if self.resource == "temperature":
            return f"{v:.1f}°C"
        return f"{v:.2f}"

    def over_text(self) -> str:
        return f"{self.resource} {self.show()} > {self.show(self.threshold)}"


@dataclass
class _Track:
    """Per resource: its breaker (:class:`daemon.core.breaker.BreakerMachine`, the same
    machine as the trading guard's four; threshold, recover level and ``sustain`` from
    [system]), which tracks when its current run above the threshold, or at/below the
    recover level, began (None when it is not in such a run)."""

    machine: BreakerMachine = field(default_factory=lambda: BreakerMachine(math.inf, 0.0))
    last: _Reading | None = None

    @property
    def over_since(self) -> float | None:
        return self.machine.over_since

    @property
    def clear_since(self) -> float | None:
        return self.machine.clear_since


def format_seconds(seconds: float) -> str:
    """``10.0`` → ``"10s"``, ``2.5`` → ``"2.5s"``; for reasons and status lines."""
    rounded = round(seconds, 1)
    if rounded == int(rounded):
        return f"{int(rounded)}s"
    return f"{rounded:.1f}s"


class HostHealthMachine:
    """The host-health circuit breaker, as a pure state machine.

    Feed it every sample with :meth:`step`; it returns the transitions (at most one).

    * cpu, memory and disk are fractions: over when ``value > threshold``, recovered when
      ``value <= threshold - recover_margin``.
    * Temperature is in °C, so an absolute margin of 0.05 would mean nothing. Its
      recover level is ``threshold * (1 - recover_margin)`` (85 °C with a margin of 0.05
      → 80.75 °C): one config knob keeps governing hysteresis everywhere, and a margin of
      0 still means "no hysteresis" for every resource. A sample without a temperature
      (``None``) leaves temperature out of both decisions and breaks any run it had: an
      unknown reading is neither evidence of heat nor of cooling. So when a sensor that
      was not clear goes silent, every recovery run restarts at that sample: a host
      overloaded by heat does not "recover" the moment its sensor disappears.
    * Load averages are reported but not judged: they count tasks in uninterruptible
      sleep too and mean different things on different core counts; ``cpu_fraction``
      already judges the CPU.

    "Continuously" means every sample seen: one sample back under the threshold ends a
    run, so a spike shorter than ``sustain`` never trips. A sample the shell failed to
    read is simply not seen, and neither breaks nor extends a run.
    """

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self.state = HostState.NORMAL
        #: ``now`` of the last transition (None until the first one).
        self.since: float | None = None
        #: ``now`` of the last sample stepped.
        self.last_now: float | None = None
        self.last_sample: HostSample | None = None
        self._tracks = {name: _Track() for name in RESOURCES}

    @property
    def overloaded(self) -> bool:
        return self.state is HostState.OVERLOADED

    def recover_level(self, resource: str) -> float:
        """The value a resource must be at or below to count towards recovery."""
        margin = self.config.recover_margin
        if resource == "temperature":
            return self.config.temperature_threshold_c * (1.0 - margin)
        # A threshold smaller than the margin would otherwise ask for a negative value.
        return max(self.threshold(resource) - margin, 0.0)

    def threshold(self, resource: str) -> float:
        return {
            "cpu": self.config.cpu_threshold,
            "memory": self.config.memory_threshold,
            "disk": self.config.disk_threshold,
            "temperature": self.config.temperature_threshold_c,
        }[resource]

    def _readings(self, sample: HostSample) -> list[_Reading]:
        values: dict[str, float | None] = {
            "cpu": sample.cpu_fraction,
            "memory": sample.memory_used_fraction,
            "disk": sample.disk_used_fraction,
            "temperature": sample.temperature_c,
        }
        return [
            _Reading(name, float(value), self.threshold(name), self.recover_level(name))
            for name, value in values.items()
            if value is not None
        ]

    def step(self, sample: HostSample, now: float) -> list[Decision]:
        """Account for ``sample`` taken at ``now``; return the transition it causes, if any."""
        if self.last_now is not None and now < self.last_now:
            raise ValueError(f"time went backwards: {now} after {self.last_now}")
        self.last_now = now
        self.last_sample = sample
        readings = self._readings(sample)
        seen = {r.resource for r in readings}
        restart_clear_runs = False
        for name, track in self._tracks.items():
            if name not in seen:
                # A resource that was over (or in its band) and is now unreadable: the
                # others may have been clear for long, but the host as a whole has been
                # known to be clear only from now on.
                restart_clear_runs |= track.last is not None and track.clear_since is None
                self._tracks[name] = _Track()
        sustain = float(self.config.sustain)
        for reading in readings:
            track = self._tracks[reading.resource]
            track.last = reading
            machine = track.machine
            machine.threshold, machine.recover_level = reading.threshold, reading.recover_level
            machine.sustain = machine.recovery = sustain
            # NaN fails both comparisons and lands in the band: it neither arms nor recovers.
            # The host's state is decided below from every resource's runs (its own
            # trips and recoveries are per resource).
            machine.step(reading.value, now)
        if restart_clear_runs:
            for track in self._tracks.values():
                track.machine.restart_clear(now)

        sustain -= _TIME_EPSILON
        if self.state is HostState.NORMAL:
            tripped = [
                r for r in readings
                if (since := self._tracks[r.resource].over_since) is not None and now - since >= sustain
            ]
            if not tripped:
                return []
            reasons = tuple(
                f"{r.over_text()} for {format_seconds(now - self._over_since(r))}" for r in tripped
            )
            self.state, self.since = HostState.OVERLOADED, now
            return [Decision(HostState.OVERLOADED, now, "overloaded: " + "; ".join(reasons), reasons)]

        clear = all(
            (since := self._tracks[r.resource].clear_since) is not None and now - since >= sustain
            for r in readings
        )
        if not readings or not clear:
            return []
        assert self.since is not None
        overloaded_for = now - self.since
        clear_for = min(now - self._clear_since(r) for r in readings)
        reason = (
            f"recovered: all resources at or below threshold - margin for "
            f"{format_seconds(clear_for)} (overloaded {format_seconds(overloaded_for)})"
        )
        self.state, self.since = HostState.NORMAL, now
        return [Decision(HostState.NORMAL, now, reason, (reason,), overloaded_for_s=overloaded_for)]

    def _over_since(self, reading: _Reading) -> float:
        since = self._tracks[reading.resource].over_since
        assert since is not None
        return since

    def _clear_since(self, reading: _Reading) -> float:
        since = self._tracks[reading.resource].clear_since
        assert since is not None
        return since

    def over_now(self) -> list[str]:
        """The resources over their threshold at the last sample, with how long:
        ``["cpu 0.97 > 0.90 for 12s"]``."""
        out = []
        for name in RESOURCES:
            track = self._tracks[name]
            if track.over_since is not None and track.last is not None and self.last_now is not None:
                out.append(f"{track.last.over_text()} for {format_seconds(self.last_now - track.over_since)}")
        return out

    def blocking_recovery(self) -> list[str]:
        """While OVERLOADED and nothing is over: what keeps the breaker open
        (``"cpu 0.87 above 0.85"``, ``"memory clear for 4s of 10s"``)."""
        out = []
        for name in RESOURCES:
            track = self._tracks[name]
            reading = track.last
            if reading is None or self.last_now is None:
                continue
            if track.clear_since is None:
                out.append(f"{name} {reading.show()} above {reading.show(reading.recover_level)}")
            elif self.last_now - track.clear_since < self.config.sustain - _TIME_EPSILON:
                out.append(
                    f"{name} clear for {format_seconds(self.last_now - track.clear_since)}"
                    f" of {format_seconds(self.config.sustain)}"
                )
        return out

    def describe(self) -> str:
        """One line on the host as of the last sample, for status."""
        sample = self.last_sample
        if sample is None:
            return "no sample yet"
        if self.state is HostState.OVERLOADED:
            over = self.over_now()
            if over:
                return "OVERLOADED: " + "; ".join(over)
            return "OVERLOADED, recovering: " + "; ".join(self.blocking_recovery() or ["all clear"])
        return describe_sample(sample)


def describe_sample(sample: HostSample) -> str:
    """``"cpu 12% load 0.31 mem 41% disk 23% temp 48°C"``."""
    text = (
        f"cpu {sample.cpu_fraction:.0%} load {sample.load1:.2f} "
        f"mem {sample.memory_used_fraction:.0%} disk {sample.disk_used_fraction:.0%}"
    )
    if sample.temperature_c is not None:
        text += f" temp {sample.temperature_c:.0f}°C"
    return text


# ======================================================================= psutil sampler


def existing_parent(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor: the state
    directory may not be created yet, but the filesystem it will live on is known."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def hottest_temperature() -> float | None:
    """The hottest plausible sensor reading in °C, or None where there is none.

    ``sensors_temperatures`` is missing on some platforms and returns ``{}`` in most
    containers and VMs. Readings at or below 0 °C or not finite are dropped: broken
    sensors report 0, -273 or NaN, and a phantom reading must not open the breaker nor
    hide a real one.
    """
    import psutil

    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, ValueError):
        # An optional input: one unreadable sysfs file must not fail the whole sample.
        return None
    currents = [
        float(entry.current)
        for entries in (sensors or {}).values()
        for entry in entries
        if entry.current is not None and math.isfinite(entry.current) and entry.current > 0
    ]
    return max(currents) if currents else None


def read_host_sample(state_dir: Path) -> HostSample:
    """Read the host now (blocking: it reads /proc and /sys; call it from a thread).

    ``cpu_percent(interval=None)`` measures since its previous call in this process, so
    the very first call returns a meaningless 0.0: :class:`SystemHealthService` makes
    that call once at start, before any sample it judges.
    """
    import psutil

    cpu = psutil.cpu_percent(interval=None) / 100.0
    load1, load5, load15 = psutil.getloadavg()
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(existing_parent(state_dir)))
    # df's "Use%": used / (used + free available to unprivileged users), so the blocks
    # reserved for root count as neither; the daemon does not run as root.
    disk_total_usable = disk.used + disk.free
    return HostSample(
        cpu_fraction=min(max(cpu, 0.0), 1.0),
        load1=float(load1),
        load5=float(load5),
        load15=float(load15),
        cpu_count=psutil.cpu_count(logical=True) or 1,
        memory_used_fraction=1.0 - memory.available / memory.total,
        memory_available_bytes=int(memory.available),
        disk_used_fraction=disk.used / disk_total_usable if disk_total_usable else 0.0,
        disk_free_bytes=int(disk.free),
        temperature_c=hottest_temperature(),
    )


# ======================================================================= trio shell

Sampler = Callable[[Path], HostSample]

# While a sampler keeps failing, warn on the first failure and then on every Nth, so a
# broken /proc costs one log line a couple of minutes rather than one every interval.
FAILURE_LOG_EVERY = 60


class SystemHealthService:
    """Samples the host every ``config.interval`` and runs the breaker.

    ``use_thread``: the real sampler reads /proc and /sys, which blocks, so it runs
    through ``trio.to_thread.run_sync``. A thread hop is real wall-clock I/O that
    ``MockClock``'s autojump cannot see: while the thread runs every task looks blocked,
    so the clock jumps to the next deadline (a test's ``fail_after``, another service's
    timer) and the sample lands at the wrong virtual time. Tests inject a fake sampler
    that touches nothing and pass ``use_thread=False`` to call it inline.
    """

    name = "system"

    def __init__(
        self,
        config: SystemConfig,
        state_dir: Path,
        bus: EventBus,
        sampler: Sampler = read_host_sample,
        *,
        use_thread: bool = True,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.bus = bus
        self.sampler = sampler
        self.use_thread = use_thread
        self.machine = HostHealthMachine(config)
        self.sample_failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.samples_taken = 0
        #: Wall-clock time (UNIX seconds) the current state began; for humans.
        self.since_wall: float | None = None
        self.last_decision: Decision | None = None

    async def _sample(self) -> HostSample | None:
        """One reading, or None (logged and counted) when the sampler raised."""
        try:
            if self.use_thread:
                sample = await trio.to_thread.run_sync(self.sampler, self.state_dir)
            else:
                sample = self.sampler(self.state_dir)
        except Exception as exc:  # one failed read must never take the daemon down
            self.sample_failures += 1
            self.consecutive_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.consecutive_failures % FAILURE_LOG_EVERY == 1:
                log.warning(
                    "sample.failed",
                    error=self.last_error,
                    in_a_row=self.consecutive_failures,
                    total=self.sample_failures,
                )
            return None
        if self.consecutive_failures:
            log.info("sample.resumed", after_failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self.samples_taken += 1
        return sample

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The first reading primes psutil's CPU counter (its cpu fraction is meaningless)
        # and shows the sampler works; it is not judged. A failure here is logged and
        # counted like any other: host health is advisory, not a reason to refuse to start.
        await self._sample()
        self.since_wall = time.time()
        log.info(
            "system.started",
            interval_s=float(self.config.interval),
            sustain_s=float(self.config.sustain),
            state_dir=str(self.state_dir),
        )
        task_status.started()

        interval = float(self.config.interval)
        next_at = trio.current_time() + interval
        while True:
            # Sleep to absolute ticks so that a slow read does not push every later
            # sample back; ticks missed entirely are skipped, not bunched up.
            await trio.sleep_until(next_at)
            sample = await self._sample()
            now = trio.current_time()
            while next_at <= now:
                next_at += interval
            if sample is None:
                continue
            for decision in self.machine.step(sample, now):
                self._apply(decision)

    def _apply(self, decision: Decision) -> None:
        self.last_decision = decision
        self.since_wall = time.time()
        if decision.state is HostState.OVERLOADED:
            self.bus.publish(SystemOverloaded(source=self.name, reasons=list(decision.reasons)))
        else:
            self.bus.publish(SystemRecovered(source=self.name, overloaded_for_s=decision.overloaded_for_s))

    # ------------------------------------------------------------------ status, metrics

    def status(self) -> ServiceStatus:
        machine = self.machine
        sample = machine.last_sample
        details: dict[str, Any] = {
            "state": machine.state.value,
            "overloaded": machine.overloaded,
            "since": self.since_wall,
            "sample": asdict(sample) if sample is not None else None,
            "samples": self.samples_taken,
            "sample_failures": self.sample_failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_transition": self.last_decision.reason if self.last_decision else None,
            "thresholds": {
                name: {"over": machine.threshold(name), "recover_at_or_below": machine.recover_level(name)}
                for name in RESOURCES
            },
        }
        if sample is None:
            summary = "waiting for the first sample"
        else:
            summary = machine.describe()
        if self.consecutive_failures:
            summary += f" (sampling failing: {self.consecutive_failures} in a row, {self.last_error})"
        health: Health = "degraded" if machine.overloaded or self.consecutive_failures else "ok"
        return ServiceStatus(health, summary, details)

    def metrics(self) -> list[MetricFamily]:
        families: list[MetricFamily] = []
        sample = self.machine.last_sample
        if sample is not None:
            families += [
                MetricFamily.single(
                    "lifeline_host_cpu_fraction", "gauge",
                    "CPU busy fraction over all cores at the last sample.", sample.cpu_fraction,
                ),
                MetricFamily.single(
                    "lifeline_host_load1", "gauge", "One-minute load average.", sample.load1
                ),
                MetricFamily.single(
                    "lifeline_host_memory_used_fraction", "gauge",
                    "Memory in use, 1 - available/total.", sample.memory_used_fraction,
                ),
                MetricFamily.single(
                    "lifeline_host_disk_used_fraction", "gauge",
                    "Fraction of the state directory's filesystem in use.", sample.disk_used_fraction,
                ),
            ]
            if sample.temperature_c is not None:
                families.append(
                    MetricFamily.single(
                        "lifeline_host_temperature_celsius", "gauge",
                        "Hottest temperature sensor.", sample.temperature_c,
                    )
                )
        families += [
            MetricFamily.single(
                "lifeline_host_overloaded", "gauge",
                "1 while the host-health circuit breaker is open.", 1.0 if self.machine.overloaded else 0.0,
            ),
            MetricFamily.single(
                "lifeline_host_sample_failures_total", "counter",
                "Host samples that could not be read.", float(self.sample_failures),
            ),
        ]
        return families
