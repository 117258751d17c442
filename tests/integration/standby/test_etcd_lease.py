"""The etcd lease backend against real etcd members (``/usr/bin/etcd``) on loopback.

Every member runs as production should: TLS on its client and peer ports with client
certificates required (a CA, server and client certificates made for the test run by
:func:`lab.pki.make_etcd_pki`), and etcd's authentication on (lifeline's user may
read and write its key prefix only). The stores authenticate with the right certificate
and password; the tests under "Hostile clients" prove the others get nowhere.

etcd runs with 25 ms heartbeats and a 250 ms election timeout, which brings its minimum
lease TTL down to 1 s, so the stores here use ttl 1 s. etcd notices an expired lease on a
500 ms tick: a lease left alone goes away 1 to 1.5 s after its last renewal.

Each test uses its own cluster name (key prefix) in the shared single-member etcd, so
tests do not see each other's keys; the failover tests start their own three members.
The tests of bad answers (4xx, garbage values) play etcd with an ``httpx.MockTransport``
and need no etcd.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from lab.etcd import ETCD_BINARY, EtcdAuth, EtcdCluster
from lab.pki import EtcdPki, make_etcd_pki
from daemon.standby import Position
from daemon.standby.etcd import MIN_LIVE_TTL, SYNC_MARK_RETRIES, EtcdCredentials, EtcdLeaseStore
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseError,
    LeaseLost,
    LeaseUnavailable,
)

TTL = 1.0
TIMEOUT = 0.5
_names = itertools.count()


def need_etcd() -> None:
    if not EtcdCluster.available():
        pytest.skip(f"etcd is not installed ({ETCD_BINARY} missing)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdPki:
    return make_etcd_pki(tmp_path_factory.mktemp("pki"))


def secure_cluster(size: int, datadir: Path, pki: EtcdPki) -> EtcdCluster:
    """``size`` members with TLS, client certificates and etcd's auth on."""
    need_etcd()
    return EtcdCluster.local(size, datadir, tls=pki, auth=EtcdAuth.generate())


@pytest.fixture(scope="module")
def etcd1(tmp_path_factory: pytest.TempPathFactory, pki: EtcdPki) -> Iterator[EtcdCluster]:
    cluster = secure_cluster(1, tmp_path_factory.mktemp("etcd1"), pki)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_etcd1(tmp_path: Path, pki: EtcdPki) -> Iterator[EtcdCluster]:
    """A single member this test may stop, pause or kill."""
    cluster = secure_cluster(1, tmp_path / "etcd", pki)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd3(tmp_path: Path, pki: EtcdPki) -> Iterator[EtcdCluster]:
    cluster = secure_cluster(3, tmp_path / "etcd", pki)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def credentials(etcd: EtcdCluster) -> EtcdCredentials:
    assert etcd.auth is not None
    return EtcdCredentials(etcd.auth.user, etcd.auth.password)


@asynccontextmanager
async def stores(etcd: EtcdCluster, *nodes: str, endpoints: list[str] | None = None, cluster: str | None = None,
                 ttl: float = TTL, timeout: float = TIMEOUT, transport: httpx.AsyncBaseTransport | None = None,
                 **security: Any) -> AsyncIterator[list[EtcdLeaseStore]]:
    """One store per node, all on the same lease (a fresh cluster name unless given), on
    ``etcd``'s members (or ``endpoints``), with the lab's client certificate and the
    lifeline user's password unless ``security`` says otherwise (``tls=``,
    ``credentials=``)."""
    name = cluster or f"t{next(_names)}"
    security.setdefault("tls", etcd.client_context())
    security.setdefault("credentials", credentials(etcd))
    made = [EtcdLeaseStore(list(endpoints or etcd.endpoints), name, node, ttl, timeout, transport=transport,
                           **security) for node in nodes]
    try:
        yield made
    finally:
        for store in made:
            await store.aclose()


