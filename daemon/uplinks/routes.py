"""Route backends: move the main table's default route, and keep per-uplink policy routing.

A backend owns two kinds of kernel state:

* **Policy routing**, one table per uplink (``prepare`` / ``refresh`` / ``cleanup``): in
  table ``u.table`` a default route via ``u.gateway`` dev ``u.interface``, and an ``ip
  rule`` "from ``u.source`` lookup ``u.table``" at priority ``rule_priority + index``. A
  probe bound to an uplink's source address therefore leaves through that uplink only,
  whatever the main table says. Each table also gets an ``unreachable default`` at the
  highest metric: while the real default of a table is missing (interface gone, gateway
  not on-link yet) a lookup in it ends there instead of falling through to the next rule
  and out of *another* uplink.
* **The default route** of the main table (``apply`` / ``current``), moved by one netlink
  ``RTM_NEWROUTE`` with ``NLM_F_REPLACE`` — never delete + add, so there is no moment
  without a default route. ``cleanup`` leaves it where it is: traffic keeps flowing while
  the daemon restarts (see DESIGN.md, "Uplinks").

Two backends, like Patroni's ``watchdog/base.py`` + ``linux.py``:
:class:`NetlinkRouteBackend` (pyroute2) and :class:`NoRouteBackend` (decides nothing,
changes nothing, records what it would have done — the lab without root, dry runs).

pyroute2 is blocking, so every netlink exchange runs in ``trio.to_thread.run_sync``. Each
call opens its own ``IPRoute`` and closes it before returning (about 1.5 ms): pyroute2
0.9 keeps an asyncio loop and per-thread transport state inside every socket, and trio
may hand successive calls to different worker threads, so a shared socket would need
its own thread; a fresh socket also never carries a half-read dump from an earlier,
failed call into the next. Worker threads are not abandoned on cancellation
(``abandon_on_cancel`` stays False): a change the kernel is making is seen through, and
our record of what was installed stays true.

Every kernel refusal becomes a :class:`RouteError` naming the operation (in ``ip(8)``
words), the uplink and the kernel's reason — "uplink fibre: replace default via 10.71.1.1
dev fibre0: No such device (ENODEV)" — never a bare pyroute2 exception.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import trio

from daemon.core.errors import LifelineError
from daemon.core.log import get_logger
from daemon.uplinks import UplinkRoute

if TYPE_CHECKING:
    from daemon.uplinks.config import FailoverConfig

log = get_logger("uplinks.routes")

T = TypeVar("T")

MAIN_TABLE = 254

#: Metric of the ``unreachable default`` backstop in each uplink's table: the largest a
#: route can have, so the real default (metric 0) always wins while it exists.
BACKSTOP_METRIC = 0xFFFFFFFF

# rtnetlink protocol numbers (include/uapi/linux/rtnetlink.h, /etc/iproute2/rt_protos).
_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 9: "ra", 16: "dhcp",
              11: "zebra", 12: "bird", 186: "bgp", 187: "isis", 188: "ospf", 42: "babel", 99: "keepalived"}
_RTN_UNICAST = 1
_RTN_UNREACHABLE = 7
_NO_PERMISSION = (errno.EPERM, errno.EACCES)


# =========================================================================== sans-IO part


class RouteError(LifelineError):
    """The kernel (or the host) refused a route operation.

    ``str(error)`` is one line for the log and status: ``"uplink fibre: replace default via
    10.71.1.1 dev fibre0: No such device (ENODEV)"``. ``operation``, ``uplink`` and
    ``code`` (an errno number, when there is one) are kept for callers that branch on them.
    """

    def __init__(self, message: str, *, operation: str | None = None, uplink: str | None = None,
                 code: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.uplink = uplink
        self.code = code

    @classmethod
    def from_errno(cls, operation: str, code: int, uplink: str | None = None) -> RouteError:
        prefix = f"uplink {uplink}: " if uplink else ""
        return cls(f"{prefix}{operation}: {errno_reason(code)}", operation=operation, uplink=uplink, code=code)


def errno_reason(code: int) -> str:
    """``19`` → ``"No such device (ENODEV)"``: the kernel's words, then the symbol to grep for."""
    name = errno.errorcode.get(code)
    return f"{os.strerror(code)} ({name})" if name else f"error {code}"


