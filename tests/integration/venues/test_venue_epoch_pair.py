"""Order records carry the lease epoch: two real `lifeline run` processes and a real
`lifeline witness`. After a kill -9 of the primary, an engine still following the deposed
primary (the epoch it last read on role.watch) appends a `new` order to the new primary:
refused with the field, the figures and the fix, nothing written. The same order at the
new epoch is written; later states of an older order pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.pair import LeasePair

from daemon.core.control_client import ControlError


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LeasePair]:
    p = LeasePair(tmp_path, "witness")
    try:
        yield p
    finally:
        p.close()


def order(client_order_id: str, epoch: int, state: str = "new", **extra: object) -> str:
    return json.dumps({"record": "order", "v": 1, "client_order_id": client_order_id, "venue": "kraken",
                       "symbol": "BTC/USDT", "side": "buy", "amount": "0.5", "price": "43000.1", "state": state,
                       "epoch": epoch, **extra})


def test_a_new_order_at_the_deposed_primarys_epoch_is_refused_by_the_new_primary(pair: LeasePair) -> None:
    pair.start()
    first = pair.wait_primary()
    second = pair.other(first)
    pair.wait_role(second, "standby")
    old_epoch = pair.role(first)["epoch"]
    placed = pair.nodes[first].call("journal.append", {"payloads": [order("e1-1", old_epoch)]})["results"]
    assert placed[0]["status"] == "ok" and placed[0]["epoch"] == old_epoch
    pair.nodes[first].kill9()
    assert pair.wait_primary(among=(second,)) == second
    new_epoch = pair.role(second)["epoch"]
    assert new_epoch > old_epoch
    before = pair.nodes[second].last_seq()

    with pytest.raises(ControlError) as refused:
        pair.nodes[second].call("journal.append", {"payloads": [order("e1-2", old_epoch)]})
    assert refused.value.code == "bad_record"
    assert (f"payload 0: order record: epoch: a new order placed under lease epoch {old_epoch}, but this primary "
            f"holds epoch {new_epoch}: the engine follows a stale role; do not send it, read role.watch again and "
            "write the epoch it names (nothing was written)") in str(refused.value)
    assert pair.nodes[second].last_seq() == before

    # the engine re-reads the role: the same order at the new epoch is written
    ok = pair.nodes[second].call("journal.append", {"payloads": [order("e1-2", new_epoch)]})["results"]
    assert ok[0]["status"] == "ok" and ok[0]["epoch"] == new_epoch
    # the order placed under the old epoch keeps its epoch through its later states
    closed = pair.nodes[second].call("journal.append", {"payloads": [
        order("e1-1", old_epoch, "cancelled", venue_order_id="O-1")]})["results"]
    assert closed[0]["status"] == "ok"
    # a record without an epoch (an older engine) is still accepted
    bare = json.loads(order("e1-3", 0))
    del bare["epoch"]
    assert pair.nodes[second].call("journal.append", {"payloads": [json.dumps(bare)]})["results"][0]["status"] == "ok"
