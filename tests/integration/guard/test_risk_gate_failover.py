"""The risk book across a real failover: two `lifeline run` processes with a witness lease;
the engine trades through the primary, an operator pauses a symbol; the primary is killed
(SIGKILL); the promoted standby shows the same positions, P&L, open orders and blocks it
folded as a standby — asking nobody — and keeps refusing new orders on the paused symbol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.orders import order_stream
from tests.support.waiting import wait_for
from tests.support.pair import LeasePair

from daemon.core.control_client import ControlError


def book(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status["book"])
    out.pop("records")
    out["blocks"] = [(b["kind"], b["scope"], b["reason"], b["by"]) for b in status["blocks"]["blocks"]]
    return out


def test_the_promoted_standby_has_the_same_risk_book(tmp_path: Path) -> None:
    pair = LeasePair(tmp_path, "witness")
    try:
        pair.start()
        first = pair.wait_primary()
        second = pair.other(first)
        pair.wait_role(second, "standby")
        payloads = order_stream(300, seed=9, max_live=6)
        for i in range(0, len(payloads), 10):
            pair.nodes[first].call("journal.append", {"payloads": payloads[i:i + 10]})
        pair.nodes[first].call("risk.pause", {"venue": "kraken", "symbol": "ETH/USDT", "reason": "failover test"})
        last = pair.nodes[first].last_seq()
        wait_for(lambda: pair.nodes[second].call("risk.status")["book"]["position"] == last,
                 "the standby to fold every record", 15, detail=pair.diagnosis)
        before = book(pair.nodes[first].call("risk.status"))
        assert before["instruments"] and before["blocks"], before
        assert book(pair.nodes[second].call("risk.status")) == before

        wait_for(lambda: pair.role(first).get("sync_mark") == second
                 and pair.role(second)["lease"]["sync_node"] == second,
                 "the store to mark the standby synchronous", 10, detail=pair.diagnosis)
        pair.nodes[first].kill9()
        assert pair.wait_primary(among=(second,), timeout=20) == second
        after = pair.nodes[second].call("risk.status")
        assert after["ready"] and book(after) == before, "the new primary's figures are the old primary's"
        with pytest.raises(ControlError) as info:
            pair.nodes[second].call("journal.append", {"payloads": [json.dumps(
                {"record": "order", "v": 1, "client_order_id": "after-1", "venue": "kraken", "symbol": "ETH/USDT",
                 "side": "buy", "amount": "1", "price": "100", "state": "new"})]})
        assert info.value.code == "risk_refused" and "failover test" in info.value.message
        ok = pair.nodes[second].call("journal.append", {"payloads": [json.dumps(
            {"record": "order", "v": 1, "client_order_id": "after-2", "venue": "kraken", "symbol": "BTC/USDT",
             "side": "buy", "amount": "1", "price": "100", "state": "new"})]})
        assert ok["results"][0]["status"] == "ok"
    finally:
        pair.close()
