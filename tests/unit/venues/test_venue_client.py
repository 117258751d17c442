"""The pure parts of the venue client: credentials files, redaction, error classification on
exception chains built the way requests/urllib3/ccxt build them, API URL rewriting, and how
an exchange object is set up (no request is made here; tests/integration does that)."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import socket
import ssl
import urllib.parse
from pathlib import Path

import ccxt
import pytest
import requests
import urllib3.connection
import urllib3.exceptions

from daemon.venues.client import (
    PROBE_CALLS,
    CallResult,
    CredentialsError,
    Redactor,
    SourceAddressAdapter,
    VenueCallError,
    VenueClient,
    VenueCredentials,
    classify_error,
    load_credentials,
    make_exchange,
    rewrite_api_urls,
)
from daemon.venues.health import ERROR_CLASSES

API_KEY = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/AbCdEfGhIjKlMnOpQrSt"
SECRET = base64.b64encode(bytes(range(64))).decode()  # has "+" and "/": its URL-encoded form differs


def write(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    os.chmod(path, mode)
    return path


def good_file(tmp_path: Path, extra: str = "", mode: int = 0o600) -> Path:
    return write(tmp_path / "kraken.toml", f'api_key = "{API_KEY}"\nsecret = "{SECRET}"\n{extra}', mode)


def assert_no_values(message: str) -> None:
    assert API_KEY not in message and SECRET not in message
    assert "hunter22" not in message


# ------------------------------------------------------------------ VenueCredentials

def test_credentials_never_show_their_values() -> None:
    creds = VenueCredentials(api_key=API_KEY, secret=SECRET, password="hunter22")
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds]), repr({"c": creds})):
        assert_no_values(text)
    assert repr(creds) == "VenueCredentials(api_key=***, secret=***, password=***, uid=None)"
    assert str(creds) == repr(creds)


def test_credentials_secrets_and_ccxt_options() -> None:
    creds = VenueCredentials(api_key=API_KEY, secret=SECRET, uid="12345")
    assert creds.secrets() == [API_KEY, SECRET, "12345"]
    assert creds.ccxt_options() == {"apiKey": API_KEY, "secret": SECRET, "uid": "12345"}
    full = VenueCredentials(api_key=API_KEY, secret=SECRET, password="hunter22", uid="u-1")
    assert full.ccxt_options() == {"apiKey": API_KEY, "secret": SECRET, "password": "hunter22", "uid": "u-1"}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"api_key": "", "secret": SECRET}, "api_key"),
    ({"api_key": API_KEY, "secret": "   "}, "secret"),
    ({"api_key": API_KEY, "secret": SECRET, "password": ""}, "password"),
    ({"api_key": API_KEY, "secret": 12345}, "secret"),
])
def test_credentials_refuse_empty_or_non_string_values(kwargs: dict, field: str) -> None:
    with pytest.raises(CredentialsError, match=f"^{field}: ") as err:
        VenueCredentials(**kwargs)
    assert_no_values(str(err.value))


# ------------------------------------------------------------------ load_credentials

def test_load_credentials(tmp_path: Path) -> None:
    creds = load_credentials(good_file(tmp_path))
    assert (creds.api_key, creds.secret, creds.password, creds.uid) == (API_KEY, SECRET, None, None)
    creds = load_credentials(good_file(tmp_path, 'password = "hunter22"\nuid = "u-1"\n'))
    assert (creds.password, creds.uid) == ("hunter22", "u-1")
    assert load_credentials(good_file(tmp_path, mode=0o400)).api_key == API_KEY  # read-only is fine


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o610, 0o601, 0o777])
def test_load_credentials_refuses_a_file_group_or_other_can_touch(tmp_path: Path, mode: int) -> None:
    path = good_file(tmp_path, mode=mode)
    with pytest.raises(CredentialsError) as err:
        load_credentials(path)
    message = str(err.value)
    assert message.startswith(f"{path}: mode {mode:04o}")
    assert f"chmod 600 {path}" in message
    assert_no_values(message)


@pytest.mark.parametrize(("line", "expected"), [
    ('apikey = "x"', "'apikey' (did you mean 'api_key'?)"),
    ('secret_key = "x"', "'secret_key' (did you mean 'secret'?)"),
    ('passwrd = "x"', "'passwrd' (did you mean 'password'?)"),
    ('colour = "blue"', "unknown key 'colour'; allowed: api_key, secret, password, uid"),
    ('[kraken]\nx = "y"', "unknown key 'kraken'"),
])
def test_load_credentials_refuses_unknown_keys(tmp_path: Path, line: str, expected: str) -> None:
    path = good_file(tmp_path, line + "\n")
    with pytest.raises(CredentialsError) as err:
        load_credentials(path)
    assert str(err.value).startswith(f"{path}: unknown key")
    assert expected in str(err.value)
    assert_no_values(str(err.value))


def test_load_credentials_names_every_unknown_key(tmp_path: Path) -> None:
    path = good_file(tmp_path, 'apikey = "x"\nzzz = 1\n')
    with pytest.raises(CredentialsError, match="unknown keys 'apikey' .*, 'zzz'"):
        load_credentials(path)


@pytest.mark.parametrize(("text", "field", "fix"), [
    (f'secret = "{SECRET}"\n', "api_key", 'missing; add api_key = "..."'),
    (f'api_key = "{API_KEY}"\n', "secret", 'missing; add secret = "..."'),
    (f'api_key = ""\nsecret = "{SECRET}"\n', "api_key", "is empty"),
    (f'api_key = "{API_KEY}"\nsecret = "  "\n', "secret", "is empty"),
    (f'api_key = "{API_KEY}"\nsecret = "{SECRET}"\npassword = ""\n', "password", "is empty"),
    (f'api_key = 123456789\nsecret = "{SECRET}"\n', "api_key", "must be a quoted string, not a TOML int"),
    (f'api_key = "{API_KEY}"\nsecret = ["{SECRET}"]\n', "secret", "must be a quoted string, not a TOML list"),
])
def test_load_credentials_names_the_file_and_the_field(tmp_path: Path, text: str, field: str, fix: str) -> None:
    path = write(tmp_path / "creds.toml", text)
    with pytest.raises(CredentialsError) as err:
        load_credentials(path)
    assert str(err.value) == f"{path}: {field}: {fix}" or str(err.value).startswith(f"{path}: {field}: {fix}")
    assert_no_values(str(err.value))
    assert "123456789" not in str(err.value)


def test_load_credentials_a_file_that_is_not_toml_gives_the_line_never_the_content(tmp_path: Path) -> None:
    path = write(tmp_path / "creds.toml", f'api_key = "{API_KEY}"\n\n{SECRET}\n')  # a secret pasted bare
    with pytest.raises(CredentialsError) as err:
        load_credentials(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not valid TOML (line 3, column ")
    assert_no_values(message)
    assert SECRET[:8] not in message and SECRET[-8:] not in message


def test_load_credentials_binary_file(tmp_path: Path) -> None:
    path = write(tmp_path / "creds.toml", b'api_key = "x"\nsecret = "\xff\xfe"\n')
    with pytest.raises(CredentialsError, match=r": line 2: not UTF-8 text"):
        load_credentials(path)


def test_load_credentials_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"nope.toml: no such file; create it .* mode 0600"):
        load_credentials(tmp_path / "nope.toml")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(CredentialsError, match="dir: not a regular file"):
        load_credentials(directory)


# ------------------------------------------------------------------ Redactor

def test_redactor_masks_raw_url_encoded_and_json_escaped_forms() -> None:
    redact = Redactor([API_KEY, SECRET])
    text = (f"key={API_KEY} raw={SECRET} quoted={urllib.parse.quote(SECRET, safe='')} "
            f"plus={urllib.parse.quote_plus(SECRET)} json={json.dumps({'s': SECRET})} "
            f"escaped={SECRET.replace('/', chr(92) + '/')}")
    out = redact(text)
    assert out == "key=*** raw=*** quoted=*** plus=*** json={\"s\": \"***\"} escaped=***"


def test_redactor_masks_a_multiline_secret_in_json() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5\n-----END EC PRIVATE KEY-----\n"
    redact = Redactor([pem])
    assert redact(f"a {pem} b") == "a *** b"
    assert redact(json.dumps({"secret": pem})) == '{"secret": "***"}'


def test_redactor_ignores_short_and_empty_secrets_and_masks_longest_first() -> None:
    assert Redactor(["abc", ""])("abc abcd") == "abc abcd"
    assert not Redactor([]) and Redactor([]).__call__("anything") == "anything"
    redact = Redactor(["abcd", "abcdefgh"])
    assert redact("abcdefgh abcd") == "*** ***"
    assert "abcd" not in repr(redact)


# ------------------------------------------------------------------ classify_error

def _conn() -> urllib3.connection.HTTPConnection:
    return urllib3.connection.HTTPConnection("api.kraken.example", 443)  # never connects


def _pool() -> urllib3.HTTPConnectionPool:
    return urllib3.HTTPConnectionPool("api.kraken.example", 443)


def _requests_error(kind: type[requests.RequestException], reason: BaseException) -> BaseException:
    """requests' adapter: MaxRetryError(reason) → requests error (args[0] = the MaxRetryError)."""
    retry = urllib3.exceptions.MaxRetryError(_pool(), "/0/public/Time", reason)
    retry.__cause__ = reason
    error = kind(retry)
    error.__context__ = retry
    return error


