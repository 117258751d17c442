"""The journal's order record: the engine's contract for telling lifeline about its orders.

The trading engine writes one *order record* to the execution journal (the hot standby's
``journal.append``) every time one of its orders changes: when it decides to send it, when
the venue acknowledges it, on every fill, and when it ends. Lifeline folds these records
(:class:`OpenOrders`) into "what the engine believes is open at each venue". After a
failover the new primary compares that belief with what the venues really hold
(:mod:`daemon.venues.reconcile`) and cancels, adopts or reports the difference. An order
the engine never recorded is, to lifeline, an order nobody owns: under the default policy
(``cancel-orphans``) it is cancelled. Record every order, before sending it.

Format
======

One record is one journal payload: a single JSON object, UTF-8, on one line (no trailing
newline needed). Keys may come in any order, but ``"record"`` must be spelled literally
(no ``\\u`` escapes) because readers skip non-order payloads by looking for it
(:func:`looks_like_record`). Writers should produce the canonical form of
:meth:`OrderRecord.to_payload`: compact, ``"record"`` first, decimals as strings.

Required keys:

===================  ===========================  ==================================================
key                  type                         allowed values
===================  ===========================  ==================================================
``record``           string                       ``"order"`` (any other value: not an order record,
                                                  skipped; lifeline's readers ignore other kinds)
``v``                integer                      ``1`` (the format's version)
``client_order_id``  string                       the engine's own id for the order, 1 to 64 characters
                                                  from ``A-Z a-z 0-9 . _ : -``; unique per venue
``venue``            string                       a configured venue name (``[venues.NAME]``):
                                                  ``[a-z0-9_-]+``, e.g. ``"kraken"``
``symbol``           string                       the ccxt unified symbol, e.g. ``"BTC/USDT"``: not
                                                  empty, no whitespace, at most 100 characters
``side``             string                       ``"buy"`` or ``"sell"``
``amount``           decimal                      the order's size, above 0
``price``            decimal or ``null``          the limit price, above 0; ``null`` for a market order
``state``            string                       ``new``, ``open``, ``partially_filled`` (open states)
                                                  or ``filled``, ``cancelled``, ``rejected``, ``expired``
===================  ===========================  ==================================================

Optional keys (leave a key out rather than write ``null``; ``null`` is accepted and means
the same):

===================  ===========================  ==================================================
``venue_order_id``   string                       the venue's id for the order, once the venue answered
                                                  (1 to 128 printable ASCII characters, no space)
``type``             string                       the ccxt order type: ``"limit"``, ``"market"``, ...
                                                  (1 to 32 of ``A-Z a-z 0-9 . _ -``)
``filled``           decimal                      the size filled so far: at least 0, at most ``amount``
``epoch``            integer                      the lease epoch the order was placed under, >= 0
``time``             number                       when the engine wrote the record, Unix seconds, >= 0
``adopted``          boolean                      ``true`` on records lifeline wrote when it adopted a
                                                  venue order nobody had recorded (policy ``adopt``)
``average``          decimal                      the average price of the fills so far (cumulative, as
                                                  ``filled``); the risk gate prices each fill from it
                                                  (needed for a market order, whose ``price`` is null)
===================  ===========================  ==================================================

*Fills* (the risk gate, :mod:`daemon.guard.book`): a fill is the increase of ``filled``
between an order's records; it is priced from ``average`` when given, else ``price``.

*Decimals* are written as JSON strings in plain decimal notation (``"0.5"``,
``"43000.1"``, ``"0.00000001"``); exponents (``"1e-8"``) are read too. A JSON number is
accepted if it is finite (``0.5``), but a string is exact and a binary float is not, so
write strings. A decimal may have at most 30 digits after the point and must be below
1e30. ``NaN`` and ``Infinity`` are refused. Integers (``v``, ``epoch``) must be JSON
integers, not ``true``/``false`` and not ``1.0``.

Unknown keys are refused, and so is a key written twice: a typo must not pass as
"optional key absent".

Identity, supersession, "open"
==============================

An order is identified by ``(venue, client_order_id)``. Each record is a *complete
snapshot* of the order, not a delta: a later record for the same pair replaces the earlier
one entirely (journal order is the truth; nothing is merged). So repeat every key you want
kept: once the venue's id is known, write ``venue_order_id`` on every later record too.

An order is *open* while its latest record's state is ``new``, ``open`` or
``partially_filled`` (:data:`OPEN_STATES`); ``new`` means "decided, maybe sent, not yet
acknowledged": the venue may or may not have it, and reconciliation treats it as the
engine's. A record in ``filled``, ``cancelled``, ``rejected`` or ``expired``
(:data:`CLOSED_STATES`) closes the order: it leaves the open set. A later open record for
the same pair (an engine bug, usually) would open it again: the journal is believed.

Reconciliation matches a venue's order to a record by ``venue_order_id`` or by
``client_order_id`` (when the venue reports the client id the engine sent), so an open
order with neither known to the venue is reported "missing", and a venue order matching
neither id of any open record is an orphan.

Example: one limit buy on Kraken, from decision to full fill (four journal payloads)::

    {"record":"order","v":1,"client_order_id":"mm-20240114-0001","venue":"kraken","symbol":"BTC/USDT","side":"buy","amount":"0.5","price":"43000.1","state":"new","type":"limit","epoch":7,"time":1705260203.583}
    {"record":"order","v":1,"client_order_id":"mm-20240114-0001","venue":"kraken","symbol":"BTC/USDT","side":"buy","amount":"0.5","price":"43000.1","state":"open","venue_order_id":"OXCZ7B-EMVZQ-MTJTQJ","type":"limit","filled":"0","epoch":7,"time":1705260203.912}
    {"record":"order","v":1,"client_order_id":"mm-20240114-0001","venue":"kraken","symbol":"BTC/USDT","side":"buy","amount":"0.5","price":"43000.1","state":"partially_filled","venue_order_id":"OXCZ7B-EMVZQ-MTJTQJ","type":"limit","filled":"0.2","epoch":7,"time":1705260210.004}
    {"record":"order","v":1,"client_order_id":"mm-20240114-0001","venue":"kraken","symbol":"BTC/USDT","side":"buy","amount":"0.5","price":"43000.1","state":"filled","venue_order_id":"OXCZ7B-EMVZQ-MTJTQJ","type":"limit","filled":"0.5","epoch":7,"time":1705260215.25}

After the first three the order is open at kraken (the third supersedes the second);
after the fourth it is not.

Snapshots of open orders
========================

The journal keeps only its newest segments (``[standby.journal]`` retention). An order
whose records were all removed is unknown to a daemon that reads the journal from its
start after a restart, so lifeline does not cancel or adopt anything at a venue until it
has a complete view of it. The engine gives it one by writing, from time to time (every
few minutes, and when it starts), one *snapshot record* per venue listing **every** order
it believes open there::

    {"record":"open_orders","v":1,"venue":"kraken","orders":[{"client_order_id":"mm-1","symbol":"BTC/USDT","side":"buy","amount":"0.5","price":"43000.1","state":"open","venue_order_id":"OXCZ7B-EMVZQ-MTJTQJ"}],"time":1705260300.0}

``orders`` holds order objects with the keys of an order record except ``record`` and
``v`` (``venue`` may be left out: it is the snapshot's), each in an open state; an empty
list says "nothing open". Folding a snapshot replaces everything open at that venue with
its list; records after it apply on top as usual. A snapshot after the missing part of
the journal (or after an invalid order record) makes that venue's view complete again.
``time`` and ``epoch`` are optional, as on order records.

Errors
======

:func:`parse_order_record` returns ``None`` for anything that is not an order record (not
JSON, not an object, no ``"record"`` key, or another kind of record). A payload that *is*
one (``"record": "order"``) but breaks a rule raises :class:`OrderRecordError`, whose
message names the field, shows what was found (cut to 40 characters) and says what the
engine must write instead::

    amount: expected a positive decimal string such as "0.5", found -1; the engine must write the order's size

:class:`OpenOrders` counts such records (``invalid``) and keeps the last message
(``last_error``) instead of raising: a bad record must not stop the index. An invalid
record is ignored, so if it was an order's first record lifeline does not know that order;
watch ``invalid``.

Sans-IO: nothing here reads a clock or a file.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from daemon.venues.errors import VenueError

FORMAT_VERSION = 1
RECORD_KIND = "order"
SNAPSHOT_KIND = "open_orders"
_SNAPSHOT_KEYS: tuple[str, ...] = ("record", "v", "venue", "orders", "time", "epoch")
OPEN_STATES = frozenset({"new", "open", "partially_filled"})
CLOSED_STATES = frozenset({"filled", "cancelled", "rejected", "expired"})
#: Every state, in an order's life order (for messages).
STATES: tuple[str, ...] = ("new", "open", "partially_filled", "filled", "cancelled", "rejected", "expired")
SIDES: tuple[str, ...] = ("buy", "sell")

CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)
VENUE_NAME = re.compile(r"[a-z0-9_-]+", re.ASCII)
VENUE_ORDER_ID = re.compile(r"[!-~]{1,128}", re.ASCII)  # printable ASCII, no space
ORDER_TYPE = re.compile(r"[A-Za-z0-9._-]{1,32}", re.ASCII)
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
#: Decimals: below 1e30, at most 30 digits after the point.
MAX_DECIMAL_DIGITS = 30
#: Found values are shown cut to this many characters.
MAX_FOUND = 40

_REQUIRED: tuple[str, ...] = ("client_order_id", "venue", "symbol", "side", "amount", "price", "state")
_OPTIONAL: tuple[str, ...] = ("venue_order_id", "type", "filled", "epoch", "time", "adopted", "average")
_KEYS: tuple[str, ...] = ("record", "v") + _REQUIRED + _OPTIONAL

#: What the engine must do, per field (the part of a message after the ";").
_FIX: dict[str, str] = {
    "record": 'write "record": "order" on order records',
    "v": 'write "v": 1 (the only version of this format)',
    "client_order_id": "the engine must write its own id for the order: 1-64 characters of A-Z a-z 0-9 . _ : -",
    "venue": 'the engine must write the configured venue name, e.g. "kraken"',
    "symbol": 'the engine must write the ccxt unified symbol, e.g. "BTC/USDT"',
    "side": 'the engine must write "buy" or "sell"',
    "amount": "the engine must write the order's size",
    "price": "the engine must write the limit price, or null for a market order",
    "state": "the engine must write one of " + ", ".join(STATES),
    "venue_order_id": "write the venue's id for the order, or leave the key out until the venue has answered",
    "type": 'write the ccxt order type such as "limit", or leave the key out',
    "filled": 'write the size filled so far such as "0.25" ("0" when nothing is), or leave the key out',
    "epoch": "write the lease epoch the order was placed under, or leave the key out",
    "time": "write when the record was written in Unix seconds, or leave the key out",
    "adopted": "write true or false, or leave the key out (it means false)",
    "average": 'write the average fill price so far such as "43000.1", or leave the key out',
}


class OrderRecordError(VenueError, ValueError):
    """An order record breaks the format. The message is ``"<field>: <problem>; <fix>"``;
    ``field`` names the offending key."""

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix if fix is not None else _FIX.get(field, "see daemon/venues/orders.py for the format")
        super().__init__(f"{field}: {problem}; {self.fix}")


def shown(value: Any) -> str:
    """A found value as an error shows it: its JSON spelling, cut to :data:`MAX_FOUND`."""
    if isinstance(value, Decimal):
        text = str(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_FOUND else text[: MAX_FOUND - 1] + "…"


# --------------------------------------------------------------------------- field checks


def _decimal(name: str, value: Any, *, example: str, allow_zero: bool) -> Decimal:
    what = ("a decimal string of at least 0" if allow_zero else "a positive decimal string") + f' such as "{example}"'
    if isinstance(value, bool) or value is None:
        raise OrderRecordError(name, f"expected {what}, found {shown(value)}")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise OrderRecordError(name, f"expected {what}, found {shown(value)}")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):
            raise OrderRecordError(name, f"expected {what}, found {shown(value)}")
        try:
            number = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
            raise OrderRecordError(name, f"expected {what}, found {shown(value)}") from None
    else:
        raise OrderRecordError(name, f"expected {what}, found {shown(value)}")
    if not number.is_finite() or number < 0 or (number == 0 and not allow_zero):
        raise OrderRecordError(name, f"expected {what}, found {shown(value)}")
    if number != 0 and (number.adjusted() >= 30 or -int(number.as_tuple().exponent) > MAX_DECIMAL_DIGITS):
        raise OrderRecordError(name, f"expected {what} below 1e30 with at most {MAX_DECIMAL_DIGITS} decimal "
                                     f"places, found {shown(value)}")
    return number


def _string(name: str, value: Any, pattern: re.Pattern[str], expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise OrderRecordError(name, f"expected {expected}, found {shown(value)}")
    return value


def _symbol(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value) or len(value) > 100 \
            or not value.isprintable():
        raise OrderRecordError("symbol", f"expected a symbol such as \"BTC/USDT\" without spaces, found {shown(value)}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(f'"{a}"' for a in allowed)
        raise OrderRecordError(name, f"expected one of {listed}, found {shown(value)}")
    return value


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OrderRecordError(name, f"expected an integer of at least {minimum}, found {shown(value)}")
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise OrderRecordError("time", f"expected Unix seconds as a number such as 1705260203.583, "
                                       f"found {shown(value)}")
    return float(value)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class OrderRecord:
    """One order as the engine last recorded it. Constructing one validates (and
    normalises: decimals to :class:`~decimal.Decimal`, ``time`` to float) every field, so
    :meth:`to_payload` always writes a record :func:`parse_order_record` accepts."""

    client_order_id: str
    venue: str
    symbol: str
    side: str
    amount: Decimal
    price: Decimal | None
    state: str
    venue_order_id: str | None = None
    type: str | None = None
    filled: Decimal | None = None
    epoch: int | None = None
    time: float | None = None
    adopted: bool = False
    average: Decimal | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        _string("client_order_id", self.client_order_id, CLIENT_ORDER_ID,
                'an id of 1-64 characters from A-Z a-z 0-9 . _ : - such as "mm-1"')
        _string("venue", self.venue, VENUE_NAME, 'a venue name of a-z 0-9 _ - such as "kraken"')
        _symbol(self.symbol)
        _choice("side", self.side, SIDES)
        put("amount", _decimal("amount", self.amount, example="0.5", allow_zero=False))
        if self.price is not None:
            put("price", _decimal("price", self.price, example="43000.1", allow_zero=False))
        _choice("state", self.state, STATES)
        if self.venue_order_id is not None:
            _string("venue_order_id", self.venue_order_id, VENUE_ORDER_ID,
                    'the venue\'s order id (1-128 printable characters, no spaces) such as "OXCZ7B-EMVZQ-MTJTQJ"')
        if self.type is not None:
            _string("type", self.type, ORDER_TYPE,
                    'an order type of 1-32 characters from A-Z a-z 0-9 . _ - such as "limit"')
        if self.filled is not None:
            filled = _decimal("filled", self.filled, example="0.25", allow_zero=True)
            if filled > self.amount:
                raise OrderRecordError("filled", f"expected at most the amount {self.amount}, found {shown(filled)}")
            put("filled", filled)
        if self.epoch is not None:
            _integer("epoch", self.epoch, 0)
        if self.time is not None:
            put("time", _time(self.time))
        if self.average is not None:
            put("average", _decimal("average", self.average, example="43000.1", allow_zero=False))
        if not isinstance(self.adopted, bool):
            raise OrderRecordError("adopted", f"expected true or false, found {shown(self.adopted)}")

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def key(self) -> tuple[str, str]:
        """The order's identity: ``(venue, client_order_id)``."""
        return (self.venue, self.client_order_id)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON object: ``record`` and ``v`` first, decimals as plain-notation
        strings, optional fields that are ``None`` (and ``adopted`` when false) left out."""
        out: dict[str, Any] = {"record": RECORD_KIND, "v": FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _OPTIONAL and (value is None or (f.name == "adopted" and value is False)):
                continue
            out[f.name] = format_decimal(value) if isinstance(value, Decimal) else value
        return out

    def to_payload(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")

    def describe(self) -> str:
        """``"kraken mm-1 buy 0.5 BTC/USDT @ 43000.1 (open)"`` for logs and reports."""
        price = "market" if self.price is None else format_decimal(self.price)
        return (f"{self.venue} {self.client_order_id} {self.side} {format_decimal(self.amount)} {self.symbol} "
                f"@ {price} ({self.state})")


def format_decimal(value: Decimal) -> str:
    """Plain notation, no exponent: ``Decimal("1E-8")`` -> ``"0.00000001"``."""
    text = format(value, "f")
    return "0" if text in ("-0", "+0") else text


# --------------------------------------------------------------------------- parsing

_JSON_SPACE = b" \t\r\n"


def looks_like_record(payload: bytes) -> bool:
    """A cheap prefilter for journal payloads: the first non-space byte is ``{`` and the
    bytes ``"record"`` occur. False means "certainly not an order record"."""
    stripped = bytes(payload).lstrip(_JSON_SPACE)
    return stripped[:1] == b"{" and b'"record"' in stripped


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _constant(name: str) -> float:
    """JSON's non-standard NaN / Infinity / -Infinity: parsed as floats so that the field
    check refuses them with the field's name (rather than calling the payload "not JSON")."""
    return float(name)


@dataclass(frozen=True)
class OpenOrdersSnapshot:
    """Every order the engine believes open at ``venue`` (a ``"record": "open_orders"``)."""

    venue: str
    orders: tuple[OrderRecord, ...]
    time: float | None = None
    epoch: int | None = None

    def to_payload(self) -> bytes:
        data: dict[str, Any] = {"record": SNAPSHOT_KIND, "v": FORMAT_VERSION, "venue": self.venue,
                                "orders": [{k: v for k, v in o.to_dict().items() if k not in ("record", "v")}
                                           for o in self.orders]}
        if self.time is not None:
            data["time"] = self.time
        if self.epoch is not None:
            data["epoch"] = self.epoch
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def snapshot_from_dict(data: dict[str, Any]) -> OpenOrdersSnapshot:
    """Validate a decoded ``"record": "open_orders"`` object; OrderRecordError names the
    field (``orders[2].amount``) and the fix."""
    if data.get("v") != FORMAT_VERSION or isinstance(data.get("v"), bool):
        raise OrderRecordError("v", f"expected 1, found {shown(data.get('v'))}")
    for key in data:
        if key not in _SNAPSHOT_KEYS:
            raise OrderRecordError(shown(key).strip('"'), "unknown key in an open_orders snapshot",
                                   f"the keys are {', '.join(_SNAPSHOT_KEYS)}")
    venue = _string("venue", data.get("venue"), VENUE_NAME, 'a venue name of a-z 0-9 _ - such as "kraken"')
    orders = data.get("orders")
    if not isinstance(orders, list):
        raise OrderRecordError("orders", f"expected a list of open orders, found {shown(orders)}",
                               "write every order open at the venue ([] when none is)")
    out: list[OrderRecord] = []
    seen: set[str] = set()
    for i, item in enumerate(orders):
        where = f"orders[{i}]"
        if not isinstance(item, dict):
            raise OrderRecordError(where, f"expected an order object, found {shown(item)}")
        if "record" in item or "v" in item:
            raise OrderRecordError(where, 'an order inside a snapshot has no "record" or "v"', "leave them out")
        body = dict(item)
        if body.setdefault("venue", venue) != venue:
            raise OrderRecordError(f"{where}.venue", f"expected {venue!r} (the snapshot's venue), "
                                   f"found {shown(body['venue'])}")
        try:
            record = order_record_from_dict({"record": RECORD_KIND, "v": FORMAT_VERSION, **body})
        except OrderRecordError as exc:
            raise OrderRecordError(f"{where}.{exc.field}", exc.problem, exc.fix) from None
        if not record.is_open:
            raise OrderRecordError(f"{where}.state", f"expected an open state, found {shown(record.state)}",
                                   "a snapshot lists open orders only (new, open, partially_filled)")
        if record.client_order_id in seen:
            raise OrderRecordError(f"{where}.client_order_id", f"{record.client_order_id!r} is listed twice")
        seen.add(record.client_order_id)
        out.append(record)
    time = _time(data["time"]) if data.get("time") is not None else None
    epoch = _integer("epoch", data["epoch"], 0) if data.get("epoch") is not None else None
    return OpenOrdersSnapshot(venue, tuple(out), time, epoch)


def parse_journal_record(payload: bytes) -> OrderRecord | OpenOrdersSnapshot | None:
    """An order record, an open-orders snapshot, or ``None`` (anything else); raises
    :class:`OrderRecordError` for an invalid one of the two."""
    record = parse_order_record(payload)
    if record is not None or b'"open_orders"' not in bytes(payload):
        return record
    try:
        data = json.loads(bytes(payload).decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_constant)
    except _Duplicate as dup:
        raise OrderRecordError(shown(dup.key).strip('"'), "the key appears more than once", "write each key once")
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record") != SNAPSHOT_KIND:
        return None
    return snapshot_from_dict(data)


def parse_order_record(payload: bytes) -> OrderRecord | None:
    """The order record in ``payload``; ``None`` when the payload is not an order record
    (not UTF-8 JSON, not an object, ``"record"`` absent or another kind); raises
    :class:`OrderRecordError` when it claims ``"record": "order"`` but breaks a rule."""
    if not looks_like_record(payload):
        return None
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return None
    duplicate: str | None = None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant)
    except _Duplicate as dup:
        duplicate = dup.key
        try:  # Is it an order record at all? Parse again, keeping the last value of each key.
            data = json.loads(text, parse_constant=_constant)
        except (ValueError, RecursionError):  # pragma: no cover - it parsed the first time
            return None
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record") != RECORD_KIND:
        return None
    if duplicate is not None:
        raise OrderRecordError(shown(duplicate).strip('"'), "the key appears more than once",
                               "write each key once (a later value must not silently replace an earlier one)")
    return order_record_from_dict(data)


