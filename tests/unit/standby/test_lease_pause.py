"""The maintenance pause in the lease stores, without a network: the witness's sans-IO
state and request handling, and the etcd backend's reading of its ``pause`` key."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from daemon.standby.etcd import EtcdLeaseStore
from daemon.standby.lease import MAX_PAUSE, LeaseState, check_pause_seconds
from daemon.standby.witness_protocol import (
    WitnessProtocolError,
    WitnessState,
    answer,
    lease_state_from_json,
    lease_state_to_json,
)

C = "lifeline"


def test_witness_pause_lasts_its_seconds_on_the_witness_clock_and_resume_ends_it() -> None:
    state = WitnessState()
    reply = answer(state, C, "edge-a", {"op": "pause", "id": 1, "node": "edge-a", "seconds": 60, "by": "alice"},
                   now=100.0)
    assert reply == {"id": 1, "ok": True}
    read = state.read(C, 130.0)
    assert read.paused_for == pytest.approx(30.0) and read.paused_by == "alice via edge-a"
    assert state.read(C, 160.0).paused_for == 0.0 and state.read(C, 160.0).paused_by is None
    assert state.read("other", 130.0).paused_for == 0.0  # per cluster
    answer(state, C, "edge-b", {"op": "pause", "id": 2, "node": "edge-b", "seconds": 0, "by": "bob"}, now=131.0)
    assert state.read(C, 131.0).paused_for == 0.0


@pytest.mark.parametrize("body, words", [
    ({"seconds": MAX_PAUSE + 1, "by": "x"}, "24h"),
    ({"seconds": -1, "by": "x"}, "24h"),
    ({"seconds": True, "by": "x"}, "24h"),
    ({"seconds": "60", "by": "x"}, "24h"),
    ({"seconds": 60}, '"by"'),
    ({"seconds": 60, "by": "x" * 201}, '"by"'),
])
def test_witness_refuses_a_bad_pause_and_changes_nothing(body: dict, words: str) -> None:
    state = WitnessState()
    reply = answer(state, C, "edge-a", {"op": "pause", "id": 3, "node": "edge-a", **body}, now=1.0)
    assert reply["error"] == "bad_request" and words in reply["message"], reply
    assert state.read(C, 1.0).paused_for == 0.0


def test_pause_travels_in_the_lease_state_json_and_bad_values_are_refused() -> None:
    state = LeaseState("edge-a", 3, 1.0, "edge-b", "edge-a", paused_for=42.5, paused_by="alice via edge-a")
    assert lease_state_from_json(lease_state_to_json(state)) == state
    # An older witness sends no pause fields: not paused.
    doc = lease_state_to_json(state)
    del doc["paused_for"], doc["paused_by"]
    assert lease_state_from_json(doc).paused_for == 0.0
    for bad in (-1, MAX_PAUSE + 1, float("inf"), "1"):
        with pytest.raises(WitnessProtocolError, match="paused_for"):
            lease_state_from_json(dict(lease_state_to_json(state), paused_for=bad))


def test_check_pause_seconds_names_the_bound() -> None:
    assert check_pause_seconds(3600) == 3600.0
    with pytest.raises(ValueError, match="24h"):
        check_pause_seconds(86401)


BASE = "/lifeline/m/"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _store(pause_value: str | None) -> EtcdLeaseStore:
    kvs = [{"key": _b64(BASE + "last"), "value": _b64(json.dumps({"holder": "a"})), "mod_revision": "5",
            "create_revision": "5"}]
    if pause_value is not None:
        kvs.append({"key": _b64(BASE + "pause"), "value": _b64(pause_value), "mod_revision": "6"})

    def handle(request: httpx.Request) -> httpx.Response:
        header = {"revision": "9"}
        return httpx.Response(200, json={"header": header, "kvs": kvs, "count": str(len(kvs))})

    return EtcdLeaseStore(["http://etcd.invalid:2379"], "m", "a", 1.0, 1.0, transport=httpx.MockTransport(handle))


async def test_etcd_reads_the_pause_key_counted_on_the_wall_clock() -> None:
    store = _store(json.dumps({"until": time.time() + 600, "by": "alice via b"}))
    state = await store.read()
    assert 590 < state.paused_for <= 600 and state.paused_by == "alice via b"
    await store.aclose()


async def test_etcd_expired_pause_is_no_pause_and_a_garbled_one_counts_as_the_longest() -> None:
    expired = await _store(json.dumps({"until": time.time() - 1, "by": "x"})).read()
    assert expired.paused_for == 0.0 and expired.paused_by is None
    garbled = await _store("not json").read()
    assert garbled.paused_for == MAX_PAUSE and "unreadable" in (garbled.paused_by or "")
    absent = await _store(None).read()
    assert absent.paused_for == 0.0
