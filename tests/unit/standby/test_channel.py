"""The authenticated channel (daemon.standby.channel), sans-IO: the handshake, the
per-direction MACs, the state-dependent frame caps and the error vocabulary.

A toy codec of a few lines drives the channel alone; the properties (any split of a
stream decodes the same, any tampered byte is the peer's fault, an oversized frame
before authentication is refused before its body is buffered) are checked on it and
on both real codecs, replication and the witness."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.standby import ChannelError, Position, Record, ReplicationProtocolError
from daemon.standby import protocol as rp
from daemon.standby import witness_protocol as wp
from daemon.standby.channel import (
    NEED_DATA,
    NONCE_SIZE,
    TRAILER_SIZE,
    Channel,
    ConnectionClosed,
    LocalProtocolError,
    StateTable,
    Suite,
    derive_session_key,
    proof,
    transcript_digest,
    verify_proof,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# =========================================================================== a toy codec


class Kind(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    REJECT = 5
    DATA = 6


class St(enum.Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_AUTH = "await-auth"
    AWAIT_VERDICT = "await-verdict"
    OPEN = "open"
    CLOSED = "closed"
    BROKEN = "broken"


class ToyError(ChannelError):
    """The toy peer's fault."""


TOY = Suite(label=b"toy-v1 ", initiator="client", responder="server", initiator_direction=b"c",
            responder_direction=b"s", peer_error=ToyError)
TABLE = StateTable(
    {(St.AWAIT_HELLO, "client", Kind.HELLO): St.AWAIT_CHALLENGE,
     (St.AWAIT_CHALLENGE, "server", Kind.CHALLENGE): St.AWAIT_AUTH,
     (St.AWAIT_AUTH, "client", Kind.AUTH): St.AWAIT_VERDICT,
     (St.AWAIT_VERDICT, "server", Kind.WELCOME): St.OPEN,
     (St.AWAIT_VERDICT, "server", Kind.REJECT): St.CLOSED,
     (St.OPEN, "client", Kind.DATA): St.OPEN,
     (St.OPEN, "server", Kind.DATA): St.OPEN},
    start=St.AWAIT_HELLO, closed=St.CLOSED, broken=St.BROKEN,
    handshake=frozenset({St.AWAIT_HELLO, St.AWAIT_CHALLENGE, St.AWAIT_AUTH, St.AWAIT_VERDICT}))
HEADER = struct.Struct("!BBH")  # kind, flags (1: sealed), length after the header
LIMITS = {Kind.HELLO: 4 + 64, Kind.CHALLENGE: 4 + NONCE_SIZE, Kind.AUTH: 4 + 32, Kind.WELCOME: 4 + 32,
          Kind.REJECT: 4 + 64}


@dataclass(frozen=True)
class Frame:
    kind: Kind
    body: bytes = b""
    verified: bool = False


