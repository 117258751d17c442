"""The uplink policy machine: uplink health in, the active uplink (and why) out. Sans-IO.

Rules, in the order they are applied by :meth:`UplinkPolicy.step`:

1. **Manual override** (`lifeline uplink use NAME`): the pinned uplink is active while it
   is usable (UP or DEGRADED). If it goes DOWN the policy fails over as usual and returns
   to the pin as soon as it is usable again; `lifeline uplink auto` removes the pin.
2. **Startup**: no choice is made while some uplink is still UNKNOWN, for at most
   ``startup_grace``, so the daemon does not settle on the backup just because it answered
   first (and then wait a whole hold-down to come back).
3. **Failover**: when the active uplink is not usable, the best usable uplink (UP before
   DEGRADED, then lowest priority number) takes over at once. No dwell applies: one never
   waits on a dead link.
4. **All down**: when no uplink is usable the route stays on the last good one (it is as
   good a guess as any, and a route to nowhere changes nothing) and ``all_down`` is
   reported once.
5. **Failback**: a more-preferred uplink takes over from a usable active one only after it
   has been UP continuously for ``hold_down`` and the active one has been active for at
   least ``min_dwell`` (anti-flap). A DEGRADED uplink never triggers a failback, and a
   DEGRADED active uplink is not abandoned for a less-preferred one: packet loss moves
   traffic only when it amounts to DOWN.

Each decision says what happened and why, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from daemon.uplinks.health import LinkState

DecisionKind = Literal["initial", "failover", "failback", "manual", "all_down"]


@dataclass(frozen=True)
class UplinkView:
    """What the policy sees of one uplink."""

    state: LinkState
    since: float  # when it entered ``state``
    priority: int


@dataclass(frozen=True)
class PolicyDecision:
    kind: DecisionKind
    active: str | None  # None only with kind == "all_down" before anything was ever active
    previous: str | None
    reason: str
    at: float

    @property
    def switches(self) -> bool:
        return self.kind != "all_down" and self.active != self.previous


class UplinkPolicy:
    def __init__(self, *, hold_down: float, min_dwell: float, startup_grace: float = 3.0, now: float = 0.0) -> None:
        self.hold_down = hold_down
        self.min_dwell = min_dwell
        self.startup_grace = startup_grace
        self.started = now
        self.active: str | None = None
        self.active_since: float | None = None
        self.override: str | None = None
        self.all_down = False
        self.switches = 0

    # ------------------------------------------------------------------ manual

    def use(self, name: str, views: Mapping[str, UplinkView], now: float) -> PolicyDecision | None:
        """Pin ``name``; returns the switch to it if it is usable now."""
        if name not in views:
            raise KeyError(name)
        self.override = name
        return self.step(views, now)

    def auto(self, views: Mapping[str, UplinkView], now: float) -> PolicyDecision | None:
        """Remove the pin; the rules apply again at once (hold-down included)."""
        self.override = None
        return self.step(views, now)

    # ------------------------------------------------------------------ the rules

    @staticmethod
    def _rank(name: str, view: UplinkView) -> tuple[int, int, str]:
        return (0 if view.state is LinkState.UP else 1, view.priority, name)

    def best(self, views: Mapping[str, UplinkView], exclude: str | None = None) -> str | None:
        usable = [(self._rank(n, v), n) for n, v in views.items() if v.state.usable and n != exclude]
        return min(usable)[1] if usable else None

    def step(self, views: Mapping[str, UplinkView], now: float) -> PolicyDecision | None:
        active = self.active
        if self.override is not None and self.override in views:
            pinned = views[self.override]
            if pinned.state.usable and active != self.override:
                return self._switch("manual", self.override, now,
                                    f"manual: {self.override} pinned by the operator ({pinned.state.value})")
            if pinned.state.usable:
                return None
            # The pin is not usable: fall through to the automatic rules.

        if active is None:
            unknown = [n for n, v in views.items() if v.state is LinkState.UNKNOWN]
            if unknown and now - self.started < self.startup_grace:
                return None
            choice = self.best(views)
            if choice is None:
                return self._all_down(views, now)
            return self._switch("initial", choice, now,
                                f"initial: {choice} is the best usable uplink ({views[choice].state.value}, "
                                f"priority {views[choice].priority})")

        current = views.get(active)
        if current is None or not current.state.usable:
            choice = self.best(views, exclude=active)
            if choice is None:
                return self._all_down(views, now)
            state = current.state.value if current else "removed"
            return self._switch("failover", choice, now,
                                f"failover to {choice}: {active} {state.upper()}"
                                + (f" ({self.override} pinned but not usable)" if self.override else ""))

        self.all_down = False
        if self.override is not None and self.override in views:
            return None  # pinned uplink not usable, current one is: stay until the pin is back
        # Failback: a more-preferred uplink, UP for hold_down, and we have dwelt long enough.
        candidates = sorted(
            (v.priority, n) for n, v in views.items()
            if n != active and v.state is LinkState.UP and v.priority < current.priority
        )
        for _, name in candidates:
            up_for = now - views[name].since
            dwelt = now - (self.active_since if self.active_since is not None else now)
            if up_for >= self.hold_down and dwelt >= self.min_dwell:
                return self._switch("failback", name, now,
                                    f"failback to {name}: UP for {up_for:.1f}s >= hold-down {self.hold_down:g}s, "
                                    f"{active} active for {dwelt:.1f}s")
        return None

    def next_check(self, views: Mapping[str, UplinkView], now: float) -> float | None:
        """The earliest time a failback could become due (for a shell that sleeps)."""
        if self.active is None or self.active not in views:
            return None
        current = views[self.active]
        times = [
            max(v.since + self.hold_down, (self.active_since or now) + self.min_dwell)
            for n, v in views.items()
            if n != self.active and v.state is LinkState.UP and v.priority < current.priority
        ]
        return min(times) if times else None

    def _switch(self, kind: DecisionKind, name: str, now: float, reason: str) -> PolicyDecision:
        decision = PolicyDecision(kind, name, self.active, reason, now)
        self.active = name
        self.active_since = now
        self.all_down = False
        self.switches += 1
        return decision

    def _all_down(self, views: Mapping[str, UplinkView], now: float) -> PolicyDecision | None:
        if self.all_down:
            return None
        self.all_down = True
        states = ", ".join(f"{n} {v.state.value.upper()}" for n, v in sorted(views.items()))
        where = f"route stays on {self.active}" if self.active else "no route installed"
        return PolicyDecision("all_down", self.active, self.active, f"all uplinks down ({states}); {where}", now)
