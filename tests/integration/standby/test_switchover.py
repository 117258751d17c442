"""`lifeline switchover` and `lifeline pause` / `resume` on two real `lifeline run`
processes and a real lease store on loopback (the lease pair of test_lease_pair.py).

Switchover: under a writer, the primary moves to the in-sync standby and back with
every acknowledged record on the new primary, and the old primary's last
``valid_until`` ends before the new one's first ``primary`` message (no overlap);
refused from a standby, and when the standby is not in sync (its replication link cut
with the proxy of test_insync_race.py). Pause: kill -9 of the primary while paused does
not promote the standby; resume does; a pause expires by itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lab.ha_drills import Writer
from tests.support.cli import cli
from tests.support.pair import Feed, LeasePair, feed_lines, settled
from tests.support.pair import witness_pair as pair  # noqa: F401  (the fixture: a witness pair on loopback)
from tests.support.proxy import LinkProxy
from tests.support.waiting import wait_for


def switchover(pair: LeasePair, on: str, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cli("switchover", "--json", *extra, "--socket", str(pair.nodes[on].socket))
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def no_overlap(feeds: dict[str, Feed], old: str, new: str, epoch: int) -> float:
    """Margin (ms) between the old primary's last valid_until at ``epoch`` and the new
    primary's first primary message after it; > 0 means no overlap."""
    until = max(m["valid_until"] for m in feeds[old].messages
                if m.get("epoch") == epoch and isinstance(m.get("valid_until"), int))
    first = min(m["monotonic_ns"] for m in feeds[new].messages if m["role"] == "primary" and m["epoch"] > epoch)
    return (first - until) / 1e6


def test_switchover_there_and_back_under_a_writer_loses_nothing_and_never_overlaps(pair: LeasePair) -> None:
    first, second = settled(pair)
    feeds = {name: Feed(node) for name, node in pair.nodes.items()}
    for feed in feeds.values():
        feed.start()
    writer = Writer(pair.nodes, first, feed_lines(), batch=10, pause=0.002)  # type: ignore[arg-type]
    writer.start()
    try:
        wait_for(lambda: writer.ok_count() >= 100, "100 acknowledged records", 15)
        pauses = []
        for old, new in ((first, second), (second, first)):
            wait_for(lambda o=old, n=new: pair.role(o).get("sync_mark") == n, f"{new} marked synchronous", 15,
                     detail=pair.diagnosis)
            epoch = pair.role(old)["epoch"]
            before = len(writer.acknowledged())
            code, result = switchover(pair, old, "--to", new)
            assert code == 0 and result["ok"], result
            assert result["to"] == new and result["epoch"] == epoch + 1 and result["previous_epoch"] == epoch
            pair.wait_role(old, "standby")
            assert pair.role(new)["role"] == "primary" and pair.role(new)["epoch"] == epoch + 1
            wait_for(lambda n=new: sum(1 for a in writer.acknowledged() if a.node == n) >= 20,
                     f"{new} to acknowledge appends", 10)
            answers = writer.acknowledged()[before:]
            last_old = max(a.at for a in answers if a.node == old)
            first_new = min(a.at for a in answers if a.node == new)
            pauses.append((first_new - last_old) * 1000)
            wait_for(lambda o=old, n=new, e=epoch: any(m["role"] == "primary" and m["epoch"] > e
                                                      for m in feeds[n].messages), "the feed", 5)
            assert no_overlap(feeds, old, new, epoch) > 0
            # The engine saw it on role.watch like any change: fenced, then standby.
            roles = [m["role"] for m in feeds[old].messages if not m.get("renewal")]
            assert roles[-2:] == ["fenced", "standby"], roles
        writer.stop()
        assert writer.error is None, writer.error
        acked = writer.acknowledged()
        journal = {seq: payload for seq, _epoch, _, payload in pair.nodes[first].records()}
        lost = [a.seq for a in acked if journal.get(a.seq) != a.payload]
        assert lost == [] and len(acked) > 200, f"{len(lost)} of {len(acked)} acknowledged records lost: {lost[:5]}"
        assert all(p < 3000 for p in pauses), pauses
        print(f"pauses {pauses} ms")
        shown = cli("role", "--socket", str(pair.nodes[first].socket))
        assert "primary at epoch" in shown.stdout
        assert pair.role(first)["last_switchover"]["to"] == second  # its own, on the way there
    finally:
        writer.stop(5)
        for feed in feeds.values():
            feed.stop()


