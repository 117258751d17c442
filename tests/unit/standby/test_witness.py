"""The lease witness without real I/O: the lease state (explicit ``now``), the request
dispatcher, the wire codec (two connection objects joined by hand, h11 style), and the
trio shell over memory streams under a MockClock."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.standby import Position
from daemon.standby.lease import Grant, LeaseConflict, LeaseLost, LeaseUnavailable, Member
from daemon.standby.protocol import NEED_DATA, LocalProtocolError, derive_session_key, proof, transcript_digest
from daemon.standby.witness import WitnessLeaseStore
from daemon.standby.witness_protocol import (
    LENGTH,
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    MAX_NAME,
    MAX_TTL,
    MIN_TTL,
    TRAILER_SIZE,
    WITNESS_LABEL,
    Auth,
    BadRequest,
    Challenge,
    ConnectionClosed,
    Hello,
    Message,
    Reject,
    State,
    Welcome,
    WitnessConnection,
    WitnessProtocolError,
    WitnessState,
    answer,
    lease_state_from_json,
    lease_state_to_json,
)
from daemon.witness_server import WitnessServer, WitnessStateError, read_state_file, write_state_file

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
C = "lifeline"
CAP = 30  # virtual seconds; every MockClock test stays far below


# =========================================================================== WitnessState


def test_two_acquirers_with_the_same_expected_epoch_exactly_one_wins() -> None:
    state = WitnessState()
    assert state.acquire(C, "edge-a", 0, 1.5, now=10.0) == Grant(1)
    with pytest.raises(LeaseConflict) as info:
        state.acquire(C, "edge-b", 0, 1.5, now=10.0)
    assert info.value.state is not None
    assert (info.value.state.holder, info.value.state.epoch) == ("edge-a", 1)
    assert "held by edge-a at epoch 1" in str(info.value)


def test_acquire_needs_the_current_epoch_even_when_free() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    state.release(C, "edge-a", 1, now=0.5)
    for stale_or_future in (0, 2):
        with pytest.raises(LeaseConflict, match=f"the epoch is 1, not the expected {stale_or_future}"):
            state.acquire(C, "edge-b", stale_or_future, 1.0, now=0.6)
    assert state.acquire(C, "edge-b", 1, 1.0, now=0.6) == Grant(2)


def test_a_live_holder_cannot_acquire_again() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    with pytest.raises(LeaseConflict):
        state.acquire(C, "edge-a", 1, 1.0, now=0.5)


def test_expiry_exact_boundary_on_the_witness_clock() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.5, now=10.0)  # expires at 11.5 exactly
    just_before = state.read(C, now=11.499999)
    assert just_before.holder == "edge-a" and just_before.ttl_remaining == pytest.approx(1e-6)
    assert not just_before.free
    with pytest.raises(LeaseConflict):
        state.acquire(C, "edge-b", 1, 1.5, now=11.499999)
    at_expiry = state.read(C, now=11.5)
    assert (at_expiry.holder, at_expiry.ttl_remaining, at_expiry.free) == (None, 0.0, True)
    assert (at_expiry.epoch, at_expiry.last_holder) == (1, "edge-a")
    assert state.acquire(C, "edge-b", 1, 1.5, now=11.5) == Grant(2)


def test_renew_extends_by_a_full_ttl_from_when_the_witness_handles_it() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.5, now=10.0)
    assert state.renew(C, "edge-a", 1, 1.5, now=11.0) == Grant(1)
    assert state.read(C, now=12.0).ttl_remaining == pytest.approx(0.5)
    assert state.read(C, now=12.5).free


def test_renew_after_expiry_fails_and_never_revives_the_lease() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.5, now=10.0)
    with pytest.raises(LeaseLost, match="expired 0.000s ago"):
        state.renew(C, "edge-a", 1, 1.5, now=11.5)
    with pytest.raises(LeaseLost, match="expired 1.000s ago"):
        state.renew(C, "edge-a", 1, 1.5, now=12.5)
    assert state.read(C, now=12.5).free
    assert state.acquire(C, "edge-b", 1, 1.5, now=12.5) == Grant(2)


@pytest.mark.parametrize("node, epoch, why", [
    ("edge-b", 1, "edge-a holds the lease at epoch 1"),
    ("edge-a", 2, "it holds epoch 1, not 2"),
    ("edge-a", 0, "it holds epoch 1, not 0"),
])
def test_renew_by_a_non_holder_or_at_another_epoch_is_lost(node: str, epoch: int, why: str) -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    with pytest.raises(LeaseLost, match=why):
        state.renew(C, node, epoch, 1.0, now=0.5)
    assert state.read(C, now=0.5).ttl_remaining == pytest.approx(0.5)  # untouched


def test_renew_on_a_cluster_never_granted_is_lost() -> None:
    with pytest.raises(LeaseLost, match="nobody holds the lease"):
        WitnessState().renew(C, "edge-a", 1, 1.0, now=0.0)


def test_release_frees_at_once_and_keeps_the_epoch_and_the_sync_mark() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 5.0, now=0.0)
    state.set_sync_mark(C, "edge-a", 1, "edge-b", now=0.1)
    assert state.release(C, "edge-b", 1, now=0.2) is False  # not the holder: no-op
    assert state.release(C, "edge-a", 2, now=0.2) is False  # wrong epoch: no-op
    assert state.read(C, now=0.2).holder == "edge-a"
    assert state.release(C, "edge-a", 1, now=0.2) is True
    after = state.read(C, now=0.2)
    assert (after.holder, after.epoch, after.sync_node, after.last_holder) == (None, 1, "edge-b", "edge-a")
    assert state.acquire(C, "edge-b", 1, 5.0, now=0.3) == Grant(2)
    # A new grant clears the mark: it spoke of the previous primary's standby.
    assert state.read(C, now=0.3).sync_node == "edge-b"


def test_sync_mark_only_by_the_live_holder_at_its_epoch() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    with pytest.raises(LeaseLost):
        state.set_sync_mark(C, "edge-b", 1, "edge-b", now=0.1)
    with pytest.raises(LeaseLost):
        state.set_sync_mark(C, "edge-a", 2, "edge-b", now=0.1)
    state.set_sync_mark(C, "edge-a", 1, "edge-b", now=0.1, generation=1)
    assert state.read(C, now=0.1).sync_node == "edge-b"
    state.set_sync_mark(C, "edge-a", 1, None, now=0.2, generation=2)
    assert state.read(C, now=0.2).sync_node is None
    with pytest.raises(LeaseLost, match="expired"):
        state.set_sync_mark(C, "edge-a", 1, "edge-b", now=1.0)


def test_reports_are_members_of_the_read_and_speak_for_their_epoch() -> None:
    state = WitnessState()
    state.report(C, "edge-b", Position(0, 7), seen_epoch=0)
    state.report(C, "edge-a", Position(0, 9), seen_epoch=0)
    state.report(C, "edge-a", Position(0, 10), seen_epoch=0)  # the latest report replaces the last
    read = state.read(C, now=0.0)
    assert read.members == (Member("edge-a", Position(0, 10), 0), Member("edge-b", Position(0, 7), 0))
    assert read.peer_position("edge-b") == Position(0, 10)
    state.acquire(C, "edge-a", 0, 1.0, now=1.0)
    assert state.read(C, now=1.0).peer_position("edge-b") is None  # reported at epoch 0, now 1
    assert state.durable()["clusters"][C].keys() == {"epoch", "holder", "last_holder", "ttl", "sync_node",
                                                     "sync_stamp"}


@pytest.mark.parametrize("ttl", [MIN_TTL, 1.5, MAX_TTL])
def test_ttl_within_bounds_is_granted(ttl: float) -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, ttl, now=0.0)
    assert state.read(C, now=0.0).ttl_remaining == ttl


@pytest.mark.parametrize("ttl", [0.0, 0.099, 600.001, -1.0, math.nan, math.inf, True])
def test_ttl_out_of_bounds_is_a_bad_request(ttl: Any) -> None:
    state = WitnessState()
    with pytest.raises(BadRequest, match="ttl must be within"):
        state.acquire(C, "edge-a", 0, ttl, now=0.0)
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    with pytest.raises(BadRequest):
        state.renew(C, "edge-a", 1, ttl, now=0.0)


def test_clusters_are_independent() -> None:
    state = WitnessState()
    assert state.acquire("one", "edge-a", 0, 1.0, now=0.0) == Grant(1)
    assert state.acquire("two", "edge-a", 0, 1.0, now=0.0) == Grant(1)
    assert state.epochs() == {"one": 1, "two": 1}
    assert state.read("three", now=0.0).epoch == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acquire", "renew", "release", "sync"]), st.sampled_from("ab"),
                          st.integers(0, 4), st.floats(0.0, 0.6), st.sampled_from([0.1, 0.3, 0.5]),
                          st.booleans()),
                max_size=40))
def test_leases_of_different_epochs_never_overlap(ops: list[tuple[str, str, int, float, float, bool]]) -> None:
    """Whatever the clients do, and across restarts: a grant at epoch e+1 comes no sooner
    than the last instant epoch e was valid for (its latest expiry, or its release), and
    epochs only grow."""
    state, now = WitnessState(), 0.0
    valid_until: dict[int, float] = {}  # epoch -> the latest instant it was granted or renewed to
    highest = 0
    for op, node, epoch, step, ttl, restart in ops:
        now += step
        if restart:
            state = WitnessState.from_durable(json.loads(json.dumps(state.durable())), now)
        try:
            if op == "acquire":
                grant = state.acquire(C, node, epoch, ttl, now)
                assert grant.epoch == highest + 1
                assert all(until <= now for until in valid_until.values())
                highest = grant.epoch
                valid_until[grant.epoch] = now + ttl
            elif op == "renew":
                state.renew(C, node, epoch, ttl, now)
                assert epoch == highest
                valid_until[epoch] = max(valid_until[epoch], now + ttl)
            elif op == "release":
                if state.release(C, node, epoch, now):
                    valid_until[epoch] = min(valid_until[epoch], now)
            else:
                state.set_sync_mark(C, node, epoch, "b" if node == "a" else "a", now)
        except (LeaseConflict, LeaseLost):
            pass
        assert state.read(C, now).epoch == highest


# --------------------------------------------------------------------------- restart


def restarted(state: WitnessState, at: float) -> WitnessState:
    """``state`` persisted as JSON and loaded again by a new process at ``at``."""
    return WitnessState.from_durable(json.loads(json.dumps(state.durable())), now=at)


def test_after_a_restart_the_holder_keeps_a_full_ttl_and_the_epoch() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 2.0, now=0.0)
    state.set_sync_mark(C, "edge-a", 1, "edge-b", now=0.5)
    # The new process's monotonic clock has nothing to do with the old one's.
    fresh = restarted(state, at=1000.0)
    read = fresh.read(C, now=1000.0)
    assert (read.holder, read.epoch, read.ttl_remaining, read.sync_node, read.last_holder) == \
        ("edge-a", 1, 2.0, "edge-b", "edge-a")
    with pytest.raises(LeaseConflict):
        fresh.acquire(C, "edge-b", 1, 2.0, now=1001.999)
    assert fresh.acquire(C, "edge-b", 1, 2.0, now=1002.0) == Grant(2)


def test_after_a_restart_the_holder_may_renew_at_its_epoch() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 2.0, now=0.0)
    fresh = restarted(state, at=50.0)
    assert fresh.renew(C, "edge-a", 1, 2.0, now=51.0) == Grant(1)
    with pytest.raises(LeaseConflict):
        fresh.acquire(C, "edge-b", 1, 2.0, now=52.5)


def test_a_lease_that_had_expired_still_counts_a_full_ttl_after_a_restart() -> None:
    # The witness cannot tell "expired before the crash" from "renewed just before it".
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    fresh = restarted(state, at=100.0)  # long after the expiry at 1.0
    assert fresh.read(C, now=100.5).holder == "edge-a"
    assert fresh.read(C, now=101.0).free


def test_a_released_lease_is_free_at_once_after_a_restart() -> None:
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 5.0, now=0.0)
    state.release(C, "edge-a", 1, now=1.0)
    fresh = restarted(state, at=7.0)
    assert fresh.read(C, now=7.0).free
    assert fresh.acquire(C, "edge-b", 1, 5.0, now=7.0) == Grant(2)


def test_durable_state_changes_exactly_when_a_restart_would_need_it() -> None:
    state = WitnessState()
    durable = state.durable()
    state.read(C, now=0.0)
    state.report(C, "edge-b", Position(0, 1), 0)
    assert state.durable() == durable  # reads and reports: nothing to save
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    assert state.durable() != durable
    durable = state.durable()
    state.renew(C, "edge-a", 1, 1.0, now=0.5)
    assert state.durable() == durable  # a renewal at the same ttl: nothing to save
    state.renew(C, "edge-a", 1, 3.0, now=0.6)
    # A longer ttl must be saved, or a restart would grant the holder less than it believes it has.
    assert state.durable()["clusters"][C]["ttl"] == 3.0


def test_snapshot_and_restore_undo_a_change() -> None:
    state = WitnessState()
    snapshot = state.snapshot()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    state.restore(snapshot)
    assert state.read(C, now=0.0).epoch == 0


@pytest.mark.parametrize("data, problem", [
    ([], "expected a JSON object"),
    ({"clusters": {}}, "unknown state version None"),
    ({"version": 2, "clusters": {}}, "unknown state version 2"),
    ({"version": 1}, '"clusters" must be an object'),
    ({"version": 1, "clusters": {"c": 3}}, "expected an object"),
    ({"version": 1, "clusters": {"c": {}}}, "epoch must be an integer"),
    ({"version": 1, "clusters": {"c": {"epoch": -1}}}, "epoch must be an integer"),
    ({"version": 1, "clusters": {"c": {"epoch": 1.5}}}, "epoch must be an integer"),
    ({"version": 1, "clusters": {"c": {"epoch": True}}}, "epoch must be an integer"),
    ({"version": 1, "clusters": {"c": {"epoch": 1, "holder": "a"}}}, "a holder needs the ttl"),
    ({"version": 1, "clusters": {"c": {"epoch": 1, "holder": "a", "ttl": 9999}}}, "ttl must be 0 or within"),
    ({"version": 1, "clusters": {"c": {"epoch": 1, "holder": 5, "ttl": 1}}}, "holder must be a printable"),
    ({"version": 1, "clusters": {"c": {"epoch": 1, "owner": "a"}}}, "unknown keys"),
    ({"version": 1, "clusters": {"": {"epoch": 1}}}, "cluster name must be"),
])
def test_a_state_that_makes_no_sense_is_refused(data: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        WitnessState.from_durable(data, now=0.0)


def test_a_minimal_state_file_with_only_the_epoch_loads() -> None:
    state = WitnessState.from_durable({"version": 1, "clusters": {C: {"epoch": 42}}}, now=0.0)
    assert state.read(C, now=0.0).epoch == 42
    assert state.acquire(C, "edge-a", 42, 1.0, now=0.0) == Grant(43)


def test_state_file_round_trip_and_corrupt_files(tmp_path: Path) -> None:
    path = tmp_path / "witness.state"
    assert read_state_file(path, now=0.0) is None
    state = WitnessState()
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    write_state_file(path, state.durable())
    write_state_file(path, state.durable())  # over an existing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["witness.state"]  # no temporary left
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = read_state_file(path, now=5.0)
    assert loaded is not None and loaded.read(C, now=5.0).holder == "edge-a"
    for garbage in (b"", b"{not json", b"\xff\xfe", json.dumps({"version": 1, "clusters": {C: {}}}).encode()):
        path.write_bytes(garbage)
        with pytest.raises(WitnessStateError) as info:
            read_state_file(path, now=0.0)
        message = str(info.value)
        assert str(path) in message and "corrupt" in message and "Restore the file from a backup" in message


# =========================================================================== answer()


def request(state: WitnessState, body: dict[str, Any], now: float = 0.0, node: str = "edge-a") -> dict[str, Any]:
    return answer(state, C, node, body, now)


def test_answer_grants_renews_reads_and_refuses() -> None:
    state = WitnessState()
    assert request(state, {"op": "acquire", "id": 1, "node": "edge-a", "expected_epoch": 0, "ttl": 1.0}) == \
        {"id": 1, "ok": True, "epoch": 1}
    assert request(state, {"op": "renew", "id": 2, "node": "edge-a", "epoch": 1, "ttl": 1.0}, now=0.5) == \
        {"id": 2, "ok": True, "epoch": 1}
    conflict = request(state, {"op": "acquire", "id": 3, "node": "edge-b", "expected_epoch": 0, "ttl": 1.0},
                       node="edge-b")
    assert conflict["error"] == "conflict" and conflict["id"] == 3
    assert lease_state_from_json(conflict["state"]).holder == "edge-a"
    lost = request(state, {"op": "renew", "id": 4, "node": "edge-b", "epoch": 1, "ttl": 1.0}, node="edge-b")
    assert lost["error"] == "lost" and "edge-a holds the lease" in lost["message"]
    assert request(state, {"op": "report", "id": 5, "node": "edge-b", "position": [1, 3], "seen_epoch": 1},
                   node="edge-b") == {"id": 5, "ok": True}
    assert request(state, {"op": "set_sync_mark", "id": 6, "node": "edge-a", "epoch": 1, "sync_node": "edge-b"},
                   now=0.6) == {"id": 6, "ok": True, "applied": True}
    read = request(state, {"op": "read", "id": 7, "node": "edge-b"}, now=1.0, node="edge-b")
    assert lease_state_from_json(read["state"]) == state.read(C, now=1.0)
    assert request(state, {"op": "release", "id": 8, "node": "edge-a", "epoch": 1}, now=1.0) == \
        {"id": 8, "ok": True, "released": True}


@pytest.mark.parametrize("body, message", [
    ({"op": "read", "node": "edge-a"}, "integer id"),
    ({"op": "read", "id": "1", "node": "edge-a"}, "integer id"),
    ({"op": "read", "id": True, "node": "edge-a"}, "integer id"),
    ({"op": "steal", "id": 1, "node": "edge-a"}, "unknown op 'steal'"),
    ({"op": "read", "id": 1}, "speaks for 'edge-a'"),
    ({"op": "read", "id": 1, "node": "edge-b"}, "speaks for 'edge-a'"),
    ({"op": "acquire", "id": 1, "node": "edge-a", "ttl": 1.0}, "expected_epoch must be"),
    ({"op": "acquire", "id": 1, "node": "edge-a", "expected_epoch": False, "ttl": 1.0}, "expected_epoch must be"),
    ({"op": "acquire", "id": 1, "node": "edge-a", "expected_epoch": 0}, "ttl must be"),
    ({"op": "acquire", "id": 1, "node": "edge-a", "expected_epoch": 0, "ttl": "1"}, "ttl must be"),
    ({"op": "renew", "id": 1, "node": "edge-a", "epoch": 2**64, "ttl": 1.0}, "epoch must be"),
    ({"op": "report", "id": 1, "node": "edge-a", "position": [1], "seen_epoch": 0}, r"position must be \[epoch, seq\]"),
    ({"op": "report", "id": 1, "node": "edge-a", "position": [1, -2], "seen_epoch": 0}, "position must be"),
    ({"op": "set_sync_mark", "id": 1, "node": "edge-a", "epoch": 1, "sync_node": ""}, "sync_node must be"),
])
def test_answer_bad_requests_keep_their_id_and_change_nothing(body: dict[str, Any], message: str) -> None:
    state = WitnessState()
    durable = state.durable()
    reply = request(state, body)
    assert reply["error"] == "bad_request"
    assert reply["id"] == (1 if type(body.get("id")) is int else None)
    assert re.search(message, reply["message"]), reply
    assert state.durable() == durable


@pytest.mark.parametrize("data", [
    None, [], {"epoch": -1, "ttl_remaining": 0}, {"epoch": 1, "ttl_remaining": -0.5},
    {"epoch": 1, "ttl_remaining": "x"}, {"epoch": 1, "ttl_remaining": 0, "holder": 3},
    {"epoch": 1, "ttl_remaining": 0, "members": {}}, {"epoch": 1, "ttl_remaining": 0, "members": [3]},
    {"epoch": 1, "ttl_remaining": 0, "members": [{"node": "a", "position": [1, 1]}]},
])
def test_a_malformed_lease_state_from_the_wire_is_a_protocol_error(data: Any) -> None:
    with pytest.raises(WitnessProtocolError):
        lease_state_from_json(data)


def test_lease_state_json_round_trip() -> None:
    state = WitnessState()
    state.report(C, "edge-b", Position(2, 30), 2)
    state.acquire(C, "edge-a", 0, 1.0, now=0.0)
    read = state.read(C, now=0.25)
    assert lease_state_from_json(json.loads(json.dumps(lease_state_to_json(read)))) == read


# =========================================================================== the codec


def pair(client_key: bytes = KEY, witness_key: bytes = KEY) -> tuple[WitnessConnection, WitnessConnection]:
    return WitnessConnection("client", client_key), WitnessConnection("witness", witness_key)


def deliver(data: bytes, to: WitnessConnection) -> Any:
    to.receive_data(data)
    return to.next_event()


def handshake(client: WitnessConnection, witness: WitnessConnection) -> None:
    hello = deliver(client.send(Hello("edge-a", C)), witness)
    assert isinstance(hello, Hello) and (hello.node, hello.cluster) == ("edge-a", C)
    assert isinstance(deliver(witness.send(Challenge()), client), Challenge)
    auth = deliver(client.send(Auth()), witness)
    assert isinstance(auth, Auth) and auth.verified
    assert isinstance(deliver(witness.send(Welcome()), client), Welcome)
    assert client.authenticated and witness.authenticated


def test_handshake_then_requests_and_replies_both_ways() -> None:
    client, witness = pair()
    handshake(client, witness)
    for i in range(3):
        assert deliver(client.send(Message({"op": "read", "id": i})), witness) == Message({"op": "read", "id": i})
        assert deliver(witness.send(Message({"id": i, "ok": True})), client) == Message({"id": i, "ok": True})
    assert witness.next_event() is NEED_DATA


def test_one_byte_at_a_time() -> None:
    client, witness = pair()
    stream = client.send(Hello("edge-a", C))
    events = []
    for i in range(len(stream)):
        witness.receive_data(stream[i:i + 1])
        event = witness.next_event()
        if event is not NEED_DATA:
            events.append(event)
    assert len(events) == 1 and isinstance(events[0], Hello)
    client.receive_data(witness.send(Challenge()))
    client.next_event()
    data = client.send(Auth())
    for i in range(len(data)):
        witness.receive_data(data[i:i + 1])
    auth = witness.next_event()
    assert isinstance(auth, Auth) and auth.verified


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 60), max_size=30))
def test_any_split_of_the_stream_gives_the_same_events(cuts: list[int]) -> None:
    client, witness = pair()
    handshake(client, witness)
    frames = [client.send(Message({"op": "report", "id": i, "pad": "x" * i})) for i in range(8)]
    stream = b"".join(frames)
    events: list[Any] = []
    position = 0
    for size in cuts + [len(stream)]:
        chunk = stream[position:position + size]
        if not chunk:
            break  # b"" would mean end of stream
        witness.receive_data(chunk)
        position += size
        while (event := witness.next_event()) is not NEED_DATA:
            events.append(event)
    assert [e.body["id"] for e in events] == list(range(8))


@pytest.mark.parametrize("data, problem", [
    (b"GET / HTTP/1.1\r\n", "frame of 1195725856 bytes announced"),
    (LENGTH.pack(MAX_FRAME + 1), f"frame of {MAX_FRAME + 1} bytes announced"),
    (b"\xff\xff\xff\xff", "frame of 4294967295 bytes"),
    (LENGTH.pack(0), "frame of 0 bytes"),
])
def test_an_absurd_length_is_refused_before_any_body_is_buffered(data: bytes, problem: str) -> None:
    _, witness = pair()
    with pytest.raises(WitnessProtocolError, match=problem):
        witness.receive_data(data)
    assert witness.state is State.BROKEN


def test_the_largest_frame_is_buffered() -> None:
    client, witness = pair()
    handshake(client, witness)
    witness.receive_data(LENGTH.pack(MAX_FRAME) + b" " * 1000)
    assert witness.next_event() is NEED_DATA


@pytest.mark.parametrize("side", ["witness", "client"])
def test_before_authentication_a_frame_is_hello_sized(side: str) -> None:
    # Issue 16: a stranger's 64 KiB "hello" was buffered whole; now its length alone
    # is refused, and nothing of its body kept.
    conn = WitnessConnection(side, KEY)  # type: ignore[arg-type]
    conn.receive_data(LENGTH.pack(MAX_HANDSHAKE_FRAME))
    assert conn.state is not State.BROKEN
    conn = WitnessConnection(side, KEY)  # type: ignore[arg-type]
    with pytest.raises(WitnessProtocolError, match=f"announced before authentication, at most {MAX_HANDSHAKE_FRAME}"):
        conn.receive_data(LENGTH.pack(MAX_HANDSHAKE_FRAME + 1) + b"{")
    assert len(conn._buffer) == LENGTH.size + 1


def test_the_largest_hello_fits_the_handshake_bound() -> None:
    client, witness = pair()
    name = "\U0001F600" * MAX_NAME  # the longest escape JSON writes, 12 bytes a character
    data = client.send(Hello(name, name))
    assert len(data) - LENGTH.size <= MAX_HANDSHAKE_FRAME
    assert isinstance(deliver(data, witness), Hello)


def framed(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


@pytest.mark.parametrize("body, problem", [
    (b"\x00\x01garbage", "not JSON"),
    (b"\xff\xfe\xfd", "not JSON"),
    (b"[1, 2]", "a JSON list, expected an object"),
    (b"[" * 8000, "not JSON"),  # deep nesting: a RecursionError inside, a protocol error outside
    (b'{"type": "hello", "version": 2, "node": "a", "cluster": "c", "nonce": NaN}', "not JSON"),
    (b'{"op": "read", "id": 1}', "expected a handshake frame in state await-hello, found type None"),
    (b'{"type": "auth", "proof": "00"}', "can't handle AUTH from the client in state await-hello"),
    (b'{"type": "hello", "version": 1, "node": "a", "cluster": "c", "nonce": "' + b"00" * 32 + b'"}',
     "protocol version 1"),
    (b'{"type": "hello", "version": 2, "node": "", "cluster": "c", "nonce": "' + b"00" * 32 + b'"}',
     "HELLO node must be"),
    (b'{"type": "hello", "version": 2, "node": "a", "cluster": "c", "nonce": "abc"}', "nonce must be 32 bytes"),
    (b'{"type": "hello", "version": 2, "node": "a", "cluster": "c", "nonce": "' + b"zz" * 32 + b'"}',
     "nonce must be 32 bytes"),
])
def test_garbage_and_out_of_turn_frames_before_auth(body: bytes, problem: str) -> None:
    _, witness = pair()
    with pytest.raises(WitnessProtocolError, match=problem):
        deliver(framed(body), witness)


def test_a_request_before_auth_is_refused_on_both_sides() -> None:
    client, witness = pair()
    with pytest.raises(LocalProtocolError, match="can't handle MESSAGE from the client in state await-hello"):
        client.send(Message({"op": "read", "id": 1}))
    # A peer that MACs a request with a made-up session before authenticating:
    client, witness = pair()
    deliver(client.send(Hello("edge-a", C)), witness)
    deliver(witness.send(Challenge()), client)
    forged = framed(json.dumps({"op": "read", "id": 1}).encode() + b"\x00" * 8 + b"\x11" * 16)
    with pytest.raises(WitnessProtocolError, match="not JSON"):
        deliver(forged, witness)


def test_a_truncated_frame_at_end_of_stream_is_an_error_a_clean_end_is_not() -> None:
    client, witness = pair()
    data = client.send(Hello("edge-a", C))
    witness.receive_data(data[:-3])
    assert witness.next_event() is NEED_DATA
    witness.receive_data(b"")
    with pytest.raises(WitnessProtocolError, match="closed in the middle of a frame"):
        witness.next_event()
    client, witness = pair()
    witness.receive_data(b"\x00\x00")
    witness.receive_data(b"")
    with pytest.raises(WitnessProtocolError, match="middle of a frame"):
        witness.next_event()
    _, witness = pair()
    witness.receive_data(b"")
    assert isinstance(witness.next_event(), ConnectionClosed)


def test_data_after_end_of_stream_is_an_error() -> None:
    _, witness = pair()
    witness.receive_data(b"")
    with pytest.raises(WitnessProtocolError, match="after end of stream"):
        witness.receive_data(b"x")


def open_pair() -> tuple[WitnessConnection, WitnessConnection]:
    client, witness = pair()
    handshake(client, witness)
    return client, witness


@pytest.mark.parametrize("where", [4, -TRAILER_SIZE - 1, -TRAILER_SIZE + 3, -1])
def test_a_flipped_bit_anywhere_fails_the_mac(where: int) -> None:
    client, witness = open_pair()
    data = bytearray(client.send(Message({"op": "read", "id": 1})))
    data[where] ^= 0x01
    with pytest.raises(WitnessProtocolError, match="fails its MAC"):
        deliver(bytes(data), witness)


def test_a_replayed_frame_is_refused() -> None:
    client, witness = open_pair()
    data = client.send(Message({"op": "acquire", "id": 1}))
    deliver(data, witness)
    with pytest.raises(WitnessProtocolError, match="replayed frame: counter 0, expected 1"):
        deliver(data, witness)


def test_reordered_frames_are_refused() -> None:
    client, witness = open_pair()
    first = client.send(Message({"op": "read", "id": 1}))
    second = client.send(Message({"op": "read", "id": 2}))
    with pytest.raises(WitnessProtocolError, match="out-of-order frame: counter 1, expected 0"):
        deliver(second + first, witness)


def test_a_reflected_frame_is_refused() -> None:
    # The witness's own reply sent back to it: same session key, other direction.
    client, witness = open_pair()
    reply = witness.send(Message({"id": 1, "ok": True}))
    with pytest.raises(WitnessProtocolError, match="fails its MAC"):
        deliver(reply, witness)


def test_a_frame_from_another_session_is_refused() -> None:
    _, witness1 = open_pair()
    client2, _ = open_pair()
    reply = witness1.send(Message({"id": 0, "ok": True}))  # counter 0, as client2 expects; another key
    with pytest.raises(WitnessProtocolError, match="fails its MAC"):
        deliver(reply, client2)


def test_a_frame_too_short_for_its_trailer() -> None:
    _, witness = open_pair()
    with pytest.raises(WitnessProtocolError, match="too short for its MAC"):
        deliver(framed(b"x" * TRAILER_SIZE), witness)


def test_wrong_key_is_rejected_and_nothing_else_is_sent() -> None:
    client, witness = pair(client_key=OTHER_KEY)
    deliver(client.send(Hello("edge-a", C)), witness)
    deliver(witness.send(Challenge()), client)
    auth = deliver(client.send(Auth()), witness)
    assert isinstance(auth, Auth) and not auth.verified
    with pytest.raises(LocalProtocolError, match="WELCOME to a client whose AUTH did not verify"):
        witness.send(Welcome())
    client, witness = pair(client_key=OTHER_KEY)
    deliver(client.send(Hello("edge-a", C)), witness)
    deliver(witness.send(Challenge()), client)
    deliver(client.send(Auth()), witness)
    assert deliver(witness.send(Reject("wrong key")), client) == Reject("wrong key")
    assert client.state is State.CLOSED and not client.authenticated
    with pytest.raises(LocalProtocolError):
        client.send(Message({"op": "read", "id": 1}))


def test_a_witness_without_our_key_cannot_welcome_us() -> None:
    client, witness = pair()
    deliver(client.send(Hello("edge-a", C)), witness)
    deliver(witness.send(Challenge()), client)
    client.send(Auth())
    fake = framed(json.dumps({"type": "welcome", "proof": "ab" * 32}).encode())
    with pytest.raises(WitnessProtocolError, match="witness's proof does not verify"):
        deliver(fake, client)


def test_a_replication_proof_never_verifies_at_the_witness() -> None:
    """Same key, same transcript: the label keeps the two protocols apart."""
    client, witness = pair()
    hello_frame = client.send(Hello("edge-a", C))
    deliver(hello_frame, witness)
    challenge = deliver(witness.send(Challenge()), client)
    hello_body = hello_frame[LENGTH.size:]
    for transcript in (transcript_digest(hello_body, challenge.nonce),
                       transcript_digest(hello_body, challenge.nonce, label=WITNESS_LABEL)):
        for role in ("standby", "primary"):
            replication_proof = proof(KEY, role, transcript)  # type: ignore[arg-type]
            forged = framed(json.dumps({"type": "auth", "proof": replication_proof.hex()}).encode())
            _, fresh = pair()
            fresh.receive_data(hello_frame)
            fresh.next_event()
            fresh.send(Challenge(challenge.nonce))
            assert deliver(forged, fresh) == Auth(replication_proof, False)
    assert derive_session_key(KEY, b"c" * 32, b"w" * 32) != \
        derive_session_key(KEY, b"c" * 32, b"w" * 32, label=WITNESS_LABEL)


def test_errors_are_sticky() -> None:
    client, witness = open_pair()
    with pytest.raises(WitnessProtocolError):
        deliver(framed(b"nonsense" * 4), witness)
    assert witness.error is not None and witness.failed_in is State.OPEN
    for call in (lambda: witness.next_event(), lambda: witness.receive_data(b"x"),
                 lambda: witness.send(Message({"id": 1, "ok": True}))):
        with pytest.raises(WitnessProtocolError, match="the connection is broken"):
            call()


def test_local_misuse_is_a_local_error() -> None:
    client, witness = pair()
    with pytest.raises(LocalProtocolError, match="node must be"):
        client.send(Hello("", C))
    client, witness = open_pair()
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        client.send(Message({"op": "read", "id": 1, "ttl": math.nan}))
    client, witness = open_pair()
    with pytest.raises(LocalProtocolError, match="at most"):
        client.send(Message({"pad": "x" * MAX_FRAME}))
    with pytest.raises(ValueError):
        WitnessConnection("primary", KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        WitnessConnection("client", b"short")


def test_after_reject_the_rest_is_ignored_until_the_end() -> None:
    client, witness = pair(client_key=OTHER_KEY)
    deliver(client.send(Hello("edge-a", C)), witness)
    deliver(witness.send(Challenge()), client)
    deliver(client.send(Auth()), witness)
    client.receive_data(witness.send(Reject("no")) + b"trailing junk")
    assert client.next_event() == Reject("no")
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    assert isinstance(client.next_event(), ConnectionClosed)


# =========================================================================== the shell (MockClock)


class Harness:
    """A :class:`WitnessServer` and clients joined by memory streams: every connect
    makes a new stream pair and starts the server's handler on the other end."""

    def __init__(self, nursery: trio.Nursery, *, key: bytes = KEY,
                 save: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self.nursery = nursery
        self.saved: list[Any] = []
        self.server = WitnessServer(WitnessState(), key, save or self._save)
        self.connects = 0

    async def _save(self, data: Any) -> None:
        self.saved.append(json.loads(json.dumps(data)))

    async def connect(self) -> trio.abc.Stream:
        self.connects += 1
        client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.handle, server_end, f"memory-{self.connects}")
        return client_end

    def client(self, node: str, *, key: bytes = KEY, ttl: float = 1.5, timeout: float = 0.5) -> WitnessLeaseStore:
        return WitnessLeaseStore("witness.test:7480", key, C, node, ttl, timeout, connect=self.connect)


