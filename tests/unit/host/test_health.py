"""The health answers (/primary, /standby, /health) and `lifeline role --check`, as functions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.standby.cli import role_matches
from daemon.health import PATHS, HealthFacts, answer


def facts(**kw: object) -> HealthFacts:
    base = {"node": "edge-a", "role": "primary", "epoch": 3, "accepting": True, "may_trade": True}
    base.update(kw)
    return HealthFacts(**base)  # type: ignore[arg-type]


def test_primary_200_only_when_accepting_and_before_deadline() -> None:
    code, body = answer("/primary", facts())
    assert code == 200 and json.loads(body) == {"node": "edge-a", "role": "primary", "epoch": 3, "ok": True}
    assert answer("/primary", facts(may_trade=False))[0] == 503
    assert "fence deadline" in json.loads(answer("/primary", facts(may_trade=False))[1])["why"]
    assert answer("/primary", facts(accepting=False))[0] == 503
    assert answer("/primary", facts(role="fenced"))[0] == 503
    assert answer("/primary", facts(role="standby", standby_connected=True))[0] == 503


def test_standby_200_only_when_connected() -> None:
    assert answer("/standby", facts(role="standby", standby_connected=True))[0] == 200
    code, body = answer("/standby", facts(role="standby", standby_connected=False))
    assert code == 503 and json.loads(body)["why"] == "not connected to its primary"
    assert answer("/standby", facts())[0] == 503
    assert answer("/standby", facts(role="waiting"))[0] == 503


def test_health_names_the_services_not_ok() -> None:
    assert answer("/health", facts(role="waiting"))[0] == 200
    code, body = answer("/health", facts(unhealthy={"uplinks": "degraded", "venues": "failing"}))
    assert code == 503 and json.loads(body)["why"] == "services not ok: uplinks degraded, venues failing"


def test_other_paths_are_not_health() -> None:
    with pytest.raises(ValueError):
        answer("/metrics", facts())


@given(role=st.sampled_from(["primary", "standby", "waiting", "fenced", "none"]), accepting=st.booleans(),
       may_trade=st.booleans(), connected=st.booleans())
def test_never_both_primary_and_standby(role: str, accepting: bool, may_trade: bool, connected: bool) -> None:
    f = facts(role=role, accepting=accepting, may_trade=may_trade, standby_connected=connected)
    codes = {p: answer(p, f)[0] for p in PATHS}
    assert not (codes["/primary"] == 200 and codes["/standby"] == 200)
    assert set(codes.values()) <= {200, 503}


def test_role_check() -> None:
    primary = {"role": "primary", "epoch": 4, "accepting_appends": True, "valid_until": 10**12, "valid_for": 2.0}
    assert role_matches(primary, "primary") == (True, "primary at epoch 4")
    assert role_matches(primary, "standby")[0] is False
    assert role_matches({**primary, "valid_until": None}, "primary")[0] is False
    assert role_matches({**primary, "accepting_appends": False}, "primary")[0] is False
    assert role_matches({"role": "primary", "fixed": True, "epoch": 1}, "primary")[0] is True
    assert role_matches({"role": "standby", "epoch": 4}, "standby")[0] is True
    assert role_matches({"role": "waiting", "epoch": 0}, "standby")[0] is False
