"""The real ccxt synchronous client (Kraken, Coinbase) against real HTTP servers on loopback.

Each test runs a tiny threaded HTTP/1.1 server (``FakeVenue``) that answers the paths
ccxt really requests, records every request (peer address, method, path, headers, body,
arrival time) and can be told, per path, to answer an error or to stay silent. The
error classes are produced the way they happen on a real network: a port nobody listens
on, a name in ``.invalid``, TLS spoken to a plain-HTTP server, a self-signed certificate,
a server that accepts and never answers. Timeouts are 0.3 s. The last tests run the
lab's venue emulator (``python -m lab.venues``) as a real process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.venues.client import (
    CallResult,
    VenueCallError,
    VenueClient,
    VenueCredentials,
)
from tests.support.ports import free_port
from tests.support.tls import self_signed_context

TIMEOUT = 0.3
API_KEY = "KrakenTestApiKey-" + "k" * 39
SECRET = base64.b64encode(bytes(range(64))).decode()  # Kraken secrets are base64 of 64 bytes
CREDENTIALS = VenueCredentials(api_key=API_KEY, secret=SECRET)

Answer = tuple[int, str, bytes]  # status, content type, body


@dataclass
class Seen:
    peer: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class FakeVenue:
    """Kraken (/0/...) and Coinbase (/v2/time) on one port. ``answers[path]`` overrides a
    path: an ``Answer`` or a callable ``Seen -> Answer``; ``silent`` paths never answer."""

    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    answers: dict[str, Answer | Callable[[Seen], Answer]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    status: str = "online"
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}"

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def answer(self, seen: Seen) -> Answer:
        path = seen.path.split("?", 1)[0]
        override = self.answers.get(path)
        if override is not None:
            return override(seen) if callable(override) else override
        now = time.time()
        if path == "/0/public/Time":
            return _json({"error": [], "result": {"unixtime": int(now), "rfc1123": time.strftime(
                "%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))}})
        if path == "/0/public/SystemStatus":
            return _json({"error": [], "result": {"status": self.status, "timestamp": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}})
        if path in ("/0/public/AssetPairs", "/0/public/Assets"):
            return _json({"error": [], "result": {}})
        if path == "/v2/time":
            return _json({"data": {"iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                                   "epoch": int(now)}})
        return 404, "application/json", b'{"error":["EGeneral:Unknown method"]}'


def _json(obj: object, status: int = 200) -> Answer:
    return status, "application/json", json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def _serve(self) -> None:
        venue: FakeVenue = self.server.venue  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.client_address[0], self.command, self.path, dict(self.headers.items()), body,
                    time.monotonic())
        venue.seen.append(seen)
        if self.path.split("?", 1)[0] in venue.silent:
            venue.release.wait(10)
            self.close_connection = True
            return
        status, ctype, payload = venue.answer(seen)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def fake_venue(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[FakeVenue]:
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    venue = FakeVenue(server)
    server.venue = venue  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield venue
    finally:
        venue.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port whose connections the kernel accepts (backlog) and nobody ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def refused_port() -> int:
    return free_port()  # nothing listens on it: connecting is refused


def kraken(api_url: str, *, credentials: VenueCredentials | None = None, source_address: str | None = None,
           uplink: str | None = "fibre", timeout: float = TIMEOUT, exchange_id: str = "kraken") -> VenueClient:
    return VenueClient(exchange_id, exchange_id, uplink=uplink, source_address=source_address, api_url=api_url,
                       timeout=timeout, credentials=credentials)


@pytest.fixture
def venue() -> Iterator[FakeVenue]:
    with fake_venue() as v:
        yield v


# ------------------------------------------------------------------ probes that succeed

def test_kraken_probe_hits_time_and_system_status(venue: FakeVenue) -> None:
    client = kraken(venue.url())
    client.exchange.rateLimit = 1  # the rate limiter has its own test
    result = client.probe(["fetch_time", "fetch_status"])
    assert result.ok, result
    assert result.error_class is None and result.detail == ""
    assert result.http_status == 200
    assert venue.paths() == ["/0/public/Time", "/0/public/SystemStatus"]
    assert abs(result.value["fetch_time"] / 1000 - time.time()) < 5
    assert result.value["fetch_status"]["status"] == "ok"
    assert 0 < result.latency < 1.0
    client.close()


def test_coinbase_fetch_time_hits_v2_time(venue: FakeVenue) -> None:
    client = kraken(venue.url(), exchange_id="coinbase")
    result = client.probe(["fetch_time"])
    assert result.ok, result
    assert venue.paths() == ["/v2/time"]
    assert abs(result.value["fetch_time"] / 1000 - time.time()) < 5
    assert not client.supports("cancelAllOrdersAfter") and client.supports("fetchTime")


def test_status_maintenance_is_an_exchange_failure(venue: FakeVenue) -> None:
    venue.status = "maintenance"
    client = kraken(venue.url())
    client.exchange.rateLimit = 1
    result = client.probe(["fetch_time", "fetch_status", "fetch_time"])
    assert not result.ok
    assert (result.error_class, result.detail) == ("exchange", "fetch_status: status maintenance")
    assert venue.paths() == ["/0/public/Time", "/0/public/SystemStatus"]  # stopped at the failure
    assert "fetch_time" in result.value


def test_the_rate_limit_spaces_requests_and_is_not_counted_as_latency(venue: FakeVenue) -> None:
    client = kraken(venue.url())
    client.exchange.rateLimit = 250  # ms
    assert client.rate_limit == 0.25
    started = time.monotonic()
    result = client.probe(["fetch_time", "fetch_status", "fetch_time"])
    wall = time.monotonic() - started
    assert result.ok, result
    arrivals = [s.at for s in venue.seen]
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.24, gaps  # never more often than the venue allows
    assert wall >= 0.48
    assert result.latency < 0.2, (result.latency, wall)  # the limiter's sleeps are not the venue's latency


# ------------------------------------------------------------------ source address

def test_connections_leave_from_the_source_address(venue: FakeVenue) -> None:
    bound = kraken(venue.url(), source_address="127.0.0.2")
    bound.exchange.rateLimit = 1
    assert bound.probe(["fetch_time", "fetch_status"]).ok
    bound.close()
    unbound = kraken(venue.url())
    assert unbound.probe(["fetch_time"]).ok
    assert [s.peer for s in venue.seen] == ["127.0.0.2", "127.0.0.2", "127.0.0.1"]


def test_an_unassignable_source_address_fails_with_connect(venue: FakeVenue) -> None:
    client = kraken(venue.url(), source_address="192.0.2.1")  # TEST-NET-1: on no interface here
    result = client.probe(["fetch_time"])
    assert not result.ok
    assert result.error_class == "connect"
    assert result.detail.startswith("fetch_time: source address 192.0.2.1 not assignable on this host")
    assert "Cannot assign requested address" in result.detail
    assert venue.seen == []


# ------------------------------------------------------------------ error classes for real

def test_timeout_when_the_server_never_answers() -> None:
    with silent_port() as port:
        client = kraken(f"http://127.0.0.1:{port}")
        result = client.probe(["fetch_time"])
    assert (result.ok, result.error_class) == (False, "timeout")
    assert "timed out" in result.detail and "/0/public/Time" in result.detail
    assert TIMEOUT * 0.8 <= result.latency < TIMEOUT + 1.0


def test_connect_when_the_port_is_closed() -> None:
    port = refused_port()
    result = kraken(f"http://127.0.0.1:{port}").probe(["fetch_time"])
    assert (result.ok, result.error_class) == (False, "connect")
    assert "Connection refused" in result.detail and result.latency < 1.0


def test_dns_when_the_name_does_not_resolve() -> None:
    result = kraken("http://venue.nonexistent.invalid").probe(["fetch_time"])  # RFC 6761: never resolves
    assert (result.ok, result.error_class) == (False, "dns"), result
    assert result.detail.startswith("fetch_time: DNS lookup failed")


def test_tls_spoken_to_a_plain_http_server(venue: FakeVenue) -> None:
    result = kraken(venue.url(scheme="https")).probe(["fetch_time"])
    assert (result.ok, result.error_class) == (False, "tls"), result
    assert result.detail.startswith("fetch_time: TLS failed")


def test_tls_with_an_untrusted_certificate(tmp_path: Path) -> None:
    with fake_venue("127.0.0.1", tls=self_signed_context(tmp_path, "127.0.0.1", "lifeline venue test")) as tls_venue:
        result = kraken(tls_venue.url(scheme="https")).probe(["fetch_time"])
    assert (result.ok, result.error_class) == (False, "tls"), result
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail or "certificate verify failed" in result.detail


@pytest.mark.parametrize(("status", "error_class", "expected"), [
    (503, "http", "HTTP 503 Service Unavailable from GET /0/public/Time: Service Unavailable down for maintenance"),
    (500, "http", "HTTP 500 Internal Server Error from GET /0/public/Time"),
    (504, "http", "HTTP 504 Gateway Timeout"),
    (429, "rate_limit", "rate limited"),
    (401, "auth", "authentication refused"),
])
def test_http_statuses(venue: FakeVenue, status: int, error_class: str, expected: str) -> None:
    page = b"<html><body><h1>Service Unavailable</h1>\n<p>down for maintenance</p></body></html>"
    venue.answers["/0/public/Time"] = (status, "text/html", page)
    result = kraken(venue.url()).probe(["fetch_time"])
    assert (result.ok, result.error_class, result.http_status) == (False, error_class, status), result
    assert expected in result.detail
    assert "\n" not in result.detail and len(result.detail) <= 200


def test_kraken_invalid_key_is_auth(venue: FakeVenue) -> None:
    venue.answers["/0/private/BalanceEx"] = _json({"error": ["EAPI:Invalid key"]})
    client = kraken(venue.url(), credentials=CREDENTIALS)
    client.exchange.rateLimit = 1
    result = client.probe(["fetch_balance"])
    assert (result.ok, result.error_class, result.http_status) == (False, "auth", 200), result
    assert "AuthenticationError" in result.detail and "EAPI:Invalid key" in result.detail


def test_kraken_error_body_with_200_is_exchange(venue: FakeVenue) -> None:
    venue.answers["/0/public/Time"] = _json({"error": ["EGeneral:Internal error"]})
    result = kraken(venue.url()).probe(["fetch_time"])
    assert (result.ok, result.error_class, result.http_status) == (False, "exchange", 200), result
    assert "EGeneral:Internal error" in result.detail


def test_an_answer_that_is_not_http_is_connect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        port = s.getsockname()[1]

        def garbage() -> None:
            conn, _ = s.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")

        thread = threading.Thread(target=garbage, daemon=True)
        thread.start()
        result = kraken(f"http://127.0.0.1:{port}").probe(["fetch_time"])
        thread.join(5)
    assert (result.ok, result.error_class) == (False, "connect"), result


# ------------------------------------------------------------------ private calls

def _kraken_signature_ok(seen: Seen) -> bool:
    """Kraken's API-Sign: HMAC-SHA512(base64decode(secret), path + SHA256(nonce + body))."""
    nonce = urllib.parse.parse_qs(seen.body.decode())["nonce"][0]
    digest = hashlib.sha256((nonce + seen.body.decode()).encode()).digest()
    mac = hmac.new(base64.b64decode(SECRET), seen.path.encode() + digest, hashlib.sha512)
    return hmac.compare_digest(base64.b64encode(mac.digest()).decode(), seen.headers["API-Sign"])