async def test_client_and_server_over_memory_streams(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            harness = Harness(nursery)
            a, b = harness.client("edge-a"), harness.client("edge-b")
            start = trio.current_time()
            assert await a.acquire("edge-a", 0) == Grant(1)
            assert harness.saved[-1]["clusters"][C]["epoch"] == 1  # saved before the answer
            with pytest.raises(LeaseConflict) as info:
                await b.acquire("edge-b", 0)
            assert info.value.state is not None and info.value.state.holder == "edge-a"
            await b.report("edge-b", Position(1, 4), 1)
            await a.set_sync_mark("edge-a", 1, "edge-b")
            await trio.sleep(1.0)
            assert await a.renew("edge-a", 1) == Grant(1)
            saves = len(harness.saved)
            await trio.sleep(1.0)
            assert len(harness.saved) == saves  # renewals at the same ttl are not saved
            read = await b.read()
            assert (read.holder, read.epoch, read.sync_node) == ("edge-a", 1, "edge-b")
            assert read.ttl_remaining == pytest.approx(0.5)
            assert read.peer_position("edge-a") == Position(1, 4)
            await trio.sleep_until(start + 2.5)  # the renewal at 1.0 lasts until 2.5 exactly
            with pytest.raises(LeaseLost, match="expired"):
                await a.renew("edge-a", 1)
            assert (await b.read()).free
            assert await b.acquire("edge-b", 1) == Grant(2)
            await a.release("edge-a", 1)  # no longer the holder: a no-op
            assert (await a.read()).holder == "edge-b"
            assert harness.connects == 2  # one connection per client, kept
            await a.aclose()
            await b.aclose()
            nursery.cancel_scope.cancel()


async def test_a_call_the_witness_does_not_answer_gives_up_after_the_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        silent: list[trio.abc.Stream] = []

        async def connect() -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            silent.append(server_end)  # accepted, never answered
            return client_end

        store = WitnessLeaseStore("witness.test:7480", KEY, C, "edge-a", 1.5, 0.25, connect=connect)
        start = trio.current_time()
        with pytest.raises(LeaseUnavailable, match="no answer from the witness witness.test:7480 to read within 0.25s"):
            await store.read()
        assert trio.current_time() - start == pytest.approx(0.25)
        with pytest.raises(LeaseUnavailable):
            await store.read()
        assert len(silent) == 2  # the connection was dropped and made again


async def test_a_late_reply_is_never_taken_for_a_later_answer(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            harness = Harness(nursery)
            slow_once = [True]
            apply = harness.server.apply

            async def slow_apply(cluster: str, node: str, body: Any) -> dict[str, Any]:
                reply = await apply(cluster, node, body)
                if slow_once.pop() if slow_once else False:
                    await trio.sleep(1.0)  # the reply comes after the client gave up
                return reply

            harness.server.apply = slow_apply  # type: ignore[method-assign]
            a = harness.client("edge-a", timeout=0.5)
            with pytest.raises(LeaseUnavailable, match="within 0.5s"):
                await a.acquire("edge-a", 0)
            await trio.sleep(2.0)  # the late grant reply has been sent by now, to a closed connection
            # A timed-out call may have taken effect: the witness did grant epoch 1.
            read = await a.read()
            assert (read.epoch, read.last_holder) == (1, "edge-a")
            assert harness.connects == 2
            nursery.cancel_scope.cancel()


async def test_a_failed_save_is_never_answered_and_is_undone(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            failing = [True]

            async def save(data: Any) -> None:
                if failing:
                    raise OSError(28, "No space left on device")

            harness = Harness(nursery, save=save)
            a = harness.client("edge-a")
            with pytest.raises(LeaseUnavailable, match="could not save its state.*No space left"):
                await a.acquire("edge-a", 0)
            assert (await a.read()).epoch == 0
            failing.clear()
            assert await a.acquire("edge-a", 0) == Grant(1)
            nursery.cancel_scope.cancel()


async def test_wrong_key_client_is_refused_and_gets_nothing(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            harness = Harness(nursery)
            intruder = harness.client("edge-b", key=OTHER_KEY)
            with pytest.raises(LeaseUnavailable, match="refused us: authentication failed"):
                await intruder.acquire("edge-b", 0)
            assert harness.server.state.epochs() == {}
            assert (await harness.client("edge-a").read()).epoch == 0
            nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_dropped_after_the_handshake_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        async def no_save(data: Any) -> None:
            raise AssertionError("nothing to save")

        server = WitnessServer(WitnessState(), KEY, no_save, handshake_timeout=5.0)
        client_end, server_end = trio.testing.memory_stream_pair()
        start = trio.current_time()
        await server.handle(server_end, "memory")
        assert trio.current_time() - start == pytest.approx(5.0)
        assert await client_end.receive_some() == b""  # closed


async def test_a_protocol_error_ends_only_that_connection(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            harness = Harness(nursery)
            a = harness.client("edge-a")
            assert await a.acquire("edge-a", 0) == Grant(1)
            rogue = await harness.connect()
            await rogue.send_all(struct.pack("!I", 2**31))
            assert await rogue.receive_some() == b""
            assert await a.renew("edge-a", 1) == Grant(1)
            nursery.cancel_scope.cancel()


def test_client_refuses_a_config_the_witness_would() -> None:
    with pytest.raises(ValueError, match="ttl must be within"):
        WitnessLeaseStore("127.0.0.1:7480", KEY, C, "edge-a", 0.05, 0.5)
    with pytest.raises(ValueError, match="HOST:PORT"):
        WitnessLeaseStore("nowhere", KEY, C, "edge-a", 1.0, 0.5)
    with pytest.raises(ValueError, match="timeout"):
        WitnessLeaseStore("127.0.0.1:7480", KEY, C, "edge-a", 1.0, 0)
    with pytest.raises(ValueError, match="node must be"):
        WitnessLeaseStore("127.0.0.1:7480", KEY, C, "", 1.0, 0.5)


def test_min_epoch_lifts_every_epoch_and_survives_a_restart_without_the_flag() -> None:
    from daemon.standby.witness_protocol import WitnessState

    state = WitnessState.from_durable({"version": 1, "clusters": {"a": {"epoch": 2}, "b": {"epoch": 9}}}, 0.0)
    assert state.raise_epochs(5) == ["a"]
    assert state.read("a", 1.0).epoch == 5 and state.read("b", 1.0).epoch == 9
    assert state.read("new", 1.0).epoch == 5
    assert state.acquire("new", "edge-a", 5, 1.0, 1.0).epoch == 6
    reloaded = WitnessState.from_durable(state.durable(), 10.0)
    assert reloaded.read("a", 10.0).epoch == 5 and reloaded.read("other", 10.0).epoch == 5



def test_sync_mark_writes_are_ordered_by_epoch_and_generation() -> None:
    from daemon.standby.witness_protocol import WitnessState

    state = WitnessState()
    assert state.acquire("c", "edge-a", 0, 5.0, 0.0).epoch == 1
    assert state.set_sync_mark("c", "edge-a", 1, "edge-b", 0.1, generation=1) is True
    assert state.set_sync_mark("c", "edge-a", 1, None, 0.2, generation=2) is True
    # The first write's late duplicate (or a delayed retry) never undoes the clear.
    assert state.set_sync_mark("c", "edge-a", 1, "edge-b", 0.3, generation=1) is False
    assert state.read("c", 0.3).sync_node is None
    assert state.set_sync_mark("c", "edge-a", 1, "edge-b", 0.4, generation=3) is True
    state.release("c", "edge-a", 1, 0.5)
    assert state.acquire("c", "edge-b", 1, 5.0, 0.6).epoch == 2
    # A new epoch's first write beats the old epoch's highest generation; the stamp persists.
    assert state.set_sync_mark("c", "edge-b", 2, None, 0.7, generation=1) is True
    reloaded = WitnessState.from_durable(state.durable(), 10.0)
    assert reloaded.read("c", 10.0).sync_node is None
    reloaded.acquire("c", "edge-a", 2, 5.0, 20.0)
    assert reloaded.set_sync_mark("c", "edge-a", 3, "edge-b", 20.1, generation=1) is True
