"""One authenticated channel, sans-IO: what replication and the lease witness share.

Both :mod:`daemon.standby.protocol` (the replication stream) and
:mod:`daemon.standby.witness_protocol` (the witness's requests) are payload codecs on top
of :class:`Channel`: each keeps its own frame header, message types and state table,
and this module holds the rest, once:

* **the handshake**, a pre-shared-key challenge/response. The side that connects (the
  *initiator*: the standby, the witness client) sends HELLO with its nonce; the other
  (the *responder*: the primary, the witness) answers CHALLENGE with its own; the
  initiator proves the key with AUTH, the responder with WELCOME (or says REJECT)::

      transcript = SHA-256(label | "transcript" | HELLO body as sent | nonce_r)
      proof(side) = HMAC(key, label | side | "-proof" | transcript)
      session_key = HMAC(key, label | "session" | nonce_i | nonce_r)

  The transcript binds every HELLO field (node and cluster names, positions) and both
  nonces, so a proof cannot be replayed into another session; the side's name in the
  proof stops reflection; the protocol's ``label`` keeps a proof or session made for one
  protocol from ever verifying in the other (they may share a key file by mistake).
  The witness codec also binds the cluster's name into the key itself
  (:func:`daemon.standby.witness_protocol.cluster_key`) before any of this.
* **per-direction MAC counters**: every authenticated frame ends with a trailer, an
  explicit counter (u64) and ``HMAC-SHA256(session_key, direction | counter | header |
  body)`` truncated to 16 bytes. A frame altered, injected, replayed, reordered or
  reflected (sent back to its sender) fails. Such a frame always has a body (an empty
  one is refused as too short).
* **frame caps that depend on the state**: the header is checked as soon as its bytes
  arrive, so an oversized length is refused before any of its body is buffered; before
  both sides have proved the key, a frame may be no larger than the handshake frame it
  claims to be (a stranger gets a hello-sized buffer, no more).
* **the connection skeleton**: the receive buffer, end of stream, the state table
  walk, sticky failure (after the first error every call raises again: the shell
  closes the socket), the figures.
* **a small error vocabulary**: :class:`~daemon.standby.ChannelError`, whose
  ``peer_fault`` says whose fault it is. The peer's (``True``: each codec's
  ``ReplicationProtocolError`` / ``WitnessProtocolError``) closes that connection and
  counts against the peer; ours (``False``: :class:`LocalProtocolError`) is a bug here.

Nothing here imports trio or does I/O (h11's model): feed bytes to
:meth:`Channel.receive_data` (``b""`` at end of stream), take events from
:meth:`Channel.next_event` until :data:`NEED_DATA`, write what :meth:`Channel.send`
returns.

A codec subclasses :class:`Channel`, gives its :class:`Suite` and :class:`StateTable`,
and implements the six hooks: :meth:`~Channel._read_header`,
:meth:`~Channel._kind_name`, :meth:`~Channel._frame_name`, :meth:`~Channel._handshake_limit`,
:meth:`~Channel._send_frame` and :meth:`~Channel._receive_frame`; those call the
handshake steps (:meth:`~Channel._on_hello` ... :meth:`~Channel._check_welcome`) and
:meth:`~Channel._seal` / :meth:`~Channel._open` at the right frames.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Final, Generic, Mapping, TypeVar

from daemon.standby import ChannelError

NONCE_SIZE: Final = 32
PROOF_SIZE: Final = 32
TAG_SIZE: Final = 16
#: The MAC trailer of an authenticated frame: counter u64, tag.
TRAILER = struct.Struct("!Q16s")
TRAILER_SIZE: Final = TRAILER.size  # 24
_U64 = struct.Struct("!Q")

__all__ = [
    "NEED_DATA", "NONCE_SIZE", "PROOF_SIZE", "TAG_SIZE", "TRAILER", "TRAILER_SIZE", "Channel", "ChannelError",
    "ConnectionClosed", "LocalProtocolError", "NeedData", "StateTable", "Suite", "derive_session_key", "proof",
    "transcript_digest", "verify_proof",
]


class LocalProtocolError(ChannelError):
    """This side tried to send something the protocol does not allow: a bug here, not
    the peer's fault. The connection is unusable afterwards, as after a remote error."""

    peer_fault = False


