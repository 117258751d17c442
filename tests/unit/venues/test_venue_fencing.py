"""Venue-side fencing, sans-IO (daemon/venues/fencing.py): the arm rule exhaustively, the
survival bound and the config checks built on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import ConfigError, dump_toml, load_config, parse_config
from daemon.venues.config import VenueConfig, fencing_lines, fencing_problems
from daemon.venues.fencing import NS, LeaseBound, arm_decision, orphan_survival
from daemon.venues.orders import check_payload

REPO = Path(__file__).resolve().parents[3]
times = st.integers(min_value=0, max_value=10**15)
bounds = st.integers(min_value=0, max_value=60 * NS)


# --------------------------------------------------------------------------- the arm rule

@given(now=times, until=st.one_of(st.none(), times), bound=bounds)
def test_an_arm_is_sent_only_when_it_lands_before_valid_until(now: int, until: int | None, bound: int) -> None:
    decision = arm_decision(now, until, bound, lease=True)
    if decision.send:
        assert until is not None and now + bound < until  # the arm reaches the venue before the deadline
        assert decision.retry_in == 0
    else:
        assert until is None or until - now <= bound
        assert decision.retry_in > 0 and decision.reason


@given(now=times, until=st.one_of(st.none(), times), bound=bounds)
def test_without_a_lease_there_is_no_deadline(now: int, until: int | None, bound: int) -> None:
    assert arm_decision(now, until, bound, lease=False).send


def test_the_boundaries_exactly() -> None:
    b = 600_000_000
    assert arm_decision(0, b + 1, b, lease=True).send
    held = arm_decision(0, b, b, lease=True)  # valid exactly as long as the flight: no
    assert not held.send and "not more than the arm's bound" in held.reason and held.retry_in == 0.05
    past = arm_decision(10, 10, b, lease=True)
    assert not past.send and "valid_until passed" in past.reason and past.retry_in == math.inf
    gone = arm_decision(10, None, b, lease=True)
    assert not gone.send and "not primary" in gone.reason
    assert arm_decision(0, 1, 0, lease=True).send  # a zero bound: any time before the deadline
    with pytest.raises(ValueError):
        arm_decision(0, 1, -1, lease=True)


@given(renewed=st.integers(0, 10**12), slack=st.integers(1, 5 * NS), bound=bounds,
       asks=st.lists(st.integers(0, 20 * NS), max_size=50))
def test_a_primary_that_stops_renewing_sends_nothing_from_valid_until_minus_the_bound(
        renewed: int, slack: int, bound: int, asks: list[int]) -> None:
    """The last renewal at ``renewed`` sets valid_until = renewed + slack; asked at any later
    times, the rule sends only before valid_until - bound, so every arm lands before valid_until."""
    until = renewed + slack
    for offset in sorted(asks):
        now = renewed + offset
        if arm_decision(now, until, bound, lease=True).send:
            assert now < until - bound


# --------------------------------------------------------------------------- the survival bound

def test_survival_with_a_lease_counts_from_the_last_renewal() -> None:
    lease = LeaseBound(ttl=1.5, safety_margin=0.3, max_clock_rate_error=0.01)
    s = orphan_survival(deadman=True, deadman_timeout=60, arm_bound=0.6, lease=lease)
    assert s.seconds == pytest.approx((1.2 + 60) * 1.01)
    assert s.formula == ("(ttl 1.5 s - safety_margin 0.3 s + deadman_timeout 60 s) x (1 + 0.01) = 61.812 s "
                         "after its last successful renewal")
    # venues count whole seconds: a fractional timeout counts as the next second
    assert orphan_survival(deadman=True, deadman_timeout=59.2, arm_bound=0.6, lease=lease).seconds == s.seconds


def test_survival_without_a_lease_adds_the_arms_flight() -> None:
    s = orphan_survival(deadman=True, deadman_timeout=10, arm_bound=0.5, lease=None, max_clock_rate_error=0.0)
    assert s.seconds == 10.5 and "after it stops (no lease)" in s.formula
    off = orphan_survival(deadman=False, deadman_timeout=10, arm_bound=0.5, lease=None)
    assert off.seconds is None and "reconciliation" in off.formula


def test_fencing_problems_refuse_a_long_timeout_and_an_arm_bound_that_never_fits() -> None:
    lease = LeaseBound(ttl=1.5, safety_margin=0.3, max_clock_rate_error=0.01)
    ok = VenueConfig(exchange="kraken", deadman_timeout=60)  # type: ignore[arg-type]
    assert fencing_problems({"kraken": ok}, lease) == []
    long = VenueConfig(exchange="kraken", deadman_timeout=120)  # type: ignore[arg-type]
    [(field, message)] = fencing_problems({"kraken": long}, lease)
    assert field == "venues.kraken.deadman_timeout"
    assert "could live 122.4 s at the venue" in message and "max_orphan_survival (90s)" in message
    assert "lower deadman_timeout to at most 87s, or raise max_orphan_survival" in message
    # the fix it names is accepted
    fixed = VenueConfig(exchange="kraken", deadman_timeout=87)  # type: ignore[arg-type]
    assert fencing_problems({"kraken": fixed}, lease) == []
    assert fencing_problems({"kraken": VenueConfig(exchange="kraken", deadman_timeout=88)},  # type: ignore[arg-type]
                            lease) != []
    off = VenueConfig(exchange="kraken", deadman=False, deadman_timeout=3600)  # type: ignore[arg-type]
    assert fencing_problems({"kraken": off}, lease) == []
    slow = VenueConfig(exchange="kraken", deadman_arm_timeout=1.2)  # type: ignore[arg-type]
    [(field, message)] = fencing_problems({"kraken": slow}, lease)
    assert field == "venues.kraken.deadman_arm_timeout" and "no arm can ever be sent" in message


def _venue_config(tmp_path: Path, **venue: object) -> str:
    return dump_toml({
        "node": {"name": "edge-a", "state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
        "standby": {"peer": "10.0.0.2:7400", "key_file": "k", "listen": "127.0.0.1:7400",
                    "lease": {"backend": "witness", "witness": "10.0.0.3:7500", "cluster": "c"}},
        "venues": {"kraken": {"exchange": "kraken", **venue}},
    })


def test_the_config_load_refuses_it_with_file_field_and_fix(tmp_path: Path) -> None:
    parse_config(_venue_config(tmp_path, deadman_timeout="60s"))
    with pytest.raises(ConfigError) as caught:
        parse_config(_venue_config(tmp_path, deadman_timeout="5m"), source="/etc/lifeline/lifeline.toml")
    [problem] = caught.value.problems
    assert problem.startswith("/etc/lifeline/lifeline.toml: venues.kraken.deadman_timeout: a deposed primary's "
                              "orders could live 304.2 s")
    assert "lower deadman_timeout to at most 87s, or raise max_orphan_survival" in problem
    parse_config(_venue_config(tmp_path, deadman_timeout="5m", max_orphan_survival="6m"))


def test_the_example_config_still_loads() -> None:
    config = load_config(REPO / "examples" / "lifeline.toml")
    assert config.venues["kraken"].max_orphan_survival == 90.0


# --------------------------------------------------------------------------- the epoch on order records

def _order(**fields: object) -> bytes:
    record = {"record": "order", "v": 1, "client_order_id": "e1-1", "venue": "kraken", "symbol": "BTC/USDT",
              "side": "buy", "amount": "0.5", "price": "43000.1", "state": "new", **fields}
    return json.dumps(record).encode()


def test_a_new_order_of_another_epoch_is_refused_naming_field_figure_and_fix() -> None:
    problem = check_payload(_order(epoch=6), venues=["kraken"], epoch=7)
    assert problem == ("epoch: a new order placed under lease epoch 6, but this primary holds epoch 7: the engine "
                       "follows a stale role; do not send it, read role.watch again and write the epoch it names")
    assert check_payload(_order(epoch=8), venues=["kraken"], epoch=7) is not None  # not a later one either
    assert check_payload(_order(epoch=7), venues=["kraken"], epoch=7) is None


@given(record_epoch=st.one_of(st.none(), st.integers(0, 50)), current=st.integers(0, 50),
       state=st.sampled_from(["new", "open", "partially_filled", "filled", "cancelled", "rejected", "expired"]))
def test_only_new_orders_with_a_known_other_epoch_are_refused(record_epoch: int | None, current: int,
                                                              state: str) -> None:
    fields: dict[str, object] = {"state": state}
    if state != "new":
        fields["venue_order_id"] = "O-1"
    if record_epoch is not None:
        fields["epoch"] = record_epoch
    problem = check_payload(_order(**fields), venues=["kraken"], epoch=current)
    refused = state == "new" and record_epoch is not None and record_epoch != current
    assert (problem is not None) == refused, problem
    # without a current epoch (a caller that does not know it) nothing is refused for it
    assert check_payload(_order(**fields), venues=["kraken"]) is None


def test_config_check_lines_say_where_there_is_no_bound() -> None:
    lease = LeaseBound(ttl=1.5, safety_margin=0.3, max_clock_rate_error=0.01)
    creds = Path("/etc/lifeline/venues/x.toml")
    lines = fencing_lines({
        "kraken": VenueConfig(exchange="kraken", credentials=creds),  # type: ignore[arg-type]
        "coinbase": VenueConfig(exchange="coinbase", credentials=creds),
        "probe_only": VenueConfig(exchange="kraken"),
        "off": VenueConfig(exchange="kraken", credentials=creds, deadman=False),
    }, lease)
    assert lines[0].startswith("kraken: at most 61.8 s (max_orphan_survival 90s): (ttl 1.5 s")
    assert lines[1] == ("coinbase: no bound: coinbase has no dead-man switch (ccxt: no cancelAllOrdersAfter); nothing "
                        "ends them but reconciliation on the new primary")
    assert lines[2].startswith("probe_only: no bound: no credentials")
    assert lines[3] == "off: no bound: deadman = false: nothing ends them but reconciliation on the new primary"
