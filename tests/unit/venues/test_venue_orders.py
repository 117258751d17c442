"""The journal's order record format (the engine's contract) and the open-orders index."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.venues import orders
from daemon.venues.orders import (
    CLOSED_STATES,
    OPEN_STATES,
    STATES,
    OpenOrders,
    OrderRecord,
    OrderRecordError,
    looks_like_record,
    parse_order_record,
)

BASE: dict[str, Any] = {
    "record": "order", "v": 1, "client_order_id": "mm-1", "venue": "kraken", "symbol": "BTC/USDT",
    "side": "buy", "amount": "0.5", "price": "43000.1", "state": "open",
}


def payload(drop: tuple[str, ...] = (), **changes: Any) -> bytes:
    data = {k: v for k, v in {**BASE, **changes}.items() if k not in drop}
    return json.dumps(data).encode()


def error_of(data: bytes) -> OrderRecordError:
    with pytest.raises(OrderRecordError) as info:
        parse_order_record(data)
    return info.value


def doc_examples() -> list[bytes]:
    lines = [line.strip() for line in (orders.__doc__ or "").splitlines()]
    return [line.encode() for line in lines if line.startswith('{"record":"order"')]


def doc_snapshot_example() -> bytes:
    lines = [line.strip() for line in (orders.__doc__ or "").splitlines()]
    (line,) = [line for line in lines if line.startswith('{"record":"open_orders"')]
    return line.encode()


# --------------------------------------------------------------------------- valid records


def test_a_minimal_record() -> None:
    record = parse_order_record(payload())
    assert record == OrderRecord(client_order_id="mm-1", venue="kraken", symbol="BTC/USDT", side="buy",
                                 amount=Decimal("0.5"), price=Decimal("43000.1"), state="open")
    assert record.is_open and record.key == ("kraken", "mm-1")
    assert record.venue_order_id is None and record.filled is None and record.adopted is False


def test_every_optional_field() -> None:
    record = parse_order_record(payload(venue_order_id="OXCZ7B-EMVZQ-MTJTQJ", type="limit", filled="0.2",
                                        epoch=7, time=1705260203.583, adopted=True, state="partially_filled"))
    assert record is not None
    assert (record.venue_order_id, record.type, record.filled, record.epoch, record.time, record.adopted) == (
        "OXCZ7B-EMVZQ-MTJTQJ", "limit", Decimal("0.2"), 7, 1705260203.583, True)


def test_market_order_price_null_and_json_numbers() -> None:
    record = parse_order_record(payload(price=None, amount=2, filled=0.5, time=1705260203))
    assert record is not None
    assert record.price is None and record.amount == Decimal(2) and record.filled == Decimal("0.5")
    assert record.time == 1705260203.0 and isinstance(record.time, float)
    # A float goes through its shortest repr: 0.1 is 0.1, not 0.1000000000000000055...
    assert parse_order_record(payload(amount=0.1)).amount == Decimal("0.1")  # type: ignore[union-attr]


def test_decimal_spellings() -> None:
    for text, value in [("0.00000001", "1E-8"), ("1e-8", "1E-8"), ("5.", "5"), (".5", "0.5"), ("+2", "2"),
                        ("43000.10", "43000.1"), ("1E+3", "1000")]:
        assert parse_order_record(payload(amount=text)).amount == Decimal(value), text  # type: ignore[union-attr]


def test_null_optionals_mean_absent() -> None:
    record = parse_order_record(payload(venue_order_id=None, type=None, filled=None, epoch=None, time=None,
                                        adopted=None))
    assert record == parse_order_record(payload())


def test_keys_in_any_order_and_whitespace() -> None:
    items = list({**BASE, "epoch": 3}.items())
    random.Random(1).shuffle(items)
    text = "\n  " + json.dumps(dict(items), indent=4) + "\n"
    assert parse_order_record(text.encode()) == parse_order_record(payload(epoch=3))


def test_the_documented_example_sequence() -> None:
    """The module docstring's worked example parses, is canonical, and folds as it says."""
    lines = doc_examples()
    assert [parse_order_record(line).state for line in lines] == [  # type: ignore[union-attr]
        "new", "open", "partially_filled", "filled"]
    index = OpenOrders()
    for seq, line in enumerate(lines, start=1):
        record = parse_order_record(line)
        assert record is not None and record.to_payload() == line  # canonical
        index.apply(seq, line)
        if seq < 4:
            assert index.open_at("kraken") == [record]
    assert index.open_at("kraken") == [] and index.position == 4 and index.applied == 4


