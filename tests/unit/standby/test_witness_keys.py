"""The witness key is bound to the cluster's name (sans-IO): a key given for one
cluster proves nothing for another, a witness with per-cluster keys refuses a HELLO for
a cluster it has no key for, and the witness key is not the replication key."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.standby.protocol import proof as replication_proof
from daemon.standby.witness_protocol import (
    WITNESS_LABEL,
    Auth,
    Challenge,
    Hello,
    Welcome,
    WitnessConnection,
    WitnessProtocolError,
    cluster_key,
)

K_A, K_B = b"a" * 32, b"b" * 32


def deliver(data: bytes, to: WitnessConnection) -> Any:
    to.receive_data(data)
    return to.next_event()


def attempt(client_key: bytes, cluster: str, witness: WitnessConnection) -> bool:
    client = WitnessConnection("client", client_key)
    deliver(client.send(Hello("edge-a", cluster)), witness)
    deliver(witness.send(Challenge()), client)
    auth = deliver(client.send(Auth()), witness)
    if auth.verified:
        assert isinstance(deliver(witness.send(Welcome()), client), Welcome)
    return bool(auth.verified)


def test_each_cluster_its_key() -> None:
    keys = {"pair-a": K_A, "pair-b": K_B}
    assert attempt(K_A, "pair-a", WitnessConnection("witness", None, cluster_keys=keys))
    assert attempt(K_B, "pair-b", WitnessConnection("witness", None, cluster_keys=keys))
    # pair-a's key holder cannot speak for pair-b.
    assert not attempt(K_A, "pair-b", WitnessConnection("witness", None, cluster_keys=keys))


def test_a_cluster_without_a_key_is_refused_at_hello() -> None:
    witness = WitnessConnection("witness", None, cluster_keys={"pair-a": K_A})
    client = WitnessConnection("client", K_A)
    with pytest.raises(WitnessProtocolError, match="no key for cluster 'pair-z'"):
        deliver(client.send(Hello("edge-a", "pair-z")), witness)


def test_the_proof_key_is_bound_to_the_cluster_name() -> None:
    assert cluster_key(K_A, "pair-a") != cluster_key(K_A, "pair-b")
    assert cluster_key(K_A, "pair-a") != K_A
    # One key file for two clusters still gives two proof keys: a proof made for one
    # is not a proof for the other, whatever the transcript.
    transcript = b"t" * 32
    a = replication_proof(cluster_key(K_A, "pair-a"), "client", transcript, label=WITNESS_LABEL)
    b = replication_proof(cluster_key(K_A, "pair-b"), "client", transcript, label=WITNESS_LABEL)
    assert a != b


def test_a_default_key_serves_unlisted_clusters() -> None:
    witness = WitnessConnection("witness", K_B, cluster_keys={"pair-a": K_A})
    assert attempt(K_B, "other", witness)
    assert not attempt(K_B, "pair-a", WitnessConnection("witness", K_B, cluster_keys={"pair-a": K_A}))
