"""What a config reload may change in a running daemon (sans-IO): old and new config in,
a plan out.

A reload (SIGHUP, ``ExecReload=``, ``lifeline reload``) must never release the lease,
so it applies only what can change under a running service:

* ``log.level``;
* the uplinks' health thresholds: ``uplinks.NAME.down_after``, ``up_after``,
  ``min_targets``, ``degraded_loss``, ``recovered_loss``, ``degraded_rtt``,
  ``dns_failures`` (the next probe round is judged by them);
* the playbooks: the playbook directory is verified again on every reload (a change of
  the files needs no config change).

Anything else that changed is refused, naming the key, and then *nothing* is applied:
the daemon keeps running on its old config as a whole (a half-applied config is one no
file describes). The node's name, the journal's location, the lease store, the control
socket, the replication link need a restart (``systemctl restart lifeline``, on the
standby first, or with a switchover).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: uplinks.NAME.<key> a reload applies (LinkHealth's settings; the prober is untouched).
UPLINK_LIVE_KEYS = frozenset({"down_after", "up_after", "min_targets", "degraded_loss", "recovered_loss",
                              "degraded_rtt", "dns_failures"})
#: Why some keys can never change under a running daemon (the first matching prefix).
WHY_NOT = (
    ("node.name", "the node's name is its identity in the lease and on the replication link"),
    ("node.state_dir", "the journal's location: the open journal cannot move"),
    ("standby.journal", "the journal's settings belong to the open journal"),
    ("standby.lease", "the lease store: changing it would release the lease"),
    ("standby", "the replication link and the role are set up once"),
    ("control", "the control socket is already bound"),
    ("metrics", "the metrics listener is already bound"),
)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as ``{"a.b.c": value}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


@dataclass
class ReloadPlan:
    #: key -> new value, for what will be applied.
    apply: dict[str, Any] = field(default_factory=dict)
    #: (key, why) for what cannot change without a restart.
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def line(self) -> str:
        if self.refused:
            return ("refused, still running on the old config: "
                    + "; ".join(f"{key} cannot change without a restart ({why})" for key, why in self.refused))
        if not self.apply:
            return "nothing changed in the config (playbooks verified again)"
        return "applied " + ", ".join(f"{k}={v}" for k, v in sorted(self.apply.items()))


def why_refused(key: str) -> str:
    for prefix, why in WHY_NOT:
        if key == prefix or key.startswith(prefix + "."):
            return why
    return "a reload does not apply it"


def live(key: str) -> bool:
    if key == "log.level" or key.startswith("drills."):  # read by each live drill when it starts
        return True
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "uplinks" and parts[2] in UPLINK_LIVE_KEYS


def plan(old: Mapping[str, Any], new: Mapping[str, Any]) -> ReloadPlan:
    """``old`` and ``new`` are :func:`daemon.config.to_dict` of the running and the
    re-read config."""
    before, after = flatten(old), flatten(new)
    result = ReloadPlan()
    for key in sorted(set(before) | set(after)):
        if before.get(key, _MISSING) == after.get(key, _MISSING):
            continue
        if key in after and key in before and live(key):
            result.apply[key] = after[key]
        else:
            result.refused.append((key, why_refused(key)))
    return result


_MISSING = object()
