"""The Starlink dish hint: interpretation (sans-IO) and the poller against a fake dish.

No real dish API can run here (it is a gRPC service on the dish itself, with descriptors
fetched by reflection), so the poller is tested with an injected ``fetch``."""

from __future__ import annotations

import threading
from typing import Any

import trio

from daemon.uplinks.starlink import StarlinkDishMonitor, interpret_status

GOOD = {"state": "CONNECTED", "pop_ping_drop_rate": 0.0, "pop_ping_latency_ms": 31.2,
        "currently_obstructed": False, "fraction_obstructed": 0.001}


def test_interpretation() -> None:
    assert interpret_status(GOOD) is None
    assert interpret_status({**GOOD, "state": "NO_SATS"}) == "dish NO_SATS"
    assert interpret_status({**GOOD, "state": "THERMAL_SHUTDOWN"}) == "dish THERMAL_SHUTDOWN"
    assert interpret_status({**GOOD, "currently_obstructed": True, "fraction_obstructed": 0.12}) == \
        "dish obstructed (12% of the sky)"
    assert interpret_status({**GOOD, "pop_ping_drop_rate": 0.8}) == "dish PoP ping drop rate 80%"
    assert interpret_status(GOOD, {"alert_thermal_throttle": True}) == "dish thermal_throttle"


def test_zero_or_missing_fields_are_not_trouble() -> None:
    # The late-2024 firmware that made pop_ping_latency_ms read 0.
    assert interpret_status({**GOOD, "pop_ping_latency_ms": 0}) is None
    assert interpret_status({"state": "CONNECTED"}) is None
    assert interpret_status({}) is None
    assert interpret_status({"state": None, "pop_ping_drop_rate": None, "currently_obstructed": None}) is None
    assert interpret_status({"state": "UNKNOWN"}) is None, "unknown is no information, not trouble"
    assert interpret_status({"pop_ping_drop_rate": True}) is None, "a bool is not a rate"


async def test_poller_hints_and_clears_on_errors(monkeypatch: Any) -> None:
    # Real time, short poll: the dish call runs in a worker thread, which a MockClock's
    # autojump cannot see (it would jump past the call's deadline).
    import daemon.uplinks.starlink as starlink

    monkeypatch.setattr(starlink, "POLL_INTERVAL", 0.05)
    readings: list[Any] = [
        (GOOD, {}, {}),
        ({**GOOD, "state": "OBSTRUCTED"}, {}, {}),
        ({**GOOD, "state": "OBSTRUCTED"}, {}, {}),
        RuntimeError("grpc UNAVAILABLE"),
        (GOOD, {}, {}),
    ]
    hints: list[tuple[float, str, str | None]] = []

    def fetch() -> Any:
        item = readings.pop(0) if readings else (GOOD, {}, {})
        if isinstance(item, Exception):
            raise item
        return item

    monitor = StarlinkDishMonitor("starlink", "192.168.100.1:9200",
                                  lambda up, hint: hints.append((trio.current_time(), up, hint)), fetch=fetch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    assert [h[2] for h in hints] == ["dish OBSTRUCTED", None]
    assert hints[1][0] - hints[0][0] >= 0.1, "cleared by the gRPC error (no information), not before"
    assert monitor.errors == 1


async def test_a_hung_dish_call_times_out_and_clears() -> None:
    # Real time: the dish is called in a worker thread, which virtual time cannot wait for.
    calls = 0
    release = threading.Event()

    def fetch() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return ({**GOOD, "state": "NO_SATS"}, {}, {})
        release.wait(10)  # a hung gRPC call (released when the test ends)
        return (GOOD, {}, {})

    hints: list[str | None] = []
    monitor = StarlinkDishMonitor("starlink", "x:1", lambda up, hint: hints.append(hint), fetch=fetch)
    import daemon.uplinks.starlink as starlink

    old = starlink.CALL_TIMEOUT
    starlink.CALL_TIMEOUT = 0.2
    try:
        with trio.move_on_after(1.6):
            await monitor.run()
    finally:
        starlink.CALL_TIMEOUT = old
        release.set()
    assert hints == ["dish NO_SATS", None]


async def test_missing_package_disables_with_a_warning(caplog: Any) -> None:
    monitor = StarlinkDishMonitor("starlink", "x:1", lambda up, hint: None)
    monitor.fetch = None
    with trio.fail_after(1):
        await monitor.run()  # returns at once
    assert any(getattr(r, "event", "") == "starlink.disabled" for r in caplog.records)