class NeedData:
    """The type of :data:`NEED_DATA` (one instance)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: :meth:`Channel.next_event` needs more bytes.
NEED_DATA: Final = NeedData()


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the stream at a frame boundary."""


# --------------------------------------------------------------------------- crypto


def derive_session_key(psk: bytes, nonce_initiator: bytes, nonce_responder: bytes, *, label: bytes) -> bytes:
    """The per-connection MAC key: fresh for every connection since both nonces are."""
    return hmac.digest(psk, label + b"session" + nonce_initiator + nonce_responder, "sha256")


def transcript_digest(hello_body: bytes, nonce_responder: bytes, *, label: bytes) -> bytes:
    """What both proofs sign: the initiator's HELLO exactly as sent (its nonce included)
    and the responder's challenge."""
    return hashlib.sha256(label + b"transcript" + hello_body + nonce_responder).digest()


def proof(psk: bytes, side: str, transcript: bytes, *, label: bytes) -> bytes:
    """``side``'s proof of holding ``psk``; the side's name stops reflection."""
    return hmac.digest(psk, label + side.encode() + b"-proof" + transcript, "sha256")


def verify_proof(psk: bytes, side: str, transcript: bytes, candidate: bytes, *, label: bytes) -> bool:
    return hmac.compare_digest(proof(psk, side, transcript, label=label), candidate)


@dataclass(frozen=True)
class Suite:
    """What tells one protocol on the channel from another."""

    #: Mixed into every hash: nothing signed for one protocol verifies in another.
    label: bytes
    #: The side that connects and sends HELLO and AUTH ("standby", "client").
    initiator: str
    #: The side that answers CHALLENGE and WELCOME or REJECT ("primary", "witness").
    responder: str
    #: The MAC's direction byte of each side's frames.
    initiator_direction: bytes
    responder_direction: bytes
    #: What a peer's fault raises (a :class:`ChannelError` with ``peer_fault``).
    peer_error: type[ChannelError]

    def other(self, side: str) -> str:
        return self.responder if side == self.initiator else self.initiator

    def direction(self, side: str) -> bytes:
        return self.initiator_direction if side == self.initiator else self.responder_direction


S = TypeVar("S", bound=enum.Enum)
K = TypeVar("K")
E = TypeVar("E")


@dataclass(frozen=True)
class StateTable(Generic[S, K]):
    """A codec's states and its transition table: ``(state, sender, kind) -> next``;
    anything not in ``transitions`` is a protocol violation (h11's ``_state.py``)."""

    transitions: Mapping[tuple[S, str, K], S]
    start: S
    closed: S
    broken: S
    #: Before both sides proved the key: frames are capped by the codec's handshake limits.
    handshake: frozenset[S]


# --------------------------------------------------------------------------- the channel


