"""The replication stream between the primary and its standby, sans-IO.

No sockets and no trio here (h11's model): the shell feeds the bytes it received to
:meth:`ReplicationConnection.receive_data` (``b""`` at end of stream), takes events out
of :meth:`~ReplicationConnection.next_event` until it answers :data:`NEED_DATA`, and
writes whatever :meth:`~ReplicationConnection.send` returns. Anything the peer sends
that the protocol does not allow — garbage, a wrong magic or version, an oversized
length, a body that does not parse, a bad MAC, a replayed frame, a frame out of turn —
raises :class:`~daemon.standby.ReplicationProtocolError` naming what was wrong, and the
connection object stays broken (every later call raises again): the shell closes the
socket. Nothing from the wire ever reaches the journal unless it passed all of that.

The handshake, the MACs, the frame caps and the connection skeleton are the
authenticated channel's (:mod:`daemon.standby.channel`, shared with the witness);
this module is replication's frame header, message bodies and state table on top.

Frames
------
Every frame is a 12-byte header and a body, in network byte order::

    magic "LLRP" | version u8 | type u8 | flags u16 | length u32 | body ... [| counter u64 | tag 16]

``length`` counts every byte after the header, MAC trailer included; a frame may not
exceed :data:`MAX_FRAME` (8 MiB, well above one batch of records), and before both sides
have proved the key a frame may not exceed what its handshake type can hold
(:data:`MAX_HANDSHAKE_BODY`: under 1 KiB for a HELLO), so a stranger is never buffered
more than a hello. The header is checked as soon as its 12 bytes have arrived, so an
absurd length is refused before any of its body is buffered. Flag bit 0 says a MAC trailer is present; it must be present exactly
on the frames sent after authentication.

Authentication: HMAC-SHA256 challenge-response with the pre-shared key
-----------------------------------------------------------------------
The pair shares one 32-byte key file (``lifeline keys replication``). We chose this over
TLS because there is no certificate lifecycle to get wrong on a two-host private link
(no CA, no expiry at 3 a.m., no hostname checks on addresses that move at failover),
the code is a few HMAC calls with no dependency, and it gives what we need::

    standby -> HELLO     node id, role, epoch, last (epoch, seq), versions, nonce_s
    primary -> CHALLENGE nonce_p                 (nothing else before the peer proves itself)
    standby -> AUTH      HMAC(key, "standby-proof" | transcript)
    primary -> WELCOME   HMAC(key, "primary-proof" | transcript), its node id, epoch, last...
            or REJECT    reason                  (wrong key, a standby already connected, ...)

``transcript = SHA-256(HELLO body | nonce_p)`` binds every HELLO field (the stated
position included) and both nonces, so a proof cannot be replayed into another
session, and the role label keeps one side's proof from being reflected as the other's.
Both sides prove possession of the key; an unauthenticated peer gets a random
challenge and then a REJECT, nothing else.

Every frame after AUTH (WELCOME first) carries a MAC trailer: an explicit per-direction
counter and ``HMAC-SHA256(session_key, direction | counter | header | body)`` truncated
to 16 bytes, with ``session_key = HMAC(key, "session" | nonce_s | nonce_p)``. So a
man-in-the-middle on the link cannot inject, alter, reorder, replay or reflect records
or acknowledgements. The cost is one HMAC per frame: about 1 µs plus 0.5 ns per byte
(measured on the dev box); records travel in batches (hundreds per frame at load), so it
is well under 0.1 µs per 100-byte record — noise next to the fsyncs.
Confidentiality is out of scope: the link is a private cross-connect between the two
hosts of the pair, and the journal holds no secrets the hosts do not already share
(run it over a VPN or MACsec if that ever changes).

After WELCOME
-------------
Catch-up (:func:`next_candidate`): the standby's HELLO stated its last (epoch, seq). If
the primary's record at that seq has the same epoch, the histories agree up to there
and the primary streams from seq + 1. Otherwise it sends TRUNCATE with a candidate
position, the standby answers POSITION, and so on until both hold a record with the
same (seq, epoch): that is the common point, the standby truncates after it, and the
primary streams from there. The primary then sends HEARTBEAT or RECORDS, which starts
the stream: from then on RECORDS (batches), HEARTBEAT both ways, and cumulative ACKs
(the highest seq durable on the standby, with an optional error such as disk full).

The transitions live in one table, :data:`TRANSITIONS` (h11's ``_state.py`` rule).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable, Final, Literal, Sequence, Union

from daemon.standby import MAX_PAYLOAD, Position, Record, ReplicationProtocolError, StandbyError, channel
from daemon.standby.channel import NEED_DATA as NEED_DATA
from daemon.standby.channel import NONCE_SIZE as NONCE_SIZE
from daemon.standby.channel import PROOF_SIZE as PROOF_SIZE
from daemon.standby.channel import TAG_SIZE as TAG_SIZE
from daemon.standby.channel import TRAILER as TRAILER
from daemon.standby.channel import TRAILER_SIZE as TRAILER_SIZE
from daemon.standby.channel import Channel, StateTable, Suite
from daemon.standby.channel import ConnectionClosed as ConnectionClosed
from daemon.standby.channel import LocalProtocolError as LocalProtocolError

PROTOCOL_VERSION: Final = 1
MAGIC: Final = b"LLRP"
HEADER = struct.Struct("!4sBBHI")
HEADER_SIZE: Final = HEADER.size  # 12
#: The largest frame, header and MAC included. One record is at most MAX_PAYLOAD (1 MiB).
MAX_FRAME: Final = 8 * 1024 * 1024
FLAG_MAC: Final = 0x0001
MAX_TEXT: Final = 4096  # reasons, error messages
MAX_NAME: Final = 255  # node ids, versions, digests

Role = Literal["primary", "standby"]
_ROLE_CODES: dict[str, int] = {"primary": 1, "standby": 2}
_ROLE_NAMES: dict[int, Role] = {1: "primary", 2: "standby"}

_RECORD = struct.Struct("!QQQI")  # seq, epoch, timestamp_ns, payload length
RECORD_OVERHEAD: Final = _RECORD.size  # 28
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_LABEL = b"lifeline-replication-v1 "


class FrameType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    REJECT = 5
    TRUNCATE = 6
    POSITION = 7
    RECORDS = 8
    ACK = 9
    HEARTBEAT = 10
    ERROR = 11


class State(enum.Enum):
    """Where the conversation is. Both ends keep their own copy and move it on every
    frame sent or received, so each can tell what the other may send next."""

    AWAIT_HELLO = "await-hello"
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_AUTH = "await-auth"
    AWAIT_VERDICT = "await-verdict"
    SYNCING = "syncing"  # authenticated, agreeing on the common point
    AWAIT_POSITION = "await-position"  # a TRUNCATE is waiting for the standby's answer
    STREAMING = "streaming"
    CLOSED = "closed"
    BROKEN = "broken"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Hello:
    """Standby → primary, first frame. ``nonce`` is filled in by :meth:`send` when empty."""

    node_id: str
    role: Role
    epoch: int
    last: Position
    software_version: str
    config_digest: bytes
    nonce: bytes = b""


@dataclass(frozen=True)
class Challenge:
    """Primary → standby: a fresh random nonce (filled in by :meth:`send` when empty)."""

    nonce: bytes = b""


@dataclass(frozen=True)
class Auth:
    """Standby → primary: the proof of the key. :meth:`send` computes ``proof``; on the
    primary, ``verified`` says whether it checked out (the shell answers REJECT if not)."""

    proof: bytes = b""
    verified: bool = False


@dataclass(frozen=True)
class Welcome:
    """Primary → standby: accepted, with the primary's proof (computed by :meth:`send`,
    checked by the standby's :meth:`next_event`) and its own position."""

    node_id: str
    epoch: int
    last: Position
    software_version: str
    config_digest: bytes
    proof: bytes = b""