def test_private_calls_are_signed_and_answered(venue: FakeVenue) -> None:
    venue.answers["/0/private/BalanceEx"] = _json({"error": [], "result": {"ZUSD": {"balance": "12.5", "hold_trade": "0"}}})
    venue.answers["/0/private/OpenOrders"] = _json({"error": [], "result": {"open": {}}})
    venue.answers["/0/private/CancelOrder"] = _json({"error": [], "result": {"count": 1}})
    venue.answers["/0/private/CancelAllOrdersAfter"] = _json(
        {"error": [], "result": {"currentTime": "2024-01-01T00:00:00Z", "triggerTime": "2024-01-01T00:01:00Z"}})
    client = kraken(venue.url(), credentials=CREDENTIALS)
    client.exchange.rateLimit = 1
    assert client.supports("cancel_all_orders_after") and client.supports("cancelAllOrdersAfter")
    assert client.fetch_balance()["USD"]["total"] == 12.5
    assert client.fetch_open_orders() == []
    client.cancel_order("OABCDE-12345-FGHIJK", None)
    armed = client.cancel_all_orders_after(60)
    assert armed["result"]["triggerTime"] == "2024-01-01T00:01:00Z"
    client.cancel_all_orders_after(0)  # disarm
    private = [s for s in venue.seen if s.path.startswith("/0/private/")]
    assert [s.path for s in private] == ["/0/private/BalanceEx", "/0/private/OpenOrders", "/0/private/CancelOrder",
                                         "/0/private/CancelAllOrdersAfter", "/0/private/CancelAllOrdersAfter"]
    assert all(s.headers["API-Key"] == API_KEY and _kraken_signature_ok(s) for s in private)
    assert "txid=OABCDE-12345-FGHIJK" in private[2].body.decode()
    assert "timeout=60" in private[3].body.decode() and "timeout=0" in private[4].body.decode()
    with pytest.raises(ValueError, match="0 \\(disarm\\) or >= 1 s"):
        client.cancel_all_orders_after(0.5)  # Kraken counts whole seconds: 0.5 would disarm
    client.close()
    with pytest.raises(VenueCallError) as closed:
        client.fetch_balance()
    assert closed.value.error_class == "other"


