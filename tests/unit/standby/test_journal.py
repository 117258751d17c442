"""The journal's record codec and segment header: pure bytes, no files."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.standby import MAX_PAYLOAD, Record
from daemon.standby.journal import (
    HEADER_SIZE,
    MAGIC,
    REASONS,
    SEGMENT_HEADER_SIZE,
    decode_records,
    decode_segment_header,
    encode_record,
    encode_segment_header,
    frame_size,
)

RECORDS = [
    Record(1, 1, 1_700_000_000_000_000_000, b"first"),
    Record(2, 1, 1_700_000_000_000_000_001, b""),
    Record(3, 2, -5, bytes(range(256)) * 3),
    Record(2**64 - 1, 2**64 - 1, 2**63 - 1, b"\x00" * 10),
]

records_st = st.builds(
    Record,
    seq=st.integers(0, 2**64 - 1),
    epoch=st.integers(0, 2**64 - 1),
    timestamp_ns=st.integers(-(2**63), 2**63 - 1),
    payload=st.binary(max_size=300),
)

# Byte ranges of each header field in a frame (see the module docstring).
FIELDS = {
    "magic": (0, 2),
    "crc": (2, 6),
    "version": (6, 7),
    "flags": (7, 8),
    "length": (8, 12),
    "seq": (12, 20),
    "epoch": (20, 28),
    "timestamp": (28, 36),
}


def stream_decode(chunks: list[bytes]) -> tuple[list[Record], list[str | None]]:
    """Feed chunks like a socket would; keep the unconsumed rest (h11 style)."""
    buffer = b""
    out: list[Record] = []
    reasons: list[str | None] = []
    for chunk in chunks:
        buffer += chunk
        records, consumed, reason = decode_records(buffer)
        out.extend(records)
        reasons.append(reason)
        buffer = buffer[consumed:]
        assert reason in (None, "torn"), reason
        assert (reason is None) == (buffer == b"")
    return out, reasons


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("record", RECORDS)
def test_round_trip(record: Record) -> None:
    frame = encode_record(record)
    assert len(frame) == frame_size(record) == HEADER_SIZE + len(record.payload)
    assert decode_records(frame) == ([record], len(frame), None)


@given(st.lists(records_st, max_size=8))
def test_round_trip_many(records: list[Record]) -> None:
    data = b"".join(encode_record(r) for r in records)
    assert decode_records(data) == (records, len(data), None)


def test_max_payload_round_trips_and_larger_is_refused() -> None:
    big = Record(1, 1, 0, b"\xab" * MAX_PAYLOAD)
    frame = encode_record(big)
    assert decode_records(frame) == ([big], len(frame), None)
    with pytest.raises(ValueError):
        encode_record(Record(1, 1, 0, b"\xab" * (MAX_PAYLOAD + 1)))


@pytest.mark.parametrize(
    "record",
    [Record(-1, 0, 0, b""), Record(2**64, 0, 0, b""), Record(0, -1, 0, b""), Record(0, 2**64, 0, b""),
     Record(0, 0, 2**63, b""), Record(0, 0, -(2**63) - 1, b""), Record(0, 0, 0, "text")],  # type: ignore[arg-type]
)
def test_encode_refuses_fields_that_do_not_fit(record: Record) -> None:
    with pytest.raises(ValueError):
        encode_record(record)


def test_layout_is_fixed() -> None:
    frame = encode_record(Record(7, 3, 42, b"abc"))
    magic, crc, version, flags, length, seq, epoch, ts = struct.unpack_from("<2sIBBIQQq", frame)
    assert (magic, version, flags, length, seq, epoch, ts) == (MAGIC, 1, 0, 3, 7, 3, 42)
    assert frame[HEADER_SIZE:] == b"abc"
    import crc32c

    assert crc == crc32c.crc32c(frame[6:])


def test_decode_accepts_memoryview_bytearray_and_offset() -> None:
    data = b"junk" + encode_record(RECORDS[0]) + encode_record(RECORDS[1])
    expected = ([RECORDS[0], RECORDS[1]], len(data) - 4, None)
    assert decode_records(data, 4) == expected
    assert decode_records(memoryview(data), 4) == expected
    assert decode_records(bytearray(data), 4) == expected
    assert decode_records(data, len(data)) == ([], 0, None)
    with pytest.raises(ValueError):
        decode_records(data, len(data) + 1)


# ------------------------------------------------------------------ streaming


def test_one_byte_at_a_time() -> None:
    data = b"".join(encode_record(r) for r in RECORDS)
    out, reasons = stream_decode([data[i:i + 1] for i in range(len(data))])
    assert out == RECORDS
    # "torn" until each frame is complete, then None exactly once per frame.
    assert reasons.count(None) == len(RECORDS)
    assert reasons[-1] is None


@given(st.lists(records_st, min_size=1, max_size=6), st.data())
def test_random_splits(records: list[Record], data: st.DataObject) -> None:
    blob = b"".join(encode_record(r) for r in records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
    out, _ = stream_decode(chunks)
    assert out == records


# ------------------------------------------------------------------ garbage


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(0, 5))
def test_garbage_never_raises(garbage: bytes, prefix_records: int) -> None:
    good = b"".join(encode_record(r) for r in RECORDS[:prefix_records])
    for candidate in (garbage, MAGIC + garbage, good + garbage):
        records, consumed, reason = decode_records(candidate)
        assert 0 <= consumed <= len(candidate)
        assert reason in (None, *REASONS)
        assert (reason is None) == (consumed == len(candidate))
    records, consumed, reason = decode_records(good + b"\x00" + garbage)
    assert records == RECORDS[:prefix_records]
    assert consumed == len(good)
    assert reason == "bad magic"


@settings(max_examples=300)
@given(st.data())
def test_any_flipped_bit_loses_exactly_that_record(data: st.DataObject) -> None:
    record = data.draw(records_st)
    frame = bytearray(encode_record(record))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    before = encode_record(RECORDS[0])
    records, consumed, reason = decode_records(before + bytes(frame))
    assert records == [RECORDS[0]]
    assert consumed == len(before)
    assert reason in ("bad magic", "bad crc", "bad length", "torn")


@pytest.mark.parametrize("name", ["crc", "version", "flags", "seq", "epoch", "timestamp", "payload"])
def test_flipped_bit_in_a_field_is_a_bad_crc(name: str) -> None:
    frame = encode_record(Record(5, 2, 123456789, b"payload bytes"))
    start, end = FIELDS.get(name, (HEADER_SIZE, len(frame)))
    for index in range(start, end):
        for bit in range(8):
            damaged = bytearray(frame)
            damaged[index] ^= 1 << bit
            assert decode_records(bytes(damaged)) == ([], 0, "bad crc"), (name, index, bit)


def test_flipped_bit_in_magic_or_length() -> None:
    frame = encode_record(Record(5, 2, 123456789, b"payload bytes"))
    for index in range(*FIELDS["magic"]):
        damaged = bytearray(frame)
        damaged[index] ^= 0x10
        assert decode_records(bytes(damaged)) == ([], 0, "bad magic")
    seen = set()
    for index in range(*FIELDS["length"]):
        for bit in range(8):
            damaged = bytearray(frame)
            damaged[index] ^= 1 << bit
            records, consumed, reason = decode_records(bytes(damaged) + b"\x00" * 64)
            assert (records, consumed) == ([], 0)
            seen.add(reason)
    # Shorter: the CRC fails; longer: past the buffer (torn) or past MAX_PAYLOAD.
    assert seen == {"bad crc", "torn", "bad length"}


def _recrc(frame: bytearray) -> bytes:
    import crc32c

    struct.pack_into("<I", frame, 2, crc32c.crc32c(bytes(frame[6:])))
    return bytes(frame)


def test_unknown_version_or_flags_with_a_valid_crc() -> None:
    frame = bytearray(encode_record(Record(1, 1, 1, b"x")))
    frame[6] = 2
    assert decode_records(_recrc(frame)) == ([], 0, "bad version")
    frame = bytearray(encode_record(Record(1, 1, 1, b"x")))
    frame[7] = 1
    assert decode_records(_recrc(frame)) == ([], 0, "bad flags")


def test_oversized_length_is_refused_before_waiting_for_it() -> None:
    frame = bytearray(encode_record(Record(1, 1, 1, b"x")))
    struct.pack_into("<I", frame, 8, MAX_PAYLOAD + 1)
    assert decode_records(bytes(frame)) == ([], 0, "bad length")


def test_partial_header_is_torn_only_if_it_could_be_a_frame() -> None:
    frame = encode_record(Record(1, 1, 1, b"x"))
    for n in range(1, HEADER_SIZE + 1):
        assert decode_records(frame[:n]) == ([], 0, "torn")
    assert decode_records(b"X") == ([], 0, "bad magic")
    assert decode_records(b"LX") == ([], 0, "bad magic")


# ------------------------------------------------------------------ segment header


def test_segment_header_round_trip_and_damage() -> None:
    head = encode_segment_header(1234, 7)
    assert len(head) == SEGMENT_HEADER_SIZE
    assert decode_segment_header(head) == (1234, 7)
    assert decode_segment_header(head[:-1]) is None
    for i in range(len(head)):
        damaged = bytearray(head)
        damaged[i] ^= 0x01
        assert decode_segment_header(bytes(damaged)) is None
