"""Live drills on the real pair, the sans-IO part: may a live drill start now, is the
pair healthy enough for it, and the nftables table the uplink drill installs.

No trio, no I/O: the daemon side (:mod:`daemon.livedrills_run`) hands in the config,
the wall-clock time, the role/replication/uplink details it already has, and acts on
the answers. Every refusal names what to change.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from typing import Any, Mapping, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: The nftables table a live uplink drill installs (and daemon start removes if left over).
NFT_TABLE = "lifeline_drill"
NFT_FAMILY = "inet"
#: The journal record a live drill appends (never a fake trading record: order-record
#: validation passes it through, reconciliation ignores it).
DRILL_RECORD = "drill"


def parse_hours(text: str) -> tuple[dt.time, dt.time]:
    """``"09:30-16:00"`` -> (09:30, 16:00); the start before the end."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text or "")
    if m is None:
        raise ValueError(f'expected "HH:MM-HH:MM" (e.g. "09:30-16:00"), found {text!r}')
    h1, m1, h2, m2 = map(int, m.groups())
    if not (0 <= h1 < 24 and 0 <= h2 < 24 and m1 < 60 and m2 < 60):
        raise ValueError(f"expected hours 00-23 and minutes 00-59, found {text!r}")
    start, end = dt.time(h1, m1), dt.time(h2, m2)
    if start >= end:
        raise ValueError(f"the start must be before the end (same day), found {text!r}")
    return start, end


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"expected an IANA time zone name (e.g. \"America/New_York\"), found {name!r} "
                         f"({type(exc).__name__})") from None


def in_trading_hours(now: dt.datetime, hours: str, timezone: str) -> bool:
    """True Monday to Friday between the hours, in the exchange's time zone. ``now``
    must be aware (UTC from the daemon)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    start, end = parse_hours(hours)
    local = now.astimezone(zone(timezone))
    if local.weekday() >= 5:
        return False
    return start <= local.time().replace(tzinfo=None) < end


class DrillSettings(Protocol):
    """``[drills]`` as the gate reads it (:class:`daemon.config.DrillsConfig`)."""

    @property
    def live(self) -> bool: ...

    @property
    def trading_hours(self) -> str: ...

    @property
    def timezone(self) -> str: ...


def gate(settings: DrillSettings, now: dt.datetime, *, force: bool, drill: str) -> str | None:
    """Why a live drill may not start (None: it may): the config switch, then trading hours."""
    if not settings.live:
        return (f"live drills are off on this host: set [drills] live = true in the config and "
                f"`lifeline reload` (or restart) to run `lifeline drill {drill} --live`")
    if in_trading_hours(now, settings.trading_hours, settings.timezone) and not force:
        local = now.astimezone(zone(settings.timezone))
        return (f"inside trading hours ({settings.trading_hours} {settings.timezone}, now "
                f"{local:%a %H:%M}): run it outside them, or add --force (logged and audited with your name)")
    return None


def clamp_seconds(asked: Any, max_duration: float, default: float = 10.0) -> float:
    """The drill's cut length: ``asked`` (seconds) capped at ``max_duration``."""
    if asked is None:
        asked = default
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or not 0 < asked <= 3600:
        raise ValueError('"seconds" must be a number of seconds above 0')
    return float(min(asked, max_duration))


def switchover_refusal(role: Mapping[str, Any], replication: Mapping[str, Any] | None) -> str | None:
    """The pair must be healthy for a live switchover: this node primary and accepting,
    the store reachable, not paused, a standby connected and marked synchronous."""
    if role.get("fixed"):
        return "this host has a fixed role (no [standby.lease]): roles cannot move"
    if role.get("role") != "primary":
        return f"this node is {role.get('role')}, not primary: run the live drill on the primary"
    if not role.get("accepting_appends"):
        return "this primary is not accepting appends now"
    if role.get("store_reachable") is False:
        return f"the lease store is unreachable ({role.get('store_error') or 'no answer'})"
    if role.get("paused"):
        return "the pair is paused (maintenance): `lifeline resume` first"
    sync = role.get("sync_mark")
    if not sync:
        return "no standby is marked synchronous: the standby is not in sync"
    rep = replication or {}
    peer = rep.get("peer") or {}
    if not peer:
        return "no standby is connected to the replication link"
    # A batch in flight is normal lag under a writer: the synchronous mark is what counts
    # (the switchover drains the rest before it hands over).
    return None


