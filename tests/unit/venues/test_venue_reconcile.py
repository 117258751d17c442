"""Reconciliation decisions and the report, with orders from the recorded ccxt fixtures.

The venue orders are ccxt's own parse of Kraken's recorded ``fetchOpenOrders`` answers
(``parsedResponse`` in lab/data/ccxt_static/kraken.response.json, ccxt/ccxt's static
test data, MIT), read at test time, never copied into the repo.
"""

from __future__ import annotations

import copy
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.venues.orders import CLIENT_ORDER_ID, OpenOrders, OrderRecord, OrderRecordError, parse_order_record
from daemon.venues.reconcile import (
    POLICIES,
    Decision,
    ReconciliationReport,
    VenueOrder,
    adoption_record,
    reconcile,
    sanitize_client_order_id,
)

FIXTURES = Path(__file__).resolve().parents[3] / "lab" / "data" / "ccxt_static"


def _recorded(exchange: str, method: str) -> list[dict[str, Any]]:
    path = FIXTURES / f"{exchange}.response.json"
    cases = json.loads(path.read_text())["methods"].get(method, [])
    return [order for case in cases for order in case["parsedResponse"]]


@pytest.fixture(scope="module")
def kraken_raw() -> list[dict[str, Any]]:
    """Kraken's three recorded open orders, as ccxt parsed them: a take-profit market sell
    of 0.1 LTC/USDT (OXCZ7B-EMVZQ-MTJTQJ), a stop-loss-limit sell of 0.1 LTC/USDT @ 54
    (OIIQBL-6PV3A-7M2AJJ) and a trailing-stop buy of 10 XRP/USD (OF7S76-H2IMS-N2ML4U)."""
    orders = _recorded("kraken", "fetchOpenOrders")
    assert len(orders) == 3
    return orders


@pytest.fixture(scope="module")
def kraken(kraken_raw: list[dict[str, Any]]) -> dict[str, VenueOrder]:
    return {o["id"]: VenueOrder.from_ccxt(o) for o in kraken_raw}


TP, SL, TS = "OXCZ7B-EMVZQ-MTJTQJ", "OIIQBL-6PV3A-7M2AJJ", "OF7S76-H2IMS-N2ML4U"


def journal(coid: str, *, venue: str = "kraken", symbol: str = "LTC/USDT", side: str = "sell", amount: str = "0.1",
            price: str | None = None, state: str = "open", venue_order_id: str | None = None,
            **extra: Any) -> OrderRecord:
    return OrderRecord(coid, venue, symbol, side, Decimal(amount), None if price is None else Decimal(price), state,
                       venue_order_id=venue_order_id, **extra)


def by_kind(decisions: list[Decision]) -> dict[str, list[Decision]]:
    out: dict[str, list[Decision]] = {}
    for d in decisions:
        out.setdefault(d.kind, []).append(d)
    return out


# --------------------------------------------------------------------------- VenueOrder.from_ccxt


def test_from_ccxt_reads_the_recorded_kraken_orders(kraken: dict[str, VenueOrder]) -> None:
    assert kraken[TP] == VenueOrder(id=TP, client_order_id=None, symbol="LTC/USDT", side="sell",
                                    amount=Decimal("0.1"), price=None, status="open", type="market",
                                    filled=Decimal(0))
    assert kraken[SL] == VenueOrder(id=SL, client_order_id=None, symbol="LTC/USDT", side="sell",
                                    amount=Decimal("0.1"), price=Decimal(54), status="open", type="limit",
                                    filled=Decimal(0))
    assert kraken[TS] == VenueOrder(id=TS, client_order_id=None, symbol="XRP/USD", side="buy",
                                    amount=Decimal(10), price=None, status="open", type="trailing-stop",
                                    filled=Decimal(0))


def test_kraken_client_order_id_zero_means_none(kraken_raw: list[dict[str, Any]]) -> None:
    assert all(o["clientOrderId"] == "0" for o in kraken_raw)  # Kraken's userref 0: no reference
    assert all(VenueOrder.from_ccxt(o).client_order_id is None for o in kraken_raw)
    with_ref = {**kraken_raw[0], "clientOrderId": "mm-7"}
    assert VenueOrder.from_ccxt(with_ref).client_order_id == "mm-7"
    assert VenueOrder.from_ccxt({**kraken_raw[0], "clientOrderId": 12345}).client_order_id == "12345"