def test_the_documented_example_error() -> None:
    err = error_of(payload(amount=-1))
    assert str(err) == ('amount: expected a positive decimal string such as "0.5", found -1; '
                        "the engine must write the order's size")
    assert err.field == "amount" and isinstance(err, ValueError)
    assert 'amount: expected a positive decimal string such as "0.5", found -1;' in (orders.__doc__ or "")


# --------------------------------------------------------------------------- invalid records

_LONG = "x" * 1000

INVALID: list[tuple[str, Any, str]] = [
    ("client_order_id", "", 'found ""'),
    ("client_order_id", "a" * 65, "1-64 characters"),
    ("client_order_id", "mm 1", 'found "mm 1"'),
    ("client_order_id", "mm/1", 'found "mm/1"'),
    ("client_order_id", 5, "found 5"),
    ("client_order_id", None, "found null"),
    ("venue", "Kraken", 'found "Kraken"'),
    ("venue", "", 'such as "kraken"'),
    ("venue", ["kraken"], 'found ["kraken"]'),
    ("symbol", "", 'such as "BTC/USDT"'),
    ("symbol", "BTC USDT", 'found "BTC USDT"'),
    ("symbol", "BTC/USDT\n", "without spaces"),
    ("symbol", None, "found null"),
    ("symbol", "B" * 101, "found"),
    ("side", "BUY", 'expected one of "buy", "sell", found "BUY"'),
    ("side", "long", 'found "long"'),
    ("side", None, "found null"),
    ("amount", 0, "found 0"),
    ("amount", "0", 'found "0"'),
    ("amount", "-0.5", 'found "-0.5"'),
    ("amount", "abc", 'found "abc"'),
    ("amount", "0x10", 'found "0x10"'),
    ("amount", " 1", 'found " 1"'),
    ("amount", "NaN", 'found "NaN"'),
    ("amount", "Infinity", 'found "Infinity"'),
    ("amount", True, "found true"),
    ("amount", None, "found null"),
    ("amount", {"v": 1}, 'found {"v": 1}'),
    ("amount", "1e30", "below 1e30"),
    ("amount", "0." + "0" * 30 + "1", "at most 30 decimal places"),
    ("price", 0, "found 0"),
    ("price", "-5", 'found "-5"'),
    ("price", "market", 'found "market"'),
    ("state", "done", 'found "done"'),
    ("state", "OPEN", 'found "OPEN"'),
    ("state", None, "found null"),
    ("venue_order_id", "", 'found ""'),
    ("venue_order_id", "O X", 'found "O X"'),
    ("venue_order_id", 12345, "found 12345"),
    ("venue_order_id", "é", 'found "é"'),
    ("type", "", 'such as "limit"'),
    ("type", "limit order", 'found "limit order"'),
    ("type", 1, "found 1"),
    ("filled", -1, "found -1"),
    ("filled", "0.6", "expected at most the amount 0.5, found 0.6"),
    ("filled", "some", 'found "some"'),
    ("epoch", -1, "expected an integer of at least 0, found -1"),
    ("epoch", 1.5, "found 1.5"),
    ("epoch", True, "found true"),
    ("epoch", "7", 'found "7"'),
    ("time", -1, "found -1"),
    ("time", "now", 'found "now"'),
    ("time", False, "found false"),
    ("adopted", "yes", 'expected true or false, found "yes"'),
    ("adopted", 1, "found 1"),
]


