"""Faults per venue, optionally only for clients in given CIDRs (sans-IO)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lab.venues.messages import InputError

MODES = ("ok", "silent", "slow", "error", "exchange_error")
MAX_FAULT_DELAY = 3600.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_address(address: str) -> str:
    """An IP as text, with IPv4-mapped IPv6 (``::ffff:10.0.0.1``) shown as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True)
class Fault:
    """What a venue does to requests from ``sources`` (every client when empty)."""

    mode: str = "ok"
    delay: float = 0.0
    status: int = 503
    sources: tuple[Network, ...] = ()
    message: str | None = None

    def applies_to(self, address: str | None) -> bool:
        if self.mode == "ok":
            return False
        if not self.sources:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(normalize_address(address))
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "delay": self.delay, "status": self.status,
                "sources": [str(n) for n in self.sources], "message": self.message}


OK = Fault()


def make_fault(mode: str = "ok", *, delay: float = 0.0, status: int | None = None,
               sources: Iterable[str] = (), message: str | None = None) -> Fault:
    """A validated :class:`Fault`; InputError "<field>: <problem>; <fix>" otherwise."""
    if mode not in MODES:
        raise InputError(f"mode: {mode!r} is not a fault mode; use one of {', '.join(MODES)}")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) \
            or not 0 <= delay <= MAX_FAULT_DELAY:
        raise InputError(f"delay: {delay!r} is not a number of seconds; use 0 to {MAX_FAULT_DELAY:g}")
    if mode == "slow" and delay <= 0:
        raise InputError("delay: mode \"slow\" needs a delay > 0 seconds; set \"delay\", e.g. 0.5")
    if status is None:
        status = 503
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise InputError(f"status: {status!r} is not an HTTP error status; use 400 to 599 (e.g. 503)")
    if isinstance(sources, str):
        raise InputError(f"sources: expected a list of CIDRs, found the string {sources!r}; use [{sources!r}]")
    networks = []
    for text in sources:
        try:
            networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            raise InputError(f"sources: {text!r} is not a network; use CIDRs such as \"10.71.0.0/16\"") from None
    if message is not None and (not isinstance(message, str) or not message or len(message) > 200):
        raise InputError("message: expected a non-empty string of at most 200 characters")
    return Fault(mode, float(delay), status, tuple(networks), message)
