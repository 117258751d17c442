"""The trading guard (issue 19): what may open risk, and the emergency stop.

A capability room like the others: it imports only :mod:`daemon.core` and itself; what it
needs of the standby (the journal's append path) and of the venues (open orders, cancels,
tickers) are small Protocols that :mod:`daemon.app` injects.

- :mod:`daemon.guard.blocks` — sans-IO: the kill, pause and throttle *blocks* on new
  orders, and the journal's ``"record": "guard"`` records that carry every change of them
  (so the standby folds them too, and a new primary keeps a kill after a failover).
- the risk gate on ``journal.append``: :mod:`daemon.guard.limits` (the signed limits file),
  :mod:`daemon.guard.book` (the fold: positions, P&L, open orders, seen ids, marks),
  :mod:`daemon.guard.gate` (the sans-IO decision), :mod:`daemon.guard.service` (``GuardService``:
  the append-path seam, the fold on both roles, ``risk.*`` control methods, metrics);
- the kill switch (cancel everything on a scope, at every venue, through every uplink);
- the four circuit breakers of the brief.
"""
