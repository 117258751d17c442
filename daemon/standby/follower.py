"""The standby's side of replication: :class:`ReplicationStandby` connects to the
primary, proves the key, agrees on the common point (truncating a tail that is not on
the primary's history, saved aside first), then writes the records it receives and
acknowledges what is durable.
"""

from __future__ import annotations

import collections
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import trio

from daemon.core import events
from daemon.core.config import parse_host_port
from daemon.core.files import DATA_DIR_MODE, DATA_FILE_MODE, fsync_directory, make_directory
from daemon.core.log import get_logger
from daemon.core.service import Health, MetricFamily, Sample, ServiceStatus
from daemon.standby import Position, Record, ReplicationProtocolError, StandbyError, record_to_json
from daemon.standby.config import StandbyConfig
from daemon.standby.protocol import (
    Ack,
    Auth,
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
)
from daemon.standby.link import (
    CLOSE_TIMEOUT,
    DISCONNECTS,
    HANDSHAKE_TIMEOUT,
    Announcer,
    JournalLike,
    Link,
    LinkLost,
    collapse_group,
    config_digest,
    describe_write_error,
    link_stage,
    peer_address,
    short_digest,
    software_digest,
    software_version,
)

log = get_logger("replication")

#: How much the standby hands to one append_replicated (one fsync).
APPLY_RECORDS = 20_000
APPLY_BYTES = 16 * 1024 * 1024
#: Frames of records queued between the standby's reader and its writer.
APPLY_QUEUE = 64



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
        self.announce = Announcer(self.name, bus)
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
        address = peer_address(stream)
        link = Link(stream, ReplicationConnection("standby", self._key), address)
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
            log.warning("primary.handshake_timeout", address=address, stage=link_stage(link))
        except ReplicationProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.counters["protocol_errors"] += 1
            log.error("primary.protocol_error", address=address, error=str(exc))
        except _WriteRetry as exc:
            reason = str(exc)
        except DISCONNECTS as exc:
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
                self.announce(events.PrimaryLost(source=self.name, primary=primary, address=address, reason=reason,
                              durable_seq=self.journal.last.seq))
            self.last_disconnect = reason
        return welcomed

    async def _try_send(self, link: Link, event: Event) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await link.send(event)
            except (StandbyError, *DISCONNECTS):
                pass

    async def _handshake(self, link: Link) -> Event | None:
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
                self.announce(events.StandbyTruncated(source=self.name, node=self.node_id,
                              primary=self.primary.node_id if self.primary else "?", from_seq=before.seq,
                              to_seq=to.seq, dropped_records=before.seq - to.seq, reason=truncate.reason))
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
        self.announce(events.DivergentTailSaved(source=self.name, node=self.node_id, records=last.seq - after_seq,
                      from_seq=after_seq + 1, to_seq=last.seq, file=str(path)))
        return path

    async def _follow(self, link: Link, first: Event) -> None:
        assert self.primary is not None
        self.connected = True
        self.counters["sessions"] += 1
        self.write_error = None
        self._write_error_at = None
        self.announce(events.PrimaryConnected(source=self.name, primary=self.primary.node_id, address=link.address,
                      epoch=self.primary.epoch, primary_last_seq=self.primary.last.seq,
                      local_last_seq=self.journal.last.seq))
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
            raise collapse_group(group) from None
        if ended:
            raise ended[0]

    async def _receive(self, link: Link, first: Event, channel: trio.MemorySendChannel[list[Record]],
                       ended: list[BaseException], receiving: trio.CancelScope) -> None:
        """The reader and the heartbeats, until the link ends: then the error goes into
        ``ended`` (not up: the writer must finish the queue first) and the channel closes."""
        try:
            with receiving:  # cancelled by the writer when it can no longer acknowledge
                async with channel, trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeats, link)
                    await self._reader(link, first, channel)
        except BaseExceptionGroup as group:
            error = collapse_group(group)
            if isinstance(error, BaseExceptionGroup) or not isinstance(error, Exception):
                raise  # cancelled from outside (the service stops): nothing more to write
            ended.append(error)
        except Exception as exc:  # pragma: no cover - trio wraps errors from the nursery in a group
            ended.append(exc)

    async def _reader(self, link: Link, first: Event, channel: trio.MemorySendChannel[list[Record]]) -> None:
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

    async def _writer(self, link: Link, channel: trio.MemoryReceiveChannel[list[Record]],
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
            except (StandbyError, *DISCONNECTS) as exc:
                ended.append(exc)
                receiving.cancel()

    async def _write_failed(self, link: Link, exc: BaseException, acknowledge: bool = True) -> None:
        error = describe_write_error(exc)
        self.write_error = error
        self._write_error_at = trio.current_time()
        self.counters["write_errors"] += 1
        failed = events.StandbyDiskFull if error.startswith("disk full") else events.StandbyWriteError
        self.announce(failed(source=self.name, node=self.node_id, error=error, durable_seq=self.journal.last.seq))
        if acknowledge:  # else the link is gone already
            await link.send(Ack(self.journal.last.seq, error))

    async def _heartbeats(self, link: Link) -> None:
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
                         f"(config digest {short_digest(config_dig)} vs {short_digest(self.config_digest)})")
        if version_dig is not None and version_dig != self.version_digest:
            drift.append(f"primary {peer} runs different software "
                         f"(version digest {short_digest(version_dig)} vs {short_digest(self.version_digest)})")
        if version is not None and version != software_version():
            drift.append(f"primary {peer} runs {version}, this standby {software_version()}")
        if version_dig is None and not drift:
            return
        if drift != self.drift:
            self.drift = drift
            if drift:
                self.announce(events.DriftDetected(source=self.name, peer=peer, differences=list(drift)))

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
