"""The venues' config section: ``[venues.NAME]``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from daemon.core.config import NodeConfig, closest, option
from daemon.core.durations import Duration, format_duration
from daemon.venues.fencing import LeaseBound, orphan_survival

VENUE_PROBE_CALLS = ("fetch_time", "fetch_status", "fetch_ticker", "fetch_balance")


@dataclass(frozen=True)
class VenueConfig:
    exchange: str = option(doc='The ccxt exchange id ("kraken", "coinbase", ...).')
    credentials: Path | None = option(
        None, doc="TOML file with api_key, secret (and password, uid where the venue needs them), mode 0600; "
        "needed for fetch_balance probes, the dead-man switch and reconciliation. Never logged or shown.")
    uplinks: list[str] | None = option(
        None, doc="Uplinks to probe the venue through (absent: every [uplinks.NAME]; no uplinks: the default route).")
    interval: Duration = option(Duration(1.0), doc="Time between probe rounds per uplink; never more often than the "
                                "venue's rate limit allows (ccxt's rateLimit x calls per round).", above=0)
    timeout: Duration = option(Duration(0.8), doc="A probe call unanswered after this fails (class timeout).",
                               above=0)
    probes: list[Literal["fetch_time", "fetch_status", "fetch_ticker", "fetch_balance"]] = option(
        factory=lambda: ["fetch_time"], doc="The calls one probe round makes, in order; fetch_balance (private) "
        "needs credentials; fetch_ticker needs ticker_symbol.")
    ticker_symbol: str | None = option(None, doc='Market whose ticker the fetch_ticker probe reads ("BTC/USDT").')
    degraded_latency: Duration = option(Duration(0.5), doc="Answers slower than this (slow_after in a row) make "
                                        "the venue DEGRADED through that uplink.", above=0)
    down_after: int = option(3, doc="Consecutive failed rounds before DOWN (the first failure already makes it "
                             "DEGRADED).", min=1, max=100)
    up_after: int = option(3, doc="Consecutive good rounds before a DEGRADED or DOWN venue is UP again.",
                           min=1, max=100)
    slow_after: int = option(3, doc="Consecutive slow answers before DEGRADED.", min=1, max=100)
    deadman: bool = option(True, doc="While this node is primary, keep re-arming the venue's dead-man switch "
                           "(cancelAllOrdersAfter) so the venue cancels every order by itself if this node stops "
                           "(fenced, crashed, cut off). Ignored where the venue has none (reported in status).")
    deadman_timeout: Duration = option(Duration(60.0), doc="The venue cancels every order this long after the "
                                       "last re-arm.", min=1, max=86400)
    deadman_interval: Duration = option(Duration(15.0), doc="Time between re-arms while primary.", above=0)
    deadman_arm_timeout: Duration = option(
        Duration(0.6), doc="The arm's bound: its HTTP request gets half of it to connect and half to be answered, "
        "then its connection is closed. With a lease an arm is sent only while the lease stays valid longer than "
        "this (so it is below ttl - safety_margin); a slower answer is a failed arm, retried.", above=0, max=30)
    max_orphan_survival: Duration = option(
        Duration(90.0), doc="Refuse a deadman_timeout with which a deposed primary's orders could live at the venue "
        "longer than this (the bound `lifeline config check` prints; README \"Venue-side fencing\").", above=0)
    reconcile: Literal["cancel-orphans", "adopt", "report-only"] = option(
        "cancel-orphans", doc='After a promotion, open orders at the venue that the journal does not know: '
        '"cancel-orphans" cancels them, "adopt" writes them into the journal as open, "report-only" reports them.')
    reconcile_on_promotion: bool = option(True, doc="Reconcile when this node becomes primary (false: only by "
                                          "hand, `lifeline reconcile`).")
    positions: bool = option(True, doc="Fetch positions too (where the venue has them) for the report.")
    api_url: str | None = option(None, doc='Replace the scheme and host of every API URL of the exchange '
                                 '("http://10.75.0.1:8080": the lab\'s venue emulator). Absent: the real venue.')
    sandbox: bool = option(False, doc="Use the venue's sandbox/testnet URLs (ccxt set_sandbox_mode).")

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        known = ccxt_exchange_ids()
        if known is None:
            problems.append(("exchange", "venues need ccxt, which is not installed here: "
                                         "pip install 'lifeline[venues]' (the Debian package has it), "
                                         "or remove the [venues.*] tables"))
        elif self.exchange not in known:
            close = closest(self.exchange, known)
            hint = f' (did you mean "{close}"?)' if close else ""
            problems.append(("exchange", f"unknown ccxt exchange id {self.exchange!r}{hint}"))
        if not self.probes:
            problems.append(("probes", f"expected at least one of {', '.join(VENUE_PROBE_CALLS)}"))
        if "fetch_ticker" in self.probes and not self.ticker_symbol:
            problems.append(("ticker_symbol", 'the fetch_ticker probe needs a market: set ticker_symbol = "BTC/USDT"'))
        if "fetch_balance" in self.probes and self.credentials is None:
            problems.append(("credentials", "the fetch_balance probe is private: set credentials = PATH (mode 0600)"))
        if self.deadman_interval >= self.deadman_timeout:
            problems.append(("deadman_interval", f"must be shorter than deadman_timeout "
                                                 f"({format_duration(self.deadman_timeout)}), or the venue cancels "
                                                 f"between two re-arms; found {format_duration(self.deadman_interval)}"))
        if self.api_url is not None and not re.fullmatch(r"https?://[^/\s]+/?", self.api_url):
            problems.append(("api_url", f'expected "http(s)://HOST[:PORT]" without a path, found {self.api_url!r}'))
        if self.uplinks is not None and len(set(self.uplinks)) != len(self.uplinks):
            problems.append(("uplinks", "an uplink is listed twice"))
        return problems


def fencing_problems(venues: Mapping[str, VenueConfig], lease: LeaseBound | None,
                     max_clock_rate_error: float = 0.01) -> list[tuple[str, str]]:
    """The venue-fencing checks of the whole config (the root's validate calls it with the
    lease's timings, None without ``[standby.lease]``): each venue's survival bound within its
    ``max_orphan_survival``, and an arm bound that leaves room to arm at all."""
    problems: list[tuple[str, str]] = []
    for name, vc in venues.items():
        if not vc.deadman:
            continue
        if lease is not None and vc.deadman_arm_timeout >= lease.ttl - lease.safety_margin:
            problems.append((f"venues.{name}.deadman_arm_timeout",
                             f"must be below the lease's ttl - safety_margin ({format_duration(lease.ttl)} - "
                             f"{format_duration(lease.safety_margin)}), or no arm can ever be sent; found "
                             f"{format_duration(vc.deadman_arm_timeout)}: lower it (default 600ms) or raise the ttl"))
        survival = orphan_survival(deadman=True, deadman_timeout=float(vc.deadman_timeout),
                                   arm_bound=float(vc.deadman_arm_timeout), lease=lease,
                                   max_clock_rate_error=max_clock_rate_error)
        if survival.seconds is not None and survival.seconds > vc.max_orphan_survival:
            room = vc.max_orphan_survival / (1 + (lease.max_clock_rate_error if lease else max_clock_rate_error)) \
                - ((lease.ttl - lease.safety_margin) if lease else float(vc.deadman_arm_timeout))
            fix = (f"lower deadman_timeout to at most {math.floor(room)}s" if room >= 1 else
                   "the lease's ttl alone is too long for it")
            problems.append((f"venues.{name}.deadman_timeout",
                             f"a deposed primary's orders could live {survival.seconds:.1f} s at the venue "
                             f"({survival.formula}), longer than max_orphan_survival "
                             f"({format_duration(vc.max_orphan_survival)}): {fix}, or raise max_orphan_survival"))
    return problems


def fencing_lines(venues: Mapping[str, VenueConfig], lease: LeaseBound | None,
                  max_clock_rate_error: float = 0.01) -> list[str]:
    """What `lifeline config check` prints per venue: the longest a deposed primary's orders
    can live there, against ``max_orphan_survival``, with the formula."""
    lines = []
    for name, vc in venues.items():
        survival = orphan_survival(deadman=vc.deadman, deadman_timeout=float(vc.deadman_timeout),
                                   arm_bound=float(vc.deadman_arm_timeout), lease=lease,
                                   max_clock_rate_error=max_clock_rate_error)
        if survival.seconds is None:
            lines.append(f"{name}: no bound: {survival.formula}")
        elif vc.credentials is None:
            lines.append(f"{name}: no bound: no credentials, so the dead-man switch cannot be armed; nothing ends "
                         "them but the engine and reconciliation")
        elif has_deadman_switch(vc.exchange) is False:
            lines.append(f"{name}: no bound: {vc.exchange} has no dead-man switch (ccxt: no cancelAllOrdersAfter); "
                         "nothing ends them but reconciliation on the new primary")
        else:
            lines.append(f"{name}: at most {survival.seconds:.1f} s (max_orphan_survival "
                         f"{format_duration(vc.max_orphan_survival)}): {survival.formula}")
    return lines


def has_deadman_switch(exchange: str) -> bool | None:
    """Whether ccxt implements ``cancelAllOrdersAfter`` for ``exchange`` (None: cannot tell,
    ccxt missing or the id unknown). Imports ccxt: for operator commands, not the daemon's load."""
    try:
        import ccxt
    except ImportError:
        return None
    cls = getattr(ccxt, exchange, None)
    if cls is None:
        return None
    try:
        return bool(cls().has.get("cancelAllOrdersAfter"))
    except Exception:  # noqa: BLE001 - a ccxt that cannot build the client: cannot tell
        return None


def ccxt_exchange_ids() -> list[str] | None:
    """ccxt's exchange ids, or None if ccxt (the ``venues`` extra) is not installed.

    Read from the names of ccxt's modules without importing it: ``import ccxt`` takes
    ~0.3 s and ~40 MB, which every client command that reads the config would pay."""
    import importlib.util

    spec = importlib.util.find_spec("ccxt")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "async_support"
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    import ccxt  # an unusual layout: ask ccxt itself

    return list(ccxt.exchanges)


class UplinkSource(Protocol):
    """An uplink as the venues see it: the source address their probes bind to."""

    @property
    def source(self) -> str: ...


class VenuesSettings(Protocol):
    """What the venue service reads of the root config (:class:`daemon.config.Config` is one)."""

    @property
    def node(self) -> NodeConfig: ...

    @property
    def venues(self) -> Mapping[str, VenueConfig]: ...

    @property
    def uplinks(self) -> Mapping[str, UplinkSource]: ...

    @property
    def source(self) -> Path: ...
