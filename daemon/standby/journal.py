"""The execution journal: append-only segment files of framed, checksummed records.

What this module owns
---------------------
* The record codec (sans-IO, in :mod:`daemon.standby.journal_format`, re-exported here):
  :func:`encode_record`, :func:`decode_records`.
* The files: one directory, one file per segment, named by the seq of its first record
  (``00000000000000000001.seg``). Only the newest segment (the *active* one) is written.
* Recovery on open: every record is verified; a damaged tail of the active segment is cut
  off and reported; damage anywhere else stops the daemon (:class:`JournalCorrupt`).
* Group commit: :meth:`Journal.run` takes every queued append, writes them with one
  ``os.write`` and (``fsync = "always"``) one ``fsync``, then wakes all their callers.

On-disk format
--------------
Segment headers and record frames (their layout, checksums, and the scan that says where a
segment's valid prefix ends) are :mod:`daemon.standby.journal_format`, sans-IO; this module
keeps the files, the fsyncs and the :class:`Journal` class.

Torn tail versus corruption
---------------------------
A crash while writing leaves the end of the active segment incomplete or garbled: the
*tail*. The rule: damage is a torn tail only when it is in the active (last) segment and
**no valid record follows it** in that file; then the file is cut at the last good record,
fsynced, and a :class:`RecoveryReport` is kept in ``Journal.recovery`` and logged. A valid
record after the damage means the damage is in the middle of the history: the journal
cannot know what it lost, so it raises :class:`JournalCorrupt` instead of guessing.
Damage in a closed segment is always corruption, because a segment is fsynced before the
next one is created (except with ``fsync = "never"``, which is for tests). A record with a
valid CRC that breaks seq continuity or lowers the epoch is corruption wherever it is.

Known limit of the rule: after a power cut *during* a multi-page batch write, the disk may
hold a later page of that (never acknowledged) batch without an earlier one; that reads
as mid-journal damage and the daemon refuses to start. The operator restores the journal
from the peer; nothing acknowledged is lost either way.

Durability and visibility
-------------------------
``fsync = "always"``: an append returns after its batch was written and fsynced.
``"batch"``: an append returns after the write; the committer fsyncs at most every
``batch_interval`` (so at most that much acknowledged data is exposed to a power cut).
``"never"``: after the write; no fsync at all (tests only).

``Journal.last`` (and so :meth:`Journal.read` and :meth:`Journal.wait_beyond`) moves only
once a batch is as durable as the mode promises. With ``"always"`` the replication sender
therefore never ships a record that a failed fsync could still take back: a failed batch
is truncated away and its seqs are reused, which must not happen to a record the standby
already holds.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import math
import mmap
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from crc32c import crc32c

from daemon.standby.config import JournalConfig
from daemon.core.files import DATA_DIR_MODE, DATA_FILE_MODE, make_directory
from daemon.core.log import get_logger
from daemon.core.service import histogram
from daemon.standby import MAX_PAYLOAD, JournalCorrupt, Position, Record, StandbyError
# The format's public names stay importable from here (tests, bench/replication.py).
from daemon.standby.journal_format import (
    CRC,
    FRAME_BODY,
    HEADER_SIZE,
    I64,
    MAGIC,
    REASONS,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    SEGMENT_VERSION,
    U64,
    VERSION,
    decode_records,
    decode_segment_header,
    encode_record,
    encode_segment_header,
    frame_length,
    frame_size,
    judge_damage,
    parse_segment_name,
    scan_frames,
    segment_name,
)

__all__ = [
    "HEADER_SIZE", "MAGIC", "REASONS", "SEGMENT_HEADER_SIZE", "SEGMENT_MAGIC", "SEGMENT_VERSION", "VERSION",
    "Journal", "JournalError", "RecoveryReport", "TruncateReport", "VerifyReport", "decode_records",
    "decode_segment_header", "encode_record", "encode_segment_header", "frame_size", "segment_name",
    "verify_directory",
]

log = get_logger("journal")

# --------------------------------------------------------------------------- segment files

#: A sparse index entry every this many records or bytes, whichever comes first: finding
#: a seq walks at most this far from the nearest entry.
_INDEX_EVERY_RECORDS = 64
_INDEX_EVERY_BYTES = 256 * 1024
_READ_CHUNK = 256 * 1024
#: The records of the newest batches stay in memory for read(): the replication sender
#: asks for them right after they are published, and re-reading and re-checking what we
#: just wrote would cost more than the write. At most this much (frame bytes) and this
#: many batches; the newest batch is always kept.
_TAIL_BYTES = 8 * 1024 * 1024
_TAIL_BATCHES = 64
#: Sentinel "last index entry" of a segment without one: the first record gets an entry.
_NO_INDEX = -(1 << 70)
_MMAP_FLAGS = getattr(mmap, "MAP_SHARED", 0)


# --------------------------------------------------------------------------- reports and errors


class JournalError(StandbyError):
    """The journal refused an operation (a lower epoch, an oversized payload, a gap or an
    overlap in replicated records, a closed journal) or could not write a batch."""


@dataclass(frozen=True)
class RecoveryReport:
    """What open() cut off the end of a segment (never silently: it is also logged)."""

    file: Path
    records_kept: int  # valid records left in that file
    records_dropped: int  # damaged records recognised in the dropped bytes (0: not a record)
    bytes_dropped: int
    reason: str  # why the first dropped byte was refused ("torn", "bad crc", ...)
    offset: int = 0  # where the file was cut

    def __str__(self) -> str:
        return (f"{self.file}: cut at offset {self.offset} ({self.reason}): kept {self.records_kept} records, "
                f"dropped {self.records_dropped} records and {self.bytes_dropped} bytes")


@dataclass(frozen=True)
class TruncateReport:
    """What truncate_after removed."""

    after_seq: int
    records_removed: int
    bytes_removed: int
    segments_removed: int
    previous_last: Position
    last: Position


# --------------------------------------------------------------------------- internals


@dataclass
class _Segment:
    first_seq: int
    prev_epoch: int
    path: Path
    size: int  # bytes readers may see: header + published records
    last_seq: int  # first_seq - 1 when it holds no record
    index_seqs: list[int] = field(default_factory=list)
    index_offsets: list[int] = field(default_factory=list)
    read_fd: int | None = None

    def forget_after(self, seq: int) -> None:
        keep = bisect.bisect_right(self.index_seqs, seq)
        del self.index_seqs[keep:]
        del self.index_offsets[keep:]

    def close_reader(self) -> None:
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None


class _Pending:
    """One queued append: payloads to number (``append``, ``append_many``: one group, one
    epoch, one timestamp) or records to copy (``append_replicated``). A group is planned,
    written and woken as a whole: one object and one event per request, not per record."""

    __slots__ = ("payloads", "epoch", "timestamp_ns", "records", "count", "done", "result", "error")

    def __init__(self, payloads: Sequence[bytes] | None, epoch: int, timestamp_ns: int,
                 records: tuple[Record, ...] | None) -> None:
        self.payloads = payloads
        self.epoch = epoch
        self.timestamp_ns = timestamp_ns
        self.records = records
        self.count = len(payloads) if payloads is not None else len(records or ())
        self.done = trio.Event()
        self.result: list[Record] | None = None
        self.error: JournalError | None = None

    def fail(self, error: JournalError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass
class _Chunk:
    """The part of a batch that goes into one segment (a batch crosses a roll-over).

    ``parts`` are the frames' pieces, joined for the chunk's one ``os.write``. What the
    segment learns once the chunk is durable is planned with it: ``index`` (the sparse
    index entries, ``(seq, offset)``) and ``epochs`` (``(seq, epoch)`` where a new epoch
    starts)."""

    new_first_seq: int | None  # set: this chunk starts a new segment
    prev_epoch: int
    start: int  # the segment's size before this chunk
    parts: list[bytes] = field(default_factory=list)
    count: int = 0
    last_seq: int = 0
    index: list[tuple[int, int]] = field(default_factory=list)
    epochs: list[tuple[int, int]] = field(default_factory=list)
    end: int = 0


@dataclass
class _WriteOutcome:
    wfd: int
    fsyncs: int
    fsync_ms: float | None


class _WriteFailed(Exception):
    """From the worker thread: the batch was not written (``error``); ``undo_error`` is
    set when the files could not be put back either."""

    def __init__(self, error: OSError, undo_error: OSError | None) -> None:
        super().__init__(error)
        self.error = error
        self.undo_error = undo_error


def _errno_text(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    return f"{errno.errorcode.get(exc.errno, str(exc.errno))} ({os.strerror(exc.errno)})"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file does not do this
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


_OPERATOR_HINT = ("the daemon stops rather than guess. Restore this node's journal from the peer's copy, "
                  "or inspect it with `lifeline journal verify`.")


# --------------------------------------------------------------------------- the journal


class Journal:
    """The journal of one node. ``open()`` it (sync), start ``run()`` in a nursery, then
    ``append`` (primary) or ``append_replicated`` (standby); ``read`` and ``wait_beyond``
    serve the replication sender. Not thread-safe: call it from the trio thread."""

    def __init__(self, directory: Path, config: JournalConfig, dirfd: int, segments: list[_Segment],
                 epoch_starts: list[int], epoch_values: list[int], recoveries: list[RecoveryReport]) -> None:
        self.directory = directory
        self.config = config
        self._dirfd = dirfd
        self._segments = segments
        self._epoch_starts = epoch_starts  # seq where each epoch begins, ascending
        self._epoch_values = epoch_values
        self.recoveries: tuple[RecoveryReport, ...] = tuple(recoveries)
        active = segments[-1]
        self._last = Position(self._epoch_at_unchecked(active.last_seq), active.last_seq)
        self._wfd: int | None = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._durable = config.fsync != "never"
        # Queue and committer state.
        self._queue: list[_Pending] = []
        self._work = trio.Event()
        self._advanced = trio.Event()
        self._queued_records = 0  # records in the queue
        self._inflight_records = 0  # records of the batch being written
        self._max_epoch = self._last.epoch  # the fencing rule: never accept a lower one
        self._running = False
        self._committing = False
        self._closed = False
        self._failed: JournalError | None = None
        self._dirty = False  # written, not yet fsynced ("batch" mode)
        self._last_fsync_at = -math.inf
        self._limiter = trio.CapacityLimiter(1)
        # The newest published batches, (first seq, records, frame bytes), oldest first;
        # replaced (never mutated) on publish, so a reader in a worker thread sees one
        # consistent tuple.
        self._tail: tuple[tuple[int, Sequence[Record], int], ...] = ()
        self._tail_bytes = 0
        # Figures.
        self._appends = 0
        self._batches = 0
        self._fsyncs = 0
        self._last_fsync_ms: float | None = None
        self.fsync_seconds = histogram("lifeline_journal_fsync_seconds",
                                       "Duration of each journal fsync (a batch's, or the batch-mode committer's).",
                                       "fsync")

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: Path, config: JournalConfig) -> Journal:
        """Open (or create) the journal in ``directory``, verifying every record.

        A damaged tail of the active segment is cut off (``self.recovery`` says what);
        damage anywhere else raises :class:`JournalCorrupt`. Another process holding the
        directory raises :class:`JournalError`."""
        directory = Path(directory)
        make_directory(directory, DATA_DIR_MODE)  # 0750 whatever the umask
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(dirfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"{directory}: the journal is open in another process (flock held)") from None
            segments, starts, values, recoveries = _recover(directory, dirfd, config.fsync != "never")
            journal = cls(directory, config, dirfd, segments, starts, values, recoveries)
        except BaseException:
            os.close(dirfd)
            raise
        log.info("journal.opened", directory=directory, segments=len(segments), first_seq=journal.first_seq,
                 last_seq=journal.last.seq, last_epoch=journal.last.epoch, bytes=sum(s.size for s in segments),
                 fsync=config.fsync)
        return journal

    @property
    def recovery(self) -> RecoveryReport | None:
        """What open() cut off, or None when the journal was intact. (``recoveries`` lists
        every action when there were two, e.g. an unfinished roll-over with ``never``.)"""
        return self.recoveries[-1] if self.recoveries else None

    # ------------------------------------------------------------------ state

    @property
    def last(self) -> Position:
        """(epoch, seq) of the last durable record; Position(0, 0) for an empty journal."""
        return self._last

    @property
    def first_seq(self) -> int:
        """The oldest retained seq (1 until retention removed something; last.seq + 1
        when no record is retained)."""
        return self._segments[0].first_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def epoch_at(self, seq: int) -> int | None:
        """The epoch of record ``seq``; None outside the retained range. The position
        just before the first retained record is known too (the segment header keeps it;
        ``epoch_at(0)`` is 0 for a journal that starts at 1), so a peer at that position
        can be matched."""
        if not self.first_seq - 1 <= seq <= self._last.seq:
            return None
        return self._epoch_at_unchecked(seq)

    def _epoch_at_unchecked(self, seq: int) -> int:
        i = bisect.bisect_right(self._epoch_starts, seq) - 1
        return self._epoch_values[i] if i >= 0 else 0

    def stats(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self._last.seq,
            "last_epoch": self._last.epoch,
            "segments": len(self._segments),
            "bytes": sum(s.size for s in self._segments),
            "appends": self._appends,
            "batches": self._batches,
            "fsyncs": self._fsyncs,
            "mean_batch": self._appends / self._batches if self._batches else 0.0,
            "last_fsync_ms": self._last_fsync_ms,
            "queued": self._queued_records,
            "fsync": self.config.fsync,
        }

    def __repr__(self) -> str:
        return f"<Journal {self.directory} first_seq={self.first_seq} last={self._last}>"

    # ------------------------------------------------------------------ appending

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"{self.directory}: the journal is closed")
        if self._failed is not None:
            raise self._failed
        if not self._running:
            raise JournalError(f"{self.directory}: the journal's committer is not running (start Journal.run)")

    def _admit(self, epoch: int, *, claim: bool = True) -> None:
        """The checks every numbered append passes before it is queued (fencing); with
        ``claim`` the epoch becomes the lowest this journal accepts from now on."""
        if not 0 <= epoch < U64:
            raise JournalError(f"epoch {epoch} out of range")
        self._check_open()
        if epoch < self._max_epoch:
            raise JournalError(f"epoch {epoch} refused: the journal has seen epoch {self._max_epoch} "
                               "(a fenced-off primary must stop writing)")
        if claim:
            self._max_epoch = epoch

    async def append(self, payload: bytes, epoch: int) -> Record:
        """Append one record (primary side); returns it once durable per the fsync mode.

        seqs are given in call order. A lower epoch than any seen is refused (fencing). A
        failed batch raises JournalError; a cancelled call may still have been written."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise JournalError(f"payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD:
            raise JournalError(f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD}")
        self._admit(epoch)
        return (await self._append_group([payload], epoch))[0]

    async def append_many(self, payloads: Sequence[bytes], epoch: int) -> list[Record]:
        """Append records in the given order (primary side), numbered together: one queue
        entry, one wake-up, consecutive seqs, one timestamp. Returns them once durable per
        the fsync mode.

        All or nothing: every payload is checked before any is queued, and the group is
        written in one batch, so a failed batch (JournalError) wrote none of them. As with
        :meth:`append`, a cancelled call may still have been written."""
        payloads = list(payloads)
        if set(map(type, payloads)) - {bytes}:
            for payload in payloads:
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise JournalError(f"payload must be bytes, not {type(payload).__name__}")
            payloads = [bytes(p) for p in payloads]
        if payloads:
            biggest = max(map(len, payloads))
            if biggest > MAX_PAYLOAD:
                raise JournalError(f"payload of {biggest} bytes exceeds the limit of {MAX_PAYLOAD}")
        self._admit(epoch, claim=bool(payloads))  # nothing to write: checked, not claimed
        if not payloads:
            return []
        return await self._append_group(payloads, epoch)

    async def _append_group(self, payloads: list[bytes], epoch: int) -> list[Record]:
        pending = _Pending(payloads, epoch, time.time_ns(), None)
        self._enqueue(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def append_replicated(self, records: Sequence[Record]) -> Position:
        """Append records received from the primary (standby side); they must continue
        the journal exactly. Returns the new last position once durable per the mode."""
        batch = tuple(records)
        self._check_open()
        if not batch:
            return self._last
        expected = self._last.seq + self._inflight_records + self._queued_records + 1
        problem = _replicated_problem(batch, expected, self._max_epoch)
        if problem:
            raise JournalError(problem)
        self._max_epoch = batch[-1].epoch
        pending = _Pending(None, 0, 0, batch)
        self._enqueue(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return batch[-1].position

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        self._queued_records += pending.count
        self._work.set()

    async def wait_beyond(self, seq: int) -> None:
        """Return as soon as last.seq > seq; raises JournalError if the journal closes."""
        while self._last.seq <= seq:
            if self._closed:
                raise JournalError(f"{self.directory}: the journal is closed")
            await self._advanced.wait()

    # ------------------------------------------------------------------ the committer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group committer: every queued append goes into one write (and one fsync
        with "always"); their callers wake together. Appends need it running."""
        if self._closed:
            raise JournalError(f"{self.directory}: the journal is closed")
        if self._running:
            raise JournalError(f"{self.directory}: the committer is already running")
        self._running = True
        try:
            task_status.started()
            while not self._closed:
                if not self._queue:
                    self._work = trio.Event()
                    if self._dirty:
                        with trio.move_on_at(self._last_fsync_at + self.config.batch_interval):
                            await self._work.wait()
                    else:  # no deadline: spare the cancel scope (the idle wait of every append)
                        await self._work.wait()
                    if not self._queue:
                        if self._dirty and not self._closed:
                            await self._sync_dirty()
                        continue
                # Under steady load the loop never waits: without this, a cancelled
                # committer would go on writing batches for as long as appends arrive.
                await trio.lowlevel.checkpoint_if_cancelled()
                batch, self._queue = self._queue, []
                await self._commit(batch)
        finally:
            self._running = False
            self._fail_queue(JournalError(f"{self.directory}: the journal's committer stopped before this "
                                          "record was written"))
            if self._dirty and not self._closed and self._failed is None:
                with trio.CancelScope(shield=True):
                    await self._sync_dirty()
            if self._closed:
                self._close_files()

    def _fail_queue(self, error: JournalError) -> None:
        queue, self._queue = self._queue, []
        self._queued_records = 0
        for pending in queue:
            pending.fail(error)

    async def _commit(self, batch: list[_Pending]) -> None:
        self._queued_records -= sum(p.count for p in batch)
        chunks, accepted, seq, epoch = self._plan(batch)
        if not accepted:
            return
        fsync_now = self.config.fsync == "always" or (
            self.config.fsync == "batch" and trio.current_time() >= self._last_fsync_at + self.config.batch_interval)
        active = self._segments[-1]
        self._committing = True
        self._inflight_records = sum(p.count for p in accepted)
        try:
            # Shielded: once the bytes head for the disk, the outcome must be recorded and
            # every waiter told, even if the committer is being cancelled meanwhile.
            with trio.CancelScope(shield=True):
                try:
                    outcome = await trio.to_thread.run_sync(
                        self._write_blocking, self._wfd, active.size, chunks, fsync_now, limiter=self._limiter)
                except _WriteFailed as failed:
                    self._batch_failed(accepted, failed, active)
                    return
        finally:
            self._committing = False
            self._inflight_records = 0
        self._publish(chunks, outcome, seq, epoch)
        self._remember(accepted, sum(c.end - c.start for c in chunks))
        self._batches += 1
        if fsync_now:
            self._last_fsync_at = trio.current_time()
        self._dirty = self.config.fsync == "batch" and not fsync_now
        for pending in accepted:
            pending.done.set()

    def _plan(self, batch: list[_Pending]) -> tuple[list[_Chunk], list[_Pending], int, int]:
        """Number and frame the batch, split where segments roll over. Entries that no
        longer fit the journal (an earlier batch failed) are failed here.

        This is the committer's hot loop (every record of every batch passes here once),
        so it frames records inline rather than through :func:`encode_record`: the fields
        were checked when the entry was queued (``_admit``, ``_replicated_problem``)."""
        seq, epoch = self._last.seq, self._last.epoch
        active = self._segments[-1]
        size, has_records = active.size, active.last_seq >= active.first_seq
        chunk = _Chunk(None, 0, size)
        chunks = [chunk]
        parts = chunk.parts
        accepted: list[_Pending] = []
        limit = self.config.segment_bytes
        idx_seq, idx_off = (active.index_seqs[-1], active.index_offsets[-1]) if active.index_seqs else (_NO_INDEX, 0)
        in_chunk = 0
        pack_body, pack_crc = FRAME_BODY.pack, CRC.pack
        for pending in batch:
            if pending.done.is_set():
                continue
            records: Sequence[Record]
            if pending.records is None:
                if pending.epoch < epoch:  # pragma: no cover - append() checks first
                    pending.fail(JournalError(f"epoch {pending.epoch} refused: the journal is at epoch {epoch}"))
                    continue
                group_epoch, stamp = pending.epoch, pending.timestamp_ns
                assert pending.payloads is not None
                records = [Record(s, group_epoch, stamp, p)
                           for s, p in zip(range(seq + 1, seq + 1 + pending.count), pending.payloads)]
            else:
                records = pending.records
                # Checked whole when queued; what can have changed since is the journal's
                # end (an earlier batch failed): only the junction needs checking again.
                if records[0].seq != seq + 1 or records[0].epoch < epoch:
                    problem = _continuity_problem(records, seq + 1, epoch) or f"does not continue seq {seq}"
                    pending.fail(JournalError(f"replicated records refused: {problem}"))
                    continue
            for record in records:
                payload = record.payload
                rseq, repoch = record.seq, record.epoch
                length = len(payload)
                if has_records and size + HEADER_SIZE + length > limit:
                    chunk.end, chunk.count, chunk.last_seq = size, in_chunk, seq
                    chunk = _Chunk(rseq, epoch, SEGMENT_HEADER_SIZE)
                    chunks.append(chunk)
                    parts = chunk.parts
                    size, has_records, in_chunk = SEGMENT_HEADER_SIZE, False, 0
                    idx_seq, idx_off = _NO_INDEX, 0
                body = pack_body(VERSION, 0, length, rseq, repoch, record.timestamp_ns)
                parts += (MAGIC, pack_crc(crc32c(payload, crc32c(body))), body, payload)
                if rseq - idx_seq >= _INDEX_EVERY_RECORDS or size - idx_off >= _INDEX_EVERY_BYTES:
                    chunk.index.append((rseq, size))
                    idx_seq, idx_off = rseq, size
                if repoch != epoch:
                    chunk.epochs.append((rseq, repoch))
                size += HEADER_SIZE + length
                has_records = True
                in_chunk += 1
                seq, epoch = rseq, repoch
            pending.result = records  # type: ignore[assignment]  # a list, or the replicated tuple
            accepted.append(pending)
        chunk.end, chunk.count, chunk.last_seq = size, in_chunk, seq
        return [c for c in chunks if c.count], accepted, seq, epoch

    def _write_blocking(self, wfd: int | None, wsize: int, chunks: list[_Chunk], fsync_now: bool) -> _WriteOutcome:
        """In a worker thread: write the batch (one write per segment it touches) and
        fsync per mode. All or nothing: on error the files are put back as they were."""
        assert wfd is not None
        fd = wfd
        fsyncs = 0
        fsync_ms: float | None = None
        created: list[tuple[int, str]] = []
        try:
            for chunk in chunks:
                if chunk.new_first_seq is not None:
                    if self._durable:
                        os.fsync(fd)  # a closed segment is whole on disk before the next exists
                        fsyncs += 1
                    name = segment_name(chunk.new_first_seq)
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                                 DATA_FILE_MODE, dir_fd=self._dirfd)
                    created.append((fd, name))
                    os.fchmod(fd, DATA_FILE_MODE)  # 0640 whatever the umask
                    _write_all(fd, encode_segment_header(chunk.new_first_seq, chunk.prev_epoch))
                    if self._durable:
                        os.fsync(fd)
                        os.fsync(self._dirfd)
                        fsyncs += 2
                _write_all(fd, b"".join(chunk.parts))
            if fsync_now:
                started = time.perf_counter()
                os.fsync(fd)
                fsync_ms = (time.perf_counter() - started) * 1000
                fsyncs += 1
        except OSError as exc:
            raise _WriteFailed(exc, self._rollback(wfd, wsize, created)) from exc
        if created and fd != wfd:
            os.close(wfd)
        return _WriteOutcome(fd, fsyncs, fsync_ms)

    def _rollback(self, wfd: int, wsize: int, created: list[tuple[int, str]]) -> OSError | None:
        """Put the files back as before the batch; the error if that failed too."""
        try:
            for fd, name in created:
                os.close(fd)
                os.unlink(name, dir_fd=self._dirfd)
            os.ftruncate(wfd, wsize)
            if self._durable:
                os.fsync(wfd)
                if created:
                    os.fsync(self._dirfd)
        except OSError as exc:
            return exc
        return None

    def _batch_failed(self, accepted: list[_Pending], failed: _WriteFailed, active: _Segment) -> None:
        count = sum(p.count for p in accepted)
        error = JournalError(f"{active.path}: journal write failed: {_errno_text(failed.error)}; "
                             f"{count} records not written")
        log.error("journal.write_failed", file=active.path, error=_errno_text(failed.error), records=count,
                  offset=active.size, undo_error=failed.undo_error and _errno_text(failed.undo_error))
        if failed.undo_error is not None:
            # The files no longer match what the journal knows: refuse everything until a
            # restart re-verifies them.
            self._failed = JournalError(
                f"{self.directory}: could not undo a failed write ({_errno_text(failed.undo_error)}); the journal "
                "refuses appends until the daemon restarts and re-verifies it")
            self._fail_queue(self._failed)
        for pending in accepted:
            pending.result = None
            pending.fail(error)
        # Entries queued meanwhile are numbered at their own commit (appends), or refused
        # there if they no longer continue the journal (replicated records).

    def _publish(self, chunks: list[_Chunk], outcome: _WriteOutcome, seq: int, epoch: int) -> None:
        for chunk in chunks:
            if chunk.new_first_seq is not None:
                self._segments.append(_Segment(chunk.new_first_seq, chunk.prev_epoch,
                                               self.directory / segment_name(chunk.new_first_seq),
                                               SEGMENT_HEADER_SIZE, chunk.new_first_seq - 1))
                log.info("journal.segment_rolled", file=self._segments[-1].path, first_seq=chunk.new_first_seq)
            segment = self._segments[-1]
            for rseq, offset in chunk.index:
                segment.index_seqs.append(rseq)
                segment.index_offsets.append(offset)
            for rseq, repoch in chunk.epochs:
                self._epoch_starts.append(rseq)
                self._epoch_values.append(repoch)
            segment.size = chunk.end
            segment.last_seq = chunk.last_seq
            self._appends += chunk.count
        self._wfd = outcome.wfd
        self._fsyncs += outcome.fsyncs
        if outcome.fsync_ms is not None:
            self._last_fsync_ms = outcome.fsync_ms
            self.fsync_seconds.observe(outcome.fsync_ms / 1000)
        self._last = Position(epoch, seq)
        self._advanced.set()
        self._advanced = trio.Event()

    def _remember(self, accepted: list[_Pending], nbytes: int) -> None:
        """Keep a published batch's records for read() (see _TAIL_BYTES)."""
        records: Sequence[Record]
        if len(accepted) == 1:
            records = accepted[0].result or ()
        else:
            records = [record for pending in accepted for record in pending.result or ()]
        if not records:
            return
        tail = (*self._tail, (records[0].seq, records, nbytes))
        total = self._tail_bytes + nbytes
        while len(tail) > 1 and (total > _TAIL_BYTES or len(tail) > _TAIL_BATCHES):
            total -= tail[0][2]
            tail = tail[1:]
        self._tail, self._tail_bytes = tail, total

    def _forget_tail(self) -> None:
        self._tail, self._tail_bytes = (), 0

    async def _sync_dirty(self) -> None:
        """"batch" mode: fsync what was acknowledged since the last fsync."""
        wfd = self._wfd
        if wfd is None:
            return
        self._committing = True
        try:
            with trio.CancelScope(shield=True):
                started = time.perf_counter()
                try:
                    await trio.to_thread.run_sync(os.fsync, wfd, limiter=self._limiter)
                except OSError as exc:
                    # Those records were acknowledged already: they cannot be taken back,
                    # and after a failed fsync the page cache cannot be trusted either.
                    self._failed = JournalError(
                        f"{self._segments[-1].path}: fsync failed ({_errno_text(exc)}) after records were "
                        "acknowledged; the journal refuses appends until the daemon restarts and re-verifies it")
                    log.error("journal.fsync_failed", file=self._segments[-1].path, error=_errno_text(exc))
                    self._dirty = False
                    return
        finally:
            self._committing = False
        self._fsyncs += 1
        self._last_fsync_ms = (time.perf_counter() - started) * 1000
        self.fsync_seconds.observe(self._last_fsync_ms / 1000)
        self._last_fsync_at = trio.current_time()
        self._dirty = False

    # ------------------------------------------------------------------ reading

    def read(self, from_seq: int, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024) -> list[Record]:
        """Records from ``from_seq`` on (at most ``max_records``, and ``max_bytes`` of
        frames, but always at least one record when one exists). [] beyond the end.
        Raises JournalError when ``from_seq`` is no longer retained."""
        if self._closed:
            raise JournalError(f"{self.directory}: the journal is closed")
        if from_seq < self.first_seq:
            raise JournalError(f"seq {from_seq} is no longer retained (the journal starts at {self.first_seq})")
        last = self._last.seq
        tail = self._tail
        if tail and tail[0][0] <= from_seq <= last:
            return _read_tail(tail, from_seq, last, max_records, max_bytes)
        out: list[Record] = []
        seq = from_seq
        used = 0
        i = self._segment_index(seq)
        while len(out) < max_records and seq <= last and i < len(self._segments):
            segment = self._segments[i]
            if seq > segment.last_seq:
                i += 1
                continue
            fd = self._reader(segment)
            pos = self._offset_of(segment, seq)
            while len(out) < max_records and pos < segment.size and seq <= last:
                want = min(segment.size - pos, max(HEADER_SIZE, min(_READ_CHUNK, max_bytes - used)))
                data = os.pread(fd, want, pos)
                records, consumed, reason = decode_records(data)
                if not records:
                    need = self._frame_size_at(fd, pos, segment)
                    data = os.pread(fd, need, pos)
                    records, consumed, reason = decode_records(data)
                    if not records:
                        raise JournalError(f"{segment.path}: unreadable record at offset {pos} (seq {seq}): {reason}")
                for record in records:
                    size = HEADER_SIZE + len(record.payload)
                    if out and used + size > max_bytes:
                        return out
                    out.append(record)
                    used += size
                    seq = record.seq + 1
                    if len(out) >= max_records or seq > last:
                        return out
                pos += consumed
            i += 1
        return out

    def _segment_index(self, seq: int) -> int:
        firsts = [s.first_seq for s in self._segments]
        return max(0, bisect.bisect_right(firsts, seq) - 1)

    def _reader(self, segment: _Segment) -> int:
        if segment.read_fd is None:
            segment.read_fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        return segment.read_fd

    def _frame_size_at(self, fd: int, pos: int, segment: _Segment) -> int:
        length = frame_length(os.pread(fd, HEADER_SIZE, pos))
        if length is None:
            raise JournalError(f"{segment.path}: no record header at offset {pos}")
        return HEADER_SIZE + min(length, MAX_PAYLOAD)

    def _offset_of(self, segment: _Segment, seq: int) -> int:
        """Offset of record ``seq`` in ``segment`` (segment.size for last_seq + 1): from
        the nearest index entry, walking frame headers."""
        i = bisect.bisect_right(segment.index_seqs, seq) - 1
        if i < 0:
            pos, cur = SEGMENT_HEADER_SIZE, segment.first_seq
        else:
            pos, cur = segment.index_offsets[i], segment.index_seqs[i]
        fd = self._reader(segment)
        while cur < seq:
            pos += self._frame_size_at(fd, pos, segment)
            cur += 1
        return pos

    # ------------------------------------------------------------------ truncation and retention

    def _busy(self) -> bool:
        return bool(self._queue) or self._committing

    def truncate_after(self, seq: int) -> TruncateReport:
        """Remove every record after ``seq`` (a standby's tail that is not on the new
        primary's history), across segments, durably. Refused while appends are queued or
        being written, and below the retained range."""
        if self._closed:
            raise JournalError(f"{self.directory}: the journal is closed")
        if self._busy():
            raise JournalError("truncate_after refused: appends are in flight")
        previous = self._last
        if seq >= previous.seq:
            return TruncateReport(seq, 0, 0, 0, previous, previous)
        if seq < self.first_seq - 1:
            raise JournalError(f"cannot truncate after seq {seq}: records before {self.first_seq} are no longer "
                               "retained")
        self._forget_tail()
        removed_bytes = 0
        removed_segments = 0
        active_changed = False
        while True:
            segment = self._segments[-1]
            if segment.first_seq > seq + 1 or (segment.first_seq == seq + 1 and len(self._segments) > 1):
                segment.close_reader()
                os.unlink(segment.path)
                removed_bytes += segment.size
                removed_segments += 1
                self._segments.pop()
                active_changed = True
                continue
            offset = self._offset_of(segment, seq + 1)
            removed_bytes += segment.size - offset
            if active_changed:
                assert self._wfd is not None
                os.close(self._wfd)
                self._wfd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            assert self._wfd is not None
            os.ftruncate(self._wfd, offset)
            if self._durable:
                os.fsync(self._wfd)
                self._fsyncs += 1
            segment.size = offset
            segment.last_seq = seq
            segment.forget_after(seq)
            break
        if removed_segments and self._durable:
            os.fsync(self._dirfd)
            self._fsyncs += 1
        keep = bisect.bisect_right(self._epoch_starts, seq)
        keep = max(keep, 1)
        del self._epoch_starts[keep:]
        del self._epoch_values[keep:]
        self._last = Position(self._epoch_at_unchecked(seq), seq)
        self._max_epoch = self._last.epoch
        self._dirty = False
        report = TruncateReport(seq, previous.seq - seq, removed_bytes, removed_segments, previous, self._last)
        log.warning("journal.truncated", directory=self.directory, after_seq=seq,
                    records_removed=report.records_removed, bytes_removed=removed_bytes, segments_removed=removed_segments, previous_seq=previous.seq,
                    previous_epoch=previous.epoch, epoch=self._last.epoch)
        return report

    def remove_segments_through(self, seq: int, now: float | None = None) -> int:
        """Retention: remove the oldest closed segments whose records are all <= ``seq``
        (the caller passes a seq both nodes hold) while more than ``retain_segments``
        closed ones remain or they are older than ``retain_age`` (by mtime, against
        ``now``, default time.time()). Never the active segment. Returns how many."""
        if self._closed:
            raise JournalError(f"{self.directory}: the journal is closed")
        now = time.time() if now is None else now
        removed: list[_Segment] = []
        while len(self._segments) > 1:
            segment = self._segments[0]
            if segment.last_seq > seq:
                break
            closed_count = len(self._segments) - 1
            age = now - os.stat(segment.path).st_mtime
            if closed_count <= self.config.retain_segments and age <= self.config.retain_age:
                break
            segment.close_reader()
            os.unlink(segment.path)
            self._segments.pop(0)
            removed.append(segment)
        if removed:
            if self._durable:
                os.fsync(self._dirfd)
                self._fsyncs += 1
            log.info("journal.segments_removed", directory=self.directory, segments=len(removed),
                     through_seq=removed[-1].last_seq, first_seq=self.first_seq)
        return len(removed)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Refuse further appends, fail queued ones, and close the files (after the batch
        being written, if any). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_queue(JournalError(f"{self.directory}: the journal was closed before this record was written"))
        self._work.set()
        self._advanced.set()
        if not self._running:
            self._close_files()

    def _close_files(self) -> None:
        if self._wfd is not None:
            if self._dirty and self._failed is None:
                try:
                    os.fsync(self._wfd)
                    self._fsyncs += 1
                except OSError as exc:
                    log.error("journal.fsync_failed", file=self._segments[-1].path, error=_errno_text(exc))
                self._dirty = False
            os.close(self._wfd)
            self._wfd = None
        for segment in self._segments:
            segment.close_reader()
        if self._dirfd >= 0:
            os.close(self._dirfd)  # also releases the flock
            self._dirfd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _continuity_problem(records: Sequence[Record], expected_seq: int, min_epoch: int) -> str | None:
    """Why replicated ``records`` do not continue a journal ending before ``expected_seq``."""
    if not all(isinstance(record, Record) for record in records):
        return "not a sequence of Record"
    first = records[0]
    if first.seq > expected_seq:
        return f"gap: expected seq {expected_seq}, got {first.seq}"
    if first.seq < expected_seq:
        return f"overlap: expected seq {expected_seq}, got {first.seq} (already held)"
    seq, epoch = expected_seq - 1, min_epoch
    for record in records:
        if record.seq != seq + 1:
            return f"not consecutive: seq {record.seq} after {seq}"
        if record.epoch < epoch:
            return f"epoch went backwards at seq {record.seq}: {record.epoch} < {epoch}"
        if not isinstance(record.payload, bytes) or len(record.payload) > MAX_PAYLOAD:
            return f"bad payload at seq {record.seq}"
        seq, epoch = record.seq, record.epoch
    return None


def _replicated_problem(records: tuple[Record, ...], expected_seq: int, min_epoch: int) -> str | None:
    """Why a replicated batch cannot be queued: it does not continue the journal, or a
    record cannot be framed. The common case (consecutive seqs, one epoch, bytes
    payloads, int fields) is checked with whole-list operations; anything else goes
    through the record-by-record checks, which also say what is wrong."""
    count = len(records)
    if set(map(type, records)) == {Record}:
        seqs = [r.seq for r in records]
        epochs = [r.epoch for r in records]
        stamps = [r.timestamp_ns for r in records]
        payloads = [r.payload for r in records]
        if (seqs == list(range(expected_seq, expected_seq + count))
                and set(map(type, seqs)) == set(map(type, epochs)) == set(map(type, stamps)) == {int}
                and min_epoch <= epochs[0] and epochs[-1] < U64
                and (epochs.count(epochs[0]) == count or epochs == sorted(epochs))
                and set(map(type, payloads)) == {bytes} and max(map(len, payloads)) <= MAX_PAYLOAD
                and -I64 <= min(stamps) and max(stamps) < I64 and 0 < expected_seq and seqs[-1] < U64):
            return None
    problem = _continuity_problem(records, expected_seq, min_epoch)
    if problem:
        return f"replicated records refused: {problem}"
    for record in records:
        try:
            encode_record(record)
        except (ValueError, struct.error) as exc:
            return f"record refused: {exc}"
    return None


def _read_tail(tail: tuple[tuple[int, Sequence[Record], int], ...], from_seq: int, last: int, max_records: int,
               max_bytes: int) -> list[Record]:
    """Journal.read served from the in-memory tail (same limits, same answer)."""
    out: list[Record] = []
    used = 0
    seq = from_seq
    for first, records, _nbytes in tail:
        if seq > first + len(records) - 1:
            continue
        start = seq - first
        take = records[start:start + max_records - len(out)]
        if not take:
            break
        size = HEADER_SIZE * len(take) + sum([len(r.payload) for r in take])
        if used + size <= max_bytes:
            out += take
            used += size
        else:
            for record in take:
                size = HEADER_SIZE + len(record.payload)
                if out and used + size > max_bytes:
                    return out
                out.append(record)
                used += size
            return out
        seq = take[-1].seq + 1
        if len(out) >= max_records or seq > last:
            break
    return out


# --------------------------------------------------------------------------- recovery


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(directory):
        first_seq = parse_segment_name(entry.name)
        if first_seq is not None and entry.is_file(follow_symlinks=False):
            found.append((first_seq, directory / entry.name))
    return sorted(found)


def _create_segment(directory: Path, dirfd: int, first_seq: int, prev_epoch: int, durable: bool) -> _Segment:
    path = directory / segment_name(first_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, DATA_FILE_MODE)
    try:
        os.fchmod(fd, DATA_FILE_MODE)  # 0640 whatever the umask
        _write_all(fd, encode_segment_header(first_seq, prev_epoch))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if durable:
        os.fsync(dirfd)
    return _Segment(first_seq, prev_epoch, path, SEGMENT_HEADER_SIZE, first_seq - 1)


def _corrupt(path: Path, offset: int, seq: int, reason: str, detail: str) -> JournalCorrupt:
    return JournalCorrupt(f"{path}: corrupt journal at offset {offset} (record seq {seq} expected there): "
                          f"{reason}; {detail}; {_OPERATOR_HINT}")


def _recover(directory: Path, dirfd: int,
             durable: bool) -> tuple[list[_Segment], list[int], list[int], list[RecoveryReport]]:
    """Verify every segment; cut a damaged tail of the last one. Returns the segments,
    the epoch change list and what was cut."""
    found = _list_segments(directory)
    recoveries: list[RecoveryReport] = []
    if found:
        # A roll-over that crashed before its header was complete leaves a short file.
        first_seq, path = found[-1]
        size = path.stat().st_size
        if size <= SEGMENT_HEADER_SIZE and decode_segment_header(path.read_bytes()) is None:
            if len(found) == 1 and first_seq != 1:
                raise JournalCorrupt(f"{path}: the only segment has a damaged header; the journal's start "
                                     f"(epoch before seq {first_seq}) is unknown; {_OPERATOR_HINT}")
            os.unlink(path)
            if durable:
                os.fsync(dirfd)
            report = RecoveryReport(path, 0, 0, size, "unfinished segment removed", 0)
            log.warning("journal.tail_truncated", file=path, records_kept=0, records_dropped=0, bytes_dropped=size,
                        reason=report.reason, offset=0)
            recoveries.append(report)
            found.pop()
    if not found:
        segment = _create_segment(directory, dirfd, 1, 0, durable)
        return [segment], [0], [0], recoveries

    segments: list[_Segment] = []
    starts: list[int] = []
    values: list[int] = []
    for n, (name_seq, path) in enumerate(found):
        is_last = n == len(found) - 1
        segment, scanned = _scan_segment(path, name_seq, segments[-1] if segments else None, starts, values,
                                         is_last, durable)
        segments.append(segment)
        if scanned is not None:
            recoveries.append(scanned)
    return segments, starts, values, recoveries


def _scan_segment(path: Path, name_seq: int, previous: _Segment | None, starts: list[int], values: list[int],
                  is_last: bool, durable: bool, repair: bool = True) -> tuple[_Segment, RecoveryReport | None]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(SEGMENT_HEADER_SIZE)
        parsed = decode_segment_header(head)
        if parsed is None:
            raise _corrupt(path, 0, name_seq, "bad segment header", "the file does not start with a valid header")
        first_seq, prev_epoch = parsed
        if first_seq != name_seq:
            raise _corrupt(path, 0, name_seq, "misnamed segment", f"its header says it starts at seq {first_seq}")
        if previous is not None:
            if first_seq != previous.last_seq + 1:
                raise _corrupt(path, 0, previous.last_seq + 1, "seq gap between segments",
                               f"{previous.path.name} ends at seq {previous.last_seq}")
            prev_values_epoch = values[-1]
            if prev_epoch != prev_values_epoch:
                raise _corrupt(path, 0, first_seq, "epoch mismatch between segments",
                               f"the header says epoch {prev_epoch} before it, {previous.path.name} ends at "
                               f"epoch {prev_values_epoch}")
        else:
            starts.append(first_seq - 1)
            values.append(prev_epoch)
        segment = _Segment(first_seq, prev_epoch, path, SEGMENT_HEADER_SIZE, first_seq - 1)
        if size == SEGMENT_HEADER_SIZE:
            return segment, None
        with mmap.mmap(f.fileno(), 0, _MMAP_FLAGS, mmap.PROT_READ) as mm:
            scan = scan_frames(mm, SEGMENT_HEADER_SIZE, size, first_seq - 1, values[-1],
                               index_every_records=_INDEX_EVERY_RECORDS, index_every_bytes=_INDEX_EVERY_BYTES)
            for rseq, repoch in scan.epochs:
                starts.append(rseq)
                values.append(repoch)
            for rseq, offset in scan.index:
                segment.index_seqs.append(rseq)
                segment.index_offsets.append(offset)
            pos, seq, kept, reason = scan.end, scan.last_seq, scan.records, scan.reason
            segment.last_seq = seq
            segment.size = pos
            if reason is None:
                return segment, None
            damage = judge_damage(mm, scan, size, is_last=is_last)
            if damage.corruption is not None:
                raise _corrupt(path, pos, seq + 1, reason, damage.corruption)
            dropped = damage.dropped
    if not repair:  # `lifeline journal verify`: say what open() would cut, change nothing
        return segment, RecoveryReport(path, kept, dropped, size - pos, reason, pos)
    # Cut the torn tail.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, pos)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    report = RecoveryReport(path, kept, dropped, size - pos, reason, pos)
    log.warning("journal.tail_truncated", file=path, records_kept=kept, records_dropped=dropped,
                bytes_dropped=size - pos, reason=reason, offset=pos, last_seq=seq)
    return segment, report


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyReport:
    """What `lifeline journal verify` found, without changing a byte."""

    directory: Path
    segments: int
    records: int
    first_seq: int
    last: Position
    #: A torn tail the next open would cut (not an error: the daemon repairs it).
    torn_tail: RecoveryReport | None
    #: Damage the daemon would refuse to start on.
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.torn_tail is None

    def lines(self) -> list[str]:
        out = [f"{self.directory}: {self.segments} segment(s), {self.records} record(s), "
               f"seq {self.first_seq}..{self.last.seq}, last epoch {self.last.epoch}"]
        if self.torn_tail is not None:
            t = self.torn_tail
            out.append(f"TORN TAIL: {t.file} at offset {t.offset}: {t.reason}; {t.records_dropped} record(s), "
                       f"{t.bytes_dropped} byte(s) would be cut when the daemon next opens the journal")
        if self.problem is not None:
            out.append(f"CORRUPT: {self.problem}")
        if self.ok:
            out.append("OK: every record's checksum, sequence and epoch verified")
        return out


def verify_directory(directory: Path) -> VerifyReport:
    """Scan every segment of a journal directory read-only (the daemon may be running:
    only complete, durable records are judged)."""
    directory = Path(directory)
    if not directory.is_dir():
        return VerifyReport(directory, 0, 0, 1, Position(0, 0), None, f"{directory}: no such journal directory")
    found = _list_segments(directory)
    segments: list[_Segment] = []
    starts: list[int] = []
    values: list[int] = []
    torn: RecoveryReport | None = None
    try:
        for n, (name_seq, path) in enumerate(found):
            segment, report = _scan_segment(path, name_seq, segments[-1] if segments else None, starts, values,
                                            n == len(found) - 1, durable=False, repair=False)
            segments.append(segment)
            torn = report or torn
    except JournalCorrupt as exc:
        problem: str | None = str(exc)
    else:
        problem = None
    first = segments[0].first_seq if segments else 1
    last_seq = segments[-1].last_seq if segments else 0
    records = sum(s.last_seq - s.first_seq + 1 for s in segments)
    last_epoch = values[-1] if values else 0
    return VerifyReport(directory, len(found), records, first, Position(last_epoch, last_seq), torn, problem)
