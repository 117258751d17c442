"""The venues service's reconciliation (daemon/venues/service.py) when something around it
goes wrong: an order placed while a reconciliation is under way, an order index left stale
by a cut and refilled journal tail, a journal whose view of open orders is incomplete, an
engine order the venue does not echo the client id of, a malformed venue answer, cancels
sent by a node that is no longer primary (or no longer in the same term), a promotion
while the service is starting, an audit log that refuses entries; and signed requests
through two uplinks paced as one key. (Each was once broken: these are its regression
tests.)

The service runs in one trio run with the in-process venue emulator (real ccxt over
loopback TCP) and a real journal: either a fixed-primary StandbyService, or
:class:`JournalStandby` (a real :class:`~daemon.standby.journal.Journal` plus a leadership
flag the test flips) where the test must cut the journal, bypass the control socket's
record checks, or move the role by hand.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from tests.integration.venues.test_venue_service import (
    CAP,
    KRAKEN_KEY,
    SEEDED_KRAKEN,
    FakeLeadership,
    FakeStandby,
    fast_client_factory,
    fixed_primary,
    kraken_venue,
    make_config,
    order_record,
    role_changed,
    start_emulator,
    start_standby,
    wait_for,
)

from daemon.app import venue_seams
from daemon.config import JournalConfig
from daemon.core.bus import EventBus
from daemon.standby import Record
from daemon.standby.journal import Journal
from daemon.venues import service as venue_service
from daemon.venues.service import VenueService, VenueUnavailable

OPEN_ORDERS = "/0/private/OpenOrders"
CANCEL_ORDER = "/0/private/CancelOrder"


# --------------------------------------------------------------------------- helpers

class JournalStandby:
    """What the venues service reads of the standby service, with a real journal:
    ``leadership.may_trade()`` (the test flips ``leadership.primary``), ``epoch``,
    ``config.standby.lease`` (None: a fixed primary; set: roles move with RoleChanged
    only) and ``journal``."""

    def __init__(self, journal: Journal, *, primary: bool = True, epoch: int = 1, lease: str | None = None) -> None:
        self.leadership = FakeLeadership()
        self.leadership.primary = primary
        self.epoch = epoch
        self.config = SimpleNamespace(standby=SimpleNamespace(lease=lease))
        self.journal = journal


async def start_primary(nursery: trio.Nursery, service: VenueService) -> None:
    """Start the service on a node that is primary already, and wait until its role loop
    has registered that primary term: a reconciliation begun before that belongs to no
    term, and the service skips its cancels (the term changed under it)."""
    await nursery.start(service.run)
    await wait_for(service.may_trade)
    await wait_for(lambda: service._primary_term >= 1)


async def open_journal(nursery: trio.Nursery, directory: Path, **config: Any) -> Journal:
    journal = Journal.open(directory, JournalConfig(fsync="never", **config))
    await nursery.start(journal.run)
    return journal


def payload(client_order_id: str, **fields: Any) -> bytes:
    return order_record(client_order_id, **fields).encode()


def kraken_order(order_id: str, *, side: str = "sell", amount: str = "0.1", price: str = "100",
                 symbol: str = "LTC/USDT") -> dict[str, Any]:
    """An emulator order spec (no client order id: Kraken echoes none)."""
    return {"id": order_id, "symbol": symbol, "side": side, "amount": amount, "price": price}


def outcomes(report: Any) -> dict[str | None, tuple[str, str]]:
    """venue order id (None for a journal order the venue does not list: keyed by client
    id then) -> (kind, outcome)."""
    out: dict[str | None, tuple[str, str]] = {}
    for i, decision in enumerate(report.decisions):
        key = decision.venue_order_id or decision.client_order_id
        out[key] = (decision.kind, report.outcomes.get(i, decision.action))
    return out


def open_ids(emulator: Any) -> set[str]:
    return {o["id"] for o in emulator.open_orders("kraken")}


def cancel_requests(emulator: Any) -> int:
    return emulator.venue("kraken").by_path.get(CANCEL_ORDER, 0)


class RefusingAudit:
    """An audit log on a full disk: every entry is refused."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.closed = False

    def append(self, kind: str, **fields: Any) -> None:
        self.attempts.append(kind)
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- 1. an order placed meanwhile

