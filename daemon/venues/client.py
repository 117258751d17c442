"""The ccxt shell: credentials, redaction, a source-bound HTTP session, error classes, calls.

One :class:`VenueClient` wraps one synchronous ccxt exchange object for one (venue, uplink)
pair. ccxt's async client is asyncio-only, so the daemon runs these blocking calls in trio
worker threads; a client is used by one thread at a time (the caller makes sure of it).

Source address. Every connection the client opens is bound to the uplink's source address
(:class:`SourceAddressAdapter`, mounted on ``http://`` and ``https://`` of the exchange's
``requests`` session), so the per-uplink policy-routing table sends it out of that uplink
and a probe really tests the venue *through that uplink*. An address that is not on this
host fails the call with class ``connect`` ("source address ... not assignable").

Error classes (the strings of ``daemon.venues.health.ERROR_CLASSES``). :func:`classify_error`
walks the exception chain (``__cause__``, ``__context__``, urllib3's ``reason`` and
exceptions carried in ``args``) and takes the first rule that matches:

============  ==================================================================
class         when (the first rule that matches, in this order)
============  ==================================================================
dns           ``socket.gaierror``, urllib3 ``NameResolutionError``
tls           ``ssl.SSLError``, requests/urllib3 ``SSLError``
timeout       requests ``Timeout``, urllib3 read/connect timeouts,
              ``socket.timeout``/``TimeoutError``
connect       connection refused/reset/aborted, urllib3 ``NewConnectionError``
              (also: the source address is not on this host), an answer that
              is not HTTP, requests ``ConnectionError``
rate_limit    ``ccxt.RateLimitExceeded`` / ``ccxt.DDoSProtection``, HTTP 429
auth          ``ccxt.AuthenticationError`` (``PermissionDenied``, ...), HTTP 401/403/407
http          any other HTTP status that is not 2xx ("HTTP 503 Service Unavailable
              from GET /0/public/Time: <the page's text>"); the status wins over
              ccxt's own mapping (504 is "http", not ccxt's RequestTimeout)
other         ``ccxt.NotSupported`` / ``ccxt.ArgumentsRequired`` (our mistake)
exchange      any other ccxt error with a 2xx answer (the venue said no)
timeout       ``ccxt.RequestTimeout`` when no status is known
connect       any other ``ccxt.NetworkError`` when no status is known
exchange      any other ``ccxt.ExchangeError`` when no status is known
other         everything else (a parse error on a strange body, ...)
============  ==================================================================

The transport classes come first because one ccxt call can make several requests (the
markets, then the call): a 200 for the markets followed by a timeout is a timeout.
:class:`VenueClient` records the HTTP status of the last answer with a response hook on
the session, so "the venue answered 200 with an error body" (``exchange``) is told apart
from "the venue answered 503" (``http``).

Secrets. :class:`VenueCredentials` never shows its values in ``repr``/``str``;
:func:`load_credentials` refuses a file that group or other may read or write and never
puts a value in an error. Everything the client returns or raises (``CallResult.detail``,
:class:`VenueCallError`) goes through a :class:`Redactor` first, and ``VenueCallError`` is
raised without the original exception attached (no ``__cause__``/``__context__``), because
ccxt's messages carry the venue's answer verbatim and a venue (or a proxy) may echo the
request. ccxt logs every request with its headers (``API-Key``) at DEBUG on
``ccxt.base.exchange``; each exchange made here logs through a redacting adapter instead.

Latency. :meth:`VenueClient.probe` measures the whole round with ``time.monotonic`` minus
the time ccxt's rate limiter (``enableRateLimit``, always on) spent sleeping between the
round's calls: the sleep is the venue's rule, not its speed, and counting it would make a
two-call Kraken probe (rateLimit 1 s) look "slow" forever.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import html
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import stat
import sys
import time
import tomllib
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ccxt
import requests
import requests.adapters
import urllib3.exceptions

from daemon.venues.errors import VenueError

__all__ = [
    "PROBE_CALLS",
    "CallResult",
    "CredentialsError",
    "Redactor",
    "SourceAddressAdapter",
    "VenueCallError",
    "VenueClient",
    "VenueCredentials",
    "classify_error",
    "load_credentials",
    "make_exchange",
    "rewrite_api_urls",
]

PROBE_CALLS = ("fetch_time", "fetch_status", "fetch_ticker", "fetch_balance")
# ccxt's names for the features the probe calls need (exchange.has)
_PROBE_FEATURES = {
    "fetch_time": "fetchTime",
    "fetch_status": "fetchStatus",
    "fetch_ticker": "fetchTicker",
    "fetch_balance": "fetchBalance",
}

DETAIL_MAX = 200
MASK = "***"


# --------------------------------------------------------------------------- credentials

class CredentialsError(VenueError, ValueError):
    """A credentials file or value is unusable. The message names the file and the field,
    never a value."""


_CREDENTIAL_FIELDS = ("api_key", "secret", "password", "uid")
_REQUIRED_FIELDS = ("api_key", "secret")


@dataclass(frozen=True, repr=False)
class VenueCredentials:
    """API credentials for one venue. ``repr``/``str`` never show the values."""

    api_key: str
    secret: str
    password: str | None = None
    uid: str | None = None

    def __post_init__(self) -> None:
        for name in _CREDENTIAL_FIELDS:
            value = getattr(self, name)
            required = name in _REQUIRED_FIELDS
            if value is None and not required:
                continue
            if not isinstance(value, str):
                raise CredentialsError(f"{name}: must be a string (got {type(value).__name__})")
            if not value.strip():
                raise CredentialsError(f"{name}: is empty; put the venue's {name} in the credentials file")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'None' if getattr(self, name) is None else MASK}" for name in _CREDENTIAL_FIELDS
        )
        return f"VenueCredentials({shown})"

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """Every non-empty value (what a :class:`Redactor` must hide)."""
        return [v for v in (self.api_key, self.secret, self.password, self.uid) if v]

    def ccxt_options(self) -> dict[str, str]:
        """The ccxt constructor settings: ``apiKey``, ``secret``, ``password``, ``uid`` (set ones)."""
        options = {"apiKey": self.api_key, "secret": self.secret}
        if self.password is not None:
            options["password"] = self.password
        if self.uid is not None:
            options["uid"] = self.uid
        return options


_TOML_AT = re.compile(r"\(at (line \d+, column \d+|end of document)\)")


def load_credentials(path: Path) -> VenueCredentials:
    """Read a TOML credentials file::

        api_key = "..."
        secret = "..."
        password = "..."   # optional (some venues call it passphrase)
        uid = "..."        # optional

    The file must not be readable or writable by group or other (``mode & 0o077 == 0``;
    checked on ``st_mode``, so it holds for root too, who could read it anyway). Unknown
    keys are refused (a typo must not silently drop a credential). Values are taken as
    they are. Errors name the file and the field and say how to fix it; they never hold a
    value or a line of the file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such file; create it (api_key, secret) with mode 0600") from None
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsError(f"{path}: not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise CredentialsError(
            f"{path}: mode {mode:04o} lets group or other read or write the credentials; "
            f"run: chmod 600 {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CredentialsError(f"{path}: line {line}: not UTF-8 text; the file must be TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages may quote a character or a key of the file: only the position.
        match = _TOML_AT.search(str(exc))
        where = match.group(1) if match else "unknown position"
        raise CredentialsError(
            f"{path}: not valid TOML ({where}); expected lines like: api_key = \"...\" and "
            f"secret = \"...\" (quoted strings)") from None
    unknown = sorted(k for k in data if k not in _CREDENTIAL_FIELDS)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key.lower(), _CREDENTIAL_FIELDS, n=1, cutoff=0.5)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise CredentialsError(
            f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
            f"allowed: {', '.join(_CREDENTIAL_FIELDS)}")
    for name in _CREDENTIAL_FIELDS:
        if name not in data:
            if name in _REQUIRED_FIELDS:
                raise CredentialsError(f"{path}: {name}: missing; add {name} = \"...\"")
            continue
        value = data[name]
        if not isinstance(value, str):
            raise CredentialsError(
                f"{path}: {name}: must be a quoted string, not a TOML {type(value).__name__}")
        if not value.strip():
            raise CredentialsError(f"{path}: {name}: is empty; put the venue's {name} there")
    return VenueCredentials(
        api_key=data["api_key"], secret=data["secret"],
        password=data.get("password"), uid=data.get("uid"))


