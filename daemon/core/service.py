"""What a service is, for the supervisor, the control socket and the metrics endpoint.

A service is an object with a ``name``, an ``async def run(*, task_status)`` that calls
``task_status.started()`` once it is ready and then runs until cancelled, a
``status()`` that says in one line how it is doing, and optionally ``metrics()``.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Protocol, runtime_checkable

import trio

Health = Literal["ok", "degraded", "failing", "stopped"]


@dataclass(frozen=True)
class ServiceStatus:
    """How a service is doing: ``health`` for machines, ``summary`` for humans (one line),
    ``details`` for ``status --json``."""

    health: Health
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class MetricFamily:
    """One Prometheus metric family (text exposition format 0.0.4)."""

    name: str
    type: Literal["gauge", "counter", "info"]
    help: str
    samples: list[Sample]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.name):
            raise ValueError(f"invalid metric name {self.name!r}")

    @classmethod
    def single(cls, name: str, type: Literal["gauge", "counter"], help: str, value: float, **labels: str) -> "MetricFamily":
        return cls(name, type, help, [Sample(dict(labels), value)])


@runtime_checkable
class Service(Protocol):
    name: str

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...

    def status(self) -> ServiceStatus: ...


#: Histogram buckets (seconds) for the latencies lifeline measures, each spanning what is
#: normal on a healthy host up to what an alert should catch.
BUCKETS = {
    "fsync": (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    "ack": (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    "rtt": (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56),
    "venue": (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    "promotion": (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
}


def histogram(name: str, help: str, buckets: str, labels: tuple[str, ...] = ()) -> Any:
    """A prometheus_client ``Histogram`` registered nowhere: its owner observes into it
    and yields ``.collect()`` from its ``metrics()`` (the metrics endpoint's collector
    renders it)."""
    from prometheus_client import Histogram, disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream; no *_created series: one name per quantity
    return Histogram(name, help, labelnames=labels, buckets=BUCKETS[buckets], registry=None)


def service_metrics(service: object) -> Iterable[MetricFamily]:
    """A service's metrics, or none if it exports none."""
    metrics = getattr(service, "metrics", None)
    return metrics() if callable(metrics) else ()
