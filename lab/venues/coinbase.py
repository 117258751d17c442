"""Coinbase, emulated (sans-IO): the v2 and Advanced Trade v3 routes ccxt's sync client
calls, the key check (CB-ACCESS-KEY or a CDP JWT's "kid"), its open orders and
orders/batch_cancel. Coinbase has no dead-man switch."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
from collections.abc import Mapping
from typing import Any

from lab.venues.faults import Fault
from lab.venues.messages import REASONS, InputError, Request, Response, json_response, text_response
from lab.venues.recorded import recorded_body
from lab.venues.venue import Now, Venue, decimal_text, iso, iso_ms, simple_order

# Hand-written (not recorded): minimal /v2/currencies, /v2/currencies/crypto and
# /v2/exchange-rates answers for the fixtures' currencies. ADA's and MASK's asset ids
# are the ones the recorded accounts carry; the other asset ids are obvious placeholders.
# Rates are rough (USD per unit inverted), for shape only.
COINBASE_FIAT = [{"id": "USD", "name": "United States Dollar", "min_size": "0.01"},
                 {"id": "EUR", "name": "Euro", "min_size": "0.01"}]
COINBASE_CRYPTO = [
    {"asset_id": "00000000-0000-4000-8000-000000000b7c", "code": "BTC", "name": "Bitcoin", "color": "#F7931A",
     "sort_index": "100", "exponent": "8", "type": "crypto", "address_regex": "^.+$"},
    {"asset_id": "63062039-7afb-56ff-8e19-5e3215dc404a", "code": "ADA", "name": "Cardano", "color": "#0033AD",
     "sort_index": "120", "exponent": "6", "type": "crypto", "address_regex": "^.+$"},
    {"asset_id": "45ce7f01-2962-5576-8dfd-449e4a49b75d", "code": "MASK", "name": "Mask Network",
     "color": "#1C68F3", "sort_index": "130", "exponent": "8", "type": "crypto", "address_regex": "^.+$"},
    {"asset_id": "00000000-0000-4000-8000-0000000005dc", "code": "USDC", "name": "USDC", "color": "#2775CA",
     "sort_index": "101", "exponent": "6", "type": "crypto", "address_regex": "^.+$"},
    {"asset_id": "00000000-0000-4000-8000-00000000057d", "code": "USDT", "name": "Tether", "color": "#22A079",
     "sort_index": "102", "exponent": "6", "type": "crypto", "address_regex": "^.+$"},
]
COINBASE_RATES = {"currency": "USD", "rates": {"USD": "1.0", "EUR": "0.92", "BTC": "0.0000150686",
                                               "ADA": "1.7677", "MASK": "0.30", "USDC": "1.0", "USDT": "1.0"}}


def _coinbase_product(product_id: str, base: str, quote: str, base_name: str, quote_name: str, price: str,
                      base_increment: str, quote_increment: str, base_min: str, base_max: str) -> dict[str, Any]:
    return {"product_id": product_id, "price": price, "price_percentage_change_24h": "0",
            "volume_24h": "0", "volume_percentage_change_24h": "0", "base_increment": base_increment,
            "quote_increment": quote_increment, "quote_min_size": "1", "quote_max_size": "10000000",
            "base_min_size": base_min, "base_max_size": base_max, "base_name": base_name,
            "quote_name": quote_name, "watched": False, "is_disabled": False, "new": False, "status": "online",
            "cancel_only": False, "limit_only": False, "post_only": False, "trading_disabled": False,
            "auction_mode": False, "product_type": "SPOT", "quote_currency_id": quote,
            "base_currency_id": base, "fcm_trading_session_details": None, "mid_market_price": "",
            "alias": "", "alias_to": [], "base_display_symbol": base, "quote_display_symbol": quote,
            "view_only": False, "price_increment": quote_increment, "display_name": product_id,
            "product_venue": "CBE"}


# Hand-written (not recorded): spot products for the recorded answers' markets
# (BTC-USDC: ticker; ADA-USDT: the closed order) and BTC-USD. Format as Coinbase's
# GET /api/v3/brokerage/market/products; sizes approximate.
COINBASE_PRODUCTS = [
    _coinbase_product("BTC-USDC", "BTC", "USDC", "Bitcoin", "USDC", "66363.03", "0.00000001", "0.01",
                      "0.00000001", "3400"),
    _coinbase_product("BTC-USD", "BTC", "USD", "Bitcoin", "US Dollar", "66363.03", "0.00000001", "0.01",
                      "0.00000001", "3400"),
    _coinbase_product("ADA-USDT", "ADA", "USDT", "Cardano", "Tether", "0.392", "0.01", "0.0001", "0.01",
                      "30224000"),
]
COINBASE_SYMBOLS = {f"{p['base_currency_id']}/{p['quote_currency_id']}": p["product_id"] for p in COINBASE_PRODUCTS}
COINBASE_PRODUCT_SYMBOL = {v: k for k, v in COINBASE_SYMBOLS.items()}

# Hand-written: the fee tier ccxt asks for when it has credentials (the example in
# ccxt's own source comment for transaction_summary).
COINBASE_TRANSACTION_SUMMARY = {
    "total_volume": 0, "total_fees": 0,
    "fee_tier": {"pricing_tier": "", "usd_from": "0", "usd_to": "10000", "taker_fee_rate": "0.006",
                 "maker_fee_rate": "0.004"},
    "margin_rate": None, "goods_and_services_tax": None, "advanced_trade_only_volume": 0,
    "advanced_trade_only_fees": 0, "coinbase_pro_volume": 0, "coinbase_pro_fees": 0}


def _open_coinbase_order(order: Mapping[str, Any]) -> dict[str, Any]:
    """A Coinbase order object as an OPEN limit order with nothing filled."""
    raw = copy.deepcopy(dict(order))
    raw.pop("cursor", None)
    config = next(iter((raw.get("order_configuration") or {}).values()), {})
    size = str(config.get("base_size") or config.get("quote_size") or "0")
    price = str(config.get("limit_price") or raw.get("average_filled_price") or "0")
    raw.update({
        "order_configuration": {"limit_limit_gtc": {"base_size": size, "limit_price": price, "post_only": False}},
        "status": "OPEN", "time_in_force": "GOOD_UNTIL_CANCELLED", "order_type": "LIMIT",
        "completion_percentage": "0", "filled_size": "0", "average_filled_price": "0", "number_of_fills": "0",
        "filled_value": "0", "total_fees": "0", "total_value_after_fees": "0", "settled": False,
        "last_fill_time": None, "outstanding_hold_amount": size if raw.get("side") == "SELL" else "0",
        "trigger_status": "INVALID_ORDER_TYPE", "pending_cancel": False})
    return raw


class CoinbaseVenue(Venue):
    name = "coinbase"

    def __init__(self, recorded: dict[str, list[dict[str, Any]]], api_key: str | None) -> None:
        super().__init__(recorded, api_key)
        get, post = frozenset({"GET"}), frozenset({"POST"})
        self.routes = [
            (get, "/v2/time", self.time_v2, False),
            (get, "/api/v3/brokerage/time", self.time_v3, False),
            (get, "/v2/currencies", lambda r, now: json_response({"data": COINBASE_FIAT}), False),
            (get, "/v2/currencies/crypto", lambda r, now: json_response({"data": COINBASE_CRYPTO}), False),
            (get, "/v2/exchange-rates", lambda r, now: json_response({"data": COINBASE_RATES}), False),
            (get, "/api/v3/brokerage/market/products", self.products, False),
            (get, "/api/v3/brokerage/market/products/*", self.product_ticker, False),
            (get, "/api/v3/brokerage/transaction_summary", lambda r, now: json_response(COINBASE_TRANSACTION_SUMMARY),
             True),
            (get, "/v2/accounts", self.accounts_v2, True),
            (get, "/api/v3/brokerage/accounts", self.accounts_v3, True),
            (get, "/api/v3/brokerage/orders/historical/batch", self.orders_batch, True),
            (post, "/api/v3/brokerage/orders/batch_cancel", self.batch_cancel, True),
            (get, "/api/v3/brokerage/cfm/positions", lambda r, now: json_response({"positions": []}), True),
            (get, "/api/v3/brokerage/intx/positions/*", self.intx_positions, True),
        ]

    def seed_orders(self) -> dict[str, dict[str, Any]]:
        orders: dict[str, dict[str, Any]] = {}
        for case in self.recorded.get("fetchClosedOrders", []):
            for order in case["httpResponse"].get("orders", []):
                raw = _open_coinbase_order(order)
                orders[raw["order_id"]] = raw
        return orders

    def order_from_spec(self, spec: Mapping[str, Any], now: float) -> tuple[str, dict[str, Any]]:
        if "raw" in spec:
            raw = spec["raw"]
            if not isinstance(raw, Mapping) or "product_id" not in raw:
                raise InputError("raw: expected a Coinbase order object (with \"product_id\"), as "
                                 "orders/historical/batch lists it")
            raw = copy.deepcopy(dict(raw))
            order_id = str(spec.get("id") or raw.get("order_id") or _uuid())
            raw["order_id"] = order_id
            return order_id, raw
        symbol, side, amount = simple_order(spec, COINBASE_SYMBOLS, "Coinbase")
        if spec.get("price") is None:
            raise InputError("price: an open Coinbase order needs a limit price")
        price = decimal_text(spec["price"], "price")
        order_id = str(spec.get("id") or _uuid())
        template = {"order_id": order_id, "product_id": COINBASE_SYMBOLS[symbol], "user_id": "venue-emulator",
                    "order_configuration": {"limit_limit_gtc": {"base_size": amount, "limit_price": price}},
                    "side": side.upper(), "client_order_id": str(spec.get("client_order_id") or _uuid()),
                    "created_time": iso_ms(now), "fee": "", "size_in_quote": False,
                    "size_inclusive_of_fees": False, "reject_reason": "REJECT_REASON_UNSPECIFIED",
                    "product_type": "SPOT", "reject_message": "", "cancel_message": "",
                    "order_placement_source": "RETAIL_ADVANCED", "is_liquidation": False, "edit_history": [],
                    "leverage": "", "margin_type": "UNKNOWN_MARGIN_TYPE"}
        return order_id, _open_coinbase_order(template)

    def summary(self, order_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        kind, config = next(iter((raw.get("order_configuration") or {}).items()), (None, {}))
        product = raw.get("product_id")
        return {"id": order_id, "client_order_id": raw.get("client_order_id"),
                "symbol": COINBASE_PRODUCT_SYMBOL.get(product, product),
                "side": str(raw.get("side", "")).lower() or None,
                "type": str(raw.get("order_type") or kind or "").lower() or None,
                "amount": config.get("base_size"), "price": config.get("limit_price"), "status": raw.get("status")}

    def mark_cancelled(self, raw: dict[str, Any], now: float) -> dict[str, Any]:
        return dict(raw, status="CANCELLED", outstanding_hold_amount="0")

    def presented_key(self, request: Request) -> str | None:
        key = request.headers.get("cb-access-key")
        if key is not None:
            return key
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):  # a CDP JWT: the key name is the header's "kid"
            try:
                header = auth[7:].split(".")[0]
                return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid")
            except (ValueError, binascii.Error, AttributeError):
                return None
        return None

    def auth_error(self) -> Response:
        return json_response({"errors": [{"id": "authentication_error", "message": "invalid api key"}]}, 401)

    def error_response(self, fault: Fault) -> Response:
        if fault.status == 429:
            return json_response({"errors": [{"id": "rate_limit_exceeded",
                                              "message": fault.message or "Too many requests"}]}, 429)
        if fault.status == 401:
            return self.auth_error()
        return text_response(f"{fault.status} {fault.message or REASONS.get(fault.status, 'Error')}\n", fault.status)

    def exchange_error_response(self, fault: Fault) -> Response:
        text = fault.message or "venue-emulator exchange_error"
        return json_response({"success": False, "error_response": {
            "error": "UNKNOWN_FAILURE_REASON", "message": text, "error_details": text,
            "preview_failure_reason": "UNKNOWN_PREVIEW_FAILURE_REASON"}})

    def not_found(self, request: Request) -> Response:
        text = f"venue-emulator: no coinbase route for {request.method} {request.path}"
        return json_response({"error": "NOT_FOUND", "error_details": text, "message": text}, 404)

    def time_v2(self, request: Request, now: Now) -> Response:
        return json_response({"data": {"iso": iso(now.wall), "epoch": int(now.wall)}})

    def time_v3(self, request: Request, now: Now) -> Response:
        wall = now.wall
        return json_response({"iso": iso_ms(wall), "epochSeconds": str(int(wall)),
                              "epochMillis": str(int(wall * 1000))})

    def products(self, request: Request, now: Now) -> Response:
        kind = (request.param("product_type") or "SPOT").upper()
        products = [p for p in COINBASE_PRODUCTS if p["product_type"] == kind]
        return json_response({"products": products, "num_products": len(products)})

    def product_ticker(self, request: Request, now: Now) -> Response:
        rest = request.path[len("/api/v3/brokerage/market/products/"):]
        product, _, tail = rest.partition("/")
        if tail != "ticker":
            return self.not_found(request)
        recorded = recorded_body(self.recorded, "fetchTicker")
        if any(t.get("product_id") != product for t in recorded.get("trades", [])) or not recorded.get("trades"):
            return json_response({"error": "NOT_FOUND", "error_details": "ProductID is invalid",
                                  "message": "ProductID is invalid"}, 404)
        return json_response(recorded)

    def _balance_cases(self) -> list[dict[str, Any]]:
        return [c for c in self.recorded.get("fetchBalance", []) if "data" in c["httpResponse"]]

    def accounts_v2(self, request: Request, now: Now) -> Response:
        cases = self._balance_cases()
        if not cases:
            return json_response({"data": [], "pagination": {}})
        limit = request.param("limit")
        for case in cases:
            if str(case["httpResponse"].get("pagination", {}).get("limit")) == limit:
                return json_response(copy.deepcopy(case["httpResponse"]))
        fullest = max(cases, key=lambda c: len(c["httpResponse"]["data"]))
        return json_response(copy.deepcopy(fullest["httpResponse"]))

    def accounts_v3(self, request: Request, now: Now) -> Response:
        cases = self._balance_cases()
        accounts = []
        if cases:
            fullest = max(cases, key=lambda c: len(c["httpResponse"]["data"]))
            for account in fullest["httpResponse"]["data"]:
                code = account["balance"]["currency"]
                fiat = (account.get("currency") or {}).get("type") == "fiat"
                accounts.append({
                    "uuid": account["id"], "name": account["name"], "currency": code,
                    "available_balance": {"value": account["balance"]["amount"], "currency": code},
                    "default": account.get("primary", False), "active": True,
                    "created_at": account.get("created_at"), "updated_at": account.get("updated_at"),
                    "deleted_at": None, "type": "ACCOUNT_TYPE_FIAT" if fiat else "ACCOUNT_TYPE_CRYPTO",
                    "ready": True, "hold": {"value": "0", "currency": code}})
        return json_response({"accounts": accounts, "has_next": False, "cursor": "", "size": len(accounts)})

    def orders_batch(self, request: Request, now: Now) -> Response:
        params = request.params()
        statuses = {s.upper() for s in params.get("order_status", [])} or {"OPEN"}
        products = set(params.get("product_id", []))
        limit_text = request.param("limit")
        limit = int(limit_text) if limit_text and limit_text.isdigit() else 100
        recorded_cases = self.recorded.get("fetchClosedOrders", [])
        recorded_orders = [o for c in recorded_cases for o in c["httpResponse"].get("orders", [])]
        pool = list(self.orders.values()) + [c["raw"] for c in self.cancelled] + recorded_orders
        selected = [copy.deepcopy(o) for o in pool
                    if o.get("status") in statuses and (not products or o.get("product_id") in products)][:limit]
        for case in recorded_cases:
            if selected and selected == case["httpResponse"].get("orders"):
                return json_response(copy.deepcopy(case["httpResponse"]))  # the recorded body, as recorded
        return json_response({"orders": selected, "sequence": "0", "has_next": False, "cursor": ""})

    def batch_cancel(self, request: Request, now: Now) -> Response:
        try:
            data = request.json()
        except ValueError:
            data = None
        ids = data.get("order_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not ids:
            return json_response({"error": "INVALID_ARGUMENT", "error_details": "order_ids is required",
                                  "message": "order_ids is required"}, 400)
        results = []
        for order_id in ids:
            ok = self.cancel(str(order_id), "batch_cancel", now.wall)
            results.append({"success": ok, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON" if ok
                            else "UNKNOWN_CANCEL_ORDER", "order_id": str(order_id)})
        return json_response({"results": results})

    def intx_positions(self, request: Request, now: Now) -> Response:
        return json_response(recorded_body(self.recorded, "fetchPositions"))


def _uuid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"