def test_from_ccxt_reads_a_recorded_coinbase_order() -> None:
    order = VenueOrder.from_ccxt(_recorded("coinbase", "fetchClosedOrders")[0])
    assert order.id == "01b6e467-b659-432f-9490-c7cefe949564"
    assert order.client_order_id == "a0f970a2-05fa-4e1f-9517-f6702c33cfd1"
    assert (order.symbol, order.side, order.amount, order.price) == ("ADA/USDT", "sell", Decimal(10),
                                                                     Decimal("0.392"))


def test_from_ccxt_unknowns_and_errors(kraken_raw: list[dict[str, Any]]) -> None:
    base = kraken_raw[1]
    odd = VenueOrder.from_ccxt({**base, "side": "SELL", "amount": None, "price": 0, "status": None,
                                "filled": float("nan")})
    assert (odd.side, odd.amount, odd.price, odd.status, odd.filled) == ("sell", None, None, None, None)
    weird = VenueOrder.from_ccxt({**base, "side": "both", "amount": "abc", "price": float("inf"), "type": None})
    assert (weird.side, weird.amount, weird.price, weird.type) == (None, None, None, None)
    assert VenueOrder.from_ccxt({**base, "amount": "0.25", "price": -1}).amount == Decimal("0.25")
    with pytest.raises(ValueError, match=r"^id: the venue order has no id"):
        VenueOrder.from_ccxt({**base, "id": None})
    with pytest.raises(ValueError, match=r"^id:"):
        VenueOrder.from_ccxt({k: v for k, v in base.items() if k != "id"})
    with pytest.raises(ValueError, match=r"^symbol: venue order OIIQBL-6PV3A-7M2AJJ has no symbol"):
        VenueOrder.from_ccxt({**base, "symbol": ""})
    with pytest.raises(TypeError, match=r"^order: expected a ccxt order structure"):
        VenueOrder.from_ccxt([base])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- matching


def test_recorded_orders_one_known_two_orphans(kraken: dict[str, VenueOrder]) -> None:
    """The engine journaled the stop-loss-limit; the other two are nobody's."""
    known = journal("mm-sl-1", price="54", venue_order_id=SL, type="limit")
    decisions = reconcile("kraken", "cancel-orphans", [known], list(kraken.values()))
    assert [(d.kind, d.action, d.venue_order_id) for d in decisions] == [
        ("orphan", "cancel", TP), ("orphan", "cancel", TS), ("matched", "keep", SL)]
    matched = decisions[-1]
    assert matched.client_order_id == "mm-sl-1"
    assert matched.reason == "matched by venue order id; the journal has it open"
    assert (matched.symbol, matched.side, matched.amount, matched.price) == ("LTC/USDT", "sell", Decimal("0.1"),
                                                                             Decimal(54))
    assert decisions[0].reason == ("no journal-open order has venue order id OXCZ7B-EMVZQ-MTJTQJ; "
                                   "policy cancel-orphans: cancel it")
    assert all(d.venue == "kraken" for d in decisions)


def test_matching_by_client_order_id(kraken_raw: list[dict[str, Any]]) -> None:
    order = VenueOrder.from_ccxt({**kraken_raw[1], "clientOrderId": "mm-sl-1"})
    # The engine crashed before it journaled the venue's id: the client id still matches.
    record = journal("mm-sl-1", price="54", state="new")
    [decision] = reconcile("kraken", "cancel-orphans", [record], [order])
    assert (decision.kind, decision.action) == ("matched", "keep")
    assert decision.reason == "matched by client order id; the journal has it new"
    assert decision.venue_order_id == SL and decision.client_order_id == "mm-sl-1"


def test_matching_a_coinbase_order_by_its_client_uuid() -> None:
    raw = copy.deepcopy(_recorded("coinbase", "fetchClosedOrders")[0])
    raw["status"] = "open"
    order = VenueOrder.from_ccxt(raw)
    record = journal(order.client_order_id or "", venue="coinbase", symbol="ADA/USDT", amount="10", price="0.392")
    [decision] = reconcile("coinbase", "cancel-orphans", [record], [order])
    assert (decision.kind, decision.action) == ("matched", "keep")