async def test_order_placed_while_the_venue_answers_is_not_an_orphan(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The engine journals an order ("new", then "open" with the venue's id) and places it
    after the reconciliation started and before the venue answered its fetch_open_orders
    (the emulator is slow: the request has arrived, the answer is 1 s away and lists the
    new order). Under cancel-orphans that order is kept; the three seeded orders nobody
    journaled are still cancelled."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)},
                      standby=fixed_primary())
    bus = EventBus(1000)
    with trio.fail_after(CAP):
        standby = await start_standby(nursery, cfg, bus)
        await wait_for(lambda: standby.accepting)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        await start_primary(nursery, service)
        warm = await service.reconcile("kraken", dry_run=True)  # the private client and its markets exist now
        assert warm.counts()["would_cancel"] == 3 and warm.errors == []

        kraken = emulator.venue("kraken")
        fetches = kraken.by_path.get(OPEN_ORDERS, 0)
        emulator.set_fault("kraken", "slow", delay=1.0)
        result: dict[str, Any] = {}
        done = trio.Event()

        async def reconcile() -> None:
            result["report"] = await service.reconcile("kraken", dry_run=False)
            done.set()

        nursery.start_soon(reconcile)
        await wait_for(lambda: kraken.by_path.get(OPEN_ORDERS, 0) > fetches, timeout=5)
        # The engine, meanwhile: journal first, then place, then journal the venue's ack.
        await standby._append({"payloads": [order_record("eng-1", state="new", price="100")]})
        [engine_id] = emulator.add_orders("kraken", [kraken_order("OENGIN-AAAAA-AAAAAA")])
        await standby._append({"payloads": [order_record("eng-1", state="open", price="100",
                                                         venue_order_id=engine_id)]})
        assert not done.is_set()  # the venue has not answered yet
        emulator.set_fault("kraken", "ok")
        await done.wait()

        report = result["report"]
        assert report.errors == []
        decided = outcomes(report)
        assert decided[engine_id] == ("matched", "kept"), report.lines()
        for order_id in SEEDED_KRAKEN:
            assert decided[order_id] == ("orphan", "cancelled"), report.lines()
        assert open_ids(emulator) == {engine_id}
        assert {c["id"] for c in kraken.cancelled} == SEEDED_KRAKEN
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 2. a divergent tail cut and refilled

async def test_index_follows_a_divergent_tail_cut_and_refilled(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The index has folded seqs 1-3 (epoch 1). The tail 2-3 is cut (truncate_after(1):
    this node's divergent history) and refilled by replication with other records at the
    same seqs, epoch 2. Reconciliation then sees the new records: the new primary's orders
    are kept (not cancelled as orphans), the cut orders are no longer journal-open (the one
    still at the venue is an orphan, the other is not reported missing)."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    emulator.add_orders("kraken", [kraken_order("OKEEP1-AAAAA-AAAAAA"), kraken_order("OOLD02-AAAAA-AAAAAA"),
                                   kraken_order("ONEW02-AAAAA-AAAAAA"), kraken_order("ONEW03-AAAAA-AAAAAA")],
                        replace=True)
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)})
    bus = EventBus(1000)
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        await journal.append(payload("keep-1", venue_order_id="OKEEP1-AAAAA-AAAAAA"), 1)
        await journal.append(payload("old-2", venue_order_id="OOLD02-AAAAA-AAAAAA"), 1)
        await journal.append(payload("old-3", venue_order_id="OOLD03-AAAAA-AAAAAA"), 1)
        standby = JournalStandby(journal)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        await start_primary(nursery, service)
        await wait_for(lambda: service.orders is not None and service.orders.position == 3)
        assert {r.client_order_id for r in service.orders.open_at("kraken")} == {"keep-1", "old-2", "old-3"}

        journal.truncate_after(1)
        now = time.time_ns()
        await journal.append_replicated([
            Record(2, 2, now, payload("new-2", venue_order_id="ONEW02-AAAAA-AAAAAA")),
            Record(3, 2, now, payload("new-3", venue_order_id="ONEW03-AAAAA-AAAAAA")),
        ])
        standby.epoch = 2
        assert journal.last.seq == 3 and journal.epoch_at(2) == 2

        report = await service.reconcile("kraken", dry_run=False)
        assert report.errors == [], report.errors
        decided = outcomes(report)
        assert decided["OKEEP1-AAAAA-AAAAAA"] == ("matched", "kept"), report.lines()
        assert decided["ONEW02-AAAAA-AAAAAA"] == ("matched", "kept"), report.lines()
        assert decided["ONEW03-AAAAA-AAAAAA"] == ("matched", "kept"), report.lines()
        assert decided["OOLD02-AAAAA-AAAAAA"] == ("orphan", "cancelled"), report.lines()
        assert "OOLD03-AAAAA-AAAAAA" not in decided and "old-3" not in decided, report.lines()  # not "missing"
        assert open_ids(emulator) == {"OKEEP1-AAAAA-AAAAAA", "ONEW02-AAAAA-AAAAAA", "ONEW03-AAAAA-AAAAAA"}

        assert {r.client_order_id for r in service.orders.open_at("kraken")} == {"keep-1", "new-2", "new-3"}
        assert service.orders.get("kraken", "old-2") is None and service.orders.get("kraken", "old-3") is None
        assert service.details()["order_index"]["incomplete"] is None
        journal.close()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 3. an incomplete view of the journal