# --------------------------------------------------------------------------- redaction

class Redactor:
    """Replaces every secret (of at least 4 characters) in a text with ``***``.

    Covered forms of each secret: the raw value, ``urllib.parse.quote(value, safe="")``,
    ``quote_plus``, and the JSON-escaped forms (``\\/`` for ``/``, ``\\n`` for a newline,
    as in a PEM key echoed inside a JSON body). Shorter secrets are ignored: masking every
    "abc" in a log would hide everything and protect nothing.
    """

    MIN_LENGTH = 4

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < self.MIN_LENGTH:
                continue
            json_form = json.dumps(secret)[1:-1]
            json_ascii_off = json.dumps(secret, ensure_ascii=False)[1:-1]
            for form in (
                secret,
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret, safe=""),
                json_form,
                json_ascii_off,
                json_form.replace("/", "\\/"),
                json_ascii_off.replace("/", "\\/"),
            ):
                if len(form) >= self.MIN_LENGTH:
                    forms.add(form)
        self._count = len(forms)
        # longest first, so a form that contains another is masked whole
        ordered = sorted(forms, key=lambda s: (-len(s), s))
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"Redactor({self._count} forms)"


def _identity(text: str) -> str:
    return text


class _RedactingLogger(logging.LoggerAdapter):
    """ccxt's ``self.logger`` for our exchanges: formats, redacts, then logs one string.

    ccxt logs each request with its headers (``API-Key``) and body at DEBUG on
    ``ccxt.base.exchange``; whoever turns that logger up must still not see a credential.
    """

    def __init__(self, logger: logging.Logger, redact: Callable[[str], str]) -> None:
        super().__init__(logger, {})
        self._redact = redact

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join([str(msg), *map(str, args)])
        exc_info = kwargs.pop("exc_info", None)
        kwargs.pop("stack_info", None)
        if exc_info:
            if exc_info is True:
                exc_info = sys.exc_info()
            elif isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            if exc_info[0] is not None:
                text += "\n" + "".join(traceback.format_exception(*exc_info))
        self.logger.log(level, "%s", self._redact(text), **kwargs)