def order_record_from_dict(data: dict[str, Any]) -> OrderRecord:
    """Validate a decoded order record (``data["record"] == "order"``) and build it."""
    version = data.get("v")
    if "v" not in data:
        raise OrderRecordError("v", "missing")
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise OrderRecordError("v", f"expected 1, found {shown(version)}")
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise OrderRecordError(shown(key).strip('"'), "unknown key",
                                   f"{hint}the keys are {', '.join(_KEYS)}")
    for key in _REQUIRED:
        if key not in data:
            raise OrderRecordError(key, "missing")
    # An optional key written as null means the same as the key left out.
    kwargs = {k: v for k, v in data.items() if k not in ("record", "v") and not (k in _OPTIONAL and v is None)}
    return OrderRecord(**kwargs)


# --------------------------------------------------------------------------- the index


@dataclass
class OpenOrders:
    """The journal's view of open orders, folded record by record in journal order.

    :meth:`apply` each journal record (``seq`` increasing); the latest record of an order
    replaces the earlier one; an order whose latest record is closed leaves the index
    (memory stays proportional to what is open). Payloads that are not order records are
    skipped; invalid order records are counted (``invalid``, ``last_error``) and skipped.
    """

    position: int = 0  # last journal seq applied (0 = none)
    invalid: int = 0
    last_invalid_seq: int = 0
    #: venue -> the seq of its latest open_orders snapshot
    snapshots: dict[str, int] = field(default_factory=dict)
    applied: int = 0  # order records applied
    last_error: str | None = None
    _open: dict[tuple[str, str], tuple[int, OrderRecord]] = field(default_factory=dict, repr=False)

    def apply(self, seq: int, payload: bytes) -> OrderRecord | None:
        """Fold the journal record ``seq``; return the order record it held, or ``None``
        (not an order record, or an invalid one). ``seq`` must be after :attr:`position`:
        a journal that was cut and rewritten needs :meth:`reset` and a fold from the start."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq <= self.position:
            raise ValueError(f"seq: expected a journal seq after position {self.position}, found {seq!r}; "
                             "records are applied once, in journal order (reset() and fold again after "
                             "the journal was cut)")
        self.position = seq
        try:
            record = parse_journal_record(payload)
        except OrderRecordError as exc:
            self.invalid += 1
            self.last_invalid_seq = seq
            self.last_error = f"seq {seq}: {exc}"
            return None
        if record is None:
            return None
        if isinstance(record, OpenOrdersSnapshot):
            for key in [k for k in self._open if k[0] == record.venue]:
                del self._open[key]
            for order in record.orders:
                self._open[order.key] = (seq, order)
            self.snapshots[record.venue] = seq
            return None
        self.applied += 1
        key = record.key
        self._open.pop(key, None)  # re-inserted at the end: the dict stays in journal order
        if record.is_open:
            self._open[key] = (seq, record)
        return record

    def open_at(self, venue: str) -> list[OrderRecord]:
        """The orders open at ``venue``, in the journal order of their latest record."""
        return [record for (v, _), (_, record) in self._open.items() if v == venue]

    def get(self, venue: str, client_order_id: str) -> OrderRecord | None:
        """The open order ``(venue, client_order_id)``, or ``None`` (unknown or closed)."""
        entry = self._open.get((venue, client_order_id))
        return entry[1] if entry is not None else None

    def venues(self) -> list[str]:
        """The venues with at least one open order, sorted."""
        return sorted({v for v, _ in self._open})

    def __len__(self) -> int:
        return len(self._open)

    def reset(self) -> None:
        self.position = 0
        self.invalid = 0
        self.last_invalid_seq = 0
        self.snapshots.clear()
        self.applied = 0
        self.last_error = None
        self._open.clear()


def parse_for_append(payload: bytes, /, venues: Collection[str], *,
                     epoch: int | None = None) -> OrderRecord | OpenOrdersSnapshot | None:
    """The order-record check on the journal's append path, parsing once (the risk gate reads
    what it returns): the order record or snapshot in ``payload``, None for any other
    payload; :class:`OrderRecordError` for an invalid one or one naming a venue not in
    ``venues`` (any venue when none are configured).

    ``epoch``: the lease epoch this primary holds. A ``new`` order record whose ``epoch`` is
    another one comes from an engine still following a deposed primary (or not yet the new
    one): refused, so that order is never sent. A record without ``epoch`` passes (older
    engines; reconciliation reports its orders as "epoch unknown"); later states of an order
    keep the epoch it was placed under and pass too."""
    if not looks_like_record(payload):
        return None
    record = parse_journal_record(payload)
    if record is not None and venues and record.venue not in venues:
        raise OrderRecordError("venue", f"{record.venue!r} is not a configured venue ({', '.join(venues)})",
                               "write the [venues.NAME] name")
    if (isinstance(record, OrderRecord) and epoch is not None and record.state == "new"
            and record.epoch is not None and record.epoch != epoch):
        raise OrderRecordError("epoch", f"a new order placed under lease epoch {record.epoch}, but this primary "
                               f"holds epoch {epoch}: the engine follows a stale role",
                               "do not send it, read role.watch again and write the epoch it names")
    return record


def check_payload(payload: bytes, /, venues: Collection[str], *, epoch: int | None = None) -> str | None:
    """The order-record check on the journal's append path (:func:`parse_for_append`): None
    if ``payload`` may be written, else the problem, one line."""
    try:
        parse_for_append(payload, venues, epoch=epoch)
    except OrderRecordError as exc:
        return str(exc)
    return None