@dataclass(frozen=True)
class CurrentRoute:
    """The default route of the main table as the kernel has it now (the one it uses when
    there are several: the lowest metric).

    ``gateway`` and ``interface`` are None for a multipath route; ``metric`` is 0 when the
    kernel omitted it (IPv4's default); ``protocol`` is who installed it: ``"static"``
    (pyroute2's and lifeline's default), ``"boot"`` (``ip route`` by hand), ``"dhcp"``,
    ``"ra"``, ... or the number when it has no name.
    """

    gateway: str | None
    interface: str | None
    metric: int = 0
    protocol: str = "static"

    def describe(self) -> str:
        """``"default via 10.71.1.1 dev fibre0 metric 0 proto static"``."""
        return f"default via {self.gateway} dev {self.interface} metric {self.metric} proto {self.protocol}"


def route_matches(current: CurrentRoute | None, uplink: UplinkRoute) -> bool:
    """Is ``current`` the default route :meth:`RouteBackend.apply` installs for ``uplink``?

    Same gateway (compared as addresses, so ``2001:db8::1`` equals ``2001:0db8::1``) and
    same interface; the metric only when the uplink sets one (without, the kernel picks
    it). The protocol is not compared: it says who wrote the route, not where it goes. A
    missing or multipath default route never matches.
    """
    if current is None or current.gateway is None or current.interface is None:
        return False
    if current.interface != uplink.interface:
        return False
    try:
        if ipaddress.ip_address(current.gateway) != ipaddress.ip_address(uplink.gateway):
            return False
    except ValueError:
        return False
    return uplink.metric is None or current.metric == uplink.metric


def default_dst(family: int) -> str:
    return "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"


def address_family(address: str) -> int:
    """``socket.AF_INET`` or ``AF_INET6`` for an IP literal; ``ValueError`` otherwise."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def describe_default(uplink: UplinkRoute, metric: int | None, table: int | None = None) -> str:
    """The operation in ``ip route`` words: ``"replace default via 10.71.1.1 dev fibre0"``."""
    text = f"replace default via {uplink.gateway} dev {uplink.interface}"
    if table is not None:
        text += f" table {table}"
    if metric is not None:
        text += f" metric {metric}"
    return text


def describe_rule(uplink: UplinkRoute, priority: int, verb: str = "add") -> str:
    """``"add rule from 10.71.1.2 lookup 1001 priority 1000"``."""
    return f"{verb} rule from {uplink.source} lookup {uplink.table} priority {priority}"


def _protocol_name(number: int | None) -> str:
    if number is None:
        return "unspec"
    return _PROTOCOLS.get(number, str(number))


# =========================================================================== the interface


class RouteBackend(ABC):
    """Moves the default route and keeps per-uplink policy routing.

    Duties every backend keeps:

    * No method leaves the host without a default route it had: the main default is only
      ever *replaced*, and ``cleanup`` does not touch it.
    * Every method is idempotent: calling it again with the same arguments changes nothing.
    * Kernel refusals surface as :class:`RouteError` with a one-line reason, never as a
      library exception.
    """

    #: ``"netlink"`` or ``"none"``, as in ``failover.route_backend``.
    name: str

    @abstractmethod
    async def prepare(self, uplinks: list[UplinkRoute]) -> None:
        """Install policy routing for every uplink: in table ``u.table`` a default route via
        ``u.gateway`` dev ``u.interface``, and the rule "from ``u.source`` lookup
        ``u.table``" at priority ``rule_priority + index``.

        Remembers the uplinks for :meth:`refresh` and :meth:`cleanup`. An uplink whose part
        cannot be installed yet (its interface is missing at boot, its gateway is not
        on-link yet) does not stop the others: it is logged, listed in :meth:`pending`
        and retried by :meth:`refresh`. Raises :class:`RouteError` only when nothing could
        be done at all (no netlink access).
        """

    @abstractmethod
    async def apply(self, uplink: UplinkRoute) -> None:
        """Atomically point the main table's default route at ``uplink`` (one netlink
        replace). Raises :class:`RouteError` when the kernel refuses, e.g. when the
        uplink's interface does not exist; the old default route then stays."""

    @abstractmethod
    async def current(self) -> CurrentRoute | None:
        """The main table's default route now, or None. Cheap (one dump of the main
        table's default routes): the service calls it every ``route_check_interval``."""

    @abstractmethod
    async def refresh(self, uplinks: list[UplinkRoute]) -> list[str]:
        """Re-install whatever part of the policy routing of ``uplinks`` is missing (a rule
        deleted by hand, a table emptied when its interface went away and came back).
        Returns what was repaired, one line each; ``[]`` when all was in place. Problems
        that remain are logged and listed in :meth:`pending`, not raised."""

    @abstractmethod
    async def cleanup(self) -> None:
        """Remove the rules and table routes this backend installed. The main default
        route stays as it is, so traffic keeps flowing across a restart. Never raises for
        state that is already gone; other failures are logged."""

    def pending(self) -> dict[str, str]:
        """Uplinks whose policy routing is not (fully) installed, with the reason."""
        return {}


