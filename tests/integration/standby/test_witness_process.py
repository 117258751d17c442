"""The lease witness as a real process (`lifeline witness` on 127.0.0.1, port 0) and
real :class:`WitnessLeaseStore` clients over TCP: grants, renewals, kill -9 and restart
on the same state file, wrong keys, garbage on the socket, a witness that is down or
hung, and the command's refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import trio

from daemon.standby.keys import generate_replication_key
from daemon.standby.lease import Grant, LeaseConflict, LeaseLost, LeaseUnavailable
from daemon.standby.witness import WitnessLeaseStore
from tests.support.cli import ROOT, cli
from tests.support.ports import free_port
from tests.support.waiting import until

CLUSTER = "lifeline"
OTHER_KEY = bytes(range(100, 132))
CAP = 20  # seconds; every test stays well below
READY = re.compile(r"event=witness\.listening address=(\S+)")


class Witness:
    """`lifeline witness` as a child process; one log file per incarnation."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.key_file = tmp_path / "witness.key"
        self.key = generate_replication_key(self.key_file)
        self.state = tmp_path / "witness.state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.address = ""

    @property
    def log(self) -> Path:
        return self.dir / f"witness-{self.incarnation}.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, timeout: float = 15.0, extra: tuple[str, ...] = ()) -> str:
        """Start it and wait for its ready line; returns "HOST:PORT". The first start
        takes any free port, a restart the same one (as systemd would restart it)."""
        self.incarnation += 1
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "witness", "--listen", self.address or "127.0.0.1:0", "--state",
                 str(self.state), "--key-file", str(self.key_file), *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        match = until(lambda: READY.search(self.log_text()) or self.proc.poll() is not None, timeout)  # type: ignore[union-attr]
        assert isinstance(match, re.Match), f"the witness did not start:\n{self.log_text()}"
        self.address = match.group(1)
        return self.address

    def store(self, node: str, *, ttl: float, timeout: float = 1.0, key: bytes | None = None) -> WitnessLeaseStore:
        return WitnessLeaseStore(self.address, key or self.key, CLUSTER, node, ttl, timeout)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[Witness]:
    w = Witness(tmp_path)
    w.start()
    try:
        yield w
    finally:
        w.close()


async def test_concurrent_acquires_exactly_one_grant_per_epoch(witness: Witness) -> None:
    with trio.fail_after(CAP):
        a, b = witness.store("edge-a", ttl=5.0), witness.store("edge-b", ttl=5.0)
        for epoch in range(5):
            results: dict[str, object] = {}

            async def try_acquire(store: WitnessLeaseStore, node: str) -> None:
                try:
                    results[node] = await store.acquire(node, epoch)
                except LeaseConflict as exc:
                    results[node] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(try_acquire, a, "edge-a")
                nursery.start_soon(try_acquire, b, "edge-b")
            winners = [node for node, result in results.items() if result == Grant(epoch + 1)]
            assert len(winners) == 1, results
            loser = "edge-b" if winners == ["edge-a"] else "edge-a"
            conflict = results[loser]
            assert isinstance(conflict, LeaseConflict) and conflict.state is not None
            assert (conflict.state.holder, conflict.state.epoch) == (winners[0], epoch + 1)
            await (a if winners == ["edge-a"] else b).release(winners[0], epoch + 1)
        assert json.loads(witness.state.read_text())["clusters"][CLUSTER]["epoch"] == 5
        await a.aclose()
        await b.aclose()
    assert witness.kill(signal.SIGTERM) == 0
    assert "event=witness.stopping signal=SIGTERM" in witness.log_text()


