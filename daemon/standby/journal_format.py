"""The journal's on-disk format, sans-IO: record frames, segment headers, the scan of a
segment's bytes that says where its valid prefix ends, and the torn-tail rule.

No file and no trio here: every function takes bytes (or an mmap of a segment) and
returns values. :mod:`daemon.standby.journal` owns the files, the fsyncs and the
:class:`~daemon.standby.journal.Journal` class, and turns a verdict from here into a cut
(a torn tail) or a :class:`~daemon.standby.JournalCorrupt` naming the file.

On-disk format (all integers little-endian)
-------------------------------------------
Segment header, 28 bytes, at offset 0 of every segment::

    magic "LLJSEG" | version u16 = 1 | first_seq u64 | prev_epoch u64 | crc32c u32

``prev_epoch`` is the epoch of record ``first_seq - 1`` (0 if none): the journal still
knows where it ends, ``Position(prev_epoch, first_seq - 1)``, when retention or
truncation left a segment without records. The CRC covers the 24 bytes before it.

Record frame, 36-byte header then the payload::

    magic "LJ" | crc32c u32 | version u8 = 1 | flags u8 = 0 | length u32
               | seq u64 | epoch u64 | timestamp_ns i64 | payload (length bytes)

The CRC covers everything after itself (version ... payload, one contiguous range), so a
flipped bit in the seq, epoch, timestamp, length or payload is caught. ``length`` is at
most :data:`MAX_PAYLOAD`; a version or flag this code does not know, *with a valid CRC*,
is a record from a newer lifeline and is never truncated away.

A segment file is named by the seq of its first record: ``00000000000000000001.seg``.

Torn tail versus corruption (:func:`judge_damage`)
---------------------------------------------------
Damage is a torn tail only when it is in the active (last) segment and **no valid record
follows it** in that file. A valid record after the damage means the damage is in the
middle of the history; damage in a closed segment is always corruption; a record with a
valid CRC that breaks seq continuity, lowers the epoch or has an unknown version or flag
is corruption wherever it is.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from typing import Final, Union

from crc32c import crc32c

from daemon.standby import MAX_PAYLOAD, Record

# --------------------------------------------------------------------------- record frames

MAGIC: Final = b"LJ"
VERSION: Final = 1
#: magic, crc, version, flags, length, seq, epoch, timestamp_ns
FRAME_HEADER: Final = struct.Struct("<2sIBBIQQq")
#: The header after magic and crc: what the CRC starts with.
FRAME_BODY: Final = struct.Struct("<BBIQQq")
CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = FRAME_HEADER.size  # 36
_CRC_FROM: Final = 6  # the CRC covers bytes [6, end of payload) of a frame
_SEQ_EPOCH: Final = struct.Struct("<QQ")
_SEQ_AT: Final = 12  # offset of seq (then epoch) in a frame

#: Exclusive upper bounds of the u64 fields (seq, epoch) and of |i64| (timestamp_ns).
U64: Final = 2**64
I64: Final = 2**63

#: Why decoding stopped before the end of the buffer. "torn" means "the rest is an
#: incomplete frame" (a streaming caller waits for more bytes; a file has a torn tail).
REASONS: Final = ("torn", "bad magic", "bad length", "bad crc", "bad version", "bad flags")
#: Why a scan of a segment stopped at a record with a valid CRC that does not continue
#: the ones before it (see :func:`scan_frames`).
ORDER_REASONS: Final = ("seq out of order", "epoch went backwards")
#: A record with a valid CRC in a format this code does not know: never a torn tail.
_NEWER_FORMAT: Final = ("bad version", "bad flags")

#: What the scan functions read: a segment's bytes, or an mmap of its file.
Buffer = Union[bytes, bytearray, mmap.mmap]


def encode_record(record: Record) -> bytes:
    """The frame of one record. Raises ValueError for a record that cannot be framed
    (negative or oversized fields, a payload over MAX_PAYLOAD): that is the caller's bug."""
    payload = record.payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ValueError(f"payload must be bytes, not {type(payload).__name__}")
    length = len(payload)
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds MAX_PAYLOAD ({MAX_PAYLOAD})")
    if not 0 <= record.seq < U64 or not 0 <= record.epoch < U64:
        raise ValueError(f"seq and epoch must fit u64: seq={record.seq} epoch={record.epoch}")
    if not -I64 <= record.timestamp_ns < I64:
        raise ValueError(f"timestamp_ns must fit i64: {record.timestamp_ns}")
    body = FRAME_BODY.pack(VERSION, 0, length, record.seq, record.epoch, record.timestamp_ns)
    crc = crc32c(payload, crc32c(body))
    return b"".join((MAGIC, CRC.pack(crc), body, payload))


