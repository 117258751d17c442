"""The journal on real files in tmp_path: group commit, recovery, roll-over, retention."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from daemon.config import Duration, JournalConfig
from daemon.standby import MAX_PAYLOAD, JournalCorrupt, Position, Record
from daemon.standby.journal import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Journal,
    JournalError,
    encode_record,
    encode_segment_header,
    segment_name,
)


def config(fsync: str = "never", **kw: Any) -> JournalConfig:
    return JournalConfig(fsync=fsync, **kw)  # type: ignore[arg-type]


CAP = 10  # seconds: no test here should come near it

#: Small segments: header 28 + 7 frames of 136 bytes (100-byte payloads) fit in 1000.
SMALL = 1000
PAYLOAD = b"p" * 100


@asynccontextmanager
async def running(directory: Path, cfg: JournalConfig) -> AsyncIterator[Journal]:
    journal = Journal.open(directory, cfg)
    try:
        with trio.fail_after(CAP):
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                yield journal
                nursery.cancel_scope.cancel()
    finally:
        journal.close()


async def fill(journal: Journal, count: int, epoch: int = 1, payload: bytes = PAYLOAD) -> list[Record]:
    return [await journal.append(payload, epoch) for _ in range(count)]


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.seg"))


def frame_ends(records: list[Record]) -> list[int]:
    ends, pos = [], SEGMENT_HEADER_SIZE
    for record in records:
        pos += HEADER_SIZE + len(record.payload)
        ends.append(pos)
    return ends


class FsyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.fsync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(os, "fsync", counting)


# ------------------------------------------------------------------ append and read


async def test_append_and_read_back(tmp_path: Path) -> None:
    async with running(tmp_path / "j", config()) as journal:
        assert journal.last == Position(0, 0) and journal.first_seq == 1
        before = time.time_ns()
        written = [await journal.append(bytes([i]) * i, epoch=3) for i in range(10)]
        assert [r.seq for r in written] == list(range(1, 11))
        assert all(r.epoch == 3 and before <= r.timestamp_ns <= time.time_ns() for r in written)
        assert journal.last == Position(3, 10)
        assert journal.read(1) == written
        assert journal.read(5, max_records=3) == written[4:7]
        assert journal.read(11) == []
        with pytest.raises(JournalError, match="no longer retained"):
            journal.read(0)
        stats = journal.stats()
        assert stats["appends"] == 10 and stats["last_seq"] == 10 and stats["segments"] == 1
    assert segment_files(tmp_path / "j") == [segment_name(1)]


async def test_read_limits_bytes_but_always_returns_one(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        await fill(journal, 5, payload=b"x" * 1000)
        assert [r.seq for r in journal.read(1, max_bytes=2 * 1036)] == [1, 2]
        assert [r.seq for r in journal.read(2, max_bytes=2 * 1036 - 1)] == [2]
        assert [r.seq for r in journal.read(3, max_bytes=1)] == [3]


async def test_read_many_from_anywhere_uses_the_index(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        written = [await journal.append(str(i).encode(), 1) for i in range(700)]
        for start in (1, 63, 64, 65, 129, 500, 700):
            assert journal.read(start, max_records=50) == written[start - 1:start - 1 + 50]
    async with running(tmp_path, config()) as journal:  # the index rebuilt by the scan
        for start in (1, 64, 333, 699):
            assert journal.read(start, max_records=10) == written[start - 1:start - 1 + 10]


async def test_largest_record_reads_back(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        small = await journal.append(b"a", 1)
        big = await journal.append(b"\xee" * MAX_PAYLOAD, 1)
        after = await journal.append(b"b", 1)
        assert journal.read(1) == [small, big, after]
        assert journal.read(2, max_bytes=10) == [big]
        with pytest.raises(JournalError, match="exceeds"):
            await journal.append(b"\xee" * (MAX_PAYLOAD + 1), 1)
    # A record larger than segment_bytes still goes in, alone.
    assert segment_files(tmp_path) == [segment_name(1), segment_name(2), segment_name(3)]


async def test_concurrent_appends_are_batched_in_call_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, config("always")) as journal:
        fsyncs = FsyncCounter(monkeypatch)
        calls: list[int] = []
        results: dict[int, Record] = {}

        async def writer(i: int) -> None:
            await trio.sleep(0)
            calls.append(i)
            results[i] = await journal.append(f"task {i}".encode(), 1)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(writer, i)
        assert [results[i].seq for i in calls] == list(range(1, 201))
        assert fsyncs.calls < 200
        stats = journal.stats()
        assert stats["fsyncs"] == stats["batches"] < 200 and stats["appends"] == 200
        assert stats["mean_batch"] > 1
        assert [r.payload for r in journal.read(1, max_records=200)] == [f"task {i}".encode() for i in calls]


async def test_wait_beyond(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        woke: list[Position] = []

        async def waiter() -> None:
            await journal.wait_beyond(0)
            woke.append(journal.last)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            await journal.append(b"x", 1)
        assert woke == [Position(1, 1)]
        with trio.fail_after(1):
            await journal.wait_beyond(0)  # already beyond: returns at once


async def test_open_refusals(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, config())
    with pytest.raises(JournalError, match="another process"):
        Journal.open(tmp_path, config())
    with pytest.raises(JournalError, match="not running"):
        await journal.append(b"x", 1)
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.append(b"x", 1)
    with pytest.raises(JournalError, match="closed"):
        await journal.run()
    Journal.open(tmp_path, config()).close()  # the lock went with close()


# ------------------------------------------------------------------ reopen and recovery


async def test_reopen_after_close(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        written = await fill(journal, 5, epoch=3)
    async with running(tmp_path, config()) as journal:
        assert journal.recovery is None
        assert journal.last == Position(3, 5)
        assert journal.epoch_at(5) == 3 and journal.epoch_at(0) == 0 and journal.epoch_at(6) is None
        written.append(await journal.append(b"more", 3))
        assert written[-1].seq == 6
        assert journal.read(1) == written


PAYLOADS = [b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 40, b"e" * 50]


@pytest.mark.parametrize("cut", [1, 2, 10, 35, 36, 37, 85, 86, 87, 90, 150])
async def test_torn_tail_is_cut_and_reported(tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, config()) as journal:
        written = [await journal.append(p, 1) for p in PAYLOADS]
    path = tmp_path / segment_name(1)
    ends = frame_ends(written)  # [74, 130, 196, 272, 358]
    size = ends[-1] - cut
    os.truncate(path, size)
    kept = sum(1 for end in ends if end <= size)
    good_end = max([SEGMENT_HEADER_SIZE, *[e for e in ends if e <= size]])

    with caplog.at_level(logging.WARNING, logger="lifeline.journal"):
        async with running(tmp_path, config()) as journal:
            if size == good_end:  # cut exactly at a record boundary: nothing to see
                assert journal.recovery is None
            else:
                report = journal.recovery
                assert report is not None
                assert (report.file, report.records_kept, report.records_dropped, report.bytes_dropped) == (
                    path, kept, 1, size - good_end)
                assert report.reason == "torn" and report.offset == good_end
                lines = [r for r in caplog.records if getattr(r, "event", "") == "journal.tail_truncated"]
                assert len(lines) == 1
                assert lines[0].fields["file"] == path  # type: ignore[attr-defined]
                assert lines[0].fields["bytes_dropped"] == size - good_end  # type: ignore[attr-defined]
            assert path.stat().st_size == good_end
            assert journal.last == Position(1 if kept else 0, kept)
            new = await journal.append(b"after", 1)
            assert new.seq == kept + 1
            assert journal.read(1) == [*written[:kept], new]


@pytest.mark.parametrize("garbage", [b"\x00" * 4096, b"garbage" * 9, b"L", b"LJ", b"\xff" * 37])
async def test_garbage_after_the_last_record_is_cut(tmp_path: Path, garbage: bytes) -> None:
    async with running(tmp_path, config()) as journal:
        written = await fill(journal, 3)
    path = tmp_path / segment_name(1)
    with open(path, "ab") as f:
        f.write(garbage)
    async with running(tmp_path, config()) as journal:
        report = journal.recovery
        assert report is not None
        # Bytes that begin like a record count as one damaged record; anything else is 0.
        assert (report.records_kept, report.bytes_dropped) == (3, len(garbage))
        assert report.records_dropped == (1 if garbage.startswith(b"L") else 0)
        assert (await journal.append(b"x", 1)).seq == 4
        assert journal.read(1)[:3] == written


async def test_torn_record_followed_by_a_half_written_one(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        await fill(journal, 2)
    path = tmp_path / segment_name(1)
    with open(path, "ab") as f:  # two frames of one batch, neither complete on disk
        f.write(encode_record(Record(3, 1, 0, b"x" * 50))[:-5])
    async with running(tmp_path, config()) as journal:
        assert journal.recovery is not None and journal.recovery.records_dropped == 1
        assert journal.last.seq == 2


async def test_flipped_byte_in_the_last_record_is_a_tail(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        await fill(journal, 10)  # segments 1..7 and 8..10
    path = tmp_path / segment_name(8)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40  # in the payload of record 10
    path.write_bytes(bytes(data))
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        report = journal.recovery
        assert report is not None
        assert (report.file, report.records_kept, report.records_dropped, report.bytes_dropped, report.reason) == (
            path, 2, 1, HEADER_SIZE + len(PAYLOAD), "bad crc")
        assert journal.last.seq == 9
        assert (await journal.append(b"again", 1)).seq == 10


async def test_flipped_byte_in_a_closed_segment_stops_the_daemon(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        await fill(journal, 10)
    path = tmp_path / segment_name(1)
    data = bytearray(path.read_bytes())
    offset = frame_ends([Record(0, 0, 0, PAYLOAD)] * 2)[-1] + HEADER_SIZE + 5  # payload of record 3
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as caught:
        Journal.open(tmp_path, config(segment_bytes=SMALL))
    message = str(caught.value)
    assert str(path) in message and "seq 3" in message and "bad crc" in message
    assert "closed segment" in message and "peer" in message and "journal verify" in message
    assert path.read_bytes() == bytes(data)  # nothing was cut


async def test_even_a_torn_end_of_a_closed_segment_is_corruption(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        await fill(journal, 10)
    path = tmp_path / segment_name(1)
    os.truncate(path, path.stat().st_size - 3)
    with pytest.raises(JournalCorrupt, match="seq 7.*torn"):
        Journal.open(tmp_path, config(segment_bytes=SMALL))


async def test_damage_followed_by_valid_records_is_not_a_tail(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        await fill(journal, 5)
    path = tmp_path / segment_name(1)
    data = bytearray(path.read_bytes())
    data[SEGMENT_HEADER_SIZE + 2 * 136 + 20] ^= 0x01  # the epoch of record 3
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=r"seq 3.*bad crc.*valid record follows"):
        Journal.open(tmp_path, config())
    # A damaged length (the record looks longer than the file) is caught the same way.
    data = bytearray(path.read_bytes())
    data[SEGMENT_HEADER_SIZE + 2 * 136 + 20] ^= 0x01
    data[SEGMENT_HEADER_SIZE + 2 * 136 + 10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="seq 3.*valid record follows"):
        Journal.open(tmp_path, config())


def test_valid_records_out_of_order_are_corruption(tmp_path: Path) -> None:
    path = tmp_path / segment_name(1)
    records = [Record(1, 1, 0, b"a"), Record(2, 1, 0, b"b"), Record(4, 1, 0, b"d")]
    path.write_bytes(encode_segment_header(1, 0) + b"".join(encode_record(r) for r in records))
    with pytest.raises(JournalCorrupt, match="seq 3.*out of order"):
        Journal.open(tmp_path, config())
    records[2] = Record(3, 0, 0, b"c")
    path.write_bytes(encode_segment_header(1, 0) + b"".join(encode_record(r) for r in records))
    with pytest.raises(JournalCorrupt, match="epoch went backwards"):
        Journal.open(tmp_path, config())


async def test_unfinished_roll_over_is_removed(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        await fill(journal, 3)
    stub = tmp_path / segment_name(4)
    stub.write_bytes(encode_segment_header(4, 1)[:10])
    async with running(tmp_path, config()) as journal:
        assert journal.recovery is not None and journal.recovery.file == stub
        assert journal.recovery.bytes_dropped == 10
        assert not stub.exists()
        assert (await journal.append(b"x", 1)).seq == 4


async def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        await fill(journal, 20)
    (tmp_path / segment_name(8)).unlink()
    with pytest.raises(JournalCorrupt, match="gap between segments"):
        Journal.open(tmp_path, config(segment_bytes=SMALL))


# ------------------------------------------------------------------ segments


async def test_roll_over_and_read_across_segments(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        written = await fill(journal, 30)
        assert segment_files(tmp_path) == [segment_name(s) for s in (1, 8, 15, 22, 29)]
        assert all((tmp_path / n).stat().st_size <= SMALL for n in segment_files(tmp_path))
        assert journal.read(5, max_records=20) == written[4:24]
        assert journal.stats()["segments"] == 5
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        assert journal.last == Position(1, 30) and journal.read(1, max_records=100) == written


async def test_batch_across_a_roll_over(tmp_path: Path) -> None:
    async with running(tmp_path, config(segment_bytes=SMALL)) as journal:
        records = [Record(s, 1, s, PAYLOAD) for s in range(1, 21)]
        assert await journal.append_replicated(records) == Position(1, 20)
        assert journal.stats()["batches"] == 1
        assert journal.read(1, max_records=100) == records
        assert segment_files(tmp_path) == [segment_name(s) for s in (1, 8, 15)]


# ------------------------------------------------------------------ epochs and replication


async def test_epoch_going_backwards_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        await journal.append(b"a", 5)
        with pytest.raises(JournalError, match="epoch 4 refused"):
            await journal.append(b"b", 4)
        await journal.append(b"c", 5)
        await journal.append(b"d", 6)
        assert journal.epoch_at(1) == 5 and journal.epoch_at(3) == 6
    async with running(tmp_path, config()) as journal:
        with pytest.raises(JournalError, match="epoch 5 refused"):
            await journal.append(b"e", 5)
        assert journal.last == Position(6, 3)


async def test_append_replicated_must_continue_exactly(tmp_path: Path) -> None:
    def rec(seq: int, epoch: int = 2) -> Record:
        return Record(seq, epoch, 1000 + seq, f"r{seq}".encode())

    async with running(tmp_path, config("always")) as journal:
        assert await journal.append_replicated([rec(1), rec(2), rec(3)]) == Position(2, 3)
        for bad, why in [([rec(5)], "gap"), ([rec(3), rec(4)], "overlap"), ([rec(4), rec(6)], "not consecutive"),
                         ([rec(4, 1)], "epoch went backwards"), ([rec(4, 3), rec(5, 2)], "epoch went backwards")]:
            with pytest.raises(JournalError, match=why):
                await journal.append_replicated(bad)
        assert journal.last == Position(2, 3)
        assert await journal.append_replicated([rec(4, 3), rec(5, 3)]) == Position(3, 5)
        assert journal.read(1) == [rec(1), rec(2), rec(3), rec(4, 3), rec(5, 3)]
        assert await journal.append_replicated([]) == Position(3, 5)


async def test_a_record_that_cannot_be_framed_is_refused_alone(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        with pytest.raises(JournalError, match="timestamp_ns"):
            await journal.append_replicated([Record(1, 1, 2**63, b"x")])
        with pytest.raises(JournalError, match="not a sequence of Record"):
            await journal.append_replicated([b"x"])  # type: ignore[list-item]
        assert await journal.append_replicated([Record(1, 1, 0, b"x")]) == Position(1, 1)


async def test_concurrent_replicated_batches_queue_behind_each_other(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as journal:
        batches = [[Record(s, 1, 0, b"r") for s in range(i * 10 + 1, i * 10 + 11)] for i in range(5)]
        async with trio.open_nursery() as nursery:
            for batch in batches:
                nursery.start_soon(journal.append_replicated, batch)
                await trio.sleep(0)
        assert journal.last == Position(1, 50)


# ------------------------------------------------------------------ truncate_after and retention


async def test_truncate_after_across_segments(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(segment_bytes=SMALL)
    async with running(tmp_path, cfg) as journal:
        written = await fill(journal, 20, epoch=1) + await fill(journal, 10, epoch=2)
        with caplog.at_level(logging.WARNING, logger="lifeline.journal"):
            report = journal.truncate_after(10)
        assert (report.records_removed, report.segments_removed) == (20, 3)
        assert (report.previous_last, report.last) == (Position(2, 30), Position(1, 10))
        assert any(getattr(r, "event", "") == "journal.truncated" for r in caplog.records)
        assert segment_files(tmp_path) == [segment_name(1), segment_name(8)]
        assert (tmp_path / segment_name(8)).stat().st_size == SEGMENT_HEADER_SIZE + 3 * 136
        assert journal.epoch_at(10) == 1 and journal.epoch_at(11) is None
        assert journal.read(1, max_records=100) == written[:10]
        nxt = await journal.append(b"new", 1)  # the new primary's history continues
        assert nxt.seq == 11
        assert journal.truncate_after(11).records_removed == 0
    async with running(tmp_path, cfg) as journal:
        assert journal.last == Position(1, 11)
        assert journal.read(1, max_records=100) == [*written[:10], nxt]
        journal.truncate_after(7)  # exactly a segment boundary
        assert segment_files(tmp_path) == [segment_name(1)] and journal.last == Position(1, 7)
        journal.truncate_after(0)
        assert journal.last == Position(0, 0) and journal.read(1) == []
        assert (await journal.append(b"fresh", 1)).seq == 1


async def test_truncate_after_refuses_while_appends_are_in_flight(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, config()) as journal:
        await journal.append(b"a", 1)
        release, entered = threading.Event(), threading.Event()
        real_write = os.write

        def slow_write(fd: int, data: Any) -> int:
            entered.set()
            release.wait(5)
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", slow_write)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.append, b"b", 1)
            await trio.to_thread.run_sync(entered.wait, 5)
            with pytest.raises(JournalError, match="in flight"):
                journal.truncate_after(0)
            release.set()
        assert journal.truncate_after(0).records_removed == 2


async def test_retention_by_count_and_age(tmp_path: Path) -> None:
    cfg = config(segment_bytes=SMALL, retain_segments=2, retain_age=Duration(3600))
    async with running(tmp_path, cfg) as journal:
        written = await fill(journal, 30)  # segments 1, 8, 15, 22 closed; 29 active
        assert journal.remove_segments_through(6) == 0  # segment 1 holds 7, not held by both
        assert journal.remove_segments_through(30) == 2  # 4 closed, keep 2
        assert segment_files(tmp_path) == [segment_name(s) for s in (15, 22, 29)]
        assert journal.first_seq == 15
        assert journal.epoch_at(14) == 1 and journal.epoch_at(13) is None
        with pytest.raises(JournalError, match="no longer retained"):
            journal.read(14)
        assert journal.read(15, max_records=100) == written[14:]
        assert journal.remove_segments_through(30) == 0
        # Older than retain_age: removed even under retain_segments, never the active one.
        assert journal.remove_segments_through(30, now=time.time() + 7200) == 2
        assert segment_files(tmp_path) == [segment_name(29)]
        assert journal.first_seq == 29 and journal.last == Position(1, 30)
    async with running(tmp_path, cfg) as journal:
        assert journal.first_seq == 29 and journal.last == Position(1, 30)
        assert journal.epoch_at(28) == 1
        journal.truncate_after(28)
        assert journal.first_seq == 29 and journal.last == Position(1, 28)
    async with running(tmp_path, cfg) as journal:  # an empty segment still knows where it starts
        assert journal.last == Position(1, 28)
        with pytest.raises(JournalError, match="epoch 0 refused"):
            await journal.append(b"x", 0)
        assert (await journal.append(b"x", 1)).seq == 29


# ------------------------------------------------------------------ failures and cancellation


def fail_writes_once(monkeypatch: pytest.MonkeyPatch, skip: int = 0) -> None:
    """os.write raises ENOSPC once, after ``skip`` successful calls."""
    real_write = os.write
    state = {"left": skip, "done": False}

    def write(fd: int, data: Any) -> int:
        if not state["done"]:
            if state["left"] == 0:
                state["done"] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            state["left"] -= 1
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


async def test_enospc_fails_the_batch_and_the_journal_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, config("always")) as journal:
        first = await journal.append(b"one", 1)
        fail_writes_once(monkeypatch)
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.append(b"lost", 1)
        assert journal.last == Position(1, 1)
        second = await journal.append(b"two", 1)
        assert second.seq == 2  # the failed record's seq was never published: reused
        assert journal.read(1) == [first, second]
    assert any(getattr(r, "event", "") == "journal.write_failed" for r in caplog.records)
    assert (tmp_path / segment_name(1)).stat().st_size == SEGMENT_HEADER_SIZE + 2 * HEADER_SIZE + 6
    async with running(tmp_path, config()) as journal:
        assert journal.recovery is None and journal.read(1) == [first, second]


async def test_enospc_during_a_roll_over_leaves_no_segment_behind(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, config("always", segment_bytes=SMALL)) as journal:
        written = await fill(journal, 7)
        fail_writes_once(monkeypatch, skip=0)  # the new segment's header
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.append_replicated([Record(s, 1, 0, PAYLOAD) for s in range(8, 10)])
        assert segment_files(tmp_path) == [segment_name(1)]
        fail_writes_once(monkeypatch, skip=1)  # the records, after the header
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.append(PAYLOAD, 1)
        assert segment_files(tmp_path) == [segment_name(1)]
        written.append(await journal.append(PAYLOAD, 1))
        assert segment_files(tmp_path) == [segment_name(1), segment_name(8)]
        assert journal.read(1) == written


async def cancel_while_writing(journal: Journal, append: Any, entered: threading.Event,
                               release: threading.Event) -> None:
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as committer:
            await committer.start(journal.run)
            outer.start_soon(append, "in-flight")
            await trio.to_thread.run_sync(entered.wait, 5)  # its batch is being written
            for name in ("queued-1", "queued-2"):
                outer.start_soon(append, name)
            await trio.testing.wait_all_tasks_blocked()
            committer.cancel_scope.cancel()
            release.set()


async def test_cancelled_committer_fails_waiting_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(tmp_path, config("always"))
    release, entered = threading.Event(), threading.Event()
    real_write = os.write

    def slow_write(fd: int, data: Any) -> int:
        entered.set()
        release.wait(5)
        return real_write(fd, data)

    outcomes: dict[str, object] = {}

    async def append(name: str) -> None:
        try:
            outcomes[name] = await journal.append(name.encode(), 1)
        except JournalError as exc:
            outcomes[name] = exc

    monkeypatch.setattr(os, "write", slow_write)
    with trio.fail_after(CAP):
        await cancel_while_writing(journal, append, entered, release)
    # The batch that reached the disk succeeded; the ones that never did raise.
    assert isinstance(outcomes["in-flight"], Record)
    for name in ("queued-1", "queued-2"):
        assert isinstance(outcomes[name], JournalError)
        assert "stopped before this record was written" in str(outcomes[name])
    assert journal.last == Position(1, 1)
    monkeypatch.setattr(os, "write", real_write)
    async with trio.open_nursery() as nursery:  # restarted, it goes on from there
        await nursery.start(journal.run)
        assert (await journal.append(b"next", 1)).seq == 2
        nursery.cancel_scope.cancel()
    journal.close()
    with Journal.open(tmp_path, config()) as reopened:
        assert [r.payload for r in reopened.read(1)] == [b"in-flight", b"next"]


# ------------------------------------------------------------------ fsync modes


async def test_fsync_always_is_once_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, config("always")) as journal:
        fsyncs = FsyncCounter(monkeypatch)
        await fill(journal, 5)
        assert fsyncs.calls == 5
        assert journal.stats()["last_fsync_ms"] is not None


async def test_fsync_never(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs = FsyncCounter(monkeypatch)
    async with running(tmp_path, config("never", segment_bytes=SMALL)) as journal:
        await fill(journal, 20)
        journal.truncate_after(3)
    assert fsyncs.calls == 0


async def test_fsync_batch_at_most_every_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(tmp_path, config("batch", batch_interval=Duration(3600)))
    fsyncs = FsyncCounter(monkeypatch)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            await fill(journal, 10)
            assert fsyncs.calls == 1  # the first write found no recent fsync; then none for an hour
            nursery.cancel_scope.cancel()
    assert fsyncs.calls == 2  # the committer syncs what it acknowledged when it stops
    journal.close()
    assert fsyncs.calls == 2


async def test_fsync_batch_syncs_when_the_interval_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, config("batch", batch_interval=Duration(0.2))) as journal:
        fsyncs = FsyncCounter(monkeypatch)
        await fill(journal, 3)  # the first is synced at once, the others wait for the interval
        assert fsyncs.calls == 1
        # The committer wakes up for them without another append (its fsync runs in a thread:
        # the count in stats follows when the call has returned).
        while journal.stats()["fsyncs"] < 2:
            await trio.sleep(0.01)
        assert fsyncs.calls == 2 and journal.stats()["fsyncs"] == 2


def test_stats_keys(tmp_path: Path) -> None:
    with Journal.open(tmp_path, config()) as journal:
        assert {"first_seq", "last_seq", "last_epoch", "segments", "bytes", "appends", "batches", "fsyncs",
                "mean_batch", "last_fsync_ms"} <= set(journal.stats())




@pytest.mark.parametrize("mode", ["always", "batch"])
async def test_every_fsync_is_in_the_histogram(tmp_path: Path, mode: str) -> None:
    async with running(tmp_path, config(mode)) as journal:
        await fill(journal, 5)
        await trio.sleep(0.1)  # "batch": the committer's fsync follows the writes
        count = [s.value for s in journal.fsync_seconds.collect()[0].samples if s.name.endswith("_count")][0]
        assert count >= 1
        assert count <= journal.stats()["fsyncs"]  # one observation per fsync or batch of them


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
async def test_journal_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    """Order records are for the daemon's user and group: the directory 0750, every
    segment (the first and the rolled ones) 0640, under any umask."""
    directory = tmp_path / "journal"
    old = os.umask(umask)
    try:
        async with running(directory, config(segment_bytes=SMALL)) as journal:
            await fill(journal, 20)
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.glob("*.seg")}
    assert len(modes) >= 3 and set(modes.values()) == {0o640}, modes


async def test_an_existing_journal_directory_is_narrowed_not_widened(tmp_path: Path) -> None:
    wide, tight = tmp_path / "wide", tmp_path / "tight"
    wide.mkdir(mode=0o777)
    wide.chmod(0o777)
    tight.mkdir()
    tight.chmod(0o700)
    for directory in (wide, tight):
        async with running(directory, config()) as journal:
            await fill(journal, 1)
    assert stat.S_IMODE(wide.stat().st_mode) == 0o750
    assert stat.S_IMODE(tight.stat().st_mode) == 0o700
