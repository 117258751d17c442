"""The etcd lease backend against real etcd members (``/usr/bin/etcd``) on loopback.

etcd runs with 25 ms heartbeats and a 250 ms election timeout, which brings its minimum
lease TTL down to 1 s, so the stores here use ttl 1 s. etcd notices an expired lease on a
500 ms tick: a lease left alone goes away 1 to 1.5 s after its last renewal.

Each test uses its own cluster name (key prefix) in the shared single-member etcd, so
tests do not see each other's keys; the failover tests start their own three members.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from daemon.lab.etcd import ETCD_BINARY, EtcdCluster
from daemon.standby import Position
from daemon.standby.etcd import MIN_LIVE_TTL, EtcdLeaseStore
from daemon.standby.lease import Grant, LeaseConflict, LeaseLost, LeaseUnavailable

pytestmark = pytest.mark.skipif(not EtcdCluster.available(), reason=f"etcd is not installed ({ETCD_BINARY} missing)")

TTL = 1.0
TIMEOUT = 0.5
_names = itertools.count()


@pytest.fixture(scope="module")
def etcd1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.local(1, tmp_path_factory.mktemp("etcd1"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_etcd1(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A single member this test may stop, pause or kill."""
    cluster = EtcdCluster.local(1, tmp_path / "etcd")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.local(3, tmp_path / "etcd")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@asynccontextmanager
async def stores(endpoints: list[str], *nodes: str, cluster: str | None = None, ttl: float = TTL,
                 timeout: float = TIMEOUT) -> AsyncIterator[list[EtcdLeaseStore]]:
    """One store per node, all on the same lease (a fresh cluster name unless given)."""
    name = cluster or f"t{next(_names)}"
    made = [EtcdLeaseStore(list(endpoints), name, node, ttl, timeout) for node in nodes]
    try:
        yield made
    finally:
        for store in made:
            await store.aclose()


async def wait_free(store: EtcdLeaseStore, limit: float) -> float:
    """Read until the lease is free; how long that took."""
    began = trio.current_time()
    with trio.fail_after(limit):
        while not (await store.read()).free:
            await trio.sleep(0.05)
    return trio.current_time() - began


# --------------------------------------------------------------------------- one member