def frame_size(record: Record) -> int:
    """Bytes the record takes on disk and on the wire."""
    return HEADER_SIZE + len(record.payload)


def frame_length(header: bytes) -> int | None:
    """The payload length a frame header claims, or None when ``header`` is not the start
    of a frame (short, or without the magic). Not checked against MAX_PAYLOAD."""
    if len(header) < HEADER_SIZE or header[:len(MAGIC)] != MAGIC:
        return None
    length: int = FRAME_HEADER.unpack_from(header)[4]
    return length


def check_frame(mv: memoryview, pos: int, end: int) -> tuple[str | None, int]:
    """Whether a whole, valid frame starts at ``pos`` in ``mv[:end]`` (a byte view):
    (None, its size) or (one of :data:`REASONS`, 0)."""
    rem = end - pos
    if rem < HEADER_SIZE:
        n = min(rem, len(MAGIC))
        return ("torn" if mv[pos:pos + n] == MAGIC[:n] else "bad magic"), 0
    magic, crc, version, flags, length, _seq, _epoch, _ts = FRAME_HEADER.unpack_from(mv, pos)
    if magic != MAGIC:
        return "bad magic", 0
    if length > MAX_PAYLOAD:
        return "bad length", 0
    size: int = HEADER_SIZE + length
    if rem < size:
        return "torn", 0
    if crc32c(mv[pos + _CRC_FROM:pos + size]) != crc:
        return "bad crc", 0
    if version != VERSION:
        return "bad version", 0
    if flags:
        return "bad flags", 0
    return None, size


def _byte_view(raw: memoryview) -> memoryview:
    return raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")


def decode_records(buffer: bytes | bytearray | memoryview, offset: int = 0) -> tuple[list[Record], int, str | None]:
    """Decode whole frames from ``buffer[offset:]``.

    Returns (records, bytes consumed from ``offset``, reason): the reason is None when
    every byte was consumed, else why decoding stopped (one of :data:`REASONS`). Never
    raises on the buffer's content; it does not check seq continuity (the journal does).
    """
    with memoryview(buffer) as raw:
        mv = _byte_view(raw)
        end = len(mv)
        if not 0 <= offset <= end:
            raise ValueError(f"offset {offset} outside a buffer of {end} bytes")
        records: list[Record] = []
        pos = offset
        reason: str | None = None
        while pos < end:
            reason, size = check_frame(mv, pos, end)
            if reason is not None:
                break
            _m, _c, _v, _f, length, seq, epoch, ts = FRAME_HEADER.unpack_from(mv, pos)
            records.append(Record(seq, epoch, ts, bytes(mv[pos + HEADER_SIZE:pos + size])))
            pos += size
        return records, pos - offset, reason


# --------------------------------------------------------------------------- segment headers and names

SEGMENT_MAGIC: Final = b"LLJSEG"
SEGMENT_VERSION: Final = 1
_SEG_HEADER: Final = struct.Struct("<6sHQQ")
SEGMENT_HEADER_SIZE: Final = _SEG_HEADER.size + CRC.size  # 28
SEGMENT_NAME: Final = re.compile(r"(\d{20})\.seg")


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    """The first seq a segment file's name says, or None for any other file name."""
    match = SEGMENT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def encode_segment_header(first_seq: int, prev_epoch: int) -> bytes:
    head = _SEG_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, first_seq, prev_epoch)
    return head + CRC.pack(crc32c(head))


def decode_segment_header(data: bytes | memoryview) -> tuple[int, int] | None:
    """(first_seq, prev_epoch), or None when the header is short or damaged."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return None
    head = bytes(data[:_SEG_HEADER.size])
    magic, version, first_seq, prev_epoch = _SEG_HEADER.unpack(head)
    (crc,) = CRC.unpack_from(data, _SEG_HEADER.size)
    if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION or crc32c(head) != crc:
        return None
    return first_seq, prev_epoch


# --------------------------------------------------------------------------- scanning a segment


@dataclass
class FrameScan:
    """Where the valid prefix of a segment's records ends, and what it holds."""

    #: Offset where the valid prefix ends: the scan's ``end`` when every frame verified,
    #: else the start of the first frame refused.
    end: int
    #: The last valid record's seq and epoch (the scan's start values when none).
    last_seq: int
    last_epoch: int
    records: int
    #: Why the scan stopped before ``end`` (one of :data:`REASONS` or
    #: :data:`ORDER_REASONS`), None when it did not.
    reason: str | None = None
    #: For :data:`ORDER_REASONS`: what the record at ``end`` holds instead.
    detail: str = ""
    #: Sparse index entries ``(seq, offset)``: the first record, then one every
    #: ``index_every_records`` records or ``index_every_bytes`` bytes.
    index: list[tuple[int, int]] = field(default_factory=list)
    #: ``(seq, epoch)`` where a record's epoch differs from the one before it.
    epochs: list[tuple[int, int]] = field(default_factory=list)


