"""The event bus: fan-out, immutable events, kinds filters, and a slow subscriber that
loses its oldest events rather than holding up the publisher. No I/O, so every async
test runs under the autojump MockClock."""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio
import trio.testing

from daemon.core.bus import EventBus
from daemon.core.events import (
    DaemonReady,
    DaemonStopping,
    Event,
    ServiceFailed,
    ServiceStarted,
    SystemOverloaded,
    SystemRecovered,
)
from tests.support.events import drain


def started(service: str = "control", took_ms: float = 1.5) -> ServiceStarted:
    return ServiceStarted(source="supervisor", service=service, took_ms=took_ms)


# --- events themselves ------------------------------------------------------------------


def test_events_are_frozen() -> None:
    event = started()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.service = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.source = "someone else"  # type: ignore[misc]


def test_event_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ServiceStarted("supervisor", "control", 1.0)  # type: ignore[misc]


def test_kind_is_the_class_name() -> None:
    assert started().kind == "ServiceStarted"
    assert DaemonStopping(reason="SIGTERM").kind == "DaemonStopping"
    assert SystemRecovered(overloaded_for_s=3.0).kind == "SystemRecovered"


def test_to_dict_has_kind_and_every_field() -> None:
    event = started("metrics", 2.25)
    data = event.to_dict()
    assert data["kind"] == "ServiceStarted"
    assert data["source"] == "supervisor"
    assert data["service"] == "metrics"
    assert data["took_ms"] == 2.25
    assert isinstance(data["wall_time"], float)
    assert data["sequence"] == event.sequence
    assert set(data) == {"kind", "source", "wall_time", "sequence", "service", "took_ms"}
    json.dumps(data)  # what the control socket writes must be JSON


def test_to_dict_is_json_even_for_odd_values_and_does_not_leak_mutable_state() -> None:
    event = SystemOverloaded(reasons=["cpu 97% > 90%", "disk 95% > 90%"])
    data = event.to_dict()
    assert data["reasons"] == ["cpu 97% > 90%", "disk 95% > 90%"]
    data["reasons"].append("tampered")
    assert event.reasons == ["cpu 97% > 90%", "disk 95% > 90%"]
    assert event.to_dict()["reasons"] == ["cpu 97% > 90%", "disk 95% > 90%"]

    from pathlib import Path

    odd = DaemonReady(services=[Path("/run/x"), "control"])  # type: ignore[list-item]
    assert json.loads(json.dumps(odd.to_dict()))["services"] == ["/run/x", "control"]


def test_sequence_increases_and_severity_is_per_class() -> None:
    a, b = started(), started()
    assert b.sequence > a.sequence
    assert Event.severity == "info"
    assert ServiceFailed.severity == "error"
    assert SystemOverloaded.severity == "warning"
    assert "severity" not in ServiceFailed(service="x", error="boom").to_dict()


# --- the bus ------------------------------------------------------------------------------


