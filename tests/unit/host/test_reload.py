"""What a reload may change (daemon/reload.py): old and new config as dicts, a plan out."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from daemon.config import dump_toml, parse_config, to_dict
from daemon.reload import UPLINK_LIVE_KEYS, flatten, plan

BASE = """
[node]
name = "edge-a"
state_dir = "/var/lib/lifeline"
[log]
level = "info"
[uplinks.fibre]
interface = "lo"
source = "127.0.0.1"
gateway = "127.0.0.1"
targets = ["udp://127.0.0.1:9"]
down_after = 3
[standby]
role = "primary"
key_file = "/etc/lifeline/replication.key"
listen = "127.0.0.1:7000"
"""


def config() -> dict[str, Any]:
    return to_dict(parse_config(BASE))


def test_unchanged_config_applies_nothing() -> None:
    result = plan(config(), config())
    assert result.ok and result.apply == {} and "nothing changed" in result.line()


def test_log_level_and_thresholds_apply() -> None:
    new = config()
    new["log"]["level"] = "debug"
    new["uplinks"]["fibre"]["down_after"] = 5
    new["uplinks"]["fibre"]["degraded_loss"] = 0.3
    result = plan(config(), new)
    assert result.ok
    assert result.apply == {"log.level": "debug", "uplinks.fibre.down_after": 5, "uplinks.fibre.degraded_loss": 0.3}
    assert result.line() == "applied log.level=debug, uplinks.fibre.degraded_loss=0.3, uplinks.fibre.down_after=5"
    # The config round-trips through the parser: the plan's dicts are what the daemon compares.
    assert to_dict(parse_config(dump_toml(new)))["uplinks"]["fibre"]["down_after"] == 5


def test_identity_journal_and_store_are_refused_naming_the_key() -> None:
    for key_path, value, why in ((("node", "name"), "edge-z", "identity"),
                                 (("node", "state_dir"), "/srv/lifeline", "journal's location"),
                                 (("standby", "listen"), "127.0.0.1:7001", "replication link")):
        new = config()
        new[key_path[0]][key_path[1]] = value
        result = plan(config(), new)
        assert not result.ok and result.apply == {}
        assert result.refused[0][0] == ".".join(key_path) and why in result.refused[0][1]
        assert f"{'.'.join(key_path)} cannot change without a restart" in result.line()
    new = config()
    new["standby"]["lease"] = {"backend": "witness", "witness": "10.0.0.9:7400"}
    refused = dict(plan(config(), new).refused)
    assert "standby.lease.witness" in refused and "release the lease" in refused["standby.lease.witness"]


def test_one_refused_key_refuses_the_whole_reload() -> None:
    new = config()
    new["log"]["level"] = "debug"
    new["node"]["name"] = "edge-z"
    result = plan(config(), new)
    assert not result.ok and [k for k, _ in result.refused] == ["node.name"]


def test_a_new_uplink_or_new_targets_are_refused() -> None:
    new = config()
    new["uplinks"]["starlink"] = copy.deepcopy(new["uplinks"]["fibre"])
    assert not plan(config(), new).ok
    new = config()
    new["uplinks"]["fibre"]["targets"] = ["udp://127.0.0.2:9"]
    assert [k for k, _ in plan(config(), new).refused] == ["uplinks.fibre.targets"]


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1], "e": {}}


@given(key=st.sampled_from(sorted(UPLINK_LIVE_KEYS)), value=st.integers(min_value=1, max_value=9))
def test_every_live_uplink_key_applies(key: str, value: int) -> None:
    new = config()
    new["uplinks"]["fibre"][key] = value
    result = plan(config(), new)
    assert result.ok and (result.apply == {f"uplinks.fibre.{key}": value} or
                          config()["uplinks"]["fibre"].get(key) == value)