def test_switchover_is_refused_from_a_standby_and_to_a_node_that_is_not_the_in_sync_standby(
        pair: LeasePair) -> None:
    first, second = settled(pair)
    code, result = switchover(pair, second)
    assert code == 1 and not result["ok"] and "not primary" in result["reason"], result
    shown = cli("switchover", "--socket", str(pair.nodes[second].socket))
    assert shown.returncode == 1 and "switchover REFUSED: this node is standby" in shown.stdout, shown.stdout
    code, result = switchover(pair, first, "--to", "edge-z")
    assert code == 1 and "edge-z is not the in-sync standby" in result["reason"], result
    assert pair.role(first)["role"] == "primary" and pair.role(first)["accepting_appends"]


def test_switchover_is_refused_when_the_standby_is_not_in_sync(tmp_path: Path) -> None:
    pair = LeasePair(tmp_path, "witness")
    proxies: list[LinkProxy] = []
    try:
        for name, node in pair.nodes.items():
            other = pair.other(name)
            proxy = LinkProxy(int(pair.nodes[other].settings["listen"].rsplit(":", 1)[1]))
            proxies.append(proxy)
            node.settings["peer"] = f"127.0.0.1:{proxy.port}"
            node.write_config()
        first, second = settled(pair)
        for proxy in proxies:
            proxy.cut()
        wait_for(lambda: pair.role(first).get("sync_mark") is None, "the primary to clear the mark", 15,
                 detail=pair.diagnosis)
        pair.nodes[first].call("journal.append", {"payloads": ["alone"]})
        code, result = switchover(pair, first)
        assert code == 1 and "no standby is in sync" in result["reason"], result
        assert pair.role(first)["role"] == "primary" and pair.role(first)["accepting_appends"]
        assert pair.role(second)["role"] == "standby"
    finally:
        for proxy in proxies:
            proxy.close()
        pair.close()


@pytest.mark.parametrize("backend", ["witness", "etcd"])
def test_paused_pair_does_not_promote_after_kill9_until_resumed(tmp_path: Path, backend: str) -> None:
    pair = LeasePair(tmp_path, backend)
    try:
        first, second = settled(pair)
        paused = cli("pause", "--for", "2h", "--socket", str(pair.nodes[first].socket))
        assert paused.returncode == 0 and paused.stdout.startswith("paused:"), paused.stdout + paused.stderr
        # Shown on both nodes (the standby reads it from the store).
        wait_for(lambda: (pair.role(second).get("paused") or {}).get("for_s", 0) > 7000, "the standby to see it", 5)
        assert pair.role(first)["paused"]["for_s"] > 7000
        shown = cli("role", "--socket", str(pair.nodes[second].socket))
        assert "PAUSED (maintenance" in shown.stdout, shown.stdout
        status = cli("status", "--socket", str(pair.nodes[first].socket))
        assert "PAUSED (maintenance" in status.stdout and "no automatic promotion" in status.stdout, status.stdout
        # A switchover waits for the end of maintenance too.
        code, result = switchover(pair, first)
        assert code == 1 and "paused" in result["reason"], result
        pair.nodes[first].kill9()
        time.sleep(4.0)  # four ttls: without the pause the standby would be primary in ~1.2 s
        info = pair.role(second)
        assert info["role"] in ("standby", "waiting") and "paused" in info["reason"], info
        resumed = cli("resume", "--socket", str(pair.nodes[second].socket))
        assert resumed.returncode == 0 and resumed.stdout.startswith("resumed:"), resumed.stdout + resumed.stderr
        assert pair.wait_primary(10, among=(second,)) == second
        assert pair.role(second)["paused"] is None
    finally:
        pair.close()


def test_a_pause_expires_by_itself(pair: LeasePair) -> None:
    first, second = settled(pair)
    result = pair.nodes[second].call("standby.pause", {"seconds": 3})
    assert result["ok"], result
    pair.nodes[first].kill9()
    time.sleep(2.0)
    assert pair.role(second)["role"] != "primary"
    assert pair.wait_primary(10, among=(second,)) == second
    assert pair.role(second)["paused"] is None


def test_pause_refuses_a_bad_duration(pair: LeasePair) -> None:
    first, _ = settled(pair)
    shown = cli("pause", "--for", "25h", "--socket", str(pair.nodes[first].socket))
    assert shown.returncode == 2 and "at most 24h" in shown.stderr
    from daemon.core.control_client import ControlError

    with pytest.raises(ControlError) as refused:
        pair.nodes[first].call("standby.pause", {"seconds": 90000})
    assert refused.value.code == "bad_request"
