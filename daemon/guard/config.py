"""The guard's config section: ``[guard]``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon.core.config import NodeConfig, option
from daemon.core.durations import Duration
from daemon.guard.breakers_config import BreakersConfig


@dataclass(frozen=True)
class GuardConfig:
    limits: Path | None = option(None, doc="The signed risk limits file (LIMITS.toml with LIMITS.toml.sig beside it; "
                                 "README \"Engine contract: the risk gate\"). Absent: no limits, only the kill / "
                                 "pause / throttle blocks apply.")
    keyring: Path | None = option(None, doc="The keyring whose m of n signatures a limits file needs (default: "
                                  "[recovery] keyring, else /etc/lifeline/keyring.toml).")
    kill_deadline: Duration = option(Duration(5.0), doc="How long `lifeline kill` keeps cancelling and re-fetching "
                                     "a venue's open orders before it reports what is left open.")
    breakers: BreakersConfig = option(factory=BreakersConfig, doc="The four circuit breakers "
                                      "([guard.breakers.NAME]; README \"Circuit breakers\").")


class GuardSettings(Protocol):
    """What the guard service reads of the root config (:class:`daemon.config.Config` is one):
    this host and its section."""

    @property
    def node(self) -> NodeConfig: ...

    @property
    def guard(self) -> GuardConfig: ...
