"""The supervisor under a MockClock: start order, readiness, crash propagation, stop."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import pytest
import trio
import trio.testing

from daemon.core.bus import EventBus
from daemon.core.events import DaemonReady, ServiceFailed, ServiceStarted
from daemon.core.service import ServiceStatus
from daemon.notify import Notifier
from daemon.supervisor import ServiceCrashed, Supervisor


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.messages: list[tuple[float, tuple[str, ...]]] = []

    def send(self, *assignments: str) -> bool:
        self.messages.append((trio.current_time(), assignments))
        return True

    def keys(self) -> list[str]:
        return [a.split("=", 1)[0] for _, msg in self.messages for a in msg if not a.startswith("STATUS=")]


class FakeService:
    """Starts after ``start_delay``, optionally fails at ``fail_at`` (virtual time)."""

    def __init__(self, name: str, log: list[tuple[str, str, float]], *, start_delay: float = 0.0,
                 fail_at: float | None = None, fail_before_start: bool = False,
                 return_at: float | None = None, never_start: bool = False) -> None:
        self.name = name
        self.log = log
        self.start_delay = start_delay
        self.fail_at = fail_at
        self.fail_before_start = fail_before_start
        self.return_at = return_at
        self.never_start = never_start
        self.cleaned_up = False
        self.health: str = "ok"

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.log.append((self.name, "begin", trio.current_time()))
        try:
            if self.never_start:
                await trio.sleep_forever()
            await trio.sleep(self.start_delay)
            if self.fail_before_start:
                raise RuntimeError(f"{self.name} could not open its device")
            task_status.started()
            self.log.append((self.name, "started", trio.current_time()))
            if self.fail_at is not None:
                await trio.sleep_until(self.fail_at)
                raise RuntimeError(f"{self.name} broke")
            if self.return_at is not None:
                await trio.sleep_until(self.return_at)
                return
            await trio.sleep_forever()
        finally:
            self.cleaned_up = True

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.health, f"{self.name} fine")  # type: ignore[arg-type]


def make(services: list[Any], **kwargs: Any) -> tuple[Supervisor, EventBus, RecordingNotifier]:
    bus = EventBus(64)
    notifier = RecordingNotifier()
    sup = Supervisor(node="test-node", services=services, bus=bus, notifier=notifier,
                     handle_signals=kwargs.pop("handle_signals", False), **kwargs)
    return sup, bus, notifier


async def test_services_start_in_order_and_ready_follows_the_last(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, str, float]] = []
    a = FakeService("a", log, start_delay=1.0)
    b = FakeService("b", log, start_delay=2.0)
    c = FakeService("c", log, start_delay=0.5)
    sup, bus, notifier = make([a, b, c])
    sub = bus.subscribe("test")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert trio.current_time() == pytest.approx(3.5)
        assert sup.ready.is_set()
        sup.stop("test over")
    # b only began once a had started; c once b had.
    assert log[:6] == [("a", "begin", 0.0), ("a", "started", 1.0), ("b", "begin", 1.0),
                       ("b", "started", 3.0), ("c", "begin", 3.0), ("c", "started", 3.5)]
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except trio.WouldBlock:
            break
    assert [type(e) for e in events[:4]] == [ServiceStarted, ServiceStarted, ServiceStarted, DaemonReady]
    assert [e.service for e in events[:3]] == ["a", "b", "c"]  # type: ignore[attr-defined]
    ready_at = [t for t, msg in notifier.messages if "READY=1" in msg]
    assert ready_at == [pytest.approx(3.5)]
    assert notifier.keys().index("READY") < notifier.keys().index("STOPPING")
    assert all(s.cleaned_up for s in (a, b, c))
    assert {e["lifecycle"] for e in sup.status()["services"]} == {"stopped"}


async def test_crash_after_start_stops_everything_and_names_the_service(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[tuple[str, str, float]] = []
    healthy = FakeService("healthy", log)
    broken = FakeService("broken", log, fail_at=5.0)
    sup, bus, notifier = make([healthy, broken])
    sub = bus.subscribe("test", kinds={"ServiceFailed"})
    caplog.set_level(logging.INFO, logger="lifeline")
    with pytest.raises(ServiceCrashed) as info:
        await sup.run()
    assert info.value.service == "broken"
    assert "RuntimeError: broken broke" in info.value.reason
    assert trio.current_time() == pytest.approx(5.0)
    assert healthy.cleaned_up, "the other service was cancelled and cleaned up"
    failed = sub.receive_nowait()
    assert isinstance(failed, ServiceFailed) and failed.service == "broken"
    crash_records = [r for r in caplog.records if getattr(r, "event", "") == "service.crashed"]
    assert crash_records and crash_records[0].exc_info is not None, "logged with its traceback"
    assert any("STOPPING=1" in msg for _, msg in notifier.messages)
    status = {s["name"]: s for s in sup.status()["services"]}
    assert status["broken"]["lifecycle"] == "failed"
    assert status["broken"]["health"] == "failing"


async def test_crash_before_started_is_reported_and_later_services_never_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, str, float]] = []
    first = FakeService("first", log)
    bad = FakeService("bad", log, start_delay=1.0, fail_before_start=True)
    never = FakeService("never", log)
    sup, _, notifier = make([first, bad, never])
    with pytest.raises(ServiceCrashed) as info:
        await sup.run()
    assert info.value.service == "bad"
    assert "could not open its device" in info.value.reason
    assert not any(name == "never" for name, _, _ in log)
    assert not any("READY=1" in msg for _, msg in notifier.messages)


async def test_a_service_that_returns_is_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, str, float]] = []
    quitter = FakeService("quitter", log, return_at=7.0)
    sup, _, _ = make([quitter])
    with pytest.raises(ServiceCrashed, match="returned while the daemon was running"):
        await sup.run()
    assert trio.current_time() == pytest.approx(7.0)


async def test_start_timeout(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, str, float]] = []
    stuck = FakeService("stuck", log, never_start=True)
    sup, _, _ = make([stuck], start_timeout=12.0)
    with pytest.raises(ServiceCrashed, match="did not report started within 12s"):
        await sup.run()
    assert trio.current_time() == pytest.approx(12.0)
    assert stuck.cleaned_up


async def test_stop_cancels_services_and_returns_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, str, float]] = []
    services = [FakeService(n, log) for n in ("x", "y")]
    sup, _, notifier = make(services)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(30)
        sup.stop("operator asked")
    assert sup.stop_reason == "operator asked"
    assert all(s.cleaned_up for s in services)
    stopping = [msg for _, msg in notifier.messages if "STOPPING=1" in msg]
    assert stopping and "STATUS=stopping: operator asked" in stopping[0]


async def test_sigterm_stops_the_daemon() -> None:
    log: list[tuple[str, str, float]] = []
    service = FakeService("s", log)
    sup, _, _ = make([service], handle_signals=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            os.kill(os.getpid(), signal.SIGTERM)
    assert sup.stop_reason == "signal SIGTERM"
    assert service.cleaned_up


async def test_status_reports_health_and_survives_a_broken_status(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, str, float]] = []
    good = FakeService("good", log)
    sick = FakeService("sick", log)
    sick.health = "degraded"
    broken = FakeService("broken", log)

    def explode() -> ServiceStatus:
        raise KeyError("oops")

    broken.status = explode  # type: ignore[method-assign]
    sup, _, _ = make([good, sick, broken])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        status = sup.status()
        by_name = {s["name"]: s for s in status["services"]}
        assert by_name["good"]["health"] == "ok"
        assert by_name["sick"]["health"] == "degraded"
        assert by_name["broken"]["health"] == "degraded"
        assert "status unavailable: KeyError" in by_name["broken"]["summary"]
        assert status["ready"] is True
        assert status["summary"] == "test-node: 3/3 services running; sick degraded, broken degraded"
        families = {f.name: f for f in sup.metrics()}
        up = {s.labels["service"]: s.value for s in families["lifeline_service_up"].samples}
        assert up == {"good": 1, "sick": 1, "broken": 1}
        healthy = {s.labels["service"]: s.value for s in families["lifeline_service_healthy"].samples}
        assert healthy == {"good": 1, "sick": 0, "broken": 0}
        nursery.cancel_scope.cancel()


def test_duplicate_service_names_are_refused() -> None:
    log: list[tuple[str, str, float]] = []
    with pytest.raises(ValueError, match="duplicate service names"):
        make([FakeService("a", log), FakeService("a", log)])