async def test_journal_without_its_first_records_only_reports(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Retention removed the segment holding an order's record (the journal starts at
    first_seq > 1): the index cannot know every open order, so cancel-orphans cancels
    nothing, reports every venue order, says why in the report's errors, and
    venues.status' order_index.incomplete says why too."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    [resting] = emulator.add_orders("kraken", [kraken_order("ORESTG-AAAAA-AAAAAA")])
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)})
    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal", segment_bytes=1024 * 1024, retain_segments=1)
        await journal.append(payload("resting-gtc", venue_order_id=resting), 1)
        for _ in range(15):  # 1.5 MB of other payloads: the first segment rolls over
            await journal.append(b"x" * 100_000, 1)
        assert journal.remove_segments_through(journal.last.seq, now=1e12) >= 1
        assert journal.first_seq > 1
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=JournalStandby(journal), client_factory=fast_client_factory)
        await start_primary(nursery, service)

        report = await service.reconcile("kraken", dry_run=False)
        decided = outcomes(report)
        assert set(decided) == SEEDED_KRAKEN | {resting}
        assert {v for v in decided.values()} == {("orphan", "report")}, report.lines()
        assert open_ids(emulator) == SEEDED_KRAKEN | {resting}
        assert cancel_requests(emulator) == 0
        assert any("incomplete" in e and "no longer retained" in e for e in report.errors), report.errors
        assert all("no longer retained" in d.reason for d in report.decisions)
        event = await finished.receive()
        assert event.counts["cancelled"] == 0 and any("no longer retained" in e for e in event.errors)
        assert json.loads(Path(event.report).read_text())["errors"] == report.errors

        index = service.details()["order_index"]
        assert index["incomplete"] is not None and "no longer retained" in index["incomplete"]
        assert f"1-{journal.first_seq - 1}" in index["incomplete"]

        # The engine writes its open_orders snapshot of the venue: the view is complete
        # again; the snapshot's order is kept, the true orphans are cancelled.
        snapshot = {"record": "open_orders", "v": 1, "venue": "kraken", "orders": [
            {k: v for k, v in json.loads(payload("resting-gtc", venue_order_id=resting)).items()
             if k not in ("record", "v")}]}
        await journal.append(json.dumps(snapshot).encode(), 1)
        report = await service.reconcile("kraken", dry_run=False)
        decided = outcomes(report)
        assert decided[resting] == ("matched", "kept"), report.lines()
        assert {decided[i] for i in SEEDED_KRAKEN} == {("orphan", "cancelled")}, report.lines()
        assert open_ids(emulator) == {resting}
        assert service.details()["order_index"]["incomplete"] is None
        assert service.details()["order_index"]["snapshots"] == {"kraken": journal.last.seq}
        journal.close()
        nursery.cancel_scope.cancel()