@pytest.mark.parametrize(("change", "difference"), [
    ({"amount": "0.2"}, "amount: journal 0.2, venue 0.1"),
    ({"side": "buy"}, "side: journal buy, venue sell"),
    ({"price": "55"}, "price: journal 55, venue 54"),
    ({"symbol": "LTC/USD"}, "symbol: journal LTC/USD, venue LTC/USDT"),
])
def test_mismatch_is_reported_never_cancelled(kraken: dict[str, VenueOrder], change: dict[str, str],
                                              difference: str) -> None:
    record = journal("mm-sl-1", **{"price": "54", "venue_order_id": SL, **change})  # type: ignore[arg-type]
    for policy in POLICIES:
        [decision] = reconcile("kraken", policy, [record], [kraken[SL]])
        assert (decision.kind, decision.action) == ("mismatch", "report")
        assert decision.reason.startswith(f"matched by venue order id, but {difference}: the journal knows")
        assert "never cancelled" in decision.reason


def test_unknown_values_are_not_differences(kraken: dict[str, VenueOrder]) -> None:
    # The take-profit market order has no price at the venue; the journal wrote a trigger price: not compared.
    [d] = reconcile("kraken", "cancel-orphans", [journal("tp", price="120", venue_order_id=TP)], [kraken[TP]])
    assert d.kind == "matched"
    # The journal recorded a market order (price null); the venue reports a limit price: not compared.
    [d] = reconcile("kraken", "cancel-orphans", [journal("sl", venue_order_id=SL)], [kraken[SL]])
    assert d.kind == "matched"
    # The venue did not report a side or an amount.
    blind = VenueOrder(SL, None, "LTC/USDT", None, None, None, "open")
    [d] = reconcile("kraken", "cancel-orphans", [journal("sl", price="54", venue_order_id=SL)], [blind])
    assert d.kind == "matched"
    # Amounts compare as numbers: 0.10000000 is 0.1.
    [d] = reconcile("kraken", "cancel-orphans", [journal("sl", amount="0.10000000", venue_order_id=SL)], [kraken[SL]])
    assert d.kind == "matched"


def test_conflicting_ids_are_a_mismatch(kraken_raw: list[dict[str, Any]]) -> None:
    # Matched by client id, but the journal says it is another venue order.
    order = VenueOrder.from_ccxt({**kraken_raw[1], "clientOrderId": "mm-1"})
    [d] = reconcile("kraken", "cancel-orphans", [journal("mm-1", price="54", venue_order_id="OTHER-ID")], [order])
    assert d.kind == "mismatch" and "venue order id: journal OTHER-ID, venue OIIQBL-6PV3A-7M2AJJ" in d.reason
    # Matched by venue id, but the venue carries another client id.
    order = VenueOrder.from_ccxt({**kraken_raw[1], "clientOrderId": "mm-2"})
    [d] = reconcile("kraken", "cancel-orphans", [journal("mm-1", price="54", venue_order_id=SL)], [order])
    assert d.kind == "mismatch" and "client order id: journal mm-1, venue mm-2" in d.reason


def test_two_venue_orders_claiming_one_record(kraken_raw: list[dict[str, Any]]) -> None:
    first = VenueOrder.from_ccxt(kraken_raw[1])  # matches by venue id
    second = VenueOrder.from_ccxt({**kraken_raw[0], "clientOrderId": "mm-1"})  # claims the same record by client id
    record = journal("mm-1", venue_order_id=SL)
    for policy in POLICIES:
        decisions = reconcile("kraken", policy, [record], [second, first])
        assert [(d.kind, d.venue_order_id) for d in decisions] == [("mismatch", TP), ("matched", SL)]
        assert "venue order OIIQBL-6PV3A-7M2AJJ already matched it" in decisions[0].reason
        assert decisions[0].action == "report"


def test_missing_orders(kraken: dict[str, VenueOrder]) -> None:
    gone = journal("mm-gone", symbol="BTC/USDT", side="buy", amount="0.5", price="43000.1",
                   state="partially_filled", venue_order_id="OGONE-1", filled=Decimal("0.2"))
    fresh = journal("mm-new", symbol="BTC/USDT", side="buy", amount="0.5", price="43000", state="new")
    for policy in POLICIES:
        decisions = reconcile("kraken", policy, [gone, fresh], [])
        assert [(d.kind, d.action, d.client_order_id, d.venue_order_id) for d in decisions] == [
            ("missing", "report", "mm-new", None), ("missing", "report", "mm-gone", "OGONE-1")]
        assert decisions[1].reason == ("the journal has it partially_filled, 0.2 filled but the venue does not list "
                                       "it: filled or cancelled during the failover? check the venue's trade history")
        assert (decisions[1].symbol, decisions[1].side, decisions[1].amount, decisions[1].price) == (
            "BTC/USDT", "buy", Decimal("0.5"), Decimal("43000.1"))