class Toy(Channel[St, Kind, Frame]):
    HEADER_SIZE = HEADER.size
    SIZE_COUNTS_HEADER = True
    ALLOWED_FLAGS = 1

    def __init__(self, side: str, key: bytes = KEY, max_frame: int = 4096) -> None:
        super().__init__(TOY, TABLE, side, key, max_frame=max_frame)

    def _read_header(self, buffer: bytearray) -> tuple[Kind, int, int] | None:
        if buffer and buffer[0] not in Kind._value2member_map_:
            raise ToyError(f"unknown kind {buffer[0]}")
        if len(buffer) < HEADER.size:
            return None
        kind, flags, length = HEADER.unpack_from(buffer)
        return Kind(kind), flags, length

    def _kind_name(self, kind: Kind) -> str:
        return kind.name

    def _frame_name(self, kind: Kind | None) -> str:
        assert kind is not None
        return f"{kind.name} frame"

    def _handshake_limit(self, kind: Kind | None) -> int | None:
        assert kind is not None
        return LIMITS.get(kind)

    def _send_frame(self, event: Frame) -> bytes:
        next_state = self._transition(self.our_side, event.kind)
        body = event.body
        if event.kind is Kind.HELLO:
            body = self._nonce(b"") + event.body
        elif event.kind is Kind.CHALLENGE:
            body = self._nonce(b"")
            self._on_challenge(body)
        elif event.kind in (Kind.AUTH, Kind.WELCOME):
            body = self._our_proof()
        sealed = event.kind is Kind.DATA
        header = HEADER.pack(event.kind, int(sealed), len(body) + TRAILER_SIZE * sealed)
        if event.kind is Kind.HELLO:
            self._on_hello(body, body[:NONCE_SIZE])
        self.state = next_state
        return header + body + (self._seal(header, body) if sealed else b"")

    def _receive_frame(self, kind: Kind | None, flags: int, header: memoryview, rest: memoryview) -> Frame:
        assert kind is not None
        next_state = self._transition(self.their_side, kind)
        body, verified = bytes(rest), False
        if kind is Kind.DATA:
            if not flags & 1:
                raise ToyError("DATA frame without a MAC")
            body = bytes(self._open("DATA frame", header, rest))
        elif kind is Kind.HELLO:
            self._on_hello(rest, body[:NONCE_SIZE])
        elif kind is Kind.CHALLENGE:
            self._on_challenge(body)
        elif kind is Kind.AUTH:
            verified = self._check_auth(body)
        elif kind is Kind.WELCOME:
            self._check_welcome(body)
        self.state = next_state
        return Frame(kind, body, verified)


def deliver(data: bytes, to: Channel[Any, Any, Any]) -> Any:
    to.receive_data(data)
    return to.next_event()


def toy_open(client_key: bytes = KEY) -> tuple[Toy, Toy]:
    client, server = Toy("client", client_key), Toy("server")
    deliver(client.send(Frame(Kind.HELLO, b"edge-a")), server)
    deliver(server.send(Frame(Kind.CHALLENGE)), client)
    auth = deliver(client.send(Frame(Kind.AUTH)), server)
    if auth.verified:
        assert isinstance(deliver(server.send(Frame(Kind.WELCOME)), client), Frame)
    return client, server


# =========================================================================== the three codecs, alike


@dataclass
class Codec:
    """One codec's pair after its handshake and a way to make payload frames."""

    name: str
    open_pair: Callable[[], tuple[Any, Any]]  # (sender, receiver), authenticated
    payload: Callable[[Any, int], Any]  # the sender's i-th payload event
    same: Callable[[Any], Any]  # what must come out equal
    reply: Callable[[int], Any]  # the receiver's i-th payload event back (the other direction)


def _replication_pair() -> tuple[rp.ReplicationConnection, rp.ReplicationConnection]:
    primary, standby = rp.ReplicationConnection("primary", KEY), rp.ReplicationConnection("standby", KEY)
    deliver(standby.send(rp.Hello("edge-b", "standby", 1, Position(1, 0), "v", b"d")), primary)
    deliver(primary.send(rp.Challenge()), standby)
    assert deliver(standby.send(rp.Auth()), primary).verified
    deliver(primary.send(rp.Welcome("edge-a", 1, Position(1, 0), "v", b"d")), standby)
    return primary, standby


def _witness_pair() -> tuple[wp.WitnessConnection, wp.WitnessConnection]:
    client, witness = wp.WitnessConnection("client", KEY), wp.WitnessConnection("witness", KEY)
    deliver(client.send(wp.Hello("edge-a", "lifeline")), witness)
    deliver(witness.send(wp.Challenge()), client)
    assert deliver(client.send(wp.Auth()), witness).verified
    deliver(witness.send(wp.Welcome()), client)
    return client, witness


CODECS = [
    Codec("toy", toy_open, lambda _c, i: Frame(Kind.DATA, b"x" * (i + 1)), lambda e: (e.kind, e.body),
          lambda i: Frame(Kind.DATA, b"back" * i + b"!")),
    Codec("replication", _replication_pair,
          lambda _c, i: rp.Records((Record(i + 1, 1, i, b"r" * i),)) if i % 2 else rp.Heartbeat(i, i, b"c", b"v"),
          lambda e: e, lambda i: rp.Heartbeat(i, i, b"c", b"v")),
    Codec("witness", _witness_pair, lambda _c, i: wp.Message({"op": "read", "id": i, "pad": "p" * i}),
          lambda e: e.body, lambda i: wp.Message({"id": i, "ok": True})),
]
codecs = pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])


