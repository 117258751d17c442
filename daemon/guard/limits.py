"""The risk limits: a TOML file signed like the playbooks (sans-IO parsing; the file read
and the signature check are the caller's, through :class:`LimitsVerifier`).

Nobody edits a limit alone: the file ``limits.toml`` is refused unless ``limits.toml.sig``
beside it holds valid signatures by at least the keyring's threshold of distinct keys
(m of n, the recovery keyring), it has not expired, and its ``version`` is not lower than
a version already loaded on this host (anti-rollback; the same version with other bytes
is refused too: a version names one content). The signatures use their own context
(``lifeline-limits-signature-v1``): a playbook signature is never valid on a limits file,
nor the other way round. Sign with ``lifeline risk sign limits.toml --key NAME.key``
(each operator in turn), check with ``lifeline risk verify limits.toml``.

Format::

    version = 3                          # integer >= 1; raise it on every change
    expires = 2027-03-01T00:00:00Z       # a TOML date-time with an offset
    no_reference = "refuse"              # a price collar with no reference price: "refuse" | "pass"
    max_message_rate = 500               # new order records per second, every venue (optional)
    max_daily_loss = "25000"             # quote currency, every venue: realised since 00:00 UTC
                                         # plus the open positions' unrealised P&L (optional)
    duplicate_client_order_id = "refuse" # a `new` record reusing a (venue, client_order_id): "refuse" | "pass"

    [[limits]]                           # any number; venue / symbol "*" (or left out) = every
    venue = "*"
    symbol = "*"
    max_order_amount = "2"               # the order's amount
    max_order_notional = "100000"        # amount x price (x the reference price for a market order)
    price_collar = "0.05"                # |price / reference - 1|, reference = the last mark
    max_open_orders = 100                # open orders (new, open, partially_filled) on (venue, symbol)
    max_position = "10"                  # |position + open orders on the order's side + amount|

For one (venue, symbol), each limit comes from the most specific ``[[limits]]`` entry that
sets it: venue and symbol, then venue with ``*``, then ``*`` with symbol, then ``*``/``*``.
A limit nobody sets does not apply. Decimals are strings (``"0.5"``) or numbers.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol

from daemon.guard.errors import GuardError

__all__ = ["LIMIT_NAMES", "Limits", "LimitSet", "LimitsError", "LimitsVerifier", "SignedLimits", "load_limits",
           "parse_limits"]

#: The per (venue, symbol) limits, in the order status shows them.
LIMIT_NAMES: tuple[str, ...] = ("max_order_amount", "max_order_notional", "price_collar", "max_open_orders",
                                "max_position")
_DECIMAL_LIMITS = frozenset({"max_order_amount", "max_order_notional", "price_collar", "max_position"})
_TOP_KEYS = frozenset({"version", "expires", "no_reference", "max_message_rate", "max_daily_loss",
                       "duplicate_client_order_id", "limits"})
_ENTRY_KEYS = frozenset({"venue", "symbol", *LIMIT_NAMES})

REASONS = frozenset({"no_signatures", "modified", "duplicate_key", "unknown_key", "revoked_key", "threshold",
                     "invalid", "expired", "rollback", "pinned", "missing"})


class LimitsError(GuardError):
    """The limits file is refused: ``reason`` (a stable word: :data:`REASONS`) and one line
    naming the file, what is wrong and the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class LimitsVerifier(Protocol):
    """The signature and anti-rollback checks (the recovery keyring's; :mod:`daemon.app`
    injects one, see :mod:`daemon.risk`). Each raises :class:`LimitsError`."""

    def signers(self, path: Path, data: bytes) -> tuple[str, ...]:
        """The holders whose signatures over ``data`` count (at least the threshold), or raise."""

    def check_version(self, path: Path, version: int, sha256: str) -> None:
        """Raise when ``version`` is below the highest loaded here, or was loaded with other bytes."""

    def record_version(self, version: int, sha256: str) -> None:
        """Remember that this version (these bytes) was loaded (durably)."""


