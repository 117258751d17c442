"""Route backends without a kernel: route_matches, the none backend, errors, the factory.
(The netlink backend against a real kernel: tests/integration/uplinks/test_routes_netns.py.)"""

from __future__ import annotations

import errno
import inspect

import pytest

from daemon.config import FailoverConfig
from daemon.uplinks import UplinkRoute
from daemon.uplinks.routes import (
    CurrentRoute,
    NetlinkRouteBackend,
    NoRouteBackend,
    RouteBackend,
    RouteError,
    errno_reason,
    make_route_backend,
    route_matches,
)

FIBRE = UplinkRoute(name="fibre", interface="fibre0", source="10.71.1.2", gateway="10.71.1.1", table=1001)
STAR = UplinkRoute(name="starlink", interface="star0", source="10.71.2.2", gateway="10.71.2.1", table=1002)


# ------------------------------------------------------------------ route_matches


def test_the_route_via_the_uplinks_gateway_and_interface_matches() -> None:
    current = CurrentRoute(gateway="10.71.1.1", interface="fibre0", metric=0, protocol="static")
    assert route_matches(current, FIBRE)
    assert not route_matches(current, STAR)


@pytest.mark.parametrize("current", [
    None,
    CurrentRoute(gateway="10.71.1.9", interface="fibre0"),  # another gateway on the same link
    CurrentRoute(gateway="10.71.1.1", interface="star0"),  # the right gateway through the wrong device
    CurrentRoute(gateway=None, interface=None),  # multipath
    CurrentRoute(gateway="not-an-address", interface="fibre0"),
])
def test_anything_else_does_not_match(current: CurrentRoute | None) -> None:
    assert not route_matches(current, FIBRE)


def test_the_metric_counts_only_when_the_uplink_sets_one() -> None:
    current = CurrentRoute(gateway="10.71.1.1", interface="fibre0", metric=100)
    assert route_matches(current, FIBRE)  # metric None: whatever the kernel chose
    assert route_matches(current, UplinkRoute("fibre", "fibre0", "10.71.1.2", "10.71.1.1", 1001, metric=100))
    assert not route_matches(current, UplinkRoute("fibre", "fibre0", "10.71.1.2", "10.71.1.1", 1001, metric=0))


def test_who_installed_the_route_does_not_matter() -> None:
    assert route_matches(CurrentRoute(gateway="10.71.1.1", interface="fibre0", protocol="boot"), FIBRE)


def test_gateways_compare_as_addresses() -> None:
    v6 = UplinkRoute(name="fibre6", interface="fibre0", source="2001:db8::2", gateway="2001:db8::1", table=1003)
    assert route_matches(CurrentRoute(gateway="2001:0db8:0::1", interface="fibre0", metric=1024), v6)


# ------------------------------------------------------------------ errors


def test_errno_reason_gives_the_kernels_words_and_the_symbol() -> None:
    assert errno_reason(errno.ENODEV) == "No such device (ENODEV)"
    assert errno_reason(errno.ENETUNREACH) == "Network is unreachable (ENETUNREACH)"
    assert errno_reason(99999) == "error 99999"


def test_a_route_error_names_the_uplink_the_operation_and_the_reason() -> None:
    error = RouteError.from_errno("replace default via 10.71.1.1 dev fibre0", errno.ENODEV, "fibre")
    assert str(error) == "uplink fibre: replace default via 10.71.1.1 dev fibre0: No such device (ENODEV)"
    assert (error.operation, error.uplink, error.code) == (
        "replace default via 10.71.1.1 dev fibre0", "fibre", errno.ENODEV)
    assert str(RouteError.from_errno("read the default route (IPv4)", errno.EPERM)) == \
        "read the default route (IPv4): Operation not permitted (EPERM)"
    assert str(RouteError("plain message")) == "plain message"


# ------------------------------------------------------------------ the none backend


async def test_the_none_backend_records_what_it_would_do_and_changes_nothing() -> None:
    backend = NoRouteBackend(rule_priority=1000, metric=50)
    assert backend.name == "none"
    assert await backend.current() is None

    await backend.prepare([FIBRE, STAR])
    await backend.apply(STAR)
    assert backend.applied == [
        "replace default via 10.71.1.1 dev fibre0 table 1001",
        "add rule from 10.71.1.2 lookup 1001 priority 1000",
        "replace default via 10.71.2.1 dev star0 table 1002",
        "add rule from 10.71.2.2 lookup 1002 priority 1001",
        "replace default via 10.71.2.1 dev star0 metric 50",
    ]
    current = await backend.current()
    assert current == CurrentRoute(gateway="10.71.2.1", interface="star0", metric=50, protocol="none")
    # The route check sees its own decision: nothing to repair.
    assert route_matches(current, STAR)
    assert await backend.refresh([FIBRE, STAR]) == []
    assert backend.pending() == {}

    await backend.apply(FIBRE)
    assert route_matches(await backend.current(), FIBRE)
    await backend.cleanup()
    assert backend.applied[-4:] == ["delete rule from 10.71.1.2 lookup 1001 priority 1000", "flush table 1001",
                                    "delete rule from 10.71.2.2 lookup 1002 priority 1001", "flush table 1002"]
    # Cleanup leaves the default route: the last one applied is still "current".
    assert route_matches(await backend.current(), FIBRE)


# ------------------------------------------------------------------ factory and interface


def test_the_factory_builds_the_configured_backend_without_touching_the_kernel() -> None:
    netlink = make_route_backend(FailoverConfig(route_backend="netlink", route_metric=10, rule_priority=2000))
    assert isinstance(netlink, NetlinkRouteBackend)
    assert (netlink.name, netlink.rule_priority, netlink.metric) == ("netlink", 2000, 10)
    none = make_route_backend(FailoverConfig(route_backend="none"))
    assert isinstance(none, NoRouteBackend) and none.name == "none"


def test_every_backend_method_states_its_duty() -> None:
    for name in ("prepare", "apply", "current", "refresh", "cleanup"):
        method = getattr(RouteBackend, name)
        assert getattr(method, "__isabstractmethod__", False), name
        assert inspect.iscoroutinefunction(method), name
        assert method.__doc__ and len(method.__doc__) > 80, name
