"""Venue-side fencing in the venues service: a primary whose lease stops renewing sends no
dead-man arm once the lease is valid for less than the arm's bound, so its orders die at
the venue by themselves within deadman_timeout of valid_until.

Two runs: the service under trio's MockClock with a client that records each arm (the
rule, and the loop that uses it, to the nanosecond), and the service with real ccxt over
real TCP against the venue emulator (the venue's own timer fires; nothing arrives after
the rule's cut-off)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.cli import cli

from daemon.config import Config, dump_toml, parse_config
from daemon.core.bus import EventBus
from daemon.venues import service as venue_service
from daemon.venues.client import ArmRefused, CallResult
from daemon.venues.service import VenueService
from lab.venues.server import VenueEmulator

KRAKEN_KEY = "lifeline-test-kraken-key-K7Qm2pXz"
KRAKEN_SECRET = base64.b64encode(b"lifeline-test-kraken-secret-".ljust(64, b"#")).decode()
SLACK = 1.2     # ttl - safety_margin of the simulated lease (1.5 s - 300 ms)
RENEW = 0.5     # its renew_interval
BOUND = 0.6     # deadman_arm_timeout


def credentials(tmp: Path) -> Path:
    path = tmp / "kraken.credentials.toml"
    path.write_text(f'api_key = "{KRAKEN_KEY}"\nsecret = "{KRAKEN_SECRET}"\n')
    path.chmod(0o600)
    return path


def make_config(tmp: Path, **venue: Any) -> Config:
    return parse_config(dump_toml({
        "node": {"name": "edge-a", "state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "venues": {"kraken": {"exchange": "kraken", "credentials": str(credentials(tmp)), "interval": "1h",
                              "deadman_timeout": "2s", "deadman_interval": "300ms",
                              "deadman_arm_timeout": f"{int(BOUND * 1000)}ms", "reconcile_on_promotion": False,
                              **venue}},
    }))


class Lease:
    """A primary's lease as leadership shows it: ``valid_until_ns`` = the send time of the
    last renewal + ttl - safety_margin, on ``clock_ns``; renewed every RENEW until ``stop``."""

    def __init__(self, clock_ns: Any) -> None:
        self.clock_ns = clock_ns
        self.renewed_ns = clock_ns()
        self.renewing = True

    def valid_until_ns(self, now_ns: int | None = None) -> int | None:
        until = self.renewed_ns + int(SLACK * 1e9)
        return until if (now_ns if now_ns is not None else self.clock_ns()) < until else None

    def may_trade(self) -> bool:
        return self.valid_until_ns() is not None

    @property
    def valid_until(self) -> float:
        return (self.renewed_ns + int(SLACK * 1e9)) / 1e9

    async def renew_until(self, stop: float, now: Any) -> None:
        while now() < stop:
            await trio.sleep(RENEW)
            if now() < stop:
                self.renewed_ns = self.clock_ns()


def fake_standby(lease: Lease) -> Any:
    return SimpleNamespace(leadership=lease, epoch=7, journal=None,
                           config=SimpleNamespace(standby=SimpleNamespace(lease="fake")))


class RecordingClient:
    """The client contract the service uses for the dead-man switch: ``send_if`` is asked
    right before the request would leave (as :class:`daemon.venues.client.VenueClient` does)."""

    rate_limit = 0.0

    def __init__(self, clock: trio.testing.MockClock, arms: list[float], refused: list[str]) -> None:
        self.clock, self.arms, self.refused = clock, arms, refused

    def check_calls(self, calls: Any) -> list[str]:
        return []

    def supports(self, feature: str) -> bool:
        return True

    def probe(self, calls: Any) -> CallResult:
        return CallResult(ok=True, latency=0.001)

    def cancel_all_orders_after(self, timeout: float, *, send_if: Any = None, bound: float | None = None) -> dict:
        assert bound == BOUND
        reason = send_if() if send_if is not None else None
        if reason is not None:
            self.refused.append(reason)
            raise ArmRefused("lease", reason)
        self.arms.append(self.clock.current_time())
        return {}


async def test_mockclock_no_arm_once_the_lease_is_valid_for_less_than_the_arms_bound(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = autojump_clock

    async def inline(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args)  # worker threads would let the autojump clock run while they work

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)

    def clock_ns() -> int:  # callable from the worker thread too (MockClock's own state)
        return round(clock.current_time() * 1e9)

    lease = Lease(clock_ns)
    arms: list[float] = []
    refused: list[str] = []
    cfg = make_config(tmp_path)
    service = VenueService(cfg, EventBus(100), standby=fake_standby(lease), clock_ns=clock_ns,
                           client_factory=lambda *a, **k: RecordingClient(clock, arms, refused))
    stop = trio.current_time() + 5.0
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await lease.renew_until(stop, trio.current_time)
        cutoff = lease.valid_until - BOUND   # the rule's last instant to send
        await trio.sleep(SLACK + 3)
        assert not lease.may_trade()
        nursery.cancel_scope.cancel()
    assert len(arms) >= 10  # it re-armed every 300 ms while the lease was renewed
    assert max(arms) < cutoff, f"an arm was sent at {max(arms):.3f}, after the rule's cut-off {cutoff:.3f}"
    # the last arm it sent is followed by no other until the deadline: the switch runs out by itself
    assert not [t for t in arms if t >= cutoff]
    held = {f.name: f for f in service.metrics()}["lifeline_venue_deadman_held_total"]
    assert held.samples[0].value == service.venues["kraken"].deadman_held >= 1  # the window before valid_until
    holding = service.venues["kraken"].deadman_holding
    assert holding is not None and ("not primary" in holding or "valid_until passed" in holding
                                    or "not more than the arm's bound" in holding)


async def test_emulator_sees_no_arm_after_the_cutoff_and_fires_within_the_timeout_of_valid_until(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    emulator = VenueEmulator(api_keys={"kraken": KRAKEN_KEY})
    url = await nursery.start(emulator.run)
    offset = trio.current_time() - time.monotonic()   # trio's clock is CLOCK_MONOTONIC + an offset
    lease = Lease(time.monotonic_ns)

    def fast_client_factory(venue: str, config: Any, **kwargs: Any) -> Any:
        client = venue_service._default_client_factory(venue, config, **kwargs)
        client.exchange.rateLimit = 20  # the emulator has no rate limit
        return client

    cfg = make_config(tmp_path, api_url=url)
    service = VenueService(cfg, EventBus(100), standby=fake_standby(lease), client_factory=fast_client_factory)
    deadman = emulator.venue("kraken").deadman
    arrivals: list[float] = []   # trio time at which the emulator took each arm

    async def watch_arms() -> None:
        seen = 0
        while True:
            if deadman.arms != seen and deadman.deadline is not None:
                seen = deadman.arms
                arrivals.append(deadman.deadline - deadman.timeout)
            await trio.sleep(0.002)

    with trio.fail_after(30):
        nursery.start_soon(watch_arms)
        await nursery.start(service.run)
        await lease.renew_until(time.monotonic() + 4.0, time.monotonic)
        valid_until = lease.valid_until + offset        # in trio time
        assert len(emulator.open_orders("kraken")) == 3 and deadman.fired == 0
        with trio.move_on_at(valid_until + 2.0 + 1.0):
            while deadman.fired == 0:
                await trio.sleep(0.01)
        fired_at = trio.current_time()
    assert len(arrivals) >= 6
    # the last arm left before valid_until - bound (loopback adds a few ms of flight)
    assert max(arrivals) < valid_until - BOUND + 0.1, (max(arrivals), valid_until)
    assert deadman.fired == 1 and emulator.open_orders("kraken") == []
    # orders died within deadman_timeout of valid_until (the emulator's timer polls: +0.2 s)
    assert fired_at <= valid_until + 2.0 + 0.2
    assert deadman.arms == len(arrivals)
    nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the config check

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "lifeline.toml"


def test_config_check_prints_each_venues_survival_bound() -> None:
    result = cli("config", "check", str(EXAMPLE), "--no-host")
    assert result.returncode == 0, result.stderr
    assert ("  kraken: at most 61.8 s (max_orphan_survival 90s): (ttl 1.5 s - safety_margin 0.3 s + "
            "deadman_timeout 60 s) x (1 + 0.01) = 61.812 s after its last successful renewal") in result.stdout


def test_a_deadman_timeout_too_long_for_the_bound_is_refused_by_check_and_run(tmp_path: Path) -> None:
    path = tmp_path / "lifeline.toml"
    text = EXAMPLE.read_text()
    assert 'deadman_timeout = "60s"' in text
    path.write_text(text.replace('deadman_timeout = "60s"', 'deadman_timeout = "2m"'))
    expected = (f"{path}: venues.kraken.deadman_timeout: a deposed primary's orders could live 122.4 s at the "
                "venue ((ttl 1.5 s - safety_margin 0.3 s + deadman_timeout 120 s) x (1 + 0.01) = 122.412 s after "
                "its last successful renewal), longer than max_orphan_survival (90s): lower deadman_timeout to at "
                "most 87s, or raise max_orphan_survival")
    check = cli("config", "check", str(path), "--no-host")
    assert check.returncode == 1 and expected in check.stderr, check.stderr
    run = cli("run", "--config", str(path))
    assert run.returncode == 78, run.stderr  # EX_CONFIG: systemd does not restart it
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert expected in run.stderr


# --------------------------------------------------------------------------- a real pair and a real lease

async def test_a_real_primary_cut_off_from_its_witness_stops_arming_before_valid_until(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """Two `lifeline run` processes and a `lifeline witness`, [venues.kraken] on the venue
    emulator (production ccxt: Kraken's private calls ~3 s apart). The primary arms the switch
    through its real lease; the witness is killed: the primary cannot renew, its last arm
    reached the venue before valid_until - deadman_arm_timeout (the last valid_until on its
    role.watch feed), nothing is armed after it, and the venue cancels every order within
    deadman_timeout (10 s: Kraken's pacing needs it) of valid_until."""
    from tests.support.pair import LeasePair

    from daemon.core.control_client import ControlClient

    emulator = VenueEmulator(api_keys={"kraken": KRAKEN_KEY})
    url = await nursery.start(emulator.run)
    offset = trio.current_time() - time.monotonic()
    deadman = emulator.venue("kraken").deadman
    arm_bound = 0.4
    pair = LeasePair(tmp_path, "witness")   # ttl 1 s, safety_margin 200 ms
    try:
        for node in pair.nodes.values():
            node.extra = {"venues": {"kraken": {
                "exchange": "kraken", "api_url": url, "credentials": str(credentials(node.root)), "interval": "1s",
                "deadman_timeout": "10s", "deadman_interval": "1s", "deadman_arm_timeout": "400ms",
                "reconcile_on_promotion": False, "positions": False}}}
            node.root.mkdir(parents=True, exist_ok=True)
            node.write_config()
        await trio.to_thread.run_sync(pair.start)
        primary = await trio.to_thread.run_sync(pair.wait_primary)
        arrivals: list[float] = []

        async def watch_arms() -> None:
            seen = 0
            while True:
                if deadman.arms != seen and deadman.deadline is not None:
                    seen = deadman.arms
                    arrivals.append(deadman.deadline - deadman.timeout)
                await trio.sleep(0.002)

        nursery.start_soon(watch_arms)
        with trio.fail_after(40):
            with trio.move_on_after(20):
                while len(arrivals) < 2:   # armed through the real lease
                    await trio.sleep(0.05)
            assert len(arrivals) >= 2, pair.nodes[primary].log_text()[-6000:]
            feed = ControlClient(pair.nodes[primary].socket, timeout=5).connect()
            feed.call("role.watch")
            assert pair.witness is not None
            pair.witness.stop()        # SIGKILL: no renewal succeeds from now on
            valid_until: int | None = None

            def follow() -> int:
                last = None
                while True:
                    message = feed.read_line(timeout=10)
                    if message.get("valid_until") is not None:
                        last = int(message["valid_until"])
                    if message.get("role") != "primary":
                        assert last is not None
                        return last

            valid_until = await trio.to_thread.run_sync(follow)
            feed.close()
            until = valid_until / 1e9 + offset        # in trio time
            while deadman.fired == 0:
                await trio.sleep(0.01)
            fired_at = trio.current_time()
        arms_then = deadman.arms
        await trio.sleep(1.0)
        assert deadman.arms == arms_then          # nothing after the fence
        assert max(arrivals) < until - arm_bound + 0.05, (max(arrivals) - until)
        assert fired_at <= until + 10.0 + 0.2, fired_at - until
        assert emulator.open_orders("kraken") == []
    finally:
        await trio.to_thread.run_sync(pair.close)
    nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the client's side

async def test_the_client_asks_right_before_the_request_and_bounds_it(tmp_path: Path, nursery: trio.Nursery) -> None:
    """VenueClient.cancel_all_orders_after with send_if and bound, against the emulator with
    production ccxt: a refusal sends nothing (ArmRefused, class lease); asked after the market
    list is loaded; the request runs with bound/2 as ccxt's timeout, restored afterwards."""
    from daemon.venues.client import VenueClient, load_credentials

    emulator = VenueEmulator(api_keys={"kraken": KRAKEN_KEY})
    url = await nursery.start(emulator.run)
    creds = load_credentials(credentials(tmp_path))
    client = await trio.to_thread.run_sync(lambda: VenueClient(
        "kraken", "kraken", uplink=None, source_address=None, api_url=url, timeout=10.0, credentials=creds))
    client.exchange.rateLimit = 20
    deadman = emulator.venue("kraken").deadman
    seen: list[tuple[bool, int]] = []

    def refuse() -> str:
        seen.append((client.exchange.markets is not None, client.exchange.timeout))
        return "the lease is valid 0.4 s more, not more than the arm's bound"

    with pytest.raises(ArmRefused) as refused:
        await trio.to_thread.run_sync(lambda: client.cancel_all_orders_after(60, send_if=refuse, bound=0.6))
    assert refused.value.error_class == "lease" and "arm's bound" in refused.value.detail
    assert seen == [(True, 300)]            # markets loaded first; the arm's own timeout while it runs
    assert deadman.arms == 0 and client.exchange.timeout == 10_000

    await trio.to_thread.run_sync(lambda: client.cancel_all_orders_after(60, send_if=lambda: None, bound=0.6))
    assert deadman.arms == 1 and deadman.timeout == 60.0 and client.exchange.timeout == 10_000
    client.close()
    nursery.cancel_scope.cancel()
