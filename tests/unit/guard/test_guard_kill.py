"""The kill switch: its sans-IO plan and report (daemon/guard/kill.py), and the KillSwitch
running it over fake venues under MockClock (every path at once, a hung path, a standby)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.errors import Unavailable
from daemon.guard.blocks import Scope
from daemon.guard.kill import Cancel, CancelResult, KnownOrder, VenueFeatures, VenueKill, format_report, open_on_scope
from daemon.guard.killswitch import KillSwitch, MemoryBlocks

KRAKEN = VenueFeatures(cancel_all=True, cancel_batch=True)
COINBASE = VenueFeatures(cancel_all=False, cancel_batch=True)
BARE = VenueFeatures()


def order(i: str, symbol: str = "BTC/USD", status: str = "open") -> dict[str, Any]:
    return {"id": i, "symbol": symbol, "status": status}


def kill(scope: Scope = Scope(), journal: list[KnownOrder] | None = None, features: VenueFeatures = KRAKEN,
         venue: str = "kraken") -> VenueKill:
    return VenueKill(venue, scope, journal or [], features, started=10.0, deadline=15.0)


# ---------------------------------------------------------------- the plan


def test_first_wave_whole_venue_sends_cancel_all_and_the_journal_ids_in_one_batch() -> None:
    k = kill(journal=[KnownOrder("A", "BTC/USD"), KnownOrder("B", "ETH/USD")])
    wave = k.first_wave()
    assert wave == [Cancel("all"), Cancel("ids", ("A", "B"), None, batch=True)]
    assert k.cancel_all_sent


def test_a_symbol_scope_never_uses_the_accounts_cancel_all() -> None:
    k = kill(Scope(symbol="BTC/USD"), journal=[KnownOrder("A", "BTC/USD"), KnownOrder("B", "ETH/USD")])
    assert k.first_wave() == [Cancel("ids", ("A",), "BTC/USD", batch=True)]
    assert not k.cancel_all_sent


def test_without_batch_cancel_each_id_is_its_own_request() -> None:
    k = kill(journal=[KnownOrder("A", "BTC/USD"), KnownOrder("B", "ETH/USD")], features=BARE)
    assert k.first_wave() == [Cancel("ids", ("A",), "BTC/USD"), Cancel("ids", ("B",), "ETH/USD")]


def test_nothing_known_and_no_cancel_all_sends_nothing_before_the_fetch() -> None:
    assert kill(features=COINBASE).first_wave() == []


def test_a_venue_outside_the_scope_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="not on the scope"):
        kill(Scope(venue="coinbase"))


def test_the_fetch_drives_the_cancels_until_it_shows_nothing_on_the_scope() -> None:
    k = kill(Scope(symbol="BTC/USD"), features=COINBASE)
    again = k.on_fetch([order("A"), order("B"), order("C", "ETH/USD")], now=10.1)
    assert again == [Cancel("ids", ("A", "B"), "BTC/USD", batch=True)]
    assert not k.finished
    k.on_cancel("fibre", again[0], CancelResult(cancelled=2), now=10.15)
    # The other symbol stays open: not on the scope.
    assert k.on_fetch([order("C", "ETH/USD")], now=10.2) == []
    assert k.finished and k.clear_at == 10.2
    report = k.report()
    assert report.clear and report.clear_ms == pytest.approx(200.0)
    assert report.cancelled == 2 and report.left_open == [] and report.already_gone == 0


def test_an_order_still_shown_is_cancelled_again() -> None:
    k = kill(features=COINBASE)
    first = k.on_fetch([order("A")], now=10.1)
    k.on_cancel("fibre", first[0], CancelResult(error="timeout"), now=10.2)
    assert k.on_fetch([order("A")], now=10.3) == first
    assert k.errors == ["fibre: cancel 1 by id (batch): timeout"]


def test_at_the_deadline_the_last_fetch_is_what_is_left_open() -> None:
    k = kill(features=COINBASE)
    k.on_fetch([order("A"), order("B")], now=11.0)
    assert k.on_fetch([order("B")], now=15.0) == []
    assert k.gave_up and k.finished
    report = k.report()
    assert not report.clear and report.clear_ms is None
    assert report.left_open == ["B"]
    lines = format_report({"scope": "every venue", "venues": [report.to_dict()]})
    assert "LEFT OPEN 1 (B)" in lines[1]


def test_never_fetched_the_journals_orders_are_left_open() -> None:
    k = kill(journal=[KnownOrder("A", "BTC/USD")])
    k.expire(16.0)
    assert k.report().left_open == ["A"]


def test_a_finished_kill_ignores_late_answers() -> None:
    k = kill(features=COINBASE)
    assert k.on_fetch([], now=10.05) == []
    assert k.on_fetch([order("A")], now=10.5) == []
    assert k.report().clear_ms == pytest.approx(50.0)


def test_counts_cancel_all_and_by_id_once_each_and_already_gone() -> None:
    k = kill(journal=[KnownOrder(i, "BTC/USD") for i in "ABCD"])
    wave = k.first_wave()
    # Path 1: the cancel-all cancelled 3 (D was filled before the kill); path 2's batch finds all gone.
    k.on_cancel("fibre", wave[0], CancelResult(cancelled=3), now=10.01)
    k.on_cancel("starlink", wave[1], CancelResult(cancelled=0, not_found=("A", "B", "C", "D")), now=10.02)
    k.on_cancel("fibre", wave[1], CancelResult(not_found=("A", "B", "C", "D")), now=10.03)
    k.on_fetch([], now=10.04)
    report = k.report()
    assert report.cancelled == 3 and report.already_gone == 1 and report.requests == 4


def test_open_on_scope_skips_closed_orders_orders_without_id_and_other_symbols() -> None:
    got = open_on_scope([order("A"), order("B", status="closed"), {"symbol": "BTC/USD"}, order("C", "ETH/USD"),
                         "junk", {"id": "D", "symbol": "BTC/USD", "clientOrderId": "mm-4"}],  # type: ignore[list-item]
                        Scope(symbol="BTC/USD"))
    assert sorted(got) == ["A", "D"] and got["D"].client_order_id == "mm-4"


@settings(max_examples=300, deadline=None)
@given(journal=st.lists(st.sampled_from("ABCDEFGH"), unique=True),
       venue=st.lists(st.tuples(st.sampled_from("ABCDEFGHIJ"), st.sampled_from(["BTC/USD", "ETH/USD"])),
                      unique_by=lambda t: t[0]),
       symbol=st.sampled_from([None, "BTC/USD"]),
       features=st.sampled_from([KRAKEN, COINBASE, BARE]),
       lose=st.integers(0, 3))
def test_property_a_simulated_venue_always_ends_clear_and_the_counts_add_up(
        journal: list[str], venue: list[tuple[str, str]], symbol: str | None, features: VenueFeatures,
        lose: int) -> None:
    """Any journal, any venue book, any scope and API: sending what the plan says to a venue
    that honours cancels (the first ``lose`` requests are lost) ends clear, never cancels an
    order off the scope (except with the account's cancel-all, only for a whole-venue scope),
    and cancelled + already gone = every known order on the scope."""
    book = dict(venue)
    scope = Scope(symbol=symbol)
    symbols = {i: s for i, s in venue}
    k = VenueKill("kraken", scope, [KnownOrder(i, symbols.get(i, "BTC/USD")) for i in journal], features, 0.0, 100.0)
    on_scope_before = {i for i, s in book.items() if symbol is None or s == symbol}
    off_scope = {i: s for i, s in book.items() if i not in on_scope_before}
    lost = lose

    def send(cancel: Cancel) -> None:
        nonlocal lost
        if lost:
            lost -= 1
            k.on_cancel("p", cancel, CancelResult(error="timeout"), 0.0)
            return
        if cancel.kind == "all":
            n = len(book)
            book.clear()
            k.on_cancel("p", cancel, CancelResult(cancelled=n), 0.0)
            return
        done = [i for i in cancel.ids if i in book]
        for i in done:
            del book[i]
        k.on_cancel("p", cancel, CancelResult(cancelled=len(done), not_found=tuple(set(cancel.ids) - set(done))), 0.0)

    for c in k.first_wave():
        send(c)
    t = 0.0
    while not k.finished:
        t += 1.0
        for c in k.on_fetch([order(i, s) for i, s in book.items()], t):
            send(c)
    report = k.report()
    assert report.clear and report.left_open == []
    if not k.use_cancel_all:
        assert {i: s for i, s in book.items()} == off_scope
    known = on_scope_before | {i for i in journal if symbol is None or symbols.get(i, "BTC/USD") == symbol}
    if not k.use_cancel_all:
        assert report.cancelled == len(on_scope_before)
        assert report.cancelled + report.already_gone == len(known)


# ---------------------------------------------------------------- the KillSwitch over fake venues


class FakeVenues:
    """Two venues; ``hang`` paths never answer; each venue's book honours cancels."""

    def __init__(self, hang: set[tuple[str, str]] = set(), latency: float = 0.01) -> None:
        self.books = {"kraken": {f"K{i}": "BTC/USD" for i in range(25)},
                      "coinbase": {f"C{i}": "BTC/USD" for i in range(25)}}
        self.hang = hang
        self.latency = latency
        self.calls: list[tuple[str, str, str]] = []

    def kill_venues(self) -> dict[str, str | None]:
        return {"kraken": None, "coinbase": None, "bitstamp": "no credentials"}

    def kill_paths(self, venue: str) -> list[str]:
        return ["fibre", "starlink"]

    def kill_features(self, venue: str) -> tuple[bool, bool]:
        return (True, True) if venue == "kraken" else (False, True)

    def journal_open(self, venue: str) -> list[tuple[str, str, str | None]]:
        return [(i, s, None) for i, s in list(self.books[venue].items())[:10]]

    async def _wait(self, venue: str, path: str, what: str) -> None:
        self.calls.append((venue, path, what))
        if (venue, path) in self.hang:
            await trio.sleep_forever()
        await trio.sleep(self.latency)

    async def kill_fetch(self, venue: str, path: str) -> list[dict[str, Any]]:
        await self._wait(venue, path, "fetch")
        return [order(i, s) for i, s in self.books[venue].items()]

    async def kill_cancel_all(self, venue: str, path: str) -> int | None:
        await self._wait(venue, path, "cancel-all")
        book = self.books[venue]
        n = len(book)
        book.clear()
        return n

    async def kill_cancel_ids(self, venue: str, path: str, ids: list[str], symbol: str | None,
                              batch: bool) -> tuple[int | None, list[str]]:
        await self._wait(venue, path, f"cancel {len(ids)}")
        done = [i for i in ids if self.books[venue].pop(i, None) is not None]
        return len(done), sorted(set(ids) - set(done))


def run(fn: Any) -> Any:
    out: list[Any] = []

    async def main() -> None:
        out.append(await fn())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out[0]


def test_kill_blocks_first_then_clears_both_venues_through_every_path_even_with_the_fibre_hung() -> None:
    venues = FakeVenues(hang={("kraken", "fibre"), ("coinbase", "fibre")})
    blocks = MemoryBlocks()
    seen_block: list[bool] = []
    real_fetch = venues.kill_fetch

    async def fetch(venue: str, path: str) -> list[dict[str, Any]]:
        seen_block.append(blocks.blocks().refusal(venue, "BTC/USD", 0.0) is not None)
        return await real_fetch(venue, path)

    venues.kill_fetch = fetch  # type: ignore[method-assign]
    switch = KillSwitch(blocks, venues, deadline=5.0, wall=lambda: 1000.0)
    result = run(lambda: switch.kill(Scope(), "test", "uid=0 pid=1 user=root"))
    assert all(seen_block) and seen_block
    by = {v["venue"]: v for v in result["venues"]}
    assert by["kraken"]["clear"] and by["coinbase"]["clear"] and result["clear"]
    assert by["kraken"]["cancelled"] == 25 and by["coinbase"]["cancelled"] == 25
    # Cleared through starlink at its own pace, not at the hung fibre's (5 s deadline).
    assert by["kraken"]["clear_ms"] < 100 and by["coinbase"]["clear_ms"] < 100
    assert venues.books == {"kraken": {}, "coinbase": {}}
    assert ("kraken", "fibre", "cancel-all") in venues.calls  # sent through the fibre too
    assert result["skipped"] == ["bitstamp: skipped: no credentials"]
    assert result["lines"][1].startswith("  kraken: cancelled 25, left 0, cleared in")
    assert blocks.blocks().refusal("coinbase", "ETH/USD", 0.0) is not None


def test_a_venue_that_never_answers_is_reported_left_open_at_the_deadline() -> None:
    venues = FakeVenues(hang={("coinbase", "fibre"), ("coinbase", "starlink")})
    result = run(lambda: KillSwitch(MemoryBlocks(), venues, deadline=2.0).kill(Scope(), "test", "breaker:x"))
    by = {v["venue"]: v for v in result["venues"]}
    assert by["kraken"]["clear"] and not by["coinbase"]["clear"] and not result["clear"]
    assert len(by["coinbase"]["left_open"]) == 10  # what the journal said
    assert result["total_ms"] == pytest.approx(2000.0, abs=1.0)


def test_a_symbol_kill_cancels_only_that_symbol() -> None:
    venues = FakeVenues()
    venues.books["kraken"]["K-eth"] = "ETH/USD"
    result = run(lambda: KillSwitch(MemoryBlocks(), venues).kill(Scope("kraken", "ETH/USD"), "eth", "x"))
    assert [v["venue"] for v in result["venues"]] == ["kraken"]
    assert result["venues"][0]["cancelled"] == 1 and len(venues.books["kraken"]) == 25
    assert not any(c[2] == "cancel-all" for c in venues.calls)


def test_a_standby_refuses_the_whole_kill_naming_the_primary_and_sends_nothing() -> None:
    venues = FakeVenues()
    blocks = MemoryBlocks(may_write=lambda: False, why_not=lambda: "this node (b) is not primary; the primary is a")
    with pytest.raises(Unavailable, match="the primary is a"):
        run(lambda: KillSwitch(blocks, venues).kill(Scope(), "test", "x"))
    assert venues.calls == [] and not blocks.blocks().blocks


def test_unkill_ends_the_kill_and_audits_both_with_the_caller() -> None:
    entries: list[tuple[str, dict[str, Any]]] = []

    class Sink:
        def append(self, kind: str, /, **fields: Any) -> None:
            entries.append((kind, fields))

        def close(self) -> None:
            pass

    blocks = MemoryBlocks()
    switch = KillSwitch(blocks, FakeVenues(), audit_factory=Sink)

    async def both() -> Any:
        await switch.kill(Scope(venue="kraken"), "fat finger", "uid=7 pid=8 user=ops")
        assert blocks.blocks().refusal("kraken", "BTC/USD", 0.0) is not None
        assert blocks.blocks().refusal("coinbase", "BTC/USD", 0.0) is None
        return await switch.unkill(Scope(), "fixed", "uid=7 pid=8 user=ops")

    result = run(both)
    assert len(result["ended"]) == 1 and blocks.blocks().refusal("kraken", "BTC/USD", 0.0) is None
    kinds = [k for k, _ in entries]
    assert kinds == ["guard.kill", "guard.kill.venue", "guard.kill.finished", "guard.unkill"]
    assert all(f["by"] == "uid=7 pid=8 user=ops" for _, f in entries)


def test_a_bad_scope_or_reason_is_refused_before_anything_happens() -> None:
    venues = FakeVenues()
    blocks = MemoryBlocks()
    with pytest.raises(ValueError, match="not a configured venue"):
        run(lambda: KillSwitch(blocks, venues).kill(Scope(venue="ftx"), "x", "y"))
    with pytest.raises(ValueError, match="reason"):
        run(lambda: KillSwitch(blocks, venues).kill(Scope(), " ", "y"))
    assert venues.calls == [] and not blocks.blocks().blocks


def test_the_playbook_action_kills_as_the_playbook_and_fails_the_step_when_a_venue_is_left_open() -> None:
    from daemon.core.bus import EventBus
    from recovery.executor import ActionFailed
    from recovery.service import DaemonActionRunner

    venues = FakeVenues(hang={("coinbase", "fibre"), ("coinbase", "starlink")})
    blocks = MemoryBlocks()
    runner = DaemonActionRunner(EventBus(10))
    runner.guard = KillSwitch(blocks, venues, deadline=1.0)
    runner.playbook = "venue-flapping"

    async def steps() -> Any:
        dry = await runner.run("guard.kill", {"reason": "flap", "venue": "kraken"}, dry_run=True)
        assert dry.startswith("would kill every symbol on kraken") and not blocks.blocks().blocks
        done = await runner.run("guard.kill", {"reason": "flap", "venue": "kraken"}, dry_run=False)
        assert "kraken: cancelled 25, left 0" in done
        assert blocks.blocks().killed()[0].by == "playbook:venue-flapping"
        with pytest.raises(ActionFailed, match="not every venue is clear.*coinbase.*LEFT OPEN 10"):
            await runner.run("guard.kill", {"reason": "flap"}, dry_run=False)
        with pytest.raises(ActionFailed, match="guard.kill: venue"):
            await runner.run("guard.kill", {"reason": "flap", "venue": "Not A Venue"}, dry_run=False)
        return True

    assert run(steps)


def test_a_path_whose_calls_blow_up_is_an_error_in_the_report_not_a_failed_kill() -> None:
    venues = FakeVenues()
    real = venues.kill_cancel_all

    async def broken(venue: str, path: str) -> int | None:
        if path == "fibre":
            raise KeyError("bug")
        return await real(venue, path)

    venues.kill_cancel_all = broken  # type: ignore[method-assign]
    result = run(lambda: KillSwitch(MemoryBlocks(), venues).kill(Scope(venue="kraken"), "x", "y"))
    kraken = result["venues"][0]
    assert kraken["clear"] and kraken["cancelled"] == 25
    assert "fibre: cancel-all: KeyError: 'bug'" in kraken["errors"]
