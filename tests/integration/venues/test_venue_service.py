"""The venues service in one trio run with the venue emulator: real ccxt (synchronous, in
worker threads) over real TCP on loopback.

Two "uplinks" are two source addresses on loopback (127.0.0.1 and 127.0.0.2): the
service binds each path's HTTP session to its uplink's source address, and the emulator
can fault a venue for one source CIDR only, so "silent through one uplink" is real. The
uplinks' own service is not run (it needs root for policy routing).

ccxt's rate limiter keeps Kraken at one request a second and its private calls at one
every three (cost 3): where a test needs Kraken to move faster, it gives the service a
client factory that builds the production client and then lowers ``exchange.rateLimit``
(the emulator has no rate limit). The recorded fixtures (Kraken's three open orders) come
from ccxt's static test responses in ``lab/data/ccxt_static`` (MIT,
https://github.com/ccxt/ccxt), served by the emulator.
"""

from __future__ import annotations

from functools import partial
import base64
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from tests.support.cli import cli
from tests.support.ports import free_port

from daemon.app import standby_seams, venue_seams
from daemon.config import Config, dump_toml, parse_config
from daemon.control import ControlServer
from daemon.core.bus import EventBus
from daemon.core.control_client import ControlClient
from daemon.core.control_client import ControlError as ClientControlError
from daemon.core.events import RoleChanged
from daemon.core.log import KeyValueFormatter
from daemon.metrics import render
from daemon.standby.service import StandbyService
from daemon.venues import service as venue_service
from daemon.venues.cli import format_matrix
from daemon.venues.service import VenueService, VenueUnavailable
from lab.venues.server import VenueEmulator
from tests.support.waiting import wait_until

CAP = 30  # seconds: no test may hang longer than this
KEY = bytes(range(32))  # the replication key of the in-process standby services

KRAKEN_KEY = "lifeline-test-kraken-key-K7Qm2pXz"
KRAKEN_SECRET = base64.b64encode(b"lifeline-test-kraken-secret-".ljust(64, b"#")).decode()  # base64, as Kraken's
COINBASE_KEY = "lifeline-test-coinbase-key-C9w"
COINBASE_SECRET = (b"lifeline-coinbase-secret" + os.urandom(8)).hex()  # hex: ccxt's legacy HMAC signing
SECRETS = (KRAKEN_KEY, KRAKEN_SECRET, COINBASE_KEY, COINBASE_SECRET)

SEEDED_KRAKEN = {"OXCZ7B-EMVZQ-MTJTQJ", "OIIQBL-6PV3A-7M2AJJ", "OF7S76-H2IMS-N2ML4U"}

UPLINKS = {
    "fibre": {"interface": "lo", "source": "127.0.0.1", "gateway": "127.0.0.1", "targets": ["udp://127.0.0.1:9"]},
    "starlink": {"interface": "lo", "source": "127.0.0.2", "gateway": "127.0.0.1", "targets": ["udp://127.0.0.1:9"]},
}


# --------------------------------------------------------------------------- helpers

def credentials(tmp: Path, venue: str, mode: int = 0o600) -> Path:
    key, secret = (KRAKEN_KEY, KRAKEN_SECRET) if venue == "kraken" else (COINBASE_KEY, COINBASE_SECRET)
    path = tmp / f"{venue}.credentials.toml"
    path.write_text(f'api_key = "{key}"\nsecret = "{secret}"\n')
    path.chmod(mode)
    return path