async def test_renewals_keep_the_lease_and_it_passes_on_once_they_stop(witness: Witness) -> None:
    ttl = 0.4
    with trio.fail_after(CAP):
        a, b = witness.store("edge-a", ttl=ttl), witness.store("edge-b", ttl=ttl)
        assert await a.acquire("edge-a", 0) == Grant(1)
        start = trio.current_time()
        while trio.current_time() - start < 3 * ttl:
            await trio.sleep(ttl / 4)
            assert await a.renew("edge-a", 1) == Grant(1)
            state = await b.read()
            assert (state.holder, state.epoch) == ("edge-a", 1)
            with pytest.raises(LeaseConflict):
                await b.acquire("edge-b", 1)
        stopped = trio.current_time()
        while not (await b.read()).free:
            await trio.sleep(0.02)
        assert trio.current_time() - stopped <= ttl + 0.5
        with pytest.raises(LeaseLost, match="expired"):
            await a.renew("edge-a", 1)
        assert await b.acquire("edge-b", 1) == Grant(2)


async def test_kill_9_and_restart_keeps_the_epoch_and_the_lease_for_a_full_ttl(witness: Witness) -> None:
    ttl = 0.5
    with trio.fail_after(CAP):
        a, b = witness.store("edge-a", ttl=ttl), witness.store("edge-b", ttl=ttl)
        assert await a.acquire("edge-a", 0) == Grant(1)
        await a.release("edge-a", 1)
        assert await a.acquire("edge-a", 1) == Grant(2)
        assert witness.kill() == -signal.SIGKILL  # mid-lease, no chance to save anything more
        restarted_at = time.monotonic()
        witness.start()
        conflicts = []
        while True:
            try:
                grant = await b.acquire("edge-b", 2)
                break
            except LeaseConflict as exc:
                conflicts.append(exc.state)
            await trio.sleep(0.02)
        granted_at = time.monotonic()
        # The witness loaded its state after we started it: the lease cannot have passed on sooner.
        assert granted_at - restarted_at >= ttl
        assert grant == Grant(3)
        assert conflicts and all(s is not None and (s.holder, s.epoch) == ("edge-a", 2) for s in conflicts)
        assert "event=state.loaded" in witness.log_text() and "epochs=lifeline:2" in witness.log_text()
        assert json.loads(witness.state.read_text())["clusters"][CLUSTER]["epoch"] == 3


async def test_after_a_restart_the_holder_may_renew_and_keeps_the_lease(witness: Witness) -> None:
    with trio.fail_after(CAP):
        a, b = witness.store("edge-a", ttl=3.0), witness.store("edge-b", ttl=3.0)
        assert await a.acquire("edge-a", 0) == Grant(1)
        await a.set_sync_mark("edge-a", 1, "edge-b")
        witness.kill()
        witness.start()
        # Same clients, same (now dead) connections: they notice and reconnect, no call lost.
        assert await a.renew("edge-a", 1) == Grant(1)
        state = await b.read()
        assert (state.holder, state.epoch, state.sync_node) == ("edge-a", 1, "edge-b")
        with pytest.raises(LeaseConflict):
            await b.acquire("edge-b", 1)


async def test_a_wrong_key_is_rejected_and_gets_nothing(witness: Witness) -> None:
    with trio.fail_after(CAP):
        intruder = witness.store("edge-b", ttl=1.0, key=OTHER_KEY)
        with pytest.raises(LeaseUnavailable, match="refused us"):
            await intruder.acquire("edge-b", 0)
        with pytest.raises(LeaseUnavailable, match="refused us"):
            await intruder.read()
        state = await witness.store("edge-a", ttl=1.0).read()
        assert (state.holder, state.epoch) == (None, 0)
        assert "event=auth.failed" in witness.log_text()
        assert json.loads(witness.state.read_text())["clusters"] == {}


