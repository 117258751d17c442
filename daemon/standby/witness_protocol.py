"""The lease witness, sans-IO: the lease rules and the wire protocol.

A two-host site cannot tell "my peer died" from "the link to my peer died", so a third
party decides who may be primary (Pacemaker's qnetd plays this part for corosync). The
witness is that party, and nothing more: a **lock holder**, not a consensus system. It
grants and renews one lease per cluster by compare-and-set, persists the fencing epoch
before answering, and authenticates its clients with the witness key (its own, not
the replication key: ``lifeline keys witness``; bound to the cluster's name). If it is
down, nobody can become primary, and the primary fences itself when its lease runs out:
the pair stops rather than risk two primaries.

This module holds, in order:

* :class:`WitnessState`: the leases, sans-IO. Every method takes ``now`` (monotonic
  seconds on the witness's clock) and enforces the duties of
  :class:`~daemon.standby.lease.LeaseStore` (read them there). :func:`answer` applies
  one request body to it and builds the reply.
* :class:`WitnessConnection`: the wire protocol, sans-IO (h11's model), a payload
  codec on the authenticated channel (:mod:`daemon.standby.channel`).

Both are pure (no trio, no I/O, explicit time) and are tested as such. The witness
server — its own small host process: the trio shell
(:class:`~daemon.witness_server.WitnessServer`, :func:`~daemon.witness_server.serve_witness`),
the state file (below) and the ``lifeline witness`` command — is
:mod:`daemon.witness_server`; the daemon's client backend
(:class:`~daemon.standby.witness.WitnessLeaseStore`) is :mod:`daemon.standby.witness`.

Wire protocol
-------------
TCP; every frame is a 4-byte big-endian length and a body of at most :data:`MAX_FRAME`
bytes (64 KiB), and at most :data:`MAX_HANDSHAKE_FRAME` (8 KiB, a HELLO with two names of
255 characters) before authentication. A length above that is refused as soon as its 4
bytes arrive, before any of the body is buffered: a stranger gets a hello-sized buffer. Bodies are JSON objects. The handshake is
the authenticated channel's (:mod:`daemon.standby.channel`, as replication's), with its own label
(:data:`WITNESS_LABEL`) mixed into every hash, so nothing signed for replication ever
verifies here::

    client  -> HELLO     {"type": "hello", "version": 1, "node", "cluster", "nonce"}
    witness -> CHALLENGE {"type": "challenge", "nonce"}
    client  -> AUTH      {"type": "auth", "proof": HMAC(key, label | "client-proof" | transcript)}
                         (key = HMAC(witness key, label | "cluster" 0x00 | HELLO cluster): the
                          cluster's name is bound into every proof and session MAC)
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
    {"op": "pause", "id": 10, "node": "edge-a", "seconds": 3600, "by": "alice"}   (0: resume; in memory)
    {"id": 7, "ok": true, "epoch": 4}                      (read: "state": {...})
    {"id": 7, "error": "conflict" | "lost" | "bad_request" | "unavailable", "message": ..., "state": {...}}

State file
----------
``--state PATH``, JSON, rewritten (temporary file, fsync, rename, fsync of the
directory) before every answer that changed it::

    {"version": 1, "clusters": {"lifeline": {"epoch": 4, "holder": "edge-a",
        "last_holder": "edge-a", "ttl": 1.5, "sync_node": "edge-b"}}}

Only ``epoch`` is required. A missing file starts every cluster at epoch 0; an
unreadable one stops the witness (see :class:`daemon.witness_server.WitnessStateError`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import struct
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Mapping, TypeGuard, Union

from daemon.standby import Position, StandbyError
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseError,
    LeaseLost,
    LeaseState,
    Member,
)
from daemon.standby.lease import MAX_PAUSE, check_pause_seconds
from daemon.standby.channel import NEED_DATA as NEED_DATA
from daemon.standby.channel import NONCE_SIZE as NONCE_SIZE
from daemon.standby.channel import TAG_SIZE as TAG_SIZE
from daemon.standby.channel import TRAILER as TRAILER
from daemon.standby.channel import TRAILER_SIZE as TRAILER_SIZE
from daemon.standby.channel import Channel, ChannelError, StateTable, Suite
from daemon.standby.channel import ConnectionClosed as ConnectionClosed
from daemon.standby.channel import LocalProtocolError as LocalProtocolError

#: Mixed into every hash of the handshake and the session: a replication proof (same
#: key, label "lifeline-replication-v1 ") never verifies at the witness, nor the reverse.
WITNESS_LABEL: Final = b"lifeline-witness-v1 "
#: 2: proofs and session keys use the key bound to the HELLO's cluster (:func:`cluster_key`).
PROTOCOL_VERSION: Final = 2
#: The largest frame body (MAC trailer included). Requests and replies are a few hundred bytes.
MAX_FRAME: Final = 64 * 1024
#: The largest frame body before authentication: a HELLO's two names of MAX_NAME
#: characters, JSON-escaped (12 bytes for a character outside the BMP), fit.
MAX_HANDSHAKE_FRAME: Final = 8 * 1024
LENGTH = struct.Struct("!I")
#: The ttl a client may ask for. Below 0.1 s no network answers in time; above 10 min a
#: dead primary would block failover for longer than anyone would configure.
MIN_TTL: Final = 0.1
MAX_TTL: Final = 600.0
MAX_NAME: Final = 255
MAX_EPOCH: Final = 2**63 - 1
STATE_VERSION: Final = 1

Side = Literal["client", "witness"]


class WitnessProtocolError(ChannelError):
    """The peer sent something the witness protocol does not allow; the connection is
    closed (only that one)."""


class BadRequest(StandbyError, ValueError):
    """A well-framed, authenticated request that makes no sense (a missing field, a ttl
    out of range, another node's name): answered ``bad_request``, the connection stays."""


class WitnessBadRequest(LeaseError):
    """The witness answered ``bad_request`` to this client: a bug or a version mismatch
    between the daemon and the witness, not a transient fault."""


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
    #: (epoch, generation) of the write that set the mark: an older write is ignored.
    sync_stamp: tuple[int, int] = (0, 0)

    def live_holder(self, now: float) -> str | None:
        return self.holder if self.holder is not None and now < self.expires_at else None

    def durable(self) -> dict[str, Any]:
        """What must survive a restart: everything but the expiry, which is a point on
        this process's monotonic clock (a restart gives the holder a full ttl instead)."""
        return {"epoch": self.epoch, "holder": self.holder, "last_holder": self.last_holder, "ttl": self.ttl,
                "sync_node": self.sync_node, "sync_stamp": list(self.sync_stamp)}


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
        #: Maintenance pauses per cluster: (until, on the witness's clock; who). In
        #: memory only, like the reports: a restarted witness has no pause.
        self._pauses: dict[str, tuple[float, str]] = {}
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
            unknown = set(entry) - {"epoch", "holder", "last_holder", "ttl", "sync_node", "sync_stamp"}
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
            stamp = entry.get("sync_stamp", [0, 0])
            if (not isinstance(stamp, list) or len(stamp) != 2 or not all(_is_int(v) and v >= 0 for v in stamp)):
                raise ValueError(f"{where}: sync_stamp must be [epoch, generation], found {stamp!r}")
            state._leases[cluster] = _Lease(
                epoch=epoch, holder=names["holder"], expires_at=now + ttl if names["holder"] else 0.0,
                ttl=float(ttl), last_holder=names["last_holder"], sync_node=names["sync_node"],
                sync_stamp=(stamp[0], stamp[1]))
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
        until, by = self._pauses.get(cluster, (0.0, None))
        paused = until > now
        return LeaseState(holder=holder, epoch=lease.epoch,
                          ttl_remaining=lease.expires_at - now if holder is not None else 0.0,
                          sync_node=lease.sync_node, last_holder=lease.last_holder, members=members,
                          paused_for=until - now if paused else 0.0, paused_by=by if paused else None)

    def set_pause(self, cluster: str, seconds: float, by: str, now: float) -> None:
        """Pause automatic promotion in ``cluster`` for ``seconds`` (0: resume)."""
        if seconds > 0:
            self._pauses[cluster] = (now + seconds, by)
        else:
            self._pauses.pop(cluster, None)

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
                                       last_holder=node, sync_node=lease.sync_node, sync_stamp=lease.sync_stamp)
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

    def set_sync_mark(self, cluster: str, node: str, epoch: int, sync_node: str | None, now: float,
                      generation: int = 0) -> bool:
        """Record the synchronous standby, as the holder of the live lease at ``epoch``.
        ``LeaseLost`` otherwise: only the primary knows which standby holds its records.
        Applied only if ``(epoch, generation)`` is newer than the mark's stamp (a write
        that arrives late never undoes a later one); answers whether it was applied."""
        lease = self._require_holder(cluster, node, epoch, now, "set the sync mark")
        if (epoch, generation) <= lease.sync_stamp:
            return False
        self._leases[cluster] = replace(lease, sync_node=sync_node, sync_stamp=(epoch, generation))
        return True

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
            generation = body.get("generation", 0)
            if not _is_int(generation) or generation < 0:
                raise BadRequest(f'"generation" must be a non-negative integer, found {generation!r}')
            applied = state.set_sync_mark(cluster, node, _epoch_field(body, "epoch"), sync_node, now, generation)
            return {"id": request_id, "ok": True, "applied": applied}
        if op == "pause":
            try:
                seconds = check_pause_seconds(body.get("seconds"))
            except ValueError as exc:
                raise BadRequest(f'"seconds": {exc}') from None
            by = body.get("by")
            if not isinstance(by, str) or not 0 < len(by) <= 200:
                raise BadRequest(f'"by" must name who asked (1 to 200 characters), found {by!r:.60}')
            state.set_pause(cluster, seconds, f"{by} via {node}", now)
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
            "paused_for": state.paused_for, "paused_by": state.paused_by,
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
    paused_for = data.get("paused_for", 0.0)
    if not _is_number(paused_for) or not math.isfinite(paused_for) or not 0 <= paused_for <= MAX_PAUSE:
        raise bad(f"lease state: bad paused_for {paused_for!r}")
    paused_by = data.get("paused_by")
    if paused_by is not None and (not isinstance(paused_by, str) or len(paused_by) > 300):
        raise bad(f"lease state: bad paused_by {paused_by!r:.60}")
    return LeaseState(holder=names["holder"], epoch=epoch, ttl_remaining=float(ttl_remaining),
                      sync_node=names["sync_node"], last_holder=names["last_holder"], members=tuple(members),
                      paused_for=float(paused_for), paused_by=paused_by)