async def root_call(etcd: EtcdCluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``path`` as etcd's root user (what an operator with etcdctl could do)."""
    return await trio.to_thread.run_sync(etcd.root_call, path, body)


async def raw_put(etcd: EtcdCluster, key: str, value: bytes) -> None:
    await root_call(etcd, "/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                         "value": base64.b64encode(value).decode()})


async def sync_kv(etcd: EtcdCluster, store: EtcdLeaseStore) -> dict[str, Any]:
    answer = await root_call(etcd, "/v3/kv/range", {"key": base64.b64encode((store.base + "sync").encode()).decode()})
    kvs = answer.get("kvs") or []
    assert len(kvs) == 1, kvs
    return dict(kvs[0])


async def sync_value(etcd: EtcdCluster, store: EtcdLeaseStore) -> Any:
    return json.loads(base64.b64decode((await sync_kv(etcd, store))["value"]))


async def wait_free(store: EtcdLeaseStore, limit: float) -> float:
    """Read until the lease is free; how long that took."""
    began = trio.current_time()
    with trio.fail_after(limit):
        while not (await store.read()).free:
            await trio.sleep(0.05)
    return trio.current_time() - began


# --------------------------------------------------------------------------- one member


async def test_fresh_store_reads_never_granted(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a") as (a,):
        state = await a.read()
    assert (state.holder, state.epoch, state.ttl_remaining, state.sync_node, state.last_holder, state.members) == (
        None, 0, 0.0, None, None, ())
    assert state.free


async def test_acquire_then_second_node_refused(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(etcd1, "a", "a", "b") as (a, a2, b):
        grant = await a.acquire("a", 0)
        assert await a2.renew("a", grant.epoch) == grant
        with pytest.raises(LeaseLost, match="granted again at epoch"):
            await a2.renew("a", grant.epoch + 1)
        with pytest.raises(LeaseLost, match="a holds the lease"):
            await b.renew("b", grant.epoch)


async def test_sync_mark_only_by_the_live_holder(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await a.set_sync_mark("a", grant.epoch, "b", generation=1)
        assert (await b.read()).sync_node == "b"

        with pytest.raises(LeaseLost, match="a holds the lease"):
            await b.set_sync_mark("b", grant.epoch, None, generation=2)
        with pytest.raises(LeaseLost):
            await a.set_sync_mark("a", grant.epoch + 1, None, generation=1)
        assert (await b.read()).sync_node == "b"

        await a.set_sync_mark("a", grant.epoch, None, generation=2)
        assert (await b.read()).sync_node is None
        await a.set_sync_mark("a", grant.epoch, "b", generation=3)
        await a.release("a", grant.epoch)
        with pytest.raises(LeaseLost, match="leader key is gone"):
            await a.set_sync_mark("a", grant.epoch, None, generation=4)
        # The mark outlives the lease: the next holder learns who was in sync.
        assert (await b.read()).sync_node == "b"
        assert await sync_value(etcd1, a) == {"node": "b", "epoch": grant.epoch, "generation": 3}


async def test_sync_mark_on_a_fresh_store_is_refused(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a") as (a,):
        with pytest.raises(LeaseLost, match="leader key is gone"):
            await a.set_sync_mark("a", 0, "b", generation=1)
        assert (await a.read()).sync_node is None


async def test_a_late_sync_mark_write_does_not_undo_a_later_one(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await a.set_sync_mark("a", grant.epoch, "b", generation=2)
        revision = (await sync_kv(etcd1, a))["mod_revision"]
        await a.set_sync_mark("a", grant.epoch, None, generation=1)   # reaches etcd late: a no-op
        assert (await b.read()).sync_node == "b"
        await a.set_sync_mark("a", grant.epoch, "b", generation=2)    # the same write again: a no-op
        kv = await sync_kv(etcd1, a)
        assert kv["mod_revision"] == revision
        assert json.loads(base64.b64decode(kv["value"])) == {"node": "b", "epoch": grant.epoch, "generation": 2}
        await a.set_sync_mark("a", grant.epoch, None, generation=3)
        assert (await b.read()).sync_node is None


async def test_a_higher_epoch_beats_a_higher_generation(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
        first = await a.acquire("a", 0)
        await a.set_sync_mark("a", first.epoch, "b", generation=9)
        await a.release("a", first.epoch)
        second = await b.acquire("b", first.epoch)
        await b.set_sync_mark("b", second.epoch, "a", generation=1)  # (E2, 1) > (E1, 9)
        assert (await a.read()).sync_node == "a"
        # The old primary's writes, arriving late, change nothing (a newer epoch won,
        # and a no longer holds the lease).
        with pytest.raises(LeaseLost, match="b holds the lease"):
            await a.set_sync_mark("a", first.epoch, None, generation=10)
        with pytest.raises(LeaseLost, match="b holds the lease"):
            await a.set_sync_mark("a", first.epoch, "c", generation=9)
        assert (await a.read()).sync_node == "a"
        assert await sync_value(etcd1, a) == {"node": "a", "epoch": second.epoch, "generation": 1}


async def test_sync_mark_reads_and_replaces_the_old_plain_format(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
        await raw_put(etcd1, a.base + "sync", b"b")          # written by an older release
        assert (await b.read()).sync_node == "b"
        await raw_put(etcd1, a.base + "sync", b"")
        assert (await b.read()).sync_node is None
        await raw_put(etcd1, a.base + "sync", b"b")
        grant = await a.acquire("a", 0)
        await a.set_sync_mark("a", grant.epoch, None, generation=1)  # any stamp beats (0, 0)
        assert (await b.read()).sync_node is None
        assert await sync_value(etcd1, a) == {"node": None, "epoch": grant.epoch, "generation": 1}


async def test_an_unreadable_sync_mark_fails_reads_until_the_holder_replaces_it(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await raw_put(etcd1, a.base + "sync", b'{"node": "b", "epoch": "x"}')
        with pytest.raises(LeaseUnavailable, match=f"key {a.base}sync: value is 'epoch' is not") as failed:
            await b.read()
        assert etcd1.endpoints[0] in str(failed.value)
        await a.set_sync_mark("a", grant.epoch, "b", generation=1)
        assert (await b.read()).sync_node == "b"


def is_write_txn(request: httpx.Request) -> bool:
    """A txn with compares (the read-only txn that reads leader and sync has none)."""
    return request.url.path == "/v3/kv/txn" and bool(json.loads(request.content).get("compare"))


class Meddler(httpx.AsyncBaseTransport):
    """Real HTTP to etcd, but ``before_txn(n)`` runs before the store's n-th write txn is
    sent (another writer getting in between the store's read and its txn)."""

    def __init__(self, before_txn: Callable[[int], Awaitable[None]], etcd: EtcdCluster) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=etcd.client_context() or True)
        self.before_txn = before_txn
        self.txns = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if is_write_txn(request):
            self.txns += 1
            await self.before_txn(self.txns)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_sync_mark_retries_when_the_sync_key_moved(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a") as (a,):
        grant = await a.acquire("a", 0)

        async def earlier_write_lands(n: int) -> None:
            if n == 1:
                await a.set_sync_mark("a", grant.epoch, "x", generation=1)

        meddler = Meddler(earlier_write_lands, etcd1)
        async with stores(etcd1, "a", cluster=a.cluster, transport=meddler) as (m,):
            await m.set_sync_mark("a", grant.epoch, "b", generation=2)
        assert meddler.txns == 2
        assert await sync_value(etcd1, a) == {"node": "b", "epoch": grant.epoch, "generation": 2}


async def test_sync_mark_gives_up_when_the_sync_key_keeps_moving(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a") as (a,):
        grant = await a.acquire("a", 0)

        async def another_write_lands(n: int) -> None:
            await a.set_sync_mark("a", grant.epoch, f"x{n}", generation=n)

        meddler = Meddler(another_write_lands, etcd1)
        async with stores(etcd1, "a", cluster=a.cluster, transport=meddler) as (m,):
            with pytest.raises(LeaseUnavailable, match=f"key {a.base}sync changed") as failed:
                await m.set_sync_mark("a", grant.epoch, "b", generation=100)
        assert etcd1.endpoints[0] in str(failed.value)
        assert meddler.txns == 1 + SYNC_MARK_RETRIES
        assert (await a.read()).sync_node == f"x{1 + SYNC_MARK_RETRIES}"


async def test_sync_mark_lost_between_read_and_txn(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a") as (a,):
        grant = await a.acquire("a", 0)

        async def lease_released(n: int) -> None:
            await a.release("a", grant.epoch)

        meddler = Meddler(lease_released, etcd1)
        async with stores(etcd1, "a", cluster=a.cluster, transport=meddler) as (m,):
            with pytest.raises(LeaseLost, match="leader key is gone"):
                await m.set_sync_mark("a", grant.epoch, "b", generation=1)
        assert meddler.txns == 1
        assert (await a.read()).sync_node is None


class AppliedThenDropped(httpx.AsyncBaseTransport):
    """Real HTTP to etcd, but the answer to the first txn is lost (the endpoint died
    after etcd applied it): the store resends it to the next endpoint."""

    def __init__(self, etcd: EtcdCluster) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=etcd.client_context() or True)
        self.txns = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if is_write_txn(request):
            self.txns += 1
            if self.txns == 1:
                await response.aread()
                raise httpx.ReadError("connection reset (test)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_resent_sync_mark_write_is_recognised(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a") as (a,):
        grant = await a.acquire("a", 0)
        dropper = AppliedThenDropped(etcd1)
        endpoint = etcd1.endpoints[0]
        async with stores(etcd1, "a", endpoints=[endpoint, endpoint], cluster=a.cluster, transport=dropper) as (m,):
            await m.set_sync_mark("a", grant.epoch, "b", generation=1)
        assert dropper.txns == 2
        assert await sync_value(etcd1, a) == {"node": "b", "epoch": grant.epoch, "generation": 1}


async def test_concurrent_sync_mark_writes_keep_the_newest(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "a", "a", "a") as writers:
        grant = await writers[0].acquire("a", 0)
        done: dict[int, BaseException | None] = {}

        async def write(generation: int) -> None:
            store = writers[generation % len(writers)]
            try:
                await store.set_sync_mark("a", grant.epoch, f"n{generation}", generation=generation)
                done[generation] = None
            except LeaseUnavailable as e:  # the key kept moving: allowed, the caller retries
                done[generation] = e

        async with trio.open_nursery() as nursery:
            for generation in range(1, 9):
                nursery.start_soon(write, generation)
        succeeded = [g for g, e in done.items() if e is None]
        assert succeeded
        stored = await sync_value(etcd1, writers[0])
        assert stored["generation"] >= max(succeeded)
        assert stored["node"] == f"n{stored['generation']}"


async def test_member_reports_round_trip(etcd1: EtcdCluster) -> None:
    async with stores(etcd1, "a", "b") as (a, b):
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
    async with stores(own_etcd1, "a") as (a,):
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
    async with stores(own_etcd1, "a") as (a,):
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
    async with stores(own_etcd1, "a", "b") as (a, b):
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
    async with stores(etcd3, "a", endpoints=first, timeout=1.0) as (a,), \
            stores(etcd3, "b", endpoints=list(reversed(first)), cluster=a.cluster, timeout=1.0) as (b,):
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
    async with stores(etcd3, "a", timeout=TIMEOUT) as (a,):
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


# --------------------------------------------------------------------------- hostile clients


def refused_store(etcd: EtcdCluster, pki: EtcdPki, how: str) -> dict[str, Any]:
    """The ``stores`` arguments of a client that gets something wrong."""
    from daemon.standby.etcd import ssl_context

    good_tls = etcd.client_context()
    assert etcd.auth is not None
    good = credentials(etcd)
    return {
        "no client certificate": {"tls": ssl_context(pki.ca), "credentials": good},
        "a certificate from another CA": {
            "tls": ssl_context(pki.ca, pki.rogue_client_cert, pki.rogue_client_key), "credentials": good},
        "the wrong CA": {"tls": ssl_context(pki.rogue_ca, pki.client_cert, pki.client_key), "credentials": good},
        "the wrong password": {"tls": good_tls, "credentials": EtcdCredentials(etcd.auth.user, "not-the-password")},
        "no user": {"tls": good_tls, "credentials": None},
        "plain http": {"tls": None, "credentials": None,
                       "endpoints": [e.replace("https://", "http://") for e in etcd.endpoints]},
    }[how]


REFUSALS = {
    "no client certificate": "etcd refused this node's client certificate: none was given, or",
    "a certificate from another CA": "etcd refused this node's client certificate: none was given, or",
    "the wrong CA": "CERTIFICATE_VERIFY_FAILED",
    "the wrong password": "authentication as etcd user 'lifeline' refused",
    "no user": "user name is empty",
    "plain http": "use https:// endpoints",
}


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record as the daemon writes it (event and fields)."""
    from daemon.core.log import KeyValueFormatter

    formatter = KeyValueFormatter(journal=False)
    return [formatter.format(record) for record in caplog.records]


async def test_the_right_certificate_and_user_take_and_renew_the_lease(etcd1: EtcdCluster,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    assert all(e.startswith("https://") for e in etcd1.endpoints)
    caplog.set_level(logging.DEBUG)
    async with stores(etcd1, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        for _ in range(3):
            await trio.sleep(TTL / 3)
            assert await a.renew("a", grant.epoch) == grant
        await a.set_sync_mark("a", grant.epoch, "b", generation=1)
        state = await b.read()
        assert (state.holder, state.epoch, state.sync_node) == ("a", grant.epoch, "b")
        assert etcd1.auth is not None
    # One authentication per store, and neither the password nor a token is ever logged.
    lines = log_lines(caplog)
    authenticated = [line for line in lines if "event=auth.authenticated" in line]
    assert len(authenticated) == 2, authenticated
    assert "user=lifeline" in authenticated[0]
    assert a._token is not None
    for text in lines:
        assert etcd1.auth.password not in text
        assert a._token not in text and (b._token or "x" * 40) not in text


@pytest.mark.parametrize("how", list(REFUSALS))
async def test_a_client_that_gets_the_security_wrong_is_refused(etcd1: EtcdCluster, pki: EtcdPki,
                                                                how: str) -> None:
    """Every call fails with a LeaseError (the node stays standby) saying why; the
    lease held by a good client is untouched."""
    async with stores(etcd1, "a") as (a,):
        grant = await a.acquire("a", 0)
        async with stores(etcd1, "b", cluster=a.cluster, **refused_store(etcd1, pki, how)) as (b,):
            calls: list[Callable[[], Awaitable[Any]]] = [
                b.read, lambda: b.acquire("b", grant.epoch), lambda: b.set_sync_mark("a", grant.epoch, "b", 9),
                lambda: b.release("a", grant.epoch), lambda: b.report("b", Position(1, 1), 1)]
            for call in calls:
                with pytest.raises(LeaseUnavailable) as refused:
                    await call()
                assert REFUSALS[how] in str(refused.value), str(refused.value)
                assert etcd1.auth is not None and etcd1.auth.password not in str(refused.value)
        state = await a.read()
        assert (state.holder, state.epoch, state.sync_node) == ("a", grant.epoch, None)
        assert await a.renew("a", grant.epoch) == grant


async def attacker(etcd: EtcdCluster, path: str, body: dict[str, Any], tls: Any) -> tuple[int, str]:
    """What issue 16's attacker got: one request to etcd's JSON gateway, no token."""
    async with httpx.AsyncClient(trust_env=False, verify=tls) as client:
        try:
            answer = await client.post(etcd.endpoints[0] + path, json=body)
        except httpx.HTTPError as e:
            return 0, type(e).__name__
    return answer.status_code, answer.text


async def test_an_unauthenticated_client_cannot_mark_the_sync_standby_or_delete_the_leader(
        etcd1: EtcdCluster, pki: EtcdPki) -> None:
    """The attack of issue 16: whoever reaches etcd's client port wrote the sync mark (a
    standby missing acknowledged records then promotes) or deleted the leader key.
    Without a client certificate it cannot connect; with a certificate (a compromised
    host of the CA) but without the password, etcd refuses every write."""
    from daemon.standby.etcd import ssl_context

    async with stores(etcd1, "a", "b") as (a, b):
        grant = await a.acquire("a", 0)
        await a.set_sync_mark("a", grant.epoch, "b", generation=1)
        assert a._held is not None
        lease_id = a._held[2]
        forged = json.dumps({"node": "c", "epoch": grant.epoch + 1000, "generation": 1})
        writes = [
            ("/v3/kv/put", {"key": b64(a.base + "sync"), "value": b64(forged)}),
            ("/v3/kv/deleterange", {"key": b64(a.base + "leader")}),
            ("/v3/kv/deleterange", {"key": b64(a.base), "range_end": b64(a.base[:-1] + "0")}),
            ("/v3/kv/txn", {"success": [{"request_delete_range": {"key": b64(a.base + "leader")}}]}),
            ("/v3/lease/revoke", {"ID": str(lease_id)}),
            ("/v3/kv/range", {"key": b64(a.base + "leader")}),
        ]
        for tls in (ssl_context(pki.ca), etcd1.client_context()):
            for path, body in writes:
                status, text = await attacker(etcd1, path, body, tls)
                assert status != 200, (path, status, text)
        # With the client certificate, etcd itself says no: the request reached it.
        status, text = await attacker(etcd1, "/v3/kv/put", writes[0][1], etcd1.client_context())
        assert status in (400, 401, 403) and "user name is empty" in text, (status, text)
        status, text = await attacker(etcd1, "/v3/kv/put", writes[0][1], ssl_context(pki.ca))
        assert status == 0, (status, text)  # no certificate: no TLS connection at all
        state = await b.read()
        assert (state.holder, state.epoch, state.sync_node) == ("a", grant.epoch, "b")
        assert await sync_value(etcd1, a) == {"node": "b", "epoch": grant.epoch, "generation": 1}
        assert await a.renew("a", grant.epoch) == grant


async def test_an_expired_token_is_replaced_once(tmp_path: Path, pki: EtcdPki,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """etcd forgets a simple token left unused for --auth-token-ttl (a member the store
    has not talked to for that long, after a failover): the store authenticates again,
    once, and the call goes on."""
    need_etcd()
    caplog.set_level(logging.INFO)
    cluster = EtcdCluster.local(1, tmp_path / "etcd", tls=pki, auth=EtcdAuth.generate(),
                                extra_args=["--auth-token-ttl", "1"])
    cluster.start()
    try:
        async with stores(cluster, "a") as (a,):
            grant = await a.acquire("a", 0)
            old_token = a._token
            await trio.sleep(2.5)  # etcd checks token ttls once a second
            state = await a.read()
            assert (state.epoch, state.last_holder) == (grant.epoch, "a")
            assert a._token is not None and a._token != old_token
    finally:
        cluster.stop()
    lines = log_lines(caplog)
    refused = [line for line in lines if "event=auth.token_refused" in line]
    assert len(refused) == 1 and "invalid auth token" in refused[0], refused
    assert len([line for line in lines if "event=auth.authenticated" in line]) == 2


# --------------------------------------------------------------------------- bad answers (no etcd)

MOCK = "http://etcd.invalid:2379"
BASE = "/lifeline/m/"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def mock_kv(key: str, value: str | bytes, **fields: str) -> dict[str, str]:
    """A kv as etcd's gateway answers it (the value as given, base64-encoded unless
    ``raw_value`` gives the base64 text itself)."""
    kv = {"key": b64(BASE + key), "create_revision": "5", "mod_revision": "5", "version": "1"}
    kv["value"] = fields.pop("raw_value", None) or b64(value)
    kv.update(fields)
    return kv


def good_kvs() -> list[dict[str, str]]:
    return [
        mock_kv("last", json.dumps({"holder": "a"})),
        mock_kv("leader", "a", lease="7"),
        mock_kv("sync", json.dumps({"node": "b", "epoch": 5, "generation": 1}), mod_revision="6"),
        mock_kv("members/b", json.dumps({"epoch": 5, "seq": 3, "seen_epoch": 5})),
    ]


def fake_etcd(kvs: list[dict[str, str]] | None = None,
              special: Callable[[str], httpx.Response | None] | None = None) -> httpx.MockTransport:
    """Plays etcd's gateway: ranges answer ``kvs``; ``special(path)`` may answer first."""
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if special is not None and (answer := special(path)) is not None:
            return answer
        header = {"cluster_id": "1", "member_id": "1", "revision": "9", "raft_term": "2"}
        if path == "/v3/kv/range":
            return httpx.Response(200, json={"header": header, "kvs": kvs or [], "count": str(len(kvs or []))})
        if path == "/v3/kv/txn":
            leader = [kv for kv in kvs or [] if kv["key"] == b64(BASE + "leader")]
            return httpx.Response(200, json={"header": header, "succeeded": True,
                                             "responses": [{"response_range": {"header": header, "kvs": leader}}]})
        if path in ("/v3/lease/grant", "/v3/lease/timetolive"):
            return httpx.Response(200, json={"header": header, "ID": "7", "TTL": "1", "grantedTTL": "1"})
        if path == "/v3/lease/keepalive":
            return httpx.Response(200, text=json.dumps({"result": {"header": header, "ID": "7", "TTL": "1"}}) + "\n")
        if path in ("/v3/kv/put", "/v3/lease/revoke"):
            return httpx.Response(200, json={"header": header})
        return httpx.Response(404, text="404 page not found\n")
    return httpx.MockTransport(handle)


def mock_store(transport: httpx.MockTransport) -> EtcdLeaseStore:
    return EtcdLeaseStore([MOCK], "m", "a", TTL, TIMEOUT, transport=transport)


AUTH_REFUSAL = httpx.Response(401, json={"error": "etcdserver: user name is empty", "code": 16,
                                         "message": "etcdserver: user name is empty"})

CALLS: dict[str, Callable[[EtcdLeaseStore], Awaitable[Any]]] = {
    "read": lambda s: s.read(),
    "acquire": lambda s: s.acquire("a", 0),
    "renew": lambda s: s.renew("a", 5),
    "release": lambda s: s.release("a", 5),
    "set_sync_mark": lambda s: s.set_sync_mark("a", 5, "b", generation=2),
    "report": lambda s: s.report("a", Position(5, 3), 5),
}


async def test_mock_good_answer_reads() -> None:
    store = mock_store(fake_etcd(good_kvs()))
    try:
        state = await store.read()
    finally:
        await store.aclose()
    assert (state.holder, state.epoch, state.sync_node, state.last_holder) == ("a", 5, "b", "a")
    assert [m.node for m in state.members] == ["b"]


@pytest.mark.parametrize("call", list(CALLS))
async def test_auth_refusal_is_unavailable(call: str) -> None:
    store = mock_store(fake_etcd(good_kvs(), special=lambda path: AUTH_REFUSAL))
    try:
        with pytest.raises(LeaseUnavailable, match="user name is empty") as failed:
            await CALLS[call](store)
    finally:
        await store.aclose()
    assert MOCK in str(failed.value) and "401" in str(failed.value)


def token_checking_etcd(accepted: Callable[[str, int], bool], seen: list[str]) -> httpx.MockTransport:
    """Plays an etcd with auth on: ``/v3/auth/authenticate`` hands out tokens
    ``TOKEN1``, ``TOKEN2``, ...; another request is answered only when ``accepted(token, n)`` (its
    ``Authorization`` header, the n-th request), else refused as an expired token.
    ``seen`` collects every request's path and token."""
    tokens = itertools.count(1)
    requests = itertools.count(1)
    normal = fake_etcd(good_kvs())

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        token = request.headers.get("authorization", "")
        seen.append(f"{path} {token}")
        if path == "/v3/auth/authenticate":
            assert json.loads(request.content) == {"name": "lifeline", "password": "s3cret-pw"}
            return httpx.Response(200, json={"header": {}, "token": f"TOKEN{next(tokens)}"})
        if not accepted(token, next(requests)):
            return httpx.Response(401, json={"error": "etcdserver: invalid auth token", "code": 16,
                                             "message": "etcdserver: invalid auth token"})
        return normal.handler(request)  # type: ignore[no-any-return]
    return httpx.MockTransport(handle)


def authenticating_store(transport: httpx.MockTransport) -> EtcdLeaseStore:
    return EtcdLeaseStore([MOCK], "m", "a", TTL, TIMEOUT, transport=transport,
                          credentials=EtcdCredentials("lifeline", "s3cret-pw"))


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_refused_token_is_replaced_once_then_the_call_fails(call: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    # TOKEN1 is good for one request, then expires; TOKEN2 is good.
    store = authenticating_store(token_checking_etcd(lambda token, n: token == "TOKEN2" or n == 1, seen))
    try:
        await store.read()
        await CALLS[call](store)  # TOKEN1 refused: authenticated again, sent again, answered
        assert store._token == "TOKEN2"
        assert [line.split()[0] for line in seen].count("/v3/auth/authenticate") == 2
    finally:
        await store.aclose()
    # Every token refused: one more authentication, then a LeaseUnavailable.
    seen.clear()
    store = authenticating_store(token_checking_etcd(lambda token, n: False, seen))
    try:
        with pytest.raises(LeaseUnavailable, match="invalid auth token") as failed:
            await CALLS[call](store)
    finally:
        await store.aclose()
    assert [line.split()[0] for line in seen][:4] == ["/v3/auth/authenticate", seen[1].split()[0],
                                                      "/v3/auth/authenticate", seen[1].split()[0]], seen
    assert [line.split()[0] for line in seen].count("/v3/auth/authenticate") == 2, seen
    assert "s3cret-pw" not in str(failed.value)
    assert [line for line in log_lines(caplog) if "event=auth.token_refused" in line]
    assert not [line for line in log_lines(caplog) if "s3cret-pw" in line or "TOKEN" in line]


class SlowAuthentication(httpx.AsyncBaseTransport):
    """Plays an etcd with auth on whose ``/v3/auth/authenticate`` takes ``delay``
    seconds (bcrypt on a loaded host); everything else answers at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.authentications = 0
        self.inner = fake_etcd(good_kvs())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/auth/authenticate":
            self.authentications += 1
            await trio.sleep(self.delay)
            return httpx.Response(200, json={"header": {}, "token": f"TOKEN{self.authentications}"})
        assert request.headers.get("authorization", "").startswith("TOKEN"), request.url.path
        await trio.sleep(0)  # a checkpoint, as real I/O has
        return await self.inner.handle_async_request(request)


async def test_an_authentication_slower_than_the_call_still_serves_the_next_call(
        autojump_clock: trio.testing.MockClock) -> None:
    """The caller gives up after retry_timeout (as Leadership does); the authentication
    goes on (at most AUTH_TIMEOUT), so the next call has its token instead of starting
    another authentication that would be cut short again."""
    transport = SlowAuthentication(delay=0.4)
    store = EtcdLeaseStore([MOCK], "m", "a", TTL, 0.1, transport=transport,
                           credentials=EtcdCredentials("lifeline", "s3cret-pw"))
    try:
        began = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.1):
                await store.read()
        assert trio.current_time() - began == pytest.approx(0.4)  # the authentication finished
        assert store._token == "TOKEN1"
        with trio.fail_after(0.1):
            assert (await store.read()).holder == "a"
        assert transport.authentications == 1
    finally:
        await store.aclose()


async def test_an_authentication_never_outlasts_its_own_bound(autojump_clock: trio.testing.MockClock) -> None:
    from daemon.standby.etcd import AUTH_TIMEOUT

    transport = SlowAuthentication(delay=AUTH_TIMEOUT * 10)
    store = EtcdLeaseStore([MOCK], "m", "a", TTL, 0.1, transport=transport,
                           credentials=EtcdCredentials("lifeline", "s3cret-pw"))
    try:
        began = trio.current_time()
        with pytest.raises((trio.TooSlowError, LeaseUnavailable)):
            with trio.fail_after(0.1):
                await store.read()
        assert trio.current_time() - began == pytest.approx(AUTH_TIMEOUT)
        assert store._token is None
    finally:
        await store.aclose()


async def test_concurrent_calls_share_one_authentication(autojump_clock: trio.testing.MockClock) -> None:
    transport = SlowAuthentication(delay=0.05)
    store = EtcdLeaseStore([MOCK], "m", "a", TTL, 0.5, transport=transport,
                           credentials=EtcdCredentials("lifeline", "s3cret-pw"))
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(store.read)
            nursery.start_soon(store.report, "a", Position(1, 1), 1)
        assert transport.authentications == 1
    finally:
        await store.aclose()


async def test_etcd_without_auth_is_refused_when_a_user_is_configured() -> None:
    """Configured to authenticate, a node refuses an etcd whose auth is off: anyone
    could change that lease."""
    off = httpx.Response(400, json={"error": "etcdserver: authentication is not enabled", "code": 9,
                                    "message": "etcdserver: authentication is not enabled"})
    store = authenticating_store(fake_etcd(good_kvs(), special=lambda path: off if "auth" in path else None))
    try:
        with pytest.raises(LeaseUnavailable, match="etcd's auth is off, so anyone who reaches it"):
            await store.read()
    finally:
        await store.aclose()


def test_credentials_never_show_the_password() -> None:
    assert "s3cret" not in repr(EtcdCredentials("lifeline", "s3cret"))


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_body_that_is_not_json_is_unavailable(call: str) -> None:
    store = mock_store(fake_etcd(special=lambda path: httpx.Response(200, text="<html>proxy says hi</html>")))
    try:
        with pytest.raises(LeaseUnavailable, match="not a JSON object") as failed:
            await CALLS[call](store)
    finally:
        await store.aclose()
    assert MOCK in str(failed.value)


@pytest.mark.parametrize(("key", "kv", "problem"), [
    ("leader", mock_kv("leader", b"\xff\xfe", lease="7"), "value is not UTF-8"),
    ("leader", mock_kv("leader", "", raw_value="!!not base64!!", lease="7"), "value is not base64"),
    ("leader", mock_kv("leader", "a", lease="seven"), "field 'lease' is not an integer"),
    ("leader", mock_kv("leader", "a", lease="7", create_revision="x"), "field 'create_revision' is not an integer"),
    ("last", mock_kv("last", "not json"), "value is not JSON"),
    ("last", mock_kv("last", b"\x80"), "value is not UTF-8"),
    ("last", mock_kv("last", json.dumps(["a"])), 'no "holder"'),
    ("last", mock_kv("last", json.dumps({"holder": "a"}), mod_revision="5.5"), "field 'mod_revision'"),
    ("sync", mock_kv("sync", b"\xc3"), "value is not UTF-8"),
    ("sync", mock_kv("sync", "{broken"), "value is not JSON"),
    ("sync", mock_kv("sync", json.dumps({"node": 3, "epoch": 1, "generation": 1})), '"node" is neither'),
    ("sync", mock_kv("sync", json.dumps({"node": "b", "epoch": 1})), "'generation' is not"),
])
async def test_an_unreadable_lease_key_fails_the_read(key: str, kv: dict[str, str], problem: str) -> None:
    kvs = [k for k in good_kvs() if k["key"] != kv["key"]] + [kv]
    store = mock_store(fake_etcd(kvs))
    try:
        with pytest.raises(LeaseUnavailable) as failed:
            await store.read()
    finally:
        await store.aclose()
    message = str(failed.value)
    assert MOCK in message and f"key {BASE}{key}" in message and problem in message, message


async def test_a_non_utf8_leader_fails_renew_and_sync_mark() -> None:
    kvs = [k for k in good_kvs() if k["key"] != b64(BASE + "leader")] + [mock_kv("leader", b"\xff", lease="7")]

    def txn_refused(path: str) -> httpx.Response | None:
        if path == "/v3/kv/txn":  # the failure branch reads back leader and sync
            ranges = [{"response_range": {"kvs": [kv]}} for kv in kvs if kv["key"] in
                      (b64(BASE + "leader"), b64(BASE + "sync"))]
            return httpx.Response(200, json={"header": {"revision": "9"}, "responses": ranges})
        return None

    store = mock_store(fake_etcd(kvs, special=txn_refused))
    try:
        for call in (lambda: store.renew("a", 5), lambda: store.set_sync_mark("a", 5, None, generation=2)):
            with pytest.raises(LeaseUnavailable, match=f"{MOCK}: key {BASE}leader: value is not UTF-8"):
                await call()
    finally:
        await store.aclose()


async def test_unreadable_member_reports_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    kvs = good_kvs() + [
        mock_kv("members/c", "{not json"),
        mock_kv("members/d", b"\xff\xff"),
        mock_kv("members/e", "", raw_value="%%%"),
        mock_kv("members/f", json.dumps([1, 2, 3])),
        mock_kv("members/g", json.dumps({"epoch": "x", "seq": 1, "seen_epoch": 1})),
        mock_kv("members/h", json.dumps({"epoch": 1})),
    ]
    store = mock_store(fake_etcd(kvs))
    try:
        with caplog.at_level(logging.WARNING):
            state = await store.read()
    finally:
        await store.aclose()
    assert [m.node for m in state.members] == ["b"]
    assert (state.holder, state.sync_node) == ("a", "b")
    skipped = sorted(r.fields["node"] for r in caplog.records if getattr(r, "event", "") == "member.unreadable")
    assert skipped == ["c", "d", "e", "f", "g", "h"]


LEADER = b64(BASE + "leader")
JUNK_BODIES = [
    "", "null", "[]", "42", '"text"', "{", "{}", "[" * 100_000, "<html>Bad Gateway</html>",
    *(json.dumps(doc) for doc in [
        {"kvs": 5}, {"kvs": [1, "x", None]}, {"kvs": [{"key": 5}]}, {"kvs": [{"key": "!!"}]},
        {"kvs": [{"key": LEADER, "value": 7}]}, {"kvs": [{"key": LEADER, "value": "YQ==", "lease": []}]},
        {"kvs": [{"key": LEADER, "value": "YQ==", "lease": "7", "create_revision": {}}]},
        {"result": 1}, {"result": {"TTL": {}}}, {"error": {"http_code": "x", "grpc_code": "y"}},
        {"error": "x", "code": "sixteen"}, {"succeeded": True, "header": "x"}, {"succeeded": True},
        {"succeeded": True, "header": {"revision": "r"}}, {"ID": "zz", "TTL": "1"}, {"ID": "7", "TTL": True},
        {"ID": "7", "TTL": "1"}, {"responses": 3}, {"responses": [{"response_range": {"kvs": 1}}]},
        {"responses": [{"response_range": {"kvs": [{"key": "!!"}]}}]},
        {"responses": [{"response_range": {"kvs": [{"key": LEADER, "value": "/w=="}]}}]},
        {"responses": [{"response_range": {"kvs": [{"key": b64(BASE + "sync"), "value": "/w==",
                                                     "mod_revision": "x"}]}}]},
    ]),
]
PATHS = ["/v3/kv/range", "/v3/kv/txn", "/v3/kv/put", "/v3/lease/grant", "/v3/lease/keepalive",
         "/v3/lease/timetolive", "/v3/lease/revoke"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("status", [200, 400, 401, 404, 500])
async def test_junk_answers_only_ever_raise_lease_errors(path: str, status: int) -> None:
    """Whatever etcd (or something in front of it) answers on ``path``, every call
    either works or fails with a LeaseError: never another exception, which would
    crash the daemon."""
    for body in JUNK_BODIES:
        def junk(asked: str, body: str = body) -> httpx.Response | None:
            return httpx.Response(status, text=body) if asked == path else None

        for call in CALLS.values():
            store = mock_store(fake_etcd(good_kvs(), special=junk))
            try:
                await call(store)
            except LeaseError:
                pass
            finally:
                await store.aclose()
