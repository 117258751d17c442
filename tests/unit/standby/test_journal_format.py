"""The journal's on-disk format as a sans-IO module: a whole segment's bytes in, the scan's
verdict out (where the valid prefix ends, why, torn tail or corruption). No files here:
tests/integration/standby/test_journal_files.py checks the same rules through Journal.open."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.standby import Record
from daemon.standby.journal_format import (
    HEADER_SIZE,
    ORDER_REASONS,
    REASONS,
    SEGMENT_HEADER_SIZE,
    count_damaged,
    decode_segment_header,
    encode_record,
    encode_segment_header,
    frame_length,
    judge_damage,
    parse_segment_name,
    scan_frames,
    segment_name,
)

EVERY_RECORDS = 3
EVERY_BYTES = 200


@st.composite
def segments(draw: st.DrawFn, min_records: int = 0) -> tuple[bytes, list[Record], list[int], int]:
    """A segment's bytes: a header, then records continuing ``first_seq - 1`` with epochs
    that never go down. Returns (bytes, records, each record's offset, prev_epoch)."""
    first_seq = draw(st.integers(1, 2**40))
    prev_epoch = draw(st.integers(0, 2**40))
    count = draw(st.integers(min_records, 8))
    records, offsets = [], []
    epoch, offset = prev_epoch, SEGMENT_HEADER_SIZE
    for seq in range(first_seq, first_seq + count):
        epoch += draw(st.sampled_from([0, 0, 0, 1, 7]))
        record = Record(seq, epoch, draw(st.integers(-(2**63), 2**63 - 1)), draw(st.binary(max_size=120)))
        records.append(record)
        offsets.append(offset)
        offset += HEADER_SIZE + len(record.payload)
    data = encode_segment_header(first_seq, prev_epoch) + b"".join(encode_record(r) for r in records)
    return data, records, offsets, prev_epoch


def scan(data: bytes, end: int | None = None):  # type: ignore[no-untyped-def]
    first_seq, prev_epoch = decode_segment_header(data)  # type: ignore[misc]
    return scan_frames(data, SEGMENT_HEADER_SIZE, len(data) if end is None else end, first_seq - 1, prev_epoch,
                       index_every_records=EVERY_RECORDS, index_every_bytes=EVERY_BYTES)


# ------------------------------------------------------------------ round trips


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_segment_header_round_trip(first_seq: int, prev_epoch: int) -> None:
    head = encode_segment_header(first_seq, prev_epoch)
    assert len(head) == SEGMENT_HEADER_SIZE
    assert decode_segment_header(head) == (first_seq, prev_epoch)
    assert decode_segment_header(head + b"records follow") == (first_seq, prev_epoch)


@given(st.integers(0, 2**64 - 1), st.data())
def test_segment_header_any_flipped_byte_or_cut_is_refused(first_seq: int, data: st.DataObject) -> None:
    head = bytearray(encode_segment_header(first_seq, 3))
    index = data.draw(st.integers(0, SEGMENT_HEADER_SIZE - 1))
    head[index] ^= data.draw(st.integers(1, 255))
    assert decode_segment_header(bytes(head)) is None
    assert decode_segment_header(encode_segment_header(first_seq, 3)[:index]) is None


@given(st.integers(0, 10**20 - 1))
def test_segment_name_round_trip(first_seq: int) -> None:
    assert parse_segment_name(segment_name(first_seq)) == first_seq
    for other in (segment_name(first_seq) + ".tmp", "x" + segment_name(first_seq), "1.seg", "lock"):
        assert parse_segment_name(other) is None


@given(segments())
def test_scan_of_a_whole_segment_finds_every_record(segment: tuple[bytes, list[Record], list[int], int]) -> None:
    data, records, offsets, prev_epoch = segment
    result = scan(data)
    assert result.reason is None and result.detail == ""
    assert result.end == len(data) and result.records == len(records)
    last = records[-1] if records else None
    assert (result.last_seq, result.last_epoch) == ((last.seq, last.epoch) if last else
                                                    (decode_segment_header(data)[0] - 1, prev_epoch))  # type: ignore[index]
    # epoch changes: exactly where a record's epoch differs from the one before it
    before = [prev_epoch] + [r.epoch for r in records]
    assert result.epochs == [(r.seq, r.epoch) for r, e in zip(records, before) if r.epoch != e]
    # the sparse index: the first record, then every EVERY_RECORDS records or EVERY_BYTES bytes
    model: list[tuple[int, int]] = []
    for record, offset in zip(records, offsets):
        if not model or record.seq - model[-1][0] >= EVERY_RECORDS or offset - model[-1][1] >= EVERY_BYTES:
            model.append((record.seq, offset))
    assert result.index == model
    assert scan(bytearray(data)) == result  # type: ignore[arg-type]


# ------------------------------------------------------------------ the tail: truncation and flipped bytes


@settings(max_examples=300)
@given(segments(min_records=1), st.data())
def test_any_truncation_is_a_torn_tail_at_the_last_whole_record(
        segment: tuple[bytes, list[Record], list[int], int], data: st.DataObject) -> None:
    blob, records, offsets, _ = segment
    cut = data.draw(st.integers(SEGMENT_HEADER_SIZE, len(blob)))
    short = blob[:cut]
    boundaries = [*offsets, len(blob)]
    whole = max(i for i, b in enumerate(boundaries) if b <= cut)  # records entirely before the cut
    result = scan(short)
    assert result.end == boundaries[whole]
    assert result.records == whole
    if cut == boundaries[whole]:
        assert result.reason is None
        return
    assert result.reason == "torn"
    damage = judge_damage(short, result, len(short), is_last=True)
    assert damage.corruption is None  # nothing valid follows: the journal may cut there
    assert damage.dropped == 1
    closed = judge_damage(short, result, len(short), is_last=False)
    assert closed.corruption == "the damage is in a closed segment, not the tail"


@settings(max_examples=500)
@given(segments(min_records=1), st.data())
def test_any_flipped_byte_stops_the_scan_at_its_record(
        segment: tuple[bytes, list[Record], list[int], int], data: st.DataObject) -> None:
    blob, records, offsets, _ = segment
    k = data.draw(st.integers(0, len(records) - 1), label="damaged record")
    frame_end = offsets[k + 1] if k + 1 < len(records) else len(blob)
    index = data.draw(st.integers(offsets[k], frame_end - 1), label="byte")
    damaged = bytearray(blob)
    damaged[index] ^= data.draw(st.integers(1, 255), label="mask")
    result = scan(bytes(damaged))
    assert result.end == offsets[k]
    assert result.records == k
    assert result.reason in REASONS
    if k > 0:
        assert (result.last_seq, result.last_epoch) == (records[k - 1].seq, records[k - 1].epoch)
    damage = judge_damage(bytes(damaged), result, len(damaged), is_last=True)
    if k + 1 < len(records):
        assert damage.corruption == f"a valid record follows at offset {offsets[k + 1]}, so this is not a torn tail"
    else:
        assert damage.corruption is None  # the last record damaged: a torn tail


@given(segments(min_records=2), st.data())
def test_a_valid_record_out_of_order_is_corruption_wherever_it_is(
        segment: tuple[bytes, list[Record], list[int], int], data: st.DataObject) -> None:
    blob, records, offsets, _ = segment
    k = data.draw(st.integers(1, len(records) - 1))
    bad_seq = data.draw(st.integers(0, 2**64 - 1).filter(lambda s: s != records[k].seq))
    replaced = Record(bad_seq, records[k].epoch, records[k].timestamp_ns, records[k].payload)
    frame_end = offsets[k + 1] if k + 1 < len(records) else len(blob)
    mixed = blob[:offsets[k]] + encode_record(replaced) + blob[frame_end:]
    result = scan(mixed)
    assert (result.end, result.records, result.reason) == (offsets[k], k, "seq out of order")
    assert result.detail == f"a valid record there has seq {bad_seq}"
    for is_last in (True, False):
        assert judge_damage(mixed, result, len(mixed), is_last=is_last).corruption == result.detail


@given(segments(min_records=2), st.data())
def test_a_lower_epoch_is_corruption_wherever_it_is(
        segment: tuple[bytes, list[Record], list[int], int], data: st.DataObject) -> None:
    blob, records, offsets, _ = segment
    k = data.draw(st.integers(1, len(records) - 1))
    if records[k - 1].epoch == 0:
        return
    lower = data.draw(st.integers(0, records[k - 1].epoch - 1))
    replaced = Record(records[k].seq, lower, records[k].timestamp_ns, records[k].payload)
    frame_end = offsets[k + 1] if k + 1 < len(records) else len(blob)
    mixed = blob[:offsets[k]] + encode_record(replaced) + blob[frame_end:]
    result = scan(mixed)
    assert (result.end, result.reason) == (offsets[k], "epoch went backwards")
    assert result.reason in ORDER_REASONS
    assert judge_damage(mixed, result, len(mixed), is_last=True).corruption == (
        f"a valid record there has epoch {lower} after epoch {records[k - 1].epoch}")


@settings(max_examples=200)
@given(segments(), st.binary(max_size=300))
def test_garbage_after_a_segment_never_raises(segment: tuple[bytes, list[Record], list[int], int],
                                              garbage: bytes) -> None:
    blob, records, _, _ = segment
    data = blob + garbage
    result = scan(data)
    assert result.records >= len(records) and result.end >= len(blob)
    if result.reason is not None:
        judge_damage(data, result, len(data), is_last=True)  # a verdict, never an exception
        assert 0 <= count_damaged(data, result.end, len(data)) <= len(data)


def test_unknown_version_with_a_valid_checksum_is_never_a_torn_tail() -> None:
    import crc32c

    frame = bytearray(encode_record(Record(1, 0, 0, b"from a newer lifeline")))
    frame[6] = 2  # version
    frame[2:6] = crc32c.crc32c(bytes(frame[6:])).to_bytes(4, "little")
    data = encode_segment_header(1, 0) + bytes(frame)
    result = scan(data)
    assert (result.end, result.reason) == (SEGMENT_HEADER_SIZE, "bad version")
    assert judge_damage(data, result, len(data), is_last=True).corruption is not None


def test_frame_length_and_judge_refuses_a_clean_scan() -> None:
    frame = encode_record(Record(1, 0, 0, b"abc"))
    assert frame_length(frame) == 3
    assert frame_length(frame[:HEADER_SIZE - 1]) is None
    assert frame_length(b"XX" + frame[2:]) is None
    data = encode_segment_header(1, 0) + frame
    with pytest.raises(ValueError):
        judge_damage(data, scan(data), len(data), is_last=True)
