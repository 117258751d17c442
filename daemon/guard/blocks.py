"""Blocks on new orders: the kill switch, pauses and the throttle (sans-IO, no trio).

A *block* stops new order records (state ``new``, the ones that would open risk) on a
:class:`Scope` — every venue, one venue, one symbol everywhere, or one symbol at one
venue. Records that reduce or report risk (``open``, fills, ``cancelled`` ...) always
pass: the engine must be able to journal what the venue did.

- ``kill``: stays until ``unkill`` (by a person, with a reason). The kill switch also
  cancels every open order on its scope (the guard's service does that; this module only
  refuses).
- ``pause``: like a kill without the cancels, and it may end by itself (``until``): the
  circuit breakers' ``risk.pause`` response.
- ``throttle``: at most ``rate`` new order records per second (a token bucket with
  ``burst`` tokens), optionally until a time: the breakers' ``risk.throttle`` response.

Every change is a :class:`GuardRecord`: the primary writes it to the journal (one JSON
line, ``"record": "guard"``, ignored by the order-record readers) and every node — primary
and standby — applies the records it reads, in journal order, with :meth:`TradingBlocks.apply`.
So a kill survives a restart and a failover: the blocks are folded from the journal like
the positions are. All times are Unix seconds (wall clock, the same on both hosts), given
by the caller as ``now``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from daemon.guard.errors import GuardError

__all__ = ["Block", "BlockKind", "BlocksWriter", "GuardRecord", "GuardRecordError", "Refusal", "Scope", "Throttle",
           "TradingBlocks", "parse_guard_record", "GUARD_KIND"]

#: The journal record kind of a guard record (``{"record": "guard", ...}``).
GUARD_KIND = "guard"

BlockKind = Literal["kill", "pause"]
Action = Literal["kill", "unkill", "pause", "resume", "throttle", "unthrottle"]
ACTIONS: tuple[Action, ...] = ("kill", "unkill", "pause", "resume", "throttle", "unthrottle")

_VENUE = re.compile(r"[a-z0-9_-]{1,64}")
_SYMBOL = re.compile(r"\S{1,100}")
_MAX_TEXT = 500


class GuardRecordError(GuardError, ValueError):
    """A guard record or a scope that breaks a rule: names the field and the fix."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class Scope:
    """Which new orders a block covers: ``None`` is "every" (venue, symbol)."""

    venue: str | None = None
    symbol: str | None = None

    def __post_init__(self) -> None:
        if self.venue is not None and not _VENUE.fullmatch(self.venue):
            raise GuardRecordError("venue", f"{self.venue!r} is not a venue name",
                                   "use a configured venue name ([venues.NAME]: a-z 0-9 _ -), or leave it out for all")
        if self.symbol is not None and not _SYMBOL.fullmatch(self.symbol):
            raise GuardRecordError("symbol", f"{self.symbol!r} is not a symbol",
                                   "use the ccxt unified symbol (e.g. BTC/USDT), or leave it out for all")

    def covers(self, venue: str, symbol: str) -> bool:
        return (self.venue is None or self.venue == venue) and (self.symbol is None or self.symbol == symbol)

    def contains(self, other: Scope) -> bool:
        """Every order ``other`` covers, this scope covers too."""
        return ((self.venue is None or self.venue == other.venue)
                and (self.symbol is None or self.symbol == other.symbol))

    def describe(self) -> str:
        if self.venue is None and self.symbol is None:
            return "every venue"
        if self.venue is None:
            return f"{self.symbol} on every venue"
        if self.symbol is None:
            return f"venue {self.venue}"
        return f"{self.symbol} on {self.venue}"

    def to_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.venue is not None:
            out["venue"] = self.venue
        if self.symbol is not None:
            out["symbol"] = self.symbol
        return out


@dataclass(frozen=True)
class Block:
    kind: BlockKind
    scope: Scope
    reason: str
    by: str
    since: float
    until: float | None = None  # a pause may end by itself; a kill never does

    def to_dict(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "scope": self.scope.describe(), **self.scope.to_dict(),
                               "reason": self.reason, "by": self.by, "since": self.since}
        if self.until is not None:
            out["until"] = self.until
            out["remaining_s"] = max(0.0, self.until - now)
        return out


@dataclass
class Throttle:
    """A token bucket on new order records: ``rate`` per second, ``burst`` at most."""

    rate: float
    burst: float
    reason: str
    by: str
    since: float
    until: float | None = None
    tokens: float = -1.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst
            self.stamp = self.since

    def take(self, now: float) -> bool:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def to_dict(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"rate": self.rate, "burst": self.burst, "reason": self.reason, "by": self.by,
                               "since": self.since}
        if self.until is not None:
            out["until"] = self.until
            out["remaining_s"] = max(0.0, self.until - now)
        return out


@dataclass(frozen=True)
class Refusal:
    """Why a new order record may not be written: which block, for the engine's error."""

    kind: Literal["kill", "pause", "throttle"]
    scope: str
    reason: str
    by: str

    def message(self) -> str:
        if self.kind == "throttle":
            return (f"throttled: new orders are limited ({self.reason}, by {self.by}); "
                    "retry later or ask an operator to lift it (lifeline risk)")
        verb = "killed" if self.kind == "kill" else "paused"
        undo = "lifeline unkill" if self.kind == "kill" else "lifeline risk resume"
        return f"{verb} on {self.scope} ({self.reason}, by {self.by}): no new orders until {undo}"


