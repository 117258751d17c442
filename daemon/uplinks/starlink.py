"""Starlink dish telemetry as an early hint for the Starlink uplink's health.

The dish answers gRPC on 192.168.100.1:9200; ``starlink-grpc-core``'s
``starlink_grpc.status_data(context)`` returns ``(status, obstruction, alerts)`` dicts
(sparky8512/starlink-grpc-tools). The dish often knows of trouble (obstruction, no
satellites, a thermal shutdown) a moment before probes see loss, so a bad reading marks
the link DEGRADED early. It is a hint, never the verdict:

* only the probes can make a link DOWN;
* a gRPC error or timeout is *no information* and clears the hint (an unreachable dish
  API says nothing about the satellite path: the dish may be rebooting its API only);
* a field reading 0 or missing is ignored: a late-2024 firmware made
  ``pop_ping_latency_ms`` read 0 (starlink-grpc-tools issue #100).

Installed with ``pip install lifeline[starlink]``; without it the hint is disabled with
one warning.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from daemon.core.log import get_logger

log = get_logger("starlink")

#: States in which the dish itself says it is not carrying traffic normally.
BAD_STATES = frozenset({"BOOTING", "SEARCHING", "STOWED", "THERMAL_SHUTDOWN", "NO_SATS", "OBSTRUCTED",
                        "NO_DOWNLINK", "NO_PINGS"})
#: A PoP ping drop rate at or above this is a hint (1.0 = every ping dropped).
DROP_RATE_HINT = 0.5
POLL_INTERVAL = 1.0
CALL_TIMEOUT = 2.0


def interpret_status(status: dict[str, Any], alerts: dict[str, Any] | None = None) -> str | None:
    """A one-line hint from a ``status_data()`` reading, or None when nothing is wrong
    (or nothing is known). Sans-IO."""
    state = status.get("state")
    if isinstance(state, str) and state in BAD_STATES:
        return f"dish {state}"
    if status.get("currently_obstructed") is True:
        fraction = status.get("fraction_obstructed")
        extra = f" ({fraction:.0%} of the sky)" if isinstance(fraction, (int, float)) and fraction > 0 else ""
        return f"dish obstructed{extra}"
    drop = status.get("pop_ping_drop_rate")
    if isinstance(drop, (int, float)) and not isinstance(drop, bool) and drop >= DROP_RATE_HINT:
        return f"dish PoP ping drop rate {drop:.0%}"
    for name in ("alert_thermal_throttle", "alert_thermal_shutdown", "alert_unexpected_location"):
        if alerts and alerts.get(name) is True:
            return f"dish {name.removeprefix('alert_')}"
    return None


def _load_fetch(address: str) -> Callable[[], Any] | None:
    try:
        import starlink_grpc  # type: ignore[import-not-found]
    except ImportError:
        return None
    context = starlink_grpc.ChannelContext(target=address)
    return lambda: starlink_grpc.status_data(context)


class StarlinkDishMonitor:
    """Polls the dish and hands hints to ``set_hint`` (the uplink service's)."""

    def __init__(self, uplink: str, address: str, set_hint: Callable[[str, str | None], None],
                 fetch: Callable[[], Any] | None = None) -> None:
        self.uplink = uplink
        self.address = address
        self.set_hint = set_hint
        self.fetch = fetch if fetch is not None else _load_fetch(address)
        self.hint: str | None = None
        self.errors = 0
        self.readings = 0

    async def run(self) -> None:
        if self.fetch is None:
            log.warning("starlink.disabled", uplink=self.uplink,
                        reason="starlink-grpc-core is not installed", fix="pip install lifeline[starlink]")
            return
        fetch = self.fetch
        while True:
            hint: str | None
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    reading = await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)
                status, _obstruction, alerts = reading
                hint = interpret_status(status if isinstance(status, dict) else {},
                                        alerts if isinstance(alerts, dict) else {})
                self.readings += 1
            except Exception as exc:  # gRPC error, timeout, odd reply: no information
                self.errors += 1
                if self.errors == 1 or self.errors % 60 == 0:
                    log.info("starlink.unreachable", uplink=self.uplink, address=self.address,
                             error=f"{type(exc).__name__}: {exc}", errors=self.errors)
                hint = None
            if hint != self.hint:
                self.hint = hint
                self.set_hint(self.uplink, hint)
            await trio.sleep(POLL_INTERVAL)