def _reply_epoch(reply: Mapping[str, Any], expected: int) -> int:
    epoch = reply.get("epoch")
    if epoch != expected or not _is_int(epoch):
        raise WitnessProtocolError(f"a grant at epoch {epoch!r}, expected {expected}")
    return int(epoch)


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


Event = Union[Hello, Challenge, Auth, Welcome, Reject, Message, ConnectionClosed]
_KIND_OF: dict[type, str] = {Hello: "hello", Challenge: "challenge", Auth: "auth", Welcome: "welcome",
                             Reject: "reject", Message: "message"}

#: (state, sender, kind) -> next state. Anything else is a protocol violation.
TRANSITIONS: Final[dict[tuple[State, str, str], State]] = {
    (State.AWAIT_HELLO, "client", "hello"): State.AWAIT_CHALLENGE,
    (State.AWAIT_CHALLENGE, "witness", "challenge"): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, "client", "auth"): State.AWAIT_VERDICT,
    (State.AWAIT_VERDICT, "witness", "welcome"): State.OPEN,
    (State.AWAIT_VERDICT, "witness", "reject"): State.CLOSED,
    (State.OPEN, "client", "message"): State.OPEN,
    (State.OPEN, "witness", "message"): State.OPEN,
}


def cluster_key(key: bytes, cluster: str) -> bytes:
    """The key a connection for ``cluster`` proves with: the witness key bound to the
    cluster's name, so a proof (and every session MAC) made for one cluster never
    verifies for another, even where two clusters were given the same key file."""
    return hmac.new(key, WITNESS_LABEL + b"cluster\0" + cluster.encode("utf-8"), hashlib.sha256).digest()