def _ccxt(kind: type[BaseException], inner: BaseException | None,
          message: str = "kraken GET https://api.kraken.example/0/public/Time") -> BaseException:
    """ccxt's fetch(): ``raise Kind(details) from e``."""
    error = kind(message)
    error.__cause__ = inner
    return error


def _http_error(status: int, reason: str, body: str) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response._content = body.encode()
    response.encoding = "utf-8"
    response.url = "https://api.kraken.example/0/public/Time"
    response.request = requests.Request("GET", response.url).prepare()
    return requests.HTTPError(f"{status} Server Error", response=response)


def _raised_inside(handler_error: BaseException, context: BaseException) -> BaseException:
    """An exception raised inside ``except context:`` (ccxt's handle_errors in the HTTPError branch)."""
    handler_error.__context__ = context
    return handler_error


def _dns() -> BaseException:
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    resolution = urllib3.exceptions.NameResolutionError("api.kraken.example", _conn(), gai)
    resolution.__cause__ = gai
    return _ccxt(ccxt.NetworkError, _requests_error(requests.ConnectionError, resolution))


def _refused() -> BaseException:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    new = urllib3.exceptions.NewConnectionError(_conn(), f"Failed to establish a new connection: {refused}")
    new.__cause__ = refused
    return _ccxt(ccxt.NetworkError, _requests_error(requests.ConnectionError, new))


