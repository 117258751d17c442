"""Reload on a running primary of a real pair with a real witness: SIGHUP applies a new
probe threshold and log level without touching the lease (same epoch, no RoleChanged);
`lifeline reload` of a config that renames the node is refused naming node.name, and the
daemon keeps its old config."""

from __future__ import annotations

import os
import signal
import tomllib
from pathlib import Path
from typing import Any

from tests.support.pair import LeasePair, Node
from daemon.config import dump_toml
from tests.support.waiting import wait_for
from tests.support.cli import cli

UPLINKS = {
    "fibre": {"interface": "lo", "source": "127.0.0.1", "gateway": "127.0.0.1", "targets": ["udp://127.0.0.1:9"],
              "down_after": 3},
}


def edit(node: Node, change: Any) -> None:
    data = tomllib.loads(node.config.read_text())
    change(data)
    node.config.write_text(dump_toml(data))


def thresholds(node: Node) -> dict[str, Any]:
    return dict(node.call("uplink.status")["uplinks"]["fibre"]["thresholds"])


def test_reload_changes_a_threshold_on_the_primary_without_a_lease_change(tmp_path: Path) -> None:
    pair = LeasePair(tmp_path, "witness")
    try:
        for node in pair.nodes.values():
            node.extra = {"uplinks": UPLINKS, "failover": {"route_backend": "none"}}
            node.write_config()
        pair.start()
        name = pair.wait_primary()
        primary = pair.nodes[name]
        before = pair.role(name)
        assert thresholds(primary)["down_after"] == 3

        edit(primary, lambda d: (d["uplinks"]["fibre"].update(down_after=7), d["log"].update(level="debug")))
        os.kill(primary.pid, signal.SIGHUP)
        wait_for(lambda: thresholds(primary)["down_after"] == 7, "the reload to apply down_after = 7", 10,
                 detail=lambda: primary.log_text()[-3000:])
        reloads = [e for e in primary.events() if e["kind"] == "ConfigReloaded"]
        assert len(reloads) == 1 and reloads[0]["applied"] == ["log.level", "uplinks.fibre.down_after"], reloads
        assert reloads[0]["by"] == "signal SIGHUP" and reloads[0]["refused"] == []
        log = primary.log_text()
        assert "event=config.reload" in log and "outcome=applied" in log
        assert "level=debug" in log.split("event=config.reload", 1)[1], "the new log level is in force"
        after = pair.role(name)
        assert after["role"] == "primary" and after["epoch"] == before["epoch"], (before, after)
        assert after["role_changes"] == before["role_changes"]
        assert not [e for e in primary.events() if e["kind"] == "RoleChanged" and e["wall_time"] >=
                    reloads[0]["wall_time"]]
        assert primary.alive()

        # A config that renames the node: refused, naming the key; nothing applied.
        edit(primary, lambda d: (d["node"].update(name="edge-z"), d["uplinks"]["fibre"].update(down_after=9)))
        out = cli("reload", "--socket", str(primary.socket))
        assert out.returncode == 1, out.stdout + out.stderr
        assert "node.name cannot change without a restart" in out.stdout, out.stdout
        assert thresholds(primary)["down_after"] == 7, "a refused reload applies nothing"
        assert pair.role(name)["node"] == name and pair.role(name)["epoch"] == before["epoch"]
        refused = [e for e in primary.events() if e["kind"] == "ConfigReloaded"][-1]
        assert refused["applied"] == [] and any(r.startswith("node.name:") for r in refused["refused"])
        assert primary.alive()
    finally:
        pair.close()
