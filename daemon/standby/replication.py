"""Journal replication over TCP: the primary serves, the standby follows.

The wire format, the handshake and the catch-up rule live in
:mod:`daemon.standby.protocol` (sans-IO); this module is the trio shell around it.

:class:`ReplicationPrimary` listens on ``standby.listen`` and takes one authenticated
standby at a time. After the handshake the two agree on the common point of their
journals (a standby tail that is not on the primary's history is truncated back to it,
never merged), then the primary streams records as they are appended — many records per
frame, without waiting for acknowledgements (the window is TCP's) — and the standby
answers cumulative ACKs: the highest seq durable on its disk. Heartbeats go both ways
every ``heartbeat``; a link silent for ``peer_timeout`` is dead.

:meth:`ReplicationPrimary.append` is the writer's entry point. The record goes to the
local journal first (it is durable on the primary when that returns), then:

* ``mode = "async"``: ok at once (``durable_on = "primary"``).
* ``mode = "sync"`` with the standby in sync: ok once the standby has acknowledged the
  record (``durable_on = "primary+standby"``: RPO 0). If the wait times out
  (``sync_timeout``) or is cancelled, the record is **in doubt**, never ok: it is in the
  primary's journal and will still be streamed, but a failover before the standby has
  it would lose it. PostgreSQL has the same hole (Patroni documents that a cancelled
  synchronous-commit wait leaves the change visible but not replicated); the writer's
  contract (``daemon/standby/service.py``) says what to do with an in-doubt record:
  reconcile before acting on it again, never resend it blindly.
* ``mode = "sync"`` without a standby in sync (none connected, one still catching up,
  or one that reported a write error such as disk full): ``on_standby_loss = "block"``
  answers in-doubt at once; ``"degrade-to-async"`` answers ok with ``degraded=True``
  and raises an alarm in :meth:`status` until a standby is in sync again.

A standby counts as *in sync* — and the lease store may mark it synchronous, which lets
it promote itself — only once it has acknowledged everything the primary held when its
session started **and** every record ever answered ok without it
(:mod:`daemon.standby.insync` states and checks the rule). While it replays the backlog,
appends do not wait for it (a long catch-up does not stall writers); once the backlog is
replayed with few records answered alone left to send (else another catch-up round),
appends wait for it again until it holds every record answered alone.

Events (``daemon.core.events``): StandbyConnected, StandbyLost, ReplicationDegraded,
ReplicationRecovered, ReplicationRejected, DriftDetected, StandbyDiskFull,
StandbyWriteError, StandbyTruncated, PrimaryConnected, PrimaryLost; the last 200 are
also kept in ``announce.recent`` for status.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import heapq
import itertools
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import trio

import daemon
from daemon.core import events
from daemon.core.config import parse_host_port
from daemon.standby.config import StandbyConfig
from daemon.core.accept import BoundedListener, Connection
from daemon.core.files import DATA_DIR_MODE, DATA_FILE_MODE, fsync_directory, make_directory
from daemon.core.listeners import Limits
from daemon.core.log import get_logger
from daemon.core.service import Health, MetricFamily, Sample, ServiceStatus, histogram
from daemon.standby import MAX_PAYLOAD, Position, Record, ReplicationProtocolError, StandbyError, record_to_json
from daemon.standby.config import StandbyConfig
from daemon.standby.insync import InSyncRule
from daemon.standby.protocol import (
    HEADER_SIZE,
    MAX_FRAME,
    NEED_DATA,
    RECORD_OVERHEAD,
    TRAILER_SIZE,
    Ack,
    Auth,
    CatchUpError,
    Challenge,
    ConnectionClosed,
    Error,
    Event,
    Heartbeat,
    Hello,
    PositionReport,
    Records,
    Reject,
    ReplicationConnection,
    Truncate,
    Welcome,
    next_candidate,
    split_batch,
)

log = get_logger("replication")

#: A peer that has not finished the handshake (and the catch-up agreement) by then is
#: dropped: slow-loris peers cannot hold the port.
HANDSHAKE_TIMEOUT = 5.0
RECEIVE_CHUNK = 256 * 1024
#: Reads before the peer proved the key: a HELLO (under 1 KiB) or a REJECT fits.
HANDSHAKE_CHUNK = 8 * 1024
#: How much the primary reads from its journal for one send (one or more frames).
BATCH_RECORDS = 2000
BATCH_BYTES = 4 * 1024 * 1024
#: A read of at most BATCH_RECORDS and BATCH_BYTES (journal frames are larger than
#: protocol records; one record is always allowed, and is at most MAX_PAYLOAD) fits one
#: RECORDS frame, so the sender need not split it.
_READ_FITS_ONE_FRAME = (max(BATCH_BYTES, MAX_PAYLOAD + RECORD_OVERHEAD) + BATCH_RECORDS * RECORD_OVERHEAD
                        + HEADER_SIZE + TRAILER_SIZE + 4 <= MAX_FRAME)
#: How much the standby hands to one append_replicated (one fsync).
APPLY_RECORDS = 20_000
APPLY_BYTES = 16 * 1024 * 1024
#: Frames of records queued between the standby's reader and its writer.
APPLY_QUEUE = 64
CLOSE_TIMEOUT = 1.0
#: Catch-up exchanges before the primary gives up (two per epoch between the journals).
MAX_CATCHUP_ROUNDS = 256
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
IN_DOUBT_KEPT = 100
APPEND_TIMES_KEPT = 100_000  # appends (groups of records), for lag()

#: The events this module publishes (declared in daemon.core.events, one place for all events).
EVENTS: dict[str, type[events.Event]] = {cls.__name__: cls for cls in (
    events.StandbyConnected, events.StandbyLost, events.ReplicationDegraded, events.ReplicationRecovered,
    events.ReplicationRejected, events.DriftDetected, events.StandbyDiskFull, events.StandbyWriteError,
    events.StandbyTruncated, events.PrimaryConnected, events.PrimaryLost, events.DivergentTailSaved,
)}


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


@dataclass(frozen=True)
class AppendResult:
    """What the writer is told about one record. ``status`` is ``"ok"`` only when the
    record is as durable as the mode promises (or ``degraded``: on the primary alone,
    under ``degrade-to-async``); ``"in_doubt"`` otherwise, with ``reason``."""

    seq: int
    epoch: int
    status: Literal["ok", "in_doubt"]
    durable_on: Literal["primary", "primary+standby"]
    reason: str | None = None
    degraded: bool = False


#: Consecutive records with the same answer: (first seq, last seq, epoch, status,
#: durable_on, reason, degraded). What :meth:`ReplicationPrimary.append_runs` returns, so
#: a request of thousands of records costs a few tuples, not an object per record.
AppendRun = tuple[int, int, int, Literal["ok", "in_doubt"], Literal["primary", "primary+standby"], str | None, bool]


def expand_runs(runs: Sequence[AppendRun]) -> list[AppendResult]:
    """One AppendResult per record, in seq order."""
    return [AppendResult(seq, epoch, status, durable_on, reason, degraded)
            for first, last, epoch, status, durable_on, reason, degraded in runs
            for seq in range(first, last + 1)]


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


def _short(digest: bytes | None) -> str:
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


class _Link:
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
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
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


def _stage(link: _Link) -> str:
    """Where the conversation was when it ended (the state before a protocol error)."""
    return (link.conn.failed_in or link.conn.state).value


def _address(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


_DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, LinkLost)


def _collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
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


class _Announcer:
    """Publishes this module's events (the bus logs them), or logs them when there is no
    bus (tests), and keeps the last ones for status."""

    def __init__(self, source: str, bus: Any) -> None:
        self.source = source
        self.bus = bus
        self.recent: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque(maxlen=200)

    def __call__(self, kind: str, **fields: Any) -> None:
        event = EVENTS[kind](source=self.source, **fields)
        self.recent.append((time.time(), kind, fields))
        if self.bus is not None:
            self.bus.publish(event)
        else:
            getattr(log, event.severity)("event." + kind, **fields)

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.recent]


# =========================================================================== primary


class _Waiter:
    """A writer waiting for the standby's ACK of ``seq``. Set by the ACK, by the loss of
    the standby (``lost``), or by the deadline reaper (``timed_out``)."""

    __slots__ = ("seq", "deadline", "event", "lost", "timed_out")

    def __init__(self, seq: int, deadline: float) -> None:
        self.seq = seq
        self.deadline = deadline
        self.event = trio.Event()
        self.lost: str | None = None
        self.timed_out = False


@dataclass
class _Session:
    """The standby the primary is serving."""

    node: str
    address: str
    hello: Hello
    link: _Link
    cancel_scope: trio.CancelScope
    connected_at: float = field(default_factory=trio.current_time)
    connected_wall: float = field(default_factory=time.time)
    acked_seq: int = 0
    sent_seq: int = 0
    catch_up_target: int = 0
    streaming: bool = False
    error: str | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_at: float | None = None
    drift: list[str] = field(default_factory=list)


class ReplicationPrimary:
    """Serves the journal to one standby; see the module docstring.

    ``epoch_provider`` answers the fencing epoch stamped on new records (the lease will
    provide it; until then the journal's last epoch, at least 1).
    ``handshake_timeout``: a connection must be authenticated and agreed by then.
    """

    name = "replication"

    def __init__(
        self,
        journal: JournalLike,
        config: StandbyConfig,
        node_id: str,
        key: bytes,
        *,
        epoch_provider: Any = None,
        bus: Any = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        limits: Limits | None = None,
    ) -> None:
        self.journal = journal
        self.config = config
        self.node_id = node_id
        self._key = key
        #: The listener's bounds (config [listeners]); its handshake_timeout is the time
        #: a peer has to prove the key, ``handshake_timeout`` the time to be agreed too.
        self.limits = limits or Limits()
        self.listener: BoundedListener | None = None
        self.epoch_provider = epoch_provider or (lambda: max(journal.last.epoch, 1))
        self.handshake_timeout = handshake_timeout
        self.announce = _Announcer(self.name, bus)
        self.config_digest = config_digest(config)
        self.version_digest = software_digest()
        self.bound_port: int | None = None
        self._session: _Session | None = None
        self._waiters: list[tuple[int, int, _Waiter]] = []  # a heap by seq
        # The same waiters by deadline. sync_timeout is one constant, so arrival order is
        # deadline order: one reaper task expires them, where a cancel scope per append
        # would cost more than the rest of the append path.
        self._deadlines: collections.deque[_Waiter] = collections.deque()
        self._reaper_wakeup = trio.Event()
        self._tiebreak = itertools.count()
        #: Highest seq known durable on the standby, on this primary's history.
        self.standby_acked_seq = 0
        #: When the standby is in sync (and may be marked synchronous): the in-sync rule.
        self._rule = InSyncRule()
        #: When the pair stopped being in sync (trio time), or None while in sync. A
        #: primary starts out of sync: until a standby has caught up, no record is on two disks.
        self._out_of_sync_since: float | None = None
        self._out_of_sync_reason = "no standby has connected yet"
        # (first seq, last seq, trio time) of each append not yet acknowledged, for lag().
        self._append_times: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=APPEND_TIMES_KEPT)
        self._last_announced_error: tuple[str, float] | None = None
        #: (host, reason) pairs whose rejection was announced recently; due_again bounds it.
        self._rejections_announced: dict[tuple[str, str], float] = {}
        self.recent_in_doubt: collections.deque[AppendResult] = collections.deque(maxlen=IN_DOUBT_KEPT)
        self.append_to_ack = histogram(
            "lifeline_replication_append_to_ack_seconds",
            "From an append request to its answer: written and fsynced here and, in sync mode, "
            "acknowledged by the standby (or given up on).", "ack")
        self.counters: dict[str, int] = collections.defaultdict(int)
        #: Told the standby's node id when it comes in sync and None when it falls out
        #: (the lease store's sync mark follows it). Set by the leadership shell.
        self.sync_listener: Callable[[str | None], None] | None = None
        #: May appends be acknowledged without the standby (degrade-to-async)? With a
        #: lease, only once the store no longer marks the standby synchronous: else a
        #: promoted standby could miss a record acknowledged here.
        self.async_gate: Callable[[], bool] = lambda: True
        self._stopped = False

    # ------------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_host_port(self.config.listen)
        self._out_of_sync_since = trio.current_time()
        self.listener = BoundedListener("replication", self.limits, self._handle, log)
        _, self.bound_port = await self.listener.open(host or None, port)
        log.info("primary.listening", listen=self.config.listen, port=self.bound_port, mode=self.config.mode,
                 on_standby_loss=self.config.on_standby_loss, last_seq=self.journal.last.seq)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reaper)
                await nursery.start(self.listener.serve)
                task_status.started()
        finally:
            # Appends still writing locally must not wait for a standby nobody serves
            # any more (their timer, the reaper, is gone too): in doubt at once.
            self._stopped = True
            self._release_waiters("replication stopped")

    async def _reaper(self) -> None:
        """Expires sync waits at their deadline (the sync_timeout of each append)."""
        deadlines = self._deadlines
        while True:
            while deadlines and deadlines[0].event.is_set():
                deadlines.popleft()
            if not deadlines:
                self._reaper_wakeup = trio.Event()
                await self._reaper_wakeup.wait()
                continue
            first = deadlines[0]
            if first.deadline > trio.current_time():
                await trio.sleep_until(first.deadline)  # later arrivals have later deadlines
                continue
            deadlines.popleft()
            first.timed_out = True
            first.event.set()

    async def _handle(self, stream: trio.SocketStream, connection: Connection | None = None) -> None:
        address = connection.address if connection is not None else _address(stream)
        link = _Link(stream, ReplicationConnection("primary", self._key), address)
        session: _Session | None = None
        started = trio.current_time()
        try:
            # A stranger has limits.handshake_timeout to prove the key; once it has, the
            # deadline moves to handshake_timeout for the whole agreement.
            with trio.fail_after(min(self.limits.handshake_timeout, self.handshake_timeout)) as scope:

                def authenticated() -> None:
                    if connection is not None:
                        connection.authenticated()
                    scope.deadline = max(scope.deadline, started + self.handshake_timeout)

                link.on_authenticated = authenticated
                session, common = await self._handshake(link)
            if session is None:
                return
            with session.cancel_scope:
                if self._session is session:  # not replaced while it agreed
                    self._begin(session, common)
                    await self._serve(session, common)
            reason = "replaced by a new connection from the same standby"
        except trio.TooSlowError:
            limit = self.handshake_timeout if link.conn.peer_verified else self.limits.handshake_timeout
            reason = f"no handshake within {limit:g}s"
            self.counters["handshake_timeouts"] += 1
            self._dropped(link, "handshake-timeout", reason)
        except ReplicationProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.counters["protocol_errors"] += 1
            self._dropped(link, "protocol-error", reason)
        except CatchUpError as exc:
            reason = f"cannot catch up: {exc}"
            log.error("catchup.impossible", address=address, error=str(exc))
            await self._try_send(link, Error("catch-up-impossible", str(exc)))
        except _DISCONNECTS as exc:
            reason = str(exc) or type(exc).__name__
            if session is None and (link.conn.peer_verified or self.listener is None
                                    or self.listener.flood.note("closed", trio.current_time()) is not None):
                log.info("connection.closed", address=address, reason=reason, stage=_stage(link))
        except StandbyError as exc:  # the journal refused something (a read past retention, ...)
            reason = f"{type(exc).__name__}: {exc}"
            log.error("connection.failed", address=address, error=reason)
            await self._try_send(link, Error("primary-error", reason))
        except Exception as exc:  # a peer must never take the service down; log the bug loudly
            reason = f"internal error: {type(exc).__name__}: {exc}"
            self.counters["internal_errors"] += 1
            log.exception("connection.failed", address=address)
        finally:
            await link.aclose()
        if session is not None and self._session is session:
            self._end(session, reason)

    def _dropped(self, link: _Link, kind: str, reason: str) -> None:
        """Log a dropped connection; strangers' drops coalesce (one line per interval
        and kind, with a count), so a flood of bad handshakes cannot flood the log."""
        if link.conn.peer_verified or self.listener is None:
            log.warning("connection.dropped", address=link.address, reason=reason, stage=_stage(link))
            return
        count = self.listener.flood.note(kind, trio.current_time())
        if count is not None:
            log.warning("connection.dropped", address=link.address, reason=reason, stage=_stage(link), count=count,
                        interval_s=self.listener.flood.interval)

    async def _try_send(self, link: _Link, event: Event) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await link.send(event)
            except (StandbyError, *_DISCONNECTS):
                pass

    async def _handshake(self, link: _Link) -> tuple[_Session | None, int]:
        """HELLO, CHALLENGE, AUTH, then WELCOME or REJECT; then the catch-up agreement.
        Answers the registered session and the common seq, or (None, 0) if refused."""
        hello = await link.receive()
        if isinstance(hello, ConnectionClosed):
            raise LinkLost("closed before HELLO")
        assert isinstance(hello, Hello)
        await link.send(Challenge())
        auth = await link.receive()
        if isinstance(auth, ConnectionClosed):
            raise LinkLost("closed before AUTH")
        assert isinstance(auth, Auth)
        if not auth.verified:
            self.counters["auth_failures"] += 1
            await self._reject(link, hello, "authentication failed: the standby's proof does not match this "
                                            "primary's key (different key files on the two hosts?)")
            return None, 0
        link.on_authenticated()
        epoch = self.epoch_provider()
        if hello.last.epoch > epoch:
            await self._reject(link, hello, f"the standby's journal ends at epoch {hello.last.epoch}, newer than "
                                            f"this primary's epoch {epoch}: this primary is stale and will not "
                                            "lead it")
            return None, 0
        current = self._session
        if current is not None and current.node != hello.node_id:
            self.counters["busy_rejections"] += 1
            await self._reject(link, hello, f"another standby ({current.node} at {current.address}) is connected; "
                                            "one standby at a time")
            return None, 0
        if current is not None:
            # The same standby again: its old connection is a corpse the kernel has not
            # noticed yet (it restarted, or the path flapped). The new one wins.
            log.info("standby.reconnected", standby=hello.node_id, old=current.address, new=link.address)
            current.cancel_scope.cancel()
            self._end(current, "replaced by a new connection from the same standby")
        session = _Session(hello.node_id, link.address, hello, link, trio.CancelScope())
        self._session = session  # reserved before the first await below: one standby at a time
        try:
            await link.send(Welcome(self.node_id, epoch, self.journal.last, software_version(),
                                    self.config_digest))
            common = await self._agree(session)
        except BaseException:
            if self._session is session:
                self._session = None
            raise
        return session, common

    async def _reject(self, link: _Link, hello: Hello, reason: str) -> None:
        self.counters["rejected"] += 1
        # Announced once per (host, reason) per REANNOUNCE_AFTER: whoever keeps knocking
        # with a wrong key must not flood the log and the bus.
        key = (link.address.rsplit(":", 1)[0], reason)
        now = trio.current_time()
        if due_again(self._rejections_announced, key, now, REANNOUNCE_AFTER):
            self.announce("ReplicationRejected", address=link.address, peer=hello.node_id, reason=reason)
        else:
            log.debug("connection.rejected", address=link.address, peer=hello.node_id, reason=reason)
        await link.send(Reject(reason))

    async def _agree(self, session: _Session) -> int:
        """The catch-up agreement (protocol.next_candidate): the common seq."""
        link = session.link
        journal = self.journal
        claim, is_last = session.hello.last, True
        standby_was = session.hello.last
        for _ in range(MAX_CATCHUP_ROUNDS):
            first = max(journal.first_seq, 1)
            candidate = next_candidate(claim, journal.epoch_at, first, journal.last.seq)
            if candidate == claim and is_last:
                if candidate.seq < standby_was.seq:
                    log.warning("catchup.truncated", standby=session.node, from_seq=standby_was.seq,
                                to_seq=candidate.seq, from_epoch=standby_was.epoch)
                if journal.last.seq and candidate.seq + 1 < journal.first_seq:
                    raise CatchUpError(f"the standby needs seq {candidate.seq + 1} but this primary's journal "
                                       f"starts at {journal.first_seq}: re-seed the standby")
                return candidate.seq
            if candidate == claim:
                reason = f"agreed: common point (epoch {claim.epoch}, seq {claim.seq}); drop everything after it"
            else:
                reason = (f"your record {claim.seq} (epoch {claim.epoch}) is not on this primary's history; "
                          f"mine at seq {candidate.seq} has epoch {candidate.epoch}")
            log.info("catchup.truncate_proposed", standby=session.node, to_seq=candidate.seq,
                     to_epoch=candidate.epoch, claim_seq=claim.seq, claim_epoch=claim.epoch)
            await link.send(Truncate(candidate, reason))
            answer = await link.receive()
            if isinstance(answer, ConnectionClosed):
                raise LinkLost("closed during catch-up")
            if isinstance(answer, Error):
                raise LinkLost(f"standby gave up during catch-up: {answer.code}: {answer.message}")
            assert isinstance(answer, PositionReport)
            claim, is_last = answer.position, answer.is_last
        raise CatchUpError(f"no agreement after {MAX_CATCHUP_ROUNDS} exchanges")

    def _begin(self, session: _Session, common: int) -> None:
        session.acked_seq = session.sent_seq = common
        self.standby_acked_seq = common
        session.catch_up_target = self.journal.last.seq
        self.counters["sessions"] += 1
        backlog = session.catch_up_target - common
        self.announce("StandbyConnected", standby=session.node, address=session.address,
                      standby_last_seq=session.hello.last.seq, standby_last_epoch=session.hello.last.epoch,
                      common_seq=common, backlog=backlog)
        self._compare_digests(session, session.hello.config_digest, None)
        if self._rule.session_started(common, session.catch_up_target):
            self._now_in_sync(session)

    async def _serve(self, session: _Session, common: int) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, session, common + 1)
                await self._receiver(session)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _collapse(group) from None

    async def _sender(self, session: _Session, next_seq: int) -> None:
        link = session.link
        journal = self.journal
        heartbeat = float(self.config.heartbeat)
        next_heartbeat = trio.current_time()  # the first frame is a heartbeat: it starts the stream
        while True:
            if journal.last.seq < next_seq:
                with trio.move_on_at(next_heartbeat):
                    await journal.wait_beyond(next_seq - 1)
            events: list[Event] = []
            now = trio.current_time()
            if now >= next_heartbeat:
                events.append(Heartbeat(time.time_ns(), journal.last.seq, self.config_digest, self.version_digest))
                next_heartbeat = now + heartbeat
            if journal.last.seq >= next_seq:
                records = journal.read(next_seq, max_records=BATCH_RECORDS, max_bytes=BATCH_BYTES)
                if not records or records[0].seq != next_seq:
                    raise StandbyError(f"journal.read({next_seq}) returned "
                                       f"{records[0].seq if records else 'nothing'}; expected seq {next_seq}")
                if _READ_FITS_ONE_FRAME:
                    events.append(Records(records))
                else:  # pragma: no cover - with the constants above a read always fits
                    events.extend(Records(batch) for batch in split_batch(records))
                next_seq = records[-1].seq + 1
            if events:
                session.sent_seq = next_seq - 1  # before the send: the ACK may beat our wake-up
                await link.send(*events)
                session.streaming = True
                self.counters["records_sent"] += sum(len(e.records) for e in events if isinstance(e, Records))

    async def _receiver(self, session: _Session) -> None:
        timeout = float(self.config.peer_timeout)
        while True:
            event = await session.link.receive_within(timeout, f"standby {session.node}")
            if isinstance(event, Ack):
                self._on_ack(session, event)
            elif isinstance(event, Heartbeat):
                session.heartbeat = event
                session.heartbeat_at = trio.current_time()
                self._compare_digests(session, event.config_digest, event.version_digest)
            elif isinstance(event, Error):
                raise LinkLost(f"the standby gave up: {event.code}: {event.message}")
            elif isinstance(event, ConnectionClosed):
                raise LinkLost("the standby closed the connection")
            else:  # pragma: no cover - the protocol's table admits nothing else here
                raise ReplicationProtocolError(f"unexpected {type(event).__name__} from the standby")

    def _on_ack(self, session: _Session, ack: Ack) -> None:
        if self._session is not session:
            return  # a replaced session's last words; its cancellation is on the way
        if ack.seq < session.acked_seq:
            raise ReplicationProtocolError(f"ACK went backwards: {ack.seq} after {session.acked_seq}")
        if ack.seq > session.sent_seq:
            raise ReplicationProtocolError(f"ACK for seq {ack.seq} but only up to {session.sent_seq} was sent")
        session.acked_seq = ack.seq
        self.standby_acked_seq = ack.seq
        while self._append_times and self._append_times[0][1] <= ack.seq:
            self._append_times.popleft()
        self._wake_acked(ack.seq)
        if ack.error:
            if session.error != ack.error:
                session.error = ack.error
                self.counters["standby_errors"] += 1
                log.error("standby.write_error", standby=session.node, error=ack.error, durable_seq=ack.seq)
                if self._should_announce(ack.error):
                    self.announce("StandbyDiskFull" if ack.error.startswith("disk full") else "StandbyWriteError",
                                  node=session.node, error=ack.error, durable_seq=ack.seq)
                self._rule.standby_failed()
                self._lose_sync(f"standby {session.node} stopped acknowledging: {ack.error}")
            return
        if self._rule.standby_acked(ack.seq, self.journal.last.seq):
            self._now_in_sync(session)

    def _should_announce(self, error: str) -> bool:
        """Once per kind of error ("disk full", "write failed") per REANNOUNCE_AFTER: a
        standby that retries against a full disk must not flood the bus."""
        kind = error.split(":", 1)[0]
        now = trio.current_time()
        last = self._last_announced_error
        if last is not None and last[0] == kind and now - last[1] < REANNOUNCE_AFTER:
            return False
        self._last_announced_error = (kind, now)
        return True

    def _compare_digests(self, session: _Session, config_dig: bytes, version_dig: bytes | None) -> None:
        drift = []
        if config_dig != self.config_digest:
            drift.append(f"standby {session.node}'s replication settings differ from this primary's "
                         f"(config digest {_short(config_dig)} vs {_short(self.config_digest)})")
        if version_dig is not None and version_dig != self.version_digest:
            drift.append(f"standby {session.node} runs different software "
                         f"(version digest {_short(version_dig)} vs {_short(self.version_digest)})")
        elif version_dig is None and session.hello.software_version != software_version():
            drift.append(f"standby {session.node} runs {session.hello.software_version}, this primary "
                         f"{software_version()}")
        if version_dig is None and not drift:
            return  # the HELLO cannot show a same-version source drift; wait for a heartbeat
        if drift != session.drift:
            session.drift = drift
            if drift:
                self.announce("DriftDetected", peer=session.node, differences=list(drift))

    # ------------------------------------------------------------------ sync state

    def _now_in_sync(self, session: _Session) -> None:
        # The invariant of daemon.standby.insync, checked once more where the mark is set.
        refusal = self._rule.mark_refusal(session.acked_seq)
        if refusal is not None:
            self._rule.revoke()
            self.counters["in_sync_refused"] += 1
            log.error("standby.in_sync_refused", standby=session.node, acked_seq=session.acked_seq,
                      answered_alone_seq=self._rule.alone_seq, reason=refusal)
            return
        since = self._out_of_sync_since
        self._out_of_sync_since = None
        self._out_of_sync_reason = ""
        log.info("standby.in_sync", standby=session.node, acked_seq=session.acked_seq,
                 catch_up_target=session.catch_up_target, answered_alone_seq=self._rule.alone_seq)
        if self.sync_listener is not None and self.config.mode == "sync":
            self.sync_listener(session.node)
        if self.config.mode == "sync":  # async mode has nothing to recover from
            self.announce("ReplicationRecovered", standby=session.node,
                          degraded_for_s=round(trio.current_time() - since, 3) if since is not None else 0.0,
                          acked_seq=session.acked_seq)

    def _lose_sync(self, reason: str) -> None:
        if self.sync_listener is not None:
            self.sync_listener(None)
        if self._out_of_sync_since is None:
            self._out_of_sync_since = trio.current_time()
            self._out_of_sync_reason = reason
            if self.config.mode == "sync":
                self.announce("ReplicationDegraded", mode=self.config.mode,
                              on_standby_loss=self.config.on_standby_loss, reason=reason)
        # Writers waiting for this standby will not get their acknowledgement.
        self._release_waiters(reason)

    def _end(self, session: _Session, reason: str) -> None:
        if self._session is not session:
            return
        self._session = None
        self._rule.link_lost()
        self.announce("StandbyLost", standby=session.node, address=session.address, reason=reason,
                      acked_seq=session.acked_seq,
                      connected_for_s=round(trio.current_time() - session.connected_at, 3))
        self._lose_sync(f"standby {session.node} lost: {reason}")

    def in_sync(self) -> bool:
        return self._session is not None and self._rule.in_sync

    # ------------------------------------------------------------------ waiters

    def _wake_acked(self, seq: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= seq:
            _, _, waiter = heapq.heappop(waiters)
            waiter.event.set()
        deadlines = self._deadlines
        while deadlines and deadlines[0].event.is_set():
            deadlines.popleft()

    def _release_waiters(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, []
        self._deadlines.clear()
        for _, _, waiter in waiters:
            if not waiter.event.is_set():
                waiter.lost = reason
                waiter.event.set()

    # ------------------------------------------------------------------ the writer

    async def append(self, payload: bytes) -> AppendResult:
        """Append one record; see the module docstring for what the answer means.

        If the caller is cancelled while waiting for the standby, ``trio.Cancelled``
        propagates (trio requires it) and the record is counted and kept in
        ``recent_in_doubt``: it is in doubt, never ok."""
        return (await self.append_many([payload]))[0]

    async def append_many(self, payloads: Sequence[bytes]) -> list[AppendResult]:
        """Append records in order: one group commit on the primary, one wait for the
        standby covering them all. ``JournalError`` from the local journal propagates
        (nothing acknowledged; records it did write are logged as in doubt)."""
        return expand_runs(await self.append_runs(payloads))

    async def append_runs(self, payloads: Sequence[bytes]) -> list[AppendRun]:
        """:meth:`append_many` with the answers as runs of consecutive records (see
        :data:`AppendRun`): the same outcome, without an object per record."""
        if not payloads:
            return []
        epoch = self.epoch_provider()
        first = last = 0
        started = trio.current_time()
        try:
            first, last, epoch = await self._append_local(payloads, epoch)
            self._append_times.append((first, last, trio.current_time()))
            self.counters["appends"] += last - first + 1
            if self.config.mode == "async":
                runs: list[AppendRun] = [(first, last, epoch, "ok", "primary", None, False)]
            else:
                runs = await self._wait_for_standby(first, last, epoch)
            self.append_to_ack.observe(trio.current_time() - started)
            return runs
        except trio.Cancelled:
            if last:
                self._note_in_doubt(max(first, self.standby_acked_seq + 1), last, epoch,
                                    "the append was cancelled while waiting for the standby")
            raise

    async def _append_local(self, payloads: Sequence[bytes], epoch: int) -> tuple[int, int, int]:
        """The records into the local journal, numbered together: (first seq, last seq,
        epoch). One queue entry for the whole request: seqs in request order, one
        group commit, and all or nothing (a failed batch wrote none of them)."""
        journal = self.journal
        if hasattr(journal, "append_many"):
            records = await journal.append_many(payloads, epoch)
        else:  # a JournalLike without groups: one append each, all in one group commit
            records = await self._append_each(payloads, epoch)
        return records[0].seq, records[-1].seq, records[-1].epoch

    async def _append_each(self, payloads: Sequence[bytes], epoch: int) -> list[Record]:
        # The journal numbers appends in call order (its call enqueues before it first
        # yields). Tasks start in no particular order, so each takes the next payload
        # when it runs, right before its call: payload i is still the i-th call.
        records: list[Record | None] = [None] * len(payloads)
        order = iter(range(len(payloads)))

        async def one() -> None:
            i = next(order)
            records[i] = await self.journal.append(payloads[i], epoch)

        try:
            async with trio.open_nursery() as nursery:
                for _ in payloads:
                    nursery.start_soon(one)
        except BaseExceptionGroup as group:
            written = [r for r in records if r is not None]
            error = _collapse(group)
            if written and not isinstance(error, trio.Cancelled):
                for record in written:
                    self._note_in_doubt(record.seq, record.seq, record.epoch,
                                        f"written, but part of a request that failed: {error}")
            raise error from None
        return records  # type: ignore[return-value]

    async def _wait_for_standby(self, first: int, last: int, epoch: int) -> list[AppendRun]:
        """Records ``first..last`` are on the primary's disk; answer them in sync mode.
        They wait for the standby while the in-sync rule says so (in sync, or a
        caught-up standby converging); else they are answered without it. The choice
        and the answer are made in one step (no await between them), so a record is
        never answered alone after the standby was declared in sync."""
        runs: list[AppendRun] = []
        reason = ""
        while True:
            if self._stopped:
                return runs + self._note_in_doubt(first, last, epoch, "replication stopped (this node is no longer "
                                                                      "serving as primary)")
            if not self._rule.must_wait():
                return runs + self._without_standby(first, last, epoch,
                                                    reason or self._out_of_sync_reason or "no standby in sync")
            waiter: _Waiter | None = None
            if last > self.standby_acked_seq:
                waiter = _Waiter(last, trio.current_time() + float(self.config.sync_timeout))
                heapq.heappush(self._waiters, (last, next(self._tiebreak), waiter))
                self._deadlines.append(waiter)
                self._reaper_wakeup.set()
                try:
                    await waiter.event.wait()
                except trio.Cancelled:
                    waiter.event.set()  # the reaper and the ACK path drop it
                    raise
            acked = self.standby_acked_seq
            if acked >= last:
                return runs + [(first, last, epoch, "ok", "primary+standby", None, False)]
            if acked >= first:
                runs.append((first, acked, epoch, "ok", "primary+standby", None, False))
                first = acked + 1
            assert waiter is not None
            if waiter.lost is None:
                return runs + self._note_in_doubt(
                    first, last, epoch, f"no acknowledgement from the standby within sync_timeout "
                                        f"({float(self.config.sync_timeout):g}s)")
            # The standby went away while we waited: decide again, now (a new session
            # may already be back in sync, or converging: then we wait for it again).
            reason = waiter.lost

    def _without_standby(self, first: int, last: int, epoch: int, reason: str) -> list[AppendRun]:
        if self.config.on_standby_loss == "block":
            return self._note_in_doubt(first, last, epoch, f"no standby in sync ({reason}); on_standby_loss = block")
        if not self.async_gate():
            return self._note_in_doubt(first, last, epoch, f"no standby in sync ({reason}); the lease store still "
                                                           "marks it synchronous: clearing the mark first")
        self.counters["degraded_appends"] += last - first + 1
        # Before the answer: the standby is not in sync again until it acknowledged these.
        self._rule.answered_alone(last)
        return [(first, last, epoch, "ok", "primary", f"degraded to async: {reason}", True)]

    def _note_in_doubt(self, first: int, last: int, epoch: int, reason: str) -> list[AppendRun]:
        if last < first:
            return []
        count = last - first + 1
        self.counters["in_doubt"] += count
        # Only the newest IN_DOUBT_KEPT are kept: do not build more.
        self.recent_in_doubt.extend(AppendResult(seq, epoch, "in_doubt", "primary", reason)
                                    for seq in range(max(first, last - IN_DOUBT_KEPT + 1), last + 1))
        log.warning("append.in_doubt", first_seq=first, last_seq=last, count=count, reason=reason)
        return [(first, last, epoch, "in_doubt", "primary", reason, False)]

    def is_replicated(self, seq: int) -> bool:
        """Whether the standby has acknowledged ``seq`` (to settle an in-doubt record
        while this primary still leads)."""
        return seq <= self.standby_acked_seq

    # ------------------------------------------------------------------ reporting

    def alarm(self) -> str | None:
        if self.config.mode != "sync" or self.in_sync():
            return None
        reason = self._out_of_sync_reason or "no standby in sync"
        if self.config.on_standby_loss == "block":
            return f"no standby in sync ({reason}): appends answer in-doubt (on_standby_loss = block)"
        return f"degraded to async ({reason}): records are on the primary's disk only"

    def lag(self) -> tuple[int, float | None]:
        """(records the standby lacks, age in ms of the oldest of them)."""
        last = self.journal.last.seq
        behind = max(last - self.standby_acked_seq, 0)
        if behind == 0:
            return 0, 0.0
        if self._append_times and self._append_times[0][0] <= self.standby_acked_seq + 1 <= self._append_times[0][1]:
            return behind, (trio.current_time() - self._append_times[0][2]) * 1000
        try:
            records = self.journal.read(self.standby_acked_seq + 1, max_records=1)
        except Exception:  # status must never fail
            return behind, None
        if not records:
            return behind, None
        return behind, max(time.time_ns() - records[0].timestamp_ns, 0) / 1e6

    def details(self) -> dict[str, Any]:
        session = self._session
        behind, lag_ms = self.lag()
        if session is None:
            state = "waiting" if self.counters["sessions"] == 0 else "lost"
        elif session.error:
            state = "standby-failing"
        elif self._rule.in_sync:
            state = "in-sync"
        elif self._rule.converging:
            state = "converging"
        else:
            state = "catching-up" if session.streaming or session.catch_up_target else "connecting"
        peer: dict[str, Any] | None = None
        if session is not None:
            hb = session.heartbeat
            peer = {
                "node": session.node, "address": session.address, "connected_since": session.connected_wall,
                "software_version": session.hello.software_version, "acked_seq": session.acked_seq,
                "sent_seq": session.sent_seq, "error": session.error,
                "last_heartbeat_age_s": (round(trio.current_time() - session.heartbeat_at, 3)
                                         if session.heartbeat_at is not None else None),
                "clock_offset_ms": (round((time.time_ns() - hb.sent_ns) / 1e6, 3) if hb is not None else None),
            }
        return {
            "role": "primary", "node": self.node_id, "mode": self.config.mode,
            "on_standby_loss": self.config.on_standby_loss, "listen": self.config.listen, "port": self.bound_port,
            "state": state, "connected": session is not None, "in_sync": self.in_sync(), "peer": peer,
            "last_seq": self.journal.last.seq, "acked_seq": self.standby_acked_seq,
            "lag_records": behind, "lag_ms": round(lag_ms, 3) if lag_ms is not None else None,
            "degraded": self.config.mode == "sync" and self.config.on_standby_loss == "degrade-to-async"
            and not self.in_sync(),
            "alarm": self.alarm(), "drift": list(session.drift) if session else [],
            "counters": dict(self.counters),
            "recent_in_doubt": [asdict(r) for r in list(self.recent_in_doubt)[-10:]],
            "events": self.announce.kinds()[-20:],
        }

    def status(self) -> ServiceStatus:
        d = self.details()
        health: Health = "ok"
        if d["state"] == "in-sync":
            summary = f"standby {d['peer']['node']} in sync ({self.config.mode}), acked seq {d['acked_seq']}"
        elif d["connected"]:
            peer = d["peer"]
            summary = (f"standby {peer['node']} {d['state']}: {d['lag_records']} records behind"
                       + (f" ({peer['error']})" if peer["error"] else ""))
        else:
            summary = "no standby connected" if d["state"] == "waiting" else f"standby lost ({self._out_of_sync_reason})"
        if self.config.mode == "sync" and not d["in_sync"]:
            health = "failing" if self.config.on_standby_loss == "block" else "degraded"
            summary += f"; ALARM: {d['alarm']}"
        elif d["connected"] and d["peer"]["error"]:
            health = "degraded"
        elif self.config.mode == "async" and not d["connected"]:
            health = "degraded"
        if d["drift"]:
            summary += f"; drift: {len(d['drift'])} difference(s) with the standby"
            if health == "ok":
                health = "degraded"
        return ServiceStatus(health, summary, d)

    def metrics(self) -> list[MetricFamily]:
        d = self.details()
        role = {"role": "primary"}

        def gauge(name: str, help_: str, value: float) -> MetricFamily:
            return MetricFamily(name, "gauge", help_, [Sample(role, float(value))])

        def counter(name: str, help_: str, key: str) -> MetricFamily:
            return MetricFamily(name, "counter", help_, [Sample(role, float(self.counters[key]))])

        families = [
            gauge("lifeline_replication_connected", "1 while a standby is connected.", d["connected"]),
            gauge("lifeline_replication_in_sync", "1 while the standby is in sync.", d["in_sync"]),
            gauge("lifeline_replication_acked_seq", "Highest seq durable on the standby.", d["acked_seq"]),
            gauge("lifeline_replication_lag_records", "Records the standby has not acknowledged.", d["lag_records"]),
            gauge("lifeline_replication_degraded", "1 while sync replication is degraded (alarm).",
                  d["alarm"] is not None),
            gauge("lifeline_replication_drift", "Config or software differences with the peer.", len(d["drift"])),
            counter("lifeline_replication_in_doubt_total", "Appends answered in-doubt.", "in_doubt"),
            counter("lifeline_replication_degraded_appends_total", "Appends acknowledged on the primary alone "
                    "(degrade-to-async).", "degraded_appends"),
            counter("lifeline_replication_records_sent_total", "Records streamed to the standby.", "records_sent"),
            counter("lifeline_replication_sessions_total", "Standby sessions established.", "sessions"),
            MetricFamily("lifeline_replication_dropped_connections_total", "counter",
                         "Connections dropped before or instead of replicating, by reason.",
                         [Sample({**role, "reason": reason}, float(self.counters[key])) for reason, key in (
                             ("auth", "auth_failures"), ("busy", "busy_rejections"),
                             ("protocol", "protocol_errors"), ("handshake_timeout", "handshake_timeouts"))]),
        ]
        if d["lag_ms"] is not None:
            families.append(gauge("lifeline_replication_lag_seconds",
                                  "Age of the oldest record the standby has not acknowledged.", d["lag_ms"] / 1000))
        families += self.append_to_ack.collect()
        return families


# =========================================================================== standby


class ReplicationStandby:
    """Follows the primary at ``config.peer``; see the module docstring.

    ``write_retry``: after a local write error (disk full) the standby keeps the
    connection and keeps reporting the error for this long, then reconnects to retry
    from its journal's end (default: the larger of reconnect_max and 10 heartbeats).
    """

    name = "replication"

    def __init__(
        self,
        journal: JournalLike,
        config: StandbyConfig,
        node_id: str,
        key: bytes,
        *,
        bus: Any = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        write_retry: float | None = None,
    ) -> None:
        if config.peer is None:
            raise ValueError('standby.peer is required with role = "standby"')
        self.journal = journal
        self.config = config
        self.node_id = node_id
        self._key = key
        self.handshake_timeout = handshake_timeout
        self.write_retry = (write_retry if write_retry is not None
                            else max(float(config.reconnect_max), 10 * float(config.heartbeat)))
        self.announce = _Announcer(self.name, bus)
        self.config_digest = config_digest(config)
        self.version_digest = software_digest()
        self.connected = False
        self.primary: Welcome | None = None
        self.primary_address: str | None = None
        self.primary_last_seq: int | None = None
        self.primary_heartbeat: Heartbeat | None = None
        self._behind_since: float | None = None
        self.write_error: str | None = None
        self._write_error_at: float | None = None
        self.last_reject: str | None = None
        self.last_disconnect: str | None = None
        self.drift: list[str] = []
        self.truncations: list[dict[str, Any]] = []
        self.counters: dict[str, int] = collections.defaultdict(int)
        #: The lowest epoch a primary may lead for this node to follow it (the lease's
        #: epoch when the role machine said FOLLOW): an older primary is stale.
        self.min_epoch = 0
        #: Where a divergent tail is saved before it is cut (reconciliation).
        self.divergent_dir: Path | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.config.peer is not None
        host, port = parse_host_port(self.config.peer)
        log.info("standby.following", peer=self.config.peer, last_seq=self.journal.last.seq,
                 last_epoch=self.journal.last.epoch)
        task_status.started()  # at once: the standby keeps trying in the background
        reconnect_max = float(self.config.reconnect_max)
        initial = min(0.05, reconnect_max)
        delay = initial
        failures = 0
        while True:
            welcomed = False
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                failures += 1
                self.last_disconnect = f"connect to {self.config.peer} failed: {exc}"
                if failures == 1 or failures % 50 == 0:
                    log.warning("primary.unreachable", peer=self.config.peer, error=str(exc), attempts=failures)
            else:
                failures = 0
                welcomed = await self._connection(stream)
            self.counters["connect_attempts"] += 1
            if welcomed:
                delay = initial
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, reconnect_max)

    async def _connection(self, stream: trio.SocketStream) -> bool:
        """One connection to the primary; answers whether it got past WELCOME."""
        address = _address(stream)
        link = _Link(stream, ReplicationConnection("standby", self._key), address)
        welcomed = False
        reason = "this standby is stopping"
        try:
            with trio.fail_after(self.handshake_timeout):
                first = await self._handshake(link)
            welcomed = first is not None
            if first is not None:
                await self._follow(link, first)
        except trio.TooSlowError:
            reason = f"no handshake within {self.handshake_timeout:g}s"
            log.warning("primary.handshake_timeout", address=address, stage=_stage(link))
        except ReplicationProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.counters["protocol_errors"] += 1
            log.error("primary.protocol_error", address=address, error=str(exc))
        except _WriteRetry as exc:
            reason = str(exc)
        except _DISCONNECTS as exc:
            reason = str(exc) or type(exc).__name__
        except StandbyError as exc:  # the journal refused a truncation, a stale primary, ...
            reason = f"{type(exc).__name__}: {exc}"
            log.error("replication.stopped", address=address, error=reason)
            await self._try_send(link, Error("standby-error", reason))
        except Exception as exc:  # never let one connection take the service down; log the bug
            reason = f"internal error: {type(exc).__name__}: {exc}"
            self.counters["internal_errors"] += 1
            log.exception("replication.failed", address=address)
        finally:
            await link.aclose()
            if self.connected:
                self.connected = False
                primary = self.primary.node_id if self.primary else "?"
                self.announce("PrimaryLost", primary=primary, address=address, reason=reason,
                              durable_seq=self.journal.last.seq)
            self.last_disconnect = reason
        return welcomed

    async def _try_send(self, link: _Link, event: Event) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await link.send(event)
            except (StandbyError, *_DISCONNECTS):
                pass

    async def _handshake(self, link: _Link) -> Event | None:
        """HELLO .. WELCOME, then the catch-up agreement. Answers the first streaming
        event (HEARTBEAT or RECORDS), or None when rejected."""
        last = self.journal.last
        await link.send(Hello(self.node_id, "standby", last.epoch, last, software_version(), self.config_digest))
        challenge = await link.receive()
        if isinstance(challenge, ConnectionClosed):
            raise LinkLost("the primary closed the connection before its challenge")
        await link.send(Auth())
        verdict = await link.receive()
        if isinstance(verdict, ConnectionClosed):
            raise LinkLost("the primary closed the connection before its verdict")
        if isinstance(verdict, Reject):
            self.counters["rejected"] += 1
            if self.last_reject != verdict.reason:
                log.error("primary.rejected_us", address=link.address, reason=verdict.reason)
            self.last_reject = verdict.reason
            return None
        assert isinstance(verdict, Welcome)
        self.last_reject = None
        if verdict.epoch < self.min_epoch:
            raise StandbyError(f"primary {verdict.node_id} leads epoch {verdict.epoch}, below the lease's epoch "
                               f"{self.min_epoch}: it is stale (fenced); not following it")
        if verdict.epoch < self.journal.last.epoch:
            raise StandbyError(f"primary {verdict.node_id} leads epoch {verdict.epoch}, below this journal's "
                               f"epoch {self.journal.last.epoch}: it is stale; not following it")
        self.primary = verdict
        self.primary_address = link.address
        self._check_drift(verdict.node_id, verdict.config_digest, None, verdict.software_version)
        while True:
            event = await link.receive()
            if isinstance(event, Truncate):
                await link.send(self._on_truncate(event))
            elif isinstance(event, (Heartbeat, Records)):
                return event
            elif isinstance(event, Error):
                raise LinkLost(f"the primary gave up: {event.code}: {event.message}")
            else:
                raise LinkLost("the primary closed the connection during catch-up")

    def _on_truncate(self, truncate: Truncate) -> PositionReport:
        journal = self.journal
        to = truncate.to
        mine = journal.epoch_at(to.seq) if 0 < to.seq <= journal.last.seq else None
        if to.seq == 0 or mine == to.epoch:
            before = journal.last
            if before.seq > to.seq:
                saved = self._save_divergent(to.seq)
                report = journal.truncate_after(to.seq)
                entry = {"from_seq": before.seq, "from_epoch": before.epoch, "to_seq": to.seq,
                         "dropped_records": before.seq - to.seq, "reason": truncate.reason,
                         "saved_to": str(saved) if saved else None,
                         "report": str(report), "wall_time": time.time()}
                self.truncations.append(entry)
                self.counters["truncations"] += 1
                log.warning("journal.truncated_to_primary", report=str(report), **{
                    k: v for k, v in entry.items() if k not in ("report", "wall_time")})
                self.announce("StandbyTruncated", node=self.node_id,
                              primary=self.primary.node_id if self.primary else "?", from_seq=before.seq,
                              to_seq=to.seq, dropped_records=before.seq - to.seq, reason=truncate.reason)
            last = journal.last
            if last.seq != to.seq:
                raise StandbyError(f"truncate_after({to.seq}) left the journal at seq {last.seq}")
            return PositionReport(Position(to.epoch, to.seq), is_last=True)
        first = max(journal.first_seq, 1)
        candidate = next_candidate(to, journal.epoch_at, first, journal.last.seq)
        return PositionReport(candidate, is_last=candidate == journal.last)

    def _save_divergent(self, after_seq: int) -> Path | None:
        """Copy the records after ``after_seq`` (about to be cut: they are not on the
        new primary's history) to a JSON-lines file, fsynced, before the cut. They may be
        orders this node acknowledged while it was primary: reconciliation needs them."""
        if self.divergent_dir is None:
            return None

        journal = self.journal
        last = journal.last
        path = self.divergent_dir / f"divergent-e{last.epoch}-s{after_seq + 1}-{last.seq}-{time.time_ns()}.jsonl"
        make_directory(self.divergent_dir, DATA_DIR_MODE)
        seq = after_seq + 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, DATA_FILE_MODE)
        os.fchmod(fd, DATA_FILE_MODE)  # order records: 0640 whatever the umask
        with open(fd, "w", encoding="utf-8") as out:
            while seq <= last.seq:
                batch = journal.read(seq, 1000)
                if not batch:
                    break
                for record in batch:
                    out.write(json.dumps(record_to_json(record)) + "\n")
                seq = batch[-1].seq + 1
            out.flush()
            os.fsync(out.fileno())
        fsync_directory(self.divergent_dir)
        self.announce("DivergentTailSaved", node=self.node_id, records=last.seq - after_seq,
                      from_seq=after_seq + 1, to_seq=last.seq, file=str(path))
        return path

    async def _follow(self, link: _Link, first: Event) -> None:
        assert self.primary is not None
        self.connected = True
        self.counters["sessions"] += 1
        self.write_error = None
        self._write_error_at = None
        self.announce("PrimaryConnected", primary=self.primary.node_id, address=link.address,
                      epoch=self.primary.epoch, primary_last_seq=self.primary.last.seq,
                      local_last_seq=self.journal.last.seq)
        send_channel, receive_channel = trio.open_memory_channel[list[Record]](APPLY_QUEUE)
        # Why the session ended (the receive side's error, or the writer's failed ACK).
        # When the link drops, the writer still writes the records already received:
        # they are the primary's, and a standby that may be promoted next should hold
        # as many of them as it can.
        ended: list[BaseException] = []
        receiving = trio.CancelScope()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, link, receive_channel, ended, receiving)
                await self._receive(link, first, send_channel, ended, receiving)
        except BaseExceptionGroup as group:
            raise _collapse(group) from None
        if ended:
            raise ended[0]

    async def _receive(self, link: _Link, first: Event, channel: trio.MemorySendChannel[list[Record]],
                       ended: list[BaseException], receiving: trio.CancelScope) -> None:
        """The reader and the heartbeats, until the link ends: then the error goes into
        ``ended`` (not up: the writer must finish the queue first) and the channel closes."""
        try:
            with receiving:  # cancelled by the writer when it can no longer acknowledge
                async with channel, trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeats, link)
                    await self._reader(link, first, channel)
        except BaseExceptionGroup as group:
            error = _collapse(group)
            if isinstance(error, BaseExceptionGroup) or not isinstance(error, Exception):
                raise  # cancelled from outside (the service stops): nothing more to write
            ended.append(error)
        except Exception as exc:  # pragma: no cover - trio wraps errors from the nursery in a group
            ended.append(exc)

    async def _reader(self, link: _Link, first: Event, channel: trio.MemorySendChannel[list[Record]]) -> None:
        expected = self.journal.last.seq + 1
        timeout = float(self.config.peer_timeout)
        event: Event = first
        while True:
            if isinstance(event, Records):
                records = event.records
                if records[0].seq != expected:
                    raise ReplicationProtocolError(f"RECORDS start at seq {records[0].seq}, expected {expected}")
                expected = records[-1].seq + 1
                self._learn_primary_last(records[-1].seq)
                if self.write_error is None:
                    await channel.send(list(records))
                # else: dropped; we reconnect and catch up once the disk has room again
            elif isinstance(event, Heartbeat):
                self.primary_heartbeat = event
                self._learn_primary_last(event.last_seq)
                assert self.primary is not None
                self._check_drift(self.primary.node_id, event.config_digest, event.version_digest, None)
            elif isinstance(event, Error):
                raise LinkLost(f"the primary gave up: {event.code}: {event.message}")
            elif isinstance(event, ConnectionClosed):
                raise LinkLost("the primary closed the connection")
            event = await link.receive_within(timeout, "primary")

    def _learn_primary_last(self, seq: int) -> None:
        if self.primary_last_seq is None or seq > self.primary_last_seq:
            self.primary_last_seq = seq
        if self._behind_since is None and self.primary_last_seq > self.journal.last.seq:
            self._behind_since = trio.current_time()

    async def _writer(self, link: _Link, channel: trio.MemoryReceiveChannel[list[Record]],
                      ended: list[BaseException], receiving: trio.CancelScope) -> None:
        """Appends what the reader queued — everything queued at once, one fsync — and
        acknowledges cumulatively once it is durable. Once the link has ended it still
        writes what was queued (without acknowledging), then returns."""
        async for batch in channel:
            records = batch  # the reader's own list: ours to extend
            size = -1  # counted only when there is more to take
            while len(records) < APPLY_RECORDS and size < APPLY_BYTES:
                try:
                    more = channel.receive_nowait()
                except trio.WouldBlock:
                    break
                if size < 0:
                    size = sum([len(r.payload) for r in records])
                records.extend(more)
                size += sum([len(r.payload) for r in more])
            try:
                position = await self.journal.append_replicated(records)
            except (OSError, StandbyError) as exc:
                await self._write_failed(link, exc, acknowledge=not ended)
                async for _ in channel:
                    pass  # keep the reader unblocked; nothing more is written this session
                return
            self.counters["records_applied"] += len(records)
            if self.primary_last_seq is not None and position.seq >= self.primary_last_seq:
                self._behind_since = None
            if ended:
                continue  # the link is gone: write the rest of the queue, acknowledge nothing
            try:
                await link.send(Ack(position.seq))
            except (StandbyError, *_DISCONNECTS) as exc:
                ended.append(exc)
                receiving.cancel()

    async def _write_failed(self, link: _Link, exc: BaseException, acknowledge: bool = True) -> None:
        error = describe_write_error(exc)
        self.write_error = error
        self._write_error_at = trio.current_time()
        self.counters["write_errors"] += 1
        self.announce("StandbyDiskFull" if error.startswith("disk full") else "StandbyWriteError",
                      node=self.node_id, error=error, durable_seq=self.journal.last.seq)
        if acknowledge:  # else the link is gone already
            await link.send(Ack(self.journal.last.seq, error))

    async def _heartbeats(self, link: _Link) -> None:
        interval = float(self.config.heartbeat)
        while True:
            events: list[Event] = [Heartbeat(time.time_ns(), self.journal.last.seq, self.config_digest,
                                             self.version_digest)]
            if self.write_error is not None:
                events.append(Ack(self.journal.last.seq, self.write_error))  # keep saying it
                assert self._write_error_at is not None
                if trio.current_time() - self._write_error_at >= self.write_retry:
                    await link.send(*events)
                    raise _WriteRetry(f"reconnecting to retry after a write error: {self.write_error}")
            await link.send(*events)
            await trio.sleep(interval)

    def _check_drift(self, peer: str, config_dig: bytes, version_dig: bytes | None, version: str | None) -> None:
        drift = []
        if config_dig != self.config_digest:
            drift.append(f"primary {peer}'s replication settings differ from this standby's "
                         f"(config digest {_short(config_dig)} vs {_short(self.config_digest)})")
        if version_dig is not None and version_dig != self.version_digest:
            drift.append(f"primary {peer} runs different software "
                         f"(version digest {_short(version_dig)} vs {_short(self.version_digest)})")
        if version is not None and version != software_version():
            drift.append(f"primary {peer} runs {version}, this standby {software_version()}")
        if version_dig is None and not drift:
            return
        if drift != self.drift:
            self.drift = drift
            if drift:
                self.announce("DriftDetected", peer=peer, differences=list(drift))

    # ------------------------------------------------------------------ reporting

    def lag(self) -> tuple[int | None, float | None]:
        """(records behind the primary's last known seq, ms since the standby last held
        everything the primary had told it of). Measured on this host's clock only, so
        clock skew between the hosts does not enter."""
        if self.primary_last_seq is None:
            return None, None
        behind = max(self.primary_last_seq - self.journal.last.seq, 0)
        if behind == 0:
            self._behind_since = None
            return 0, 0.0
        if self._behind_since is None:
            return behind, None
        return behind, (trio.current_time() - self._behind_since) * 1000

    def details(self) -> dict[str, Any]:
        behind, lag_ms = self.lag()
        primary = self.primary
        return {
            "role": "standby", "node": self.node_id, "peer": self.config.peer, "mode": self.config.mode,
            "connected": self.connected,
            "primary": None if primary is None else {
                "node": primary.node_id, "address": self.primary_address, "epoch": primary.epoch,
                "software_version": primary.software_version,
            },
            "durable_seq": self.journal.last.seq, "durable_epoch": self.journal.last.epoch,
            "primary_last_seq": self.primary_last_seq, "lag_records": behind,
            "lag_ms": round(lag_ms, 3) if lag_ms is not None else None,
            "write_error": self.write_error, "last_reject": self.last_reject,
            "last_disconnect": self.last_disconnect, "drift": list(self.drift),
            "truncations": self.truncations[-10:], "counters": dict(self.counters),
            "events": self.announce.kinds()[-20:],
        }

    def status(self) -> ServiceStatus:
        d = self.details()
        health: Health = "ok"
        if d["connected"]:
            summary = (f"following {d['primary']['node']}: durable seq {d['durable_seq']}, "
                       f"{d['lag_records'] if d['lag_records'] is not None else '?'} behind")
        else:
            health = "degraded"
            summary = f"not connected to {self.config.peer}"
            if self.last_reject:
                summary += f" (rejected: {self.last_reject})"
            elif self.last_disconnect:
                summary += f" ({self.last_disconnect})"
        if self.write_error:
            health = "failing"
            summary += f"; NOT ACKNOWLEDGING: {self.write_error}"
        if self.drift:
            summary += f"; drift: {'; '.join(self.drift)}"
            if health == "ok":
                health = "degraded"
        return ServiceStatus(health, summary, d)

    def metrics(self) -> list[MetricFamily]:
        d = self.details()
        role = {"role": "standby"}

        def gauge(name: str, help_: str, value: float) -> MetricFamily:
            return MetricFamily(name, "gauge", help_, [Sample(role, float(value))])

        families = [
            gauge("lifeline_replication_connected", "1 while connected to the primary.", d["connected"]),
            gauge("lifeline_replication_durable_seq", "Highest seq durable on this standby.", d["durable_seq"]),
            gauge("lifeline_replication_write_error", "1 while the standby cannot write (and does not "
                  "acknowledge).", d["write_error"] is not None),
            gauge("lifeline_replication_drift", "Config or software differences with the peer.", len(d["drift"])),
            MetricFamily("lifeline_replication_truncations_total", "counter",
                         "Divergent journal tails truncated to the primary's history.",
                         [Sample(role, float(self.counters["truncations"]))]),
            MetricFamily("lifeline_replication_records_applied_total", "counter",
                         "Records appended from the primary.", [Sample(role, float(self.counters["records_applied"]))]),
        ]
        if d["lag_records"] is not None:
            families.append(gauge("lifeline_replication_lag_records", "Records the primary has and this standby "
                                  "does not (as last heard).", d["lag_records"]))
        if d["lag_ms"] is not None:
            families.append(gauge("lifeline_replication_lag_seconds", "Time since this standby last held "
                                  "everything the primary had.", d["lag_ms"] / 1000))
        return families


class _WriteRetry(StandbyError):
    """The standby drops the connection to retry its writes after a write error."""