@pytest.mark.parametrize(("field", "value", "expected"), INVALID, ids=[f"{f}={v!r}"[:40] for f, v, _ in INVALID])
def test_every_field_is_validated(field: str, value: Any, expected: str) -> None:
    err = error_of(payload(**{field: value}))
    assert err.field == field
    text = str(err)
    assert text.startswith(f"{field}: ") and expected in text, text
    _problem, _, fix = text.partition("; ")
    assert fix, text  # every message says what to do
    assert "\n" not in text


@pytest.mark.parametrize("field", ["client_order_id", "venue", "symbol", "side", "amount", "price", "state"])
def test_every_required_field_is_required(field: str) -> None:
    err = error_of(payload(drop=(field,)))
    assert err.field == field and str(err).startswith(f"{field}: missing; ")


@pytest.mark.parametrize(("value", "expected"), [(2, "found 2"), ("1", 'found "1"'), (True, "found true"),
                                                 (1.0, "found 1.0"), (None, "found null")])
def test_version_must_be_1(value: Any, expected: str) -> None:
    err = error_of(payload(v=value))
    assert err.field == "v" and expected in str(err) and str(err).startswith("v: expected 1")
    assert error_of(payload(drop=("v",))).field == "v"


def test_unknown_keys_are_refused_with_a_suggestion() -> None:
    err = error_of(payload(clientOrderId="x"))
    assert err.field == "clientOrderId" and str(err).startswith("clientOrderId: unknown key; ")
    err = error_of(payload(pirce="1"))
    assert 'did you mean "price"?' in str(err)
    err = error_of(payload(zzzzzzzz=1))
    assert "did you mean" not in str(err) and "the keys are record, v, client_order_id" in str(err)


def test_a_key_written_twice_is_refused() -> None:
    text = payload()[:-1] + b', "state": "filled"}'
    err = error_of(text)
    assert err.field == "state" and "appears more than once" in str(err)


def test_nan_and_infinity_literals_are_refused_by_field() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        text = payload(amount="@").replace(b'"@"', literal)
        assert error_of(text).field == "amount"
    assert error_of(payload(time="@").replace(b'"@"', b"NaN")).field == "time"


def test_found_values_are_cut_to_40_characters() -> None:
    for field in ("client_order_id", "symbol", "amount", "venue_order_id"):
        err = error_of(payload(**{field: "Q" * 1000}))
        found = str(err).split("found ", 1)[1].split(";", 1)[0]
        assert len(found) <= 40 and found.endswith("…"), found
    err = error_of(payload(**{"k" * 500: 1}))
    assert len(err.field) <= 40 and len(str(err)) < 400


def test_order_record_error_attributes() -> None:
    err = OrderRecordError("side", 'expected one of "buy", "sell", found "x"')
    assert err.field == "side" and err.fix == 'the engine must write "buy" or "sell"'
    assert str(err) == 'side: expected one of "buy", "sell", found "x"; the engine must write "buy" or "sell"'


# --------------------------------------------------------------------------- not order records

NOT_ORDERS = [
    b"", b"   ", b"{", b"[]", b"null", b"42", b'"record"', b"not json at all",
    b'{"record": "trade", "id": 5}',
    b'{"record": "heartbeat"}',
    b'{"kind": "order", "record_": 1}',
    b'{"record": 5}',
    b'{"record": null, "client_order_id": "x"}',
    b'{"record": "ORDER"}',
    b'{"record": "order", "v": 1',  # truncated: not JSON
    b'["record", "order"]',
    b'{"records": "order"}',
    b'\xef\xbb\xbf{"record": "order"}',  # a BOM: not the UTF-8 JSON the format asks for
    b'{"record": "order\xff"}',  # not UTF-8
    json.dumps({**BASE}).encode("utf-16"),
    b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "record": "order"}',
    b'{"record": "order", "amount": 1' + b"0" * 5000 + b"}",  # an integer Python refuses to read
]


@pytest.mark.parametrize("data", NOT_ORDERS, ids=range(len(NOT_ORDERS)))
def test_non_order_payloads_are_none(data: bytes) -> None:
    assert parse_order_record(data) is None


