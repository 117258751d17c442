"""Every TCP listener bounded, tried as an attacker would (issue 16), over real TCP on
loopback: the replication primary and the metrics server in this trio run, the witness
as a real `lifeline witness` process (also at a low RLIMIT_NOFILE).

Each test fails with its bound removed: an oversized pre-auth frame is refused from its
header (not after the body or the handshake timeout), the newest connection past a cap
is closed at once, a silent stranger is dropped at handshake_timeout (not 5 s later), a
slow-loris metrics client at its bound, and the descriptor limit costs one log line with
a count instead of a traceback every 0.1 s.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from daemon.config import Duration, JournalConfig, StandbyConfig
from daemon.core.listeners import Limits
from daemon.metrics import MetricsServer
from daemon.standby.journal import Journal
from daemon.standby.keys import generate_replication_key
from daemon.standby.lease import Grant
from daemon.standby.protocol import (
    HEADER,
    MAGIC,
    NEED_DATA,
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    FrameType,
    Hello,
    ReplicationConnection,
    Welcome,
)
from daemon.standby import Position
from daemon.standby.replication import ReplicationPrimary
from daemon.standby.witness import WitnessLeaseStore
from tests.support.cli import ROOT
from tests.support.waiting import until

KEY = bytes(range(32))
CAP = 20


# --------------------------------------------------------------------------- helpers


async def connect(port: int, source: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port from ``source`` (any of 127/8 is ours)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def closed_within(stream: trio.SocketStream, seconds: float) -> bool:
    """Did the server close (or reset) ``stream`` within ``seconds``?"""
    with trio.move_on_after(seconds):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def refused_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """Is a new connection from ``source`` closed (or reset) by the server at once?"""
    try:
        stream = await connect(port, source)
    except ConnectionResetError:  # the reset arrived before connect() returned
        return True
    async with stream:
        return await closed_within(stream, 1.0)


async def still_open(stream: trio.SocketStream) -> bool:
    return not await closed_within(stream, 0.3)


async def standby_proves_the_key(port: int, source: str = "127.0.0.1") -> bool:
    """A real standby handshake (HELLO, CHALLENGE, AUTH): welcomed?"""
    stream = await connect(port, source)
    conn = ReplicationConnection("standby", KEY)
    async with stream:
        await stream.send_all(conn.send(Hello("edge-b", "standby", 0, Position(0, 0), "test", b"d" * 32)))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data:
                    return False
                continue
            if isinstance(event, Challenge):
                await stream.send_all(conn.send(Auth()))
                continue
            return isinstance(event, Welcome)


@asynccontextmanager
async def primary(tmp_path: Path, limits: Limits) -> AsyncIterator[ReplicationPrimary]:
    journal = Journal.open(tmp_path / "a", JournalConfig(fsync="always"))
    config = StandbyConfig(role="primary", key_file=tmp_path / "k", listen="127.0.0.1:0", peer=None,
                           heartbeat=Duration(0.05), peer_timeout=Duration(0.5))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            server = ReplicationPrimary(journal, config, "edge-a", KEY, limits=limits)
            await nursery.start(server.run)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        journal.close()


# --------------------------------------------------------------------------- replication


async def test_replication_oversized_hello_is_refused_from_its_header(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        # 21 connections from one address in a row: a burst above that (the pacing has its own test).
        async with primary(tmp_path, Limits(handshake_timeout=10.0, accept_burst_per_source=64)) as server:
            assert server.bound_port
            streams = []
            for _ in range(20):  # 20 strangers each announcing an 8 MiB "hello"
                stream = await connect(server.bound_port)
                await stream.send_all(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, 8 * 1024 * 1024 - 12))
                streams.append(stream)
            start = trio.current_time()
            for stream in streams:
                # Closed at once: not after its body (never sent) nor after the 10 s deadline.
                assert await closed_within(stream, 2.0)
                await stream.aclose()
            assert trio.current_time() - start < 2.0
            assert server.counters["protocol_errors"] == 20
            assert await standby_proves_the_key(server.bound_port)  # the daemon is fine


async def test_replication_caps_refuse_the_newest(tmp_path: Path) -> None:
    limits = Limits(max_connections=6, max_per_source=4, max_unauthenticated=3, max_unauthenticated_per_source=2,
                    handshake_timeout=10.0)
    with trio.fail_after(CAP):
        async with primary(tmp_path, limits) as server:
            port = server.bound_port
            assert port
            # Per source: two strangers from 127.0.0.2 hold their slots; the third is refused.
            held = [await connect(port, "127.0.0.2"), await connect(port, "127.0.0.2")]
            assert await refused_at_once(port, "127.0.0.2")
            assert all([await still_open(s) for s in held])
            # Total unauthenticated: a third stranger from elsewhere fits, a fourth does not.
            held.append(await connect(port, "127.0.0.3"))
            assert await refused_at_once(port, "127.0.0.4")
            assert all([await still_open(s) for s in held])
            snapshot = server.listener.snapshot()  # type: ignore[union-attr]
            assert snapshot["refused_max_unauthenticated_per_source"] == 1
            assert snapshot["refused_max_unauthenticated"] == 1
            assert snapshot["unauthenticated"] == 3
            # Once the strangers go, a real standby proves the key and is counted as such.
            for s in held:
                await s.aclose()
            await trio.sleep(0.2)
            assert await standby_proves_the_key(port)


async def test_replication_a_silent_stranger_is_dropped_at_the_handshake_timeout(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with primary(tmp_path, Limits(handshake_timeout=0.5)) as server:
            assert server.bound_port
            stream = await connect(server.bound_port)
            start = trio.current_time()
            assert await closed_within(stream, 3.0)
            assert 0.4 < trio.current_time() - start < 2.0  # not the 5 s of the whole agreement
            assert server.counters["handshake_timeouts"] == 1


async def test_replication_paces_a_source_whose_handshakes_fail(tmp_path: Path) -> None:
    """A source that keeps failing its handshake gets its burst, then is refused at
    accept: no handler, no challenge (the protocol-error count stops), while a standby
    that proves the key reconnects as often as it likes, from the same address too."""
    limits = Limits(handshake_timeout=10.0, accept_rate_per_source=1.0, accept_burst_per_source=4)
    with trio.fail_after(CAP):
        async with primary(tmp_path, limits) as server:
            port = server.bound_port
            assert port

            async def oversized(source: str) -> None:
                try:
                    stream = await connect(port, source)
                except ConnectionResetError:
                    return
                async with stream:
                    try:
                        await stream.send_all(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, 8 << 20))
                    except trio.BrokenResourceError:
                        pass
                    assert await closed_within(stream, 2.0)

            start = trio.current_time()
            for _ in range(12):
                await oversized("127.0.0.2")
            elapsed = trio.current_time() - start
            # The burst (4) and what the rate refilled meanwhile were served; the rest
            # never reached the protocol.
            assert server.counters["protocol_errors"] <= 4 + int(elapsed * 1.0) + 1 < 12
            snapshot = server.listener.snapshot()  # type: ignore[union-attr]
            assert snapshot["refused_rate_per_source"] == 12 - server.counters["protocol_errors"]
            assert snapshot["paced_sources"] == 1
            # Other addresses are not paced by it; a real standby from 127.0.0.1 proves the
            # key ten times in a row and is never paced (each proof gives its token back).
            for _ in range(10):
                assert await standby_proves_the_key(port, "127.0.0.1")
            assert await standby_proves_the_key(port, "127.0.0.3")
            # And the paced source gets a token back a second later.
            errors = server.counters["protocol_errors"]
            await trio.sleep(1.1)
            await oversized("127.0.0.2")
            assert server.counters["protocol_errors"] == errors + 1


# --------------------------------------------------------------------------- metrics


async def test_metrics_slowloris_is_dropped_at_the_bound_and_the_cap_holds() -> None:
    limits = Limits(max_unauthenticated=4, max_unauthenticated_per_source=4, handshake_timeout=1.0)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            server = MetricsServer("127.0.0.1", 0, lambda: [], limits=limits)
            await nursery.start(server.run)
            port = server.bound_port
            assert port
            start = trio.current_time()
            slow = [await connect(port) for _ in range(4)]

            async def trickle(stream: trio.SocketStream) -> None:
                for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.2 s
                    try:
                        await stream.send_all(bytes([byte]))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(0.2)

            for stream in slow:
                nursery.start_soon(trickle, stream)
            assert await refused_at_once(port)  # past the cap
            for stream in slow:
                assert await closed_within(stream, 3.0)
            # Dropped at handshake_timeout (1 s), not at the 5 s whole-request deadline.
            assert trio.current_time() - start < 2.5
            assert server.slow_requests == 4
            assert server.listener.budget.refused["max-unauthenticated"] >= 1
            for stream in slow:
                await stream.aclose()
            # And it serves again.
            ok = await connect(port)
            await ok.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await ok.receive_some(1024)).startswith(b"HTTP/1.1 200")
            await ok.aclose()
            nursery.cancel_scope.cancel()


async def test_metrics_a_client_that_sends_its_request_is_never_paced() -> None:
    limits = Limits(accept_rate_per_source=0.1, accept_burst_per_source=2, handshake_timeout=0.3)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            server = MetricsServer("127.0.0.1", 0, lambda: [], limits=limits)
            await nursery.start(server.run)
            port = server.bound_port
            assert port
            for _ in range(10):  # a scraper polling in a loop: each request gives its token back
                ok = await connect(port)
                await ok.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await ok.receive_some(1024)).startswith(b"HTTP/1.1 200")
                await ok.aclose()
            # Two silent connections use the burst; the third is refused at accept.
            silent = [await connect(port), await connect(port)]
            for stream in silent:
                assert await closed_within(stream, 2.0)
                await stream.aclose()
            assert await refused_at_once(port)
            assert server.listener.pacer.refused == 1
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the witness (a process)


READY = re.compile(r"event=witness\.listening address=(\S+)")


def start_witness(tmp_path: Path, *args: str, nofile: int | None = None) -> tuple[subprocess.Popen[bytes], str, Path]:
    key_file = tmp_path / "witness.key"
    if not key_file.exists():
        generate_replication_key(key_file)
    log = tmp_path / "witness.log"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "witness", "--listen", "127.0.0.1:0", "--state",
             str(tmp_path / "witness.state"), "--key-file", str(key_file), *args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT, preexec_fn=limit,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    match = until(lambda: READY.search(log.read_text(errors="replace")) or proc.poll() is not None, 15)
    assert isinstance(match, re.Match), log.read_text(errors="replace")
    return proc, match.group(1), key_file


@pytest.fixture
def witness_procs() -> list[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs  # type: ignore[misc]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_witness_oversized_hello_and_caps(tmp_path: Path, witness_procs: list) -> None:
    proc, address, key_file = start_witness(tmp_path, "--max-unauthenticated-per-source", "2",
                                            "--handshake-timeout", "10")
    witness_procs.append(proc)
    port = int(address.rsplit(":", 1)[1])
    with trio.fail_after(CAP):
        store = WitnessLeaseStore(address, _key(key_file), "lifeline",
                                  "edge-a", 5.0, 2.0)
        assert await store.acquire("edge-a", 0) == Grant(1)
        # A 64 KiB "hello" (the old maximum) from a stranger: refused from its length.
        big = await connect(port, "127.0.0.2")
        await big.send_all(struct.pack("!I", 64 * 1024) + b"{")
        assert await closed_within(big, 2.0)
        # Per source: two strangers hold their slots, the third is refused at once.
        held = [await connect(port, "127.0.0.3"), await connect(port, "127.0.0.3")]
        assert await refused_at_once(port, "127.0.0.3")
        assert all([await still_open(s) for s in held])
        assert await store.renew("edge-a", 1) == Grant(1)  # the lease is unaffected
        for s in held:
            await s.aclose()
        await store.aclose()
    assert proc.poll() is None
    log = (tmp_path / "witness.log").read_text()
    assert "announced before authentication" in log
    assert "event=listener.refused" in log and "reason=max-unauthenticated-per-source" in log


async def test_witness_paces_a_source_whose_handshakes_fail(tmp_path: Path, witness_procs: list) -> None:
    proc, address, key_file = start_witness(tmp_path, "--accept-burst-per-source", "2",
                                            "--accept-rate-per-source", "0.1")
    witness_procs.append(proc)
    port = int(address.rsplit(":", 1)[1])
    with trio.fail_after(CAP):
        store = WitnessLeaseStore(address, _key(key_file), "lifeline", "edge-a", 5.0, 2.0)
        assert await store.acquire("edge-a", 0) == Grant(1)
        for _ in range(8):  # garbage from 127.0.0.2: two reach the protocol, six are refused at accept
            try:
                stream = await connect(port, "127.0.0.2")
            except ConnectionResetError:
                continue
            async with stream:
                try:
                    await stream.send_all(struct.pack("!I", 64 * 1024) + b"{")
                except trio.BrokenResourceError:
                    pass
                assert await closed_within(stream, 2.0)
        # Clients that prove the key reconnect freely, from the same address as ever.
        for _ in range(6):
            await store.aclose()
            assert await store.renew("edge-a", 1) == Grant(1)
        await store.aclose()
    assert proc.poll() is None
    log = (tmp_path / "witness.log").read_text()
    assert log.count("announced before authentication") == 1  # logged once: it coalesces
    assert "event=listener.refused" in log and "reason=rate-per-source" in log and "source=127.0.0.2" in log


def _key(path: Path) -> bytes:
    from daemon.standby.keys import load_replication_key

    return load_replication_key(path)


async def test_witness_at_its_descriptor_limit_survives_with_one_log_line(tmp_path: Path,
                                                                           witness_procs: list) -> None:
    # Caps above the descriptor limit, so that accept() itself hits EMFILE.
    proc, address, key_file = start_witness(
        tmp_path, "--max-connections", "1000", "--max-per-source", "1000", "--max-unauthenticated", "1000",
        "--max-unauthenticated-per-source", "1000", "--accept-burst-per-source", "1000", "--handshake-timeout", "30",
        nofile=64)
    witness_procs.append(proc)
    port = int(address.rsplit(":", 1)[1])
    flood: list[socket.socket] = []
    try:
        for _ in range(120):  # twice the descriptor limit
            s = socket.create_connection(("127.0.0.1", port))
            flood.append(s)
        time.sleep(1.5)  # about 15 retries of the old loop, each with a traceback
        log = (tmp_path / "witness.log").read_text()
        assert proc.poll() is None
        assert log.count("event=listener.at_fd_limit") == 1, log[-3000:]
        assert "count=1 " in log and "Traceback" not in log and "accept returned" not in log
        # The newest connections were accepted and closed (dropped), not left in the backlog.
        dropped = 0
        for s in flood:
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    dropped += 1
            except socket.timeout:
                pass
            except OSError:
                dropped += 1
        assert dropped >= 40
    finally:
        for s in flood:
            s.close()
    # The flood gone, the witness serves a real client again.
    with trio.fail_after(CAP):
        await trio.sleep(0.5)
        store = WitnessLeaseStore(address, _key(key_file), "lifeline", "edge-a", 5.0, 2.0)
        assert await store.acquire("edge-a", 0) == Grant(1)
        await store.aclose()
    assert proc.poll() is None