async def test_invalid_order_record_in_the_journal_only_reports(tmp_path: Path, nursery: trio.Nursery) -> None:
    """An order record the control socket would have refused (amount -1), written straight
    into the journal: the order it described is unknown, so cancel-orphans cancels nothing
    and says why; order_index.incomplete says why."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)})
    bus = EventBus(1000)
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        await journal.append(payload("eng-1", venue_order_id="OIIQBL-6PV3A-7M2AJJ", price="54.0"), 1)
        await journal.append(payload("eng-2", venue_order_id="OXCZ7B-EMVZQ-MTJTQJ", amount="-1"), 1)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=JournalStandby(journal), client_factory=fast_client_factory)
        await start_primary(nursery, service)
        await wait_for(lambda: service.orders is not None and service.orders.position == 2)
        assert service.orders.invalid == 1

        report = await service.reconcile("kraken", dry_run=False)
        decided = outcomes(report)
        assert decided["OIIQBL-6PV3A-7M2AJJ"] == ("matched", "kept")
        assert decided["OXCZ7B-EMVZQ-MTJTQJ"] == ("orphan", "report"), report.lines()
        assert decided["OF7S76-H2IMS-N2ML4U"] == ("orphan", "report"), report.lines()
        assert report.counts()["cancelled"] == 0
        assert open_ids(emulator) == SEEDED_KRAKEN and cancel_requests(emulator) == 0
        assert any("invalid order record" in e for e in report.errors), report.errors

        index = service.details()["order_index"]
        assert index["invalid"] == 1
        assert index["incomplete"] is not None and "1 invalid order record" in index["incomplete"]
        journal.close()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 4. an engine order still "new"

async def test_unmatched_new_order_without_venue_id_protects_a_look_alike(tmp_path: Path,
                                                                         nursery: trio.Nursery) -> None:
    """The journal holds an order in state "new" without venue_order_id; the venue lists an
    order of the same symbol, side and amount without a client id echo (it may be that
    very order): reported, not cancelled. A venue order that looks like no "new" order is
    still an orphan and cancelled."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    emulator.add_orders("kraken", [kraken_order("OLOOKS-AAAAA-AAAAAA"),
                                   kraken_order("OORPHN-AAAAA-AAAAAA", side="buy", amount="2", price="50")],
                        replace=True)
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)})
    bus = EventBus(1000)
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        await journal.append(payload("eng-new", state="new", price="100"), 1)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=JournalStandby(journal), client_factory=fast_client_factory)
        await start_primary(nursery, service)

        report = await service.reconcile("kraken", dry_run=False)
        decided = outcomes(report)
        assert decided["OLOOKS-AAAAA-AAAAAA"] == ("orphan", "report"), report.lines()
        looks = next(d for d in report.decisions if d.venue_order_id == "OLOOKS-AAAAA-AAAAAA")
        assert "state new" in looks.reason
        assert decided["OORPHN-AAAAA-AAAAAA"] == ("orphan", "cancelled"), report.lines()
        assert decided["eng-new"] == ("missing", "report")
        assert open_ids(emulator) == {"OLOOKS-AAAAA-AAAAAA"}
        assert {c["id"] for c in emulator.venue("kraken").cancelled} == {"OORPHN-AAAAA-AAAAAA"}
        journal.close()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 5. a malformed venue answer

async def test_malformed_venue_orders_are_reported_and_the_daemon_keeps_running(tmp_path: Path,
                                                                               nursery: trio.Nursery) -> None:
    """fetch_open_orders returns, besides the venue's orders, one without an id, one
    without a symbol and one that is not an order structure at all. The reconciliation at
    start (a background task of the service) reports each as an error, ReconciliationFinished
    is published, and the service keeps running: its probes go on, another reconciliation
    runs."""
    _, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, interval="200ms", positions=False)},
                      standby=fixed_primary())
    malformed = [{"id": None, "symbol": "LTC/USDT", "side": "buy", "amount": 1.0},
                 {"id": "OABC-1", "symbol": None, "side": "buy", "amount": 1.0},
                 "not an order"]

    def factory(venue: str, config: Any, **kwargs: Any) -> Any:
        client = fast_client_factory(venue, config, **kwargs)
        if kwargs["timeout"] == venue_service.PRIVATE_TIMEOUT:
            real = client.fetch_open_orders
            client.fetch_open_orders = lambda: list(real()) + malformed
        return client

    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    with trio.fail_after(CAP):
        standby = await start_standby(nursery, cfg, bus)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=factory)
        await nursery.start(service.run)
        event = await finished.receive()
        assert event.trigger == "start"
        unreadable = [e for e in event.errors if "could not be read" in e]
        assert len(unreadable) == 3, event.errors
        assert any("id" in e for e in unreadable) and any("symbol" in e for e in unreadable)
        assert event.counts["orphans"] == 3  # the well-formed orders were still compared
        assert Path(event.report).exists()

        path = service.venues["kraken"].paths["default"]
        probes = path.health.samples_total
        await wait_for(lambda: path.health.samples_total >= probes + 2, timeout=5)  # the probes go on
        again = await service.reconcile("kraken", dry_run=True)
        assert len([e for e in again.errors if "could not be read" in e]) == 3
        assert service.status().details["venues"]["kraken"]["reconcile"]["runs"] == 2
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 6. nothing cancelled by a fenced node

