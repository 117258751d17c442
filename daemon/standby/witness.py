"""The lease witness: a third small process that holds the pair's leader lease.

A two-host site cannot tell "my peer died" from "the link to my peer died", so a third
party decides who may be primary (Pacemaker's qnetd plays this part for corosync). The
witness is that party, and nothing more: a **lock holder**, not a consensus system. It
grants and renews one lease per cluster by compare-and-set, persists the fencing epoch
before answering, and authenticates its clients with the replication key. If it is
down, nobody can become primary, and the primary fences itself when its lease runs out:
the pair stops rather than risk two primaries.

This module holds, in order:

* :class:`WitnessState`: the leases, sans-IO. Every method takes ``now`` (monotonic
  seconds on the witness's clock) and enforces the duties of
  :class:`~daemon.standby.lease.LeaseStore` (read them there). :func:`answer` applies
  one request body to it and builds the reply.
* :class:`WitnessConnection`: the wire protocol, sans-IO (h11's model).
* the state file: :func:`read_state_file`, :func:`write_state_file`.
* the trio shell: :class:`WitnessServer`, :func:`serve_witness` and the
  ``lifeline witness`` command.
* :class:`WitnessLeaseStore`: the daemon's client backend.

The first two are pure (no trio, no I/O, explicit time) and are tested as such; trio
is used by the shell and the client only.

Wire protocol
-------------
TCP; every frame is a 4-byte big-endian length and a body of at most :data:`MAX_FRAME`
bytes (64 KiB). A length above that is refused as soon as its 4 bytes arrive, before
any of the body is buffered. Bodies are JSON objects. The handshake mirrors
replication's (see :mod:`daemon.standby.protocol`), with its own label
(:data:`WITNESS_LABEL`) mixed into every hash, so nothing signed for replication ever
verifies here::

    client  -> HELLO     {"type": "hello", "version": 1, "node", "cluster", "nonce"}
    witness -> CHALLENGE {"type": "challenge", "nonce"}
    client  -> AUTH      {"type": "auth", "proof": HMAC(key, label | "client-proof" | transcript)}
    witness -> WELCOME   {"type": "welcome", "proof": HMAC(key, label | "witness-proof" | transcript)}
            or REJECT    {"type": "reject", "reason"}

``transcript = SHA-256(label | "transcript" | HELLO body as sent | nonce_w)``. Every frame
after WELCOME is a request or a reply followed by a MAC trailer: a per-direction
counter (u64) and ``HMAC-SHA256(session_key, direction | counter | body)`` truncated to
16 bytes, ``session_key = HMAC(key, label | "session" | nonce_c | nonce_w)``; a bad MAC or
a counter out of sequence (replay, reorder, reflection) is a protocol error. Any
protocol error closes that connection only.

A connection speaks for the node and cluster of its HELLO. Requests and replies::

    {"op": "acquire", "id": 7, "node": "edge-a", "expected_epoch": 3, "ttl": 1.5}
    {"op": "renew", "id": 8, "node": "edge-a", "epoch": 4, "ttl": 1.5}
    {"op": "read" | "release" | "set_sync_mark" | "report", "id": 9, "node": ..., ...}
    {"id": 7, "ok": true, "epoch": 4}                      (read: "state": {...})
    {"id": 7, "error": "conflict" | "lost" | "bad_request" | "unavailable", "message": ..., "state": {...}}

State file
----------
``--state PATH``, JSON, rewritten (temporary file, fsync, rename, fsync of the
directory) before every answer that changed it::

    {"version": 1, "clusters": {"lifeline": {"epoch": 4, "holder": "edge-a",
        "last_holder": "edge-a", "ttl": 1.5, "sync_node": "edge-b"}}}

Only ``epoch`` is required. A missing file starts every cluster at epoch 0; an
unreadable one stops the witness (see :class:`WitnessStateError`).
"""

from __future__ import annotations

import argparse
import enum
import fcntl
import functools
import hashlib
import hmac
import json
import math
import os
import secrets
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Final, Literal, Mapping, TypeGuard, TypeVar, Union

import trio

from daemon.config import parse_host_port
from daemon.log import get_logger
from daemon.standby import Position, StandbyError
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseError,
    LeaseLost,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
    Member,
)
from daemon.standby.protocol import (
    NEED_DATA,
    LocalProtocolError,
    _NeedData,
    derive_session_key,
    proof,
    transcript_digest,
    verify_proof,
)

log = get_logger("witness")

#: Mixed into every hash of the handshake and the session: a replication proof (same
#: key, label "lifeline-replication-v1 ") never verifies at the witness, nor the reverse.
WITNESS_LABEL: Final = b"lifeline-witness-v1 "
PROTOCOL_VERSION: Final = 1
#: The largest frame body (MAC trailer included). Requests and replies are a few hundred bytes.
MAX_FRAME: Final = 64 * 1024
LENGTH = struct.Struct("!I")
TRAILER = struct.Struct("!Q16s")
TRAILER_SIZE: Final = TRAILER.size  # 24
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 32
#: The ttl a client may ask for. Below 0.1 s no network answers in time; above 10 min a
#: dead primary would block failover for longer than anyone would configure.
MIN_TTL: Final = 0.1
MAX_TTL: Final = 600.0
MAX_NAME: Final = 255
MAX_EPOCH: Final = 2**63 - 1
HANDSHAKE_TIMEOUT: Final = 5.0
RECEIVE_CHUNK: Final = 16 * 1024
STATE_VERSION: Final = 1

Side = Literal["client", "witness"]
_DIRECTION: dict[str, bytes] = {"client": b"C", "witness": b"W"}


class WitnessProtocolError(StandbyError):
    """The peer sent something the witness protocol does not allow; the connection is
    closed (only that one)."""


class BadRequest(StandbyError, ValueError):
    """A well-framed, authenticated request that makes no sense (a missing field, a ttl
    out of range, another node's name): answered ``bad_request``, the connection stays."""


class WitnessBadRequest(LeaseError):
    """The witness answered ``bad_request`` to this client: a bug or a version mismatch
    between the daemon and the witness, not a transient fault."""


class WitnessStateError(StandbyError):
    """The state file cannot be used; the message names the file and the fix. The
    witness refuses to start rather than begin again at epoch 0, which could grant an
    epoch a second time."""


# =========================================================================== the leases (sans-IO)