def test_unsupported_call_is_a_venue_call_error(venue: FakeVenue) -> None:
    client = kraken(venue.url(), exchange_id="coinbase", credentials=CREDENTIALS)
    with pytest.raises(VenueCallError) as err:
        client.cancel_all_orders_after(60)
    assert err.value.error_class == "other" and "not supported" in err.value.detail
    assert venue.seen == []


# ------------------------------------------------------------------ secrets never leak

def _echo(seen: Seen) -> str:
    """Everything a careless venue or proxy could echo: the request's headers and body, and
    (as if it knew it) the secret, raw and URL-encoded — first, so they fall inside the
    200 characters a detail keeps."""
    return (f"secret={SECRET} quoted={urllib.parse.quote(SECRET, safe='')} key={API_KEY} "
            f"headers={json.dumps(seen.headers)} body={seen.body.decode()}")


def _kraken_error(error: str, status: int = 200) -> Callable[[Seen], Answer]:
    return lambda seen: _json({"error": [error, _echo(seen)]}, status)


def _page(status: int) -> Callable[[Seen], Answer]:
    return lambda seen: (status, "text/html", f"<html><body><pre>{_echo(seen)}</pre></body></html>".encode())


LEAKY_ANSWERS: dict[str, tuple[str, Callable[[Seen], Answer]]] = {
    "auth-200": ("auth", _kraken_error("EAPI:Invalid key")),
    "exchange-200": ("exchange", _kraken_error("EGeneral:Internal error")),
    "http-500-json": ("http", _kraken_error("EGeneral:Internal error", 500)),
    "http-503-html": ("http", _page(503)),
    "rate_limit-429": ("rate_limit", _page(429)),
    "auth-403": ("auth", _page(403)),
}


