"""Replication over real TCP on loopback between two real journals in tmp_path: the
primary and the standby run in the same trio run, with short timers."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import trio

from daemon.config import Duration, JournalConfig, StandbyConfig
from daemon.standby import Position, Record
from daemon.standby.journal import Journal, JournalError
from daemon.standby.protocol import HEADER, MAGIC, MAX_FRAME, PROTOCOL_VERSION, FrameType
from daemon.standby.replication import (
    AppendResult,
    ReplicationPrimary,
    ReplicationStandby,
    describe_write_error,
)
from tests.support import waiting

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
CAP = 20  # seconds; every test stays well below


def standby_config(tmp_path: Path, **overrides: Any) -> StandbyConfig:
    values: dict[str, Any] = dict(
        role="primary", key_file=tmp_path / "replication.key", listen="127.0.0.1:0", peer=None, mode="sync",
        sync_timeout=Duration(2.0), on_standby_loss="degrade-to-async", heartbeat=Duration(0.05),
        peer_timeout=Duration(0.5), reconnect_max=Duration(0.1), journal=JournalConfig(fsync="always"),
    )
    values.update(overrides)
    return StandbyConfig(**values)


wait_until = partial(waiting.wait_until, timeout=5.0)


def all_records(journal: Any) -> list[Record]:
    out: list[Record] = []
    while out == [] or out[-1].seq < journal.last.seq:
        batch = journal.read(out[-1].seq + 1 if out else max(journal.first_seq, 1), max_records=1000)
        if not batch:
            break
        out += batch
    return out


class StallingJournal:
    """A real journal whose append_replicated can be made to hang (a stalled standby
    disk) or to fail with the journal's ENOSPC error (a full one)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.stalled = False
        self.full = False
        self.release = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    @property
    def last(self) -> Position:
        return self._journal.last

    @property
    def first_seq(self) -> int:
        return self._journal.first_seq

    async def append_replicated(self, records: Sequence[Record]) -> Position:
        if self.full:
            # What Journal._batch_failed raises when the write hits ENOSPC.
            raise JournalError(f"{self._journal.directory}/00000000000000000001.seg: journal write failed: "
                               f"ENOSPC ({os.strerror(errno.ENOSPC)}); {len(records)} records not written")
        if self.stalled:
            await self.release.wait()
        return await self._journal.append_replicated(records)


@dataclass
class Pair:
    tmp_path: Path
    nursery: trio.Nursery
    primary_journal: Journal
    standby_journal: Any
    primary: ReplicationPrimary
    standby: ReplicationStandby | None = None
    standby_scope: trio.CancelScope | None = None
    primary_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    journals: list[Journal] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.primary.bound_port is not None
        return self.primary.bound_port

    async def start_primary(self) -> None:
        scope = self.primary_scope = trio.CancelScope()
        primary = self.primary

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await primary.run(task_status=task_status)

        await self.nursery.start(run)

    async def restart_primary(self) -> None:
        """Stop the primary's service and serve the same journal again on the same port."""
        port = self.port
        self.primary_scope.cancel()
        old = self.primary
        config = standby_config(self.tmp_path, listen=f"127.0.0.1:{port}", mode=old.config.mode,
                                on_standby_loss=old.config.on_standby_loss, sync_timeout=old.config.sync_timeout)
        self.primary = ReplicationPrimary(self.primary_journal, config, old.node_id, old._key)
        await trio.sleep(0)  # let the old listener close
        await self.start_primary()

    async def start_standby(self, *, key: bytes = KEY, journal: Any = None, node: str = "edge-b",
                            **overrides: Any) -> ReplicationStandby:
        config = standby_config(self.tmp_path, role="standby", peer=f"127.0.0.1:{self.port}",
                                mode=self.primary.config.mode, on_standby_loss=self.primary.config.on_standby_loss,
                                sync_timeout=self.primary.config.sync_timeout, **overrides)
        standby = ReplicationStandby(journal if journal is not None else self.standby_journal, config, node, key,
                                     write_retry=0.3)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await standby.run(task_status=task_status)

        await self.nursery.start(run)
        if node == "edge-b":
            self.standby, self.standby_scope = standby, scope
        return standby

    def stop_standby(self) -> None:
        assert self.standby_scope is not None
        self.standby_scope.cancel()

    async def in_sync(self) -> None:
        await wait_until(self.primary.in_sync, "the standby to be in sync")

    def open_journal(self, name: str, fsync: str = "always") -> Journal:
        journal = Journal.open(self.tmp_path / name, JournalConfig(fsync=fsync))  # type: ignore[arg-type]
        self.journals.append(journal)
        return journal

    async def run_journal(self, journal: Journal) -> None:
        await self.nursery.start(journal.run)