EXPECTED_ACTION = {
    ("cancel-orphans", "orphan"): "cancel", ("adopt", "orphan"): "adopt", ("report-only", "orphan"): "report",
    **{(p, "matched"): "keep" for p in POLICIES},
    **{(p, "mismatch"): "report" for p in POLICIES},
    **{(p, "missing"): "report" for p in POLICIES},
}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_and_every_kind(policy: str, kraken: dict[str, VenueOrder]) -> None:
    records = [
        journal("mm-sl", price="54", venue_order_id=SL),                          # matched
        journal("mm-ts", symbol="XRP/USD", side="buy", amount="9", venue_order_id=TS),  # mismatch (amount)
        journal("mm-gone", symbol="BTC/USDT", venue_order_id="OGONE-1"),          # missing
    ]
    decisions = reconcile("kraken", policy, records, list(kraken.values()))  # type: ignore[arg-type]
    assert [d.kind for d in decisions] == ["orphan", "mismatch", "missing", "matched"]
    for d in decisions:
        assert d.action == EXPECTED_ACTION[(policy, d.kind)], d
    orphan = decisions[0]
    assert orphan.venue_order_id == TP
    assert orphan.reason.endswith({"cancel-orphans": "policy cancel-orphans: cancel it",
                                   "adopt": "policy adopt: journal it as adopted-OXCZ7B-EMVZQ-MTJTQJ",
                                   "report-only": "policy report-only: left alone"}[policy])


def test_sorted_and_deterministic(kraken: dict[str, VenueOrder]) -> None:
    records = [journal("b", symbol="BTC/USDT", venue_order_id="X2"), journal("a", symbol="BTC/USDT"),
               journal("c", symbol="AAA/USD"), journal("mm-sl", price="54", venue_order_id=SL)]
    orders = list(kraken.values())
    first = reconcile("kraken", "cancel-orphans", records, orders)
    assert [(d.kind, d.symbol, d.venue_order_id, d.client_order_id) for d in first] == [
        ("orphan", "LTC/USDT", TP, None),
        ("orphan", "XRP/USD", TS, None),
        ("missing", "AAA/USD", None, "c"),
        ("missing", "BTC/USDT", None, "a"),
        ("missing", "BTC/USDT", "X2", "b"),
        ("matched", "LTC/USDT", SL, "mm-sl"),
    ]
    rng = random.Random(3)
    for _ in range(20):
        rng.shuffle(records)
        rng.shuffle(orders)
        assert reconcile("kraken", "cancel-orphans", records, orders) == first