async def test_garbage_and_absurd_lengths_drop_only_that_connection(witness: Witness) -> None:
    host, port = witness.address.rsplit(":", 1)
    with trio.fail_after(CAP):
        a = witness.store("edge-a", ttl=5.0)
        assert await a.acquire("edge-a", 0) == Grant(1)
        for junk in (b"GET / HTTP/1.1\r\nHost: witness\r\n\r\n", struct.pack("!I", 2**31),
                     struct.pack("!I", 9) + b"not json!", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
            raw = await trio.open_tcp_stream(host, int(port))
            await raw.send_all(junk)
            with trio.fail_after(5):
                while await raw.receive_some(1024):  # until the witness closes it
                    pass
            await raw.aclose()
        assert await a.renew("edge-a", 1) == Grant(1)  # on its original connection
        log = witness.log_text()
        assert log.count("event=connection.opened") == 1
        # Strangers' drops coalesce: the first is logged at once (count=1), the next
        # ones of that interval become one line with their count later.
        assert log.count("event=connection.dropped") == 1 and "count=1 " in log
        assert witness.proc is not None and witness.proc.poll() is None


async def test_witness_down_or_hung_is_unavailable_within_the_timeout(witness: Witness) -> None:
    with trio.fail_after(CAP):
        nobody = WitnessLeaseStore(f"127.0.0.1:{free_port()}", witness.key, CLUSTER, "edge-a", 1.0, 0.3)
        start = trio.current_time()
        with pytest.raises(LeaseUnavailable):
            await nobody.read()
        assert trio.current_time() - start < 0.3 + 1.0
        a = witness.store("edge-a", ttl=1.0, timeout=0.3)
        assert (await a.read()).epoch == 0
        assert witness.proc is not None
        os.kill(witness.proc.pid, signal.SIGSTOP)  # hung: the kernel still accepts, nobody answers
        try:
            start = trio.current_time()
            with pytest.raises(LeaseUnavailable, match="within 0.3s"):
                await a.acquire("edge-a", 0)
            assert 0.3 <= trio.current_time() - start < 0.3 + 1.0
        finally:
            os.kill(witness.proc.pid, signal.SIGCONT)
        # The acquire may have been granted once the witness woke up; either way the next
        # call has a fresh connection and its own answer.
        state = await a.read()
        assert state.epoch in (0, 1)


def test_a_corrupt_state_file_refuses_to_start_naming_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "witness.key"
    generate_replication_key(key_file)
    state = tmp_path / "witness.state"
    state.write_text('{"version": 1, "clusters": {"lifeline": {"epo')
    result = cli("witness", "--listen", "127.0.0.1:0", "--state", str(state), "--key-file", str(key_file))
    assert result.returncode == 1, result.stderr
    assert f"{state}: the witness state is corrupt" in result.stderr
    assert "Restore the file from a backup" in result.stderr
    assert state.read_text().endswith("epo")  # left alone for the operator


def test_the_command_refuses_bad_keys_and_arguments(tmp_path: Path) -> None:
    key_file = tmp_path / "witness.key"
    state = tmp_path / "witness.state"
    result = cli("witness", "--listen", "127.0.0.1:0", "--state", str(state), "--key-file", str(key_file))
    assert result.returncode == 2
    assert f"{key_file}: cannot read the key" in result.stderr and "lifeline keys witness" in result.stderr
    generate_replication_key(key_file)
    key_file.chmod(0o644)
    result = cli("witness", "--listen", "127.0.0.1:0", "--state", str(state), "--key-file", str(key_file))
    assert result.returncode == 2 and f"chmod 600 {key_file}" in result.stderr
    key_file.chmod(0o600)
    result = cli("witness", "--listen", "nowhere", "--state", str(state), "--key-file", str(key_file))
    assert result.returncode == 2 and "--listen" in result.stderr
    result = cli("witness", "--listen", "127.0.0.1:0", "--key-file", str(key_file))
    assert result.returncode == 2 and "--state" in result.stderr
    missing_dir = tmp_path / "absent" / "witness.state"
    result = cli("witness", "--listen", "127.0.0.1:0", "--state", str(missing_dir), "--key-file", str(key_file))
    assert result.returncode == 1 and str(tmp_path / "absent") in result.stderr
    assert not state.exists()


def test_a_second_witness_on_the_same_state_refuses(witness: Witness) -> None:
    result = cli("witness", "--listen", "127.0.0.1:0", "--state", str(witness.state),
                 "--key-file", str(witness.key_file))
    assert result.returncode == 1
    assert "another witness is using this state file" in result.stderr


def scrape(address: str) -> dict[str, float]:
    """GET /metrics: every sample line as {name{labels}: value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_the_witness_exports_its_own_metrics(tmp_path: Path) -> None:
    witness = Witness(tmp_path)
    metrics_address = f"127.0.0.1:{free_port()}"
    witness.start(extra=("--metrics", metrics_address))
    try:
        with trio.fail_after(CAP):
            a, b = witness.store("edge-a", ttl=5.0), witness.store("edge-b", ttl=5.0)
            assert await a.acquire("edge-a", 0) == Grant(1)
            assert await a.renew("edge-a", 1) == Grant(1)
            assert await a.renew("edge-a", 1) == Grant(1)
            with pytest.raises(LeaseConflict):
                await b.acquire("edge-b", 0)
            with pytest.raises(LeaseUnavailable):
                await witness.store("edge-b", ttl=1.0, key=OTHER_KEY).read()
            samples = await trio.to_thread.run_sync(scrape, metrics_address)
            await a.aclose()
            await b.aclose()
        assert samples['lifeline_witness_leases_granted_total{cluster="lifeline"}'] == 1
        assert samples['lifeline_witness_renewals_total{cluster="lifeline"}'] == 2
        refusals = {k: v for k, v in samples.items() if k.startswith("lifeline_witness_refusals_total")}
        assert sum(refusals.values()) == 1 and 'op="acquire"' in next(iter(refusals))
        assert samples["lifeline_witness_connections_total"] == 2
        assert samples["lifeline_witness_connections_open"] == 2
        assert samples["lifeline_witness_auth_failures_total"] == 1
        assert samples['lifeline_witness_epoch{cluster="lifeline"}'] == 1
        assert samples["process_resident_memory_bytes"] > 1e6
    finally:
        witness.close()


def test_keys_witness_makes_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "witness.key"
    result = cli("keys", "witness", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "witness_key_file" in result.stdout
    assert out.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(out.read_text().strip())) == 32
    again = cli("keys", "witness", "--out", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr


async def test_a_witness_with_a_key_per_cluster(tmp_path: Path) -> None:
    """`--cluster-key CLUSTER=PATH`: each pair proves with its own key; one pair's key
    holder gets nothing from another pair's lease."""
    keys = {name: generate_replication_key(tmp_path / f"{name}.key") for name in ("pair-a", "pair-b")}
    log = tmp_path / "witness.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "witness", "--listen", "127.0.0.1:0", "--state",
             str(tmp_path / "state.json"), "--cluster-key", f"pair-a={tmp_path / 'pair-a.key'}",
             "--cluster-key", f"pair-b={tmp_path / 'pair-b.key'}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        match = until(lambda: READY.search(log.read_text(errors="replace")) or proc.poll() is not None, 15)
        assert isinstance(match, re.Match), log.read_text()
        address = match.group(1)
        with trio.fail_after(CAP):
            grant = await WitnessLeaseStore(address, keys["pair-a"], "pair-a", "edge-a", 1.0, 1.0).acquire("edge-a", 0)
            assert grant.epoch == 1
            intruder = WitnessLeaseStore(address, keys["pair-a"], "pair-b", "edge-a", 1.0, 1.0)
            with pytest.raises(LeaseUnavailable):
                await intruder.acquire("edge-a", 0)
            unknown = WitnessLeaseStore(address, keys["pair-a"], "pair-z", "edge-a", 1.0, 1.0)
            with pytest.raises(LeaseUnavailable):
                await unknown.read()
            state = await WitnessLeaseStore(address, keys["pair-b"], "pair-b", "edge-b", 1.0, 1.0).read()
            assert (state.holder, state.epoch) == (None, 0)
    finally:
        proc.kill()
        proc.wait(timeout=10)