def scan_frames(buffer: Buffer, start: int, end: int, seq: int, epoch: int, *, index_every_records: int,
                index_every_bytes: int) -> FrameScan:
    """Verify the frames in ``buffer[start:end]``: each must be whole and valid
    (:func:`check_frame`), follow seq ``seq`` by one and not lower ``epoch``. Stops at the
    first frame that is not; never raises on the buffer's content."""
    with memoryview(buffer) as raw:
        mv = _byte_view(raw)
        if not 0 <= start <= end <= len(mv):
            raise ValueError(f"range [{start}, {end}) outside a buffer of {len(mv)} bytes")
        scan = FrameScan(start, seq, epoch, 0)
        index, epochs = scan.index, scan.epochs
        idx_seq, idx_off = 0, 0
        pos, kept = start, 0
        unpack_seq_epoch = _SEQ_EPOCH.unpack_from
        while pos < end:
            reason, fsize = check_frame(mv, pos, end)
            if reason is not None:
                scan.reason = reason
                break
            rseq, repoch = unpack_seq_epoch(mv, pos + _SEQ_AT)
            if rseq != seq + 1:
                scan.reason, scan.detail = "seq out of order", f"a valid record there has seq {rseq}"
                break
            if repoch < epoch:
                scan.reason = "epoch went backwards"
                scan.detail = f"a valid record there has epoch {repoch} after epoch {epoch}"
                break
            if repoch != epoch:
                epochs.append((rseq, repoch))
            if not index or rseq - idx_seq >= index_every_records or pos - idx_off >= index_every_bytes:
                index.append((rseq, pos))
                idx_seq, idx_off = rseq, pos
            seq, epoch = rseq, repoch
            kept += 1
            pos += fsize
        scan.end, scan.last_seq, scan.last_epoch, scan.records = pos, seq, epoch, kept
        return scan


def valid_frame_after(buffer: Buffer, start: int, end: int) -> int | None:
    """Offset of the first whole, valid frame at or after ``start`` (before ``end``), if any."""
    with memoryview(buffer) as raw:
        mv = _byte_view(raw)
        pos = start
        while pos < end:
            found = buffer.find(MAGIC, pos, end)
            if found < 0:
                return None
            if check_frame(mv, found, end)[0] is None:
                return found
            pos = found + 1
        return None


def count_damaged(buffer: Buffer, pos: int, end: int) -> int:
    """Records recognisable in a damaged tail: frames whose header starts with the magic
    and whose length is plausible, one after the other (garbage and zeros count 0)."""
    with memoryview(buffer) as raw:
        mv = _byte_view(raw)
        count = 0
        while pos < end:
            n = min(end - pos, len(MAGIC))
            if mv[pos:pos + n] != MAGIC[:n]:
                break
            count += 1
            if end - pos < HEADER_SIZE:
                break
            length: int = FRAME_HEADER.unpack_from(mv, pos)[4]
            if length > MAX_PAYLOAD:
                break
            pos += HEADER_SIZE + length
        return count


@dataclass(frozen=True)
class Damage:
    """The verdict on a scan that stopped before the end of its segment."""

    #: Why this is corruption (the daemon refuses to start), or None for a torn tail that
    #: may be cut at the scan's ``end``.
    corruption: str | None
    #: Records recognisable in the bytes a cut drops (0 when the verdict is corruption).
    dropped: int = 0


def judge_damage(buffer: Buffer, scan: FrameScan, end: int, *, is_last: bool) -> Damage:
    """Torn tail or corruption, for a ``scan`` of ``buffer[...:end]`` that stopped early
    (see the module docstring for the rule)."""
    if scan.reason is None:
        raise ValueError("judge_damage: the scan found no damage")
    if scan.reason in ORDER_REASONS:
        return Damage(scan.detail)
    if scan.reason in _NEWER_FORMAT:
        return Damage("a record with a valid checksum in a format this lifeline does not know (written by a "
                      "newer version?)")
    if not is_last:
        return Damage("the damage is in a closed segment, not the tail")
    following = valid_frame_after(buffer, scan.end + 1, end)
    if following is not None:
        return Damage(f"a valid record follows at offset {following}, so this is not a torn tail")
    return Damage(None, count_damaged(buffer, scan.end, end))
