"""Shared by the hardware tests: a monitor's events seen as ``(kind, fields)`` pairs, and a
driver polled by the hardware service's own device loop (:func:`hardware.service.device_loop`,
the one loop with backoff every device runs in the daemon)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import trio

from daemon.core.events import Event
from hardware.service import Device, device_loop

_STAMPS = ("source", "wall_time", "sequence")


def pairs(events: Iterable[Event]) -> list[tuple[str, dict[str, Any]]]:
    """Each event as its kind and its own fields (without source and time stamps)."""
    out = []
    for event in events:
        assert isinstance(event, Event), event
        out.append((event.kind, {f.name: getattr(event, f.name) for f in dataclasses.fields(event)
                                 if f.name not in _STAMPS}))
    return out


class Pairs:
    """A monitor whose ``reading``/``tick`` answer :func:`pairs`; anything else is the monitor's."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def reading(self, r: Any, now: float) -> list[tuple[str, dict[str, Any]]]:
        return pairs(self.monitor.reading(r, now))

    def tick(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        return pairs(self.monitor.tick(now))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.monitor, name)


class Feed:
    """The device loop's monitor in the driver tests: each reading goes to ``on_reading``
    (the test's harness hands it to the real monitor and records what it says)."""

    def __init__(self, on_reading: Callable[[Any], Any]) -> None:
        self.on_reading = on_reading

    def reading(self, r: Any, now: float) -> list[Event]:
        self.on_reading(r)
        return []

    def tick(self, now: float) -> list[Event]:
        return []


async def run_device(driver: Any, on_reading: Callable[[Any], Any], *, interval: float,
                     backoff_initial: float | None = None, backoff_max: float = 30.0,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Poll ``driver`` in the daemon's device loop until cancelled, then close it as the
    hardware service does."""
    device = Device("test", getattr(driver, "name", "test"), driver.poll, Feed(on_reading), interval,
                    note=driver.note, backoff_initial=backoff_initial, backoff_max=backoff_max)
    task_status.started()
    try:
        await device_loop(device, lambda device, events: None)
    finally:
        with trio.CancelScope(shield=True):
            closing = getattr(driver, "aclose", None) or driver.close
            result = closing()
            if hasattr(result, "__await__"):
                await result