def _unassignable() -> BaseException:
    bind = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    new = urllib3.exceptions.NewConnectionError(_conn(), f"Failed to establish a new connection: {bind}")
    new.__cause__ = bind
    return _ccxt(ccxt.NetworkError, _requests_error(requests.ConnectionError, new))


def _read_timeout() -> BaseException:
    sock = TimeoutError("timed out")
    read = urllib3.exceptions.ReadTimeoutError(_pool(), "/0/public/Time", "Read timed out. (read timeout=0.3)")
    read.__context__ = sock
    return _ccxt(ccxt.RequestTimeout, _requests_error(requests.ReadTimeout, read))


def _connect_timeout() -> BaseException:
    connect = urllib3.exceptions.ConnectTimeoutError(_conn(), "Connection to api.kraken.example timed out. (connect timeout=0.3)")
    return _ccxt(ccxt.RequestTimeout, _requests_error(requests.ConnectTimeout, connect))


def _tls() -> BaseException:
    bad = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate")
    wrapped = urllib3.exceptions.SSLError(bad)
    wrapped.__cause__ = bad
    return _ccxt(ccxt.ExchangeError, _requests_error(requests.exceptions.SSLError, wrapped))


def _not_http() -> BaseException:
    import http.client
    bad = http.client.BadStatusLine("\x00\x01garbage")
    protocol = urllib3.exceptions.ProtocolError("Connection aborted.", bad)
    return _ccxt(ccxt.NetworkError, requests.ConnectionError(protocol))


