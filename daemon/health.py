"""HTTP health answers for load balancers and keepalived, Patroni's way (sans-IO).

``GET /primary``  200 when this node is an accepting primary before its fence deadline
                  (``valid_until``), else 503.
``GET /standby``  200 when this node is a standby connected to its primary, else 503.
``GET /health``   200 when the daemon runs and every service reports ``ok``, else 503.

The body is a small JSON object (role, epoch, why) so ``curl`` shows the reason. The
metrics listener (:mod:`daemon.metrics`) routes the three paths here; the facts come
from :meth:`daemon.app.Daemon.health_facts`. No trio: a function of the facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PATHS = ("/primary", "/standby", "/health")


@dataclass(frozen=True)
class HealthFacts:
    node: str
    role: str                        # primary | standby | waiting | fenced | none (no [standby])
    epoch: int = 0
    accepting: bool = False          # the journal accepts appends
    may_trade: bool = False          # primary and before valid_until now
    standby_connected: bool = False  # a standby connected to its primary
    unhealthy: dict[str, str] = field(default_factory=dict)  # service -> health, for those not ok


def answer(path: str, facts: HealthFacts) -> tuple[int, str]:
    """The status code and JSON body for ``path`` (one of :data:`PATHS`)."""
    body: dict[str, Any] = {"node": facts.node, "role": facts.role, "epoch": facts.epoch}
    if path == "/primary":
        ok = facts.role == "primary" and facts.accepting and facts.may_trade
        if not ok:
            body["why"] = (f"role is {facts.role}" if facts.role != "primary" else
                           "not accepting appends" if not facts.accepting else
                           "past its fence deadline (valid_until)")
    elif path == "/standby":
        ok = facts.role == "standby" and facts.standby_connected
        if not ok:
            body["why"] = f"role is {facts.role}" if facts.role != "standby" else "not connected to its primary"
    elif path == "/health":
        ok = not facts.unhealthy
        if not ok:
            body["why"] = "services not ok: " + ", ".join(f"{k} {v}" for k, v in sorted(facts.unhealthy.items()))
    else:
        raise ValueError(f"not a health path: {path!r}")
    body["ok"] = ok
    return (200 if ok else 503), json.dumps(body, sort_keys=True) + "\n"