def uplink_plan(details: Mapping[str, Any]) -> tuple[str, str] | str:
    """(fibre, backup) from ``uplink.status`` details, or why the drill may not start:
    at least two uplinks, the active one the highest-priority (lowest number) and UP,
    no pin, and a backup UP."""
    uplinks: Mapping[str, Any] = details.get("uplinks") or {}
    if len(uplinks) < 2:
        return f"the uplink drill needs two uplinks; this host has {len(uplinks)}"
    if details.get("pinned"):
        return f"an uplink is pinned ({details['pinned']}): `lifeline uplink auto` first"
    ranked = sorted(uplinks, key=lambda n: (uplinks[n].get("priority", 10), n))
    fibre = ranked[0]
    if details.get("active") != fibre:
        return f"the active uplink is {details.get('active')}, not {fibre} (the preferred one): the pair is not healthy"
    if uplinks[fibre].get("state") != "up":
        return f"{fibre} is {uplinks[fibre].get('state')}, not up"
    backups = [n for n in ranked[1:] if uplinks[n].get("state") == "up"]
    if not backups:
        return "no backup uplink is up: cutting the fibre would leave the host offline"
    return fibre, backups[0]


def probe_hosts(targets: list[str]) -> list[str]:
    """The IP addresses of an uplink's probe targets ("udp://IP:PORT", "icmp://IP", ...)."""
    out: list[str] = []
    for target in targets:
        rest = target.split("://", 1)[-1]
        host = rest.split("/", 1)[0]
        if host.startswith("["):
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue
        if host not in out:
            out.append(host)
    return out


def nft_ruleset(interface: str | None, hosts: list[str], source: str) -> str:
    """The `nft -f` script that cuts one uplink: drop what leaves from its source address
    (its probes: policy routing sends them out through it), its probe targets through it,
    and, when the uplink has its device to itself (``interface``; None when another
    uplink shares it), every packet out of or into that device. The backup's probes and
    the venues through the backup go to the same targets from another source and device,
    so they pass. ``delete table`` restores."""
    if interface is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface):
        raise ValueError(f"bad interface name {interface!r}")
    family = "ip" if ipaddress.ip_address(source).version == 4 else "ip6"
    same = [h for h in hosts if ("ip" if ipaddress.ip_address(h).version == 4 else "ip6") == family]
    lines = [f"table {NFT_FAMILY} {NFT_TABLE} {{",
             "  chain output {", "    type filter hook output priority -10; policy accept;"]
    if interface is not None:
        lines.append(f'    oifname "{interface}" counter drop')
    if same:
        lines.append(f"    {family} saddr {source} {family} daddr {{ {', '.join(same)} }} counter drop")
    lines.append(f"    {family} saddr {source} counter drop")
    lines += ["  }", "  chain input {", "    type filter hook input priority -10; policy accept;"]
    if interface is not None:
        lines.append(f'    iifname "{interface}" counter drop')
    lines.append(f"    {family} daddr {source} counter drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def drill_record(drill: str, phase: str, run_id: str, node: str, **extra: Any) -> bytes:
    """A journal payload marking a live drill (kind ``drill``; not an order record)."""
    body = {"record": DRILL_RECORD, "v": 1, "drill": drill, "phase": phase, "run": run_id, "node": node, **extra}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def verdict(checks: list[dict[str, Any]]) -> bool:
    return all(c.get("ok") for c in checks)