def _status(status: int, reason: str, kind: type[BaseException], body: str = "<html><h1>Down</h1></html>") -> BaseException:
    http_error = _http_error(status, reason, body)
    raised = kind(f"kraken GET https://api.kraken.example/0/public/Time {status} {reason} {body}")
    return _raised_inside(raised, http_error)


CASES = {
    "dns": (_dns, None, "dns", "DNS lookup failed: Failed to resolve 'api.kraken.example' ([Errno -2] Name or service not known)"),
    "refused": (_refused, None, "connect", "cannot connect: [Errno 111] Connection refused (kraken GET https://api.kraken.example/0/public/Time)"),
    "unassignable": (_unassignable, None, "connect", "source address not assignable on this host: [Errno 99] Cannot assign requested address"),
    "read-timeout": (_read_timeout, None, "timeout", "timed out: Read timed out. (read timeout=0.3) (kraken GET"),
    "connect-timeout": (_connect_timeout, None, "timeout", "timed out: Connection to api.kraken.example timed out. (connect timeout=0.3)"),
    "socket-timeout": (lambda: TimeoutError("timed out"), None, "timeout", "timed out"),
    "tls": (_tls, None, "tls", "TLS failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"),
    "raw-ssl": (lambda: ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), None, "tls", "WRONG_VERSION_NUMBER"),
    "not-http": (_not_http, None, "connect", "cannot connect"),
    "reset": (lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), None, "connect", "Connection reset by peer"),
    "503": (lambda: _status(503, "Service Unavailable", ccxt.ExchangeNotAvailable), None, "http",
            "HTTP 503 Service Unavailable from GET /0/public/Time: Down"),
    "504-is-http": (lambda: _status(504, "Gateway Timeout", ccxt.RequestTimeout), None, "http", "HTTP 504 Gateway Timeout"),
    "429": (lambda: _status(429, "Too Many Requests", ccxt.RateLimitExceeded), None, "rate_limit",
            "rate limited: HTTP 429 Too Many Requests"),
    "418-ddos": (lambda: _status(418, "I'm a teapot", ccxt.DDoSProtection), None, "rate_limit", "rate limited: HTTP 418"),
    "401": (lambda: _status(401, "Unauthorized", ccxt.AuthenticationError), None, "auth", "authentication refused: HTTP 401"),
    "403": (lambda: _status(403, "Forbidden", ccxt.ExchangeNotAvailable), None, "auth", "authentication refused: HTTP 403"),
    "rate-limit-class": (lambda: ccxt.RateLimitExceeded("kraken {\"error\":[\"EAPI:Rate limit exceeded\"]}"), 200,
                         "rate_limit", "rate limited: RateLimitExceeded: kraken {\"error\":[\"EAPI:Rate limit exceeded\"]}"),
    "ddos-class": (lambda: ccxt.DDoSProtection("cloudflare"), None, "rate_limit", "DDoSProtection: cloudflare"),
    "invalid-key": (lambda: ccxt.AuthenticationError("kraken {\"error\":[\"EAPI:Invalid key\"]}"), 200, "auth",
                    "authentication refused: AuthenticationError: kraken {\"error\":[\"EAPI:Invalid key\"]}"),
    "permission": (lambda: ccxt.PermissionDenied("kraken {\"error\":[\"EGeneral:Permission denied\"]}"), 200, "auth",
                   "PermissionDenied"),
    "venue-said-no": (lambda: ccxt.ExchangeNotAvailable("kraken {\"error\":[\"EGeneral:Internal error\"]}"), 200, "exchange",
                      "venue error: ExchangeNotAvailable: kraken {\"error\":[\"EGeneral:Internal error\"]}"),
    "nonce-with-200": (lambda: ccxt.InvalidNonce("kraken {\"error\":[\"EAPI:Invalid nonce\"]}"), 200, "exchange", "InvalidNonce"),
    "exchange-error-unknown-status": (lambda: ccxt.InsufficientFunds("kraken {\"error\":[\"EOrder:Insufficient funds\"]}"),
                                      None, "exchange", "venue error: InsufficientFunds"),
    "status-503-given": (lambda: ccxt.ExchangeError("kraken unknown"), 503, "http", "HTTP 503: ExchangeError: kraken unknown"),
    "status-429-given": (lambda: ccxt.ExchangeError("slow down"), 429, "rate_limit", "rate limited: HTTP 429"),
    "status-401-given": (lambda: ccxt.ExchangeError("who are you"), 401, "auth", "authentication refused: HTTP 401"),
    "ccxt-timeout-no-chain": (lambda: ccxt.RequestTimeout("kraken GET x"), None, "timeout", "timed out: RequestTimeout"),
    "ccxt-network-no-chain": (lambda: ccxt.NetworkError("kraken GET x"), None, "connect", "network error: NetworkError"),
    "not-supported": (lambda: ccxt.NotSupported("coinbase cancelAllOrdersAfter() is not supported yet"), None, "other",
                      "NotSupported: coinbase cancelAllOrdersAfter() is not supported yet"),
    "arguments": (lambda: ccxt.ArgumentsRequired("kraken cancelOrder() requires a symbol"), 200, "other", "ArgumentsRequired"),
    "parse-bug": (lambda: KeyError("result"), 200, "other", "KeyError: 'result'"),
    "value-error": (lambda: ValueError("bad"), None, "other", "ValueError: bad"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_classify_error(case: str) -> None:
    make, status, expected_class, expected_detail = CASES[case]
    error_class, detail = classify_error(make(), status)
    assert error_class == expected_class, detail
    assert expected_detail in detail
    assert error_class in ERROR_CLASSES
    assert "\n" not in detail and len(detail) <= 200
    assert " object at 0x" not in detail and "ConnectionPool(" not in detail


def test_classify_error_covers_the_classes_a_call_can_fail_with() -> None:
    produced = {classify_error(make(), status)[0] for make, status, _, _ in CASES.values()}
    assert produced == set(ERROR_CLASSES) - {"busy"}  # "busy" is the service's (a probe still running)


def test_a_transport_failure_beats_the_status_of_an_earlier_answer() -> None:
    # one ccxt call = the markets (200) then the call, which timed out
    assert classify_error(_read_timeout(), 200)[0] == "timeout"
    assert classify_error(_refused(), 200)[0] == "connect"


def test_classify_error_redacts_before_cutting_to_length() -> None:
    prefix = "authentication refused: AuthenticationError: kraken "
    padding = "x" * (180 - len(prefix))  # the secret starts at 181: the cut at 200 falls inside it
    exc = ccxt.AuthenticationError(f"kraken {padding} {SECRET} and more\nlines\n\tafter")
    _, plain = classify_error(exc, 200)
    assert plain.startswith(prefix + padding) and SECRET[:10] in plain and SECRET not in plain  # cut inside it
    _, redacted = classify_error(exc, 200, redact=Redactor([SECRET]))
    assert redacted.startswith(prefix + padding + " *** and more")
    assert SECRET[:4] not in redacted and len(redacted) <= 200 and "\n" not in redacted


def test_venue_call_error() -> None:
    err = VenueCallError("timeout", "timed out: Read timed out.")
    assert (err.error_class, err.detail, str(err)) == ("timeout", "timed out: Read timed out.", "timeout: timed out: Read timed out.")


# ------------------------------------------------------------------ URL rewriting

def test_rewrite_api_urls_keeps_every_path() -> None:
    kraken = ccxt.kraken().urls["api"]
    assert rewrite_api_urls(kraken, "http://127.0.0.1:8080") == {
        "public": "http://127.0.0.1:8080",
        "private": "http://127.0.0.1:8080",
        "zendesk": "http://127.0.0.1:8080/api/v2/help_center/en-us/articles",
    }
    nested = {"v2": {"public": "https://api.coinbase.com/v2", "private": "https://api.coinbase.com:443/v2?x=1"},
              "list": ["wss://ws.example.com/feed", "not a url"], "n": 3}
    assert rewrite_api_urls(nested, "http://[::1]:9000/") == {
        "v2": {"public": "http://[::1]:9000/v2", "private": "http://[::1]:9000/v2?x=1"},
        "list": ["http://[::1]:9000/feed", "not a url"], "n": 3}
    assert rewrite_api_urls("https://api.{hostname}/api", "http://10.0.0.1:1/lab") == "http://10.0.0.1:1/lab/api"
    assert kraken["public"] == "https://api.kraken.com"  # the input is not modified


@pytest.mark.parametrize("bad", ["127.0.0.1:8080", "ftp://host", "http://", "http://h/?q=1", "http://h/#f"])
def test_rewrite_api_urls_refuses_what_is_not_a_base_url(bad: str) -> None:
    with pytest.raises(ValueError, match="api_url"):
        rewrite_api_urls({"a": "https://x"}, bad)


# ------------------------------------------------------------------ make_exchange

def test_make_exchange_settings() -> None:
    creds = VenueCredentials(api_key=API_KEY, secret=SECRET)
    ex = make_exchange("kraken", credentials=creds, source_address="127.0.0.2", api_url="http://127.0.0.1:9999",
                       timeout=0.3, options={"timeDifference": 5})
    assert isinstance(ex, ccxt.kraken) and ex.synchronous  # the sync client (worker threads, not asyncio)
    assert ex.enableRateLimit is True and ex.timeout == 300 and ex.verbose is False
    assert ex.session.trust_env is False
    assert (ex.apiKey, ex.secret) == (API_KEY, SECRET)
    assert ex.options["timeDifference"] == 5  # merged into ccxt's per-exchange options
    assert "adjustForTimeDifference" in ex.options  # ... not replacing ccxt's own
    assert ex.urls["api"]["private"] == "http://127.0.0.1:9999"
    for prefix in ("http://", "https://"):
        adapter = ex.session.get_adapter(prefix + "venue.example/")
        assert isinstance(adapter, SourceAddressAdapter) and adapter.source_address == "127.0.0.2"
    plain = make_exchange("coinbase")
    assert not isinstance(plain.session.get_adapter("https://x/"), SourceAddressAdapter)
    assert plain.urls["api"]["rest"] == "https://api.coinbase.com" and plain.timeout == 800


def test_source_address_adapter_binds_pools_and_proxies() -> None:
    adapter = SourceAddressAdapter("127.0.0.2")
    assert adapter.poolmanager.connection_pool_kw["source_address"] == ("127.0.0.2", 0)
    proxy = adapter.proxy_manager_for("http://proxy.example:3128")
    assert proxy.connection_pool_kw["source_address"] == ("127.0.0.2", 0)
    pool = adapter.poolmanager.connection_from_url("http://venue.example/")
    assert pool.conn_kw["source_address"] == ("127.0.0.2", 0)
    assert SourceAddressAdapter("::1").poolmanager.connection_pool_kw["source_address"] == ("::1", 0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"exchange_id": "krakn"}, "unknown ccxt exchange id 'krakn'; did you mean kraken"),
    ({"exchange_id": "nosuchvenue"}, "unknown ccxt exchange id 'nosuchvenue'"),
    ({"exchange_id": "kraken", "source_address": "eth0"}, "source_address 'eth0': not an IP address"),
    ({"exchange_id": "kraken", "timeout": 0}, "timeout: must be > 0"),
    ({"exchange_id": "kraken", "api_url": "127.0.0.1:80"}, "api_url"),
])
def test_make_exchange_refuses(kwargs: dict, match: str) -> None:
    exchange_id = kwargs.pop("exchange_id")
    with pytest.raises(ValueError, match=match):
        make_exchange(exchange_id, **kwargs)