@dataclass(frozen=True)
class Reject:
    """Primary → standby instead of WELCOME; the connection closes."""

    reason: str


@dataclass(frozen=True)
class Truncate:
    """Primary → standby during catch-up: "my record at ``to.seq`` has epoch ``to.epoch``;
    if yours does too, drop everything after it". ``reason`` is for the log."""

    to: Position
    reason: str


@dataclass(frozen=True)
class PositionReport:
    """Standby → primary during catch-up: "my record at ``position.seq`` has epoch
    ``position.epoch``"; ``is_last`` when that is also the end of its journal (it
    agreed and truncated)."""

    position: Position
    is_last: bool


@dataclass(frozen=True)
class Records:
    """Primary → standby: consecutive records (seq n, n+1, ...), epochs non-decreasing."""

    records: Sequence[Record]


@dataclass(frozen=True)
class Ack:
    """Standby → primary: every record up to ``seq`` is durable on the standby.
    ``error`` (e.g. "disk full: ...") means it has stopped acknowledging."""

    seq: int
    error: str | None = None


@dataclass(frozen=True)
class Heartbeat:
    """Both ways: the sender's wall clock, its last seq (the primary's journal end, the
    standby's durable end) and the digests of its config and software."""

    sent_ns: int
    last_seq: int
    config_digest: bytes
    version_digest: bytes