def drain(conn: Any) -> list[Any]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


@codecs
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 97), max_size=40), count=st.integers(1, 8))
def test_any_split_of_a_valid_stream_decodes_the_same(codec: Codec, cuts: list[int], count: int) -> None:
    sender, receiver = codec.open_pair()
    events = [codec.payload(sender, i) for i in range(count)]
    stream = b"".join(sender.send(event) for event in events)
    got: list[Any] = []
    position = 0
    for size in cuts + [len(stream)]:
        chunk = stream[position:position + size]
        if not chunk:
            break
        receiver.receive_data(chunk)
        position += len(chunk)
        got += drain(receiver)
    receiver.receive_data(b"")
    got += drain(receiver)
    assert [codec.same(e) for e in got[:-1]] == [codec.same(e) for e in events]
    assert isinstance(got[-1], ConnectionClosed)


@codecs
@settings(max_examples=150, deadline=None)
@given(data=st.data(), flip=st.integers(1, 255))
def test_a_tampered_byte_anywhere_is_the_peers_fault(codec: Codec, data: st.DataObject, flip: int) -> None:
    sender, receiver = codec.open_pair()
    before = receiver.state
    frame = bytearray(sender.send(codec.payload(sender, 5)))
    where = data.draw(st.integers(0, len(frame) - 1), label="where")
    frame[where] ^= flip
    with pytest.raises(ChannelError) as info:
        receiver.receive_data(bytes(frame))
        receiver.receive_data(b"")  # a length made larger waits for bytes that never come
        drain(receiver)
    assert info.value.peer_fault
    assert receiver.state is receiver.table.broken and receiver.failed_in is before
    with pytest.raises(ChannelError, match="the connection is broken"):
        receiver.next_event()


@codecs
def test_per_direction_counters_are_independent_and_reflection_fails(codec: Codec) -> None:
    sender, receiver = codec.open_pair()
    for i in range(3):  # interleaved both ways: each direction counts its own frames
        assert codec.same(deliver(sender.send(codec.payload(sender, i)), receiver)) == \
            codec.same(codec.payload(sender, i))
        back = codec.reply(i)
        assert codec.same(deliver(receiver.send(back), sender)) == codec.same(back)
    mine = sender.send(codec.payload(sender, 6))
    with pytest.raises(ChannelError, match="fails its MAC") as info:
        deliver(mine, sender)  # our own frame back: same session key, other direction
    assert info.value.peer_fault


@codecs
def test_replayed_and_reordered_frames_are_the_peers_fault(codec: Codec) -> None:
    sender, receiver = codec.open_pair()
    first, second = sender.send(codec.payload(sender, 1)), sender.send(codec.payload(sender, 2))
    with pytest.raises(ChannelError, match=r"out-of-order .*: counter (\d+), expected") as info:
        deliver(second + first, receiver)
    assert info.value.peer_fault
    sender, receiver = codec.open_pair()
    first = sender.send(codec.payload(sender, 1))
    deliver(first, receiver)
    with pytest.raises(ChannelError, match=r"replayed .*: counter (\d+), expected"):
        deliver(first, receiver)


# =========================================================================== the caps


@pytest.mark.parametrize("kind", list(LIMITS))
@settings(max_examples=40, deadline=None)
@given(excess=st.integers(1, 2**16 - 72))
def test_an_oversized_handshake_frame_is_refused_before_its_body_is_buffered(kind: Kind, excess: int) -> None:
    receiver = Toy("server" if kind in (Kind.HELLO, Kind.AUTH) else "client")
    size = LIMITS[kind] + excess
    header = HEADER.pack(kind, 0, size - HEADER.size)
    problem = ("announced before authentication, at most " + str(LIMITS[kind]) if size <= receiver.max_frame
               else f"announced, at most {receiver.max_frame}")
    with pytest.raises(ToyError, match=f"{kind.name} frame of {size} bytes {problem}") as info:
        receiver.receive_data(header + b"\x00")
    assert info.value.peer_fault
    assert len(receiver._buffer) == HEADER.size + 1  # the header and the byte with it, no more awaited