def test_looks_like_record() -> None:
    assert looks_like_record(payload())
    assert looks_like_record(b' \n\t{"record": "trade"}')
    assert looks_like_record(memoryview(b'{"record":1}'))  # type: ignore[arg-type]
    assert not looks_like_record(b"")
    assert not looks_like_record(b'["record"]')
    assert not looks_like_record(b'{"kind": "order"}')
    assert not looks_like_record(b'x{"record": "order"}')
    # The key must be spelled literally: an escaped spelling is not seen (documented).
    escaped = payload().replace(b'"record"', b'"\\u0072ecord"')
    assert json.loads(escaped)["record"] == "order"
    assert not looks_like_record(escaped) and parse_order_record(escaped) is None


# --------------------------------------------------------------------------- OrderRecord itself


def test_constructor_validates_and_normalises() -> None:
    record = OrderRecord("mm-1", "kraken", "BTC/USDT", "sell", "0.5", 43000, "new",  # type: ignore[arg-type]
                         filled=0, time=5)  # type: ignore[arg-type]
    assert record.amount == Decimal("0.5") and isinstance(record.amount, Decimal)
    assert record.price == Decimal(43000) and record.filled == Decimal(0) and record.time == 5.0
    with pytest.raises(OrderRecordError, match=r"^side: "):
        OrderRecord("mm-1", "kraken", "BTC/USDT", "hold", Decimal(1), None, "new")
    with pytest.raises(OrderRecordError, match=r"^amount: "):
        OrderRecord("mm-1", "kraken", "BTC/USDT", "buy", Decimal("NaN"), None, "new")
    with pytest.raises(OrderRecordError, match=r"^adopted: "):
        OrderRecord("mm-1", "kraken", "BTC/USDT", "buy", Decimal(1), None, "new",
                    adopted="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("state", STATES)
def test_open_and_closed_states(state: str) -> None:
    record = parse_order_record(payload(state=state))
    assert record is not None and record.is_open is (state in OPEN_STATES)
    assert OPEN_STATES == {"new", "open", "partially_filled"}
    assert CLOSED_STATES == {"filled", "cancelled", "rejected", "expired"}
    assert OPEN_STATES.isdisjoint(CLOSED_STATES) and OPEN_STATES | CLOSED_STATES == set(STATES)


def test_to_payload_is_canonical() -> None:
    record = OrderRecord("mm-1", "kraken", "BTC/USDT", "buy", Decimal("1E-8"), None, "new", epoch=0)
    data = record.to_payload()
    assert data == (b'{"record":"order","v":1,"client_order_id":"mm-1","venue":"kraken","symbol":"BTC/USDT",'
                    b'"side":"buy","amount":"0.00000001","price":null,"state":"new","epoch":0}')
    assert b"adopted" not in data  # false is left out
    adopted = OrderRecord("a-1", "kraken", "BTC/USDT", "buy", Decimal(1), Decimal("2.50"), "open", adopted=True)
    assert adopted.to_payload().endswith(b'"price":"2.50","state":"open","adopted":true}')
    unicode = OrderRecord("u-1", "kraken", "BTC/€", "buy", Decimal(1), None, "open")
    assert "€".encode() in unicode.to_payload() and parse_order_record(unicode.to_payload()) == unicode


def test_describe() -> None:
    record = parse_order_record(payload(price=None))
    assert record is not None and record.describe() == "kraken mm-1 buy 0.5 BTC/USDT @ market (open)"


# --------------------------------------------------------------------------- properties

_decimals = st.decimals(min_value=Decimal("1E-12"), max_value=Decimal("1E+12"), allow_nan=False,
                        allow_infinity=False, places=8).filter(lambda d: d > 0)
_ids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-", min_size=1, max_size=64)


@st.composite
def records(draw: st.DrawFn) -> OrderRecord:
    amount = draw(_decimals)
    filled = draw(st.none() | st.decimals(min_value=0, max_value=amount, places=8))
    return OrderRecord(
        client_order_id=draw(_ids),
        venue=draw(st.sampled_from(["kraken", "coinbase", "binance_us", "venue-2"])),
        symbol=draw(st.sampled_from(["BTC/USDT", "LTC/USDT", "XRP/USD", "ETH/USDT:USDT", "ADA/USDT"])),
        side=draw(st.sampled_from(["buy", "sell"])),
        amount=amount,
        price=draw(st.none() | _decimals),
        state=draw(st.sampled_from(STATES)),
        venue_order_id=draw(st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                                 min_size=1, max_size=128)),
        type=draw(st.none() | st.sampled_from(["limit", "market", "stop-loss-limit", "trailing-stop", "LIMIT_MAKER"])),
        filled=filled,
        epoch=draw(st.none() | st.integers(0, 2**63)),
        time=draw(st.none() | st.floats(0, 4e9, allow_nan=False)),
        adopted=draw(st.booleans()),
    )