def test_bad_arguments(kraken: dict[str, VenueOrder]) -> None:
    with pytest.raises(ValueError, match=r"^policy: expected one of cancel-orphans, adopt, report-only, found "
                                         r"'cancel'; set \[venues.kraken\] reconcile"):
        reconcile("kraken", "cancel", [], [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^journal_open: holds an order of venue 'coinbase'"):
        reconcile("kraken", "cancel-orphans", [journal("x", venue="coinbase")], [])
    with pytest.raises(ValueError, match=r"^journal_open: holds order x in state filled"):
        reconcile("kraken", "cancel-orphans", [journal("x", state="filled")], [])
    assert reconcile("kraken", "adopt", [], []) == []


# --------------------------------------------------------------------------- adoption


def test_adoption_record_from_a_recorded_order(kraken: dict[str, VenueOrder]) -> None:
    record = adoption_record("kraken", kraken[SL], epoch=8)
    assert record == OrderRecord(client_order_id="adopted-OIIQBL-6PV3A-7M2AJJ", venue="kraken", symbol="LTC/USDT",
                                 side="sell", amount=Decimal("0.1"), price=Decimal(54), state="open",
                                 venue_order_id=SL, type="limit", filled=Decimal(0), epoch=8, adopted=True)
    assert parse_order_record(record.to_payload()) == record
    assert adoption_record("kraken", kraken[TP], None).epoch is None


def test_adopted_orders_match_on_the_next_reconciliation(kraken: dict[str, VenueOrder]) -> None:
    """Adopt, journal the adoption records, reconcile again: everything matches."""
    venue_open = list(kraken.values())
    decisions = reconcile("kraken", "adopt", [], venue_open)
    assert [d.action for d in decisions] == ["adopt"] * 3
    index = OpenOrders()
    for seq, d in enumerate(decisions, start=1):
        order = next(o for o in venue_open if o.id == d.venue_order_id)
        index.apply(seq, adoption_record("kraken", order, 9).to_payload())
    again = reconcile("kraken", "cancel-orphans", index.open_at("kraken"), venue_open)
    assert [(d.kind, d.action) for d in again] == [("matched", "keep")] * 3


def test_adopting_with_the_venues_client_id(kraken_raw: list[dict[str, Any]]) -> None:
    odd = "order #7 from the old box/ü"
    order = VenueOrder.from_ccxt({**kraken_raw[1], "clientOrderId": odd})
    record = adoption_record("kraken", order, 1)
    assert CLIENT_ORDER_ID.fullmatch(record.client_order_id)
    assert record.client_order_id.startswith("order--7-from-the-old-box--")
    # Matched by venue id next time, and the sanitised client id is not taken for a conflict.
    [d] = reconcile("kraken", "cancel-orphans", [record], [order])
    assert (d.kind, d.action) == ("matched", "keep")
    # Matched by the sanitised client id too (the record lost its venue id).
    bare = OrderRecord(record.client_order_id, "kraken", "LTC/USDT", "sell", Decimal("0.1"), None, "open")
    [d] = reconcile("kraken", "cancel-orphans", [bare], [order])
    assert (d.kind, d.action) == ("matched", "keep") and "client order id" in d.reason


def test_sanitize_client_order_id() -> None:
    assert sanitize_client_order_id("mm-1") == "mm-1"
    assert sanitize_client_order_id("a" * 64) == "a" * 64
    long = sanitize_client_order_id("adopted-" + "X" * 100)
    assert len(long) <= 64 and CLIENT_ORDER_ID.fullmatch(long)
    assert sanitize_client_order_id("a b") != sanitize_client_order_id("a/b")  # distinct ids stay distinct
    assert sanitize_client_order_id("a b") == sanitize_client_order_id("a b")  # and it is deterministic
    assert CLIENT_ORDER_ID.fullmatch(sanitize_client_order_id(""))


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_sanitized_ids_always_fit(text: str) -> None:
    assert CLIENT_ORDER_ID.fullmatch(sanitize_client_order_id(text))


def test_orders_that_cannot_be_adopted_are_reported(kraken_raw: list[dict[str, Any]]) -> None:
    no_side = VenueOrder.from_ccxt({**kraken_raw[1], "side": None})
    with pytest.raises(OrderRecordError, match=r"^side: venue order OIIQBL-6PV3A-7M2AJJ reported no buy/sell side"):
        adoption_record("kraken", no_side, 1)
    no_amount = VenueOrder.from_ccxt({**kraken_raw[1], "amount": None})
    with pytest.raises(OrderRecordError, match=r"^amount: "):
        adoption_record("kraken", no_amount, 1)
    decisions = reconcile("kraken", "adopt", [], [no_side])
    assert [(d.kind, d.action) for d in decisions] == [("orphan", "report")]
    assert "policy adopt, but it cannot be recorded (side:" in decisions[0].reason
    # A type or filled size the format cannot hold is left out rather than refused.
    odd = VenueOrder.from_ccxt({**kraken_raw[1], "type": "stop loss limit", "filled": 5})
    record = adoption_record("kraken", odd, 1)
    assert record.type is None and record.filled is None


# --------------------------------------------------------------------------- Decision and report


def test_decision_to_dict_is_json(kraken: dict[str, VenueOrder]) -> None:
    [d] = reconcile("kraken", "cancel-orphans", [], [kraken[SL]])
    data = d.to_dict()
    assert data == {"kind": "orphan", "action": "cancel", "venue": "kraken", "client_order_id": None,
                    "venue_order_id": SL, "symbol": "LTC/USDT", "side": "sell", "amount": "0.1", "price": "54",
                    "reason": d.reason, "epoch": None}
    assert json.loads(json.dumps(data)) == data


def report_for(kraken: dict[str, VenueOrder], policy: str, *, dry_run: bool = False,
               records: list[OrderRecord] | None = None) -> ReconciliationReport:
    records = [journal("mm-sl-1", price="54", venue_order_id=SL)] if records is None else records
    report = ReconciliationReport(venue="kraken", policy=policy, dry_run=dry_run, node="node-b", epoch=8,
                                  started_at=1705260300.0)
    report.decisions = reconcile("kraken", policy, records, list(kraken.values()))  # type: ignore[arg-type]
    return report


def test_report_cancel_orphans(kraken: dict[str, VenueOrder]) -> None:
    report = report_for(kraken, "cancel-orphans")
    for i, d in report.actionable():
        report.outcomes[i] = "cancelled"
    report.outcomes[2] = "kept"
    report.finished_at = 1705260301.25
    lines = report.lines()
    assert lines[0] == "kraken: policy cancel-orphans, 3 venue orders, 1 matched, 2 orphans → 2 cancelled, 0 failed"
    assert lines[1] == ("  orphan cancel → cancelled: venue order OXCZ7B-EMVZQ-MTJTQJ, client order -, LTC/USDT sell "
                        "0.1@-; no journal-open order has venue order id OXCZ7B-EMVZQ-MTJTQJ; policy cancel-orphans: "
                        "cancel it")
    assert lines[2].startswith("  orphan cancel → cancelled: venue order OF7S76-H2IMS-N2ML4U, client order -, "
                               "XRP/USD buy 10@-; ")
    assert lines[3] == ("  matched keep: venue order OIIQBL-6PV3A-7M2AJJ, client order mm-sl-1, LTC/USDT sell 0.1@54; "
                        "matched by venue order id; the journal has it open")
    assert lines[4] == "  by epoch: epoch unknown: 1 matched; not in the journal: 2 orphans"
    assert lines[5] == "  node node-b, epoch 8, started 2024-01-14 19:25:00 UTC, took 1.2 s"
    assert len(lines) == 6
    assert report.counts() == {"matched": 1, "orphans": 2, "missing": 0, "mismatched": 0, "cancelled": 2,
                               "adopted": 0, "failed": 0, "skipped": 0, "would_cancel": 0, "would_adopt": 0,
                               "venue_orders": 3}


def test_report_failures_dry_runs_and_other_policies(kraken: dict[str, VenueOrder]) -> None:
    report = report_for(kraken, "cancel-orphans")
    report.outcomes = {0: "cancelled", 1: "failed: timeout (no answer)", 2: "kept"}
    assert report.summary().endswith("→ 1 cancelled, 1 failed")
    assert "orphan cancel → failed: timeout (no answer): venue order OF7S76" in report.lines()[2]
    assert report.counts()["failed"] == 1

    report.outcomes = {0: "cancelled", 1: "skipped: this node is no longer primary", 2: "kept"}
    assert report.summary().endswith("→ 1 cancelled, 0 failed, 1 skipped")

    report.outcomes = {0: "cancelled"}
    assert report.summary().endswith("→ 1 cancelled, 0 failed, 1 not attempted")

    dry = report_for(kraken, "cancel-orphans", dry_run=True)
    dry.outcomes = {0: "would cancel", 1: "would cancel", 2: "kept"}
    assert dry.summary() == ("kraken: policy cancel-orphans (dry run), 3 venue orders, 1 matched, 2 orphans "
                             "→ 2 would be cancelled")
    assert dry.counts()["would_cancel"] == 2 and dry.counts()["cancelled"] == 0

    adopt = report_for(kraken, "adopt")
    adopt.outcomes = {0: "adopted", 1: "adopted", 2: "kept"}
    assert adopt.summary() == "kraken: policy adopt, 3 venue orders, 1 matched, 2 orphans → 2 adopted, 0 failed"
    assert adopt.counts()["adopted"] == 2

    dry_adopt = report_for(kraken, "adopt", dry_run=True)
    dry_adopt.outcomes = {0: "would adopt", 1: "would adopt", 2: "kept"}
    assert dry_adopt.summary().endswith("→ 2 would be adopted")

    only = report_for(kraken, "report-only")
    only.outcomes = {0: "report", 1: "report", 2: "kept"}
    assert only.summary() == ("kraken: policy report-only, 3 venue orders, 1 matched, 2 orphans "
                              "→ left alone (report-only)")
    assert only.lines()[1].startswith("  orphan report: venue order OXCZ7B")


def test_report_with_mismatches_missing_positions_and_errors(kraken: dict[str, VenueOrder]) -> None:
    records = [journal("mm-sl-1", price="54", venue_order_id=SL), journal("mm-ts", symbol="XRP/USD", side="sell",
                                                                          amount="10", venue_order_id=TS),
               journal("mm-gone", symbol="BTC/USDT", venue_order_id="OGONE-1")]
    report = report_for(kraken, "cancel-orphans", records=records)
    report.outcomes = {0: "cancelled", 1: "report", 2: "report", 3: "kept"}
    report.positions = [{"symbol": "BTC/USD:USD", "side": "long", "contracts": 2.0, "entryPrice": 43000.5,
                         "unrealizedPnl": None, "info": {}}]
    report.errors = ["positions: timeout (no answer within 10s)"]
    lines = report.lines()
    assert lines[0] == ("kraken: policy cancel-orphans, 3 venue orders, 1 matched, 1 mismatched, 1 orphan → "
                        "1 cancelled, 0 failed; 1 journal order missing at the venue; 1 error")
    assert lines[2].startswith("  mismatch report: venue order OF7S76-H2IMS-N2ML4U, client order mm-ts, XRP/USD buy "
                               "10@-; matched by venue order id, but side: journal sell, venue buy")
    assert lines[3].startswith("  missing report: venue order OGONE-1, client order mm-gone, BTC/USDT sell 0.1@-; "
                               "the journal has it open but the venue does not list it")
    assert lines[5] == "  position: BTC/USD:USD long contracts 2.0 entryPrice 43000.5"
    assert lines[6] == "  error: positions: timeout (no answer within 10s)"
    assert lines[7] == "  by epoch: epoch unknown: 1 mismatched, 1 missing, 1 matched; not in the journal: 1 orphan"
    assert lines[8].endswith(", not finished")
    c = report.counts()
    assert (c["matched"], c["mismatched"], c["orphans"], c["missing"], c["venue_orders"]) == (1, 1, 1, 1, 3)


def test_report_to_dict_is_json(kraken: dict[str, VenueOrder]) -> None:
    report = report_for(kraken, "cancel-orphans")
    report.outcomes = {0: "cancelled", 1: "failed: gone", 2: "kept"}
    report.positions = [{"symbol": "BTC/USD:USD", "contracts": Decimal(2), "pnl": float("nan")}]
    data = report.to_dict()
    text = json.dumps(data, sort_keys=True, allow_nan=False)
    back = json.loads(text)
    assert back["venue"] == "kraken" and back["policy"] == "cancel-orphans" and back["epoch"] == 8
    assert back["node"] == "node-b" and back["dry_run"] is False and back["started_at"] == 1705260300.0
    assert back["counts"]["cancelled"] == 1 and back["counts"]["failed"] == 1
    assert [d["outcome"] for d in back["decisions"]] == ["cancelled", "failed: gone", "kept"]
    assert back["decisions"][0]["venue_order_id"] == TP and back["decisions"][2]["price"] == "54"
    assert back["outcomes"] == {"0": "cancelled", "1": "failed: gone", "2": "kept"}
    assert back["positions"] == [{"symbol": "BTC/USD:USD", "contracts": "2", "pnl": None}]


def test_an_empty_report() -> None:
    report = ReconciliationReport(venue="coinbase", policy="cancel-orphans", dry_run=False, node="a", epoch=None,
                                  started_at=0.0, errors=["fetch_open_orders: auth (invalid key)"])
    assert report.lines()[0] == ("coinbase: policy cancel-orphans, 0 venue orders, 0 matched, 0 orphans "
                                 "→ 0 cancelled, 0 failed; 1 error")
    assert report.lines()[-1] == "  node a, epoch -, started 1970-01-01 00:00:00 UTC, not finished"


# --------------------------------------------------------------------------- properties

_VIDS = ["V1", "V2", "V3", "V4", "V5"]
_COIDS = ["c1", "c2", "c3", "c4", "c5"]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[OrderRecord], list[VenueOrder]]:
    records = {}
    for coid in draw(st.lists(st.sampled_from(_COIDS), unique=True, max_size=5)):
        records[coid] = OrderRecord(
            coid, "kraken", draw(st.sampled_from(["BTC/USDT", "LTC/USDT"])), draw(st.sampled_from(["buy", "sell"])),
            Decimal(draw(st.sampled_from(["0.1", "0.5"]))), draw(st.sampled_from([None, Decimal(54)])),
            draw(st.sampled_from(["new", "open", "partially_filled"])),
            venue_order_id=draw(st.none() | st.sampled_from(_VIDS)))
    orders = [
        VenueOrder(vid, draw(st.none() | st.sampled_from([*_COIDS, "z9"])),
                   draw(st.sampled_from(["BTC/USDT", "LTC/USDT"])),
                   draw(st.none() | st.sampled_from(["buy", "sell"])),
                   draw(st.none() | st.sampled_from([Decimal("0.1"), Decimal("0.5")])),
                   draw(st.none() | st.sampled_from([Decimal(54), Decimal(55)])), "open")
        for vid in draw(st.lists(st.sampled_from(_VIDS), unique=True, max_size=5))
    ]
    return list(records.values()), orders


@settings(max_examples=400)
@given(scenario(), st.sampled_from(POLICIES), st.randoms(use_true_random=False))
def test_reconcile_properties(case: tuple[list[OrderRecord], list[VenueOrder]], policy: str,
                              rng: random.Random) -> None:
    records, orders = case
    decisions = reconcile("kraken", policy, records, orders)  # type: ignore[arg-type]
    journal_vids = {r.venue_order_id for r in records if r.venue_order_id}
    journal_coids = {r.client_order_id for r in records}
    by_id = {o.id: o for o in orders}
    for d in decisions:
        if d.action == "cancel":
            # Never cancel an order the journal has open, matched by either id.
            order = by_id[d.venue_order_id]  # type: ignore[index]
            assert order.id not in journal_vids
            assert order.client_order_id not in journal_coids
            assert policy == "cancel-orphans" and d.kind == "orphan"
        if policy == "report-only":
            assert d.action not in ("cancel", "adopt")
        if d.kind in ("mismatch", "missing"):
            assert d.action == "report"
        if d.action == "adopt":
            assert policy == "adopt" and d.kind == "orphan"
    # Every venue order gets exactly one decision; every journal record is matched once or missing.
    venue_side = [d for d in decisions if d.kind != "missing"]
    assert sorted(d.venue_order_id for d in venue_side) == sorted(o.id for o in orders)  # type: ignore[type-var]
    accounted = [d.client_order_id for d in decisions if d.kind in ("matched", "missing")]
    assert len(accounted) == len(set(accounted))
    missing = {d.client_order_id for d in decisions if d.kind == "missing"}
    claimed = {d.client_order_id for d in decisions if d.kind in ("matched", "mismatch")}
    assert missing | claimed >= journal_coids and not (missing & claimed)
    # Sorted, and the same whatever the input order.
    assert decisions == sorted(decisions, key=Decision.sort_key)
    rng.shuffle(records)
    rng.shuffle(orders)
    assert reconcile("kraken", policy, records, orders) == decisions  # type: ignore[arg-type]


def test_the_report_groups_orders_by_the_epoch_that_placed_them(kraken: dict[str, VenueOrder]) -> None:
    """After a promotion to epoch 8: orders the earlier primary placed (epoch 7), this
    primary's (8), records written without an epoch, and orphans nobody recorded."""
    records = [journal("mm-sl-1", price="54", venue_order_id=SL, epoch=7),
               journal("mm-ts", symbol="XRP/USD", side="buy", amount="10", venue_order_id=TS, epoch=8),
               journal("mm-gone", symbol="BTC/USDT", venue_order_id="OGONE-1", epoch=7),
               journal("mm-old", symbol="BTC/USDT", venue_order_id="OGONE-2")]
    report = report_for(kraken, "cancel-orphans", records=records)
    by = {d.client_order_id: report.epoch_label(d) for d in report.decisions}
    assert by == {"mm-sl-1": "epoch 7 (an earlier primary)", "mm-ts": "epoch 8 (this primary)",
                  "mm-gone": "epoch 7 (an earlier primary)", "mm-old": "epoch unknown", None: "not in the journal"}
    assert report.by_epoch() == {"epoch 7 (an earlier primary)": {"missing": 1, "matched": 1},
                                 "epoch 8 (this primary)": {"matched": 1}, "epoch unknown": {"missing": 1},
                                 "not in the journal": {"orphan": 1}}
    assert ("  by epoch: epoch 7 (an earlier primary): 1 missing, 1 matched; epoch 8 (this primary): 1 matched; "
            "epoch unknown: 1 missing; not in the journal: 1 orphan") in report.lines()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["by_epoch"]["epoch 7 (an earlier primary)"] == {"missing": 1, "matched": 1}
    assert {d["client_order_id"]: (d["epoch"], d["placed_by"]) for d in data["decisions"]}["mm-sl-1"] == \
        (7, "epoch 7 (an earlier primary)")