def _assert_clean(text: str) -> None:
    assert SECRET not in text
    assert urllib.parse.quote(SECRET, safe="") not in text
    assert API_KEY not in text


@pytest.fixture
def ccxt_debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, ccxt's own included (it logs request headers there)."""
    ccxt_logger = logging.getLogger("ccxt.base.exchange")
    previous = ccxt_logger.level
    ccxt_logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        ccxt_logger.setLevel(previous)


@pytest.mark.parametrize("case", sorted(LEAKY_ANSWERS))
def test_credentials_never_leak_from_answers_that_echo_them(
        venue: FakeVenue, case: str, ccxt_debug_logs: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    error_class, answer = LEAKY_ANSWERS[case]
    venue.answers["/0/private/BalanceEx"] = answer
    client = kraken(venue.url(), credentials=CREDENTIALS)
    client.exchange.rateLimit = 1

    result = client.probe(["fetch_balance"])
    with pytest.raises(VenueCallError) as raised:
        client.fetch_balance()

    private = [s for s in venue.seen if s.path == "/0/private/BalanceEx"]
    assert len(private) == 2 and private[0].headers["API-Key"] == API_KEY  # the key really went out
    err = raised.value
    assert (result.error_class, err.error_class) == (error_class, error_class), (result, err)
    assert err.__cause__ is None and err.__context__ is None  # the raw ccxt error is not attached
    shown = [result.detail, repr(result), str(err), repr(err), err.detail, repr(client), str(client),
             "".join(traceback.format_exception(err)), ccxt_debug_logs.text, *capsys.readouterr()]
    for text in shown:
        _assert_clean(text)
    assert "***" in result.detail and "***" in err.detail  # the echo was there, masked
    assert "***" in ccxt_debug_logs.text  # ccxt's DEBUG request log, with API-Key masked
    assert "API-Key" in ccxt_debug_logs.text


def test_credentials_never_leak_from_transport_failures(
        ccxt_debug_logs: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    results: list[CallResult] = []
    errors: list[VenueCallError] = []
    with fake_venue() as slow:
        slow.silent.add("/0/private/BalanceEx")  # public calls answer, the private one hangs
        with silent_port() as port:
            for api_url in (slow.url(), f"http://127.0.0.1:{refused_port()}", "http://venue.nonexistent.invalid",
                            slow.url(scheme="https"), f"http://127.0.0.1:{port}"):
                client = kraken(api_url, credentials=CREDENTIALS)
                client.exchange.rateLimit = 1
                results.append(client.probe(["fetch_balance"]))
                with pytest.raises(VenueCallError) as raised:
                    client.fetch_balance()
                errors.append(raised.value)
                client.close()
        assert any(s.path == "/0/private/BalanceEx" and s.headers["API-Key"] == API_KEY for s in slow.seen)
    assert [r.error_class for r in results] == ["timeout", "connect", "dns", "tls", "timeout"]
    assert [e.error_class for e in errors] == ["timeout", "connect", "dns", "tls", "timeout"]
    for text in [*(r.detail for r in results), *(repr(r) for r in results), *(str(e) for e in errors),
                 *("".join(traceback.format_exception(e)) for e in errors), ccxt_debug_logs.text,
                 *capsys.readouterr()]:
        _assert_clean(text)
    assert "***" in ccxt_debug_logs.text


# ------------------------------------------------------------------ the lab's venue emulator

EMULATOR_KEY = "emulator-kraken-key-0123456789"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """``python -m lab.venues`` as a real process; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lab.venues", "--listen", "127.0.0.1:0",
         "--api-key", f"kraken={EMULATOR_KEY}"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("venue-emulator ready http://"), line
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(10)


def _control(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


@pytest.fixture
def emulator_url(emulator: str) -> Iterator[str]:
    _control(emulator, "/_emulator/reset", {})
    yield emulator
    _control(emulator, "/_emulator/reset", {})


def test_emulator_kraken_every_probe_call_and_the_private_calls(emulator_url: str) -> None:
    creds = VenueCredentials(api_key=EMULATOR_KEY, secret=SECRET)
    client = VenueClient("kraken", "kraken", uplink="fibre", source_address="127.0.0.2", api_url=emulator_url,
                         timeout=1.0, credentials=creds, ticker_symbol="BTC/USDT")
    client.exchange.rateLimit = 1
    result = client.probe(["fetch_time", "fetch_status", "fetch_ticker", "fetch_balance"])
    assert result.ok, result
    assert result.value["fetch_ticker"]["symbol"] == "BTC/USDT"
    state = _control(emulator_url, "/_emulator/state")["venues"]["kraken"]
    assert state["last_source"] == "127.0.0.2"
    orders = client.fetch_open_orders()
    assert sorted(o["id"] for o in orders) == sorted(o["id"] for o in state["orders"])
    client.cancel_all_orders_after(60)
    deadman = _control(emulator_url, "/_emulator/state")["venues"]["kraken"]["deadman"]
    assert deadman["armed"] and deadman["timeout"] == 60
    client.cancel_order(orders[0]["id"], orders[0]["symbol"])
    assert len(client.fetch_open_orders()) == len(orders) - 1
    client.close()


def test_emulator_faults_through_one_source_address_and_error_classes(emulator_url: str) -> None:
    def client(source: str, credentials: VenueCredentials | None = None) -> VenueClient:
        c = VenueClient("kraken", "kraken", uplink=source, source_address=source, api_url=emulator_url,
                        timeout=TIMEOUT, credentials=credentials)
        c.exchange.rateLimit = 1
        return c

    fibre, lte = client("127.0.0.2"), client("127.0.0.1")
    _control(emulator_url, "/_emulator/fault", {"venue": "kraken", "mode": "silent", "sources": ["127.0.0.2/32"]})
    assert fibre.probe(["fetch_time"]).error_class == "timeout"  # silent through the fibre only
    assert lte.probe(["fetch_time"]).ok
    expected = {"error": ("http", 503, "EService:Unavailable"), "exchange_error": ("exchange", 200, "Deadline elapsed")}
    for mode, (error_class, status, text) in expected.items():
        _control(emulator_url, "/_emulator/fault", {"venue": "kraken", "mode": mode})
        result = lte.probe(["fetch_time"])
        assert (result.error_class, result.http_status) == (error_class, status), result
        assert text in result.detail
    _control(emulator_url, "/_emulator/fault", {"venue": "kraken", "mode": "ok"})
    wrong = client("127.0.0.1", VenueCredentials(api_key="not-the-emulator-key", secret=SECRET))
    result = wrong.probe(["fetch_balance"])
    assert (result.error_class, result.http_status) == ("auth", 200) and "EAPI:Invalid key" in result.detail
    assert "not-the-emulator-key" not in result.detail


def test_emulator_coinbase_probe(emulator_url: str) -> None:
    client = VenueClient("coinbase", "coinbase", uplink=None, source_address=None, api_url=emulator_url,
                         timeout=1.0, credentials=None, ticker_symbol="BTC/USDC")
    result = client.probe(["fetch_time", "fetch_ticker"])
    assert result.ok, result
    assert result.value["fetch_ticker"]["symbol"] == "BTC/USDC"
    assert client.check_calls(["fetch_status"]) == ["coinbase does not support fetch_status (ccxt has no fetchStatus)"]