# --------------------------------------------------------------------------- errors

# "<urllib3.connection.HTTPConnection object at 0x..>: ", "<HTTPConnection(host=.., port=..) at 0x..>: ",
# "HTTPConnection(host='..', port=..): ", "HTTPConnectionPool(host='..', port=..): " — noise in urllib3's messages
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>:?\s*|\bHTTPS?Connection(?:Pool)?\(host=[^)]*\):\s*")
_TAGS = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", _OBJECT_REPR.sub("", text)).strip()


def _clip(text: str, limit: int = DETAIL_MAX) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chain(exc: BaseException, limit: int = 64) -> list[BaseException]:
    """The exception and everything it was caused by, outermost first (breadth first)."""
    seen: set[int] = set()
    out: list[BaseException] = []
    queue: list[BaseException | None] = [exc]
    while queue and len(out) < limit:
        current = queue.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        out.append(current)
        queue.append(current.__cause__)
        queue.append(current.__context__)
        reason = getattr(current, "reason", None)  # urllib3 MaxRetryError / ProxyError
        if isinstance(reason, BaseException):
            queue.append(reason)
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                queue.append(arg)
    return out


def _message(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if isinstance(exc, urllib3.exceptions.HTTPError) and len(args) > 1 and isinstance(args[-1], str):
        text = args[-1]  # ConnectTimeoutError(conn, "Connection to HOST timed out. ...")
    else:
        text = str(exc)
    return _one_line(text) or type(exc).__name__


def _innermost(chain: list[BaseException], match: Callable[[BaseException], bool]) -> BaseException | None:
    """The innermost matching exception that says more than "timed out" (socket.timeout's
    whole message; urllib3's wrapper says which timeout and how long). For DNS, urllib3's
    NameResolutionError, which names the host."""
    found = [e for e in chain if match(e)]
    named = [e for e in found if isinstance(e, urllib3.exceptions.NameResolutionError)]
    if named:
        return named[-1]
    for e in reversed(found):
        if _message(e).lower() not in ("timed out", type(e).__name__.lower()):
            return e
    return found[-1] if found else None


def _is_dns(e: BaseException) -> bool:
    return isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError))


