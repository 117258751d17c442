"""The risk book on a pair inside one trio run: the standby folds what it receives, so after
a promotion the new primary has the same positions, P&L, open orders, seen ids and blocks
as the old primary had — without asking anyone — and its gate refuses what the old one
would have (a duplicate client order id, one open order over the limit)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.support.ports import free_port

from daemon.app import guard_seams
from daemon.control import ControlServer
from daemon.core.bus import EventBus
from daemon.core.control_client import ControlError
from daemon.guard.limits import Limits, LimitSet
from daemon.guard.service import GuardService
from daemon.standby.service import StandbyService
from tests.support.orders import order_stream
from tests.integration.standby.test_standby_service import KEY, call, config


def limits() -> Limits:
    return Limits(version=1, expires=datetime(2099, 1, 1, tzinfo=timezone.utc), no_reference="pass",
                  entries=(LimitSet(max_open_orders=12, max_order_amount=Decimal(3)),))


async def start(nursery: trio.Nursery, cfg: Any, tmp: Path) -> tuple[StandbyService, GuardService, Path]:
    from daemon.app import standby_seams

    bus = EventBus(256)
    standby = StandbyService(cfg, bus, **standby_seams(cfg), key=KEY)
    guard = GuardService(cfg, bus, **guard_seams(cfg, standby))
    guard.gate.limits = limits()
    standby.append_gate = guard
    sock = tmp / f"{cfg.node.name}.sock"
    control = ControlServer(sock, group=None)
    standby.register_control(control)
    guard.register_control(control)
    await nursery.start(control.run)
    await nursery.start(standby.run)
    await nursery.start(guard.run)
    return standby, guard, sock


def figures(guard: GuardService) -> dict[str, Any]:
    snap = guard.book.snapshot(1_800_000_000.0)
    snap["blocks"] = [(b.kind, b.scope, b.reason, b.by) for b in guard.book.blocks.blocks]
    snap["seen"] = sorted(guard.book.seen_ids)
    snap["open"] = sorted(guard.book.open_keys())
    snap.pop("records")
    return snap


async def test_the_standby_folds_the_same_book_and_decides_the_same_after_a_promotion(tmp_path: Path) -> None:
    port = free_port()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            p_standby, p_guard, psock = await start(nursery, config(tmp_path, "edge-a", "primary", port), tmp_path)
            s_standby, s_guard, ssock = await start(nursery, config(tmp_path, "edge-b", "standby", port), tmp_path)
            while not p_standby.replication.in_sync():
                await trio.sleep(0.02)
            payloads = order_stream(400, seed=5, max_live=8)
            for i in range(0, len(payloads), 7):
                try:
                    await call(psock, "journal.append", {"payloads": payloads[i:i + 7]})
                except ControlError as exc:
                    assert exc.code == "risk_refused", exc
            await call(psock, "risk.pause", {"venue": "kraken", "symbol": "ETH/USDT", "reason": "pair test"})
            last = p_standby.journal.last.seq
            while s_guard.book.position < last:
                await trio.sleep(0.02)
            before = figures(p_guard)
            assert before["open"] and before["instruments"], before
            assert figures(s_guard) == before

            # The promotion: the old primary stops accepting, the standby becomes primary.
            p_standby.fence("test: promote the standby")
            s_standby.follow("none", 1)
            await trio.sleep(0.1)
            s_standby.become_primary(2)
            while not s_standby.accepting:
                await trio.sleep(0.02)
            assert figures(s_guard) == before, "the new primary folded the same figures"
            seen = next(iter(s_guard.book.seen_ids))
            with pytest.raises(ControlError) as info:
                await call(ssock, "journal.append", {"payloads": [json.dumps(
                    {"record": "order", "v": 1, "client_order_id": seen[1], "venue": "kraken", "symbol": "BTC/USDT",
                     "side": "buy", "amount": "1", "price": "100", "state": "new"})]})
            assert "duplicate_client_order_id" in info.value.message
            with pytest.raises(ControlError) as info:
                await call(ssock, "journal.append", {"payloads": [json.dumps(
                    {"record": "order", "v": 1, "client_order_id": "fresh-1", "venue": "kraken",
                     "symbol": "ETH/USDT", "side": "buy", "amount": "1", "price": "100", "state": "new"})]})
            assert "limit pause" in info.value.message and "pair test" in info.value.message
            nursery.cancel_scope.cancel()