class Channel(Generic[S, K, E]):
    """One end of one authenticated connection: the skeleton a codec fills in.

    ``our_side`` is the suite's initiator or responder; ``key`` the pre-shared key
    (a codec may bind it later, before the handshake needs it: ``self._key``).
    ``max_frame`` caps a frame's announced size (:meth:`_frame_size`)."""

    #: The frame header's size; the header alone tells a frame's kind (or None), flags and length.
    HEADER_SIZE: int
    #: True: a frame's announced size counts the header (replication); False: only what follows it.
    SIZE_COUNTS_HEADER: bool = False
    #: The smallest length a header may announce.
    MIN_LENGTH: int = 0
    #: The flag bits a header may carry; any other is the peer's error.
    ALLOWED_FLAGS: int = 0

    def __init__(self, suite: Suite, table: StateTable[S, K], our_side: str, key: bytes, *, max_frame: int) -> None:
        if our_side not in (suite.initiator, suite.responder):
            raise ValueError(f"our side must be {suite.initiator!r} or {suite.responder!r}, found {our_side!r}")
        self.suite = suite
        self.table = table
        self.our_side = our_side
        self.their_side = suite.other(our_side)
        self.max_frame = max_frame
        self._key = key
        self.state: S = table.start
        #: Why the connection broke (the first error), once it has, and in which state.
        self.error: ChannelError | None = None
        self.failed_in: S | None = None
        #: The responder: True once the initiator's AUTH checked out.
        self.peer_verified = False
        self._buffer = bytearray()
        self._eof = False
        self._pending_header: tuple[K | None, int, int] | None = None  # kind, flags, length
        self._hello_body: bytes | None = None
        self._nonce_initiator: bytes | None = None
        self._nonce_responder: bytes | None = None
        self._transcript: bytes | None = None
        self._session_key: bytes | None = None
        self._mac_base: hmac.HMAC | None = None
        self._our_direction = suite.direction(our_side)
        self._their_direction = suite.direction(self.their_side)
        self._send_counter = 0
        self._receive_counter = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # ---------------------------------------------------------------- the codec's hooks

    def _read_header(self, buffer: bytearray) -> tuple[K | None, int, int] | None:
        """The (kind or None, flags, length after the header) of the frame at the head of
        ``buffer``, None until the whole header is there. Raises the peer's error on a
        wrong byte as soon as it arrives (a magic, a version, an unknown kind)."""
        raise NotImplementedError

    def _frame_name(self, kind: K | None) -> str:
        """How messages name a frame of ``kind``: "RECORDS frame", "frame"."""
        raise NotImplementedError

    def _kind_name(self, kind: K) -> str:
        """How messages name a kind of frame: "RECORDS", "MESSAGE"."""
        raise NotImplementedError

    def _handshake_limit(self, kind: K | None) -> int | None:
        """The largest size (as :meth:`_frame_size` counts) a frame of ``kind`` may have
        before authentication; None if ``kind`` is no handshake frame."""
        raise NotImplementedError

    def _send_frame(self, event: E) -> bytes:
        """``event`` as one frame; moves the state. Raises :class:`ChannelError`."""
        raise NotImplementedError

    def _receive_frame(self, kind: K | None, flags: int, header: memoryview, rest: memoryview) -> E:
        """The event in one whole frame from the peer; moves the state. Raises :class:`ChannelError`."""
        raise NotImplementedError

    # ---------------------------------------------------------------- state

    def _fail(self, error: ChannelError) -> ChannelError:
        if self.error is None:
            self.error = error
            self.failed_in = self.state
        self.state = self.table.broken
        return error

    def _check_usable(self) -> None:
        if self.state is self.table.broken:
            raise self.suite.peer_error(f"the connection is broken: {self.error}")

    def _peer_error(self, message: str) -> ChannelError:
        return self.suite.peer_error(message)

    def _transition(self, sender: str, kind: K) -> S:
        """The state after ``sender``'s frame of ``kind``; breaks the connection if the
        table has no such move (ours: a :class:`LocalProtocolError`)."""
        next_state = self.table.transitions.get((self.state, sender, kind))
        if next_state is None:
            message = (f"can't handle {self._kind_name(kind)} from the {sender} in state {self.state.value} "
                       f"(we are the {self.our_side})")
            raise self._fail(LocalProtocolError(message) if sender == self.our_side else self._peer_error(message))
        return next_state

    def _frame_size(self, length: int) -> int:
        return length + (self.HEADER_SIZE if self.SIZE_COUNTS_HEADER else 0)

    # ---------------------------------------------------------------- the handshake

    @staticmethod
    def _nonce(given: bytes) -> bytes:
        return given or secrets.token_bytes(NONCE_SIZE)

    def _on_hello(self, body: bytes | memoryview, nonce: bytes) -> None:
        """HELLO sent or received: its body exactly as on the wire, and its nonce."""
        self._hello_body = bytes(body)
        self._nonce_initiator = nonce

    def _on_challenge(self, nonce: bytes) -> None:
        """CHALLENGE sent or received: the transcript both proofs sign. The initiator,
        which proves next and MACs from then on, starts its session here."""
        assert self._hello_body is not None, "CHALLENGE before HELLO (the state table forbids it)"
        self._nonce_responder = nonce
        self._transcript = transcript_digest(self._hello_body, nonce, label=self.suite.label)
        if self.our_side == self.suite.initiator:
            self._set_session()

    def _our_proof(self) -> bytes:
        """Our proof of the key over the transcript (AUTH or WELCOME)."""
        assert self._transcript is not None
        if self.our_side == self.suite.responder and not self.peer_verified:
            raise LocalProtocolError(f"WELCOME to a {self.their_side} whose AUTH did not verify: send Reject")
        return proof(self._key, self.our_side, self._transcript, label=self.suite.label)

    def _check_auth(self, candidate: bytes) -> bool:
        """The responder: the initiator's AUTH. Starts the session if it verifies; if
        not, the codec's shell answers REJECT (and nothing else)."""
        assert self._transcript is not None
        self.peer_verified = verify_proof(self._key, self.their_side, self._transcript, candidate,
                                          label=self.suite.label)
        if self.peer_verified:
            self._set_session()
        return self.peer_verified

    def _check_welcome(self, candidate: bytes) -> None:
        """The initiator: the responder's proof in WELCOME; the peer's error if it fails."""
        assert self._transcript is not None
        if not verify_proof(self._key, self.their_side, self._transcript, candidate, label=self.suite.label):
            raise self._peer_error(f"the {self.their_side}'s proof does not verify: it does not hold our key")

    def _set_session(self) -> None:
        assert self._nonce_initiator is not None and self._nonce_responder is not None
        self._session_key = derive_session_key(self._key, self._nonce_initiator, self._nonce_responder,
                                               label=self.suite.label)
        self._mac_base = hmac.new(self._session_key, digestmod="sha256")

    # ---------------------------------------------------------------- MAC

    def _mac(self, direction: bytes, counter: int, header: bytes | memoryview, body: bytes | memoryview) -> bytes:
        assert self._mac_base is not None
        mac = self._mac_base.copy()
        mac.update(direction)
        mac.update(_U64.pack(counter))
        mac.update(header)
        mac.update(body)
        return mac.digest()[:TAG_SIZE]

    def _seal(self, header: bytes, body: bytes) -> bytes:
        """The MAC trailer of our next frame (``header`` as the codec MACs it)."""
        if self._mac_base is None:
            raise LocalProtocolError("an authenticated frame before the session key exists")
        if not body:
            raise LocalProtocolError("an authenticated frame needs a body")
        counter = self._send_counter
        self._send_counter += 1
        return TRAILER.pack(counter, self._mac(self._our_direction, counter, header, body))

    def _open(self, what: str, header: bytes | memoryview, rest: memoryview, hint: str = "") -> memoryview:
        """The body of the peer's authenticated frame ``rest`` (body and trailer), once
        its MAC and counter check out; the peer's error otherwise."""
        if len(rest) <= TRAILER_SIZE:
            raise self._peer_error(f"{what} too short for its MAC trailer")
        if self._mac_base is None:
            raise self._peer_error(f"{what} with a MAC before the session key exists")
        split = len(rest) - TRAILER_SIZE
        body = rest[:split]
        counter, tag = TRAILER.unpack(rest[split:])
        if not hmac.compare_digest(self._mac(self._their_direction, counter, header, body), tag):
            raise self._peer_error(
                f"{what} fails its MAC: altered in transit, injected, reflected, or sent with another key{hint}")
        if counter != self._receive_counter:
            kind = "replayed" if counter < self._receive_counter else "out-of-order"
            raise self._peer_error(f"{kind} {what}: counter {counter}, expected {self._receive_counter}")
        self._receive_counter += 1
        return body

    # ---------------------------------------------------------------- sending

    def send(self, event: E) -> bytes:
        """The bytes of ``event`` as one frame. Fills in nonces and proofs, moves the
        state. :class:`LocalProtocolError` if ``event`` is not ours to send now."""
        self._check_usable()
        try:
            data = self._send_frame(event)
        except ChannelError as exc:
            raise self._fail(exc) from None
        self.frames_sent += 1
        self.bytes_sent += len(data)
        return data

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; ``b""`` means it closed its end. The header of the frame
        at the head of the buffer is checked at once, so a bad header or an oversized
        length is refused before its body is buffered."""
        self._check_usable()
        if self._eof:
            if data:
                raise self._fail(self._peer_error("data received after end of stream"))
            return
        if not data:
            self._eof = True
            return
        self.bytes_received += len(data)
        if self.state is self.table.closed:
            return  # after REJECT (or a codec's ERROR) the rest is ignored, and not kept
        self._buffer += data
        if self._pending_header is None:
            self._parse_header()

    def _parse_header(self) -> None:
        try:
            parsed = self._read_header(self._buffer)
        except ChannelError as exc:
            raise self._fail(exc) from None
        if parsed is None:
            return
        kind, flags, length = parsed
        size = self._frame_size(length)
        if size > self.max_frame:
            raise self._fail(self._peer_error(
                f"{self._frame_name(kind)} of {size} bytes announced, at most {self.max_frame}"))
        if length < self.MIN_LENGTH:
            raise self._fail(self._peer_error(
                f"{self._frame_name(kind)} of {size} bytes announced, at least {self._frame_size(self.MIN_LENGTH)}"))
        if self.state in self.table.handshake:
            # A peer that has not proved the key gets a hello-sized buffer, no more.
            limit = self._handshake_limit(kind)
            if limit is None:  # not a handshake frame: refused now, before its body
                assert kind is not None
                self._transition(self.their_side, kind)
                raise self._fail(self._peer_error(  # pragma: no cover - the tables have none
                    f"{self._frame_name(kind)} before authentication (state {self.state.value})"))
            if size > limit:
                raise self._fail(self._peer_error(
                    f"{self._frame_name(kind)} of {size} bytes announced before authentication, at most {limit}"))
        if flags & ~self.ALLOWED_FLAGS:
            raise self._fail(self._peer_error(f"{self._frame_name(kind)} with unknown flags 0x{flags:04x}"))
        self._pending_header = (kind, flags, length)

    def next_event(self) -> E | ConnectionClosed | NeedData:
        """The next event from the peer, :class:`ConnectionClosed` at its clean end of
        stream, or :data:`NEED_DATA`."""
        self._check_usable()
        if self.state is self.table.closed:
            # After REJECT (or a codec's ERROR) the peer has nothing more to say; ignore the rest.
            return ConnectionClosed() if self._eof else NEED_DATA
        if self._pending_header is None:
            self._parse_header()
        if self._pending_header is None:
            if self._eof:
                if self._buffer:
                    raise self._fail(self._peer_error(
                        f"connection closed in the middle of a frame header ({len(self._buffer)} of "
                        f"{self.HEADER_SIZE} bytes)"))
                self.state = self.table.closed
                return ConnectionClosed()
            return NEED_DATA
        kind, flags, length = self._pending_header
        total = self.HEADER_SIZE + length
        if len(self._buffer) < total:
            if self._eof:
                raise self._fail(self._peer_error(
                    f"connection closed in the middle of a {self._frame_name(kind)} ({len(self._buffer)} of "
                    f"{total} bytes)"))
            return NEED_DATA
        # One copy out of the buffer, so no view pins it while it is trimmed.
        frame = memoryview(self._buffer[:total])
        del self._buffer[:total]
        try:
            event = self._receive_frame(kind, flags, frame[:self.HEADER_SIZE], frame[self.HEADER_SIZE:])
        except ChannelError as exc:
            raise self._fail(exc) from None
        self._pending_header = None
        self.frames_received += 1
        if self.state is self.table.closed:
            self._buffer.clear()  # after REJECT (or ERROR) the peer has nothing more to say
        elif self._buffer:
            self._parse_header()
        return event