def test_ccxt_debug_log_of_a_made_exchange_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    creds = VenueCredentials(api_key=API_KEY, secret=SECRET)
    ex = make_exchange("kraken", credentials=creds)
    ccxt_logger = logging.getLogger("ccxt.base.exchange")
    previous = ccxt_logger.level
    ccxt_logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        # the very call ccxt's fetch() makes
        ex.logger.debug("%s %s, Request: %s %s", "POST", "https://api.kraken.com/0/private/BalanceEx",
                        {"API-Key": API_KEY, "API-Sign": "sig"}, f"nonce=1&echo={SECRET}")
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            ex.logger.exception("failed for %s", API_KEY)
        ex.logger.info("100% %s", "done")  # a stray % with args that do not fit still logs
    finally:
        ccxt_logger.setLevel(previous)
    assert API_KEY not in caplog.text and SECRET not in caplog.text
    assert "'API-Key': '***'" in caplog.text and "echo=***" in caplog.text and "boom ***" in caplog.text
    assert [r.name for r in caplog.records] == ["ccxt.base.exchange"] * 3
    caplog.clear()
    ccxt_logger.setLevel(logging.INFO)
    try:
        ex.logger.debug("not shown %s", API_KEY)  # the logger's own level still applies
    finally:
        ccxt_logger.setLevel(previous)
    assert caplog.records == []