def _is_tls(e: BaseException) -> bool:
    return isinstance(e, (ssl.SSLError, ssl.CertificateError, requests.exceptions.SSLError,
                          urllib3.exceptions.SSLError))


def _is_timeout(e: BaseException) -> bool:
    if isinstance(e, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError
        return False
    return isinstance(e, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError,
                          socket.timeout, TimeoutError))


_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EADDRNOTAVAIL,
                   errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
                   errno.EPIPE, errno.EINVAL}


def _is_connect(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, urllib3.exceptions.NewConnectionError,
                      urllib3.exceptions.ProtocolError, requests.exceptions.ConnectionError)):
        return True
    if isinstance(e, http.client.HTTPException):  # BadStatusLine, RemoteDisconnected, ...
        return True
    return isinstance(e, OSError) and e.errno in _CONNECT_ERRNOS


def _transport_detail(summary: str, chain: list[BaseException], match: Callable[[BaseException], bool]) -> str:
    inner = _innermost(chain, match)
    inner_text = _message(inner) if inner is not None else ""
    outer = chain[0]
    outer_text = _message(outer)
    if isinstance(outer, ccxt.BaseError) and outer_text and outer_text not in inner_text:
        # ccxt's message is "<id> <METHOD> <url>": which request it was
        return f"{summary}: {inner_text} ({outer_text})" if inner_text else f"{summary} ({outer_text})"
    return f"{summary}: {inner_text}" if inner_text else summary


def _http_detail(status: int, chain: list[BaseException]) -> str:
    response = None
    for e in chain:
        response = getattr(e, "response", None)
        if isinstance(response, requests.Response):
            break
        response = None
    if response is None:
        outer = chain[0]
        return f"HTTP {status}: {type(outer).__name__}: {_message(outer)}"
    reason = response.reason or ""
    where = ""
    if response.request is not None and response.request.url:
        where = f" from {response.request.method} {urllib.parse.urlsplit(response.request.url).path or '/'}"
    try:
        body = _one_line(html.unescape(_TAGS.sub(" ", response.text or "")))
    except Exception:  # noqa: BLE001 - a body we cannot decode is no reason to fail
        body = ""
    text = f"HTTP {status} {reason}".rstrip() + where
    return f"{text}: {body}" if body else text


def classify_error(exc: BaseException, http_status: int | None = None, *,
                   redact: Callable[[str], str] | None = None) -> tuple[str, str]:
    """(error class, one-line detail of at most 200 characters) for an exception of a venue call.

    ``http_status`` is the status of the last answer when the caller knows it (a ccxt error
    raised from a 200 with an error body carries no HTTP exception); otherwise the status is
    taken from a ``requests.HTTPError`` in the chain. ``redact`` is applied to the detail
    before it is cut to length (so a secret can never be cut in half and escape the mask).
    See the module docstring for the rules.
    """
    cls, detail = _classify(exc, http_status)
    if redact is not None:
        detail = redact(detail)
    return cls, _clip(detail)


