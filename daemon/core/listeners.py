"""What a listener lets a stranger have, sans-IO: connection budgets, coalesced flood
logs, bounded tables.

Every TCP listener of lifeline (replication, the witness, metrics) assumes a hostile
peer: a peer that has not proved the key gets a slot out of a small budget, a short
deadline and a hello-sized frame, nothing more. This module holds the bookkeeping,
with no sockets, no trio and explicit time (the shell is :mod:`daemon.core.accept`):

* :class:`ConnectionBudget`: may one more connection from this source be served? Four
  caps: all connections, all from one source address, the unauthenticated ones, and the
  unauthenticated ones from one source. The newest connection is the one refused, so a
  flood never displaces a peer already served.
* :class:`FloodLog`: the first event of a kind in an interval is logged at once; the
  rest of that interval become one line with a count (a flood of 10 000 refused
  connections is two log lines a minute, not 10 000 tracebacks).
* :class:`AcceptPacer`: a token bucket per source address, checked at accept before
  any protocol work. A connection takes a token and gives it back once it proves the
  key, so a peer that authenticates pays nothing and a flood of failing handshakes
  from one address is paced to ``accept_rate_per_source`` a second, the rest refused
  with a close() and a counter.
* :class:`BoundedTable`: a dict that forgets its oldest entries past a size, for rate
  limits keyed by source address (which a flood from many addresses would otherwise grow
  without bound).
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass, field
from typing import Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Limits:
    """The bounds of one listener. Defaults suit a pair's replication port, a witness
    and a metrics port alike: real clients hold one or two connections each."""

    #: Connections held at once, all sources, authenticated or not.
    max_connections: int = 64
    #: Connections held at once from one source address.
    max_per_source: int = 16
    #: Connections that have not proved the key (or sent their request) yet, all sources.
    max_unauthenticated: int = 16
    #: The same, from one source address.
    max_unauthenticated_per_source: int = 4
    #: Seconds a peer has to prove the key (or send its request) before it is dropped.
    handshake_timeout: float = 2.0
    #: Connections from one source address that end without proving the key, per second,
    #: past the burst (see :class:`AcceptPacer`); the rest are refused at accept.
    accept_rate_per_source: float = 1.0
    #: The burst of such connections one source may open before it is paced.
    accept_burst_per_source: int = 8

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for name in ("max_connections", "max_per_source", "max_unauthenticated", "max_unauthenticated_per_source"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append((name, f"must be a whole number of 1 or more, found {value!r}"))
        if not self.handshake_timeout > 0:
            out.append(("handshake_timeout", f"must be above 0, found {self.handshake_timeout!r}"))
        rate = self.accept_rate_per_source
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            out.append(("accept_rate_per_source", f"must be a number above 0, found {rate!r}"))
        burst = self.accept_burst_per_source
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            out.append(("accept_burst_per_source", f"must be a whole number of 1 or more, found {burst!r}"))
        return out


# Why a connection was refused, as logged and counted (a closed vocabulary).
FULL = "max-connections"
SOURCE_FULL = "max-per-source"
UNAUTHENTICATED_FULL = "max-unauthenticated"
SOURCE_UNAUTHENTICATED_FULL = "max-unauthenticated-per-source"
REFUSALS = (FULL, SOURCE_FULL, UNAUTHENTICATED_FULL, SOURCE_UNAUTHENTICATED_FULL)
#: Refused by the :class:`AcceptPacer` (counted apart from the budget's refusals).
RATE_LIMITED = "rate-per-source"


@dataclass(eq=False)
class Ticket:
    """One admitted connection's place in a :class:`ConnectionBudget`."""

    source: str
    authenticated: bool = False
    released: bool = False


@dataclass
class ConnectionBudget:
    """Counts connections by source and by authentication; answers whether one more may
    be served. Entries for a source disappear with its last connection, so the tables
    never hold more than ``max_connections`` sources."""

    limits: Limits = field(default_factory=Limits)
    total: int = 0
    unauthenticated: int = 0
    _per_source: dict[str, int] = field(default_factory=dict)
    _unauthenticated_per_source: dict[str, int] = field(default_factory=dict)
    #: Refusals so far, by reason (see REFUSALS).
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))
    admitted: int = 0

    def admit(self, source: str) -> Ticket | str:
        """A :class:`Ticket` for a new, unauthenticated connection from ``source``, or
        the reason it is refused (one of :data:`REFUSALS`)."""
        limits = self.limits
        reason = None
        if self.total >= limits.max_connections:
            reason = FULL
        elif self._per_source.get(source, 0) >= limits.max_per_source:
            reason = SOURCE_FULL
        elif self.unauthenticated >= limits.max_unauthenticated:
            reason = UNAUTHENTICATED_FULL
        elif self._unauthenticated_per_source.get(source, 0) >= limits.max_unauthenticated_per_source:
            reason = SOURCE_UNAUTHENTICATED_FULL
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self.total += 1
        self.unauthenticated += 1
        self.admitted += 1
        _add(self._per_source, source, 1)
        _add(self._unauthenticated_per_source, source, 1)
        return Ticket(source)

    def authenticate(self, ticket: Ticket) -> None:
        """The peer proved the key: it no longer counts against the unauthenticated caps."""
        if ticket.released or ticket.authenticated:
            return
        ticket.authenticated = True
        self.unauthenticated -= 1
        _add(self._unauthenticated_per_source, ticket.source, -1)

    def release(self, ticket: Ticket) -> None:
        """The connection closed. Idempotent."""
        if ticket.released:
            return
        if not ticket.authenticated:
            self.unauthenticated -= 1
            _add(self._unauthenticated_per_source, ticket.source, -1)
        ticket.released = True
        self.total -= 1
        _add(self._per_source, ticket.source, -1)

    def sources(self) -> int:
        return len(self._per_source)

    def snapshot(self) -> dict[str, int]:
        """For status and metrics."""
        return {"connections": self.total, "unauthenticated": self.unauthenticated, "sources": self.sources(),
                "admitted": self.admitted, **{f"refused_{k.replace('-', '_')}": v for k, v in self.refused.items()}}