async def test_cancel_all_refuses_on_a_node_that_is_not_primary(tmp_path: Path, nursery: trio.Nursery) -> None:
    """venue.cancel_all (the playbook action) on a standby or fenced node: refused, nothing
    cancelled (a dry run still says what it would do)."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False)})
    bus = EventBus(1000)
    standby = FakeStandby()
    standby.leadership.primary = False
    service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
    with trio.fail_after(CAP):
        await nursery.start(service.run)
        with pytest.raises(VenueUnavailable) as info:
            await service.cancel_all("kraken", reason="playbook venue-dark")
        assert info.value.error_class == "fenced" and "not primary" in str(info.value)
        assert await service.cancel_all("kraken", dry_run=True) == "would cancel 3 open order(s) at kraken"
        assert open_ids(emulator) == SEEDED_KRAKEN and cancel_requests(emulator) == 0

        from recovery.executor import ActionFailed
        from recovery.service import DaemonActionRunner

        runner = DaemonActionRunner(bus)
        runner.playbook = "venue-dark"
        runner.venues = service
        with pytest.raises(ActionFailed) as failed:
            await runner.run("venue.cancel_all", {"venue": "kraken"}, dry_run=False)
        assert "not primary" in str(failed.value)
        assert open_ids(emulator) == SEEDED_KRAKEN and cancel_requests(emulator) == 0
        nursery.cancel_scope.cancel()


class Gate:
    """Blocks a ccxt call in its worker thread until the test lets it go."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def wrap(self, fn: Any) -> Any:
        def gated(*args: Any, **kwargs: Any) -> Any:
            if self.armed.is_set():
                self.armed.clear()  # one call only
                self.entered.set()
                self.release.wait(20)
            return fn(*args, **kwargs)
        return gated


