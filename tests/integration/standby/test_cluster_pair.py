"""`lifeline cluster` on a real pair with a real witness on loopback: from either node,
both members with role, epoch, journal position and lag, the sync state, the lease
holder and its expiry, and the store's health (read on a connection of its own)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import cli
from tests.support.pair import LeasePair, Node
from tests.support.waiting import wait_for


def cluster(node: Node) -> tuple[int, dict, str]:
    out = cli("cluster", "--socket", str(node.socket), "--json")
    text = cli("cluster", "--socket", str(node.socket)).stdout
    return out.returncode, json.loads(out.stdout) if out.stdout else {}, text


def test_cluster_from_either_node(tmp_path: Path) -> None:
    pair = LeasePair(tmp_path, "witness")
    try:
        pair.start()
        primary = pair.wait_primary()
        standby = pair.other(primary)
        pair.wait_role(standby, "standby")
        result = pair.nodes[primary].call("journal.append", {"payloads": ["one", "two", "three"]})
        assert all(r["status"] == "ok" for r in result["results"])
        epoch = pair.role(primary)["epoch"]

        def settled(name: str) -> dict | None:
            code, info, _ = cluster(pair.nodes[name])
            members = {m["node"]: m for m in info.get("members", [])}
            ok = (code == 0 and set(members) == {primary, standby} and members[standby].get("seq") == 3
                  and members[primary].get("seq") == 3)
            return info if ok else None

        for name in (primary, standby):
            info = wait_for(lambda: settled(name), f"cluster on {name} to show both at seq 3", 15)
            members = {m["node"]: m for m in info["members"]}
            assert members[primary]["role"] == "primary" and members[standby]["role"] == "standby", info
            assert members[name]["self"] is True
            assert members[primary]["lease_holder"] is True and members[standby]["lease_holder"] is False
            store = info["store"]
            assert store["reachable"] is True and store["holder"] == primary and store["epoch"] == epoch, store
            assert 0 < store["ttl_remaining"] <= 1.0
            assert store["sync_node"] == standby, store
        # The primary's view: the standby's lag and sync state from the replication link.
        info = settled(primary)
        assert info is not None
        peer = {m["node"]: m for m in info["members"]}[standby]
        assert peer["lag_records"] == 0 and peer["sync"] == "in-sync" and peer["connected"] is True
        _, _, text = cluster(pair.nodes[standby])
        assert text.splitlines()[0].split() == ["member", "role", "epoch", "seq", "lag", "sync", "lease", "seen",
                                                "via"]
        assert f"lease: held by {primary} at epoch {epoch}" in text, text

        # The store goes away: cluster says so and exits 1; the roles are still shown.
        assert pair.witness is not None
        pair.witness.stop()
        out = cli("cluster", "--socket", str(pair.nodes[standby].socket))
        assert out.returncode == 1 and "UNREACHABLE" in out.stdout, out.stdout
        assert "primary" in out.stdout
    finally:
        pair.close()