# =========================================================================== none


class NoRouteBackend(RouteBackend):
    """Decides nothing, changes nothing: records, in ``ip`` words, what it would have done.

    ``current()`` returns what was last "applied", so the route check sees its own
    decisions and never tries to repair anything.
    """

    name = "none"

    def __init__(self, rule_priority: int = 1000, metric: int | None = None) -> None:
        self.rule_priority = rule_priority
        self.metric = metric
        self.applied: list[str] = []
        self._current: CurrentRoute | None = None
        self._uplinks: list[UplinkRoute] = []

    async def prepare(self, uplinks: list[UplinkRoute]) -> None:
        self._uplinks = list(uplinks)
        for index, uplink in enumerate(uplinks):
            self.applied.append(describe_default(uplink, None, table=uplink.table))
            self.applied.append(describe_rule(uplink, self.rule_priority + index))
        log.info("routes.prepare", backend=self.name, uplinks=[u.name for u in uplinks], changed=False)

    async def apply(self, uplink: UplinkRoute) -> None:
        metric = uplink.metric if uplink.metric is not None else self.metric
        self.applied.append(describe_default(uplink, metric))
        self._current = CurrentRoute(gateway=uplink.gateway, interface=uplink.interface,
                                     metric=metric or 0, protocol="none")
        log.info("routes.apply", backend=self.name, uplink=uplink.name, would=self.applied[-1], changed=False)

    async def current(self) -> CurrentRoute | None:
        return self._current

    async def refresh(self, uplinks: list[UplinkRoute]) -> list[str]:
        return []

    async def cleanup(self) -> None:
        for index, uplink in enumerate(self._uplinks):
            self.applied.append(describe_rule(uplink, self.rule_priority + index, verb="delete"))
            self.applied.append(f"flush table {uplink.table}")
        self._uplinks = []


# =========================================================================== netlink


@dataclass
class _PolicyOutcome:
    """What one uplink's policy-routing pass did (built in the worker thread)."""

    uplink: str
    changes: list[str] = field(default_factory=list)
    problem: str | None = None