async def test_reconciliation_fenced_while_waiting_for_the_venue_sends_no_more_cancels(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """Cancel-orphans with three orphans. While the first cancel is in flight a dead-man
    re-arm queues for the venue's private calls and gets them next; the reconciliation's
    second cancel queues behind it (this node was primary when it decided to send it).
    Then the node is fenced. Once the re-arm is through, the second cancel is not sent —
    nor the third."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False, deadman=True, deadman_timeout="60s",
                                                        deadman_interval="10s")})
    cancel_gate, arm_gate = Gate(), Gate()

    def factory(venue: str, config: Any, **kwargs: Any) -> Any:
        client = fast_client_factory(venue, config, **kwargs)
        if kwargs["timeout"] == venue_service.PRIVATE_TIMEOUT:
            client.cancel_order = cancel_gate.wrap(client.cancel_order)
            client.cancel_all_orders_after = arm_gate.wrap(client.cancel_all_orders_after)
        return client

    bus = EventBus(1000)
    deadman = emulator.venue("kraken").deadman
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        standby = JournalStandby(journal)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=factory)
        lock = service.venues["kraken"].private_lock
        await start_primary(nursery, service)
        await wait_for(lambda: deadman.arms >= 1)

        result: dict[str, Any] = {}
        done = trio.Event()

        async def reconcile() -> None:
            result["report"] = await service.reconcile("kraken", dry_run=False)
            done.set()

        cancel_gate.armed.set()
        nursery.start_soon(reconcile)
        await wait_for(cancel_gate.entered.is_set)           # cancel 1 in flight, holding the private calls
        arm_gate.armed.set()
        bus.publish(role_changed("primary", "primary"))       # wakes the dead-man loop: a re-arm now
        await wait_for(lambda: lock.statistics().tasks_waiting == 1)
        cancel_gate.release.set()
        await wait_for(arm_gate.entered.is_set)              # the re-arm has the private calls now
        await wait_for(lambda: lock.statistics().tasks_waiting == 1)  # cancel 2 decided, waiting
        standby.leadership.primary = False                    # fenced
        bus.publish(role_changed("fenced", "primary"))
        arm_gate.release.set()
        await done.wait()

        report = result["report"]
        assert len(emulator.venue("kraken").cancelled) == 1, report.lines()
        assert cancel_requests(emulator) == 1
        assert len(open_ids(emulator)) == 2
        orphan_outcomes = [o for k, o in outcomes(report).values() if k == "orphan"]
        assert orphan_outcomes.count("cancelled") == 1, orphan_outcomes
        assert all(o == "cancelled" or "no longer primary" in o for o in orphan_outcomes), orphan_outcomes
        journal.close()
        nursery.cancel_scope.cancel()


async def test_reconciliation_of_a_past_term_sends_no_more_cancels(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Cancel-orphans with three orphans; while the first cancel is in flight the node is
    fenced and promoted again (a new term, whose own reconciliation decides afresh). The
    old term's remaining cancels are not sent."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)})
    cancel_gate = Gate()

    def factory(venue: str, config: Any, **kwargs: Any) -> Any:
        client = fast_client_factory(venue, config, **kwargs)
        if kwargs["timeout"] == venue_service.PRIVATE_TIMEOUT:
            client.cancel_order = cancel_gate.wrap(client.cancel_order)
        return client

    bus = EventBus(1000)
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        standby = JournalStandby(journal)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=factory)
        await start_primary(nursery, service)
        result: dict[str, Any] = {}
        done = trio.Event()

        async def reconcile() -> None:
            result["report"] = await service.reconcile("kraken", dry_run=False)
            done.set()

        cancel_gate.armed.set()
        nursery.start_soon(reconcile)
        await wait_for(cancel_gate.entered.is_set)
        term = service._primary_term
        standby.leadership.primary = False
        bus.publish(role_changed("fenced", "primary"))
        await trio.sleep(0.05)
        standby.leadership.primary = True
        standby.epoch = 8
        bus.publish(role_changed("primary", "candidate", epoch=8))
        await wait_for(lambda: service._primary_term == term + 1)  # the role loop saw the new term
        cancel_gate.release.set()
        await done.wait()

        report = result["report"]
        assert len(emulator.venue("kraken").cancelled) == 1, report.lines()
        assert cancel_requests(emulator) == 1 and len(open_ids(emulator)) == 2
        orphan_outcomes = [o for k, o in outcomes(report).values() if k == "orphan"]
        assert orphan_outcomes.count("cancelled") == 1, orphan_outcomes
        assert all(o == "cancelled" or o.startswith("skipped") for o in orphan_outcomes), orphan_outcomes
        journal.close()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 7. a promotion during start-up

async def test_promotion_while_the_clients_are_built_is_reconciled_once(tmp_path: Path,
                                                                        nursery: trio.Nursery) -> None:
    """The lease is taken (may_trade true, RoleChanged primary published) while the service
    is still building its ccxt clients, before `nursery.start(service.run)` returns: that
    term is still reconciled, exactly once."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile="report-only", positions=False)})
    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    promoted = threading.Event()
    standby: JournalStandby | None = None

    def promote() -> None:
        assert standby is not None
        standby.leadership.primary = True
        standby.epoch = 8
        bus.publish(role_changed("primary", "candidate", epoch=8))

    def factory(venue: str, config: Any, **kwargs: Any) -> Any:
        if not promoted.is_set():
            promoted.set()
            time.sleep(0.2)
            trio.from_thread.run_sync(promote)
            time.sleep(0.2)
        return fast_client_factory(venue, config, **kwargs)

    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        standby = JournalStandby(journal, primary=False, epoch=7, lease="fake")
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=factory)
        await nursery.start(service.run)
        assert promoted.is_set() and service.may_trade()
        with trio.fail_after(8):
            event = await finished.receive()
        assert event.trigger in ("start", "promotion (epoch 8)")
        assert (event.policy, event.dry_run, event.counts["orphans"]) == ("report-only", False, 3)
        await trio.sleep(1.0)
        with pytest.raises(trio.WouldBlock):  # once
            finished.receive_nowait()
        assert service.venues["kraken"].reconciliations == 1
        assert open_ids(emulator) == SEEDED_KRAKEN
        journal.close()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 8. the audit log refuses entries