async def test_publish_fans_out_to_every_subscriber_in_order(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        bus = EventBus(subscriber_buffer=16)
        subs = [bus.subscribe(f"s{i}") for i in range(3)]
        events = [started(f"svc{i}") for i in range(5)]
        for event in events:
            bus.publish(event)
        for sub in subs:
            got = [await sub.receive() for _ in events]
            assert got == events
            assert got[0] is events[0]  # the same immutable object, not a copy
            assert sub.delivered == 5
            assert sub.dropped == 0
        assert bus.published == 5
        assert bus.by_kind == {"ServiceStarted": 5}


async def test_subscriber_sees_only_events_published_after_subscribing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        bus = EventBus()
        bus.publish(started("before"))
        sub = bus.subscribe("late")
        after = started("after")
        bus.publish(after)
        assert drain(sub) == [after]


async def test_subscribers_receive_concurrently_while_publishing(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        bus = EventBus(subscriber_buffer=4)
        received: dict[str, list[str]] = {"a": [], "b": []}

        async def reader(name: str, sub) -> None:  # type: ignore[no-untyped-def]
            with sub:
                async for event in sub:
                    received[name].append(event.service)
                    if len(received[name]) == 10:
                        return

        async with trio.open_nursery() as nursery:
            for name in received:
                nursery.start_soon(reader, name, bus.subscribe(name))
            await trio.testing.wait_all_tasks_blocked()
            for i in range(10):
                bus.publish(started(f"svc{i}"))
                await trio.sleep(0.1)
        assert received["a"] == received["b"] == [f"svc{i}" for i in range(10)]
        assert bus.dropped_total == 0


async def test_kinds_filter(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        bus = EventBus()
        only_failures = bus.subscribe("failures", kinds={"ServiceFailed", "DaemonStopping"})
        everything = bus.subscribe("all")
        bus.publish(started())
        failed = ServiceFailed(service="control", error="boom")
        bus.publish(failed)
        bus.publish(SystemRecovered(overloaded_for_s=1.0))
        stopping = DaemonStopping(reason="SIGTERM")
        bus.publish(stopping)
        assert drain(only_failures) == [failed, stopping]
        assert [e.kind for e in drain(everything)] == [
            "ServiceStarted", "ServiceFailed", "SystemRecovered", "DaemonStopping"]
        # Filtered-out events are not drops.
        assert only_failures.dropped == 0
        assert bus.by_kind["ServiceStarted"] == 1


async def test_slow_subscriber_loses_oldest_events_and_never_blocks_the_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        bus = EventBus(subscriber_buffer=64)
        slow = bus.subscribe("slow", buffer=3)
        fast = bus.subscribe("fast")
        events = [started(f"svc{i}") for i in range(10)]
        start = trio.current_time()
        for event in events:
            # publish is synchronous: nothing here can wait for the slow reader.
            assert bus.publish(event) is None
        assert trio.current_time() == start

        # The newest three, in order; the seven oldest were dropped and counted.
        assert [await slow.receive() for _ in range(3)] == events[-3:]
        with pytest.raises(trio.WouldBlock):
            slow.receive_nowait()
        assert slow.dropped == 7
        assert fast.dropped == 0
        assert drain(fast) == events
        assert bus.dropped_total == 7

        stats = bus.stats()
        assert stats["published"] == 10
        assert stats["dropped"] == 7
        by_name = {s["name"]: s for s in stats["subscribers"]}
        assert by_name["slow"] == {"name": "slow", "buffered": 0, "delivered": 3, "dropped": 7}
        assert by_name["fast"]["dropped"] == 0
        assert by_name["fast"]["delivered"] == 10

        # The subscription keeps working after drops.
        later = started("later")
        bus.publish(later)
        assert bus.stats()["subscribers"][0]["buffered"] == 1
        assert await slow.receive() == later


async def test_dropped_total_outlives_the_subscription(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        bus = EventBus()
        with bus.subscribe("gone", buffer=1):
            for i in range(4):
                bus.publish(started(f"svc{i}"))
        assert bus.stats() == {"published": 4, "subscribers": [], "dropped": 3}


def test_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventBus(subscriber_buffer=0)


async def test_unsubscribe_with_context_manager_stops_delivery(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        bus = EventBus()
        stays = bus.subscribe("stays")
        first = started("first")
        with bus.subscribe("leaves") as leaves:
            bus.publish(first)
            assert [s["name"] for s in bus.stats()["subscribers"]] == ["stays", "leaves"]
        assert [s["name"] for s in bus.stats()["subscribers"]] == ["stays"]
        bus.publish(started("second"))
        # What was buffered before closing is still readable; then the iteration ends.
        assert [e async for e in leaves] == [first]
        assert len(drain(stays)) == 2
        leaves.close()  # closing twice is harmless


async def test_close_ends_a_blocked_iteration(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        bus = EventBus()
        sub = bus.subscribe("follower")
        seen: list[Event] = []
        finished = trio.Event()

        async def follow() -> None:
            async for event in sub:
                seen.append(event)
            finished.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            one = started()
            bus.publish(one)
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
            await finished.wait()
        assert seen == [one]


def test_recent_is_a_bounded_ring_buffer() -> None:
    bus = EventBus(recent=3)
    assert list(bus.recent) == []
    events = [started(f"svc{i}") for i in range(5)]
    for event in events:
        bus.publish(event)
    assert list(bus.recent) == events[-3:]
    # recent does not need a subscriber, and is unaffected by subscribers' drops.
    assert bus.published == 5


def test_publish_logs_the_event(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    with caplog.at_level("INFO", logger="lifeline"):
        bus.publish(ServiceFailed(source="supervisor", service="metrics", error="port in use"))
        bus.publish(started("control"))
    records = [r for r in caplog.records if r.name == "lifeline.events"]
    assert [(r.levelname, r.event) for r in records] == [  # type: ignore[attr-defined]
        ("WARNING", "event.ServiceFailed"), ("INFO", "event.ServiceStarted")]
    assert records[0].fields == {"source": "supervisor", "service": "metrics", "error": "port in use"}  # type: ignore[attr-defined]
