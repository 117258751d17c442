"""The venue emulator's sans-IO parts: requests and responses, faults, routing, and a
venue's handlers driven with a parsed request and ``now`` (no sockets, no trio). The
HTTP side (h11, real TCP) is tests/integration/lab/test_venue_emulator_bounds.py."""

from __future__ import annotations

import json

import pytest

from lab.venues.faults import make_fault, normalize_address
from lab.venues.kraken import KrakenVenue
from lab.venues.messages import InputError, Request, Response
from lab.venues.recorded import load_recorded
from lab.venues.venue import Now, venue_for_path


def request(method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Request:
    return Request.build(method, target, "HTTP/1.1", headers or [("Host", "a")], body)


def test_get_request() -> None:
    r = request("GET", "/0/public/Ticker?pair=XBTUSDT&x=1&x=2", [("Host", "a"), ("Accept", "*/*")])
    assert (r.method, r.path, r.version) == ("GET", "/0/public/Ticker", "HTTP/1.1")
    assert r.query == {"pair": ["XBTUSDT"], "x": ["1", "2"]}
    assert r.param("pair") == "XBTUSDT"
    assert r.headers["host"] == "a" and r.body == b""


def test_post_form_body() -> None:
    r = request("POST", "/0/private/CancelOrder", [("Content-Type", "application/x-www-form-urlencoded")],
                b"nonce=1700000000000&txid=OABC-123")
    assert r.param("txid") == "OABC-123" and r.param("nonce") == "1700000000000"


def test_json_body_params() -> None:
    body = json.dumps({"order_ids": ["a", "b"], "n": 3}).encode()
    r = request("POST", "/x", [("Content-Type", "application/json")], body)
    assert r.json() == {"order_ids": ["a", "b"], "n": 3}
    assert r.params() == {"order_ids": ["a", "b"], "n": ["3"]}


def test_bad_json_body_is_an_input_error() -> None:
    with pytest.raises(InputError, match="body: not JSON"):
        request("POST", "/x", body=b"{x}").json()


def test_repeated_headers_are_joined_and_the_path_unquoted() -> None:
    r = request("GET", "/a%20b?q=%2F", [("X-A", "1"), ("x-a", "2")])
    assert r.headers == {"x-a": "1, 2"} and r.path == "/a b" and r.param("q") == "/"


def test_response_head_fields() -> None:
    fields = Response(503, b"{}", headers=[("Retry-After", "1")]).head_fields(close=True)
    assert ("Content-Length", "2") in fields and ("Connection", "close") in fields and ("Retry-After", "1") in fields
    assert Response(503).reason == "Service Unavailable"
    assert all(name != "Connection" for name, _ in Response().head_fields(close=False))


def test_kraken_dead_man_switch_sans_io() -> None:
    """CancelAllOrdersAfter arms the timer from the request's ``now``; it fires at
    ``now.mono + timeout`` and not before (no trio, no sockets)."""
    kraken = KrakenVenue(load_recorded("kraken"), api_key=None)
    t0 = Now(wall=1_700_000_000.0, mono=100.0)
    answer = json.loads(kraken.route(request("POST", "/0/private/CancelAllOrdersAfter",
                                             [("Content-Type", "application/x-www-form-urlencoded")],
                                             b"nonce=1&timeout=60"), t0).body)
    assert answer == {"error": [], "result": {"currentTime": "2023-11-14T22:13:20Z",
                                              "triggerTime": "2023-11-14T22:14:20Z"}}
    assert kraken.fire_deadman(Now(t0.wall + 59, 159.9)) is None and len(kraken.orders) == 3
    assert kraken.fire_deadman(Now(t0.wall + 60, 160.0)) == 3 and kraken.orders == {}
    assert kraken.deadman.to_dict(160.0)["armed"] is False
    assert {c["at"] for c in kraken.cancelled} == {"2023-11-14T22:14:20Z"}


def test_kraken_add_order_rests_in_the_book_until_cancelled() -> None:
    """AddOrder (what ccxt's create_order sends): the order rests, open, under its cl_ord_id;
    a second open order with the same cl_ord_id, an unknown pair or a bad volume is refused."""
    kraken = KrakenVenue(load_recorded("kraken"), api_key=None)
    kraken.orders = {}
    now = Now(wall=1_700_000_000.0, mono=100.0)
    form = [("Content-Type", "application/x-www-form-urlencoded")]

    def add(body: bytes) -> dict:
        return json.loads(kraken.route(request("POST", "/0/private/AddOrder", form, body), now).body)

    answer = add(b"nonce=1&pair=XBTUSDT&type=buy&ordertype=limit&volume=0.02&price=73380.6&cl_ord_id=e-1")
    [order_id] = answer["result"]["txid"]
    assert answer["result"]["descr"] == {"order": "buy 0.02000000 XBTUSDT @ limit 73380.6"}
    summary = kraken.summary(order_id, kraken.orders[order_id])
    assert summary == {"id": order_id, "client_order_id": "e-1", "symbol": "BTC/USDT", "side": "buy",
                       "type": "limit", "amount": "0.02000000", "price": "73380.6", "status": "open"}
    assert add(b"nonce=2&pair=XBTUSDT&type=buy&ordertype=limit&volume=0.01&price=1&cl_ord_id=e-1")["error"] == [
        "EOrder:Duplicate order"]
    assert add(b"nonce=3&pair=NOPE&type=buy&ordertype=limit&volume=1&price=1")["error"] == [
        "EQuery:Unknown asset pair"]
    assert add(b"nonce=4&pair=XBTUSDT&type=buy&ordertype=limit&volume=-1&price=1")["error"][0].startswith(
        "EGeneral:Invalid arguments:")
    assert list(kraken.orders) == [order_id]
    kraken.route(request("POST", "/0/private/CancelOrder", form, b"nonce=5&cl_ord_id=e-1"), now)
    assert kraken.orders == {} and kraken.cancelled[0]["id"] == order_id


# --- faults ------------------------------------------------------------------------------

def test_fault_sources() -> None:
    fault = make_fault("silent", sources=["10.71.0.0/16", "fd00::/8"])
    assert fault.applies_to("10.71.3.4")
    assert fault.applies_to("::ffff:10.71.3.4")  # an IPv4 client on a dual-stack socket
    assert fault.applies_to("fd00::1")
    assert not fault.applies_to("10.72.0.1")
    assert not fault.applies_to("not an address")
    assert not fault.applies_to(None)
    assert make_fault("silent").applies_to("192.0.2.1")  # no sources: everybody
    assert not make_fault("ok", sources=["0.0.0.0/0"]).applies_to("192.0.2.1")
    assert normalize_address("::ffff:127.0.0.2") == "127.0.0.2"


def test_fault_defaults_and_dict() -> None:
    fault = make_fault("error", sources=["10.71.0.9/16"])
    assert fault.to_dict() == {"mode": "error", "delay": 0.0, "status": 503, "sources": ["10.71.0.0/16"],
                               "message": None}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mode": "down"}, "mode"),
    ({"mode": "slow"}, "delay"),
    ({"mode": "slow", "delay": -1}, "delay"),
    ({"mode": "slow", "delay": float("nan")}, "delay"),
    ({"mode": "slow", "delay": "1s"}, "delay"),
    ({"mode": "error", "status": 200}, "status"),
    ({"mode": "error", "status": "503"}, "status"),
    ({"mode": "silent", "sources": "10.0.0.0/8"}, "sources"),
    ({"mode": "silent", "sources": ["fibre"]}, "sources"),
    ({"mode": "exchange_error", "message": ""}, "message"),
])
def test_bad_faults_name_the_field(kwargs: dict, field: str) -> None:
    mode = kwargs.pop("mode")
    with pytest.raises(InputError, match=f"^{field}: "):
        make_fault(mode, **kwargs)


def test_venue_for_path() -> None:
    assert venue_for_path("/0/public/Time") == "kraken"
    assert venue_for_path("/v2/time") == "coinbase"
    assert venue_for_path("/api/v3/brokerage/accounts") == "coinbase"
    assert venue_for_path("/api/v2/x") is None and venue_for_path("/") is None


def test_the_venue_modules_import_no_trio() -> None:
    """Only lab/venues/server.py (the shell) and __main__ do I/O; the rest is sans-IO."""
    import subprocess
    import sys

    code = ("import sys\nimport lab.venues.kraken, lab.venues.coinbase, lab.venues.control, lab.venues.faults\n"
            "print('trio' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