@dataclass(frozen=True)
class LimitSet:
    """The limits of one ``[[limits]]`` entry (None: this entry does not set it)."""

    venue: str = "*"
    symbol: str = "*"
    max_order_amount: Decimal | None = None
    max_order_notional: Decimal | None = None
    price_collar: Decimal | None = None
    max_open_orders: int | None = None
    max_position: Decimal | None = None

    def specificity(self) -> int:
        return (2 if self.venue != "*" else 0) + (1 if self.symbol != "*" else 0)

    def matches(self, venue: str, symbol: str) -> bool:
        return self.venue in ("*", venue) and self.symbol in ("*", symbol)


@dataclass(frozen=True)
class Resolved:
    """The limits in force on one (venue, symbol), and which entry set each."""

    max_order_amount: Decimal | None = None
    max_order_notional: Decimal | None = None
    price_collar: Decimal | None = None
    max_open_orders: int | None = None
    max_position: Decimal | None = None
    source: dict[str, str] = field(default_factory=dict)


@dataclass
class Limits:
    """A parsed limits file (not yet trusted: :func:`load_limits` checks the signatures)."""

    version: int
    expires: datetime
    no_reference: Literal["refuse", "pass"] = "refuse"
    max_message_rate: int | None = None
    max_daily_loss: Decimal | None = None
    duplicate_client_order_id: Literal["refuse", "pass"] = "refuse"
    entries: tuple[LimitSet, ...] = ()
    _cache: dict[tuple[str, str], Resolved] = field(default_factory=dict, repr=False, compare=False)

    def for_(self, venue: str, symbol: str) -> Resolved:
        """The limits on (venue, symbol), the most specific entry first (cached)."""
        key = (venue, symbol)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        values: dict[str, Any] = {}
        source: dict[str, str] = {}
        for entry in sorted((e for e in self.entries if e.matches(venue, symbol)), key=LimitSet.specificity,
                            reverse=True):
            for name in LIMIT_NAMES:
                value = getattr(entry, name)
                if value is not None and name not in values:
                    values[name] = value
                    source[name] = f"{entry.venue}/{entry.symbol}"
        resolved = Resolved(**values, source=source)
        if len(self._cache) < 100_000:
            self._cache[key] = resolved
        return resolved

    def to_dict(self) -> dict[str, Any]:
        def show(value: Any) -> Any:
            return str(value) if isinstance(value, Decimal) else value

        return {"version": self.version, "expires": _iso(self.expires), "no_reference": self.no_reference,
                "max_message_rate": self.max_message_rate, "max_daily_loss": show(self.max_daily_loss),
                "duplicate_client_order_id": self.duplicate_client_order_id,
                "limits": [{"venue": e.venue, "symbol": e.symbol,
                            **{n: show(getattr(e, n)) for n in LIMIT_NAMES if getattr(e, n) is not None}}
                           for e in self.entries]}


