"""The circuit breakers' config: ``[guard.breakers.NAME]`` (the brief's figures as defaults).

Each breaker has its threshold, window (the look-back of its figure), recovery time (how
long the figure must stay at or below ``threshold * (1 - hysteresis)`` before it closes;
also the least a trip holds) and response (``pause``, ``throttle``, ``kill`` or ``none``:
events only). See :mod:`daemon.guard.breakers` for the figures and the exact rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from daemon.core.config import option
from daemon.core.durations import Duration
from daemon.guard.breakers import BREAKERS, BreakerSpec

_RESPONSE_DOC = ('What a trip does: "pause" (refuse new orders on the breaker\'s scope), "throttle" '
                 '(rate-limit new orders everywhere), "kill" (the kill switch on the scope: only a person '
                 'unkills) or "none" (the BreakerTripped event only, for playbooks).')
_Response = Literal["pause", "throttle", "kill", "none"]


@dataclass(frozen=True)
class _Breaker:
    enabled: bool = option(True, doc="false: no response (the figure, the state and the events stay).")
    hysteresis: float = option(0.2, doc="Recovery counts only at or below threshold * (1 - hysteresis).",
                               min=0, max=0.9)
    throttle_rate: float = option(2.0, doc='New orders per second while a "throttle" response holds.', above=0)
    throttle_burst: float = option(5.0, doc='Burst of new orders a "throttle" response allows.', min=1)

    def spec(self, name: str) -> BreakerSpec:
        return BreakerSpec(name, getattr(self, "threshold"), float(getattr(self, "window")),
                           float(getattr(self, "recovery")), self.hysteresis,
                           getattr(self, "response") if self.enabled else "none",
                           int(getattr(self, "min_orders", 20)), self.throttle_rate, self.throttle_burst)


@dataclass(frozen=True)
class MarketVolatilityConfig(_Breaker):
    threshold: float = option(0.05, doc="(high - low) / low of a symbol's marks within the window.", above=0)
    window: Duration = option(Duration(300.0), doc="The look-back of the price range.", above=0)
    recovery: Duration = option(Duration(300.0), doc="Clear this long before the breaker closes.", min=0)
    response: _Response = option("pause", doc=_RESPONSE_DOC + " pause: the volatile symbol on every venue.")


@dataclass(frozen=True)
class ExecutionFailureRateConfig(_Breaker):
    threshold: float = option(0.02, doc="Share of ended orders that were rejected or expired.", above=0, max=1)
    window: Duration = option(Duration(180.0), doc="Orders that ended within this look-back count.", above=0)
    recovery: Duration = option(Duration(180.0), doc="Clear this long before the breaker closes.", min=0)
    min_orders: int = option(20, doc="The rate is judged only once this many orders ended in the window "
                                     "(1 rejected of 3 is not a 2% rate).", min=1)
    response: _Response = option("throttle", doc=_RESPONSE_DOC)


@dataclass(frozen=True)
class VenueUnavailabilityConfig(_Breaker):
    threshold: float = option(0.10, doc="Time-weighted share of venue x uplink paths down.", above=0, max=1)
    window: Duration = option(Duration(600.0), doc="The look-back of the share.", above=0)
    recovery: Duration = option(Duration(600.0), doc="Clear this long before the breaker closes.", min=0)
    response: _Response = option("pause", doc=_RESPONSE_DOC + " pause: each venue with every path down.")


@dataclass(frozen=True)
class SystemLoadConfig(_Breaker):
    threshold: float = option(0.90, doc="Mean host load (max of CPU busy, memory used) over the window.",
                              above=0, max=1)
    window: Duration = option(Duration(120.0), doc="The look-back of the mean.", above=0)
    recovery: Duration = option(Duration(120.0), doc="Clear this long before the breaker closes.", min=0)
    response: _Response = option("throttle", doc=_RESPONSE_DOC)


@dataclass(frozen=True)
class BreakersConfig:
    market_volatility: MarketVolatilityConfig = option(factory=MarketVolatilityConfig, doc="Price moves.")
    execution_failure_rate: ExecutionFailureRateConfig = option(
        factory=ExecutionFailureRateConfig, doc="Rejected / expired orders.")
    venue_unavailability: VenueUnavailabilityConfig = option(
        factory=VenueUnavailabilityConfig, doc="Venue x uplink paths down.")
    system_load: SystemLoadConfig = option(factory=SystemLoadConfig, doc="Host load (daemon/system.py's samples).")
    tick: Duration = option(Duration(1.0), doc="How often the breakers are judged.", above=0)
    renew_margin: Duration = option(Duration(30.0), doc="A pause / throttle is renewed while tripped when "
                                                        "less than this is left.", above=0)

    def specs(self) -> dict[str, BreakerSpec]:
        return {name: getattr(self, name).spec(name) for name in BREAKERS}