# ------------------------------------------------------------------ VenueClient (no network)

def _client(exchange_id: str = "kraken", **kwargs: object) -> VenueClient:
    settings: dict = {"uplink": "fibre", "source_address": None, "api_url": "http://127.0.0.1:9", "timeout": 0.3,
                      "credentials": None}
    settings.update(kwargs)
    return VenueClient("main-" + exchange_id, exchange_id, **settings)


def test_client_repr_and_facts() -> None:
    creds = VenueCredentials(api_key=API_KEY, secret=SECRET, password="hunter22")
    client = _client(credentials=creds, source_address="127.0.0.2")
    for text in (repr(client), str(client), f"{client}"):
        assert_no_values(text)
    assert "credentials='set'" not in repr(client) and "credentials=set" in repr(client)
    assert "source_address='127.0.0.2'" in repr(client)
    assert client.rate_limit == ccxt.kraken().rateLimit / 1000
    assert client.supports("cancelAllOrdersAfter") and client.supports("cancel_all_orders_after")
    assert client.supports("fetch_status") and not _client("coinbase").supports("fetchStatus")
    assert not client.supports("noSuchFeature")


def test_check_calls_and_probe_refuse_a_bad_list() -> None:
    client = _client()
    assert client.check_calls(["fetch_time", "fetch_status"]) == []
    problems = client.check_calls(["fetch_tme", "fetch_ticker", "fetch_balance"])
    assert problems == [
        "unknown probe call 'fetch_tme' (did you mean 'fetch_time'?); allowed: " + ", ".join(PROBE_CALLS),
        "fetch_ticker needs a ticker symbol (e.g. BTC/USD)",
        "fetch_balance needs credentials",
    ]
    assert _client("coinbase").check_calls(["fetch_status"]) == [
        "coinbase does not support fetch_status (ccxt has no fetchStatus)"]
    assert client.check_calls([]) == ["no probe calls; use some of " + ", ".join(PROBE_CALLS)]
    with pytest.raises(ValueError, match="venue main-kraken: fetch_ticker needs a ticker symbol"):
        client.probe(["fetch_ticker"])
    assert _client(ticker_symbol="BTC/USD").check_calls(["fetch_ticker"]) == []


@pytest.mark.parametrize("timeout", [0.5, -1, 0.999])
def test_cancel_all_orders_after_refuses_what_would_disarm_or_is_negative(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"0 \(disarm\) or >= 1 s"):
        _client().cancel_all_orders_after(timeout)


def test_call_result_defaults() -> None:
    result = CallResult(ok=True, latency=0.01)
    assert (result.value, result.error_class, result.detail, result.http_status) == (None, None, "", None)