@dataclass(frozen=True)
class SignedLimits:
    """Limits that passed every check, with what status shows of them."""

    limits: Limits
    path: Path
    sha256: str
    signers: tuple[str, ...]
    loaded_at: float

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "version": self.limits.version, "expires": _iso(self.limits.expires),
                "signers": list(self.signers), "sha256": self.sha256, "loaded_at": self.loaded_at}


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(source: str, where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LimitsError("invalid", f"{source}: {where}: expected a positive decimal such as \"0.5\", found "
                                     f"{value!r}; write it as a string")
    try:
        number = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or number <= 0:
        raise LimitsError("invalid", f"{source}: {where}: expected a positive decimal such as \"0.5\", found "
                                     f"{value!r}; write a number above 0")
    return number


def _integer(source: str, where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LimitsError("invalid", f"{source}: {where}: expected an integer of at least {minimum}, found {value!r}")
    return value


def _choice(source: str, where: str, value: Any) -> Literal["refuse", "pass"]:
    if value not in ("refuse", "pass"):
        raise LimitsError("invalid", f"{source}: {where}: expected \"refuse\" or \"pass\", found {value!r}")
    return "refuse" if value == "refuse" else "pass"


def parse_limits(data: bytes, source: str = "<limits>") -> Limits:
    """Parse and validate the file's bytes; :class:`LimitsError` ("invalid") names the key."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LimitsError("invalid", f"{source}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise LimitsError("invalid", f"{source}: not TOML: {exc}; fix the syntax") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise LimitsError("invalid", f"{source}: {unknown[0]}: unknown key; the keys are "
                                     f"{', '.join(sorted(_TOP_KEYS))}")
    if "version" not in doc:
        raise LimitsError("invalid", f"{source}: version: missing; write version = 1 (raise it on every change)")
    version = _integer(source, "version", doc["version"], 1)
    expires = doc.get("expires")
    if not isinstance(expires, datetime) or expires.tzinfo is None:
        raise LimitsError("invalid", f"{source}: expires: expected a date-time with an offset such as "
                                     f"2027-03-01T00:00:00Z, found {expires!r}")
    out = Limits(version=version, expires=expires)
    if "no_reference" in doc:
        out.no_reference = _choice(source, "no_reference", doc["no_reference"])
    if "duplicate_client_order_id" in doc:
        out.duplicate_client_order_id = _choice(source, "duplicate_client_order_id", doc["duplicate_client_order_id"])
    if "max_message_rate" in doc:
        out.max_message_rate = _integer(source, "max_message_rate", doc["max_message_rate"], 1)
    if "max_daily_loss" in doc:
        out.max_daily_loss = _decimal(source, "max_daily_loss", doc["max_daily_loss"])
    entries = doc.get("limits", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LimitsError("invalid", f"{source}: limits: expected [[limits]] tables")
    parsed: list[LimitSet] = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(entries):
        where = f"limits[{i}]"
        bad = sorted(set(entry) - _ENTRY_KEYS)
        if bad:
            raise LimitsError("invalid", f"{source}: {where}.{bad[0]}: unknown key; the keys are "
                                         f"{', '.join(sorted(_ENTRY_KEYS))}")
        venue, symbol = entry.get("venue", "*"), entry.get("symbol", "*")
        for name, value in (("venue", venue), ("symbol", symbol)):
            if not isinstance(value, str) or not value or any(c.isspace() for c in value):
                raise LimitsError("invalid", f"{source}: {where}.{name}: expected a name or \"*\", found {value!r}")
        if (venue, symbol) in seen:
            raise LimitsError("invalid", f"{source}: {where}: a second entry for venue {venue!r} symbol {symbol!r}; "
                                         "merge them")
        seen.add((venue, symbol))
        values: dict[str, Any] = {}
        for name in LIMIT_NAMES:
            if name in entry:
                values[name] = (_decimal(source, f"{where}.{name}", entry[name]) if name in _DECIMAL_LIMITS
                                else _integer(source, f"{where}.{name}", entry[name], 0))
        parsed.append(LimitSet(venue=venue, symbol=symbol, **values))
    out.entries = tuple(parsed)
    return out


def load_limits(path: Path, data: bytes, verifier: LimitsVerifier, now: float) -> SignedLimits:
    """Check ``data`` (the bytes of ``path``) in the playbooks' order: signatures (before the
    TOML is parsed), then the format, expiry, anti-rollback; record the version; return the
    trusted limits. Every refusal is a :class:`LimitsError`."""
    signers = verifier.signers(path, data)
    limits = parse_limits(data, str(path))
    moment = datetime.fromtimestamp(now, timezone.utc)
    if moment >= limits.expires:
        raise LimitsError("expired", f"{path}: expired at {_iso(limits.expires)}; review it, raise `version` and "
                                     "`expires`, and have it signed again (lifeline risk sign)")
    sha256 = hashlib.sha256(data).hexdigest()
    verifier.check_version(path, limits.version, sha256)
    verifier.record_version(limits.version, sha256)
    return SignedLimits(limits, path, sha256, signers, now)
