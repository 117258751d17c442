"""Live drills, the sans-IO part (daemon/livedrills.py): the config switch, trading
hours in the exchange's time zone, the pair's health, the nftables table."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from daemon import livedrills as core
from daemon.config import ConfigError, DrillsConfig, parse_config

UTC = dt.timezone.utc


def settings(**kw: object) -> DrillsConfig:
    return DrillsConfig(**{"live": True, **kw})  # type: ignore[arg-type]


# Monday 7 December 2026: 14:30 UTC is 09:30 in New York (EST, UTC-5).
MON_OPEN = dt.datetime(2026, 12, 7, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize("when,inside", [
    (MON_OPEN - dt.timedelta(seconds=1), False),
    (MON_OPEN, True),
    (dt.datetime(2026, 12, 7, 20, 59, tzinfo=UTC), True),     # 15:59 New York
    (dt.datetime(2026, 12, 7, 21, 0, tzinfo=UTC), False),     # 16:00: closed
    (dt.datetime(2026, 12, 5, 16, 0, tzinfo=UTC), False),     # Saturday 11:00
    (dt.datetime(2026, 7, 6, 13, 30, tzinfo=UTC), True),      # summer: EDT, UTC-4 -> 09:30
    (dt.datetime(2026, 7, 6, 13, 29, tzinfo=UTC), False),
])
def test_trading_hours_are_weekdays_in_the_exchanges_time_zone(when: dt.datetime, inside: bool) -> None:
    assert core.in_trading_hours(when, "09:30-16:00", "America/New_York") is inside


def test_the_gate_refuses_when_off_then_inside_hours_unless_forced() -> None:
    off = core.gate(DrillsConfig(), MON_OPEN, force=True, drill="uplink")
    assert off is not None and "[drills] live = true" in off
    inside = core.gate(settings(), MON_OPEN, force=False, drill="switchover")
    assert inside is not None and "inside trading hours" in inside and "--force" in inside and "Mon 09:30" in inside
    assert core.gate(settings(), MON_OPEN, force=True, drill="switchover") is None
    assert core.gate(settings(), MON_OPEN - dt.timedelta(hours=2), force=False, drill="switchover") is None
    assert core.gate(settings(timezone="Asia/Tokyo"), MON_OPEN, force=False, drill="uplink") is None  # 23:30 there


@pytest.mark.parametrize("text", ["9-16", "16:00-09:30", "24:00-25:00", "", "09:30-09:30"])
def test_bad_trading_hours_are_refused_naming_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM|before|hours"):
        core.parse_hours(text)


def test_the_config_section_is_off_by_default_and_checked() -> None:
    base = '[node]\nname = "a"\n'
    assert parse_config(base).drills.live is False
    with pytest.raises(ConfigError) as err:
        parse_config(base + '[drills]\nlive = true\ntrading_hours = "16:00-09:30"\ntimezone = "Mars/Base"\n')
    text = str(err.value)
    assert "drills.trading_hours" in text and "drills.timezone" in text


def test_seconds_are_capped_by_max_duration() -> None:
    assert core.clamp_seconds(5, 60) == 5.0
    assert core.clamp_seconds(500, 60) == 60.0
    assert core.clamp_seconds(None, 60) == 10.0
    for bad in (0, -1, True, "5"):
        with pytest.raises(ValueError):
            core.clamp_seconds(bad, 60)


HEALTHY_ROLE = {"role": "primary", "accepting_appends": True, "store_reachable": True, "paused": None,
                "sync_mark": "b"}
HEALTHY_REP = {"role": "primary", "peer": {"node": "b"}, "lag_records": 0}


@pytest.mark.parametrize("change,reason", [
    ({"role": "standby"}, "not primary"),
    ({"fixed": True}, "fixed role"),
    ({"accepting_appends": False}, "not accepting"),
    ({"store_reachable": False}, "store is unreachable"),
    ({"paused": {"for_s": 60, "by": "x"}}, "paused"),
    ({"sync_mark": None}, "not in sync"),
])
def test_a_live_switchover_needs_a_healthy_pair(change: dict[str, object], reason: str) -> None:
    assert core.switchover_refusal(HEALTHY_ROLE, HEALTHY_REP) is None
    refusal = core.switchover_refusal({**HEALTHY_ROLE, **change}, HEALTHY_REP)
    assert refusal is not None and reason in refusal
    assert core.switchover_refusal(HEALTHY_ROLE, {**HEALTHY_REP, "lag_records": 10}) is None  # a batch in flight
    assert "connected" in str(core.switchover_refusal(HEALTHY_ROLE, {**HEALTHY_REP, "peer": None}))


def uplinks(fibre: str = "up", star: str = "up", active: str = "fibre", pinned: object = None) -> dict[str, object]:
    return {"active": active, "pinned": pinned,
            "uplinks": {"fibre": {"state": fibre, "priority": 10}, "starlink": {"state": star, "priority": 20}}}


def test_the_uplink_drill_plans_fibre_and_backup_or_says_why_not() -> None:
    assert core.uplink_plan(uplinks()) == ("fibre", "starlink")
    assert "two uplinks" in str(core.uplink_plan({"uplinks": {"fibre": {"state": "up"}}}))
    assert "no backup" in str(core.uplink_plan(uplinks(star="down")))
    assert "not fibre" in str(core.uplink_plan(uplinks(active="starlink")))
    assert "pinned" in str(core.uplink_plan(uplinks(pinned="starlink")))
    assert "not up" in str(core.uplink_plan(uplinks(fibre="degraded")))


def test_probe_hosts_and_the_ruleset() -> None:
    hosts = core.probe_hosts(["udp://10.0.0.1:7", "icmp://10.0.0.2", "http://[2001:db8::1]:80/x",
                              "tcp://10.0.0.1:443", "https://example.com/x"])
    assert hosts == ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    script = core.nft_ruleset("eth1", hosts, "192.0.2.2")
    assert "table inet lifeline_drill" in script and 'oifname "eth1" counter drop' in script
    assert 'iifname "eth1" counter drop' in script
    # Only what the fibre sends: the backup probes the same targets from its own source.
    assert "ip saddr 192.0.2.2 ip daddr { 10.0.0.1, 10.0.0.2 } counter drop" in script
    assert "daddr { 10.0.0.1" not in script.replace("ip saddr 192.0.2.2 ip daddr { 10.0.0.1", "")
    assert "2001:db8::1" not in script  # an IPv4 uplink's IPv6 targets are not its own
    shared = core.nft_ruleset(None, hosts, "192.0.2.2")  # the device is shared with the backup: spare it
    assert "oifname" not in shared and "iifname" not in shared and "ip saddr 192.0.2.2 counter drop" in shared
    with pytest.raises(ValueError):
        core.nft_ruleset('eth1"; flush ruleset', hosts, "192.0.2.2")


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_the_ruleset_parses_in_nft() -> None:
    script = core.nft_ruleset("eth1", ["10.0.0.1", "2001:db8::1"], "192.0.2.2") + \
        core.nft_ruleset(None, ["2001:db8::1"], "2001:db8::2").replace("table inet lifeline_drill", "table inet x")
    done = subprocess.run(["nft", "-c", "-f", "-"], input=script.encode(), capture_output=True, check=False)
    if done.returncode != 0 and b"Operation not permitted" in done.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert done.returncode == 0, done.stderr.decode()


def test_the_drill_record_is_not_an_order_record() -> None:
    from daemon.venues.orders import parse_journal_record

    payload = core.drill_record("switchover", "before", "r1", "a")
    assert json.loads(payload)["record"] == "drill"
    assert parse_journal_record(payload) is None
    assert payload.startswith(b'{"drill":"switchover"')
