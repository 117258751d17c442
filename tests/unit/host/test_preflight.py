"""The pre-market checklist as a function of gathered facts (daemon/preflight.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import preflight as pf
from daemon.preflight import FAIL, PASS, SKIP, WARN, Check, evaluate, exit_code

NOW = datetime(2026, 12, 7, 13, 0, tzinfo=timezone.utc).timestamp()
DAY = 86400.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def healthy() -> dict[str, Any]:
    """A primary on the day everything is right."""
    return {
        "config": {"source": "/etc/lifeline/lifeline.toml", "problems": []},
        "role": {"role": "primary", "epoch": 7, "valid_for": 1.1, "ttl": 1.5, "store": "witness 10.0.0.9:7400",
                 "store_reachable": True, "accepting_appends": True,
                 "lease": {"holder": "edge-a", "epoch": 7, "ttl_remaining": 1.2}},
        "replication": {"state": "in-sync", "peer": {"node": "edge-b"}},
        "playbooks": {"playbooks": [{"name": "venue-down", "version": 3, "expires": iso(NOW + 90 * DAY)}],
                      "refused": {}},
        "uplinks": {"uplinks": {"fibre": {"state": "up", "rtt_ms": 1.2, "loss": 0.0},
                                "starlink": {"state": "up", "rtt_ms": 38.0, "loss": 0.01}}},
        "venues": {"venues": {"binance": {
            "exchange": "binance", "credentials": "configured",
            "paths": [{"uplink": "fibre", "state": "up", "median_ms": 3.1},
                      {"uplink": "starlink", "state": "up", "median_ms": 41.0}],
            "deadman": {"enabled": True, "supported": True, "armed_at": NOW - 5, "error": None, "arms": 4,
                        "timeout_s": 60.0}}}},
        "hardware": {"ups:main": {"reading": {"status": ["OL"], "runtime_s": 1800}, "stale": False},
                     "gnss:roof": {"reading": {"fix": True, "satellites": 11, "offset_ms": 0.3}, "stale": False}},
        "thresholds": {"ups_runtime_s": 300.0, "gnss_offset_s": 0.001},
        "disk": {"path": "/var/lib/lifeline/journal", "free_bytes": 80 * 2**30, "total_bytes": 100 * 2**30},
        "journal_verify": {"ok": True, "figure": "3 segment(s), 9000 record(s)"},
        "audit_verify": {"ok": True, "figure": "12 entries, chain intact"},
        "services": [{"name": "system", "health": "ok", "summary": "cpu 5%", "details": {"overloaded": False}},
                     {"name": "control", "health": "ok", "summary": "listening"}],
    }


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_all_pass_on_a_good_day() -> None:
    checks = evaluate(healthy(), NOW)
    assert {c.result for c in checks} == {PASS}, [c.line() for c in checks if c.result != PASS]
    assert exit_code(checks) == 0
    names = [c.name for c in checks]
    assert names == ["config", "standby in sync", "lease store", "lease", "playbook venue-down", "uplink fibre",
                     "uplink starlink", "venue binance via fibre", "venue binance via starlink",
                     "dead-man switch binance", "ups main", "gnss roof", "journal disk", "journal verify",
                     "audit verify", "host circuit breaker"]
    assert pf.summary(checks).endswith("ready for the open")


def test_starlink_path_to_one_venue_cut_fails_naming_it() -> None:
    facts = healthy()
    facts["venues"]["venues"]["binance"]["paths"][1] = {"uplink": "starlink", "state": "down",
                                                        "error": "timed out after 2s"}
    checks = evaluate(facts, NOW)
    bad = [c for c in checks if c.result != PASS]
    assert [c.name for c in bad] == ["venue binance via starlink"]
    assert bad[0].result == FAIL and "timed out" in bad[0].figure and "starlink" in bad[0].action
    assert exit_code(checks) == 1
    assert "FAILED: venue binance via starlink" in pf.summary(checks)
    assert bad[0].line().startswith("FAIL  venue binance via starlink: down: timed out after 2s -> ")


@pytest.mark.parametrize("expires, result", [(NOW + 8 * DAY, PASS), (NOW + 6 * DAY, WARN), (NOW - DAY, FAIL)])
def test_playbook_expiry(expires: float, result: str) -> None:
    facts = healthy()
    facts["playbooks"]["playbooks"][0]["expires"] = iso(expires)
    assert by_name(evaluate(facts, NOW))["playbook venue-down"].result == result


def test_refused_playbook_fails_and_none_loaded_warns() -> None:
    facts = healthy()
    facts["playbooks"]["refused"] = {"bad.toml": "signature does not verify"}
    c = by_name(evaluate(facts, NOW))["playbook bad.toml"]
    assert c.result == FAIL and "signature" in c.figure
    facts["playbooks"] = {"playbooks": [], "refused": {}}
    assert by_name(evaluate(facts, NOW))["playbooks"].result == WARN


@pytest.mark.parametrize("state, lag, result", [("in-sync", None, PASS), ("catching-up", None, WARN),
                                                ("lost", None, FAIL), ("waiting", None, FAIL)])
def test_primary_sync_state(state: str, lag: Any, result: str) -> None:
    facts = healthy()
    facts["replication"] = {"state": state}
    assert by_name(evaluate(facts, NOW))["standby in sync"].result == result


def test_standby_side() -> None:
    facts = healthy()
    facts["role"] = {"role": "standby", "epoch": 7, "store": "w", "store_reachable": True,
                     "lease": {"holder": "edge-a", "epoch": 7, "ttl_remaining": 1.1}, "valid_for": None}
    facts["replication"] = {"connected": True, "lag_records": 0}
    checks = by_name(evaluate(facts, NOW))
    assert checks["standby in sync"].result == PASS and checks["lease"].result == PASS
    facts["replication"] = {"connected": True, "lag_records": 40}
    assert by_name(evaluate(facts, NOW))["standby in sync"].result == WARN
    facts["replication"] = {"connected": False}
    assert by_name(evaluate(facts, NOW))["standby in sync"].result == FAIL
    facts["role"]["lease"] = {"holder": None}
    assert by_name(evaluate(facts, NOW))["lease"].result == FAIL


def test_lease_margin_and_store() -> None:
    facts = healthy()
    facts["role"]["valid_for"] = 0.4
    assert by_name(evaluate(facts, NOW))["lease"].result == WARN
    facts["role"]["valid_for"] = None
    assert by_name(evaluate(facts, NOW))["lease"].result == FAIL
    facts["role"]["store_reachable"] = False
    facts["role"]["store_error"] = "connection refused"
    c = by_name(evaluate(facts, NOW))["lease store"]
    assert c.result == FAIL and "connection refused" in c.figure
    facts["role"]["blocked"] = "not the synchronous standby"
    assert by_name(evaluate(facts, NOW))["promotable"].result == WARN


def test_fixed_role_and_no_standby() -> None:
    facts = healthy()
    facts["role"] = {"role": "primary", "epoch": 1, "fixed": True}
    checks = by_name(evaluate(facts, NOW))
    assert checks["lease"].result == SKIP and checks["standby in sync"].result == PASS
    facts["role"] = None
    checks = by_name(evaluate(facts, NOW))
    assert checks["standby in sync"].result == SKIP and checks["lease"].result == SKIP
    facts["role"] = {"role": "fenced", "epoch": 3, "reason": "lease lost"}
    assert by_name(evaluate(facts, NOW))["standby in sync"].result == FAIL


@pytest.mark.parametrize("path, result", [({"state": "degraded", "median_ms": 900}, WARN),
                                          ({"state": "unknown"}, FAIL), ({"state": "down", "error": "x"}, FAIL)])
def test_venue_paths(path: dict[str, Any], result: str) -> None:
    facts = healthy()
    facts["venues"]["venues"]["binance"]["paths"][0] = {"uplink": "fibre", **path}
    assert by_name(evaluate(facts, NOW))["venue binance via fibre"].result == result


@pytest.mark.parametrize("deadman, credentials, result", [
    ({"enabled": False}, "configured", SKIP),
    ({"enabled": True, "supported": True}, "none", SKIP),
    ({"enabled": True, "supported": False}, "configured", WARN),
    ({"enabled": True, "supported": True, "error": "403 forbidden"}, "configured", FAIL),
    ({"enabled": True, "supported": True, "armed_at": None}, "configured", PASS),
    ({"enabled": True, "supported": None}, "configured", WARN),
])
def test_deadman(deadman: dict[str, Any], credentials: str, result: str) -> None:
    facts = healthy()
    facts["venues"]["venues"]["binance"].update(deadman=deadman, credentials=credentials)
    assert by_name(evaluate(facts, NOW))["dead-man switch binance"].result == result


@pytest.mark.parametrize("reading, stale, result", [
    ({"status": ["OB"], "runtime_s": 1800}, False, FAIL),
    ({"status": ["OL"], "runtime_s": 120}, False, FAIL),
    ({"status": ["OL"]}, False, WARN),
    ({}, True, FAIL),
    ({"status": ["OL"], "runtime_s": 300}, False, PASS),
])
def test_ups(reading: dict[str, Any], stale: bool, result: str) -> None:
    facts = healthy()
    facts["hardware"]["ups:main"] = {"reading": reading, "stale": stale}
    assert by_name(evaluate(facts, NOW))["ups main"].result == result


@pytest.mark.parametrize("reading, result", [({"fix": False, "offset_ms": 0.1}, FAIL),
                                             ({"fix": True, "offset_ms": 5.0}, FAIL),
                                             ({"fix": True, "offset_ms": -0.9}, PASS)])
def test_gnss(reading: dict[str, Any], result: str) -> None:
    facts = healthy()
    facts["hardware"]["gnss:roof"] = {"reading": reading, "stale": False}
    assert by_name(evaluate(facts, NOW))["gnss roof"].result == result


def test_no_hardware_is_skipped() -> None:
    facts = healthy()
    del facts["hardware"]
    checks = by_name(evaluate(facts, NOW))
    assert checks["ups"].result == SKIP and checks["gnss"].result == SKIP


@pytest.mark.parametrize("free, total, result", [(80, 100, PASS), (8, 100, WARN), (4, 100, FAIL),
                                                 (0.1, 1, FAIL)])
def test_disk(free: float, total: float, result: str) -> None:
    facts = healthy()
    facts["disk"] = {"path": "/j", "free_bytes": int(free * 2**30), "total_bytes": int(total * 2**30)}
    assert by_name(evaluate(facts, NOW))["journal disk"].result == result


def test_verify_and_config_and_breaker() -> None:
    facts = healthy()
    facts["journal_verify"] = {"ok": False, "figure": "CORRUPT: seq 88"}
    facts["audit_verify"] = {"ok": False, "figure": "line 4: bad signature"}
    facts["config"] = {"source": "/etc/x.toml", "problems": ["uplinks.fibre.interface: no such interface"]}
    facts["services"][0]["details"]["overloaded"] = True
    checks = by_name(evaluate(facts, NOW))
    for name in ("journal verify", "audit verify", "config", "host circuit breaker"):
        assert checks[name].result == FAIL, name
    assert "uplinks.fibre.interface" in checks["config"].figure
    facts["services"].append({"name": "metrics", "health": "failing", "summary": "bind failed"})
    assert by_name(evaluate(facts, NOW))["service metrics"].result == FAIL
    facts["journal_verify"] = facts["audit_verify"] = facts["config"] = None
    checks = by_name(evaluate(facts, NOW))
    assert checks["journal verify"].result == SKIP and checks["audit verify"].result == SKIP


def test_uplink_down_fails() -> None:
    facts = healthy()
    facts["uplinks"]["uplinks"]["starlink"] = {"state": "down", "rtt_ms": None, "loss": 1.0, "reason": "3 lost"}
    c = by_name(evaluate(facts, NOW))["uplink starlink"]
    assert c.result == FAIL and "3 lost" in c.figure


@given(st.lists(st.sampled_from([PASS, WARN, FAIL, SKIP]), max_size=20))
def test_exit_code_is_1_exactly_when_something_failed(results: list[str]) -> None:
    checks = [Check(f"c{i}", r, "x", "do y") for i, r in enumerate(results)]
    assert exit_code(checks) == (1 if FAIL in results else 0)
    n = pf.counts(checks)
    assert sum(n.values()) == len(results)
    for c in checks:
        assert c.line().startswith(c.result) and (" -> do y" in c.line()) == (c.result != PASS)


@given(st.dictionaries(st.sampled_from(["role", "replication", "venues", "hardware", "disk", "uplinks",
                                        "playbooks", "services", "config"]), st.none()))
def test_missing_sections_never_crash(facts: dict[str, Any]) -> None:
    evaluate(facts, NOW)


def test_trading_breakers_tripped_fail_recovering_warn_closed_pass() -> None:
    from daemon.guard.breakers import Breakers
    from daemon.guard.breakers_config import BreakersConfig

    b = Breakers(BreakersConfig().specs())
    b.observe_load(1.0, NOW - 200)  # busy and down for a whole window
    b.observe_paths([("kraken", "fibre", "down")], NOW - 700)
    b.tick(NOW)
    b.observe_paths([("kraken", "fibre", "up")], NOW + 1)
    b.observe_load(0.0, NOW + 1)
    b.tick(NOW + 10_000)  # both means are 0 now: recovering
    b.observe_load(1.0, NOW + 10_001)
    b.tick(NOW + 10_100)  # the load's mean (0.825) is above the recover level again: tripped
    facts = healthy()
    facts["services"].append({"name": "breakers", "health": "degraded", "summary": "...",
                              "details": {"breakers": b.snapshot()}})
    checks = by_name(evaluate(facts, NOW))
    assert checks["breaker system_load"].result == FAIL and "TRIPPED" in checks["breaker system_load"].figure
    assert checks["breaker venue_unavailability"].result == WARN
    assert checks["breaker market_volatility"].result == PASS
    assert "service breakers" not in checks
