"""The uplinks' config sections: ``[uplinks.NAME]`` and ``[failover]``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from daemon.core.config import option, parse_host_port
from daemon.core.durations import Duration
from daemon.uplinks.targets import parse_target

#: Health defaults by kind of uplink: a fibre goes DOWN fast; a Starlink link rides out
#: its normal 1-2 s drops at satellite hand-offs (15 lost rounds of 200 ms = 3 s).
UPLINK_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "terrestrial": {"interval": 0.2, "timeout": 0.25, "down_after": 3, "up_after": 10,
                    "degraded_rtt": 0.1},
    "starlink": {"interval": 0.2, "timeout": 0.6, "down_after": 15, "up_after": 10,
                 "degraded_rtt": 0.25},
    "cellular": {"interval": 0.5, "timeout": 1.0, "down_after": 8, "up_after": 10,
                 "degraded_rtt": 0.4},
    "other": {"interval": 0.2, "timeout": 0.5, "down_after": 5, "up_after": 10,
              "degraded_rtt": 0.2},
}


@dataclass(frozen=True)
class UplinkConfig:
    interface: str = option(doc="Network interface of this uplink (e.g. \"eth1\").")
    source: str = option(doc="This uplink's own IP address on that interface; probes leave from it.")
    gateway: str = option(doc="Next hop for the default route through this uplink.")
    targets: list[str] = option(
        doc='Probe targets, judged together: "udp://IP:PORT" (echo), "icmp://IP", '
        '"tcp://IP:PORT", "http://IP[:PORT]/PATH", "https://IP[:PORT]/PATH".'
    )
    kind: Literal["terrestrial", "starlink", "cellular", "other"] = option(
        "terrestrial", doc="Sets the health defaults below (a fibre goes DOWN fast; Starlink rides out hand-offs)."
    )
    priority: int = option(10, doc="Preference, lower wins (like a route metric).", min=0, max=10000)
    interval: Duration | None = option(None, doc="Time between probe rounds (kind default).", above=0)
    timeout: Duration | None = option(None, doc="A probe unanswered after this is lost (kind default).", above=0)
    down_after: int | None = option(None, doc="Consecutive lost rounds before DOWN (kind default).", min=1, max=1000)
    up_after: int | None = option(None, doc="Consecutive good rounds before a DOWN uplink is UP again (kind default).",
                                  min=1, max=10000)
    min_targets: int = option(1, doc="Targets that must answer for a round to count as good.", min=1)
    window: int = option(50, doc="Rounds in the sliding window for loss ratio, RTT and jitter.", min=5, max=10000)
    degraded_loss: float = option(0.2, doc="Loss ratio over the window at or above which the uplink is DEGRADED.",
                                  above=0, max=1)
    recovered_loss: float = option(0.05, doc="Loss ratio at or below which a DEGRADED uplink is UP again.",
                                   min=0, max=1)
    degraded_rtt: Duration | None = option(None, doc="Median RTT above which the uplink is DEGRADED (kind default).",
                                           above=0)
    dns_server: str | None = option(None, doc="Resolver queried through this uplink; DNS failing makes it DEGRADED.")
    dns_name: str = option("example.com", doc="Name the DNS probe asks for (any answer, even NXDOMAIN, is a working resolver).")
    dns_interval: Duration = option(Duration(5.0), doc="Time between DNS probes.", above=0)
    dns_failures: int = option(3, doc="Consecutive failed DNS probes before the uplink is DEGRADED.", min=1)
    table: int | None = option(None, doc="Policy-routing table for this uplink's probes (default 1000 + position).",
                               min=1, max=0xFFFFFFF0)
    starlink_dish: str | None = option(None, doc='Starlink dish gRPC address ("192.168.100.1:9200") for early '
                                       "hints; needs `pip install lifeline[starlink]`.")

    def __post_init__(self) -> None:
        # Fill the kind's defaults in, so `config show` prints what is really in force.
        defaults = UPLINK_KIND_DEFAULTS.get(self.kind, UPLINK_KIND_DEFAULTS["other"])
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, Duration(value) if isinstance(value, float) else value)

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        family = None
        for key in ("source", "gateway"):
            try:
                family = ipaddress.ip_address(getattr(self, key)).version
            except ValueError:
                problems.append((key, f"expected an IP address, found {getattr(self, key)!r}"))
        if not self.targets:
            problems.append(("targets", "expected at least one probe target"))
        for i, text in enumerate(self.targets):
            try:
                target = parse_target(text)
            except ValueError as exc:
                problems.append((f"targets[{i}]", str(exc)))
                continue
            if family is not None and target.family != family:
                problems.append((f"targets[{i}]", f"IPv{target.family} target but the source is IPv{family}"))
        if self.min_targets > len(self.targets):
            problems.append(("min_targets", f"expected at most {len(self.targets)} (the number of targets), "
                                            f"found {self.min_targets}"))
        if self.recovered_loss >= self.degraded_loss:
            problems.append(("recovered_loss", f"must be below degraded_loss ({self.degraded_loss:g}) for "
                                               f"hysteresis, found {self.recovered_loss:g}"))
        assert self.timeout is not None and self.interval is not None
        if self.dns_server is not None:
            try:
                ipaddress.ip_address(self.dns_server)
            except ValueError:
                problems.append(("dns_server", f"expected the resolver's IP address, found {self.dns_server!r}"))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,15}", self.interface):
            problems.append(("interface", f"expected an interface name (1-15 characters), found {self.interface!r}"))
        if self.starlink_dish is not None:
            try:
                parse_host_port(self.starlink_dish)
            except ValueError as exc:
                problems.append(("starlink_dish", str(exc)))
        return problems


@dataclass(frozen=True)
class FailoverConfig:
    route_backend: Literal["netlink", "none"] = option(
        "netlink", doc='"netlink" moves the default route (needs CAP_NET_ADMIN); "none" decides and reports only.'
    )
    hold_down: Duration = option(
        Duration(30.0), doc="A preferred uplink must be UP this long before traffic fails back to it.", min=0
    )
    min_dwell: Duration = option(
        Duration(10.0), doc="An uplink stays active at least this long before a (non-emergency) failback.", min=0
    )
    route_metric: int | None = option(None, doc="Metric of the default route lifeline installs (none: kernel default).",
                                      min=0, max=0xFFFFFFFF)
    route_check_interval: Duration = option(
        Duration(5.0), doc="How often the installed default route is re-checked and repaired if changed.", above=0
    )
    flush_conntrack: bool = option(
        True, doc="After a failover, delete the dead uplink's conntrack entries (only those) so NATed flows re-establish."
    )
    failback_flows: Literal["move", "keep"] = option(
        "move", doc='After a failback, "move" flushes the backup uplink\'s flows too; "keep" leaves them to finish.'
    )
    rule_priority: int = option(
        1000, doc="First `ip rule` priority used for the per-uplink policy-routing rules.", min=1, max=32000
    )


class UplinksSettings(Protocol):
    """What the uplink service reads of the root config (:class:`daemon.config.Config` is one)."""

    @property
    def uplinks(self) -> Mapping[str, UplinkConfig]: ...

    @property
    def failover(self) -> FailoverConfig: ...

    @property
    def source(self) -> Path: ...


def check_uplinks_on_host(config: UplinksSettings) -> list[str]:
    """Problems with the uplinks' interfaces and addresses on this host, each naming the
    config file and key path (the daemon refuses to start on any)."""
    import psutil

    problems = []
    interfaces = psutil.net_if_addrs()
    for name, uplink in config.uplinks.items():
        where = f"{config.source}: uplinks.{name}"
        if uplink.interface not in interfaces:
            known = ", ".join(sorted(interfaces)) or "none"
            problems.append(f"{where}.interface: no interface {uplink.interface!r} on this host (found: {known})")
            continue
        addresses = {a.address.split("%")[0] for a in interfaces[uplink.interface]}
        # Every address of 127.0.0.0/8 is usable on lo without being assigned (the
        # loopback lab gives each uplink its own).
        on_loopback = uplink.source.startswith("127.") and "127.0.0.1" in addresses
        if uplink.source not in addresses and not on_loopback:
            found = ", ".join(sorted(a for a in addresses if ":" in a or "." in a)) or "none"
            problems.append(f"{where}.source: {uplink.source} is not an address of {uplink.interface} "
                            f"(it has: {found})")
    return problems