def _add(table: dict[str, int], key: str, delta: int) -> None:
    value = table.get(key, 0) + delta
    if value > 0:
        table[key] = value
    else:
        table.pop(key, None)


def pacing_key(source: str) -> str:
    """The address a source is paced by: an IPv4 address as it is (IPv4-mapped IPv6
    too), an IPv6 address by its /64, the least a single host is usually given: one host
    must not get a fresh bucket per address of its prefix."""
    if ":" not in source:
        return source
    try:
        address = ipaddress.IPv6Address(source.split("%", 1)[0])
    except ValueError:
        return source
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class AcceptPacer:
    """A token bucket per source address (its :func:`pacing_key`), for the accept loop.

    :meth:`admit` is asked once per accepted connection, before anything else is done
    for it: True takes a token, False means the source is over its budget and the
    connection is to be closed at once (no task, no challenge, no MAC, no log line
    beyond a counter). :meth:`refund` gives the token back once the connection proved
    the key: a peer that authenticates is never paced, however often it reconnects; a
    source whose connections keep failing (garbage, oversized frames, a wrong key,
    silence) gets ``burst`` of them and then ``rate`` a second.

    Only sources below a full bucket are stored (a missing source has a full bucket),
    at most ``max_sources`` of them, the least recently seen forgotten first: an
    attacker with more addresses than that gets fresh buckets, and is still held by the
    listener's connection caps."""

    def __init__(self, rate: float, burst: int, max_sources: int = 1024) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be above 0 and burst 1 or more")
        self.rate = float(rate)
        self.burst = float(burst)
        #: key -> [tokens, when they were counted]
        self._buckets: BoundedTable[str, list[float]] = BoundedTable(max_sources)
        #: Connections refused so far.
        self.refused = 0

    def admit(self, source: str, now: float) -> bool:
        key = pacing_key(source)
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = self.burst
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens < 1.0:
            self.refused += 1
            # Refreshed (not forgotten first): a source that keeps knocking stays paced.
            self._buckets[key] = [tokens, now]
            return False
        self._buckets[key] = [tokens - 1.0, now]
        return True

    def refund(self, source: str, now: float) -> None:
        key = pacing_key(source)
        bucket = self._buckets.get(key)
        if bucket is None:
            return  # full already (or forgotten, which is the same)
        tokens = bucket[0] + (now - bucket[1]) * self.rate + 1.0
        if tokens >= self.burst:
            self._buckets.pop(key)
        else:
            self._buckets[key] = [tokens, now]

    def tokens(self, source: str, now: float) -> float:
        """The source's tokens at ``now`` (for tests and status)."""
        bucket = self._buckets.get(pacing_key(source))
        return self.burst if bucket is None else min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)

    def sources(self) -> int:
        """Sources stored (those below a full bucket, unless forgotten)."""
        return len(self._buckets)


class BoundedTable(Generic[K, V]):
    """A mapping that keeps at most ``max_entries`` keys, forgetting the least recently
    written first. For rate-limit state keyed by peers: forgetting a peer only means it
    may be logged once more."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be 1 or more")
        self.max_entries = max_entries
        self._data: collections.OrderedDict[K, V] = collections.OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)


@dataclass
class _Window:
    start: float
    suppressed: int = 0


class FloodLog:
    """Coalesces repeated events into one log line per ``interval`` per key.

    :meth:`note` answers the count to log now (1, or 1 + what was suppressed in the
    previous interval) or None to stay quiet; :meth:`flush` answers the keys whose
    interval ended with events still unlogged, and their counts, so the last burst of
    a flood is logged too. Keys are kept in a :class:`BoundedTable`."""

    def __init__(self, interval: float = 10.0, max_keys: int = 256) -> None:
        self.interval = interval
        self._windows: BoundedTable[Hashable, _Window] = BoundedTable(max_keys)

    def note(self, key: Hashable, now: float) -> int | None:
        window = self._windows.get(key, None)
        if window is None or now - window.start >= self.interval:
            count = 1 + (window.suppressed if window is not None else 0)
            self._windows[key] = _Window(now)
            return count
        window.suppressed += 1
        return None

    def flush(self, now: float) -> list[tuple[Hashable, int]]:
        due = []
        for key in list(self._windows):
            window = self._windows.get(key, None)
            if window is not None and window.suppressed and now - window.start >= self.interval:
                due.append((key, window.suppressed))
                # A new interval starts now: a flood that goes on is one line per interval.
                self._windows[key] = _Window(now)
        return due