@dataclass(frozen=True)
class _Lease:
    """One cluster's lease. Immutable, so a snapshot of the state is a shallow copy.

    ``holder`` is the node last granted the lease and not released since; it holds it
    only while ``now < expires_at``. ``ttl`` is that of the last grant or renewal."""

    epoch: int = 0
    holder: str | None = None
    expires_at: float = 0.0
    ttl: float = 0.0
    last_holder: str | None = None
    sync_node: str | None = None

    def live_holder(self, now: float) -> str | None:
        return self.holder if self.holder is not None and now < self.expires_at else None

    def durable(self) -> dict[str, Any]:
        """What must survive a restart: everything but the expiry, which is a point on
        this process's monotonic clock (a restart gives the holder a full ttl instead)."""
        return {"epoch": self.epoch, "holder": self.holder, "last_holder": self.last_holder, "ttl": self.ttl,
                "sync_node": self.sync_node}


Snapshot = dict[str, _Lease]


class WitnessState:
    """Every cluster's lease and member reports. Sans-IO: ``now`` is monotonic seconds
    on the witness's clock, given by the caller.

    The shell persists :meth:`durable` whenever a request changed it (acquire, release,
    a sync mark, a renewal with a new ttl) *before* answering, and puts back a
    :meth:`snapshot` if that fails, so no answer ever rests on state a crash would lose.
    Member reports are advisory and live in memory only.
    """

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}
        self._members: dict[str, dict[str, Member]] = {}
        #: The lowest epoch of any cluster (``--min-epoch``): a witness that lost its
        #: state is restarted above every epoch already in the nodes' journals.
        self.min_epoch = 0

    def _lease(self, cluster: str) -> _Lease:
        return self._leases.get(cluster) or _Lease(epoch=self.min_epoch)

    def raise_epochs(self, floor: int) -> list[str]:
        """Lift every cluster's epoch (and every new one's) to at least ``floor``;
        answers the clusters changed. Holders and marks are kept."""
        self.min_epoch = max(self.min_epoch, floor)
        changed = []
        for name, lease in self._leases.items():
            if lease.epoch < floor:
                self._leases[name] = replace(lease, epoch=floor)
                changed.append(name)
        return changed

    # ------------------------------------------------------------------ persistence

    @classmethod
    def from_durable(cls, data: Mapping[str, Any], now: float) -> "WitnessState":
        """The state saved by :meth:`durable`, loaded at ``now`` (start-up).

        The witness cannot know when a holder last renewed before the restart, so each
        holder's lease counts as live for a full ttl (of its last grant) from ``now``:
        nobody takes it sooner than its holder would have fenced itself, and the holder
        may go on renewing it at its epoch. ``ValueError`` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("expected a JSON object")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {data.get('version')!r}, expected {STATE_VERSION}")
        clusters = data.get("clusters")
        if not isinstance(clusters, Mapping):
            raise ValueError('"clusters" must be an object')
        state = cls()
        min_epoch = data.get("min_epoch", 0)
        if not isinstance(min_epoch, int) or isinstance(min_epoch, bool) or min_epoch < 0:
            raise ValueError(f'"min_epoch" must be a non-negative integer, found {min_epoch!r}')
        state.min_epoch = min_epoch
        for cluster, entry in clusters.items():
            where = f"cluster {cluster!r}"
            _check_name(cluster, "cluster name")
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected an object")
            unknown = set(entry) - {"epoch", "holder", "last_holder", "ttl", "sync_node"}
            if unknown:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            epoch = entry.get("epoch")
            if not _is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
                raise ValueError(f"{where}: epoch must be an integer >= 0, found {epoch!r}")
            names: dict[str, str | None] = {}
            for key in ("holder", "last_holder", "sync_node"):
                value = entry.get(key)
                if value is not None:
                    _check_name(value, f"{where}: {key}")
                names[key] = value
            ttl = entry.get("ttl", 0.0)
            if not _is_number(ttl) or not (ttl == 0 or MIN_TTL <= ttl <= MAX_TTL):
                raise ValueError(f"{where}: ttl must be 0 or within [{MIN_TTL:g}, {MAX_TTL:g}] s, found {ttl!r}")
            if names["holder"] is not None and ttl == 0:
                raise ValueError(f"{where}: a holder needs the ttl of its grant")
            state._leases[cluster] = _Lease(
                epoch=epoch, holder=names["holder"], expires_at=now + ttl if names["holder"] else 0.0,
                ttl=float(ttl), last_holder=names["last_holder"], sync_node=names["sync_node"])
        return state

    def durable(self) -> dict[str, Any]:
        """The JSON-ready state to persist (see :meth:`from_durable`)."""
        out: dict[str, Any] = {"version": STATE_VERSION,
                               "clusters": {name: lease.durable() for name, lease in sorted(self._leases.items())}}
        if self.min_epoch:
            out["min_epoch"] = self.min_epoch
        return out

    def snapshot(self) -> Snapshot:
        return dict(self._leases)

    def restore(self, snapshot: Snapshot) -> None:
        """Back to ``snapshot`` (the change could not be persisted: it never happened)."""
        self._leases = dict(snapshot)

    def epochs(self) -> dict[str, int]:
        return {name: lease.epoch for name, lease in sorted(self._leases.items())}

    # ------------------------------------------------------------------ the operations

    def read(self, cluster: str, now: float) -> LeaseState:
        """The lease of ``cluster`` as of ``now`` (a cluster never heard of: epoch 0, free)."""
        lease = self._lease(cluster)
        holder = lease.live_holder(now)
        members = tuple(member for _, member in sorted(self._members.get(cluster, {}).items()))
        return LeaseState(holder=holder, epoch=lease.epoch,
                          ttl_remaining=lease.expires_at - now if holder is not None else 0.0,
                          sync_node=lease.sync_node, last_holder=lease.last_holder, members=members)

    def acquire(self, cluster: str, node: str, expected_epoch: int, ttl: float, now: float) -> Grant:
        """Compare-and-set: grant ``expected_epoch + 1`` to ``node`` for ``ttl`` seconds
        from ``now`` if nobody holds a live lease and the epoch is ``expected_epoch``.
        ``LeaseConflict`` (with the state) otherwise.

        The sync mark is cleared on a grant: it named the standby holding every record
        the *previous* primary acknowledged, which says nothing about the new one's."""
        _check_ttl(ttl)
        lease = self._lease(cluster)
        holder = lease.live_holder(now)
        if holder is not None:
            raise LeaseConflict(f"the lease is held by {holder} at epoch {lease.epoch} for another "
                                f"{lease.expires_at - now:.3f}s", self.read(cluster, now))
        if lease.epoch != expected_epoch:
            raise LeaseConflict(f"the epoch is {lease.epoch}, not the expected {expected_epoch}",
                                self.read(cluster, now))
        if lease.epoch >= MAX_EPOCH:  # pragma: no cover - 2**63 grants
            raise BadRequest("the epoch cannot grow any further")
        epoch = lease.epoch + 1
        self._leases[cluster] = _Lease(epoch=epoch, holder=node, expires_at=now + ttl, ttl=float(ttl),
                                       last_holder=node, sync_node=None)
        return Grant(epoch)

    def renew(self, cluster: str, node: str, epoch: int, ttl: float, now: float) -> Grant:
        """Extend ``node``'s live lease at ``epoch`` to ``now + ttl``. ``LeaseLost`` if it
        does not hold one: a renewal that arrives after the expiry never revives it."""
        _check_ttl(ttl)
        lease = self._require_holder(cluster, node, epoch, now, "renew")
        self._leases[cluster] = replace(lease, expires_at=now + ttl, ttl=float(ttl))
        return Grant(epoch)

    def release(self, cluster: str, node: str, epoch: int, now: float) -> bool:
        """``node`` gives up its lease at ``epoch`` (live or already expired); the epoch
        and the sync mark stay, so the synchronous standby may take over at once. A no-op
        (False) if ``node`` does not hold it at that epoch."""
        lease = self._leases.get(cluster)
        if lease is None or lease.holder != node or lease.epoch != epoch:
            return False
        self._leases[cluster] = replace(lease, holder=None, expires_at=0.0)
        return True

    def set_sync_mark(self, cluster: str, node: str, epoch: int, sync_node: str | None, now: float) -> None:
        """Record the synchronous standby, as the holder of the live lease at ``epoch``.
        ``LeaseLost`` otherwise: only the primary knows which standby holds its records."""
        lease = self._require_holder(cluster, node, epoch, now, "set the sync mark")
        self._leases[cluster] = replace(lease, sync_node=sync_node)

    def report(self, cluster: str, node: str, position: Position, seen_epoch: int) -> None:
        """``node``'s journal position while not primary (advisory, in memory only)."""
        self._members.setdefault(cluster, {})[node] = Member(node, position, seen_epoch)

    def _require_holder(self, cluster: str, node: str, epoch: int, now: float, what: str) -> _Lease:
        lease = self._lease(cluster)
        holder = lease.live_holder(now)
        if holder == node and lease.epoch == epoch:
            return lease
        if holder is None and lease.holder == node and lease.epoch == epoch:
            why = f"its lease at epoch {epoch} expired {now - lease.expires_at:.3f}s ago"
        elif holder is None:
            why = f"nobody holds the lease (epoch {lease.epoch})"
        elif holder != node:
            why = f"{holder} holds the lease at epoch {lease.epoch}"
        else:
            why = f"it holds epoch {lease.epoch}, not {epoch}"
        raise LeaseLost(f"{node} cannot {what} at epoch {epoch}: {why}")


