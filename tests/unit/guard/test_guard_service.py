"""GuardService on the standby's real append path (StandbyService._append_payloads) with a
fake replication: two concurrent appends never both pass against the same state; a batch the
journal refuses gives its reservation back; an acknowledged batch is folded before the reply."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
import trio

from daemon.config import parse_config
from daemon.core.bus import EventBus
from daemon.core.control_client import ControlError
from daemon.guard.limits import Limits, LimitSet
from daemon.guard.service import GuardService
from daemon.standby import Position, StandbyError
from daemon.standby.service import StandbyService
from daemon.standby.replication import AppendRun
from daemon.venues.orders import parse_for_append, parse_journal_record


def order(coid: str, state: str = "new") -> bytes:
    return json.dumps({"record": "order", "v": 1, "client_order_id": coid, "venue": "kraken", "symbol": "BTC/USDT",
                       "side": "buy", "amount": "1", "price": "100", "state": state}).encode()


class FakeJournal:
    def __init__(self) -> None:
        self.last = Position(1, 0)


class FakeReplication:
    def __init__(self, journal: FakeJournal) -> None:
        self.journal = journal
        self.release = trio.Event()
        self.fail = False

    async def append_runs(self, payloads: list[bytes]) -> list[AppendRun]:
        await self.release.wait()
        if self.fail:
            raise StandbyError("the journal refused it")
        first = self.journal.last.seq + 1
        last = first + len(payloads) - 1
        self.journal.last = Position(1, last)
        return [AppendRun(first, last, 1, "ok", "primary", None, False)]


def rig() -> tuple[StandbyService, GuardService, FakeReplication]:
    cfg = parse_config('[node]\nname = "a"\nstate_dir = "/tmp/gate-unit"\nruntime_dir = "/tmp/gate-unit/run"\n'
                       '[standby]\nrole = "primary"\nkey_file = "unused"\nlisten = "127.0.0.1:1"\n')
    standby = StandbyService(cfg, EventBus(16))
    guard = GuardService(cfg, EventBus(16), standby=standby, parse_order=parse_journal_record,
                         check_order=partial(parse_for_append, venues=[]))
    guard.ready = True
    guard.gate.limits = Limits(version=1, expires=datetime(2099, 1, 1, tzinfo=timezone.utc),
                               entries=(LimitSet(max_open_orders=1, max_order_amount=Decimal(5)),))
    standby.append_gate = guard
    standby.journal = FakeJournal()
    replication = FakeReplication(standby.journal)
    standby.replication = replication
    standby.accepting = True
    return standby, guard, replication


async def test_concurrent_appends_do_not_both_pass_and_the_acknowledged_one_is_folded() -> None:
    standby, guard, replication = rig()
    results: list[Any] = []

    async def first() -> None:
        results.append(await standby._append_payloads([order("a")], False))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ControlError) as info, trio.fail_after(5):  # the first is in flight: reserved
            await standby._append_payloads([order("b")], False)
        assert info.value.code == "risk_refused" and "max_open_orders" in info.value.message
        replication.release.set()
    assert results[0][0]["seq"] == 1
    assert guard.book.position == 1 and guard.book.instruments[("kraken", "BTC/USDT")].open_orders == 1
    assert not guard.gate.reserved, "folded: the reservation ended"
    with pytest.raises(ControlError):
        await standby._append_payloads([order("b")], False)
    await standby._append_payloads([order("a", "cancelled")], False)
    await standby._append_payloads([order("b")], False)


async def test_a_batch_the_journal_refuses_is_held_until_the_journal_moves_past_it() -> None:
    """A refused batch may be partly in the journal (logged in doubt): held until the fold
    has passed where it would be; then given back."""
    standby, guard, replication = rig()
    replication.fail = True
    replication.release.set()
    with pytest.raises(ControlError) as info:
        await standby._append_payloads([order("a")], False)
    assert info.value.code == "refused"
    assert guard.gate.reserved_ids, "held: it may be in the journal"
    replication.fail = False
    await standby._append_payloads([order("x", "cancelled")], False)  # the journal moves on: seq 1
    assert not guard.gate.reserved and not guard.gate.reserved_ids
    await standby._append_payloads([order("a")], False)  # neither a duplicate nor over the limit


async def test_a_cancelled_append_keeps_its_reservation_until_the_journal_is_folded() -> None:
    standby, guard, replication = rig()
    with trio.move_on_after(0.01):
        await standby._append_payloads([order("a")], False)
    assert guard.gate.reserved, "it may be in the journal: still held"
    with pytest.raises(ControlError):
        await standby._append_payloads([order("b")], False)