@asynccontextmanager
async def pair(tmp_path: Path, *, standby: bool = True, prepare: Callable[[Pair], Awaitable[None]] | None = None,
               stalling: bool = False, primary_key: bytes = KEY, epoch: int | None = None,
               handshake_timeout: float = 5.0, **overrides: Any) -> AsyncIterator[Pair]:
    """A running primary (journal "a") and, unless ``standby=False``, a standby (journal
    "b") following it. ``prepare`` fills the journals before replication starts."""
    journals: list[Journal] = []
    try:
        with trio.fail_after(CAP):
            async with trio.open_nursery() as nursery:
                primary_journal = Journal.open(tmp_path / "a", JournalConfig(fsync="always"))
                standby_journal = Journal.open(tmp_path / "b", JournalConfig(fsync="always"))
                journals += [primary_journal, standby_journal]
                await nursery.start(primary_journal.run)
                await nursery.start(standby_journal.run)
                config = standby_config(tmp_path, **overrides)
                primary = ReplicationPrimary(primary_journal, config, "edge-a", primary_key,
                                             epoch_provider=(lambda: epoch) if epoch is not None else None,
                                             handshake_timeout=handshake_timeout)
                p = Pair(tmp_path, nursery, primary_journal,
                         StallingJournal(standby_journal) if stalling else standby_journal, primary,
                         journals=journals)
                if prepare is not None:
                    await prepare(p)
                await p.start_primary()
                if standby:
                    await p.start_standby()
                yield p
                nursery.cancel_scope.cancel()
    finally:
        for journal in journals:
            journal.close()


async def append_concurrently(primary: ReplicationPrimary, count: int, writers: int = 50,
                              prefix: bytes = b"order") -> list[AppendResult]:
    results: list[AppendResult] = []

    async def writer(w: int) -> None:
        for i in range(w, count, writers):
            results.append(await primary.append(b"%s-%d" % (prefix, i)))

    async with trio.open_nursery() as nursery:
        for w in range(min(writers, count)):
            nursery.start_soon(writer, w)
    return sorted(results, key=lambda r: r.seq)


# ------------------------------------------------------------------ sync and async