async def test_fresh_store_reads_never_granted(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a") as (a,):
        state = await a.read()
    assert (state.holder, state.epoch, state.ttl_remaining, state.sync_node, state.last_holder, state.members) == (
        None, 0, 0.0, None, None, ())
    assert state.free


async def test_acquire_then_second_node_refused(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        assert grant.epoch > 0
        state = await b.read()
        assert (state.holder, state.epoch, state.last_holder) == ("a", grant.epoch, "a")
        assert MIN_LIVE_TTL <= state.ttl_remaining <= TTL and not state.free

        with pytest.raises(LeaseConflict) as refused:
            await b.acquire("b", 0)
        assert refused.value.state is not None
        assert (refused.value.state.holder, refused.value.state.epoch) == ("a", grant.epoch)
        assert "a holds it" in str(refused.value)
        # Not even at the right epoch while the lease is live.
        with pytest.raises(LeaseConflict) as refused:
            await b.acquire("b", grant.epoch)
        assert refused.value.state is not None and refused.value.state.holder == "a"
        # The refused attempts did not move the epoch.
        assert (await a.read()).epoch == grant.epoch


async def test_renewals_keep_the_lease_past_its_ttl(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        began = trio.current_time()
        while trio.current_time() - began < 2.5 * TTL:  # past ttl + etcd's 500 ms expiry tick
            assert await a.renew("a", grant.epoch) == grant
            await trio.sleep(TTL / 3)
            state = await b.read()
            assert (state.holder, state.epoch) == ("a", grant.epoch) and not state.free
        with pytest.raises(LeaseConflict):
            await b.acquire("b", grant.epoch)


async def test_expired_lease_is_free_and_passes_on_at_a_higher_epoch(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        took = await wait_free(b, limit=TTL + 2)
        assert TTL * 0.9 <= took <= TTL + 1.0, f"lease freed {took:.2f}s after the grant"
        state = await b.read()
        assert (state.holder, state.epoch, state.ttl_remaining, state.last_holder) == (None, grant.epoch, 0.0, "a")

        with pytest.raises(LeaseLost, match="expired or was revoked"):
            await a.renew("a", grant.epoch)
        second = await b.acquire("b", state.epoch)
        assert second.epoch > grant.epoch
        state = await a.read()
        assert (state.holder, state.epoch, state.last_holder) == ("b", second.epoch, "b")
        # The old holder cannot renew its way back, even knowing the lease from the key.
        with pytest.raises(LeaseLost):
            await a.renew("a", grant.epoch)


async def attempt(store: EtcdLeaseStore, node: str, expected: int,
                  results: dict[str, Grant | LeaseConflict]) -> None:
    try:
        results[node] = await store.acquire(node, expected)
    except LeaseConflict as e:
        results[node] = e


async def test_concurrent_acquires_at_the_same_epoch_one_wins(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        expected = 0
        winners: list[str] = []
        for _ in range(10):
            results: dict[str, Grant | LeaseConflict] = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt, a, "a", expected, results)
                nursery.start_soon(attempt, b, "b", expected, results)
            granted = {node: r for node, r in results.items() if isinstance(r, Grant)}
            assert len(granted) == 1, results
            (winner, grant), = granted.items()
            winners.append(winner)
            assert grant.epoch > expected
            state = await a.read()
            assert (state.holder, state.epoch) == (winner, grant.epoch)
            await (a if winner == "a" else b).release(winner, grant.epoch)
            expected = grant.epoch
        assert len(winners) == 10


async def test_stale_expected_epoch_is_refused(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await a.release("a", grant.epoch)
        with pytest.raises(LeaseConflict, match=f"the epoch is {grant.epoch}, not 0") as refused:
            await b.acquire("b", 0)
        assert refused.value.state is not None
        assert (refused.value.state.holder, refused.value.state.epoch) == (None, grant.epoch)
        with pytest.raises(LeaseConflict):
            await b.acquire("b", grant.epoch - 1)
        assert (await b.acquire("b", grant.epoch)).epoch > grant.epoch


async def test_release_frees_at_once_and_only_for_the_holder(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await b.release("b", grant.epoch)          # not the holder: no-op
        await a.release("a", grant.epoch - 1)      # wrong epoch: no-op
        assert (await b.read()).holder == "a"

        await a.release("a", grant.epoch)
        state = await b.read()
        assert (state.holder, state.epoch, state.last_holder, state.ttl_remaining) == (None, grant.epoch, "a", 0.0)
        await a.release("a", grant.epoch)          # twice: no-op
        with pytest.raises(LeaseLost):
            await a.renew("a", grant.epoch)
        # Free at once: the other node takes it without waiting for the ttl.
        assert (await b.acquire("b", grant.epoch)).epoch > grant.epoch


async def test_renew_through_another_store_instance(etcd1: EtcdCluster) -> None:
    """A restarted daemon (a new store object) can renew the lease it holds; nobody can
    renew at the wrong epoch or for another node."""
    async with stores(etcd1.endpoints, "a", "a", "b") as (a, a2, b):
        grant = await a.acquire("a", 0)
        assert await a2.renew("a", grant.epoch) == grant
        with pytest.raises(LeaseLost, match="granted again at epoch"):
            await a2.renew("a", grant.epoch + 1)
        with pytest.raises(LeaseLost, match="a holds the lease"):
            await b.renew("b", grant.epoch)


async def test_sync_mark_only_by_the_live_holder(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await a.set_sync_mark("a", grant.epoch, "b")
        assert (await b.read()).sync_node == "b"

        with pytest.raises(LeaseLost):
            await b.set_sync_mark("b", grant.epoch, None)
        with pytest.raises(LeaseLost):
            await a.set_sync_mark("a", grant.epoch + 1, None)
        assert (await b.read()).sync_node == "b"

        await a.set_sync_mark("a", grant.epoch, None)
        assert (await b.read()).sync_node is None
        await a.set_sync_mark("a", grant.epoch, "b")
        await a.release("a", grant.epoch)
        with pytest.raises(LeaseLost):
            await a.set_sync_mark("a", grant.epoch, None)
        # The mark outlives the lease: the next holder learns who was in sync.
        assert (await b.read()).sync_node == "b"


async def test_member_reports_round_trip(etcd1: EtcdCluster) -> None:
    async with stores(etcd1.endpoints, "a", "b") as (a, b):
        await a.report("a", Position(0, 0), 0)
        await b.report("b", Position(0, 0), 0)
        state = await a.read()
        assert [(m.node, m.position, m.seen_epoch) for m in state.members] == [
            ("a", Position(0, 0), 0), ("b", Position(0, 0), 0)]
        grant = await a.acquire("a", 0)
        await a.release("a", grant.epoch)
        await b.report("b", Position(grant.epoch, 17), grant.epoch)  # a later report replaces the first
        state = await a.read()
        assert [(m.node, m.position, m.seen_epoch) for m in state.members] == [
            ("a", Position(0, 0), 0), ("b", Position(grant.epoch, 17), grant.epoch)]
        assert state.peer_position("a") == Position(grant.epoch, 17)  # b's report speaks at this epoch
        assert state.peer_position("b") is None                       # a's was made at epoch 0


# --------------------------------------------------------------------------- etcd down


async def test_unavailable_within_timeout_when_etcd_is_stopped(own_etcd1: EtcdCluster) -> None:
    async with stores(own_etcd1.endpoints, "a") as (a,):
        grant = await a.acquire("a", 0)
        own_etcd1.kill(own_etcd1.members[0])
        calls = [
            ("read", a.read()),
            ("acquire", a.acquire("a", grant.epoch)),
            ("renew", a.renew("a", grant.epoch)),
            ("release", a.release("a", grant.epoch)),
            ("set_sync_mark", a.set_sync_mark("a", grant.epoch, None)),
            ("report", a.report("a", Position(1, 1), grant.epoch)),
        ]
        for name, call in calls:
            began = trio.current_time()
            with pytest.raises(LeaseUnavailable) as failed:
                await call
            took = trio.current_time() - began
            assert took <= TIMEOUT + 0.3, f"{name} took {took:.2f}s"
            assert own_etcd1.endpoints[0] in str(failed.value), str(failed.value)  # names the endpoint


async def test_unavailable_within_timeout_when_etcd_hangs(own_etcd1: EtcdCluster) -> None:
    member = own_etcd1.members[0]
    async with stores(own_etcd1.endpoints, "a") as (a,):
        grant = await a.acquire("a", 0)
        own_etcd1.pause(member)
        try:
            for call in (a.read(), a.renew("a", grant.epoch)):
                began = trio.current_time()
                with pytest.raises(LeaseUnavailable, match="no answer within"):
                    await call
                assert TIMEOUT * 0.9 <= trio.current_time() - began <= TIMEOUT + 0.3
        finally:
            own_etcd1.resume(member)
        # Back: the store works again, and the epoch survived. (The lease may or may
        # not have: etcd re-extends leases when it resumes.)
        assert (await a.read()).epoch == grant.epoch


async def test_epoch_survives_an_etcd_restart(own_etcd1: EtcdCluster) -> None:
    member = own_etcd1.members[0]
    async with stores(own_etcd1.endpoints, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        own_etcd1.kill(member)
        own_etcd1.restart(member)
        state = await b.read()
        assert (state.epoch, state.last_holder) == (grant.epoch, "a")
        # etcd treats the lease as live for a full ttl after the restart: no early take-over.
        assert state.holder == "a"
        await wait_free(b, limit=TTL + 2)
        assert (await b.acquire("b", grant.epoch)).epoch > grant.epoch


# --------------------------------------------------------------------------- three members


async def test_failover_to_the_surviving_members(etcd3: EtcdCluster) -> None:
    leader = etcd3.leader()
    assert leader is not None
    # a talks to the etcd leader first; b to the members in another order.
    first = [leader.client_url] + [e for e in etcd3.endpoints if e != leader.client_url]
    async with stores(first, "a", timeout=1.0) as (a,), \
            stores(list(reversed(first)), "b", cluster=a.cluster, timeout=1.0) as (b,):
        grant = await a.acquire("a", 0)
        assert a.endpoint == leader.client_url
        etcd3.kill(leader)  # the member a uses, and the raft leader: an election follows

        renewed = False
        for _ in range(3):  # the role machine retries a failed renewal within the ttl
            try:
                assert await a.renew("a", grant.epoch) == grant
                renewed = True
                break
            except LeaseUnavailable:
                await trio.sleep(0.1)
        assert renewed
        assert a.endpoint != leader.client_url

        # Linearizable through different members: each answer reflects the one before.
        state = await b.read()
        assert (state.holder, state.epoch) == ("a", grant.epoch)
        await a.release("a", grant.epoch)
        assert (await b.read()).free
        second = await b.acquire("b", grant.epoch)
        assert second.epoch > grant.epoch
        state = await a.read()
        assert (state.holder, state.epoch) == ("b", second.epoch)
        await a.report("a", Position(grant.epoch, 3), second.epoch)
        assert [m.node for m in (await b.read()).members] == ["a"]


async def test_a_hung_member_is_skipped_after_one_timeout(etcd3: EtcdCluster) -> None:
    async with stores(etcd3.endpoints, "a", timeout=TIMEOUT) as (a,):
        grant = await a.acquire("a", 0)
        hung = etcd3.members[0]
        assert a.endpoint == hung.client_url
        etcd3.pause(hung)
        try:
            with pytest.raises(LeaseUnavailable, match="no answer within"):
                await a.renew("a", grant.epoch)
            assert a.endpoint != hung.client_url  # the next call starts elsewhere
            # (if the hung member was the raft leader, the others elect a new one first)
            with trio.fail_after(3):
                while True:
                    try:
                        assert await a.renew("a", grant.epoch) == grant
                        break
                    except LeaseUnavailable:
                        await trio.sleep(0.05)
            assert (await a.read()).holder == "a"
        finally:
            etcd3.resume(hung)
