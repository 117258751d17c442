"""Host health's config section: ``[system]``."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.core.config import option
from daemon.core.durations import Duration


@dataclass(frozen=True)
class SystemConfig:
    interval: Duration = option(Duration(2.0), doc="How often host health is sampled.", above=0)
    cpu_threshold: float = option(
        0.90, doc="CPU busy fraction (all cores) above which the host is overloaded.", above=0, max=1
    )
    memory_threshold: float = option(
        0.90, doc="Fraction of memory in use (1 - available/total) above which the host is overloaded.",
        above=0, max=1,
    )
    disk_threshold: float = option(
        0.90, doc="Fraction of the state directory's filesystem in use above which the host is overloaded.",
        above=0, max=1,
    )
    temperature_threshold_c: float = option(
        85.0, doc="Hottest sensor (°C) above which the host is overloaded; ignored where the host has no sensors.",
        above=0, max=150,
    )
    sustain: Duration = option(
        Duration(10.0), doc="A threshold must be crossed for this long before the state changes.", min=0
    )
    recover_margin: float = option(
        0.05, doc="Hysteresis: a value must drop this far below its threshold to count as recovered.",
        min=0, max=0.5,
    )