async def test_audit_log_refusing_entries_still_reports_and_cancels_nothing(tmp_path: Path,
                                                                           nursery: trio.Nursery) -> None:
    """The audit log refuses every entry (a full disk). Cancel-orphans with three orphans:
    the "started" entry (the decisions, written before anything is done) could not be
    written, so nothing is cancelled; the JSON report is still written and
    ReconciliationFinished still published, the audit errors among its errors."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False)})
    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    audit = RefusingAudit()
    with trio.fail_after(CAP):
        journal = await open_journal(nursery, tmp_path / "journal")
        service = VenueService(cfg, bus, standby=JournalStandby(journal), client_factory=fast_client_factory,
                               audit_factory=lambda: audit)
        await start_primary(nursery, service)

        report = await service.reconcile("kraken", dry_run=False)
        assert "venue.reconcile.started" in audit.attempts
        assert "venue.reconcile.action" not in audit.attempts
        audit_errors = [e for e in report.errors if "audit log refused" in e]
        assert audit_errors and all("No space left on device" in e for e in audit_errors), report.errors
        assert report.counts()["cancelled"] == 0
        assert open_ids(emulator) == SEEDED_KRAKEN and cancel_requests(emulator) == 0

        event = await finished.receive()
        assert any("audit log refused" in e for e in event.errors), event.errors
        assert event.counts["cancelled"] == 0
        written = Path(event.report)
        assert written.exists() and written == Path(service.venues["kraken"].last_report or "")
        assert any("audit log refused" in e for e in json.loads(written.read_text())["errors"])
        journal.close()
        nursery.cancel_scope.cancel()


async def test_signed_requests_through_two_uplinks_are_paced_as_one_key(tmp_path: Path,
                                                                        nursery: trio.Nursery) -> None:
    """The venue's budget is per API key, ccxt's limiter per instance: private calls that
    switch uplinks (a private client each) must still be spaced by the rate limit, as if
    one client sent them all."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    sent: list[tuple[float, str]] = []

    def recording_factory(venue: str, config: Any, **kwargs: Any) -> Any:
        client = venue_service._default_client_factory(venue, config, **kwargs)
        client.exchange.rateLimit = 200
        fetch = client.exchange.fetch

        def timed_fetch(url: str, *args: Any, **kw: Any) -> Any:
            if "/0/private/" in url:
                sent.append((time.monotonic(), kwargs.get("uplink") or "default"))
            return fetch(url, *args, **kw)

        client.exchange.fetch = timed_fetch
        return client

    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False,
                                                        positions=False, deadman=False, interval="60s")},
                      uplinks=True)
    service = VenueService(cfg, EventBus(1000), **venue_seams(cfg), client_factory=recording_factory)
    with trio.fail_after(CAP):
        await nursery.start(service.run)
        venue = service.venues["kraken"]
        await wait_for(lambda: all(p.health.state.value == "up" for p in venue.paths.values()))
        fibre, starlink = venue.paths["fibre"], venue.paths["starlink"]
        for first, second in ((fibre, starlink), (starlink, fibre), (fibre, starlink)):
            first.health.state, second.health.state = venue_service.VenueState.UP, venue_service.VenueState.DOWN
            await service._private(venue, "fetch_balance")
        used = [u for _, u in sent]
        assert set(used) == {"fibre", "starlink"}, used  # the calls really switched uplinks
        gaps = [b - a for (a, _), (b, _) in zip(sent, sent[1:])]
        assert min(gaps) >= 0.18, gaps  # never faster than the 200 ms limit, whichever instance sent it
        nursery.cancel_scope.cancel()