@pytest.mark.parametrize("kind", list(LIMITS))
def test_a_handshake_frame_of_exactly_its_limit_is_buffered(kind: Kind) -> None:
    receiver = Toy("server" if kind in (Kind.HELLO, Kind.AUTH) else "client")
    receiver.receive_data(HEADER.pack(kind, 0, LIMITS[kind] - HEADER.size))
    assert receiver.next_event() is NEED_DATA and receiver.state is St.AWAIT_HELLO


def test_a_payload_frame_before_authentication_is_refused_by_its_header() -> None:
    server = Toy("server")
    with pytest.raises(ToyError, match="can't handle DATA from the client in state await-hello"):
        server.receive_data(HEADER.pack(Kind.DATA, 1, 100))
    assert len(server._buffer) == HEADER.size


def test_after_authentication_the_cap_is_max_frame() -> None:
    client, server = toy_open()
    server.receive_data(HEADER.pack(Kind.DATA, 1, 4096 - HEADER.size))
    assert server.next_event() is NEED_DATA
    client, server = toy_open()
    with pytest.raises(ToyError, match="DATA frame of 4097 bytes announced, at most 4096"):
        server.receive_data(HEADER.pack(Kind.DATA, 1, 4097 - HEADER.size))


@pytest.mark.parametrize("data, problem", [
    (rp.HEADER.pack(rp.MAGIC, rp.PROTOCOL_VERSION, rp.FrameType.HELLO, 0,
                    rp.MAX_HANDSHAKE_BODY[rp.FrameType.HELLO] + 1), "announced before authentication"),
    (rp.HEADER.pack(rp.MAGIC, rp.PROTOCOL_VERSION, rp.FrameType.RECORDS, 0, 10), "can't handle RECORDS"),
])
def test_replication_caps_a_stranger_at_a_hello(data: bytes, problem: str) -> None:
    primary = rp.ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match=problem) as info:
        primary.receive_data(data)
    assert info.value.peer_fault and len(primary._buffer) == rp.HEADER_SIZE


def test_the_witness_caps_a_stranger_at_a_hello() -> None:
    witness = wp.WitnessConnection("witness", KEY)
    with pytest.raises(wp.WitnessProtocolError, match="announced before authentication") as info:
        witness.receive_data(wp.LENGTH.pack(wp.MAX_HANDSHAKE_FRAME + 1))
    assert info.value.peer_fault and len(witness._buffer) == wp.LENGTH.size


def test_unknown_flags_and_kinds_are_the_peers_fault() -> None:
    server = Toy("server")
    with pytest.raises(ToyError, match="HELLO frame with unknown flags 0x0002"):
        server.receive_data(HEADER.pack(Kind.HELLO, 2, 10))
    with pytest.raises(ToyError, match="unknown kind 99"):
        Toy("server").receive_data(b"\x63")


# =========================================================================== the handshake


def test_both_sides_prove_the_key_and_share_a_session() -> None:
    client, server = toy_open()
    assert server.peer_verified and client.state is St.OPEN and server.state is St.OPEN
    assert client._session_key == server._session_key is not None
    assert client._nonce_initiator == server._nonce_initiator and client._transcript == server._transcript


