"""What both ends of replication share: the link (a TCP stream and its protocol
object), the digests that tell drift, the event announcer and the constants of a
connection. The primary is :mod:`daemon.standby.primary`, the standby
:mod:`daemon.standby.follower`; :mod:`daemon.standby.replication` names both.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import trio

import daemon
from daemon.core import events
from daemon.core.bus import EventBus
from daemon.core.log import get_logger
from daemon.standby import Position, Record, StandbyError
from daemon.standby.channel import NeedData
from daemon.standby.config import StandbyConfig
from daemon.standby.protocol import Event, ReplicationConnection

log = get_logger("replication")

#: A peer that has not finished the handshake (and the catch-up agreement) by then is
#: dropped: slow-loris peers cannot hold the port.
HANDSHAKE_TIMEOUT = 5.0
RECEIVE_CHUNK = 256 * 1024
#: Reads before the peer proved the key: a HELLO (under 1 KiB) or a REJECT fits.
HANDSHAKE_CHUNK = 8 * 1024
CLOSE_TIMEOUT = 1.0
#: The same standby error is announced again at most this often.
REANNOUNCE_AFTER = 60.0
#: Bound on the table of announced rejections: a flood from many source addresses
#: must not grow it without limit (the oldest entries go first).
MAX_ANNOUNCED_REJECTIONS = 256


def due_again(table: dict[Any, float], key: Any, now: float, interval: float,
              max_keys: int = MAX_ANNOUNCED_REJECTIONS) -> bool:
    """Whether ``key`` may be announced now (not within ``interval`` of its last
    announcement); records it if so. The table keeps at most ``max_keys`` entries:
    expired ones are dropped first, then the oldest."""
    last = table.get(key)
    if last is not None and now - last < interval:
        return False
    table.pop(key, None)
    table[key] = now
    if len(table) > max_keys:
        for old in [k for k, t in table.items() if now - t >= interval]:
            del table[old]
        while len(table) > max_keys:
            del table[next(iter(table))]
    return True

class JournalLike(Protocol):
    """What replication needs of :class:`daemon.standby.journal.Journal`."""

    @property
    def last(self) -> Position: ...

    @property
    def first_seq(self) -> int: ...

    async def append(self, payload: bytes, epoch: int) -> Record: ...

    async def append_many(self, payloads: Sequence[bytes], epoch: int) -> list[Record]: ...

    async def append_replicated(self, records: Sequence[Record]) -> Position: ...

    def read(self, from_seq: int, max_records: int = ..., max_bytes: int = ...) -> list[Record]: ...

    def epoch_at(self, seq: int) -> int | None: ...

    async def wait_beyond(self, seq: int) -> None: ...

    def truncate_after(self, seq: int) -> Any: ...


class LinkLost(StandbyError):
    """The replication link ended (peer closed, silent past peer_timeout, reset)."""


# --------------------------------------------------------------------------- digests


def software_version() -> str:
    return f"lifeline {daemon.__version__}"


_software_digest: bytes | None = None


def software_digest() -> bytes:
    """SHA-256 over the version and the daemon's source files: two hosts running the
    same release from different trees (a hot-fix on one) show up as drift."""
    global _software_digest
    if _software_digest is None:
        h = hashlib.sha256(software_version().encode())
        root = Path(daemon.__file__).parent
        for path in sorted(root.rglob("*.py")):
            try:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
            except OSError:  # pragma: no cover - a file vanished while we read the tree
                continue
        _software_digest = h.digest()
    return _software_digest


#: Settings that may differ between the two hosts (addresses, paths, the role itself).
_PER_HOST = frozenset({"role", "key_file", "listen", "peer"})


def config_digest(config: StandbyConfig) -> bytes:
    """SHA-256 of the replication settings both hosts should share (mode, timers,
    journal), so a pair configured differently is flagged as drift."""
    shared = {k: v for k, v in asdict(config).items() if k not in _PER_HOST}
    return hashlib.sha256(repr(sorted(_plain(shared).items())).encode()).digest()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, float):
        return repr(float(value))
    return value if isinstance(value, (int, str, bool, type(None))) else str(value)


def short_digest(digest: bytes | None) -> str:
    return digest.hex()[:12] if digest else "-"


def describe_write_error(exc: BaseException) -> str:
    """``"disk full: ..."`` for ENOSPC (anywhere in the exception's chain), else
    ``"write failed: ..."``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full: {exc}"
        current = current.__cause__ or current.__context__
    # The journal's JournalError carries the errno in its text ("ENOSPC (No space left
    # on device)"), not as an attribute.
    text = str(exc)
    if any(mark in text for mark in ("ENOSPC", "EDQUOT", os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))):
        return f"disk full: {exc}"
    return f"write failed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- the link


class Link:
    """One TCP stream and its protocol object. Sends take turns on a lock so that the
    order of ``conn.send`` calls (the MAC counters) is the order on the wire."""

    def __init__(self, stream: trio.abc.Stream, conn: ReplicationConnection, address: str) -> None:
        self.stream = stream
        self.conn = conn
        self.address = address
        self._lock = trio.Lock()
        #: Called once the peer proved the key (the listener's budget and deadline).
        self.on_authenticated: Callable[[], None] = lambda: None

    async def send(self, *events: Event) -> None:
        async with self._lock:
            data = b"".join([self.conn.send(e) for e in events])
            await self.stream.send_all(data)

    async def receive(self) -> Event:
        while True:
            event = self.conn.next_event()
            if not isinstance(event, NeedData):
                return event
            # A stranger is read a handshake frame's worth at a time: large reads of
            # junk, even if dropped at once, fragment the heap (RSS that never returns).
            chunk = RECEIVE_CHUNK if self.conn.authenticated else HANDSHAKE_CHUNK
            self.conn.receive_data(await self.stream.receive_some(chunk))

    async def receive_within(self, seconds: float, what: str) -> Event:
        with trio.move_on_after(seconds):
            return await self.receive()
        raise LinkLost(f"nothing from the {what} for {seconds:g}s")

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await self.stream.aclose()


def link_stage(link: Link) -> str:
    """Where the conversation was when it ended (the state before a protocol error)."""
    return (link.conn.failed_in or link.conn.state).value


def peer_address(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, LinkLost)


def collapse_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a session's nursery (trio wraps even one in a group):
    the first that is not a cancellation, else the group itself."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return group


#: The fields every event has (what the announcer keeps of an event is the rest).
_BASE_FIELDS = frozenset(f.name for f in fields(events.Event))


class Announcer:
    """Publishes this module's events (the bus logs them), or logs them when there is no
    bus (tests), and keeps the last ones for status."""

    def __init__(self, source: str, bus: EventBus | None) -> None:
        self.source = source
        self.bus = bus
        self.recent: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque(maxlen=200)

    def __call__(self, event: events.Event) -> None:
        data = {f.name: getattr(event, f.name) for f in fields(event) if f.name not in _BASE_FIELDS}
        self.recent.append((event.wall_time, event.kind, data))
        if self.bus is not None:
            self.bus.publish(event)
        else:
            getattr(log, event.severity)("event." + event.kind, **data)

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.recent]