@settings(max_examples=300)
@given(records())
def test_round_trip(record: OrderRecord) -> None:
    data = record.to_payload()
    assert looks_like_record(data)
    parsed = parse_order_record(data)
    assert parsed == record
    assert parsed.to_payload() == data  # type: ignore[union-attr]
    # Any key order, any JSON whitespace: the same record.
    items = list(json.loads(data).items())
    random.Random(len(data)).shuffle(items)
    assert parse_order_record(json.dumps(dict(items), indent=1).encode()) == record


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_garbage_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        result = parse_order_record(data)
    except OrderRecordError:
        return
    assert result is None or isinstance(result, OrderRecord)


_VALID = payload(venue_order_id="OXCZ7B-EMVZQ-MTJTQJ", filled="0.1", epoch=3, time=1.5, type="limit")


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.sampled_from(["delete", "replace", "insert"]),
                          st.binary(min_size=1, max_size=3)), min_size=1, max_size=4))
def test_mutated_records_never_raise_anything_else(edits: list[tuple[int, str, bytes]]) -> None:
    data = bytearray(_VALID)
    for position, edit, chunk in edits:
        position = min(position, len(data))
        if edit == "delete":
            del data[position:position + len(chunk)]
        elif edit == "replace":
            data[position:position + len(chunk)] = chunk
        else:
            data[position:position] = chunk
    try:
        result = parse_order_record(bytes(data))
    except OrderRecordError as exc:
        assert str(exc).startswith(f"{exc.field}: ") and "; " in str(exc)
        return
    assert result is None or isinstance(result, OrderRecord)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                     lambda inner: (st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=6)


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from([*BASE, "venue_order_id", "type", "filled", "epoch", "time", "adopted", "x"]),
                       _json | st.sampled_from(["buy", "open", "0.5", "kraken", "BTC/USDT"]), max_size=12))
def test_any_claimed_order_is_valid_or_an_order_record_error(values: dict[str, Any]) -> None:
    data = {"record": "order", **{k: v for k, v in values.items() if k != "record"}}
    try:
        text = json.dumps(data).encode()
    except ValueError:
        return
    try:
        result = parse_order_record(text)
    except OrderRecordError:
        return
    assert isinstance(result, OrderRecord)
    assert parse_order_record(result.to_payload()) == result


# --------------------------------------------------------------------------- OpenOrders


def rec(coid: str, state: str, venue: str = "kraken", **extra: Any) -> bytes:
    return payload(client_order_id=coid, state=state, venue=venue, **extra)