#: Before both sides proved the key: frames are bounded by MAX_HANDSHAKE_FRAME.
_HANDSHAKE_STATES: Final = frozenset({State.AWAIT_HELLO, State.AWAIT_CHALLENGE, State.AWAIT_AUTH, State.AWAIT_VERDICT})


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


#: The witness on the channel: its label, its two sides and the MAC's direction bytes.
WITNESS: Final = Suite(label=WITNESS_LABEL, initiator="client", responder="witness", initiator_direction=b"C",
                       responder_direction=b"W", peer_error=WitnessProtocolError)
_TABLE: Final = StateTable(TRANSITIONS, start=State.AWAIT_HELLO, closed=State.CLOSED, broken=State.BROKEN,
                           handshake=_HANDSHAKE_STATES)


class WitnessConnection(Channel[State, str, Event]):
    """One end of one witness connection, sans-IO: ``our_side`` is ``"client"`` or
    ``"witness"``. Feed bytes to :meth:`receive_data` (``b""`` at end of stream), take
    events from :meth:`next_event` until :data:`NEED_DATA`, write what :meth:`send`
    returns. Anything the peer does wrong raises :class:`WitnessProtocolError` and the
    object stays broken (every later call raises again). The handshake, the MACs, the
    frame caps and the buffer are the channel's
    (:class:`~daemon.standby.channel.Channel`); this class is the length prefix, the
    JSON bodies, the cluster's key and the table."""

    HEADER_SIZE = LENGTH.size
    MIN_LENGTH = 1

    def __init__(self, our_side: Side, key: bytes | None, *, max_frame: int = MAX_FRAME,
                 cluster_keys: Mapping[str, bytes] | None = None) -> None:
        """``key``: the witness key (the witness: for clusters not in ``cluster_keys``;
        None: only those). Proofs use it bound to the HELLO's cluster."""
        if our_side not in ("client", "witness"):
            raise ValueError(f"our_side must be 'client' or 'witness', found {our_side!r}")
        for k in ([key] if key is not None else []) + list((cluster_keys or {}).values()):
            if len(k) < 16:
                raise ValueError("the key must be at least 16 bytes")
        if key is None and not cluster_keys:
            raise ValueError("no key")
        # The key proofs use is bound to the cluster at HELLO (cluster_key).
        super().__init__(WITNESS, _TABLE, our_side, b"", max_frame=min(max_frame, MAX_FRAME))
        self._base_key = key
        self._cluster_keys = dict(cluster_keys or {})
        #: The HELLO (received or sent): who the connection speaks for.
        self.hello: Hello | None = None

    @property
    def authenticated(self) -> bool:
        return self.state is State.OPEN

    def _bind_key(self, cluster: str, error: type[StandbyError]) -> None:
        base = self._cluster_keys.get(cluster, self._base_key)
        if base is None:
            raise error(f"no key for cluster {cluster!r}" if error is LocalProtocolError
                        # Said after the proof would be, in words a key holder can act on.
                        else f"this witness has no key for cluster {cluster!r}")
        self._key = cluster_key(base, cluster)

    # ---------------------------------------------------------------- the frame header

    def _read_header(self, buffer: bytearray) -> tuple[str | None, int, int] | None:
        if len(buffer) < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(buffer)
        return None, 0, int(length)  # the kind is in the JSON body

    def _kind_name(self, kind: str) -> str:
        return kind.upper()

    def _frame_name(self, kind: str | None) -> str:
        return "frame"

    def _handshake_limit(self, kind: str | None) -> int | None:
        return MAX_HANDSHAKE_FRAME

    # ---------------------------------------------------------------- sending

    def _send_frame(self, event: Event) -> bytes:
        kind = _KIND_OF.get(type(event))
        if kind is None:
            raise LocalProtocolError(f"cannot send {event!r}")
        next_state = self._transition(self.our_side, kind)
        obj: dict[str, Any]
        nonce = b""
        if isinstance(event, Hello):
            _check_name(event.node, "node", LocalProtocolError)
            _check_name(event.cluster, "cluster", LocalProtocolError)
            self._bind_key(event.cluster, LocalProtocolError)
            nonce = self._nonce(event.nonce)
            self.hello = Hello(event.node, event.cluster, nonce)
            obj = {"type": "hello", "version": PROTOCOL_VERSION, "node": event.node, "cluster": event.cluster,
                   "nonce": nonce.hex()}
        elif isinstance(event, Challenge):
            nonce = self._nonce(event.nonce)
            self._on_challenge(nonce)
            obj = {"type": "challenge", "nonce": nonce.hex()}
        elif isinstance(event, Auth):
            obj = {"type": "auth", "proof": self._our_proof().hex()}
        elif isinstance(event, Welcome):
            obj = {"type": "welcome", "proof": self._our_proof().hex()}
        elif isinstance(event, Reject):
            obj = {"type": "reject", "reason": event.reason[:1000]}
        else:
            assert isinstance(event, Message)
            obj = event.body
        try:
            body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"cannot encode {kind.upper()}: {exc}") from None
        if isinstance(event, Hello):
            self._on_hello(body, nonce)
        if isinstance(event, Message):
            body = body + self._seal(b"", body)  # the MAC covers the body, not the length
        if len(body) > self.max_frame:
            raise LocalProtocolError(f"{kind.upper()} frame of {len(body)} bytes, at most {self.max_frame}")
        self.state = next_state
        return LENGTH.pack(len(body)) + body

    # ---------------------------------------------------------------- receiving

    def _receive_frame(self, kind: str | None, flags: int, header: memoryview, rest: memoryview) -> Event:
        sender = self.their_side
        if self.state is State.OPEN:
            body = self._open("frame", b"", rest)
            self._transition(sender, "message")
            return Message(_decode_json(body))
        obj = _decode_json(rest)
        kind = obj.get("type")
        if kind not in ("hello", "challenge", "auth", "welcome", "reject"):
            raise WitnessProtocolError(f"expected a handshake frame in state {self.state.value}, found type {kind!r}")
        next_state = self._transition(sender, kind)
        event = self._decode_handshake(kind, obj, rest)
        self.state = next_state
        return event

    def _decode_handshake(self, kind: str, obj: dict[str, Any], frame: memoryview) -> Event:
        if kind == "hello":
            if obj.get("version") != PROTOCOL_VERSION:
                raise WitnessProtocolError(f"the client speaks witness protocol version {obj.get('version')!r}, "
                                           f"this witness speaks {PROTOCOL_VERSION}: upgrade to the same release")
            _check_name(obj.get("node"), "HELLO node", WitnessProtocolError)
            _check_name(obj.get("cluster"), "HELLO cluster", WitnessProtocolError)
            self._bind_key(obj["cluster"], WitnessProtocolError)
            nonce = _hex32(obj, "nonce")
            self._on_hello(frame, nonce)
            self.hello = Hello(obj["node"], obj["cluster"], nonce)
            return self.hello
        if kind == "challenge":
            nonce = _hex32(obj, "nonce")
            self._on_challenge(nonce)  # the client proves, then MACs with the session
            return Challenge(nonce)
        if kind == "auth":
            candidate = _hex32(obj, "proof")
            return Auth(candidate, self._check_auth(candidate))
        if kind == "welcome":
            candidate = _hex32(obj, "proof")
            self._check_welcome(candidate)
            return Welcome(candidate)
        reason = obj.get("reason")
        return Reject(reason if isinstance(reason, str) else repr(reason))


def _decode_json(body: bytes | memoryview) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(body).decode("utf-8"), parse_constant=_refuse_constant)
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
