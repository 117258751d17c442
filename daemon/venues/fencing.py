"""Venue-side fencing: when the dead-man switch may be re-armed, and how long a deposed
primary's orders can outlive it at the venue. Sans-IO: numbers in, decisions out.

**The arm rule** (:func:`arm_decision`). The primary may trade until ``valid_until`` (the
send time of its last successful lease renewal + ``ttl - safety_margin``, on the host's
CLOCK_MONOTONIC: :mod:`daemon.standby.leadership`). A dead-man arm takes up to its *bound*
``B`` (``deadman_arm_timeout``: from the moment the rule is checked, right before the HTTP
request leaves, until the venue has it or the connection is closed). An arm is sent only
while ``valid_until - now > B``, so the last arm a primary ever sends reaches the venue
before ``valid_until``; a primary that cannot renew stops re-arming *before* it fences.
The service asks twice: in its loop, and in the worker thread right before the request
leaves (with the deadline as it is then: ccxt's rate limiter may have slept seconds).
Its orders then die at the venue by themselves at most ``deadman_timeout`` after
``valid_until``. Without a lease (a fixed role, or no journal) there is no deadline: the
rule says send, and the switch is what ends the orders of a host that stops.

**The survival bound** (:func:`orphan_survival`): the longest a deposed primary's orders
can live at the venue, counted from the send time of its last successful renewal (the last
instant it knew it held the lease)::

    with a lease:     S = (ttl - safety_margin + T) x (1 + max_clock_rate_error)
    without a lease:  S = (B + T) x (1 + max_clock_rate_error)   counted from when it stopped

where ``T`` is ``deadman_timeout`` rounded up to whole seconds (venues count seconds). The
rate error covers the local clock that measures ``valid_until`` and the venue's timer.
Assumed, not enforced: a request the venue receives at all is received before its
connection is closed (no segment lingers in the network longer than that), and the daemon
does not freeze between the check and the send (the hardware watchdog reboots a hung
primary before ``ttl - safety_margin``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NS = 1_000_000_000


@dataclass(frozen=True)
class ArmDecision:
    """Send the arm now, or not, and why (one line); ``retry_in``: seconds after which
    asking again may give another answer (0 when sending; ``math.inf`` when only a role
    change can)."""

    send: bool
    reason: str
    retry_in: float = 0.0


def arm_decision(now_ns: int, valid_until_ns: int | None, bound_ns: int, *, lease: bool,
                 retry_ns: int = 50_000_000) -> ArmDecision:
    """May a dead-man arm whose flight takes at most ``bound_ns`` be sent at ``now_ns``?

    ``valid_until_ns``: the trading deadline (CLOCK_MONOTONIC ns) or None (not primary, or
    past it). ``lease``: whether roles move with a lease (False: a fixed role or no journal,
    no deadline). ``retry_ns``: how soon to ask again while waiting for a renewal to move
    the deadline (the caller's poll period)."""
    if bound_ns < 0:
        raise ValueError(f"bound_ns: must be >= 0, found {bound_ns}")
    if not lease:
        return ArmDecision(True, "no lease: a fixed role trades without a deadline")
    if valid_until_ns is None:
        return ArmDecision(False, "not primary (no trading deadline): the last arm runs out", math.inf)
    left = valid_until_ns - now_ns
    if left <= 0:
        return ArmDecision(False, f"valid_until passed {_ms(-left)} ago: the last arm runs out", math.inf)
    if left <= bound_ns:
        return ArmDecision(False, f"the lease is valid {_ms(left)} more, not more than the arm's bound "
                                  f"{_ms(bound_ns)}: no arm until a renewal moves valid_until",
                           retry_ns / NS)
    return ArmDecision(True, f"the lease is valid {_ms(left)} more, above the arm's bound {_ms(bound_ns)}")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


@dataclass(frozen=True)
class LeaseBound:
    """What the survival bound needs of ``[standby.lease]``, in seconds."""

    ttl: float
    safety_margin: float
    max_clock_rate_error: float


@dataclass(frozen=True)
class Survival:
    """How long a deposed primary's orders can live at one venue: ``seconds`` (None: no
    bound, the switch is off) and the formula with its figures, one line."""

    seconds: float | None
    formula: str


def orphan_survival(*, deadman: bool, deadman_timeout: float, arm_bound: float, lease: LeaseBound | None,
                    max_clock_rate_error: float = 0.01) -> Survival:
    """The survival bound of one venue (see the module docstring). ``max_clock_rate_error``
    is used when there is no lease (the lease's own otherwise)."""
    if not deadman:
        return Survival(None, "deadman = false: nothing ends them but reconciliation on the new primary")
    whole = float(math.ceil(deadman_timeout))
    if lease is not None:
        rate = lease.max_clock_rate_error
        slack = lease.ttl - lease.safety_margin
        seconds = (slack + whole) * (1 + rate)
        return Survival(seconds, f"(ttl {_s(lease.ttl)} - safety_margin {_s(lease.safety_margin)} + deadman_timeout "
                                 f"{_s(whole)}) x (1 + {rate:g}) = {_s(seconds)} after its last successful renewal")
    seconds = (arm_bound + whole) * (1 + max_clock_rate_error)
    return Survival(seconds, f"(deadman_arm_timeout {_s(arm_bound)} + deadman_timeout {_s(whole)}) x "
                             f"(1 + {max_clock_rate_error:g}) = {_s(seconds)} after it stops (no lease)")


def _s(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + " s"
