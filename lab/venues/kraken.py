"""Kraken, emulated (sans-IO): the routes ccxt's sync client calls, the API-Key check,
its open orders, AddOrder (a limit order rests open until cancelled; a reference engine trades
on it), CancelOrder/CancelOrderBatch/CancelAll and the dead-man switch (CancelAllOrdersAfter)."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from lab.venues.faults import Fault
from lab.venues.messages import InputError, Request, Response, json_response
from lab.venues.recorded import recorded_body
from lab.venues.venue import Now, Venue, decimal_text, iso, log, simple_order

# Hand-written (not recorded): the minimal Assets answer ccxt's fetch_currencies needs for
# the fixtures' currencies. Field names as in Kraken's GET /0/public/Assets; decimals are
# Kraken's published values at the time of writing, approximately.
KRAKEN_ASSETS: dict[str, dict[str, Any]] = {
    "ADA": {"aclass": "currency", "altname": "ADA", "decimals": 8, "display_decimals": 6, "status": "enabled"},
    "USDT": {"aclass": "currency", "altname": "USDT", "decimals": 8, "display_decimals": 4, "status": "enabled"},
    "XLTC": {"aclass": "currency", "altname": "LTC", "decimals": 10, "display_decimals": 5, "status": "enabled"},
    "XXBT": {"aclass": "currency", "altname": "XBT", "decimals": 10, "display_decimals": 5, "status": "enabled"},
    "XXRP": {"aclass": "currency", "altname": "XRP", "decimals": 8, "display_decimals": 5, "status": "enabled"},
    "ZUSD": {"aclass": "currency", "altname": "USD", "decimals": 4, "display_decimals": 2, "status": "enabled"},
}


def _kraken_pair(altname: str, wsname: str, base: str, quote: str, pair_decimals: int, ordermin: str,
                 leverage: list[int]) -> dict[str, Any]:
    return {"altname": altname, "wsname": wsname, "aclass_base": "currency", "base": base,
            "aclass_quote": "currency", "quote": quote, "lot": "unit", "cost_decimals": 5,
            "pair_decimals": pair_decimals, "lot_decimals": 8, "lot_multiplier": 1,
            "leverage_buy": leverage, "leverage_sell": leverage,
            "fees": [[0, 0.26], [50000, 0.24]], "fees_maker": [[0, 0.16], [50000, 0.14]],
            "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40, "ordermin": ordermin,
            "costmin": "0.5", "tick_size": str(Decimal(1).scaleb(-pair_decimals)), "status": "online"}


# Hand-written (not recorded): AssetPairs entries for the pairs the recorded answers use
# (XBTUSDT: ticker; LTCUSDT, XRPUSD: open orders; ADAUSDT: positions). Keys are Kraken's
# pair ids, ``altname`` is what orders and positions quote. Values approximate.
KRAKEN_PAIRS: dict[str, dict[str, Any]] = {
    "XBTUSDT": _kraken_pair("XBTUSDT", "XBT/USDT", "XXBT", "USDT", 1, "0.0001", [2, 3]),
    "LTCUSDT": _kraken_pair("LTCUSDT", "LTC/USDT", "XLTC", "USDT", 2, "0.05", [2, 3]),
    "XXRPZUSD": _kraken_pair("XRPUSD", "XRP/USD", "XXRP", "ZUSD", 5, "10", [2, 3, 4, 5]),
    "ADAUSDT": _kraken_pair("ADAUSDT", "ADA/USDT", "ADA", "USDT", 6, "10", [2, 3]),
}
#: Unified symbol → (pair id, altname), following ccxt's currency codes.
KRAKEN_SYMBOLS = {"BTC/USDT": ("XBTUSDT", "XBTUSDT"), "LTC/USDT": ("LTCUSDT", "LTCUSDT"),
                  "XRP/USD": ("XXRPZUSD", "XRPUSD"), "ADA/USDT": ("ADAUSDT", "ADAUSDT")}
KRAKEN_ALTNAME_SYMBOL = {alt: sym for sym, (_, alt) in KRAKEN_SYMBOLS.items()}

# Hand-written (no recorded balance exists): a small account.
KRAKEN_BALANCE = {"ZUSD": {"balance": "10000.0000", "hold_trade": "0.0000"},
                  "USDT": {"balance": "5000.00000000", "hold_trade": "0.00000000"},
                  "XXBT": {"balance": "0.5000000000", "hold_trade": "0.0000000000"},
                  "XLTC": {"balance": "1.0000000000", "hold_trade": "0.0000000000"}}


def _kraken_order_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    chars = "".join(secrets.choice(alphabet) for _ in range(16))
    return f"O{chars[:5]}-{chars[5:10]}-{chars[10:16]}"


class KrakenVenue(Venue):
    name = "kraken"
    has_deadman = True
    #: Kraken's nonce rule, when set: a private request's ``nonce`` must be above the last one
    #: accepted for the key, or (a key's "nonce window") within this much below it; else
    #: ``EAPI:Invalid nonce``. ``None``: not checked (the default, as before).
    nonce_window: int | None = None
    last_nonce: int = 0
    invalid_nonces: int = 0

    def route(self, request: Request, now: Now) -> Response:
        if self.nonce_window is not None and request.path.startswith("/0/private/"):
            text = request.param("nonce") or ""
            nonce = int(text) if text.isdigit() else -1
            if nonce < 0 or (nonce <= self.last_nonce and nonce <= self.last_nonce - self.nonce_window):
                self.invalid_nonces += 1
                return self.fail("EAPI:Invalid nonce")
            self.last_nonce = max(self.last_nonce, nonce)
        return super().route(request, now)

    def state(self, now: float | None) -> dict[str, Any]:
        out = super().state(now)
        out["nonces"] = {"window": self.nonce_window, "last": self.last_nonce, "invalid": self.invalid_nonces}
        return out

    def __init__(self, recorded: dict[str, list[dict[str, Any]]], api_key: str | None) -> None:
        super().__init__(recorded, api_key)
        pub, priv = frozenset({"GET", "POST"}), frozenset({"POST"})
        self.routes = [
            (pub, "/0/public/Time", self.time, False),
            (pub, "/0/public/SystemStatus", self.system_status_answer, False),
            (pub, "/0/public/Assets", self.assets, False),
            (pub, "/0/public/AssetPairs", self.asset_pairs, False),
            (pub, "/0/public/Ticker", self.ticker, False),
            (priv, "/0/private/Balance", self.balance, True),
            (priv, "/0/private/BalanceEx", self.balance_ex, True),
            (priv, "/0/private/OpenOrders", self.open_orders, True),
            (priv, "/0/private/QueryOrders", self.query_orders, True),
            (priv, "/0/private/OpenPositions", self.open_positions, True),
            (priv, "/0/private/AddOrder", self.add_order, True),
            (priv, "/0/private/CancelOrder", self.cancel_order, True),
            (priv, "/0/private/CancelOrderBatch", self.cancel_order_batch, True),
            (priv, "/0/private/CancelAll", self.cancel_all_orders, True),
            (priv, "/0/private/CancelAllOrdersAfter", self.cancel_all_orders_after, True),
        ]

    @staticmethod
    def ok(result: Any) -> Response:
        return json_response({"error": [], "result": result})

    @staticmethod
    def fail(*errors: str, status: int = 200) -> Response:
        return json_response({"error": list(errors)}, status)

    def seed_orders(self) -> dict[str, dict[str, Any]]:
        orders: dict[str, dict[str, Any]] = {}
        for case in self.recorded.get("fetchOpenOrders", []):
            for order_id, raw in case["httpResponse"]["result"]["open"].items():
                orders[order_id] = copy.deepcopy(raw)
        return orders

    def order_from_spec(self, spec: Mapping[str, Any], now: float) -> tuple[str, dict[str, Any]]:
        if "raw" in spec:
            raw = spec["raw"]
            if not isinstance(raw, Mapping) or not isinstance(raw.get("descr"), Mapping):
                raise InputError("raw: expected a Kraken order object (with \"descr\"), as OpenOrders lists it")
            raw = copy.deepcopy(dict(raw))
            order_id = str(spec.get("id") or raw.pop("id", None) or _kraken_order_id())
            raw.pop("id", None)
            return order_id, raw
        symbol, side, amount = simple_order(spec, KRAKEN_SYMBOLS, "Kraken")
        price = None if spec.get("price") is None else decimal_text(spec["price"], "price")
        kind = spec.get("type") or ("limit" if price is not None else "market")
        if not isinstance(kind, str):
            raise InputError(f"type: {kind!r}; use e.g. \"limit\"")
        altname = KRAKEN_SYMBOLS[symbol][1]
        volume = f"{Decimal(amount):.8f}"
        raw: dict[str, Any] = {
            "refid": None, "userref": 0, "status": "open", "opentm": round(now, 4), "starttm": 0,
            "expiretm": 0,
            "descr": {"pair": altname, "type": side, "ordertype": kind, "price": price or "0", "price2": "0",
                      "leverage": "none", "order": f"{side} {volume} {altname} @ {kind} {price or ''}".rstrip(),
                      "close": ""},
            "vol": volume, "vol_exec": "0.00000000", "cost": "0.00000", "fee": "0.00000", "price": "0.00000",
            "stopprice": "0.00000", "limitprice": "0.00000", "misc": "", "oflags": "fciq"}
        if spec.get("client_order_id") is not None:
            raw["cl_ord_id"] = str(spec["client_order_id"])
        return str(spec.get("id") or _kraken_order_id()), raw

    def summary(self, order_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        descr = raw.get("descr") or {}
        pair = descr.get("pair")
        price = descr.get("price")
        return {"id": order_id, "client_order_id": raw.get("cl_ord_id"),
                "symbol": KRAKEN_ALTNAME_SYMBOL.get(pair, pair), "side": descr.get("type"),
                "type": descr.get("ordertype"), "amount": raw.get("vol"),
                "price": None if price in (None, "0", "") else price, "status": raw.get("status")}

    def mark_cancelled(self, raw: dict[str, Any], now: float) -> dict[str, Any]:
        closed = dict(raw, status="canceled", reason="User requested", closetm=round(now, 4))
        return closed

    def presented_key(self, request: Request) -> str | None:
        return request.headers.get("api-key")

    def auth_error(self) -> Response:
        return self.fail("EAPI:Invalid key")

    def error_response(self, fault: Fault) -> Response:
        default = {429: "EAPI:Rate limit exceeded", 401: "EAPI:Invalid key", 403: "EGeneral:Permission denied"}
        return self.fail(fault.message or default.get(fault.status, "EService:Unavailable"), status=fault.status)

    def exchange_error_response(self, fault: Fault) -> Response:
        return self.fail(fault.message or "EService:Deadline elapsed")

    def not_found(self, request: Request) -> Response:
        return json_response({"error": ["EGeneral:Unknown method"],
                              "emulator": f"venue-emulator: no kraken route for {request.method} {request.path}"},
                             404)

    # public
    def time(self, request: Request, now: Now) -> Response:
        return self.ok({"unixtime": int(now.wall), "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000",
                                                                            time.gmtime(now.wall))})

    def system_status_answer(self, request: Request, now: Now) -> Response:
        return self.ok({"status": self.system_status, "timestamp": iso(now.wall)})

    def assets(self, request: Request, now: Now) -> Response:
        wanted = request.param("asset")
        if wanted:
            names = wanted.split(",")
            unknown = [n for n in names if n not in KRAKEN_ASSETS]
            if unknown:
                return self.fail("EQuery:Unknown asset")
            return self.ok({n: KRAKEN_ASSETS[n] for n in names})
        return self.ok(KRAKEN_ASSETS)

    def asset_pairs(self, request: Request, now: Now) -> Response:
        wanted = request.param("pair")
        if wanted:
            by_alt = {p["altname"]: k for k, p in KRAKEN_PAIRS.items()}
            keys = [by_alt.get(n, n) for n in wanted.split(",")]
            if any(k not in KRAKEN_PAIRS for k in keys):
                return self.fail("EQuery:Unknown asset pair")
            return self.ok({k: KRAKEN_PAIRS[k] for k in keys})
        return self.ok(KRAKEN_PAIRS)

    def ticker(self, request: Request, now: Now) -> Response:
        recorded = recorded_body(self.recorded, "fetchTicker")
        tickers = recorded["result"]
        pairs = (request.param("pair") or "").split(",")
        if not pairs or any(p not in tickers for p in pairs):
            return self.fail("EQuery:Unknown asset pair")
        if set(pairs) == set(tickers):
            return json_response(recorded)  # the recorded body, as recorded
        return self.ok({p: tickers[p] for p in pairs})

    # private
    def balance(self, request: Request, now: Now) -> Response:
        return self.ok({k: v["balance"] for k, v in KRAKEN_BALANCE.items()})

    def balance_ex(self, request: Request, now: Now) -> Response:
        return self.ok(copy.deepcopy(KRAKEN_BALANCE))

    def open_orders(self, request: Request, now: Now) -> Response:
        wanted = request.param("cl_ord_id")
        orders = {i: o for i, o in self.orders.items() if wanted is None or o.get("cl_ord_id") == wanted}
        return self.ok({"open": copy.deepcopy(orders)})

    def query_orders(self, request: Request, now: Now) -> Response:
        known: dict[str, dict[str, Any]] = {}
        for case in self.recorded.get("fetchOrder", []):
            known.update(case["httpResponse"]["result"])
        known.update({c["id"]: c["raw"] for c in self.cancelled})
        known.update(self.orders)
        ids = [i for i in (request.param("txid") or "").split(",") if i]
        if not ids:
            return self.fail("EGeneral:Invalid arguments")
        found = {i: copy.deepcopy(known[i]) for i in ids if i in known}
        if not found:
            return self.fail("EOrder:Invalid order")
        return self.ok(found)

    def open_positions(self, request: Request, now: Now) -> Response:
        return json_response(recorded_body(self.recorded, "fetchPositions"))

    def _find(self, request: Request) -> str | None:
        txid = request.param("txid")
        if txid and txid in self.orders:
            return txid
        cid = request.param("cl_ord_id") or txid
        for order_id, raw in self.orders.items():
            if cid is not None and (raw.get("cl_ord_id") == cid or str(raw.get("userref")) == cid):
                return order_id
        return None

    def add_order(self, request: Request, now: Now) -> Response:
        """A new order: rests in the book, open, until cancelled (nothing fills here)."""
        pair = request.param("pair") or ""
        by_pair = {alt: sym for sym, (pid, alt) in KRAKEN_SYMBOLS.items()}
        by_pair.update({pid: sym for sym, (pid, _alt) in KRAKEN_SYMBOLS.items()})
        symbol = by_pair.get(pair)
        if symbol is None:
            return self.fail("EQuery:Unknown asset pair")
        cid = request.param("cl_ord_id")
        if cid is not None and any(o.get("cl_ord_id") == cid for o in self.orders.values()):
            return self.fail("EOrder:Duplicate order")
        spec = {"symbol": symbol, "side": request.param("type"), "amount": request.param("volume"),
                "price": request.param("price"), "type": request.param("ordertype") or "limit",
                "client_order_id": cid}
        try:
            order_id, raw = self.order_from_spec(spec, now.wall)
        except ValueError as exc:
            return self.fail(f"EGeneral:Invalid arguments:{exc}")
        self.orders[order_id] = raw
        log.debug("venue_emulator.order_added", venue=self.name, id=order_id, client_order_id=cid)
        return self.ok({"descr": {"order": raw["descr"]["order"]}, "txid": [order_id]})

    def cancel_order(self, request: Request, now: Now) -> Response:
        order_id = self._find(request)
        if order_id is None:
            return self.fail("EOrder:Unknown order")
        self.cancel(order_id, "CancelOrder", now.wall)
        return self.ok({"count": 1})

    def cancel_order_batch(self, request: Request, now: Now) -> Response:
        try:
            data = request.json() if request.headers.get("content-type", "").startswith("application/json") \
                else None
        except ValueError:
            data = None
        ids = data.get("orders") if isinstance(data, dict) else request.params().get("orders")
        if not isinstance(ids, list):
            return self.fail("EGeneral:Invalid arguments")
        count = sum(1 for i in ids if self.cancel(str(i), "CancelOrderBatch", now.wall))
        return self.ok({"count": count})

    def cancel_all_orders(self, request: Request, now: Now) -> Response:
        return self.ok({"count": self.cancel_all("CancelAll", now.wall)})

    def cancel_all_orders_after(self, request: Request, now: Now) -> Response:
        text = request.param("timeout")
        if text is None or not text.strip().isdigit() or int(text) > 86400:
            return self.fail("EGeneral:Invalid arguments:timeout")
        deadman = self.deadman
        deadman.arm(float(int(text)), now)
        log.debug("venue_emulator.deadman", venue=self.name, timeout=deadman.timeout, armed=deadman.timeout > 0)
        trigger = iso(deadman.trigger_wall) if deadman.deadline is not None and deadman.trigger_wall else "0"
        return self.ok({"currentTime": iso(now.wall), "triggerTime": trigger})