def test_open_orders_fold_later_supersedes_and_closed_removes() -> None:
    index = OpenOrders()
    assert index.position == 0 and index.open_at("kraken") == [] and len(index) == 0
    assert index.apply(1, rec("a", "new")).state == "new"  # type: ignore[union-attr]
    index.apply(2, rec("b", "open"))
    index.apply(3, rec("a", "open", venue_order_id="V-A"))
    assert [r.client_order_id for r in index.open_at("kraken")] == ["b", "a"]  # journal order of the latest record
    assert index.get("kraken", "a").venue_order_id == "V-A"  # type: ignore[union-attr]
    index.apply(4, rec("a", "partially_filled", filled="0.2"))  # a snapshot, not a delta: V-A is gone
    a = index.get("kraken", "a")
    assert a is not None and a.state == "partially_filled" and a.venue_order_id is None
    index.apply(5, rec("b", "cancelled"))
    assert [r.client_order_id for r in index.open_at("kraken")] == ["a"]
    assert index.get("kraken", "b") is None
    index.apply(6, rec("a", "filled", filled="0.5"))
    assert index.open_at("kraken") == [] and index.get("kraken", "a") is None and len(index) == 0
    # The journal is the truth: a later open record opens it again.
    index.apply(7, rec("a", "open"))
    assert [r.state for r in index.open_at("kraken")] == ["open"]
    assert index.position == 7 and index.applied == 7 and index.invalid == 0


@pytest.mark.parametrize("closing", sorted(CLOSED_STATES))
def test_every_closed_state_closes(closing: str) -> None:
    index = OpenOrders()
    index.apply(1, rec("a", "open"))
    index.apply(2, rec("a", closing))
    assert index.open_at("kraken") == []


def test_open_orders_are_per_venue() -> None:
    index = OpenOrders()
    index.apply(1, rec("same-id", "open", venue="kraken"))
    index.apply(2, rec("same-id", "open", venue="coinbase", symbol="ADA/USDT"))
    index.apply(3, rec("k-2", "new", venue="kraken"))
    assert [r.client_order_id for r in index.open_at("kraken")] == ["same-id", "k-2"]
    assert [r.symbol for r in index.open_at("coinbase")] == ["ADA/USDT"]
    assert index.open_at("binance") == []
    assert index.venues() == ["coinbase", "kraken"]
    index.apply(4, rec("same-id", "filled", venue="kraken"))
    assert [r.client_order_id for r in index.open_at("kraken")] == ["k-2"]
    assert index.get("coinbase", "same-id") is not None


def test_non_orders_and_invalid_records_are_skipped_and_counted() -> None:
    index = OpenOrders()
    index.apply(1, rec("a", "open"))
    assert index.apply(2, b'{"record": "trade", "id": 1}') is None
    assert index.apply(3, b"\x00\x01binary") is None
    assert index.apply(4, rec("a", "filled", amount="-1")) is None  # invalid: ignored, "a" stays open
    assert index.invalid == 1 and index.position == 4 and index.applied == 1
    assert index.last_error is not None and index.last_error.startswith("seq 4: amount: expected a positive")
    assert [r.state for r in index.open_at("kraken")] == ["open"]


def test_seq_must_advance() -> None:
    index = OpenOrders()
    index.apply(5, rec("a", "open"))
    for seq in (5, 4, 0, True):
        with pytest.raises(ValueError, match=r"^seq: expected a journal seq after position 5"):
            index.apply(seq, rec("b", "open"))  # type: ignore[arg-type]
    assert index.get("kraken", "b") is None


def test_reset() -> None:
    index = OpenOrders()
    index.apply(1, rec("a", "open"))
    index.apply(2, b'{"record":"order"}')
    index.reset()
    assert (index.position, index.invalid, index.applied, index.last_error, len(index)) == (0, 0, 0, None, 0)
    index.apply(1, rec("b", "open"))  # folding from the start again
    assert [r.client_order_id for r in index.open_at("kraken")] == ["b"]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["kraken", "coinbase"]), st.sampled_from(["a", "b", "c", "d"]),
                          st.sampled_from([*STATES, "invalid", "other"])), max_size=40))
def test_open_orders_match_a_model(steps: list[tuple[str, str, str]]) -> None:
    index = OpenOrders()
    model: dict[tuple[str, str], tuple[int, str]] = {}
    for seq, (venue, coid, state) in enumerate(steps, start=1):
        if state == "invalid":
            data = rec(coid, "open", venue=venue, side="up")
        elif state == "other":
            data = b'{"record": "position", "venue": "kraken"}'
        else:
            data = rec(coid, state, venue=venue, amount=str(seq))
            model[(venue, coid)] = (seq, state)
        index.apply(seq, data)
    for venue in ("kraken", "coinbase"):
        expected = sorted(((seq, coid) for (v, coid), (seq, state) in model.items()
                           if v == venue and state in OPEN_STATES))
        got = index.open_at(venue)
        assert [(int(r.amount), r.client_order_id) for r in got] == expected
    assert index.invalid == sum(1 for _, _, s in steps if s == "invalid")
    assert index.position == len(steps)