async def test_sync_append_is_ok_only_once_the_standby_holds_the_record(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await p.in_sync()
        result = await p.primary.append(b"buy 1 BTC")
        # Checked before any other task runs: the standby's journal already has it.
        assert p.standby_journal.last.seq >= result.seq
        assert result == AppendResult(1, 1, "ok", "primary+standby")
        assert p.standby_journal.read(1) == p.primary_journal.read(1)

        async def one(i: int) -> None:
            r = await p.primary.append(b"order %d" % i)
            assert r.status == "ok" and r.durable_on == "primary+standby"
            assert p.standby_journal.last.seq >= r.seq, "ok before the standby had it"

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
        results = await p.primary.append_many([b"x", b"y", b"z"])
        assert [r.seq for r in results] == [302, 303, 304] and {r.status for r in results} == {"ok"}
        assert p.standby_journal.last.seq >= 304
        assert all_records(p.standby_journal) == all_records(p.primary_journal)
        status = p.primary.status()
        assert status.health == "ok" and status.details["state"] == "in-sync"
        assert status.details["acked_seq"] == 304 and status.details["lag_records"] == 0
        standby_status = p.standby.status()  # type: ignore[union-attr]
        assert standby_status.health == "ok" and standby_status.details["durable_seq"] == 304
        assert "StandbyConnected" in p.primary.announce.kinds()
        assert "PrimaryConnected" in p.standby.announce.kinds()  # type: ignore[union-attr]


async def test_async_append_is_ok_on_the_primary_alone(tmp_path: Path) -> None:
    async with pair(tmp_path, mode="async", stalling=True) as p:
        await p.in_sync()
        p.standby_journal.stalled = True
        result = await p.primary.append(b"fire and forget")
        assert result.status == "ok" and result.durable_on == "primary" and not result.degraded
        assert p.standby_journal.last.seq == 0
        p.standby_journal.release.set()
        await wait_until(lambda: p.standby_journal.last.seq == 1, "the record to reach the standby")
        assert p.primary.alarm() is None


# ------------------------------------------------------------------ catch-up


async def test_a_late_standby_catches_up_5000_records(tmp_path: Path) -> None:
    async with pair(tmp_path, standby=False) as p:
        results = await append_concurrently(p.primary, 5000)
        assert {r.status for r in results} == {"ok"} and all(r.degraded for r in results)
        assert p.primary.alarm() is not None
        await p.start_standby()
        await wait_until(lambda: p.standby_journal.last.seq == 5000, "the catch-up", timeout=15)
        await p.in_sync()
        assert all_records(p.standby_journal) == all_records(p.primary_journal)
        assert p.primary.alarm() is None
        assert "ReplicationRecovered" in p.primary.announce.kinds()
        after = await p.primary.append(b"after the catch-up")
        assert after.status == "ok" and after.durable_on == "primary+standby"


async def test_a_divergent_standby_tail_is_truncated_and_reported(tmp_path: Path) -> None:
    async def prepare(p: Pair) -> None:
        # Epoch 1: both hold seqs 1-50. Then the old primary (epoch 2) wrote seqs 51-70
        # that never left the standby's... well, the standby here plays the old primary's
        # copy; the new primary (epoch 3) wrote its own 51-100.
        for i in range(50):
            await p.primary_journal.append(b"shared %d" % i, 1)
        await p.standby_journal.append_replicated(p.primary_journal.read(1, max_records=100))
        await p.standby_journal.append_replicated(
            [Record(seq, 2, 1_000 + seq, b"old epoch 2 tail %d" % seq) for seq in range(51, 71)])
        for i in range(50):
            await p.primary_journal.append(b"epoch 3 %d" % i, 3)

    async with pair(tmp_path, prepare=prepare, epoch=3) as p:
        await p.in_sync()
        await wait_until(lambda: p.standby_journal.last.seq == 100, "the catch-up")
        assert all_records(p.standby_journal) == all_records(p.primary_journal)
        assert p.standby_journal.epoch_at(60) == 3
        [truncation] = p.standby.truncations  # type: ignore[union-attr]
        assert truncation["from_seq"] == 70 and truncation["to_seq"] == 50 and truncation["dropped_records"] == 20
        assert "records_removed=20" in truncation["report"]
        assert "StandbyTruncated" in p.standby.announce.kinds()  # type: ignore[union-attr]
        assert p.standby.status().details["counters"]["truncations"] == 1  # type: ignore[union-attr]


async def test_a_standby_with_a_newer_epoch_is_refused_by_a_stale_primary(tmp_path: Path) -> None:
    async def prepare(p: Pair) -> None:
        await p.primary_journal.append(b"old", 1)
        await p.standby_journal.append_replicated([Record(1, 1, 1, b"old"), Record(2, 5, 2, b"newer leader")])

    async with pair(tmp_path, prepare=prepare) as p:
        await wait_until(lambda: p.standby.last_reject is not None, "the rejection")  # type: ignore[union-attr]
        assert "stale" in p.standby.last_reject  # type: ignore[union-attr,operator]
        assert p.standby_journal.last == Position(5, 2)  # nothing truncated


# ------------------------------------------------------------------ authentication and hostile peers


async def test_a_standby_with_the_wrong_key_is_rejected_and_nothing_is_written(tmp_path: Path) -> None:
    async def prepare(p: Pair) -> None:
        for i in range(10):
            await p.primary_journal.append(b"secret %d" % i, 1)

    async with pair(tmp_path, prepare=prepare, standby=False) as p:
        standby = await p.start_standby(key=OTHER_KEY)
        await wait_until(lambda: p.primary.counters["auth_failures"] >= 2, "two rejected attempts")
        assert standby.last_reject is not None and "authentication failed" in standby.last_reject
        assert p.standby_journal.last == Position(0, 0)
        assert p.primary_journal.last == Position(1, 10)
        assert not p.primary.details()["connected"] and not standby.connected
        assert p.primary.counters["records_sent"] == 0
        assert "rejected: authentication failed" in standby.status().summary
        assert "ReplicationRejected" in p.primary.announce.kinds()


async def _is_dropped(stream: trio.SocketStream, within: float) -> bool:
    with trio.move_on_after(within):
        try:
            while await stream.receive_some(1024):
                pass  # a REJECT is fine; we wait for the close
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_garbage_oversized_frames_and_slow_loris_are_dropped_while_the_standby_is_served(
        tmp_path: Path) -> None:
    async with pair(tmp_path, handshake_timeout=0.6) as p:
        await p.in_sync()
        before = p.primary_journal.last

        async def garbage() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: edge-a\r\n\r\n")
            assert await _is_dropped(stream, 1.0)

        async def oversized() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            await stream.send_all(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, 0xFFFFFFFF))
            assert await _is_dropped(stream, 1.0)
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            await stream.send_all(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, MAX_FRAME))
            assert await _is_dropped(stream, 1.0)

        async def slow_loris() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            started = trio.current_time()

            async def dribble() -> None:
                for byte in MAGIC + bytes([PROTOCOL_VERSION, FrameType.HELLO, 0, 0, 0, 0, 0, 60]) + b"x" * 60:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dribble)
                assert await _is_dropped(stream, 3.0)
                nursery.cancel_scope.cancel()
            assert 0.5 <= trio.current_time() - started < 2.0

        async def writer() -> None:
            for i in range(20):
                result = await p.primary.append(b"during the attack %d" % i)
                assert result.status == "ok" and result.durable_on == "primary+standby"
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            for attack in (garbage, oversized, slow_loris, writer):
                nursery.start_soon(attack)
        assert p.primary_journal.last.seq == before.seq + 20  # the attackers wrote nothing
        assert all_records(p.standby_journal) == all_records(p.primary_journal)
        assert p.primary.in_sync()
        counters = p.primary.counters
        assert counters["protocol_errors"] >= 3 and counters["handshake_timeouts"] >= 1
        assert counters["sessions"] == 1  # the real standby was never disturbed