@dataclass(frozen=True)
class Error:
    """Either way after authentication: the sender gives up on this connection."""

    code: str
    message: str


Event = Union[Hello, Challenge, Auth, Welcome, Reject, Truncate, PositionReport, Records, Ack, Heartbeat,
              Error, ConnectionClosed]

_TYPE_OF: dict[type, FrameType] = {
    Hello: FrameType.HELLO, Challenge: FrameType.CHALLENGE, Auth: FrameType.AUTH,
    Welcome: FrameType.WELCOME, Reject: FrameType.REJECT, Truncate: FrameType.TRUNCATE,
    PositionReport: FrameType.POSITION, Records: FrameType.RECORDS, Ack: FrameType.ACK,
    Heartbeat: FrameType.HEARTBEAT, Error: FrameType.ERROR,
}

# --------------------------------------------------------------------------- the table

#: (state, sender, frame type) -> next state. Anything not here is a protocol violation.
TRANSITIONS: Final[dict[tuple[State, str, FrameType], State]] = {
    (State.AWAIT_HELLO, "standby", FrameType.HELLO): State.AWAIT_CHALLENGE,
    (State.AWAIT_CHALLENGE, "primary", FrameType.CHALLENGE): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, "standby", FrameType.AUTH): State.AWAIT_VERDICT,
    (State.AWAIT_VERDICT, "primary", FrameType.WELCOME): State.SYNCING,
    (State.AWAIT_VERDICT, "primary", FrameType.REJECT): State.CLOSED,
    (State.SYNCING, "primary", FrameType.TRUNCATE): State.AWAIT_POSITION,
    (State.AWAIT_POSITION, "standby", FrameType.POSITION): State.SYNCING,
    (State.SYNCING, "primary", FrameType.HEARTBEAT): State.STREAMING,
    (State.SYNCING, "primary", FrameType.RECORDS): State.STREAMING,
    (State.STREAMING, "primary", FrameType.RECORDS): State.STREAMING,
    (State.STREAMING, "primary", FrameType.HEARTBEAT): State.STREAMING,
    (State.STREAMING, "standby", FrameType.HEARTBEAT): State.STREAMING,
    (State.STREAMING, "standby", FrameType.ACK): State.STREAMING,
    **{
        (state, sender, FrameType.ERROR): State.CLOSED
        for state in (State.SYNCING, State.AWAIT_POSITION, State.STREAMING)
        for sender in ("primary", "standby")
    },
}

#: Frames that travel with a MAC: everything from WELCOME on, except REJECT.
_AUTHENTICATED_STATES: Final = frozenset({State.SYNCING, State.AWAIT_POSITION, State.STREAMING})


#: The largest body (MAC trailer included) each handshake frame can have, from its
#: encoding below: three names of at most MAX_NAME bytes, nonces, proofs, a reason of
#: at most MAX_TEXT. Before authentication no other frame type is allowed at all.
MAX_HANDSHAKE_BODY: Final[dict[FrameType, int]] = {
    FrameType.HELLO: 1 + 8 + 16 + NONCE_SIZE + 3 * (1 + MAX_NAME),
    FrameType.CHALLENGE: NONCE_SIZE,
    FrameType.AUTH: PROOF_SIZE,
    FrameType.WELCOME: PROOF_SIZE + 8 + 16 + 3 * (1 + MAX_NAME) + TRAILER_SIZE,
    FrameType.REJECT: 2 + MAX_TEXT,
}


#: Before both sides proved the key: frames are bounded by MAX_HANDSHAKE_BODY.
_HANDSHAKE_STATES: Final = frozenset({State.AWAIT_HELLO, State.AWAIT_CHALLENGE, State.AWAIT_AUTH, State.AWAIT_VERDICT})


def _needs_mac(state: State, frame_type: FrameType) -> bool:
    return frame_type is FrameType.WELCOME or state in _AUTHENTICATED_STATES