# --------------------------------------------------------------------------- requests and replies


def answer(state: WitnessState, cluster: str, node: str, body: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Apply one request (a decoded body from the connection of ``node`` for ``cluster``)
    to ``state`` and return the reply. Refusals become error replies; nothing a client
    sends raises out of here."""
    request_id = body.get("id")
    if not _is_int(request_id):
        return {"id": None, "error": "bad_request", "message": "the request needs an integer id"}
    try:
        op = body.get("op")
        claimed = body.get("node")
        if claimed != node:
            raise BadRequest(f"this connection speaks for {node!r} (its HELLO), the request for {claimed!r}")
        if op == "acquire":
            grant = state.acquire(cluster, node, _epoch_field(body, "expected_epoch"), _ttl_field(body), now)
            return {"id": request_id, "ok": True, "epoch": grant.epoch}
        if op == "renew":
            grant = state.renew(cluster, node, _epoch_field(body, "epoch"), _ttl_field(body), now)
            return {"id": request_id, "ok": True, "epoch": grant.epoch}
        if op == "read":
            return {"id": request_id, "ok": True, "state": lease_state_to_json(state.read(cluster, now))}
        if op == "release":
            released = state.release(cluster, node, _epoch_field(body, "epoch"), now)
            return {"id": request_id, "ok": True, "released": released}
        if op == "set_sync_mark":
            sync_node = body.get("sync_node")
            if sync_node is not None:
                _check_name(sync_node, "sync_node", BadRequest)
            state.set_sync_mark(cluster, node, _epoch_field(body, "epoch"), sync_node, now)
            return {"id": request_id, "ok": True}
        if op == "report":
            position = _position_field(body, "position", BadRequest)
            state.report(cluster, node, position, _epoch_field(body, "seen_epoch"))
            return {"id": request_id, "ok": True}
        raise BadRequest(f"unknown op {op!r}")
    except LeaseConflict as exc:
        assert exc.state is not None
        return {"id": request_id, "error": "conflict", "message": str(exc), "state": lease_state_to_json(exc.state)}
    except LeaseLost as exc:
        return {"id": request_id, "error": "lost", "message": str(exc)}
    except BadRequest as exc:
        return {"id": request_id, "error": "bad_request", "message": str(exc)}


def lease_state_to_json(state: LeaseState) -> dict[str, Any]:
    return {"holder": state.holder, "epoch": state.epoch, "ttl_remaining": state.ttl_remaining,
            "sync_node": state.sync_node, "last_holder": state.last_holder,
            "members": [{"node": m.node, "position": [m.position.epoch, m.position.seq], "seen_epoch": m.seen_epoch}
                        for m in state.members]}


def lease_state_from_json(data: Any) -> LeaseState:
    """The inverse of :func:`lease_state_to_json`; ``WitnessProtocolError`` if ``data``
    is not a lease state."""
    bad = WitnessProtocolError
    if not isinstance(data, Mapping):
        raise bad("the lease state is not an object")
    epoch = data.get("epoch")
    ttl_remaining = data.get("ttl_remaining")
    if not _is_int(epoch) or epoch < 0:
        raise bad(f"lease state: bad epoch {epoch!r}")
    if not _is_number(ttl_remaining) or not math.isfinite(ttl_remaining) or ttl_remaining < 0:
        raise bad(f"lease state: bad ttl_remaining {ttl_remaining!r}")
    names: dict[str, str | None] = {}
    for key in ("holder", "sync_node", "last_holder"):
        value = data.get(key)
        if value is not None:
            _check_name(value, f"lease state: {key}", bad)
        names[key] = value
    raw_members = data.get("members", [])
    if not isinstance(raw_members, list):
        raise bad("lease state: members is not a list")
    members = []
    for raw in raw_members:
        if not isinstance(raw, Mapping):
            raise bad("lease state: a member is not an object")
        member_node = _check_name(raw.get("node"), "lease state: member node", bad)
        seen = raw.get("seen_epoch")
        if not _is_int(seen) or seen < 0:
            raise bad(f"lease state: bad seen_epoch {seen!r}")
        members.append(Member(member_node, _position_field(raw, "position", bad), seen))
    return LeaseState(holder=names["holder"], epoch=epoch, ttl_remaining=float(ttl_remaining),
                      sync_node=names["sync_node"], last_holder=names["last_holder"], members=tuple(members))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_name(value: object, what: str, error: type[Exception] = ValueError) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise error(f"{what} must be a printable string of 1 to {MAX_NAME} characters, found {value!r}")
    return value


def _check_ttl(ttl: object) -> float:
    if not _is_number(ttl) or not MIN_TTL <= ttl <= MAX_TTL:  # NaN fails both comparisons
        raise BadRequest(f"ttl must be within [{MIN_TTL:g}, {MAX_TTL:g}] s, found {ttl!r}")
    return float(ttl)


def _epoch_field(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if not _is_int(value) or not 0 <= value <= MAX_EPOCH:
        raise BadRequest(f"{name} must be an integer >= 0, found {value!r}")
    return int(value)


def _ttl_field(body: Mapping[str, Any]) -> float:
    return _check_ttl(body.get("ttl"))


def _position_field(body: Mapping[str, Any], name: str, error: type[Exception]) -> Position:
    value = body.get(name)
    if (not isinstance(value, list) or len(value) != 2
            or not all(_is_int(v) and 0 <= v <= MAX_EPOCH for v in value)):
        raise error(f"{name} must be [epoch, seq], found {value!r}")
    return Position(value[0], value[1])


# =========================================================================== the wire (sans-IO)


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_AUTH = "await-auth"
    AWAIT_VERDICT = "await-verdict"
    OPEN = "open"  # authenticated: requests and replies, each with a MAC
    CLOSED = "closed"
    BROKEN = "broken"


@dataclass(frozen=True)
class Hello:
    """Client → witness, first frame. ``nonce`` is filled in by :meth:`WitnessConnection.send`."""

    node: str
    cluster: str
    nonce: bytes = b""


@dataclass(frozen=True)
class Challenge:
    nonce: bytes = b""


@dataclass(frozen=True)
class Auth:
    """Client → witness. ``proof`` is computed by ``send``; on the witness, ``verified``
    says whether it checked out (the shell answers REJECT if not)."""

    proof: bytes = b""
    verified: bool = False


@dataclass(frozen=True)
class Welcome:
    """Witness → client; its proof is computed by ``send`` and checked by the client."""

    proof: bytes = b""


@dataclass(frozen=True)
class Reject:
    reason: str


@dataclass(frozen=True)
class Message:
    """A request (client → witness) or a reply, after authentication."""

    body: dict[str, Any]


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the stream at a frame boundary."""


Event = Union[Hello, Challenge, Auth, Welcome, Reject, Message, ConnectionClosed]
_KIND_OF: dict[type, str] = {Hello: "hello", Challenge: "challenge", Auth: "auth", Welcome: "welcome",
                             Reject: "reject", Message: "message"}

#: (state, sender, kind) -> next state. Anything else is a protocol violation.
TRANSITIONS: Final[dict[tuple[State, Side, str], State]] = {
    (State.AWAIT_HELLO, "client", "hello"): State.AWAIT_CHALLENGE,
    (State.AWAIT_CHALLENGE, "witness", "challenge"): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, "client", "auth"): State.AWAIT_VERDICT,
    (State.AWAIT_VERDICT, "witness", "welcome"): State.OPEN,
    (State.AWAIT_VERDICT, "witness", "reject"): State.CLOSED,
    (State.OPEN, "client", "message"): State.OPEN,
    (State.OPEN, "witness", "message"): State.OPEN,
}