async def test_a_second_standby_is_rejected_with_a_reason(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await p.in_sync()
        other_journal = p.open_journal("c")
        await p.run_journal(other_journal)
        other = await p.start_standby(journal=other_journal, node="edge-c")
        await wait_until(lambda: other.last_reject is not None, "the second standby's rejection")
        assert "another standby (edge-b" in other.last_reject  # type: ignore[operator]
        await p.primary.append(b"still served")
        assert other_journal.last.seq == 0 and p.standby_journal.last.seq == 1


# ------------------------------------------------------------------ losing the standby


async def test_block_answers_in_doubt_without_a_standby(tmp_path: Path) -> None:
    async with pair(tmp_path, on_standby_loss="block") as p:
        await p.in_sync()
        assert (await p.primary.append(b"one")).status == "ok"
        p.stop_standby()
        await wait_until(lambda: not p.primary.details()["connected"], "the primary to see the standby go")
        result = await p.primary.append(b"two")
        assert result.status == "in_doubt" and result.durable_on == "primary"
        assert result.reason is not None and "on_standby_loss = block" in result.reason
        assert p.primary_journal.last.seq == 2  # in the primary's journal: in doubt, not refused
        status = p.primary.status()
        assert status.health == "failing" and "ALARM" in status.summary
        assert {"StandbyLost", "ReplicationDegraded"} <= set(p.primary.announce.kinds())


async def test_degrade_to_async_then_the_standby_returns_and_catches_up(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await p.in_sync()
        assert (await p.primary.append(b"before")).durable_on == "primary+standby"
        p.stop_standby()
        await wait_until(lambda: not p.primary.in_sync(), "the primary to see the standby go")
        results = await append_concurrently(p.primary, 100)
        assert {(r.status, r.durable_on, r.degraded) for r in results} == {("ok", "primary", True)}
        status = p.primary.status()
        assert status.health == "degraded" and status.details["degraded"]
        assert "degraded to async" in status.details["alarm"]
        assert status.details["counters"]["degraded_appends"] == 100
        assert "ReplicationDegraded" in p.primary.announce.kinds()
        await p.start_standby()
        await p.in_sync()
        await wait_until(lambda: p.standby_journal.last.seq == 101, "the catch-up")
        assert all_records(p.standby_journal) == all_records(p.primary_journal)
        assert p.primary.status().health == "ok" and p.primary.alarm() is None
        assert p.primary.announce.kinds().count("ReplicationRecovered") == 2
        assert (await p.primary.append(b"after")).durable_on == "primary+standby"


async def test_a_silent_standby_is_declared_lost_after_peer_timeout(tmp_path: Path) -> None:
    async with pair(tmp_path, standby=False) as p:
        stream = await _authenticate_raw(p.port, "zombie")
        await wait_until(lambda: p.primary.details()["connected"], "the session")
        started = trio.current_time()
        await wait_until(lambda: not p.primary.details()["connected"], "the peer timeout", timeout=3)
        assert 0.4 <= trio.current_time() - started < 2.0
        assert "StandbyLost" in p.primary.announce.kinds()
        await stream.aclose()


# ------------------------------------------------------------------ in doubt


async def test_a_sync_wait_that_times_out_is_in_doubt(tmp_path: Path) -> None:
    async with pair(tmp_path, stalling=True, sync_timeout=Duration(0.3)) as p:
        await p.in_sync()
        p.standby_journal.stalled = True
        started = trio.current_time()
        result = await p.primary.append(b"stuck")
        assert 0.3 <= trio.current_time() - started < 1.0
        assert result.status == "in_doubt" and result.durable_on == "primary"
        assert "sync_timeout" in (result.reason or "")
        assert p.primary.counters["in_doubt"] == 1 and p.primary.recent_in_doubt[-1] == result
        assert not p.primary.is_replicated(result.seq)
        # The record is still streamed: once the standby's disk moves, it is replicated.
        p.standby_journal.release.set()
        await wait_until(lambda: p.primary.is_replicated(result.seq), "the late acknowledgement")
        assert p.standby_journal.last.seq == result.seq


async def test_a_cancelled_sync_wait_is_in_doubt_never_ok(tmp_path: Path) -> None:
    async with pair(tmp_path, stalling=True, sync_timeout=Duration(5)) as p:
        await p.in_sync()
        p.standby_journal.stalled = True
        answers: list[AppendResult] = []
        with trio.move_on_after(0.2) as scope:
            answers.append(await p.primary.append(b"cancel me"))
        assert scope.cancelled_caught and answers == []
        [in_doubt] = p.primary.recent_in_doubt
        assert in_doubt.seq == 1 and in_doubt.status == "in_doubt"
        assert "cancelled" in (in_doubt.reason or "")
        assert p.primary.counters["in_doubt"] == 1
        assert p.primary_journal.last.seq == 1  # visible on the primary, not replicated
        assert not p.primary.is_replicated(1)
        p.standby_journal.release.set()
        await wait_until(lambda: p.primary.is_replicated(1), "the late acknowledgement")


# ------------------------------------------------------------------ disk full


async def test_disk_full_on_the_standby_is_reported_and_seen_by_the_primary(tmp_path: Path) -> None:
    async with pair(tmp_path, stalling=True) as p:
        await p.in_sync()
        assert (await p.primary.append(b"fits")).durable_on == "primary+standby"
        p.standby_journal.full = True
        result = await p.primary.append(b"does not fit")
        # The standby said so at once: no waiting for sync_timeout, and the policy applies.
        assert result.status == "ok" and result.degraded and result.durable_on == "primary"
        assert "disk full" in (result.reason or "")
        status = p.primary.status()
        assert status.details["state"] == "standby-failing"
        assert "disk full" in status.details["peer"]["error"] and "ENOSPC" in status.details["peer"]["error"]
        assert status.health == "degraded" and "disk full" in status.summary
        assert "StandbyDiskFull" in p.primary.announce.kinds()
        standby_status = p.standby.status()  # type: ignore[union-attr]
        assert standby_status.health == "failing" and "NOT ACKNOWLEDGING: disk full" in standby_status.summary
        assert p.standby_journal.last.seq == 1
        # The standby keeps saying it; once the disk has room it reconnects and catches up.
        p.standby_journal.full = False
        await p.in_sync()
        await wait_until(lambda: p.standby_journal.last.seq == 2, "the retry")
        assert all_records(p.standby_journal) == all_records(p.primary_journal)
        assert (await p.primary.append(b"room again")).durable_on == "primary+standby"


# ------------------------------------------------------------------ drift, status, metrics


async def test_config_drift_is_visible_on_both_sides(tmp_path: Path) -> None:
    async with pair(tmp_path, standby=False) as p:
        standby = await p.start_standby(reconnect_max=Duration(0.2))  # differs from the primary's 0.1
        await p.in_sync()
        await wait_until(lambda: bool(standby.drift) and bool(p.primary.details()["drift"]), "drift warnings")
        assert "replication settings differ" in standby.drift[0]
        assert "DriftDetected" in standby.announce.kinds() and "DriftDetected" in p.primary.announce.kinds()
        assert standby.status().health == "degraded"


async def test_status_and_metrics(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await p.in_sync()
        await p.primary.append(b"x")
        names = {m.name for m in p.primary.metrics()}
        assert {"lifeline_replication_connected", "lifeline_replication_in_sync", "lifeline_replication_acked_seq",
                "lifeline_replication_lag_records", "lifeline_replication_in_doubt_total",
                "lifeline_replication_dropped_connections_total"} <= names
        standby_names = {m.name for m in p.standby.metrics()}  # type: ignore[union-attr]
        assert {"lifeline_replication_durable_seq", "lifeline_replication_write_error"} <= standby_names
        # The append, from request to the standby's ACK, is in the histogram.
        acks = {m.name: m for m in p.primary.metrics()}["lifeline_replication_append_to_ack_seconds"]
        assert [s.value for s in acks.samples if s.name.endswith("_count")] == [1.0]
        details = p.primary.details()
        assert details["peer"]["node"] == "edge-b" and details["lag_ms"] == 0.0
        await wait_until(lambda: p.primary.details()["peer"]["last_heartbeat_age_s"] is not None, "a heartbeat")
        assert p.standby.details()["primary"]["node"] == "edge-a"  # type: ignore[union-attr]


def test_describe_write_error_recognises_enospc() -> None:
    assert describe_write_error(OSError(errno.ENOSPC, "No space left on device")).startswith("disk full")
    assert describe_write_error(JournalError("x: journal write failed: ENOSPC (No space left on device)")
                                ).startswith("disk full")
    assert describe_write_error(JournalError("x: journal write failed: EIO (Input/output error)")
                                ).startswith("write failed")


# ------------------------------------------------------------------ batches, restarts, tampering


async def test_append_many_keeps_the_request_order_in_one_group_commit(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await p.in_sync()
        fsyncs_before = p.primary_journal.stats()["fsyncs"]
        payloads = [b"leg %03d" % i for i in range(500)]
        results = await p.primary.append_many(payloads)
        assert [r.seq for r in results] == list(range(1, 501))
        assert {(r.status, r.durable_on) for r in results} == {("ok", "primary+standby")}
        assert [r.payload for r in all_records(p.primary_journal)] == payloads
        assert p.primary_journal.stats()["fsyncs"] - fsyncs_before <= 5  # not one per record
        assert all_records(p.standby_journal) == all_records(p.primary_journal)


async def test_the_standby_follows_a_restarted_primary(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await p.in_sync()
        await append_concurrently(p.primary, 50)
        await p.restart_primary()
        await wait_until(lambda: p.standby.counters["sessions"] >= 2, "the reconnect")  # type: ignore[union-attr]
        await p.in_sync()
        result = await p.primary.append(b"after the restart")
        assert result.durable_on == "primary+standby" and result.seq == 51
        assert all_records(p.standby_journal) == all_records(p.primary_journal)


class TamperingProxy:
    """A TCP relay between the standby and the primary that can flip one byte of the
    next large chunk from the primary (a man-in-the-middle altering a record)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port: int | None = None
        self.tamper_next = False
        self.tampered = 0

    async def run(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._relay, listeners, task_status=task_status)

    async def _relay(self, downstream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)

        async def pump(source: trio.SocketStream, sink: trio.SocketStream, from_primary: bool) -> None:
            try:
                while data := await source.receive_some(65536):
                    if from_primary and self.tamper_next and len(data) > 200:
                        self.tamper_next = False
                        self.tampered += 1
                        data = data[:150] + bytes([data[150] ^ 0x20]) + data[151:]
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await sink.aclose()
            await source.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, downstream, upstream, False)
            nursery.start_soon(pump, upstream, downstream, True)


async def test_a_record_altered_in_transit_is_never_written(tmp_path: Path) -> None:
    async with pair(tmp_path, standby=False) as p:
        proxy = TamperingProxy(p.port)
        await p.nursery.start(proxy.run)
        config = standby_config(tmp_path, role="standby", peer=f"127.0.0.1:{proxy.port}")
        standby = ReplicationStandby(p.standby_journal, config, "edge-b", KEY)
        await p.nursery.start(standby.run)
        await p.in_sync()
        proxy.tamper_next = True
        await p.primary.append_many([b"A" * 400 for _ in range(5)])
        assert proxy.tampered == 1
        await wait_until(lambda: standby.counters["protocol_errors"] >= 1, "the standby to refuse the frame")
        assert "fails its MAC" in (standby.last_disconnect or "")
        # It reconnected through the (now honest) relay and caught up with the true records.
        await p.in_sync()
        await wait_until(lambda: p.standby_journal.last.seq == 5, "the catch-up")
        assert all_records(p.standby_journal) == all_records(p.primary_journal)


async def _authenticate_raw(port: int, node: str) -> trio.SocketStream:
    """A hand-made standby that authenticates and then says nothing (a hung peer)."""
    from daemon.standby.protocol import Auth, Hello, ReplicationConnection

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = ReplicationConnection("standby", KEY)
    await stream.send_all(conn.send(Hello(node, "standby", 0, Position(0, 0), "lifeline 0.1.0", b"")))
    conn.receive_data(await stream.receive_some(4096))
    conn.next_event()
    await stream.send_all(conn.send(Auth()))
    return stream


async def test_the_same_standby_reconnecting_replaces_its_stale_session(tmp_path: Path) -> None:
    async with pair(tmp_path, standby=False, peer_timeout=Duration(5)) as p:
        stale = await _authenticate_raw(p.port, "edge-b")
        await wait_until(lambda: p.primary.details()["connected"], "the stale session")
        stale_address = p.primary.details()["peer"]["address"]
        await p.start_standby()  # the real edge-b, e.g. after a restart the primary did not notice
        await wait_until(lambda: p.primary.counters["sessions"] == 2, "the new session")
        await p.in_sync()
        assert p.primary.details()["peer"]["address"] != stale_address
        lost = [fields for _, kind, fields in p.primary.announce.recent if kind == "StandbyLost"]
        assert lost and "replaced by a new connection" in lost[0]["reason"]
        assert (await p.primary.append(b"served")).durable_on == "primary+standby"
        await stale.aclose()


async def test_an_append_still_writing_when_the_primary_stops_serving_is_in_doubt_at_once(tmp_path: Path) -> None:
    """A fence cancels the primary's replication while an append is in its local write:
    when the write completes there is no standby link and no timer any more; the
    answer must be in doubt at once, not after sync_timeout, and never ok."""
    async with pair(tmp_path, sync_timeout=Duration(30)) as p:
        await p.in_sync()
        journal = p.primary_journal
        original = journal.append_many
        gate = trio.Event()

        async def slow_append_many(payloads: Sequence[bytes], epoch: int) -> list[Record]:
            await gate.wait()
            return await original(payloads, epoch)

        journal.append_many = slow_append_many  # type: ignore[method-assign]
        answers: list[AppendResult] = []

        async def append() -> None:
            answers.append(await p.primary.append(b"written while fencing"))

        p.nursery.start_soon(append)
        await trio.sleep(0.05)
        p.primary_scope.cancel()  # the fence: stop serving
        await trio.sleep(0.05)
        gate.set()
        with trio.fail_after(2):  # far below the 30 s sync_timeout
            while not answers:
                await trio.sleep(0.01)
        [answer] = answers
        assert answer.status == "in_doubt" and "replication stopped" in (answer.reason or "")


# ------------------------------------------------------------------ the in-sync rule (issue 14)


class GatedJournal(StallingJournal):
    """A real journal whose append_replicated holds any batch reaching past
    ``hold_above`` until the test moves it (the standby's disk, under the test's hand:
    its acknowledgements follow its writes)."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.hold_above = 10**18
        self._moved = trio.Event()

    def allow(self, seq: int) -> None:
        self.hold_above = seq
        self._moved.set()
        self._moved = trio.Event()

    async def append_replicated(self, records: Sequence[Record]) -> Position:
        while records[-1].seq > self.hold_above:
            await self._moved.wait()
        return await self._journal.append_replicated(records)


async def test_records_answered_alone_during_catch_up_keep_the_standby_unmarked_until_it_holds_them(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 14 in one process, deterministically: the standby acknowledges exactly its
    catch-up target while records answered ok alone during the catch-up are beyond it.
    Before the fix the primary called it in sync there (and the lease's mark followed)."""
    import daemon.standby.follower as replication

    monkeypatch.setattr(replication, "APPLY_RECORDS", 1)  # one received frame, one write, one ACK
    async with pair(tmp_path, standby=False) as p:
        gated = GatedJournal(p.standby_journal)
        marks: list[tuple[str | None, int]] = []
        p.primary.sync_listener = lambda node: marks.append((node, gated.last.seq))
        await p.start_standby(journal=gated)
        await p.in_sync()
        await p.primary.append_many([b"both %d" % i for i in range(5)])
        p.stop_standby()
        await wait_until(lambda: not p.primary.details()["connected"], "the primary to see the standby go")
        alone = await p.primary.append_many([b"alone %d" % i for i in range(100)])
        assert {(r.status, r.durable_on) for r in alone} == {("ok", "primary")}
        target = p.primary_journal.last.seq  # 105
        gated.allow(5)  # the standby holds 5: it writes nothing more until told
        await p.start_standby(journal=gated)
        await wait_until(lambda: (p.primary.details()["peer"] or {}).get("sent_seq") == target, "the backlog sent")
        during = await p.primary.append_many([b"during catch-up %d" % i for i in range(50)])
        assert {(r.status, r.durable_on) for r in during} == {("ok", "primary")}  # not held back
        answered_alone = during[-1].seq  # 155
        await wait_until(lambda: p.primary.details()["peer"]["sent_seq"] == answered_alone, "all of it sent")
        gated.allow(target)  # the backlog is written and acknowledged; the rest is held
        await wait_until(lambda: p.primary.standby_acked_seq == target, "the ACK of the catch-up target")
        await trio.sleep(0.1)
        assert not p.primary.in_sync(), "in sync while records answered alone are not on the standby"
        assert [m for m in marks if m[0] is not None] == [("edge-b", 0)]  # only the first session's (empty)
        assert p.primary.details()["state"] == "converging"
        # Converging: a new append waits for the standby (it is not answered alone).
        answers: list[AppendResult] = []

        async def append() -> None:
            answers.append(await p.primary.append(b"while converging"))

        p.nursery.start_soon(append)
        await trio.sleep(0.1)
        assert answers == []
        gated.allow(10**18)
        await wait_until(lambda: bool(answers), "the converging append's answer")
        assert answers[0].status == "ok" and answers[0].durable_on == "primary+standby"
        await p.in_sync()
        node, held = marks[-1]
        assert node == "edge-b" and held >= answered_alone, marks
        assert all_records(gated) == all_records(p.primary_journal)


async def test_the_mark_guard_refuses_and_logs_instead_of_marking(tmp_path: Path) -> None:
    """A rule that wrongly says in sync (a connected standby is enough) is caught where
    the mark is set: refused, logged, counted; the daemon keeps serving."""
    from daemon.standby.insync import InSyncRule

    class Careless(InSyncRule):
        def _evaluate(self) -> bool:
            self.in_sync = self.acked_seq is not None
            return self.in_sync

    async with pair(tmp_path, standby=False) as p:
        marks: list[tuple[str | None, int]] = []
        p.primary.sync_listener = lambda node: marks.append((node, p.standby_journal.last.seq))
        p.primary._rule = Careless()
        alone = await p.primary.append_many([b"alone %d" % i for i in range(7)])
        assert {r.durable_on for r in alone} == {"primary"}
        await p.start_standby()
        await wait_until(lambda: p.primary.counters["in_sync_refused"] >= 1, "the guard to refuse")
        assert p.primary.details()["connected"]  # refused, not crashed
        # Marked only once the standby really held the records answered alone.
        await p.in_sync()
        assert [m for m in marks if m[0] is not None] and all(held >= 7 for node, held in marks if node), marks


async def test_the_standby_writes_frames_it_received_before_the_link_dropped(tmp_path: Path) -> None:
    async with pair(tmp_path, standby=False, mode="async") as p:
        gated = GatedJournal(p.standby_journal)
        standby = await p.start_standby(journal=gated)
        await p.in_sync()
        gated.allow(0)  # the standby's disk is slow: received frames queue up
        await p.primary.append_many([b"received %d" % i for i in range(20)])
        await wait_until(lambda: p.primary.details()["peer"]["sent_seq"] == 20, "the records sent")
        await trio.sleep(0.1)  # in the standby's queue
        p.primary_scope.cancel()  # the link drops (the primary's service stops)
        await trio.sleep(0.2)
        gated.allow(10**18)  # the disk moves again
        await wait_until(lambda: not standby.connected, "the standby to see the link gone")
        assert gated.last.seq == 20, "records received before the link dropped were thrown away"
        assert all_records(gated) == all_records(p.primary_journal)
