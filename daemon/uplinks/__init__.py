"""Uplinks: probe every uplink through itself, judge its health, choose the active one,
and move the default route — terrestrial to Starlink and back, without flapping.

    probe.py    probes bound to an uplink's source address (UDP echo, ICMP, TCP, HTTP, DNS)
    health.py   sans-IO: probe rounds in, UP / DEGRADED / DOWN out
    policy.py   sans-IO: uplink health in, the active uplink (and why) out
    routes.py   route backends: netlink (pyroute2) or none; policy-routing tables
    conntrack.py  selective conntrack flush of one uplink's flows
    service.py  the trio service tying them together; events, status, metrics, control
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    """One probe to one target through one uplink.

    ``sent_at`` is ``trio.current_time()`` when the probe left; ``rtt`` is in seconds and
    set only when ``ok``. ``error`` is a short reason when not ok: ``"timeout"``,
    ``"unreachable"``, ``"no source address"``, ``"http 503"``, ``"dns SERVFAIL"``, ...
    """

    uplink: str
    target: str
    seq: int
    sent_at: float
    ok: bool
    rtt: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class UplinkRoute:
    """What the route backend needs to know of an uplink."""

    name: str
    interface: str
    source: str
    gateway: str
    table: int
    metric: int | None = None