def _proof(key: bytes, side: Side, transcript: bytes) -> bytes:
    # protocol.proof types its role for replication's two roles; any label string works.
    return proof(key, side, transcript, label=WITNESS_LABEL)  # type: ignore[arg-type]


def _verify(key: bytes, side: Side, transcript: bytes, candidate: bytes) -> bool:
    return verify_proof(key, side, transcript, candidate, label=WITNESS_LABEL)  # type: ignore[arg-type]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class WitnessConnection:
    """One end of one witness connection, sans-IO: ``our_side`` is ``"client"`` or
    ``"witness"``. Feed bytes to :meth:`receive_data` (``b""`` at end of stream), take
    events from :meth:`next_event` until :data:`NEED_DATA`, write what :meth:`send`
    returns. Anything the peer does wrong raises :class:`WitnessProtocolError` and the
    object stays broken (every later call raises again)."""

    def __init__(self, our_side: Side, key: bytes, *, max_frame: int = MAX_FRAME) -> None:
        if our_side not in _DIRECTION:
            raise ValueError(f"our_side must be 'client' or 'witness', found {our_side!r}")
        if len(key) < 16:
            raise ValueError("the key must be at least 16 bytes")
        self.our_side: Side = our_side
        self.their_side: Side = "witness" if our_side == "client" else "client"
        self.max_frame = min(max_frame, MAX_FRAME)
        self._key = key
        self.state = State.AWAIT_HELLO
        self.error: StandbyError | None = None
        self.failed_in: State | None = None
        #: The witness: True once the client's AUTH checked out.
        self.peer_verified = False
        #: The HELLO (received or sent): who the connection speaks for.
        self.hello: Hello | None = None
        self._buffer = bytearray()
        self._eof = False
        self._hello_body: bytes | None = None
        self._nonce_client: bytes | None = None
        self._nonce_witness: bytes | None = None
        self._transcript: bytes | None = None
        self._mac_base: hmac.HMAC | None = None
        self._send_counter = 0
        self._receive_counter = 0

    @property
    def authenticated(self) -> bool:
        return self.state is State.OPEN

    def _fail(self, error: StandbyError) -> StandbyError:
        if self.error is None:
            self.error = error
            self.failed_in = self.state
        self.state = State.BROKEN
        return error

    def _check_usable(self) -> None:
        if self.state is State.BROKEN:
            raise WitnessProtocolError(f"the connection is broken: {self.error}")

    def _transition(self, sender: Side, kind: str) -> State:
        key = (self.state, sender, kind)
        if key not in TRANSITIONS:
            message = f"can't handle {kind.upper()} from the {sender} in state {self.state.value}"
            raise self._fail(LocalProtocolError(message) if sender == self.our_side
                             else WitnessProtocolError(message))
        return TRANSITIONS[key]

    def _mac(self, direction: Side, counter: int, body: bytes) -> bytes:
        assert self._mac_base is not None
        mac = self._mac_base.copy()
        mac.update(_DIRECTION[direction] + counter.to_bytes(8, "big") + body)
        return mac.digest()[:TAG_SIZE]

    def _start_session(self, nonce_witness: bytes) -> None:
        assert self._nonce_client is not None
        session_key = derive_session_key(self._key, self._nonce_client, nonce_witness, label=WITNESS_LABEL)
        self._mac_base = hmac.new(session_key, digestmod=hashlib.sha256)

    # ---------------------------------------------------------------- sending

    def send(self, event: Event) -> bytes:
        """``event`` as one frame. Fills in nonces and proofs; ``LocalProtocolError`` if
        it is not ours to send now."""
        self._check_usable()
        kind = _KIND_OF.get(type(event))
        if kind is None:
            raise self._fail(LocalProtocolError(f"cannot send {event!r}"))
        next_state = self._transition(self.our_side, kind)
        obj: dict[str, Any]
        if isinstance(event, Hello):
            try:
                _check_name(event.node, "node", LocalProtocolError)
                _check_name(event.cluster, "cluster", LocalProtocolError)
            except LocalProtocolError as exc:
                raise self._fail(exc) from None
            self._nonce_client = event.nonce or secrets.token_bytes(NONCE_SIZE)
            self.hello = Hello(event.node, event.cluster, self._nonce_client)
            obj = {"type": "hello", "version": PROTOCOL_VERSION, "node": event.node, "cluster": event.cluster,
                   "nonce": self._nonce_client.hex()}
        elif isinstance(event, Challenge):
            nonce = event.nonce or secrets.token_bytes(NONCE_SIZE)
            assert self._hello_body is not None
            self._transcript = transcript_digest(self._hello_body, nonce, label=WITNESS_LABEL)
            self._nonce_witness = nonce
            obj = {"type": "challenge", "nonce": nonce.hex()}
        elif isinstance(event, Auth):
            assert self._transcript is not None
            obj = {"type": "auth", "proof": _proof(self._key, "client", self._transcript).hex()}
        elif isinstance(event, Welcome):
            if not self.peer_verified:
                raise self._fail(LocalProtocolError("WELCOME to a client whose AUTH did not verify: send Reject"))
            assert self._transcript is not None
            obj = {"type": "welcome", "proof": _proof(self._key, "witness", self._transcript).hex()}
        elif isinstance(event, Reject):
            obj = {"type": "reject", "reason": event.reason[:1000]}
        else:
            assert isinstance(event, Message)
            obj = event.body
        try:
            body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise self._fail(LocalProtocolError(f"cannot encode {kind.upper()}: {exc}")) from None
        if isinstance(event, Hello):
            self._hello_body = body
        if isinstance(event, Message):
            counter = self._send_counter
            self._send_counter += 1
            body = body + TRAILER.pack(counter, self._mac(self.our_side, counter, body))
        if len(body) > self.max_frame:
            raise self._fail(LocalProtocolError(f"{kind.upper()} frame of {len(body)} bytes, at most {self.max_frame}"))
        self.state = next_state
        return LENGTH.pack(len(body)) + body

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; ``b""`` means it closed its end. An oversized length is
        refused as soon as its 4 bytes are here, before its body is buffered."""
        self._check_usable()
        if self._eof:
            if data:
                raise self._fail(WitnessProtocolError("data received after end of stream"))
            return
        if not data:
            self._eof = True
            return
        self._buffer += data
        self._check_length()

    def _check_length(self) -> int | None:
        if len(self._buffer) < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self._buffer)
        if length > self.max_frame or length == 0:
            raise self._fail(WitnessProtocolError(
                f"frame of {length} bytes announced, expected 1 to {self.max_frame} (not a lifeline witness client?)"))
        return int(length)

    def next_event(self) -> Event | _NeedData:
        """The next event from the peer, or :data:`NEED_DATA`."""
        self._check_usable()
        if self.state is State.CLOSED:
            return ConnectionClosed() if self._eof else NEED_DATA
        length = self._check_length()
        if length is None or len(self._buffer) < LENGTH.size + length:
            if not self._eof:
                return NEED_DATA
            if self._buffer:
                raise self._fail(WitnessProtocolError(
                    f"connection closed in the middle of a frame ({len(self._buffer)} bytes of it)"))
            self.state = State.CLOSED
            return ConnectionClosed()
        frame = bytes(self._buffer[LENGTH.size:LENGTH.size + length])
        del self._buffer[:LENGTH.size + length]
        try:
            return self._process(frame)
        except StandbyError as exc:
            raise self._fail(exc) from None

    def _process(self, frame: bytes) -> Event:
        sender = self.their_side
        if self.state is State.OPEN:
            if len(frame) <= TRAILER_SIZE:
                raise WitnessProtocolError("frame too short for its MAC trailer")
            body = frame[:-TRAILER_SIZE]
            counter, tag = TRAILER.unpack(frame[-TRAILER_SIZE:])
            if not hmac.compare_digest(self._mac(sender, counter, body), tag):
                raise WitnessProtocolError("frame fails its MAC: altered, injected, reflected, or another key")
            if counter != self._receive_counter:
                what = "replayed" if counter < self._receive_counter else "out-of-order"
                raise WitnessProtocolError(f"{what} frame: counter {counter}, expected {self._receive_counter}")
            self._receive_counter += 1
            self._transition(sender, "message")
            return Message(_decode_json(body))
        obj = _decode_json(frame)
        kind = obj.get("type")
        if kind not in ("hello", "challenge", "auth", "welcome", "reject"):
            raise WitnessProtocolError(f"expected a handshake frame in state {self.state.value}, found type {kind!r}")
        next_state = self._transition(sender, kind)
        event = self._decode_handshake(kind, obj, frame)
        self.state = next_state
        return event

    def _decode_handshake(self, kind: str, obj: dict[str, Any], frame: bytes) -> Event:
        if kind == "hello":
            if obj.get("version") != PROTOCOL_VERSION:
                raise WitnessProtocolError(f"the client speaks witness protocol version {obj.get('version')!r}, "
                                           f"this witness speaks {PROTOCOL_VERSION}: upgrade to the same release")
            _check_name(obj.get("node"), "HELLO node", WitnessProtocolError)
            _check_name(obj.get("cluster"), "HELLO cluster", WitnessProtocolError)
            self._nonce_client = _hex32(obj, "nonce")
            self._hello_body = frame
            self.hello = Hello(obj["node"], obj["cluster"], self._nonce_client)
            return self.hello
        if kind == "challenge":
            nonce = _hex32(obj, "nonce")
            assert self._hello_body is not None
            self._transcript = transcript_digest(self._hello_body, nonce, label=WITNESS_LABEL)
            self._start_session(nonce)  # the client proves, then MACs with it
            return Challenge(nonce)
        if kind == "auth":
            candidate = _hex32(obj, "proof")
            assert self._transcript is not None
            self.peer_verified = _verify(self._key, "client", self._transcript, candidate)
            if self.peer_verified:
                assert self._nonce_witness is not None
                self._start_session(self._nonce_witness)
            return Auth(candidate, self.peer_verified)
        if kind == "welcome":
            candidate = _hex32(obj, "proof")
            assert self._transcript is not None
            if not _verify(self._key, "witness", self._transcript, candidate):
                raise WitnessProtocolError("the witness's proof does not verify: it does not hold our key")
            return Welcome(candidate)
        reason = obj.get("reason")
        return Reject(reason if isinstance(reason, str) else repr(reason))


def _decode_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WitnessProtocolError(f"frame body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise WitnessProtocolError(f"frame body is a JSON {type(obj).__name__}, expected an object")
    return obj


def _hex32(obj: Mapping[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) != 2 * NONCE_SIZE:
        raise WitnessProtocolError(f"{name} must be {NONCE_SIZE} bytes in hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise WitnessProtocolError(f"{name} must be {NONCE_SIZE} bytes in hex") from None


# =========================================================================== the state file

_EXAMPLE = '{"version": 1, "clusters": {"lifeline": {"epoch": 42}}}'


def read_state_file(path: Path, now: float) -> WitnessState | None:
    """The state saved in ``path`` (None if there is no such file).
    :class:`WitnessStateError` if it cannot be read or makes no sense."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WitnessStateError(f"{path}: cannot read the witness state: {exc.strerror or exc}") from None
    try:
        return WitnessState.from_durable(json.loads(raw.decode("utf-8")), now)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WitnessStateError(
            f"{path}: the witness state is corrupt ({str(exc)[:300]}). Refusing to start: beginning again at "
            f"epoch 0 could grant an epoch twice. Restore the file from a backup, or rewrite it with every "
            f"cluster's epoch above the highest either node has seen (`lifeline journal stats` on both), "
            f"e.g. {_EXAMPLE}") from None