def make_config(tmp: Path, venues: dict[str, dict[str, Any]], *, uplinks: bool = False,
                standby: dict[str, Any] | None = None) -> Config:
    document: dict[str, Any] = {
        "node": {"name": "edge-a", "state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "venues": venues,
    }
    if uplinks:
        document["uplinks"] = UPLINKS
    if standby is not None:
        document["standby"] = standby
    return parse_config(dump_toml(document))


def fixed_primary(port: int | None = None) -> dict[str, Any]:
    return {"role": "primary", "key_file": "unused", "listen": f"127.0.0.1:{port or free_port()}",
            "mode": "async", "journal": {"fsync": "never"}}


def fast_client_factory(venue: str, config: Any, **kwargs: Any) -> Any:
    """The production client, with ccxt's rate limiter cut to 20 ms per cost unit (tests only:
    the emulator has no rate limit, and Kraken's 1 s / 3 s would make every test slow)."""
    client = venue_service._default_client_factory(venue, config, **kwargs)
    client.exchange.rateLimit = 20
    return client


class Changes:
    """The VenueHealthChanged events of one bus, waited for by their fields."""

    def __init__(self, bus: EventBus) -> None:
        self.sub = bus.subscribe("test-changes", kinds={"VenueHealthChanged"}, buffer=1000)
        self.seen: list[Any] = []

    async def wait(self, timeout: float = 8.0, **fields: Any) -> Any:
        with trio.fail_after(timeout):
            async for event in self.sub:
                self.seen.append(event)
                if all(getattr(event, k) == v for k, v in fields.items()):
                    return event
        raise AssertionError("the subscription ended")  # pragma: no cover

    def since(self, index: int) -> list[Any]:
        return self.seen[index:]


class FakeLeadership:
    def __init__(self) -> None:
        self.primary = True

    def may_trade(self) -> bool:
        return self.primary


class FakeStandby:
    """What the venues service reads of the standby service: ``leadership.may_trade()``,
    ``epoch``, ``config.standby.lease`` (set: roles move with RoleChanged) and ``journal``
    (none: no order index)."""

    def __init__(self) -> None:
        self.leadership = FakeLeadership()
        self.epoch = 7
        self.config = SimpleNamespace(standby=SimpleNamespace(lease="fake"))
        self.journal = None


def role_changed(role: str, previous: str, epoch: int = 7) -> RoleChanged:
    return RoleChanged(source="standby", node="edge-a", role=role, previous=previous, epoch=epoch,
                       reason="test", monotonic_ns=time.monotonic_ns())


async def start_emulator(nursery: trio.Nursery, **kwargs: Any) -> tuple[VenueEmulator, str]:
    emulator = VenueEmulator(**kwargs)
    url = await nursery.start(emulator.run)
    return emulator, url


async def start_standby(nursery: trio.Nursery, config: Config, bus: EventBus) -> StandbyService:
    standby = StandbyService(config, bus, **standby_seams(config), key=KEY)
    await nursery.start(standby.run)
    return standby


wait_for = partial(wait_until, timeout=8.0, every=0.02)


def order_record(client_order_id: str, *, venue: str = "kraken", **fields: Any) -> str:
    record = {"record": "order", "v": 1, "client_order_id": client_order_id, "venue": venue,
              "symbol": "LTC/USDT", "side": "sell", "amount": "0.1", "price": None, "state": "open"}
    record.update(fields)
    return json.dumps(record)


def audit_entries(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "recovery" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_no_secrets(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential appears in {where}"


# --------------------------------------------------------------------------- probes

async def test_one_uplink_silent_then_back_the_other_stays_up(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Coinbase through two uplinks (two source addresses): the emulator goes silent for
    127.0.0.2 only, so only that path goes DEGRADED (at the first timeout) then DOWN
    (down_after), while the venue stays UP through the other; back to ok, UP after up_after."""
    emulator, url = await start_emulator(nursery)
    cfg = make_config(tmp_path, {"coinbase": {"exchange": "coinbase", "api_url": url, "interval": "200ms",
                                              "timeout": "600ms", "down_after": 3, "up_after": 2}}, uplinks=True)
    bus = EventBus(1000)
    changes = Changes(bus)
    service = VenueService(cfg, bus, **venue_seams(cfg))
    began_ns = time.monotonic_ns()
    with trio.fail_after(CAP):
        await nursery.start(service.run)
        first = [await changes.wait(state="up"), await changes.wait(state="up")]
        assert {e.uplink for e in first} == {"fibre", "starlink"}
        for event in first:
            assert (event.venue, event.previous, event.venue_state, event.error_class) == \
                ("coinbase", "unknown", "up", None)
            assert began_ns < event.monotonic_ns <= time.monotonic_ns()
            assert event.latency_ms is not None
        assert emulator.venue("coinbase").last_source in ("127.0.0.1", "127.0.0.2")

        mark = len(changes.seen)
        emulator.set_fault("coinbase", "silent", sources=["127.0.0.2/32"])
        faulted_at = trio.current_time()
        degraded = await changes.wait(uplink="starlink", state="degraded")
        assert (degraded.previous, degraded.error_class, degraded.venue_state) == ("up", "timeout", "up")
        assert "timeout" in degraded.reason
        down = await changes.wait(uplink="starlink", state="down")
        assert (down.previous, down.error_class, down.venue_state) == ("degraded", "timeout", "up")
        # three failed rounds of at most timeout + a little (generous: a loaded machine)
        assert trio.current_time() - faulted_at < 6
        assert all(e.uplink == "starlink" for e in changes.since(mark)), changes.since(mark)
        matrix = {p["uplink"]: p for p in service.matrix()}
        assert matrix["fibre"]["state"] == "up" and matrix["fibre"]["failures"] == 0
        assert matrix["starlink"]["state"] == "down" and matrix["starlink"]["error_class"] == "timeout"
        assert service.venues["coinbase"].state().value == "up"
        # the venue is reachable: the service is not degraded, the summary shows the path
        assert service.status().health == "ok" and "starlink=down" in service.status().summary

        emulator.set_fault("coinbase", "ok")
        probes_before = service.venues["coinbase"].paths["starlink"].health.samples_total
        up = await changes.wait(uplink="starlink", state="up")
        assert (up.previous, up.venue_state, up.error_class) == ("down", "up", None)
        # up_after = 2 good rounds (the round in flight when the fault was lifted may be a late failure)
        assert service.venues["coinbase"].paths["starlink"].health.samples_total - probes_before >= 2
        assert "starlink=up" in service.status().summary
        nursery.cancel_scope.cancel()


async def test_error_classes_slow_answers_and_the_venue_state(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Through both uplinks at once: HTTP 503 is class http, an error body with HTTP 200 is
    class exchange, and answers slower than degraded_latency make it DEGRADED after
    slow_after. venue_state is the best state over the uplinks."""
    emulator, url = await start_emulator(nursery)
    cfg = make_config(tmp_path, {"coinbase": {
        "exchange": "coinbase", "api_url": url, "interval": "200ms", "timeout": "1s",
        "degraded_latency": "120ms", "down_after": 2, "up_after": 2, "slow_after": 2}}, uplinks=True)
    bus = EventBus(1000)
    changes = Changes(bus)
    service = VenueService(cfg, bus, **venue_seams(cfg))

    async def both(state: str, **fields: Any) -> list[Any]:
        events: dict[str, Any] = {}
        while len(events) < 2:
            event = await changes.wait(state=state, **fields)
            events[event.uplink] = event
        return [events["fibre"], events["starlink"]]

    with trio.fail_after(CAP):
        await nursery.start(service.run)
        await both("up")

        emulator.set_fault("coinbase", "error", status=503)
        first, second = sorted(await both("degraded", error_class="http"), key=lambda e: e.monotonic_ns)
        assert first.venue_state == "up" and second.venue_state == "degraded"  # the best over both uplinks
        assert "503" in first.reason
        last_down = max(await both("down", error_class="http"), key=lambda e: e.monotonic_ns)
        assert last_down.venue_state == "down"
        snapshot = service.details()["venues"]["coinbase"]
        assert snapshot["state"] == "down"
        assert {p["error_class"] for p in snapshot["paths"]} == {"http"}
        assert all("503" in p["error"] for p in snapshot["paths"])

        emulator.set_fault("coinbase", "ok")
        recovered = max(await both("up"), key=lambda e: e.monotonic_ns)
        assert recovered.previous == "down" and recovered.venue_state == "up"

        emulator.set_fault("coinbase", "exchange_error")
        await both("degraded", error_class="exchange")
        emulator.set_fault("coinbase", "ok")
        await both("up")

        emulator.set_fault("coinbase", "slow", delay=0.25)
        slow = await both("degraded")
        assert all(e.error_class is None and "slow" in e.reason for e in slow), slow
        assert all(e.latency_ms is not None and e.latency_ms >= 250 for e in slow)
        emulator.set_fault("coinbase", "ok")
        await both("up")
        counts = {p.uplink: p.error_counts for p in service.venues["coinbase"].paths.values()}
        for per_path in counts.values():
            assert per_path.get("http", 0) >= 2 and per_path.get("exchange", 0) >= 1
            assert "timeout" not in per_path  # slow is not a failure
        nursery.cancel_scope.cancel()


async def test_watch_on_the_control_socket_status_and_metrics(tmp_path: Path, nursery: trio.Nursery) -> None:
    """venues.watch over a real control socket: the matrix first, then each change. Kraken
    probes with its private fetch_balance (rate limit 1 s, Balance costs 3 units: the round
    takes seconds of ccxt's own pacing, which must not count as a timeout) and its probe
    interval is raised to the venue's rate limit."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {
        # (A generous timeout: the fault below is an immediate 503; a loaded machine must not
        # make a healthy probe time out and report "timeout" first.)
        "coinbase": {"exchange": "coinbase", "api_url": url, "interval": "200ms", "timeout": "1s",
                     "down_after": 2, "up_after": 2},
        "kraken": {"exchange": "kraken", "api_url": url, "interval": "200ms", "timeout": "2s",
                   "probes": ["fetch_balance"], "credentials": str(credentials(tmp_path, "kraken")),
                   "deadman": False, "up_after": 1},
    })
    bus = EventBus(1000)
    service = VenueService(cfg, bus, **venue_seams(cfg))
    sock = tmp_path / "control.sock"
    control = ControlServer(sock, group=None)
    service.register_control(control)
    client = ControlClient(sock, timeout=20)

    def read() -> dict[str, Any]:
        return client.read_line()

    with trio.fail_after(CAP):
        await nursery.start(control.run)
        await nursery.start(service.run)
        await trio.to_thread.run_sync(client.connect)
        assert await trio.to_thread.run_sync(client.call, "venues.watch") == {"streaming": True}
        first = await trio.to_thread.run_sync(read)
        matrix = {p["venue"]: p for p in first["matrix"]}
        assert set(matrix) == {"coinbase", "kraken"} and {p["uplink"] for p in first["matrix"]} == {"default"}
        assert matrix["kraken"]["interval_s"] == 1.0  # 200 ms asked, Kraken allows one call a second
        assert matrix["coinbase"]["interval_s"] == 0.2

        # The matrix is the state when the watch began (a venue may already be UP: no change
        # follows for it); then every change.
        states: dict[str, str] = {p["venue"]: p["state"] for p in first["matrix"]}
        while states != {"coinbase": "up", "kraken": "up"}:
            message = await trio.to_thread.run_sync(read)
            change = message["change"]
            assert change["kind"] == "VenueHealthChanged"
            states[change["venue"]] = change["state"]
        assert emulator.venue("kraken").by_path.get("/0/private/BalanceEx", 0) >= 1  # the private probe ran

        emulator.set_fault("coinbase", "error", status=503)
        change = (await trio.to_thread.run_sync(read))["change"]
        while change["venue"] != "coinbase":  # Kraken's own news, if the machine is slow
            change = (await trio.to_thread.run_sync(read))["change"]
        assert (change["venue"], change["uplink"], change["previous"], change["state"]) == \
            ("coinbase", "default", "up", "degraded")
        assert change["error_class"] == "http" and change["venue_state"] == "degraded"
        assert isinstance(change["monotonic_ns"], int)

        status = await trio.to_thread.run_sync(ControlClient(sock).connect().call, "venues.status")
        assert status["venues"]["kraken"]["state"] == "up"
        assert status["venues"]["kraken"]["credentials"] == "configured"
        assert status["venues"]["coinbase"]["paths"][0]["error_class"] == "http"
        assert status["may_trade"] is True
        assert_no_secrets(json.dumps(status), "venues.status")

        text = render(service.metrics())
        assert 'lifeline_venue_state{state="up",uplink="default",venue="kraken"} 1.0' in text
        assert 'lifeline_venue_state{state="down",uplink="default",venue="kraken"} 0.0' in text
        assert 'lifeline_venue_up{venue="kraken"} 1.0' in text
        assert 'lifeline_venue_up{venue="coinbase"} 0.0' in text
        assert 'lifeline_venue_probe_failures_total{error_class="http",uplink="default",venue="coinbase"}' in text
        assert 'lifeline_venue_latency_seconds{uplink="default",venue="kraken"}' in text
        # Every answered probe round is in the latency histogram.
        assert 'lifeline_venue_probe_latency_seconds_count{uplink="default",venue="kraken"}' in text
        client.close()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- dead-man switch

async def test_deadman_rearmed_while_primary_and_left_to_fire_when_fenced(tmp_path: Path,
                                                                         nursery: trio.Nursery) -> None:
    """While the node may trade, Kraken's CancelAllOrdersAfter is re-armed every
    deadman_interval; once it is fenced nothing more is sent and the venue's own timer
    cancels every open order. Promoted again, it arms again. Coinbase has no switch: reported,
    not an alarm."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {
        "kraken": {"exchange": "kraken", "api_url": url, "interval": "200ms", "timeout": "1s",
                   "credentials": str(credentials(tmp_path, "kraken")), "deadman_timeout": "2s",
                   "deadman_interval": "300ms", "reconcile_on_promotion": False},
        "coinbase": {"exchange": "coinbase", "api_url": url, "interval": "200ms",
                     "credentials": str(credentials(tmp_path, "coinbase")), "reconcile_on_promotion": False},
    })
    bus = EventBus(1000)
    armed_events = bus.subscribe("test-armed", kinds={"VenueDeadmanArmed", "VenueDeadmanFailed"})
    standby = FakeStandby()
    service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
    deadman = emulator.venue("kraken").deadman

    with trio.fail_after(CAP):
        await nursery.start(service.run)
        await wait_for(lambda: deadman.arms >= 4)
        state = emulator.state()["venues"]["kraken"]["deadman"]
        assert state["armed"] is True and state["timeout"] == 2.0 and 0 < state["trigger_in"] <= 2.0
        first = armed_events.receive_nowait()
        assert (first.kind, first.venue, first.timeout_s) == ("VenueDeadmanArmed", "kraken", 2.0)
        with pytest.raises(trio.WouldBlock):  # re-arms are not events; only the first of a term
            armed_events.receive_nowait()
        details = service.details()["venues"]
        assert details["kraken"]["deadman"]["supported"] is True and details["kraken"]["deadman"]["arms"] >= 3
        assert details["kraken"]["deadman"]["error"] is None
        assert details["coinbase"]["deadman"]["supported"] is False
        assert "no dead-man switch" in details["coinbase"]["deadman"]["error"]
        assert service.status().health == "ok"  # an unsupported switch is no alarm
        table = format_matrix(service.details())
        assert "coinbase: UP overall; dead-man not supported by the venue" in table
        assert "kraken: UP overall; dead-man armed" in table
        assert len(emulator.open_orders("kraken")) == 3 and deadman.fired == 0

        standby.leadership.primary = False
        bus.publish(role_changed("fenced", "primary"))
        fenced_at = trio.current_time()
        await trio.sleep(0.1)  # an arm already in flight may still land
        arms_at_fence = deadman.arms
        await wait_for(lambda: deadman.fired == 1, timeout=4)
        assert trio.current_time() - fenced_at <= 2.5  # the last arm ran out (2 s), no later one
        assert deadman.arms == arms_at_fence  # not re-armed while fenced
        assert emulator.open_orders("kraken") == []
        assert {c["by"] for c in emulator.venue("kraken").cancelled} == {"deadman"}
        assert deadman.cancelled == 3
        await trio.sleep(0.7)  # two more intervals: still nothing sent
        assert deadman.arms == arms_at_fence
        assert service.details()["may_trade"] is False

        emulator.add_orders("kraken", [{"symbol": "LTC/USDT", "side": "buy", "amount": "1", "price": "50"}])
        standby.leadership.primary = True
        bus.publish(role_changed("primary", "candidate", epoch=8))
        await wait_for(lambda: deadman.arms > arms_at_fence + 1)
        again = armed_events.receive_nowait()
        assert again.kind == "VenueDeadmanArmed"  # the first arm of the new term
        assert emulator.state()["venues"]["kraken"]["deadman"]["armed"] is True
        assert len(emulator.open_orders("kraken")) == 1

        # a re-arm the venue refuses: an event, an alarm in status and in `lifeline venues`
        emulator.set_fault("kraken", "error", status=503)
        failed = await armed_events.receive()
        assert (failed.kind, failed.venue, failed.error_class) == ("VenueDeadmanFailed", "kraken", "http")
        assert "503" in failed.detail
        failing = {f.name: f for f in service.metrics()}["lifeline_venue_deadman_failing"]
        assert {s.labels["venue"]: s.value for s in failing.samples}["kraken"] >= 1
        assert "; dead-man NOT ARMED: venue kraken: cancel_all_orders_after failed" in format_matrix(service.details())
        emulator.set_fault("kraken", "ok")
        recovered = await armed_events.receive()
        assert recovered.kind == "VenueDeadmanArmed"  # armed again after a failure
        failing = {f.name: f for f in service.metrics()}["lifeline_venue_deadman_failing"]
        assert {s.labels["venue"]: s.value for s in failing.samples}["kraken"] == 0
        await wait_for(lambda: service.status().health == "ok", timeout=5)  # the probes are UP again too
        assert service.details()["venues"]["kraken"]["deadman"]["failures"] >= 1
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- reconciliation

def kraken_venue(url: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {"exchange": "kraken", "api_url": url, "interval": "1s", "timeout": "1s",
            "credentials": str(credentials(tmp, "kraken")), "deadman": False, **extra}


async def test_cancel_orphans_when_primary_at_start_keeps_what_the_journal_knows(tmp_path: Path,
                                                                                 nursery: trio.Nursery) -> None:
    """A fixed primary reconciles at start (trigger "start"): of Kraken's three recorded open
    orders, the one the journal holds (by venue order id) is kept, the two orphans are
    cancelled at the venue; a journal-open order the venue does not list is reported missing.
    Every decision is in the signed audit log (`lifeline audit verify` passes) and in a JSON
    report under STATE_DIR/venues/reconcile/."""
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path)}, standby=fixed_primary())
    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    with trio.fail_after(CAP):
        standby = await start_standby(nursery, cfg, bus)
        await wait_for(lambda: standby.accepting)
        await standby._append({"payloads": [
            "an engine note, not an order",
            order_record("eng-1", venue_order_id="OIIQBL-6PV3A-7M2AJJ", price="54.0"),
            order_record("eng-2", venue_order_id="OGONE1-AAAAA-BBBBBB", symbol="XRP/USD", side="buy",
                         amount="5", price="0.5"),
            order_record("eng-3", venue_order_id="OCLOSE-AAAAA-BBBBBB", state="filled"),
        ]})
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        await nursery.start(service.run)
        event = await finished.receive()
        assert (event.venue, event.policy, event.dry_run, event.trigger) == ("kraken", "cancel-orphans", False, "start")
        assert event.errors == []
        counts = event.counts
        assert (counts["matched"], counts["orphans"], counts["missing"], counts["cancelled"], counts["failed"]) == \
            (1, 2, 1, 2, 0)
        assert [o["id"] for o in emulator.open_orders("kraken")] == ["OIIQBL-6PV3A-7M2AJJ"]
        assert {c["id"] for c in emulator.venue("kraken").cancelled} == SEEDED_KRAKEN - {"OIIQBL-6PV3A-7M2AJJ"}

        report_path = Path(event.report)
        assert report_path.parent == tmp_path / "state" / "venues" / "reconcile"
        report = json.loads(report_path.read_text())
        assert report["trigger"] == "start" and report["node"] == "edge-a" and report["epoch"] == 1
        outcomes = {d["venue_order_id"]: (d["kind"], d["outcome"]) for d in report["decisions"]}
        assert outcomes["OIIQBL-6PV3A-7M2AJJ"] == ("matched", "kept")
        assert outcomes["OXCZ7B-EMVZQ-MTJTQJ"] == ("orphan", "cancelled")
        assert outcomes["OF7S76-H2IMS-N2ML4U"] == ("orphan", "cancelled")
        assert outcomes["OGONE1-AAAAA-BBBBBB"] == ("missing", "report")
        assert service.details()["venues"]["kraken"]["reconcile"]["last_report"] == str(report_path)

        entries = audit_entries(tmp_path / "state")
        kinds = [e["kind"] for e in entries]
        assert kinds == ["venue.reconcile.started", "venue.reconcile.action", "venue.reconcile.action",
                         "venue.reconcile.finished"]
        assert {e["fields"]["venue_order_id"] for e in entries if e["kind"] == "venue.reconcile.action"} == \
            SEEDED_KRAKEN - {"OIIQBL-6PV3A-7M2AJJ"}
        assert all(e["fields"]["outcome"] == "cancelled" for e in entries if e["kind"] == "venue.reconcile.action")
        verify = await trio.to_thread.run_sync(
            lambda: cli("audit", "verify", "--state-dir", str(tmp_path / "state")))
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # by hand, dry run: the same comparison, nothing done, a report of its own
        emulator.add_orders("kraken", [{"symbol": "LTC/USDT", "side": "buy", "amount": "2", "price": "60",
                                        "id": "ONEW01-AAAAA-BBBBBB"}])
        dry = await service.reconcile("kraken", dry_run=True)
        assert dry.counts()["would_cancel"] == 1 and dry.counts()["cancelled"] == 0
        assert {o["id"] for o in emulator.open_orders("kraken")} == {"OIIQBL-6PV3A-7M2AJJ", "ONEW01-AAAAA-BBBBBB"}
        assert service.venues["kraken"].last_report.endswith("-kraken-dry-run.json")
        assert any("would cancel" in line for line in dry.lines())
        nursery.cancel_scope.cancel()