def _classify(exc: BaseException, http_status: int | None) -> tuple[str, str]:
    chain = _chain(exc)
    if any(_is_dns(e) for e in chain):
        return "dns", _transport_detail("DNS lookup failed", chain, _is_dns)
    if any(_is_tls(e) for e in chain):
        return "tls", _transport_detail("TLS failed", chain, _is_tls)
    if any(_is_timeout(e) for e in chain):
        return "timeout", _transport_detail("timed out", chain, _is_timeout)
    if any(_is_connect(e) for e in chain):
        summary = "cannot connect"
        for e in chain:
            if isinstance(e, OSError) and e.errno == errno.EADDRNOTAVAIL:
                summary = "source address not assignable on this host"
        return "connect", _transport_detail(summary, chain, _is_connect)

    status = http_status
    for e in chain:
        response = getattr(e, "response", None)
        if isinstance(e, requests.HTTPError) and isinstance(response, requests.Response):
            status = response.status_code
            break

    ccxt_error = next((e for e in chain if isinstance(e, ccxt.BaseError)), None)
    ccxt_text = f"{type(ccxt_error).__name__}: {_message(ccxt_error)}" if ccxt_error is not None else ""
    http_error = status is not None and not 200 <= status < 300
    # with an HTTP error status, say so (and show the page's text, not its markup)
    answer = _http_detail(status, chain) if http_error and status is not None else ccxt_text
    if any(isinstance(e, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)) for e in chain) or status == 429:
        return "rate_limit", f"rate limited: {answer}"
    if any(isinstance(e, ccxt.AuthenticationError) for e in chain) or status in (401, 403, 407):
        return "auth", f"authentication refused: {answer}"
    if http_error and status is not None:
        return "http", answer
    if any(isinstance(e, (ccxt.NotSupported, ccxt.ArgumentsRequired)) for e in chain):
        return "other", ccxt_text
    if ccxt_error is not None:
        if status is not None:  # 2xx: the venue answered and said no
            return "exchange", f"venue error: {ccxt_text}"
        if isinstance(ccxt_error, ccxt.RequestTimeout):
            return "timeout", f"timed out: {ccxt_text}"
        if isinstance(ccxt_error, ccxt.NetworkError):
            return "connect", f"network error: {ccxt_text}"
        if isinstance(ccxt_error, ccxt.ExchangeError):
            return "exchange", f"venue error: {ccxt_text}"
    return "other", f"{type(exc).__name__}: {_message(exc)}"


class VenueCallError(VenueError):
    """A venue call failed. ``error_class`` is one of the health error classes; ``detail`` is
    one redacted line. Raised without the original exception attached."""

    def __init__(self, error_class: str, detail: str) -> None:
        super().__init__(f"{error_class}: {detail}")
        self.error_class = error_class
        self.detail = detail


class ArmRefused(VenueCallError):
    """A dead-man arm the fencing rule refused right before its request left (class
    ``lease``): nothing was sent."""


# --------------------------------------------------------------------------- the exchange