# --------------------------------------------------------------------------- crypto

# The channel's (daemon.standby.channel), with replication's label by default. ``label``
# separates protocols sharing one key: the witness signs with its own, so a proof or
# session made for replication never verifies there.


def derive_session_key(psk: bytes, nonce_standby: bytes, nonce_primary: bytes, *, label: bytes = _LABEL) -> bytes:
    """The per-connection MAC key: fresh for every connection since both nonces are."""
    return channel.derive_session_key(psk, nonce_standby, nonce_primary, label=label)


def transcript_digest(hello_body: bytes, nonce_primary: bytes, *, label: bytes = _LABEL) -> bytes:
    """What both proofs sign: the standby's HELLO exactly as sent (its nonce included)
    and the primary's challenge."""
    return channel.transcript_digest(hello_body, nonce_primary, label=label)


def proof(psk: bytes, role: Role, transcript: bytes, *, label: bytes = _LABEL) -> bytes:
    """``role``'s proof of holding ``psk``; the role label stops reflection."""
    return channel.proof(psk, role, transcript, label=label)


def verify_proof(psk: bytes, role: Role, transcript: bytes, candidate: bytes, *, label: bytes = _LABEL) -> bool:
    return channel.verify_proof(psk, role, transcript, candidate, label=label)


# --------------------------------------------------------------------------- body codec