async def test_adopt_writes_adoption_records_then_everything_matches(tmp_path: Path, nursery: trio.Nursery) -> None:
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile="adopt",
                                                        reconcile_on_promotion=False)},
                      standby=fixed_primary())
    bus = EventBus(1000)
    with trio.fail_after(CAP):
        standby = await start_standby(nursery, cfg, bus)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        await nursery.start(service.run)
        await wait_for(lambda: service.may_trade())

        dry = await service.reconcile("kraken", dry_run=True)
        assert dry.counts()["would_adopt"] == 3 and standby.journal.last.seq == 0

        report = await service.reconcile("kraken", dry_run=False)
        assert report.counts()["adopted"] == 3 and report.errors == []
        from daemon.venues.orders import parse_order_record

        records = [parse_order_record(r.payload) for r in standby.journal.read(1, 100)]
        assert len(records) == 3 and all(r is not None for r in records)
        assert {r.venue_order_id for r in records} == SEEDED_KRAKEN  # type: ignore[union-attr]
        for record in records:
            assert record is not None
            assert (record.venue, record.state, record.adopted, record.epoch) == ("kraken", "open", True, 1)
            assert record.client_order_id == f"adopted-{record.venue_order_id}"
        assert len(emulator.open_orders("kraken")) == 3  # adopting cancels nothing

        again = await service.reconcile("kraken", dry_run=False)
        assert (again.counts()["matched"], again.counts()["orphans"], again.counts()["adopted"]) == (3, 0, 0)
        assert standby.journal.last.seq == 3
        entries = audit_entries(tmp_path / "state")
        actions = [(e["fields"]["dry_run"], e["fields"]["outcome"]) for e in entries
                   if e["kind"] == "venue.reconcile.action"]
        assert sorted(actions) == [(False, "adopted")] * 3 + [(True, "would adopt")] * 3
        assert [e["kind"] for e in entries].count("venue.reconcile.finished") == 3
        nursery.cancel_scope.cancel()


