"""The primary's side of replication: :class:`ReplicationPrimary` listens, takes one
authenticated standby at a time, agrees on the common point, streams records and
answers the writer (:meth:`ReplicationPrimary.append`) as the mode promises. What the
modes promise is in :mod:`daemon.standby.replication`.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Sequence

import trio

from daemon.core import events
from daemon.core.accept import BoundedListener, Connection
from daemon.core.config import parse_host_port
from daemon.core.listeners import Limits
from daemon.core.log import get_logger
from daemon.core.service import Health, MetricFamily, Sample, ServiceStatus, histogram
from daemon.standby import MAX_PAYLOAD, Record, ReplicationProtocolError, StandbyError
from daemon.standby.config import StandbyConfig
from daemon.standby.insync import InSyncRule
from daemon.standby.protocol import (
    HEADER_SIZE,
    MAX_FRAME,
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
from daemon.standby.link import (
    CLOSE_TIMEOUT,
    DISCONNECTS,
    HANDSHAKE_TIMEOUT,
    REANNOUNCE_AFTER,
    Announcer,
    JournalLike,
    Link,
    LinkLost,
    collapse_group,
    config_digest,
    due_again,
    link_stage,
    peer_address,
    short_digest,
    software_digest,
    software_version,
)

log = get_logger("replication")

#: How much the primary reads from its journal for one send (one or more frames).
BATCH_RECORDS = 2000
BATCH_BYTES = 4 * 1024 * 1024
#: A read of at most BATCH_RECORDS and BATCH_BYTES (journal frames are larger than
#: protocol records; one record is always allowed, and is at most MAX_PAYLOAD) fits one
#: RECORDS frame, so the sender need not split it.
_READ_FITS_ONE_FRAME = (max(BATCH_BYTES, MAX_PAYLOAD + RECORD_OVERHEAD) + BATCH_RECORDS * RECORD_OVERHEAD
                        + HEADER_SIZE + TRAILER_SIZE + 4 <= MAX_FRAME)
#: Catch-up exchanges before the primary gives up (two per epoch between the journals).
MAX_CATCHUP_ROUNDS = 256
IN_DOUBT_KEPT = 100
APPEND_TIMES_KEPT = 100_000  # appends (groups of records), for lag()


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


class AppendRun(NamedTuple):
    """Consecutive records with the same answer. What :meth:`ReplicationPrimary.append_runs`
    returns, so a request of thousands of records costs a few tuples, not an object per
    record (a NamedTuple: a tuple's speed, with names)."""

    first: int
    last: int
    epoch: int
    status: Literal["ok", "in_doubt"]
    durable_on: Literal["primary", "primary+standby"]
    reason: str | None
    degraded: bool


def expand_runs(runs: Sequence[AppendRun]) -> list[AppendResult]:
    """One AppendResult per record, in seq order."""
    return [AppendResult(seq, run.epoch, run.status, run.durable_on, run.reason, run.degraded)
            for run in runs for seq in range(run.first, run.last + 1)]




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
    link: Link
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
        self.announce = Announcer(self.name, bus)
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
        address = connection.address if connection is not None else peer_address(stream)
        link = Link(stream, ReplicationConnection("primary", self._key), address)
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
        except DISCONNECTS as exc:
            reason = str(exc) or type(exc).__name__
            if session is None and (link.conn.peer_verified or self.listener is None
                                    or self.listener.flood.note("closed", trio.current_time()) is not None):
                log.info("connection.closed", address=address, reason=reason, stage=link_stage(link))
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

    def _dropped(self, link: Link, kind: str, reason: str) -> None:
        """Log a dropped connection; strangers' drops coalesce (one line per interval
        and kind, with a count), so a flood of bad handshakes cannot flood the log."""
        if link.conn.peer_verified or self.listener is None:
            log.warning("connection.dropped", address=link.address, reason=reason, stage=link_stage(link))
            return
        count = self.listener.flood.note(kind, trio.current_time())
        if count is not None:
            log.warning("connection.dropped", address=link.address, reason=reason, stage=link_stage(link), count=count,
                        interval_s=self.listener.flood.interval)

    async def _try_send(self, link: Link, event: Event) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await link.send(event)
            except (StandbyError, *DISCONNECTS):
                pass

    async def _handshake(self, link: Link) -> tuple[_Session | None, int]:
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

    async def _reject(self, link: Link, hello: Hello, reason: str) -> None:
        self.counters["rejected"] += 1
        # Announced once per (host, reason) per REANNOUNCE_AFTER: whoever keeps knocking
        # with a wrong key must not flood the log and the bus.
        key = (link.address.rsplit(":", 1)[0], reason)
        now = trio.current_time()
        if due_again(self._rejections_announced, key, now, REANNOUNCE_AFTER):
            self.announce(events.ReplicationRejected(source=self.name, address=link.address, peer=hello.node_id,
                                                     reason=reason))
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
        self.announce(events.StandbyConnected(source=self.name, standby=session.node, address=session.address,
                      standby_last_seq=session.hello.last.seq, standby_last_epoch=session.hello.last.epoch,
                      common_seq=common, backlog=backlog))
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
            raise collapse_group(group) from None

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
                    failed = events.StandbyDiskFull if ack.error.startswith("disk full") else events.StandbyWriteError
                    self.announce(failed(source=self.name, node=session.node, error=ack.error, durable_seq=ack.seq))
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
                         f"(config digest {short_digest(config_dig)} vs {short_digest(self.config_digest)})")
        if version_dig is not None and version_dig != self.version_digest:
            drift.append(f"standby {session.node} runs different software "
                         f"(version digest {short_digest(version_dig)} vs {short_digest(self.version_digest)})")
        elif version_dig is None and session.hello.software_version != software_version():
            drift.append(f"standby {session.node} runs {session.hello.software_version}, this primary "
                         f"{software_version()}")
        if version_dig is None and not drift:
            return  # the HELLO cannot show a same-version source drift; wait for a heartbeat
        if drift != session.drift:
            session.drift = drift
            if drift:
                self.announce(events.DriftDetected(source=self.name, peer=session.node, differences=list(drift)))

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
            self.announce(events.ReplicationRecovered(source=self.name, standby=session.node,
                          degraded_for_s=round(trio.current_time() - since, 3) if since is not None else 0.0,
                          acked_seq=session.acked_seq))

    def _lose_sync(self, reason: str) -> None:
        if self.sync_listener is not None:
            self.sync_listener(None)
        if self._out_of_sync_since is None:
            self._out_of_sync_since = trio.current_time()
            self._out_of_sync_reason = reason
            if self.config.mode == "sync":
                self.announce(events.ReplicationDegraded(source=self.name, mode=self.config.mode,
                              on_standby_loss=self.config.on_standby_loss, reason=reason))
        # Writers waiting for this standby will not get their acknowledgement.
        self._release_waiters(reason)

    def _end(self, session: _Session, reason: str) -> None:
        if self._session is not session:
            return
        self._session = None
        self._rule.link_lost()
        self.announce(events.StandbyLost(source=self.name, standby=session.node, address=session.address, reason=reason,
                      acked_seq=session.acked_seq,
                      connected_for_s=round(trio.current_time() - session.connected_at, 3)))
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
                runs = [AppendRun(first, last, epoch, "ok", "primary", None, False)]
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
        records = await self.journal.append_many(payloads, epoch)
        return records[0].seq, records[-1].seq, records[-1].epoch

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
                return runs + [AppendRun(first, last, epoch, "ok", "primary+standby", None, False)]
            if acked >= first:
                runs.append(AppendRun(first, acked, epoch, "ok", "primary+standby", None, False))
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
        return [AppendRun(first, last, epoch, "ok", "primary", f"degraded to async: {reason}", True)]

    def _note_in_doubt(self, first: int, last: int, epoch: int, reason: str) -> list[AppendRun]:
        if last < first:
            return []
        count = last - first + 1
        self.counters["in_doubt"] += count
        # Only the newest IN_DOUBT_KEPT are kept: do not build more.
        self.recent_in_doubt.extend(AppendResult(seq, epoch, "in_doubt", "primary", reason)
                                    for seq in range(max(first, last - IN_DOUBT_KEPT + 1), last + 1))
        log.warning("append.in_doubt", first_seq=first, last_seq=last, count=count, reason=reason)
        return [AppendRun(first, last, epoch, "in_doubt", "primary", reason, False)]

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