def test_a_wrong_key_gets_a_reject_and_nothing_else() -> None:
    client, server = toy_open(client_key=OTHER_KEY)
    assert not server.peer_verified and server._session_key is None
    with pytest.raises(LocalProtocolError, match="WELCOME to a client whose AUTH did not verify") as info:
        server.send(Frame(Kind.WELCOME))
    assert not info.value.peer_fault
    client, server = toy_open(client_key=OTHER_KEY)
    client.receive_data(server.send(Frame(Kind.REJECT, b"wrong key")) + b"\xff" * 10_000)
    assert client.next_event() == Frame(Kind.REJECT, b"wrong key")
    assert client.state is St.CLOSED and client.next_event() is NEED_DATA
    client.receive_data(b"\xff" * 10_000)  # whatever follows a REJECT is ignored, and not kept
    assert not client._buffer
    client.receive_data(b"")
    assert isinstance(client.next_event(), ConnectionClosed)


def test_a_responder_without_our_key_cannot_welcome_us() -> None:
    client, server = Toy("client"), Toy("server", OTHER_KEY)
    deliver(client.send(Frame(Kind.HELLO)), server)
    deliver(server.send(Frame(Kind.CHALLENGE)), client)
    deliver(client.send(Frame(Kind.AUTH)), server)
    server.peer_verified = True  # a server that welcomes anyone
    with pytest.raises(ToyError, match="the server's proof does not verify") as info:
        deliver(server.send(Frame(Kind.WELCOME)), client)
    assert info.value.peer_fault and client.failed_in is St.AWAIT_VERDICT


def test_the_transcript_binds_the_hello() -> None:
    """A proof made over one HELLO (one node name) does not verify over another."""
    assert transcript_digest(b"hello a", b"n" * 32, label=b"x") != transcript_digest(b"hello b", b"n" * 32, label=b"x")
    transcript = transcript_digest(b"hello a", b"n" * 32, label=b"x")
    made = proof(KEY, "client", transcript, label=b"x")
    assert verify_proof(KEY, "client", transcript, made, label=b"x")
    assert not verify_proof(KEY, "server", transcript, made, label=b"x")  # no reflection
    assert not verify_proof(KEY, "client", transcript, made, label=b"y")  # no crossing protocols
    assert not verify_proof(OTHER_KEY, "client", transcript, made, label=b"x")
    assert derive_session_key(KEY, b"a" * 32, b"b" * 32, label=b"x") != \
        derive_session_key(KEY, b"b" * 32, b"a" * 32, label=b"x")


def test_out_of_turn_is_ours_or_theirs() -> None:
    client = Toy("client")
    with pytest.raises(LocalProtocolError, match="can't handle DATA from the client in state await-hello") as info:
        client.send(Frame(Kind.DATA))
    assert not info.value.peer_fault and client.state is St.BROKEN
    with pytest.raises(ToyError, match="broken"):
        client.send(Frame(Kind.HELLO))
    server = Toy("server")
    with pytest.raises(ToyError, match="can't handle CHALLENGE from the client in state await-hello") as peer:
        deliver(HEADER.pack(Kind.CHALLENGE, 0, NONCE_SIZE) + b"n" * NONCE_SIZE, server)
    assert peer.value.peer_fault
    with pytest.raises(ValueError, match="'client' or 'server'"):
        Toy("primary")


def test_end_of_stream_in_a_header_in_a_frame_and_after() -> None:
    server = Toy("server")
    server.receive_data(b"\x01\x00")
    server.receive_data(b"")
    with pytest.raises(ToyError, match=r"closed in the middle of a frame header \(2 of 4 bytes\)"):
        server.next_event()
    server = Toy("server")
    server.receive_data(HEADER.pack(Kind.HELLO, 0, 40) + b"n" * 10)
    server.receive_data(b"")
    with pytest.raises(ToyError, match=r"closed in the middle of a HELLO frame \(14 of 44 bytes\)"):
        server.next_event()
    server = Toy("server")
    server.receive_data(b"")
    with pytest.raises(ToyError, match="after end of stream"):
        server.receive_data(b"x")


def test_the_figures_count_frames_and_bytes() -> None:
    client, server = toy_open()
    data = client.send(Frame(Kind.DATA, b"abc"))
    deliver(data, server)
    assert client.frames_sent == 3 and server.frames_received == 3
    assert server.bytes_received == client.bytes_sent and len(data) == HEADER.size + 3 + TRAILER_SIZE