async def test_report_only_changes_nothing_at_the_venue(tmp_path: Path, nursery: trio.Nursery) -> None:
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile="report-only")},
                      standby=fixed_primary())
    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    with trio.fail_after(CAP):
        standby = await start_standby(nursery, cfg, bus)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        await nursery.start(service.run)
        event = await finished.receive()
        assert (event.policy, event.trigger) == ("report-only", "start")
        assert (event.counts["orphans"], event.counts["cancelled"], event.counts["adopted"]) == (3, 0, 0)
        report = json.loads(Path(event.report).read_text())
        assert {d["outcome"] for d in report["decisions"]} == {"report"}
        assert {o["id"] for o in emulator.open_orders("kraken")} == SEEDED_KRAKEN
        assert not any("Cancel" in path for path in emulator.venue("kraken").by_path)
        assert standby.journal.last.seq == 0
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the journal's order records

async def test_journal_append_refuses_invalid_order_records_and_writes_nothing(tmp_path: Path,
                                                                               nursery: trio.Nursery) -> None:
    """journal.append on the real control socket: an order record that is invalid (bad
    amount, unknown key, a venue that is not configured) refuses the whole batch with an
    error naming the field; valid order records and other payloads pass, and the venues
    service's order index follows them."""
    _, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path, reconcile_on_promotion=False)},
                      standby=fixed_primary())
    bus = EventBus(1000)
    sock = tmp_path / "control.sock"
    control = ControlServer(sock, group=None)

    def append(*payloads: str) -> Any:
        with ControlClient(sock) as client:
            return client.call("journal.append", {"payloads": list(payloads)})

    async def refused(*payloads: str) -> str:
        with pytest.raises(ClientControlError) as info:
            await trio.to_thread.run_sync(lambda: append(*payloads))
        assert info.value.code == "bad_record"
        assert "nothing was written" in info.value.message
        return info.value.message

    with trio.fail_after(CAP):
        standby = StandbyService(cfg, bus, **standby_seams(cfg), key=KEY)
        standby.register_control(control)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        service.register_control(control)
        await nursery.start(control.run)
        await nursery.start(standby.run)
        await nursery.start(service.run)
        await wait_for(lambda: standby.accepting)

        message = await refused(order_record("eng-1", amount="-1"))
        assert "amount" in message and "payload 0" in message
        message = await refused("a note", order_record("eng-1", amount="abc"))  # the good one is not written either
        assert "amount" in message and "payload 1" in message
        message = await refused(order_record("eng-1", venue="binance"))
        assert "'binance'" in message and "kraken" in message
        message = await refused(order_record("eng-1", amout="1"))
        assert "amout" in message
        message = await refused(order_record("bad id with spaces"))
        assert "client_order_id" in message
        assert standby.journal.last.seq == 0

        result = await trio.to_thread.run_sync(lambda: append(
            "plain text", '{"record": "fill", "anything": 1}', '{"x": 1}',
            order_record("eng-1", venue_order_id="OIIQBL-6PV3A-7M2AJJ", price="54.0")))
        assert [r["status"] for r in result["results"]] == ["ok"] * 4
        await wait_for(lambda: service.orders is not None and service.orders.position == 4)
        indexed = service.orders.get("kraken", "eng-1")
        assert indexed is not None and indexed.is_open and indexed.venue_order_id == "OIIQBL-6PV3A-7M2AJJ"
        assert service.details()["order_index"]["invalid"] == 0

        await trio.to_thread.run_sync(lambda: append(order_record("eng-1", state="cancelled")))
        await wait_for(lambda: service.orders.position == 5)
        assert service.orders.get("kraken", "eng-1") is None and service.orders.open_at("kraken") == []
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the playbook action