class _Reader:
    """Walks a frame body; every shortfall is the peer's protocol error."""

    def __init__(self, body: memoryview, what: str) -> None:
        self.body = body
        self.offset = 0
        self.what = what

    def take(self, n: int, field_name: str) -> memoryview:
        end = self.offset + n
        if end > len(self.body):
            raise ReplicationProtocolError(
                f"{self.what} frame is truncated: {field_name} needs {n} bytes at offset {self.offset}, "
                f"the body has {len(self.body)}"
            )
        chunk = self.body[self.offset:end]
        self.offset = end
        return chunk

    def u8(self, name: str) -> int:
        return int(self.take(1, name)[0])

    def u16(self, name: str) -> int:
        return int(_U16.unpack(self.take(2, name))[0])

    def u32(self, name: str) -> int:
        return int(_U32.unpack(self.take(4, name))[0])

    def u64(self, name: str) -> int:
        return int(_U64.unpack(self.take(8, name))[0])

    def blob8(self, name: str) -> bytes:
        return bytes(self.take(self.u8(name + " length"), name))

    def text8(self, name: str) -> str:
        return self._decode(self.blob8(name), name)

    def text16(self, name: str) -> str:
        n = self.u16(name + " length")
        if n > MAX_TEXT:
            raise ReplicationProtocolError(f"{self.what} frame: {name} is {n} bytes, at most {MAX_TEXT}")
        return self._decode(bytes(self.take(n, name)), name)

    def _decode(self, raw: bytes, name: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ReplicationProtocolError(f"{self.what} frame: {name} is not UTF-8") from None

    def position(self, name: str) -> Position:
        return Position(self.u64(name + " epoch"), self.u64(name + " seq"))

    def role(self) -> Role:
        code = self.u8("role")
        if code not in _ROLE_NAMES:
            raise ReplicationProtocolError(f"{self.what} frame: unknown role code {code}")
        return _ROLE_NAMES[code]

    def done(self) -> None:
        extra = len(self.body) - self.offset
        if extra:
            raise ReplicationProtocolError(f"{self.what} frame has {extra} unexpected trailing bytes")


def _u64(value: int, name: str) -> bytes:
    if not 0 <= value < 2**64:
        raise LocalProtocolError(f"{name} must fit in 64 bits, found {value}")
    return _U64.pack(value)


def _blob8(value: bytes, name: str) -> bytes:
    if len(value) > MAX_NAME:
        raise LocalProtocolError(f"{name} is {len(value)} bytes, at most {MAX_NAME}")
    return _U8.pack(len(value)) + value


def _text8(value: str, name: str) -> bytes:
    return _blob8(value.encode("utf-8"), name)


def _text16(value: str, name: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_TEXT:  # a reason is for humans: shorten it rather than fail
        raw = raw[: MAX_TEXT - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return _U16.pack(len(raw)) + raw


def _position(value: Position, name: str) -> bytes:
    return _u64(value.epoch, name + " epoch") + _u64(value.seq, name + " seq")


def encode_records(records: Sequence[Record]) -> bytes:
    """A RECORDS body. ``LocalProtocolError`` for a batch the standby would refuse."""
    if not records:
        raise LocalProtocolError("a RECORDS frame needs at least one record")
    parts = [_U32.pack(len(records))]
    previous: Record | None = None
    for record in records:
        if previous is not None and (record.seq != previous.seq + 1 or record.epoch < previous.epoch):
            raise LocalProtocolError(
                f"records must be consecutive with non-decreasing epochs: {previous.position} then {record.position}"
            )
        if len(record.payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"record {record.seq} has {len(record.payload)} bytes, at most {MAX_PAYLOAD}")
        if record.seq < 1:
            raise LocalProtocolError(f"record seqs start at 1, found {record.seq}")
        parts.append(_RECORD.pack(record.seq, record.epoch, record.timestamp_ns, len(record.payload)))
        parts.append(record.payload)
        previous = record
    return b"".join(parts)


def decode_records(body: memoryview) -> Records:
    reader = _Reader(body, "RECORDS")
    count = reader.u32("count")
    if count == 0:
        raise ReplicationProtocolError("RECORDS frame with no records")
    # Each record takes at least its header: a count the body cannot hold is a lie, and
    # is refused before we loop over it.
    if count * RECORD_OVERHEAD > len(body) - 4:
        raise ReplicationProtocolError(f"RECORDS frame claims {count} records in a {len(body)}-byte body")
    records: list[Record] = []
    previous: Record | None = None
    for i in range(count):
        seq, epoch, timestamp_ns, length = _RECORD.unpack(reader.take(RECORD_OVERHEAD, f"record {i} header"))
        if length > MAX_PAYLOAD:
            raise ReplicationProtocolError(f"RECORDS frame: record {seq} claims {length} bytes, at most {MAX_PAYLOAD}")
        payload = bytes(reader.take(length, f"record {seq} payload"))
        record = Record(seq, epoch, timestamp_ns, payload)
        if seq < 1:
            raise ReplicationProtocolError(f"RECORDS frame: record seq {seq}, seqs start at 1")
        if previous is not None and (seq != previous.seq + 1 or epoch < previous.epoch):
            raise ReplicationProtocolError(
                f"RECORDS frame: records must be consecutive with non-decreasing epochs, found "
                f"(epoch {previous.epoch}, seq {previous.seq}) then (epoch {epoch}, seq {seq})"
            )
        records.append(record)
        previous = record
    reader.done()
    return Records(tuple(records))


def encode_body(event: Event) -> bytes:
    """The body of one frame (no header, no MAC). Fields must already be complete."""
    if isinstance(event, Hello):
        if len(event.nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"HELLO nonce must be {NONCE_SIZE} bytes")
        return (_U8.pack(_ROLE_CODES[event.role]) + _u64(event.epoch, "epoch") + _position(event.last, "last")
                + event.nonce + _text8(event.node_id, "node_id") + _text8(event.software_version, "software_version")
                + _blob8(event.config_digest, "config_digest"))
    if isinstance(event, Challenge):
        if len(event.nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"CHALLENGE nonce must be {NONCE_SIZE} bytes")
        return event.nonce
    if isinstance(event, Auth):
        return event.proof
    if isinstance(event, Welcome):
        return (event.proof + _u64(event.epoch, "epoch") + _position(event.last, "last")
                + _text8(event.node_id, "node_id") + _text8(event.software_version, "software_version")
                + _blob8(event.config_digest, "config_digest"))
    if isinstance(event, Reject):
        return _text16(event.reason, "reason")
    if isinstance(event, Truncate):
        return _position(event.to, "to") + _text16(event.reason, "reason")
    if isinstance(event, PositionReport):
        return _U8.pack(1 if event.is_last else 0) + _position(event.position, "position")
    if isinstance(event, Records):
        return encode_records(event.records)
    if isinstance(event, Ack):
        return _u64(event.seq, "seq") + _text16(event.error or "", "error")
    if isinstance(event, Heartbeat):
        return (_u64(event.sent_ns, "sent_ns") + _u64(event.last_seq, "last_seq")
                + _blob8(event.config_digest, "config_digest") + _blob8(event.version_digest, "version_digest"))
    if isinstance(event, Error):
        return _text8(event.code, "code") + _text16(event.message, "message")
    raise LocalProtocolError(f"cannot send {type(event).__name__}")


def decode_body(frame_type: FrameType, body: memoryview) -> Event:
    """The event in one frame body; ``ReplicationProtocolError`` if it does not parse."""
    if frame_type is FrameType.RECORDS:
        return decode_records(body)
    r = _Reader(body, frame_type.name)
    event: Event
    if frame_type is FrameType.HELLO:
        role = r.role()
        epoch = r.u64("epoch")
        last = r.position("last")
        nonce = bytes(r.take(NONCE_SIZE, "nonce"))
        event = Hello(node_id=r.text8("node_id"), role=role, epoch=epoch, last=last,
                      software_version=r.text8("software_version"), config_digest=r.blob8("config_digest"),
                      nonce=nonce)
    elif frame_type is FrameType.CHALLENGE:
        event = Challenge(bytes(r.take(NONCE_SIZE, "nonce")))
    elif frame_type is FrameType.AUTH:
        event = Auth(bytes(r.take(PROOF_SIZE, "proof")))
    elif frame_type is FrameType.WELCOME:
        proof_ = bytes(r.take(PROOF_SIZE, "proof"))
        epoch = r.u64("epoch")
        last = r.position("last")
        event = Welcome(node_id=r.text8("node_id"), epoch=epoch, last=last,
                        software_version=r.text8("software_version"), config_digest=r.blob8("config_digest"),
                        proof=proof_)
    elif frame_type is FrameType.REJECT:
        event = Reject(r.text16("reason"))
    elif frame_type is FrameType.TRUNCATE:
        event = Truncate(r.position("to"), r.text16("reason"))
    elif frame_type is FrameType.POSITION:
        flags = r.u8("flags")
        if flags & ~1:
            raise ReplicationProtocolError(f"POSITION frame: unknown flags 0x{flags:02x}")
        event = PositionReport(r.position("position"), bool(flags & 1))
    elif frame_type is FrameType.ACK:
        seq = r.u64("seq")
        error = r.text16("error")
        event = Ack(seq, error or None)
    elif frame_type is FrameType.HEARTBEAT:
        event = Heartbeat(r.u64("sent_ns"), r.u64("last_seq"), r.blob8("config_digest"), r.blob8("version_digest"))
    elif frame_type is FrameType.ERROR:
        event = Error(r.text8("code"), r.text16("message"))
    else:  # pragma: no cover - every FrameType is handled above
        raise ReplicationProtocolError(f"no decoder for {frame_type.name}")
    r.done()
    return event


# --------------------------------------------------------------------------- connection

#: Replication on the channel: its label, its two sides and the MAC's direction bytes.
REPLICATION: Final = Suite(label=_LABEL, initiator="standby", responder="primary", initiator_direction=b"S",
                           responder_direction=b"P", peer_error=ReplicationProtocolError)
_TABLE: Final = StateTable(TRANSITIONS, start=State.AWAIT_HELLO, closed=State.CLOSED, broken=State.BROKEN,
                           handshake=_HANDSHAKE_STATES)


class ReplicationConnection(Channel[State, FrameType, Event]):
    """One end of one replication connection: ``our_role`` is ``"primary"`` (the
    server) or ``"standby"`` (the client). ``key`` is the pre-shared key. The
    handshake, the MACs, the frame caps and the buffer are the channel's
    (:class:`~daemon.standby.channel.Channel`); this class is the frame header, the
    message bodies and the table.

    ``max_frame`` may be lowered (tests); it is never raised above :data:`MAX_FRAME`.
    """

    HEADER_SIZE = HEADER_SIZE
    SIZE_COUNTS_HEADER = True
    ALLOWED_FLAGS = FLAG_MAC

    def __init__(self, our_role: Role, key: bytes, *, max_frame: int = MAX_FRAME) -> None:
        if our_role not in _ROLE_CODES:
            raise ValueError(f"our_role must be 'primary' or 'standby', found {our_role!r}")
        if len(key) < 16:
            raise ValueError("the replication key must be at least 16 bytes")
        super().__init__(REPLICATION, _TABLE, our_role, key, max_frame=min(max_frame, MAX_FRAME))
        self.our_role: Role = our_role
        self.their_role: Role = "standby" if our_role == "primary" else "primary"

    @property
    def authenticated(self) -> bool:
        """Both sides have proven the key (WELCOME went out, or came in and checked)."""
        return self.state in _AUTHENTICATED_STATES

    # ---------------------------------------------------------------- the frame header

    def _read_header(self, buffer: bytearray) -> tuple[FrameType, int, int] | None:
        # Check the magic and version as soon as their bytes arrive (garbage is refused
        # after its first wrong byte, not after 12).
        have = min(len(buffer), 4)
        if bytes(buffer[:have]) != MAGIC[:have]:
            raise ReplicationProtocolError(
                f"not a lifeline replication frame: expected magic {MAGIC!r}, found {bytes(buffer[:4])!r}")
        if len(buffer) >= 5 and buffer[4] != PROTOCOL_VERSION:
            raise ReplicationProtocolError(
                f"the peer speaks replication protocol version {buffer[4]}, this node speaks version "
                f"{PROTOCOL_VERSION}: upgrade both hosts of the pair to the same lifeline release")
        if len(buffer) < HEADER_SIZE:
            return None
        _magic, _version, type_code, flags, length = HEADER.unpack_from(buffer)
        try:
            frame_type = FrameType(type_code)
        except ValueError:
            raise ReplicationProtocolError(f"unknown frame type {type_code}") from None
        return frame_type, flags, length

    def _kind_name(self, kind: FrameType) -> str:
        return kind.name

    def _frame_name(self, kind: FrameType | None) -> str:
        return f"{kind.name} frame" if kind is not None else "frame"

    def _handshake_limit(self, kind: FrameType | None) -> int | None:
        limit = MAX_HANDSHAKE_BODY.get(kind) if kind is not None else None
        return None if limit is None else HEADER_SIZE + limit

    # ---------------------------------------------------------------- sending

    def _send_frame(self, event: Event) -> bytes:
        if isinstance(event, ConnectionClosed):
            raise LocalProtocolError("ConnectionClosed is not sent: close the stream")
        frame_type = _TYPE_OF.get(type(event))
        if frame_type is None:
            raise LocalProtocolError(f"cannot send {event!r}")
        old_state = self.state
        next_state = self._transition(self.our_role, frame_type)
        event = self._prepare_outgoing(event)
        body = encode_body(event)
        needs_mac = _needs_mac(old_state, frame_type)
        length = len(body) + (TRAILER_SIZE if needs_mac else 0)
        if HEADER_SIZE + length > self.max_frame:
            raise LocalProtocolError(
                f"{frame_type.name} frame would be {HEADER_SIZE + length} bytes, at most {self.max_frame}: "
                "split the batch (see split_batch)")
        header = HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, FLAG_MAC if needs_mac else 0, length)
        if isinstance(event, Hello):
            self._on_hello(body, event.nonce)
        data = b"".join((header, body, self._seal(header, body))) if needs_mac else header + body
        self.state = next_state
        return data

    def _prepare_outgoing(self, event: Event) -> Event:
        """``event`` with its nonce or proof filled in (the channel's handshake)."""
        if isinstance(event, Hello):
            if event.role != self.our_role:
                raise LocalProtocolError(f"HELLO says role {event.role} but we are the {self.our_role}")
            return Hello(event.node_id, event.role, event.epoch, event.last, event.software_version,
                         event.config_digest, self._nonce(event.nonce))
        if isinstance(event, Challenge):
            nonce = self._nonce(event.nonce)
            self._on_challenge(nonce)
            return Challenge(nonce)
        if isinstance(event, Auth):
            return Auth(self._our_proof())
        if isinstance(event, Welcome):
            return Welcome(event.node_id, event.epoch, event.last, event.software_version, event.config_digest,
                           self._our_proof())
        return event

    # ---------------------------------------------------------------- receiving

    def _receive_frame(self, kind: FrameType | None, flags: int, header: memoryview, rest: memoryview) -> Event:
        assert kind is not None  # the replication header always names its type
        old_state = self.state
        next_state = self._transition(self.their_role, kind)
        needs_mac = _needs_mac(old_state, kind)
        has_mac = bool(flags & FLAG_MAC)
        if needs_mac != has_mac:
            raise ReplicationProtocolError(
                f"{kind.name} frame {'without' if needs_mac else 'with'} a MAC in state {old_state.value}"
                + (" (a frame after authentication must be authenticated)" if needs_mac else ""))
        if has_mac:
            body = self._open(f"{kind.name} frame", header, rest,
                              " (the primary does not hold our key?)" if kind is FrameType.WELCOME else "")
        else:
            body = rest
        event = self._check_incoming(decode_body(kind, body), body)
        self.state = next_state
        return event

    def _check_incoming(self, event: Event, body: memoryview) -> Event:
        if isinstance(event, Hello):
            if event.role != "standby":
                raise ReplicationProtocolError(
                    f"HELLO from {event.node_id!r} says role {event.role}; only a standby connects to a primary")
            self._on_hello(body, event.nonce)
        elif isinstance(event, Challenge):
            self._on_challenge(event.nonce)
        elif isinstance(event, Auth):
            return Auth(event.proof, self._check_auth(event.proof))
        elif isinstance(event, Welcome):
            # The frame's MAC (same key) already checked out, so this only fails for a
            # primary that MACs with our key and proves with another: a broken peer.
            self._check_welcome(event.proof)
        return event


# --------------------------------------------------------------------------- helpers


def split_batch(records: Sequence[Record], max_frame: int = MAX_FRAME) -> list[list[Record]]:
    """``records`` cut into runs that each fit one RECORDS frame."""
    budget = max_frame - HEADER_SIZE - TRAILER_SIZE - 4
    batches: list[list[Record]] = []
    current: list[Record] = []
    size = 0
    for record in records:
        need = RECORD_OVERHEAD + len(record.payload)
        if current and size + need > budget:
            batches.append(current)
            current, size = [], 0
        current.append(record)
        size += need
    if current:
        batches.append(current)
    return batches


class CatchUpError(StandbyError):
    """The two journals share no point the primary can still serve (it has dropped the
    segments the standby would need): the standby must be re-seeded."""


EpochAt = Callable[[int], "int | None"]


def next_candidate(claim: Position, epoch_at: EpochAt, first_seq: int, last_seq: int) -> Position:
    """The catch-up rule, run by either side on the other's claim.

    ``claim`` says "the peer's record at ``claim.seq`` has epoch ``claim.epoch``";
    ``epoch_at``/``first_seq``/``last_seq`` describe *our* journal (``epoch_at`` may
    also know ``first_seq - 1``, the position just before the oldest retained record).
    Answers our largest position at or below the claim that could still be common: the
    largest seq ``k <= min(claim.seq, last_seq)`` with ``epoch_at(k) <= claim.epoch``,
    and its epoch. When that is ``claim`` itself, the two journals agree up to there.

    Why this converges on the common point: a seq and an epoch name one record (a primary
    of one epoch writes one history), and epochs never decrease along a journal, so if
    both journals hold the same (seq, epoch) they hold the same records up to it (Raft's
    log matching). The peer's records at or below ``claim.seq`` all have epochs
    ``<= claim.epoch``, so the common point is never above the answer; and each
    exchange lowers the seq or the epoch, so the two sides meet at the largest common
    point in at most two rounds per epoch between them. Position (0, 0) — the empty
    journal — is common to all.

    ``CatchUpError`` when the answer would lie below what our journal still knows (it
    dropped old segments): the peer must be re-seeded.
    """
    if claim.seq == 0:
        return Position(0, 0)
    high = min(claim.seq, last_seq)
    if high <= 0:
        return Position(0, 0)

    def known(seq: int) -> int | None:
        return 0 if seq == 0 else epoch_at(seq)

    low = max(first_seq - 1, 0)
    low_epoch = known(low)
    if low_epoch is None and low < first_seq:
        low, low_epoch = first_seq, known(first_seq)
    if low_epoch is None or high < low:
        raise CatchUpError(f"the common point is below seq {first_seq}, the oldest record still held")
    high_epoch = known(high)
    if high_epoch is None:
        raise CatchUpError(f"no epoch known for seq {high}")
    if high_epoch <= claim.epoch:
        return Position(high_epoch, high)
    if low_epoch > claim.epoch:
        raise CatchUpError(f"the common point is below seq {low}, the oldest position still known "
                           f"(epoch {low_epoch} there, the peer's is at most {claim.epoch})")
    lo, hi, best = low, high, low_epoch  # invariant: epoch(lo) <= claim.epoch < epoch(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        epoch_mid = known(mid)
        if epoch_mid is None:
            raise CatchUpError(f"no epoch known for seq {mid}")
        if epoch_mid <= claim.epoch:
            lo, best = mid, epoch_mid
        else:
            hi = mid
    return Position(best, lo)