class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose connections (direct and through a proxy) are bound to one
    source address (port chosen by the kernel)."""

    # requests' stubs declare __attrs__ per instance; it is HTTPAdapter's class attribute (pickling)
    __attrs__: ClassVar[list[str]] = [*requests.adapters.HTTPAdapter.__attrs__, "source_address"]  # type: ignore[misc]

    def __init__(self, source_address: str, **kwargs: Any) -> None:
        self.source_address = str(ipaddress.ip_address(source_address))
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["source_address"] = (self.source_address, 0)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["source_address"] = (self.source_address, 0)
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def __repr__(self) -> str:
        return f"SourceAddressAdapter({self.source_address})"


_URL_BASE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def rewrite_api_urls(api: Any, api_url: str) -> Any:
    """A copy of ccxt's ``urls["api"]`` (a string, or dicts/lists of them) with the
    ``scheme://host[:port]`` of every URL replaced by ``api_url`` (its path, if any, becomes
    a prefix); each URL keeps its own path. Strings that are not URLs are kept."""
    base = _check_api_url(api_url).rstrip("/")
    if isinstance(api, str):
        match = _URL_BASE.match(api)
        return base + api[match.end():] if match else api
    if isinstance(api, dict):
        return {key: rewrite_api_urls(value, base) for key, value in api.items()}
    if isinstance(api, (list, tuple)):
        return type(api)(rewrite_api_urls(value, base) for value in api)
    return api


def _check_api_url(api_url: str) -> str:
    parts = urllib.parse.urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"api_url {api_url!r}: expected http(s)://HOST[:PORT][/PATH]")
    if parts.query or parts.fragment:
        raise ValueError(f"api_url {api_url!r}: no query or fragment allowed")
    return api_url


def make_exchange(exchange_id: str, *, credentials: VenueCredentials | None = None,
                  source_address: str | None = None, api_url: str | None = None,
                  timeout: float = 0.8, options: dict | None = None) -> ccxt.Exchange:
    """A synchronous ccxt exchange object set up for the daemon.

    ``enableRateLimit`` on; ``timeout`` in seconds (ccxt wants ms); the session ignores the
    environment (no ``HTTP(S)_PROXY``/``.netrc`` surprises); with ``source_address`` every
    connection is bound to it; with ``api_url`` every API URL points there (the lab's
    emulator); ``options`` is merged into ccxt's per-exchange ``options``. ccxt's debug
    logging of requests goes through a redactor of the credentials.
    """
    if not isinstance(exchange_id, str) or exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(str(exchange_id).lower(), ccxt.exchanges, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see ccxt.exchanges"
        raise ValueError(f"unknown ccxt exchange id {exchange_id!r}{hint}")
    if not timeout > 0:
        raise ValueError(f"timeout: must be > 0 seconds (got {timeout!r})")
    if source_address is not None:
        try:
            source_address = str(ipaddress.ip_address(source_address))
        except ValueError:
            raise ValueError(f"source_address {source_address!r}: not an IP address") from None
    if api_url is not None:
        _check_api_url(api_url)
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": max(1, round(timeout * 1000)),
        "verbose": False,
    }
    if credentials is not None:
        config.update(credentials.ccxt_options())
    if options:
        config["options"] = dict(options)
    exchange = getattr(ccxt, exchange_id)(config)
    exchange.session.trust_env = False
    if source_address is not None:
        adapter = SourceAddressAdapter(source_address)
        exchange.session.mount("http://", adapter)
        exchange.session.mount("https://", adapter)
    if api_url is not None:
        exchange.urls["api"] = rewrite_api_urls(exchange.urls["api"], api_url)
    redact = Redactor(credentials.secrets()) if credentials is not None else _identity
    exchange.logger = _RedactingLogger(logging.getLogger("ccxt.base.exchange"), redact)
    return exchange


# --------------------------------------------------------------------------- the client

@dataclass(frozen=True)
class CallResult:
    """The outcome of one probe round. ``latency`` in seconds; ``detail`` is redacted."""

    ok: bool
    latency: float
    value: Any = None
    error_class: str | None = None
    detail: str = ""
    http_status: int | None = None


def _camel(feature: str) -> str:
    if "_" not in feature:
        return feature
    first, *rest = feature.split("_")
    return first + "".join({"ohlcv": "OHLCV"}.get(p, p.capitalize()) for p in rest)


class VenueClient:
    """One ccxt exchange object for one (venue, uplink). Blocking; one thread at a time.

    Every call either returns ccxt's answer or raises :class:`VenueCallError` with a
    redacted detail; a raw ccxt/requests exception never leaves this class.
    """

    def __init__(self, venue: str, exchange_id: str, *, uplink: str | None, source_address: str | None,
                 api_url: str | None, timeout: float, credentials: VenueCredentials | None,
                 ticker_symbol: str | None = None, options: dict | None = None) -> None:
        self.venue = venue
        self.exchange_id = exchange_id
        self.uplink = uplink
        self.source_address = source_address
        self.api_url = api_url
        self.timeout = timeout
        self.ticker_symbol = ticker_symbol
        self.has_credentials = credentials is not None
        self._redact: Callable[[str], str] = (
            Redactor(credentials.secrets()) if credentials is not None else _identity)
        self.exchange = make_exchange(exchange_id, credentials=credentials, source_address=source_address,
                                      api_url=api_url, timeout=timeout, options=options)
        self.last_http_status: int | None = None
        self._throttled = 0.0
        self._closed = False
        self.exchange.session.hooks["response"].append(self._record_status)
        original_throttle = self.exchange.throttle

        def throttle(cost: Any = None) -> Any:
            started = time.monotonic()
            try:
                return original_throttle(cost)
            finally:
                self._throttled += time.monotonic() - started

        self.exchange.throttle = throttle

    def __repr__(self) -> str:
        return (f"VenueClient(venue={self.venue!r}, exchange={self.exchange_id!r}, uplink={self.uplink!r}, "
                f"source_address={self.source_address!r}, api_url={self.api_url!r}, "
                f"credentials={'set' if self.has_credentials else 'none'})")

    __str__ = __repr__

    # ---- facts

    @property
    def rate_limit(self) -> float:
        """Seconds ccxt waits between two requests (the venue's rate limit)."""
        return float(self.exchange.rateLimit) / 1000.0

    def supports(self, feature: str) -> bool:
        """Whether ccxt implements ``feature`` for this venue (``exchange.has``; ``emulated``
        counts). Accepts ccxt's names (``cancelAllOrdersAfter``) and ours (``cancel_all_orders_after``)."""
        return bool(self.exchange.has.get(_camel(feature)))

    def check_calls(self, calls: Sequence[str]) -> list[str]:
        """What is wrong with a list of probe calls for this client (empty: fine)."""
        problems = []
        if not calls:
            problems.append("no probe calls; use some of " + ", ".join(PROBE_CALLS))
        for call in calls:
            if call not in PROBE_CALLS:
                close = difflib.get_close_matches(call, PROBE_CALLS, n=1)
                problems.append(f"unknown probe call {call!r}"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + f"; allowed: {', '.join(PROBE_CALLS)}")
                continue
            if not self.supports(_PROBE_FEATURES[call]):
                problems.append(f"{self.exchange_id} does not support {call} (ccxt has no {_PROBE_FEATURES[call]})")
            if call == "fetch_ticker" and not self.ticker_symbol:
                problems.append("fetch_ticker needs a ticker symbol (e.g. BTC/USD)")
            if call == "fetch_balance" and not self.has_credentials:
                problems.append("fetch_balance needs credentials")
        return problems

    # ---- calls

    def _record_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_http_status = response.status_code

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise VenueCallError("other", f"{self.venue}: client closed")
        self.last_http_status = None
        try:
            return method(*args)
        except ArmRefused:
            raise  # the fencing rule said no before the request left: not a venue error
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified, redacted error
            error_class, detail = classify_error(exc, self.last_http_status, redact=self._redact)
        if error_class == "connect" and self.source_address and detail.startswith("source address not"):
            detail = _clip(f"source address {self.source_address} not" + detail[len("source address not"):])
        # raised here, outside the except block: no __context__ with the raw (unredacted) error
        raise VenueCallError(error_class, detail)

    def probe(self, calls: Sequence[str]) -> CallResult:
        """Run the probe calls in order (blocking); stop at the first failure.

        ``value`` maps each call that succeeded to its result. ``fetch_status`` answering
        anything but ``"ok"`` is a failure of class ``exchange`` ("status maintenance").
        ``latency``: the whole round (``time.monotonic``) minus rate-limiter sleeps.
        A list that :meth:`check_calls` refuses raises ``ValueError``.
        """
        problems = self.check_calls(calls)
        if problems:
            raise ValueError(f"venue {self.venue}: " + "; ".join(problems))
        values: dict[str, Any] = {}
        self._throttled = 0.0
        started = time.monotonic()

        def result(ok: bool, error_class: str | None = None, detail: str = "") -> CallResult:
            latency = max(0.0, time.monotonic() - started - self._throttled)
            return CallResult(ok=ok, latency=latency, value=values, error_class=error_class,
                              detail=detail, http_status=self.last_http_status)

        for call in calls:
            try:
                if call == "fetch_ticker":
                    value = self._call(self.exchange.fetch_ticker, self.ticker_symbol)
                else:
                    value = self._call(getattr(self.exchange, call))
            except VenueCallError as exc:
                return result(False, exc.error_class, _clip(f"{call}: {exc.detail}"))
            values[call] = value
            if call == "fetch_status":
                status = value.get("status") if isinstance(value, dict) else None
                if status != "ok":
                    return result(False, "exchange", _clip(self._redact(f"fetch_status: status {status}")))
        return result(True)

    def fetch_open_orders(self) -> list[dict]:
        return self._call(self.exchange.fetch_open_orders)

    def fetch_positions(self) -> list[dict]:
        return self._call(self.exchange.fetch_positions)

    def fetch_balance(self) -> dict:
        return self._call(self.exchange.fetch_balance)

    def cancel_order(self, order_id: str, symbol: str | None) -> dict:
        return self._call(self.exchange.cancel_order, order_id, symbol)

    # ---- the kill switch's calls (daemon/guard/killswitch.py): each says how many it cancelled

    def cancel_all_orders(self) -> int | None:
        """The venue's cancel-all (every open order of the key); the count it answered, if any."""
        response = self._call(self.exchange.cancel_all_orders)
        return _cancel_count(response)

    def cancel_orders(self, order_ids: Sequence[str], symbol: str | None) -> tuple[int | None, list[str]]:
        """Cancel a batch by venue order id: (how many the venue cancelled, the ids it did not
        know). Coinbase answers per id (``batch_cancel``: ``success``, ``failure_reason``), so
        its implicit endpoint is called directly (ccxt's cancelOrders raises on the first
        unknown id); others through ccxt's ``cancelOrders``."""
        ids = [str(i) for i in order_ids]
        if self.exchange_id == "coinbase":
            response = self._call(self.exchange.v3PrivatePostBrokerageOrdersBatchCancel, {"order_ids": ids})
            results = response.get("results") if isinstance(response, dict) else None
            if not isinstance(results, list):
                return None, []
            done = [r for r in results if isinstance(r, dict) and r.get("success") is True]
            gone = [str(r.get("order_id")) for r in results
                    if isinstance(r, dict) and r.get("success") is not True]
            return len(done), gone
        found: list[bool] = []

        def call() -> Any:
            try:
                return self.exchange.cancel_orders(ids, symbol)
            except ccxt.OrderNotFound:
                found.append(False)
                return None

        response = self._call(call)
        if found:
            return 0, ids
        return _cancel_count(response), []

    def cancel_order_or_gone(self, order_id: str, symbol: str | None) -> bool:
        """Cancel one order by venue id: True cancelled, False the venue does not know it
        (already gone: counts as cancelled)."""
        if self.exchange_id == "coinbase":  # ccxt's cancelOrder raises BadRequest for an unknown id
            count, _ = self.cancel_orders([order_id], symbol)
            return count == 1

        def call() -> bool:
            try:
                self.exchange.cancel_order(order_id, symbol)
            except ccxt.OrderNotFound:
                return False
            return True

        return bool(self._call(call))

    def cancel_all_orders_after(self, timeout: float, *, send_if: Callable[[], str | None] | None = None,
                                bound: float | None = None) -> dict:
        """Arm the venue's dead-man switch: it cancels every open order ``timeout`` seconds
        from now unless re-armed. ``0`` disarms. Venues count whole seconds, so anything
        between 0 and 1 s is refused rather than rounded to 0 (which would disarm).

        Venue-side fencing (:mod:`daemon.venues.fencing`): ``send_if`` is asked right before
        the request leaves (after the nonce lock, ccxt's rate-limit sleep and the market
        list): a reason refuses it (:class:`ArmRefused`, nothing sent). ``bound``: the arm's
        HTTP request gets ``bound / 2`` to connect and ``bound / 2`` to be answered, then its
        connection is closed."""
        if timeout != 0 and not timeout >= 1:
            raise ValueError(f"cancel_all_orders_after: timeout must be 0 (disarm) or >= 1 s (got {timeout!r})")
        if send_if is None and bound is None:
            return self._call(self.exchange.cancel_all_orders_after, round(timeout * 1000))
        exchange = self.exchange
        if getattr(exchange, "markets", None) is None:
            self._call(exchange.load_markets)  # public, at the ordinary timeout: not part of the arm's bound
        original_fetch, original_timeout = exchange.fetch, exchange.timeout

        def fetch(*args: Any, **kwargs: Any) -> Any:
            reason = send_if() if send_if is not None else None
            if reason is not None:
                raise ArmRefused("lease", reason)
            return original_fetch(*args, **kwargs)

        exchange.fetch = fetch
        if bound is not None:
            exchange.timeout = max(1, round(bound * 1000 / 2))
        try:
            return self._call(exchange.cancel_all_orders_after, round(timeout * 1000))
        finally:
            exchange.fetch, exchange.timeout = original_fetch, original_timeout

    def close(self) -> None:
        """Close the HTTP session (idempotent). Later calls fail with class ``other``."""
        self._closed = True
        with contextlib.suppress(Exception):  # closing must not fail
            self.exchange.close()


def _cancel_count(response: Any) -> int | None:
    """How many orders a ccxt cancel answer says were cancelled: Kraken's ``{"result":
    {"count": N}}`` (ccxt wraps it as ``[{"info": ...}]``), else the number of orders listed."""
    items = response if isinstance(response, list) else [response]
    for item in items:
        info = item.get("info") if isinstance(item, dict) else None
        result = info.get("result") if isinstance(info, dict) else None
        count = result.get("count") if isinstance(result, dict) else None
        if count is not None:
            try:
                return int(count)
            except (TypeError, ValueError):
                return None
    if isinstance(response, list) and all(isinstance(i, dict) and i.get("id") for i in response):
        return len(response)
    return None