async def test_playbook_action_venue_cancel_all(tmp_path: Path, nursery: trio.Nursery) -> None:
    from recovery.executor import ActionFailed
    from recovery.service import DaemonActionRunner

    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY})
    cfg = make_config(tmp_path, {"kraken": kraken_venue(url, tmp_path)})
    bus = EventBus(1000)
    service = VenueService(cfg, bus, **venue_seams(cfg), client_factory=fast_client_factory)
    runner = DaemonActionRunner(bus)
    runner.playbook = "venue-dark"
    with trio.fail_after(CAP):
        await nursery.start(service.run)
        with pytest.raises(ActionFailed) as info:
            await runner.run("venue.cancel_all", {"venue": "kraken"}, dry_run=False)
        assert "no [venues] are configured" in str(info.value)

        runner.venues = service
        assert await runner.run("venue.cancel_all", {"venue": "kraken"}, dry_run=True) == \
            "would cancel 3 open order(s) at kraken"
        assert len(emulator.open_orders("kraken")) == 3
        assert await runner.run("venue.cancel_all", {"venue": "kraken"}, dry_run=False) == \
            "cancelled 3 open order(s) at kraken"
        assert emulator.open_orders("kraken") == []
        assert {c["id"] for c in emulator.venue("kraken").cancelled} == SEEDED_KRAKEN
        entries = [e for e in audit_entries(tmp_path / "state") if e["kind"] == "venue.cancel"]
        assert {e["fields"]["venue_order_id"] for e in entries} == SEEDED_KRAKEN
        assert {(e["fields"]["outcome"], e["fields"]["reason"]) for e in entries} == \
            {("cancelled", "playbook venue-dark")}

        with pytest.raises(ActionFailed) as info:
            await runner.run("venue.cancel_all", {"venue": "nope"}, dry_run=False)
        assert "no venue 'nope'" in str(info.value) and "kraken" in str(info.value)
        emulator.set_fault("kraken", "error", status=503)
        with pytest.raises(ActionFailed) as info:
            await runner.run("venue.cancel_all", {"venue": "kraken"}, dry_run=False)
        assert "venue.cancel_all" in str(info.value) and "503" in str(info.value)
        assert_no_secrets(str(info.value), "the action's error")
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- credentials