@dataclass(frozen=True)
class GuardRecord:
    """One change of the blocks, as written to the journal."""

    action: Action
    scope: Scope
    reason: str
    by: str
    time: float
    until: float | None = None
    rate: float | None = None  # throttle only
    burst: float | None = None  # throttle only

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise GuardRecordError("action", f"{self.action!r} is not a guard action", f"use one of {', '.join(ACTIONS)}")
        for name in ("reason", "by"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip() or len(text) > _MAX_TEXT:
                raise GuardRecordError(name, "must be 1 to 500 characters",
                                       f"say {'why' if name == 'reason' else 'who'} (e.g. --reason TEXT)")
        if self.action == "throttle":
            if self.rate is None or not self.rate > 0:
                raise GuardRecordError("rate", f"{self.rate!r} is not a rate", "give new orders per second, above 0")
            if self.burst is None or not self.burst >= 1:
                raise GuardRecordError("burst", f"{self.burst!r} is not a burst", "give a burst of at least 1")
        if self.until is not None and self.action not in ("pause", "throttle"):
            raise GuardRecordError("until", f"a {self.action} has no end time", "leave until out")

    def to_payload(self) -> bytes:
        data: dict[str, Any] = {"record": GUARD_KIND, "v": 1, "action": self.action, **self.scope.to_dict(),
                                "reason": self.reason, "by": self.by, "time": self.time}
        for name in ("until", "rate", "burst"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


_RECORD_KEYS = {"record", "v", "action", "venue", "symbol", "reason", "by", "time", "until", "rate", "burst"}


def parse_guard_record(payload: bytes) -> GuardRecord | None:
    """The guard record in ``payload``; ``None`` for any other payload; raises
    :class:`GuardRecordError` for a payload that claims ``"record": "guard"`` but breaks a rule."""
    raw = bytes(payload)
    if b'"guard"' not in raw or b'"record"' not in raw:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record") != GUARD_KIND:
        return None
    unknown = sorted(set(data) - _RECORD_KEYS)
    if unknown:
        raise GuardRecordError(unknown[0], "unknown key", f"the keys are {', '.join(sorted(_RECORD_KEYS))}")
    if data.get("v") != 1:
        raise GuardRecordError("v", f"expected 1, found {data.get('v')!r}", "write v: 1")

    def number(name: str, required: bool = False) -> float | None:
        value = data.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GuardRecordError(name, f"expected a number, found {value!r}", f"write {name} as a JSON number")
        return float(value)

    time = number("time", required=True)
    assert time is not None
    action: Any = data.get("action")  # GuardRecord checks every field's type and value
    reason: Any = data.get("reason")
    by: Any = data.get("by")
    return GuardRecord(action=action, scope=Scope(data.get("venue"), data.get("symbol")),
                       reason=reason, by=by, time=time, until=number("until"),
                       rate=number("rate"), burst=number("burst"))


@dataclass
class TradingBlocks:
    """The blocks in force, folded from guard records; :meth:`refusal` decides a new order."""

    blocks: list[Block] = field(default_factory=list)
    throttle: Throttle | None = None
    applied: int = 0

    def apply(self, record: GuardRecord) -> list[Block]:
        """Apply one change; return the blocks it ended (for ``unkill`` / ``resume``).

        ``unkill`` / ``resume`` on a scope end every kill / pause whose scope it contains
        (``unkill`` with no venue and no symbol ends every kill). A second kill on a scope
        already killed is kept too (both reasons show; one unkill ends both)."""
        self.applied += 1
        action = record.action
        if action in ("kill", "pause"):
            kind: BlockKind = "kill" if action == "kill" else "pause"
            self.blocks.append(Block(kind, record.scope, record.reason, record.by, record.time, record.until))
            return []
        if action in ("unkill", "resume"):
            kind = "kill" if action == "unkill" else "pause"
            ended = [b for b in self.blocks if b.kind == kind and record.scope.contains(b.scope)]
            self.blocks = [b for b in self.blocks if b not in ended]
            return ended
        if action == "throttle":
            assert record.rate is not None and record.burst is not None
            self.throttle = Throttle(record.rate, record.burst, record.reason, record.by, record.time, record.until)
            return []
        self.throttle = None  # unthrottle
        return []

    def expire(self, now: float) -> list[Block | Throttle]:
        """End the pauses and the throttle whose ``until`` has passed; return them."""
        ended: list[Block | Throttle] = [b for b in self.blocks if b.until is not None and b.until <= now]
        if ended:
            self.blocks = [b for b in self.blocks if b not in ended]
        if self.throttle is not None and self.throttle.until is not None and self.throttle.until <= now:
            ended.append(self.throttle)
            self.throttle = None
        return ended

    def refusal(self, venue: str, symbol: str, now: float) -> Refusal | None:
        """Whether a new order on (venue, symbol) is refused at ``now``: a kill first, then a
        pause, then the throttle (which spends a token when it lets the order pass)."""
        for kind in ("kill", "pause"):
            for block in self.blocks:
                if block.kind == kind and block.scope.covers(venue, symbol) and (block.until is None or now < block.until):
                    return Refusal(block.kind, block.scope.describe(), block.reason, block.by)
        throttle = self.throttle
        if throttle is not None and (throttle.until is None or now < throttle.until) and not throttle.take(now):
            return Refusal("throttle", "every venue", throttle.reason, throttle.by)
        return None

    def killed(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "kill"]

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"blocks": [b.to_dict(now) for b in self.blocks if b.until is None or now < b.until],
                "throttle": self.throttle.to_dict(now) if self.throttle is not None else None}


class BlocksWriter(Protocol):
    """Who changes the blocks: :class:`daemon.guard.service.GuardService` (through the
    journal on the primary); the kill switch and the breakers write through it."""

    async def write(self, record: GuardRecord, /) -> None:
        """Write the guard record through the journal (primary) and apply it to the blocks
        in force; raise daemon.core.errors.Unavailable when this node cannot (not primary)."""

    def blocks(self) -> TradingBlocks: ...