class NetlinkRouteBackend(RouteBackend):
    """The real backend: pyroute2 ``IPRoute`` in a worker thread, one socket per call."""

    name = "netlink"

    def __init__(self, rule_priority: int, metric: int | None) -> None:
        self.rule_priority = rule_priority
        self.metric = metric
        self._uplinks: list[UplinkRoute] = []
        self._pending: dict[str, str] = {}
        # The family of the route we manage; current() looks at this one.
        self._family: int = socket.AF_INET

    def pending(self) -> dict[str, str]:
        return dict(self._pending)

    def _metric(self, uplink: UplinkRoute) -> int | None:
        return uplink.metric if uplink.metric is not None else self.metric

    # ------------------------------------------------------------------ policy routing

    async def prepare(self, uplinks: list[UplinkRoute]) -> None:
        self._uplinks = list(uplinks)
        if uplinks:
            self._family = address_family(uplinks[0].gateway)
        outcomes = await self._ensure_policy(self._uplinks)
        for outcome in outcomes:
            if outcome.problem is None:
                log.info("routes.policy_ready", uplink=outcome.uplink, changes=outcome.changes or "none")
            else:
                log.warning("routes.policy_incomplete", uplink=outcome.uplink, reason=outcome.problem,
                            installed=outcome.changes or "none", retry="on refresh")

    async def refresh(self, uplinks: list[UplinkRoute]) -> list[str]:
        known = {u.name for u in self._uplinks}
        # Uplinks never prepared are adopted, so cleanup removes what refresh installs.
        self._uplinks += [u for u in uplinks if u.name not in known]
        wanted = {u.name for u in uplinks}
        outcomes = await self._ensure_policy([u for u in self._uplinks if u.name in wanted])
        repaired: list[str] = []
        for outcome in outcomes:
            for change in outcome.changes:
                repaired.append(f"{outcome.uplink}: {change}")
                log.warning("routes.policy_repaired", uplink=outcome.uplink, change=change)
        return repaired

    async def _ensure_policy(self, uplinks: list[UplinkRoute]) -> list[_PolicyOutcome]:
        # Priorities come from the position in the prepared list, so a refresh of a subset
        # gives every uplink the same priority prepare gave it.
        position = {u.name: i for i, u in enumerate(self._uplinks)}
        specs = [(u, self.rule_priority + position[u.name]) for u in uplinks]
        outcomes = await self._run("install policy routing", None, _ensure_policy_sync, specs)
        for outcome in outcomes:
            if outcome.problem is None:
                self._pending.pop(outcome.uplink, None)
            else:
                self._pending[outcome.uplink] = outcome.problem
        return outcomes

    async def cleanup(self) -> None:
        specs = [(u, self.rule_priority + i) for i, u in enumerate(self._uplinks)]
        if not specs:
            return
        try:
            failures = await self._run("remove policy routing", None, _cleanup_sync, specs)
        except RouteError as exc:
            log.error("routes.cleanup_failed", error=str(exc))
            return
        for failure in failures:
            log.error("routes.cleanup_failed", error=failure)
        log.info("routes.cleanup", uplinks=[u.name for u in self._uplinks], failures=len(failures),
                 default_route="left as is")
        self._uplinks = []
        self._pending.clear()

    # ------------------------------------------------------------------ the default route

    async def apply(self, uplink: UplinkRoute) -> None:
        metric = self._metric(uplink)
        operation = describe_default(uplink, metric)
        family = address_family(uplink.gateway)
        winner = await self._run(operation, uplink.name, _apply_sync, uplink, metric, family, operation)
        self._family = family
        if not route_matches(winner, replace(uplink, metric=metric)):
            # Installed, but another default route (lower metric) is the one the kernel uses.
            log.warning("routes.apply_shadowed", uplink=uplink.name, installed=operation,
                        in_use=winner.describe() if winner else "none",
                        hint="remove that route or set failover.route_metric below its metric")

    async def current(self) -> CurrentRoute | None:
        return await self._run(f"read the default route ({_family_name(self._family)})", None,
                               _current_sync, self._family)

    # ------------------------------------------------------------------ plumbing

    async def _run(self, operation: str, uplink: str | None, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(ipr, *args)`` with a fresh IPRoute in a worker thread; netlink and
        socket errors become RouteError."""
        return await trio.to_thread.run_sync(_with_iproute, operation, uplink, fn, *args)


def _family_name(family: int) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


# ---------------------------------------------------------------- worker-thread functions
# Everything below runs in a worker thread and must not touch trio.


def _with_iproute(operation: str, uplink: str | None, fn: Callable[..., T], *args: Any) -> T:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            return fn(ipr, *args)
    except NetlinkError as exc:
        raise RouteError.from_errno(operation, exc.code, uplink) from None
    except OSError as exc:  # the socket itself (no netlink, no permission)
        if exc.errno is not None:
            raise RouteError.from_errno(operation, exc.errno, uplink) from None
        raise RouteError(f"{operation}: {exc}", operation=operation, uplink=uplink) from None


def _oif(ipr: Any, uplink: UplinkRoute, operation: str) -> int:
    indexes = ipr.link_lookup(ifname=uplink.interface)
    if not indexes:
        # The kernel would answer ENETUNREACH for a stale index; name the real cause.
        raise RouteError.from_errno(operation, errno.ENODEV, uplink.name)
    return int(indexes[0])


def _routes(ipr: Any, family: int, table: int) -> list[Any]:
    """The default routes of ``table``, read to the end before anything else is sent on
    the socket (a dump left half-read would leak its messages into the next answer)."""
    return [route for route in ipr.route("dump", family=family, table=table, dst_len=0)
            if route.get("table") == table and route.get("dst_len") == 0]


def _apply_sync(ipr: Any, uplink: UplinkRoute, metric: int | None, family: int,
                operation: str) -> CurrentRoute | None:
    from pyroute2.netlink.exceptions import NetlinkError

    oif = _oif(ipr, uplink, operation)
    extra = {"priority": metric} if metric is not None else {}
    try:
        # One RTM_NEWROUTE with NLM_F_CREATE | NLM_F_REPLACE: the kernel swaps the route in
        # place, so the table never lacks a default route.
        ipr.route("replace", dst=default_dst(family), gateway=uplink.gateway, oif=oif,
                  table=MAIN_TABLE, family=family, **extra)
    except NetlinkError as exc:
        raise RouteError.from_errno(operation, exc.code, uplink.name) from None
    return _current_sync(ipr, family)


def _current_sync(ipr: Any, family: int) -> CurrentRoute | None:
    from pyroute2.netlink.exceptions import NetlinkError

    best = None
    for route in _routes(ipr, family, MAIN_TABLE):
        if route.get("type") != _RTN_UNICAST:
            continue
        metric = route.get("RTA_PRIORITY") or 0
        if best is None or metric < best[0]:
            best = (metric, route)
    if best is None:
        return None
    metric, route = best
    oif = route.get("RTA_OIF")
    interface = None
    if oif is not None:
        try:
            links = list(ipr.get_links(oif))
        except NetlinkError:  # gone since the dump
            links = []
        interface = links[0].get("IFLA_IFNAME") if links else f"if{oif}"
    return CurrentRoute(gateway=route.get("RTA_GATEWAY"), interface=interface, metric=metric,
                        protocol=_protocol_name(route.get("proto")))


def _ensure_policy_sync(ipr: Any, specs: list[tuple[UplinkRoute, int]]) -> list[_PolicyOutcome]:
    from pyroute2.netlink.exceptions import NetlinkError

    outcomes = []
    for uplink, priority in specs:
        outcome = _PolicyOutcome(uplink.name)
        outcomes.append(outcome)
        try:
            family = address_family(uplink.gateway)
            if address_family(uplink.source) != family:
                raise RouteError(f"uplink {uplink.name}: source {uplink.source} and gateway {uplink.gateway} "
                                 "are of different address families", uplink=uplink.name)
            # Order matters: the backstop first, so the rule never sends lookups into an
            # empty table (they would fall through to the main table, another uplink).
            _ensure_backstop(ipr, uplink, family, outcome)
            _ensure_rule(ipr, uplink, family, priority, outcome)
            _ensure_table_default(ipr, uplink, family, outcome)
        except NetlinkError as exc:  # a dump refused
            error = RouteError.from_errno(f"read table {uplink.table} and its rule", exc.code, uplink.name)
            if exc.code in _NO_PERMISSION:
                raise error from None
            outcome.problem = str(error)
        except RouteError as exc:
            if exc.code in _NO_PERMISSION:  # the same for every uplink and every retry
                raise
            outcome.problem = str(exc)
        except ValueError as exc:  # not an IP literal (config validation should have caught it)
            outcome.problem = f"uplink {uplink.name}: {exc}"
    return outcomes


def _ensure_backstop(ipr: Any, uplink: UplinkRoute, family: int, outcome: _PolicyOutcome) -> None:
    for route in _routes(ipr, family, uplink.table):
        if route.get("type") == _RTN_UNREACHABLE and route.get("RTA_PRIORITY") == BACKSTOP_METRIC:
            return
    operation = f"add unreachable default table {uplink.table} metric {BACKSTOP_METRIC}"
    _change(lambda: ipr.route("replace", dst=default_dst(family), type="unreachable", table=uplink.table,
                              priority=BACKSTOP_METRIC, family=family), operation, uplink)
    outcome.changes.append(operation)


def _ensure_table_default(ipr: Any, uplink: UplinkRoute, family: int, outcome: _PolicyOutcome) -> None:
    operation = describe_default(uplink, None, table=uplink.table)
    oif = _oif(ipr, uplink, operation)
    gateway = ipaddress.ip_address(uplink.gateway)
    for route in _routes(ipr, family, uplink.table):
        # Any metric: IPv6 gives a route added without one 1024, IPv4 gives it 0.
        if (route.get("type") == _RTN_UNICAST and route.get("RTA_OIF") == oif
                and route.get("RTA_GATEWAY") and ipaddress.ip_address(route.get("RTA_GATEWAY")) == gateway):
            return
    _change(lambda: ipr.route("replace", dst=default_dst(family), gateway=uplink.gateway, oif=oif,
                              table=uplink.table, family=family), operation, uplink)
    outcome.changes.append(operation)


def _ensure_rule(ipr: Any, uplink: UplinkRoute, family: int, priority: int, outcome: _PolicyOutcome) -> None:
    source = ipaddress.ip_address(uplink.source)
    full = source.max_prefixlen
    found = False
    for rule in list(ipr.rule("dump", family=family, priority=priority)):
        if rule.get("FRA_PRIORITY") != priority:
            continue
        src = rule.get("FRA_SRC")
        if (src is not None and ipaddress.ip_address(src) == source and rule["src_len"] == full
                and rule.get("FRA_TABLE") == uplink.table and rule.get("action") == 1):
            found = True
            continue
        # The priority is ours (failover.rule_priority + position): a different rule
        # there is a leftover of an older configuration.
        stale = f"delete rule from {src or 'all'}/{rule['src_len']} lookup {rule.get('FRA_TABLE')} priority {priority}"
        match = {"src": src, "src_len": rule["src_len"]} if src is not None else {}
        _change(lambda: ipr.rule("del", family=family, priority=priority, table=rule.get("FRA_TABLE"), **match),
                stale, uplink, ok=(errno.ENOENT,))
        outcome.changes.append(stale)
    if found:
        return
    operation = describe_rule(uplink, priority)
    _change(lambda: ipr.rule("add", family=family, priority=priority, src=uplink.source, src_len=full,
                             table=uplink.table), operation, uplink, ok=(errno.EEXIST,))
    outcome.changes.append(operation)


def _cleanup_sync(ipr: Any, specs: list[tuple[UplinkRoute, int]]) -> list[str]:
    failures = []
    for uplink, priority in specs:
        family = address_family(uplink.gateway)
        full = ipaddress.ip_address(uplink.source).max_prefixlen
        steps: list[tuple[str, Callable[[], Any]]] = [
            (describe_rule(uplink, priority, verb="delete"),
             lambda: ipr.rule("del", family=family, priority=priority, src=uplink.source, src_len=full,
                              table=uplink.table)),
            (f"delete default via {uplink.gateway} table {uplink.table}",
             lambda: ipr.route("del", dst=default_dst(family), gateway=uplink.gateway, table=uplink.table,
                               family=family)),
            (f"delete unreachable default table {uplink.table}",
             lambda: ipr.route("del", dst=default_dst(family), type="unreachable", table=uplink.table,
                               priority=BACKSTOP_METRIC, family=family)),
        ]
        for operation, step in steps:
            try:
                # Already gone is fine: ENOENT for rules, ESRCH for routes.
                _change(step, operation, uplink, ok=(errno.ENOENT, errno.ESRCH))
            except RouteError as exc:
                failures.append(str(exc))
    return failures


def _change(step: Callable[[], Any], operation: str, uplink: UplinkRoute, ok: tuple[int, ...] = ()) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        step()
    except NetlinkError as exc:
        if exc.code in ok:
            return
        raise RouteError.from_errno(operation, exc.code, uplink.name) from None


# =========================================================================== factory


def make_route_backend(config: FailoverConfig) -> RouteBackend:
    """The backend ``failover.route_backend`` names."""
    if config.route_backend == "netlink":
        return NetlinkRouteBackend(rule_priority=config.rule_priority, metric=config.route_metric)
    if config.route_backend == "none":
        return NoRouteBackend(rule_priority=config.rule_priority, metric=config.route_metric)
    raise ValueError(f'unknown route backend {config.route_backend!r}; expected "netlink" or "none"')
