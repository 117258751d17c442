"""The venue emulator's sans-IO parts: the HTTP/1.1 request parser, responses, faults."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.venue_emulator import (
    InputError,
    ProtocolError,
    RequestParser,
    Response,
    make_fault,
    normalize_address,
    parse_head,
    venue_for_path,
)

GET = b"GET /0/public/Ticker?pair=XBTUSDT&x=1&x=2 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
POST = (b"POST /0/private/CancelOrder HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 33\r\n\r\nnonce=1700000000000&txid=OABC-123")


def parse_all(*chunks: bytes) -> list:
    parser = RequestParser()
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        while (request := parser.next_request()) is not None:
            out.append(request)
    return out


def test_get_request() -> None:
    (request,) = parse_all(GET)
    assert (request.method, request.path, request.version) == ("GET", "/0/public/Ticker", "HTTP/1.1")
    assert request.query == {"pair": ["XBTUSDT"], "x": ["1", "2"]}
    assert request.param("pair") == "XBTUSDT"
    assert request.headers["host"] == "a" and request.body == b""
    assert request.keep_alive


def test_post_form_body() -> None:
    (request,) = parse_all(POST)
    assert request.body == b"nonce=1700000000000&txid=OABC-123"
    assert request.param("txid") == "OABC-123" and request.param("nonce") == "1700000000000"


def test_json_body_params() -> None:
    body = json.dumps({"order_ids": ["a", "b"], "n": 3}).encode()
    head = f"POST /x HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    (request,) = parse_all(head + body)
    assert request.json() == {"order_ids": ["a", "b"], "n": 3}
    assert request.params() == {"order_ids": ["a", "b"], "n": ["3"]}


def test_bad_json_body_is_an_input_error() -> None:
    (request,) = parse_all(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}")
    with pytest.raises(InputError, match="body: not JSON"):
        request.json()


@given(st.lists(st.integers(min_value=1, max_value=len(GET + POST + GET) - 1), max_size=12, unique=True))
def test_any_split_gives_the_same_pipelined_requests(cuts: list[int]) -> None:
    stream = GET + POST + GET
    points = [0, *sorted(cuts), len(stream)]
    requests = parse_all(*(stream[a:b] for a, b in itertools.pairwise(points)))
    assert [(r.method, r.path, r.body) for r in requests] == [
        ("GET", "/0/public/Ticker", b""), ("POST", "/0/private/CancelOrder", b"nonce=1700000000000&txid=OABC-123"),
        ("GET", "/0/public/Ticker", b"")]


def test_partial_and_leading_blank_lines() -> None:
    parser = RequestParser()
    parser.feed(b"\r\n\r\n")
    assert parser.next_request() is None and not parser.partial
    parser.feed(b"GET /v2/time HT")
    assert parser.next_request() is None and parser.partial
    parser.feed(b"TP/1.1\n\n")  # bare LF line ends are accepted
    request = parser.next_request()
    assert request is not None and request.path == "/v2/time"
    assert not parser.partial


def test_keep_alive_rules() -> None:
    def alive(version: str, connection: str | None) -> bool:
        extra = f"Connection: {connection}\r\n" if connection else ""
        (request,) = parse_all(f"GET / {version}\r\n{extra}\r\n".encode())
        return request.keep_alive
    assert alive("HTTP/1.1", None) and not alive("HTTP/1.1", "close")
    assert not alive("HTTP/1.0", None) and alive("HTTP/1.0", "Keep-Alive")


def test_repeated_headers_are_joined() -> None:
    _, _, _, headers = parse_head(b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2")
    assert headers == {"x-a": "1, 2"}


@pytest.mark.parametrize(("data", "status", "match"), [
    (b"HELLO\r\n\r\n", 400, "request line"),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400, "not ASCII"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "not supported"),
    (b"GET / HTTP/1.2\r\n\r\n", 505, "not supported"),
    (b"GET / SPDY/3\r\n\r\n", 400, "version"),
    (b"GET http://venue/x HTTP/1.1\r\n\r\n", 400, "origin-form"),
    (b"G(T / HTTP/1.1\r\n\r\n", 400, "method"),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "header line"),
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "header line"),
    (b"GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", 400, "folding"),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "Content-Length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413, "larger than"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 17000, 431, "head larger"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 16370 + b"\r\n\r\n", 431, "head larger"),
])
def test_malformed_requests(data: bytes, status: int, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        parse_all(data)
    assert info.value.status == status


def test_equal_repeated_content_length_is_fine() -> None:
    (request,) = parse_all(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    assert request.body == b"ok"


def test_response_render() -> None:
    data = Response(503, b"{}", headers=[("Retry-After", "1")]).render(keep_alive=False)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Content-Length: 2" in lines and "Connection: close" in lines and "Retry-After: 1" in lines
    assert body == b"{}"
    assert b"Connection: keep-alive" in Response().render(keep_alive=True)


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