async def test_credentials_never_in_logs_status_reports_or_errors(tmp_path: Path, nursery: trio.Nursery,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Every log record (ccxt's request logging included, at DEBUG), the status, the
    reconciliation report, the audit log and the errors of failed calls, with the venue
    answering normally, refusing the key, and failing: no api key, no secret."""
    caplog.set_level(logging.DEBUG)
    emulator, url = await start_emulator(nursery, api_keys={"kraken": KRAKEN_KEY, "coinbase": "another-key"})
    cfg = make_config(tmp_path, {
        "kraken": kraken_venue(url, tmp_path, interval="200ms", probes=["fetch_time", "fetch_balance"],
                               deadman=True, deadman_timeout="5s", deadman_interval="1s"),
        "coinbase": {"exchange": "coinbase", "api_url": url, "interval": "200ms",
                     "credentials": str(credentials(tmp_path, "coinbase")), "probes": ["fetch_balance"]},
    }, standby=fixed_primary())
    bus = EventBus(1000)
    finished = bus.subscribe("test-reconciled", kinds={"ReconciliationFinished"})
    texts: list[str] = []
    with trio.fail_after(CAP):
        standby = await start_standby(nursery, cfg, bus)
        service = VenueService(cfg, bus, **venue_seams(cfg), standby=standby, client_factory=fast_client_factory)
        await nursery.start(service.run)
        reports = [await finished.receive(), await finished.receive()]
        by_venue = {e.venue: e for e in reports}
        assert by_venue["kraken"].counts["cancelled"] == 3
        assert by_venue["coinbase"].errors and "auth" in by_venue["coinbase"].errors[0]  # the wrong key
        await wait_for(lambda: service.venues["kraken"].deadman_arms >= 1)
        await wait_for(lambda: service.venues["coinbase"].paths["default"].health.failures_total >= 2)
        assert service.venues["coinbase"].paths["default"].last_error_class == "auth"

        emulator.set_fault("kraken", "exchange_error")
        with pytest.raises(VenueUnavailable) as info:
            await service.cancel_all("kraken")
        texts.append(str(info.value))
        emulator.set_fault("kraken", "error", status=500)
        report = await service.reconcile("kraken", dry_run=True)
        assert report.errors
        texts.append(json.dumps(report.to_dict()))
        with pytest.raises(VenueUnavailable) as info:
            await service.cancel_all("coinbase")
        assert "auth" in str(info.value)
        texts.append(str(info.value))
        texts.append(repr(service.venues["kraken"].credentials))
        texts.append(json.dumps(service.details(), default=str))
        texts.append(json.dumps(service.status().details, default=str))
        texts.append(render(service.metrics()))
        for event in bus.recent:
            texts.append(json.dumps(event.to_dict(), default=str))
        nursery.cancel_scope.cancel()
    for path in (tmp_path / "state" / "venues" / "reconcile").iterdir():
        texts.append(path.read_text())
    texts.append((tmp_path / "state" / "recovery" / "audit.jsonl").read_text())
    formatter = KeyValueFormatter(journal=False)
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "API-Key" in logged and "CB-ACCESS-KEY" in logged  # ccxt logged the signed requests (DEBUG)
    assert_no_secrets(logged, "the logs")
    assert_no_secrets("\n".join(texts), "status, events, reports, the audit log or an error")
