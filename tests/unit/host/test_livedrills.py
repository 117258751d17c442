"""Live drills, the sans-IO part (daemon/livedrills.py): the config switch, trading
hours in the exchange's time zone, the pair's health, the nftables table."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from types import SimpleNamespace
from typing import Any

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


# --------------------------------------------------------------------------- the daemon side, nft faked


class FakeUplinks:
    """uplink.status details: the fibre goes DOWN 0.6 s into the cut and the route moves
    0.1 s later (unless ``stuck``); back UP and active 3 s after the table goes."""

    def __init__(self, state: dict[str, Any], stuck: bool = False) -> None:
        self.state = state
        self.stuck = stuck

    def details(self) -> dict[str, Any]:
        import trio

        now = trio.current_time()
        cut, gone = self.state.get("cut_at"), self.state.get("gone_at")
        fibre, active = "up", "fibre"
        if cut is not None and not self.stuck and (gone is None or now < gone + 3):
            fibre = "down" if now >= cut + 0.6 else "up"
            active = "starlink" if now >= cut + 0.7 else "fibre"
        return {"active": active, "pinned": None,
                "uplinks": {"fibre": {"state": fibre, "priority": 10}, "starlink": {"state": "up", "priority": 20}}}


def fake_daemon(tmp_path: Any, state: dict[str, Any], stuck: bool = False) -> Any:
    from daemon.config import parse_config

    config = parse_config(f'''
[node]
name = "edge"
state_dir = "{tmp_path}"
[uplinks.fibre]
interface = "fib0"
source = "10.98.1.2"
gateway = "10.98.1.1"
targets = ["udp://10.98.9.1:7007"]
[uplinks.starlink]
interface = "sl0"
source = "10.98.2.2"
gateway = "10.98.2.1"
kind = "starlink"
priority = 20
targets = ["udp://10.98.9.1:7007"]
[drills]
live = true
timezone = "UTC"
trading_hours = "00:00-00:01"
max_duration = "8s"
''')
    return SimpleNamespace(config=config, uplinks=FakeUplinks(state, stuck), venues=None, standby=None)


def fake_nft(monkeypatch: Any, state: dict[str, Any]) -> list[str]:
    import trio

    from daemon import livedrills_run

    calls: list[str] = []

    async def nft(script: str | None, *args: str) -> Any:
        await trio.sleep(0)
        calls.append(script.splitlines()[0] if script else " ".join(args))
        if script is not None:
            state["cut_at"] = trio.current_time()
            state["table"] = True
        elif args[0] == "delete":
            state["table"] = False
            state["gone_at"] = trio.current_time()
        return SimpleNamespace(returncode=0 if (args[:1] != ("list",) or state.get("table")) else 1,
                               stderr=b"", stdout=b"")

    monkeypatch.setattr(livedrills_run, "nft", nft)
    monkeypatch.setattr(livedrills_run, "_audit", lambda *a, **k: trio.sleep(0))
    return calls


def test_the_uplink_drill_cuts_for_its_seconds_and_measures_under_a_mock_clock(tmp_path: Any,
                                                                               monkeypatch: Any) -> None:
    import trio
    import trio.testing

    from daemon import livedrills_run

    state: dict[str, Any] = {}
    calls = fake_nft(monkeypatch, state)
    out: dict[str, Any] = {}

    async def main() -> None:
        out.update(await livedrills_run.live_uplink(fake_daemon(tmp_path, state), force=False, seconds=60))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert out["seconds"] == 8.0  # 60 asked, max_duration caps it
    assert out["ok"], out["checks"]
    assert out["fibre_down_s"] == pytest.approx(0.6, abs=0.03) and out["route_on_backup_s"] == pytest.approx(0.7, abs=0.03)
    assert out["failback_s"] == pytest.approx(3.0, abs=0.03) and out["table_left"] is False
    assert state["gone_at"] - state["cut_at"] == pytest.approx(8.0, abs=0.03)
    assert calls[1] == "table inet lifeline_drill {" and "delete table inet lifeline_drill" in calls


def test_the_table_goes_even_when_the_drill_is_cancelled_mid_cut(tmp_path: Any, monkeypatch: Any) -> None:
    import trio
    import trio.testing

    from daemon import livedrills_run

    state: dict[str, Any] = {}
    fake_nft(monkeypatch, state)

    async def main() -> None:
        with trio.move_on_after(2):  # the daemon stops (SIGTERM) two seconds into the cut
            await livedrills_run.live_uplink(fake_daemon(tmp_path, state, stuck=True), force=False, seconds=5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert state["table"] is False and state["gone_at"] - state["cut_at"] == pytest.approx(2.0, abs=0.03)


def test_a_failover_that_never_happens_fails_the_drill_at_its_deadline(tmp_path: Any, monkeypatch: Any) -> None:
    import trio
    import trio.testing

    from daemon import livedrills_run

    state: dict[str, Any] = {}
    fake_nft(monkeypatch, state)
    out: dict[str, Any] = {}

    async def main() -> None:
        out.update(await livedrills_run.live_uplink(fake_daemon(tmp_path, state, stuck=True), force=False, seconds=3))
        out["ended"] = trio.current_time()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not out["ok"] and state["table"] is False
    failed = {c["name"] for c in out["checks"] if not c["ok"]}
    assert failed == {"fibre went DOWN", "the route moved to starlink"}, out["checks"]


class FakeVenues:
    def __init__(self, reachable: dict[str, bool]) -> None:
        self.reachable = reachable

    def details(self) -> dict[str, Any]:
        return {"venues": {name: {"paths": [{"uplink": "fibre", "state": "down"},
                                            {"uplink": "starlink", "state": "up" if ok else "down",
                                             "latency_ms": 40.0}]}
                           for name, ok in self.reachable.items()}}


def test_every_venue_must_be_reachable_through_the_backup(tmp_path: Any, monkeypatch: Any) -> None:
    import trio
    import trio.testing

    from daemon import livedrills_run

    state: dict[str, Any] = {}
    fake_nft(monkeypatch, state)
    out: dict[str, Any] = {}

    async def main() -> None:
        daemon = fake_daemon(tmp_path, state)
        daemon.venues = FakeVenues({"kraken": True, "coinbase": False})
        out.update(await livedrills_run.live_uplink(daemon, force=False, seconds=2))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not out["ok"]
    (venues,) = [c for c in out["checks"] if c["name"] == "every venue reachable through starlink"]
    assert not venues["ok"] and venues["figure"] == "1/2 (not: coinbase)"
    assert out["venues_via_backup"] == {"kraken": {"at_s": pytest.approx(0.7, abs=0.03), "latency_ms": 40.0}}
