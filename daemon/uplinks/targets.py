"""Probe targets as written in config: ``udp://IP:PORT``, ``icmp://IP``, ``tcp://IP:PORT``,
``http://IP[:PORT]/PATH``, ``https://IP[:PORT]/PATH``.

Targets are IP literals on purpose: a probe must test the uplink, not the resolver (the
DNS probe tests that separately), and must not depend on a lookup that could itself
leave through another uplink.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

ProbeKind = Literal["udp", "icmp", "tcp", "http", "https"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PATTERN = re.compile(
    r"(?P<scheme>[a-z]+)://(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<ip4>[0-9.]+))(?::(?P<port>\d+))?(?P<path>/[^\s#]*)?"
)


@dataclass(frozen=True)
class Target:
    kind: ProbeKind
    address: str
    port: int | None
    path: str
    url: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


def parse_target(text: str) -> Target:
    """Parse one target; ``ValueError`` says what is wrong and what is expected."""
    match = _PATTERN.fullmatch(text.strip())
    hint = 'expected "udp://IP:PORT", "icmp://IP", "tcp://IP:PORT", "http://IP[:PORT]/PATH" or "https://..."'
    if not match:
        raise ValueError(f"{hint}, found {text!r}")
    scheme = match.group("scheme")
    if scheme not in ("udp", "icmp", "tcp", "http", "https"):
        raise ValueError(f"unknown probe kind {scheme!r}; {hint}")
    address = match.group("ip6") or match.group("ip4")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address (targets are IP literals); {hint}") from None
    port_text = match.group("port")
    port = int(port_text) if port_text else _DEFAULT_PORTS.get(scheme)
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535 in {text!r}")
    if scheme in ("udp", "tcp") and port is None:
        raise ValueError(f"{scheme} targets need a port, as in \"{scheme}://{address}:7\"")
    if scheme == "icmp" and (port_text or match.group("path")):
        raise ValueError(f'icmp targets have no port or path, as in "icmp://{address}"')
    path = match.group("path") or ("/" if scheme in ("http", "https") else "")
    if scheme in ("udp", "tcp") and path:
        raise ValueError(f"{scheme} targets have no path: {text!r}")
    return Target(scheme, address, port, path, text.strip())  # type: ignore[arg-type]
