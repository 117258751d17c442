"""Issue 14's hole, reproduced on real processes and deterministically: acknowledged
records lost after a replication-link blip.

Two real `lifeline run` processes and a real `lifeline witness` on loopback (the lease
pair of test_lease_pair.py), with the replication link of each node running through a
TCP proxy the test owns (:class:`LinkProxy`). The proxy reads the frame headers (they
are in the clear: the link is authenticated, not encrypted) and so can, without timing
luck, cut the link, hold the standby's acknowledgements, and hold the primary's RECORDS
frames beyond a given seq. The schedule:

1. the pair is in sync, the store marks the standby synchronous;
2. the link is cut: the primary clears the mark and answers records ok alone;
3. the link heals; the standby catches up the backlog (its ACKs held by the proxy);
4. records appended now are answered ok alone (the standby is catching up); the proxy
   holds them on their way to the standby;
5. the ACKs are released: the primary sees its catch-up target acknowledged. Before the
   fix it called the standby in sync there and the store marked it;
6. kill -9 of the primary (the held records die with the link).

Then the standby either does not promote itself (it is not marked: it knows it may lack
records) or it holds every record answered ok. Before the fix it promoted on the mark
with the records of step 4 missing (100 acknowledged records lost, every run).

The second test lets the held records through after step 5: the converging standby is
marked once it holds them, and a kill -9 then promotes it with nothing lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.pair import LeasePair
from tests.support.proxy import LinkProxy
from tests.support.waiting import until, wait_for


@dataclass
class Blip:
    """The pair after steps 1-5: the catch-up target acknowledged, the records answered
    alone during the catch-up held by the proxy on their way to the standby."""

    pair: LeasePair
    primary: str
    standby: str
    proxy: LinkProxy
    target: int
    alone: list[dict[str, Any]]
    acknowledged: dict[int, bytes] = field(default_factory=dict)

    def append(self, prefix: str, count: int, durable_on: str) -> list[dict[str, Any]]:
        payloads = [f"{prefix}-{i}" for i in range(count)]
        results = self.pair.nodes[self.primary].call("journal.append", {"payloads": payloads})["results"]
        assert {(r["status"], r["durable_on"]) for r in results} == {("ok", durable_on)}, results[:2]
        self.acknowledged.update((r["seq"], p.encode()) for r, p in zip(results, payloads))
        return list(results)

    def lost_on(self, name: str) -> list[int]:
        held = {seq: payload for seq, _, _, payload in self.pair.nodes[name].records()}
        return sorted(seq for seq, payload in self.acknowledged.items() if held.get(seq) != payload)


@pytest.fixture
def blip(tmp_path: Path) -> Iterator[Blip]:
    pair = LeasePair(tmp_path, "witness")
    proxies: dict[str, LinkProxy] = {}  # by the node the proxy leads to
    try:
        for name, node in pair.nodes.items():
            other = pair.other(name)
            proxy = proxies[other] = LinkProxy(int(pair.nodes[other].settings["listen"].rsplit(":", 1)[1]))
            node.settings["peer"] = f"127.0.0.1:{proxy.port}"
            # The primary must not give up on a standby whose ACKs the proxy holds.
            node.settings["peer_timeout"] = "5s"
            node.write_config()
        pair.start()
        first = pair.wait_primary()
        second = pair.other(first)
        a, b = pair.nodes[first], pair.nodes[second]
        proxy = proxies[first]
        wait_for(lambda: a.call("role.status").get("sync_mark") == second, "the standby marked synchronous", 15,
                 detail=pair.diagnosis)
        state = Blip(pair, first, second, proxy, 0, [])
        state.append("both", 50, "primary+standby")
        # 2. The link is cut: the mark is cleared, then records are answered alone.
        proxy.cut()
        wait_for(lambda: a.call("role.status").get("async_allowed"), "the primary to clear the mark", 10,
                 detail=pair.diagnosis)
        target = state.target = state.append("blip", 300, "primary")[-1]["seq"]
        # 3. The link heals; the standby's ACKs are held, the backlog is let through.
        proxy.hold_acks = True
        proxy.hold_records_above = target
        proxy.heal()
        wait_for(lambda: ((a.replication().get("peer") or {}).get("sent_seq") == target
                          and b.last_seq() == target), "the standby to write the backlog", 15, detail=pair.diagnosis)
        assert a.replication()["acked_seq"] < target  # its ACKs are in the proxy
        # 4. Appended during the catch-up: answered alone, held on their way.
        state.alone = state.append("during-catch-up", 100, "primary")
        assert state.alone[0]["seq"] == target + 1
        wait_for(lambda: proxy.records_held_from == target + 1, "the proxy to hold the new records", 5)
        # 5. The standby's ACKs reach the primary: the catch-up target is acknowledged.
        proxy.release_acks()
        wait_for(lambda: a.replication()["acked_seq"] >= target, "the ACK of the catch-up target", 5,
                 detail=pair.diagnosis)
        yield state
    finally:
        pair.close()
        for proxy in proxies.values():
            proxy.close()


def test_records_answered_alone_during_catch_up_are_never_lost_to_a_promotion_on_the_mark(blip: Blip) -> None:
    pair, a, b = blip.pair, blip.pair.nodes[blip.primary], blip.pair.nodes[blip.standby]
    # Give a (wrong) mark the time to reach the store, then kill at once.
    until(lambda: a.call("role.status").get("sync_mark") == blip.standby, 1.0, 0.01)
    seen = a.replication()
    marked = a.call("role.status").get("sync_mark")
    # 6. kill -9: the records the proxy held die with the link.
    a.kill9()
    blip.proxy.cut()
    assert b.last_seq() == blip.target, "the standby got records the proxy should have held"

    def settled() -> str | None:
        info = pair.role(blip.standby)
        if info["role"] == "primary":
            return "promoted"
        if info["role"] == "waiting" and "acknowledged record" in info["reason"]:
            return "waits"
        return None

    outcome = wait_for(settled, "the standby to promote or to wait for an operator", 10, detail=pair.diagnosis)
    state = (f"primary before the kill: in_sync={seen['in_sync']} state={seen['state']} "
             f"acked_seq={seen['acked_seq']} sync_mark={marked}; catch-up target {blip.target}, "
             f"answered alone up to {blip.alone[-1]['seq']}")
    if outcome == "promoted":
        lost = blip.lost_on(blip.standby)
        assert lost == [], (f"{blip.standby} promoted itself and lacks {len(lost)} acknowledged records "
                            f"({lost[0]}..{lost[-1]}); {state}")
    else:
        # Not marked: it knows it may lack records and waits for an operator.
        assert pair.role(blip.standby)["lease"]["sync_node"] is None, state
        assert marked is None and not seen["in_sync"] and seen["state"] == "converging", state


def test_a_converging_standby_is_marked_once_it_holds_every_record_and_then_promotes_without_loss(
        blip: Blip) -> None:
    pair, a, b = blip.pair, blip.pair.nodes[blip.primary], blip.pair.nodes[blip.standby]
    assert a.replication()["state"] == "converging"
    # The held records reach the standby: it acknowledges them, and only now is it marked.
    blip.proxy.hold_records_above = None
    blip.proxy.release_records()
    wait_for(lambda: a.call("role.status").get("sync_mark") == blip.standby, "the mark", 10, detail=pair.diagnosis)
    assert b.last_seq() >= blip.alone[-1]["seq"]
    blip.append("in-sync", 20, "primary+standby")
    a.kill9()
    blip.proxy.cut()
    pair.wait_primary(among=(blip.standby,))
    assert blip.lost_on(blip.standby) == []