def write_state_file(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` durably: a crash leaves the old file or the new
    one, never a mix, and once this returns the new one survives a power cut."""
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself is durable only once the directory is
    finally:
        os.close(dir_fd)


def _lock_state(path: Path) -> int:
    """An exclusive lock on ``PATH.lock`` for the life of the process: two witnesses
    sharing one state would each grant the lease."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WitnessStateError(f"{lock_path}: cannot open the state lock: {exc.strerror or exc}; check that "
                                f"{path.parent} exists and is writable") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise WitnessStateError(f"{path}: another witness is using this state file (it holds {lock_path}); "
                                "stop it first") from None
    return fd


# =========================================================================== the server (trio)

Save = Callable[[Mapping[str, Any]], Awaitable[None]]
_DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Link:
    """A stream and its protocol object; request and reply take turns, so no send lock."""

    def __init__(self, stream: trio.abc.Stream, conn: WitnessConnection) -> None:
        self.stream = stream
        self.conn = conn

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def receive(self) -> Event:
        while True:
            event = self.conn.next_event()
            if not isinstance(event, _NeedData):
                return event
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_CHUNK))


class WitnessServer:
    """The trio shell around :class:`WitnessState`: one task per connection; each
    request is applied and, if it changed the durable state, saved with ``save``
    before it is answered, all under one lock so requests are linearizable."""

    def __init__(self, state: WitnessState, key: bytes, save: Save, *,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.state = state
        self.key = key
        self.save = save
        self.handshake_timeout = handshake_timeout
        self._lock = trio.Lock()

    async def apply(self, cluster: str, node: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One request, atomically: answer it, persist what changed, then reply."""
        async with self._lock:
            now = trio.current_time()
            snapshot = self.state.snapshot()
            before = self.state.durable()
            reply = answer(self.state, cluster, node, body, now)
            after = self.state.durable()
            if after != before:
                try:
                    # Shielded: once the state changed, it is saved (or put back) before
                    # anything else, even at shutdown.
                    with trio.CancelScope(shield=True):
                        await self.save(after)
                except BaseException as exc:
                    self.state.restore(snapshot)  # never keep, let alone answer, what a crash would lose
                    if not isinstance(exc, OSError):
                        raise
                    log.error("state.save_failed", cluster=cluster, node=node, op=body.get("op"), error=str(exc))
                    return {"id": reply.get("id"), "error": "unavailable",
                            "message": f"the witness could not save its state: {exc}"}
        _log_request(cluster, node, body, reply)
        return reply

    async def handle(self, stream: trio.abc.Stream, address: str = "?") -> None:
        """Serve one connection until it closes; any fault of the peer ends it alone."""
        link = _Link(stream, WitnessConnection("witness", self.key))
        hello: Hello | None = None
        try:
            with trio.fail_after(self.handshake_timeout):
                hello = await self._handshake(link, address)
            if hello is None:
                return
            log.info("connection.opened", address=address, node=hello.node, cluster=hello.cluster)
            while True:
                event = await link.receive()
                if isinstance(event, ConnectionClosed):
                    log.info("connection.closed", address=address, node=hello.node)
                    return
                assert isinstance(event, Message)  # the only event from a client once open
                await link.send(Message(await self.apply(hello.cluster, hello.node, event.body)))
        except trio.TooSlowError:
            log.warning("connection.dropped", address=address, reason=f"no handshake within "
                        f"{self.handshake_timeout:g}s", stage=_stage(link))
        except WitnessProtocolError as exc:
            log.warning("connection.dropped", address=address, node=hello.node if hello else None,
                        reason=f"protocol error: {exc}", stage=_stage(link))
        except _DISCONNECTS as exc:
            log.info("connection.closed", address=address, node=hello.node if hello else None,
                     reason=str(exc) or type(exc).__name__)
        except Exception:  # a client must never take the witness down; log the bug loudly
            log.exception("connection.failed", address=address)
        finally:
            await trio.aclose_forcefully(stream)

    async def _handshake(self, link: _Link, address: str) -> Hello | None:
        hello = await link.receive()
        if not isinstance(hello, Hello):
            raise WitnessProtocolError("the connection closed before HELLO")
        await link.send(Challenge())
        auth = await link.receive()
        if not isinstance(auth, Auth):
            raise WitnessProtocolError("the connection closed before AUTH")
        if not auth.verified:
            log.warning("auth.failed", address=address, node=hello.node, cluster=hello.cluster,
                        reason="the proof does not verify: another key")
            await link.send(Reject("authentication failed: the client's key is not the witness's"))
            return None
        await link.send(Welcome())
        return hello


def _stage(link: _Link) -> str:
    return (link.conn.failed_in or link.conn.state).value


_OPS = frozenset({"acquire", "renew", "read", "release", "set_sync_mark", "report"})


def _log_request(cluster: str, node: str, body: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
    op = body.get("op")
    fields: dict[str, Any] = {"cluster": cluster, "node": node}
    if "error" in reply:
        log.info(f"lease.{op}.refused" if op in _OPS else "request.refused", **fields, error=reply["error"],
                 message=reply.get("message"))
    elif op == "acquire":
        log.info("lease.granted", **fields, epoch=reply.get("epoch"), ttl=body.get("ttl"))
    elif op == "release":
        if reply.get("released"):
            log.info("lease.released", **fields, epoch=body.get("epoch"))
    elif op == "set_sync_mark":
        log.info("lease.sync_mark", **fields, epoch=body.get("epoch"), sync_node=body.get("sync_node"))
    else:  # renewals, reads and reports come several times a second
        log.debug(f"lease.{op}", **fields)


def _address(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def serve_witness(listen: tuple[str, int], state_path: str | os.PathLike[str], key: bytes, *,
                        min_epoch: int = 0, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Load (or create) the state in ``state_path``, listen on ``listen`` and serve
    until cancelled. ``task_status.started`` gets the bound (host, port), port 0
    resolved. :class:`WitnessStateError` if the state cannot be used, ``OSError`` if
    the address cannot be bound."""
    path = Path(state_path)
    lock_fd = _lock_state(path)
    try:
        state = read_state_file(path, trio.current_time())
        if state is None:
            state = WitnessState()
            try:
                write_state_file(path, state.durable())  # now, so an unwritable directory stops us at once
            except OSError as exc:
                raise WitnessStateError(f"{path}: cannot create the witness state: {exc.strerror or exc}; check "
                                        f"that {path.parent} exists and is writable") from None
            log.info("state.created", path=str(path), epoch=0, reason="no state file: every cluster starts at 0")
        else:
            log.info("state.loaded", path=str(path), epochs=_epochs(state),
                     note="each holder's lease counts as live for its ttl from now")

        if min_epoch:
            changed = state.raise_epochs(min_epoch)
            # Persisted at once: the floor must not depend on the flag being kept.
            write_state_file(path, state.durable())
            log.warning("state.epochs_raised", path=str(path), min_epoch=min_epoch, clusters=",".join(changed) or "-")

        async def save(data: Mapping[str, Any]) -> None:
            await trio.to_thread.run_sync(write_state_file, path, data)

        server = WitnessServer(state, key, save, handshake_timeout=handshake_timeout)
        host, port = listen
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        shown = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"

        async def handle(stream: trio.SocketStream) -> None:
            # Clients keep one idle connection open; keepalive reaps those of dead hosts.
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            await server.handle(stream, _address(stream))

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            log.info("witness.listening", address=shown, epochs=_epochs(state))
            task_status.started((bound_host, bound_port))
    finally:
        os.close(lock_fd)


def _epochs(state: WitnessState) -> str:
    return ",".join(f"{name}:{epoch}" for name, epoch in state.epochs().items()) or "none"


# =========================================================================== the command


def add_witness_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "witness", help="run the lease witness (the pair's quorum device)",
        description="Grant and renew the pair's leader lease from a third host; the epoch is kept in --state. "
                    "Stops with SIGTERM or SIGINT (exit 0).")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help='address to listen on, e.g. "0.0.0.0:7480" (port 0: any free port)')
    parser.add_argument("--state", required=True, type=Path, metavar="PATH",
                        help="the state file (created if missing; its directory must exist)")
    parser.add_argument("--key-file", required=True, type=Path, metavar="PATH",
                        help="the key shared with the nodes (`lifeline keys replication --out PATH`)")
    parser.add_argument("--min-epoch", type=int, default=0, metavar="N",
                        help="start every epoch at N or above (after a lost state file: N = the highest epoch in "
                             "either node's journal, `lifeline journal stats`)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run_witness_command(args: argparse.Namespace) -> int:
    from daemon import log as logging_setup
    from daemon.standby.keys import KeyFileError, load_replication_key

    logging_setup.setup(args.log_level)
    try:
        listen = parse_host_port(args.listen)
    except ValueError as exc:
        print(f"lifeline witness: --listen: {exc}", file=sys.stderr)
        return 2
    try:
        key = load_replication_key(args.key_file)
    except KeyFileError as exc:
        print(f"lifeline witness: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lifeline witness: {args.key_file}: cannot read the key: {exc.strerror or exc}; make one with "
              f"`lifeline keys replication --out {args.key_file}` and give the nodes the same file",
              file=sys.stderr)
        return 2
    if args.min_epoch < 0:
        print("lifeline witness: --min-epoch must be 0 or more", file=sys.stderr)
        return 2
    return trio.run(_main, listen, args.state, key, args.min_epoch)


async def _main(listen: tuple[str, int], state_path: Path, key: bytes, min_epoch: int = 0) -> int:
    from daemon.notify import Notifier

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                host, port = await nursery.start(functools.partial(serve_witness, min_epoch=min_epoch), listen,
                                                 state_path, key)
            except WitnessStateError as exc:
                log.error("witness.refused", error=str(exc))
                print(f"lifeline witness: refusing to start: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"lifeline witness: cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}",
                      file=sys.stderr)
                return 1
            Notifier().ready(f"witness listening on {host}:{port}")
            async for signum in signals:
                log.info("witness.stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


# =========================================================================== the client


T = TypeVar("T")


class _Refused(Exception):
    pass


class WitnessLeaseStore(LeaseStore):
    """The daemon's lease backend: one authenticated connection to the witness at
    ``address`` ("HOST:PORT"), opened on first use and again after any failure.

    Each call is one request, serialized with the others, and gives up after
    ``timeout`` seconds (connecting included) with :class:`LeaseUnavailable`. A failed
    or timed-out call drops the connection, so a late reply can never be taken for the
    answer to a later request (replies also carry the request's id). ``ttl`` goes with
    every acquire and renewal: the witness counts it on its own clock.

    ``connect`` replaces the TCP connection (tests hand in memory streams)."""

    def __init__(self, address: str, key: bytes, cluster: str, node: str, ttl: float, timeout: float, *,
                 connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None) -> None:
        self.host, self.port = parse_host_port(address)
        self.address = address
        _check_name(cluster, "cluster")
        _check_name(node, "node")
        if not _is_number(ttl) or not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be within [{MIN_TTL:g}, {MAX_TTL:g}] s for the witness, found {ttl!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, found {timeout!r}")
        if len(key) < 16:
            raise ValueError("the witness key must be at least 16 bytes")
        self.key = key
        self.cluster = cluster
        self.node = node
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self._connect = connect or self._open_tcp
        self._link: _Link | None = None
        self._lock = trio.Lock()
        self._next_id = 0

    # ------------------------------------------------------------------ LeaseStore

    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        reply = await self._call("acquire", node, expected_epoch=expected_epoch, ttl=self.ttl)
        return Grant(self._parse(lambda r: _reply_epoch(r, expected_epoch + 1), reply))

    async def renew(self, node: str, epoch: int) -> Grant:
        reply = await self._call("renew", node, epoch=epoch, ttl=self.ttl)
        return Grant(self._parse(lambda r: _reply_epoch(r, epoch), reply))

    async def read(self) -> LeaseState:
        reply = await self._call("read", self.node)
        return self._parse(lambda r: lease_state_from_json(r.get("state")), reply)

    async def release(self, node: str, epoch: int) -> None:
        await self._call("release", node, epoch=epoch)

    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None) -> None:
        await self._call("set_sync_mark", node, epoch=epoch, sync_node=sync_node)

    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        await self._call("report", node, position=[position.epoch, position.seq], seen_epoch=seen_epoch)

    async def aclose(self) -> None:
        await self._drop()

    # ------------------------------------------------------------------ plumbing

    async def _call(self, op: str, node: str, **fields: Any) -> dict[str, Any]:
        async with self._lock:
            self._next_id += 1
            request = {"op": op, "id": self._next_id, "node": node, **fields}
            done = False
            try:
                with trio.fail_after(self.timeout):
                    link = await self._connected()
                    await link.send(Message(request))
                    event = await link.receive()
                if not isinstance(event, Message):
                    raise WitnessProtocolError("the witness closed the connection")
                reply = event.body
                if reply.get("id") != request["id"]:
                    raise WitnessProtocolError(f"reply for request {reply.get('id')!r}, expected {request['id']}")
                done = True
            except trio.TooSlowError:
                raise LeaseUnavailable(f"no answer from the witness {self.address} to {op} within "
                                       f"{self.timeout:g}s") from None
            except _Refused as exc:
                raise LeaseUnavailable(f"the witness {self.address} refused us: {exc}") from None
            except (WitnessProtocolError, *_DISCONNECTS) as exc:
                raise LeaseUnavailable(f"witness {self.address}: {op} failed: {exc or type(exc).__name__}") from None
            finally:
                if not done:  # whatever happened, this connection's next bytes are not ours to trust
                    await self._drop()
        error = reply.get("error")
        if error is None and reply.get("ok") is True:
            return reply
        message = reply.get("message")
        message = f"witness: {message}" if isinstance(message, str) else f"witness answered {error!r}"
        if error == "conflict":
            raise LeaseConflict(message, self._parse(lambda r: lease_state_from_json(r.get("state")), reply))
        if error == "lost":
            raise LeaseLost(message)
        if error == "bad_request":
            raise WitnessBadRequest(message)
        if error == "unavailable":
            raise LeaseUnavailable(message)
        await self._drop()
        raise LeaseUnavailable(f"witness {self.address}: unexpected reply {reply!r:.200}")

    def _parse(self, parse: Callable[[dict[str, Any]], T], reply: dict[str, Any]) -> T:
        try:
            return parse(reply)
        except WitnessProtocolError as exc:
            # The connection is fine at the frame level; the next call may still succeed.
            raise LeaseUnavailable(f"witness {self.address}: malformed reply: {exc}") from None

    async def _connected(self) -> _Link:
        if self._link is not None and _stale(self._link.stream):
            await self._drop()  # the witness closed it while idle (restarted): reconnect, send nothing twice
        if self._link is None:
            stream = await self._connect()
            link = _Link(stream, WitnessConnection("client", self.key))
            try:
                await link.send(Hello(self.node, self.cluster))
                if not isinstance(await link.receive(), Challenge):
                    raise WitnessProtocolError("no CHALLENGE from the witness")
                await link.send(Auth())
                verdict = await link.receive()
                if isinstance(verdict, Reject):
                    raise _Refused(verdict.reason)
                if not isinstance(verdict, Welcome):
                    raise WitnessProtocolError("no WELCOME from the witness")
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._link = link
            log.info("witness.connected", address=self.address, node=self.node, cluster=self.cluster)
        return self._link

    async def _open_tcp(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await trio.aclose_forcefully(link.stream)


def _reply_epoch(reply: Mapping[str, Any], expected: int) -> int:
    epoch = reply.get("epoch")
    if epoch != expected or not _is_int(epoch):
        raise WitnessProtocolError(f"a grant at epoch {epoch!r}, expected {expected}")
    return int(epoch)


def _stale(stream: trio.abc.Stream) -> bool:
    """True if an idle TCP connection has something to read: between requests the
    witness sends nothing, so that can only be its end of stream or a reset."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