# --------------------------------------------------------------------------- open_orders snapshots


def _order(coid: str, **kw: object) -> dict:
    base = {"client_order_id": coid, "symbol": "BTC/USDT", "side": "buy", "amount": "0.5", "price": "43000.1",
            "state": "open"}
    base.update(kw)
    return base


def _snapshot(venue: str, items: list, **kw: object) -> bytes:
    return json.dumps({"record": "open_orders", "v": 1, "venue": venue, "orders": items, **kw}).encode()


def test_the_documented_snapshot_parses_and_replaces_the_venues_open_set() -> None:
    from daemon.venues.orders import OpenOrdersSnapshot, parse_journal_record

    snap = parse_journal_record(doc_snapshot_example())
    assert isinstance(snap, OpenOrdersSnapshot) and snap.venue == "kraken" and len(snap.orders) == 1
    assert parse_journal_record(snap.to_payload()) == snap  # round trip
    assert parse_order_record(doc_snapshot_example()) is None  # not an order record
    index = OpenOrders()
    index.apply(1, OrderRecord("old-1", "kraken", "BTC/USDT", "buy", Decimal("1"), None, "open").to_payload())
    index.apply(2, OrderRecord("cb-1", "coinbase", "BTC/USDC", "buy", Decimal("1"), None, "open").to_payload())
    index.apply(3, doc_snapshot_example())
    assert [o.client_order_id for o in index.open_at("kraken")] == ["mm-1"]  # old-1 replaced
    assert [o.client_order_id for o in index.open_at("coinbase")] == ["cb-1"]  # other venues untouched
    assert index.snapshots == {"kraken": 3}
    # later records apply on top
    index.apply(4, OrderRecord("mm-1", "kraken", "BTC/USDT", "buy", Decimal("0.5"), Decimal("43000.1"),
                               "filled").to_payload())
    assert index.open_at("kraken") == []
    index.apply(5, _snapshot("kraken", []))
    assert index.open_at("kraken") == [] and index.snapshots["kraken"] == 5
    index.reset()
    assert index.snapshots == {} and index.last_invalid_seq == 0


@pytest.mark.parametrize("payload, field", [
    (_snapshot("kraken", [_order("a", state="filled")]), "orders[0].state"),
    (_snapshot("kraken", [_order("a", amount="-1")]), "orders[0].amount"),
    (_snapshot("kraken", [_order("a", venue="coinbase")]), "orders[0].venue"),
    (_snapshot("kraken", [_order("a"), _order("a")]), "orders[1].client_order_id"),
    (_snapshot("kraken", ["x"]), "orders[0]"),
    (_snapshot("kraken", [{"record": "order", **_order("a")}]), "orders[0]"),
    (_snapshot("Kraken!", []), "venue"),
    (_snapshot("kraken", [], extra=1), "extra"),
    (json.dumps({"record": "open_orders", "v": 2, "venue": "kraken", "orders": []}).encode(), "v"),
    (json.dumps({"record": "open_orders", "v": 1, "venue": "kraken", "orders": {}}).encode(), "orders"),
    (b'{"record":"open_orders","v":1,"venue":"kraken","venue":"x","orders":[]}', "venue"),
])
def test_an_invalid_snapshot_names_the_field(payload: bytes, field: str) -> None:
    from daemon.venues.orders import parse_journal_record

    with pytest.raises(OrderRecordError) as info:
        parse_journal_record(payload)
    assert info.value.field == field
    index = OpenOrders()
    index.apply(7, payload)  # counted, never raised
    assert index.invalid == 1 and index.last_invalid_seq == 7 and index.snapshots == {}
