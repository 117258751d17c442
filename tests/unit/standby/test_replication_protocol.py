"""The replication codec (daemon.standby.protocol) and the key file (daemon.standby.keys),
without any I/O: two connection objects joined by hand, h11 style."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.standby import MAX_PAYLOAD, Position, Record, ReplicationProtocolError
from daemon.standby.keys import KeyFileError, generate_replication_key, load_replication_key
from daemon.standby.protocol import (
    FLAG_MAC,
    MAX_HANDSHAKE_BODY,
    MAX_NAME,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME,
    NEED_DATA,
    PROTOCOL_VERSION,
    TRANSITIONS,
    Ack,
    Auth,
    CatchUpError,
    Challenge,
    ConnectionClosed,
    Error,
    FrameType,
    Heartbeat,
    Hello,
    LocalProtocolError,
    PositionReport,
    Records,
    Reject,
    ReplicationConnection,
    State,
    Truncate,
    Welcome,
    decode_body,
    derive_session_key,
    encode_body,
    next_candidate,
    proof,
    split_batch,
    transcript_digest,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
DIGEST = b"\x11" * 32


def hello(**overrides: Any) -> Hello:
    fields: dict[str, Any] = dict(node_id="edge-b", role="standby", epoch=3, last=Position(3, 1200),
                                  software_version="lifeline 0.1.0", config_digest=DIGEST)
    fields.update(overrides)
    return Hello(**fields)


def welcome() -> Welcome:
    return Welcome(node_id="edge-a", epoch=4, last=Position(4, 1500), software_version="lifeline 0.1.0",
                   config_digest=DIGEST)


def records(first: int, count: int, epoch: int = 4, size: int = 10) -> list[Record]:
    return [Record(seq, epoch, 1_700_000_000_000_000_000 + seq, bytes([seq % 251]) * size)
            for seq in range(first, first + count)]


def drain(conn: ReplicationConnection) -> list[Any]:
    out: list[Any] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return out


def deliver(data: bytes, to: ReplicationConnection) -> list[Any]:
    to.receive_data(data)
    return drain(to)


def handshake(key_standby: bytes = KEY, key_primary: bytes = KEY) -> tuple[ReplicationConnection, ReplicationConnection]:
    """A primary and a standby, authenticated and agreed; answers (primary, standby)."""
    primary = ReplicationConnection("primary", key_primary)
    standby = ReplicationConnection("standby", key_standby)
    [got_hello] = deliver(standby.send(hello()), primary)
    assert isinstance(got_hello, Hello) and got_hello.node_id == "edge-b" and len(got_hello.nonce) == 32
    [challenge] = deliver(primary.send(Challenge()), standby)
    assert isinstance(challenge, Challenge) and len(challenge.nonce) == 32
    [auth] = deliver(standby.send(Auth()), primary)
    assert isinstance(auth, Auth) and auth.verified
    [got_welcome] = deliver(primary.send(welcome()), standby)
    assert isinstance(got_welcome, Welcome) and got_welcome.node_id == "edge-a"
    assert primary.state is standby.state is State.SYNCING
    assert primary.authenticated and standby.authenticated
    return primary, standby


def streaming() -> tuple[ReplicationConnection, ReplicationConnection]:
    primary, standby = handshake()
    deliver(primary.send(Heartbeat(1, 1500, DIGEST, DIGEST)), standby)
    assert primary.state is standby.state is State.STREAMING
    return primary, standby


def conversation() -> tuple[list[tuple[str, bytes]], list[Any]]:
    """A whole conversation as (direction, bytes) chunks, and the events each side saw."""
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", KEY)
    script: list[tuple[str, Any]] = [
        ("s", hello()), ("p", Challenge()), ("s", Auth()), ("p", welcome()),
        ("p", Truncate(Position(3, 1100), "your tail is not mine")),
        ("s", PositionReport(Position(3, 1100), True)),
        ("p", Heartbeat(123, 1500, DIGEST, b"\x22" * 32)),
        ("p", Records(records(1101, 50))), ("p", Records(records(1151, 3, size=0))),
        ("s", Ack(1153)), ("s", Heartbeat(456, 1153, DIGEST, b"\x22" * 32)),
        ("s", Ack(1153, "disk full: [Errno 28] No space left on device")),
        ("p", Error("shutting-down", "the primary is stopping")),
    ]
    chunks = []
    for side, event in script:
        sender, receiver = (standby, primary) if side == "s" else (primary, standby)
        data = sender.send(event)
        assert len(deliver(data, receiver)) == 1
        chunks.append((side, data))
    return chunks, [event for _, event in script]


def comparable(event: Any) -> Any:
    if isinstance(event, Records):
        return ("records", tuple(event.records))
    if isinstance(event, (Hello, Challenge)):
        return type(event).__name__  # nonces are random
    if isinstance(event, Auth):
        return "auth"
    if isinstance(event, Welcome):
        return ("welcome", event.node_id, event.epoch, event.last)
    return event


# ------------------------------------------------------------------ round trips


def test_handshake_and_session_keys_agree() -> None:
    primary, standby = handshake()
    assert primary._session_key == standby._session_key is not None
    assert primary.peer_verified


@pytest.mark.parametrize("event", [
    Truncate(Position(2, 99), "reason ünïcode"),
    Truncate(Position(0, 0), ""),
])
def test_truncate_round_trip(event: Truncate) -> None:
    primary, standby = handshake()
    assert deliver(primary.send(event), standby) == [event]
    assert standby.state is State.AWAIT_POSITION
    answer = PositionReport(Position(2, 90), False)
    assert deliver(standby.send(answer), primary) == [answer]
    assert primary.state is State.SYNCING


def test_every_streaming_frame_round_trips() -> None:
    primary, standby = streaming()
    batch = Records(tuple(records(1, 100)))
    assert deliver(primary.send(batch), standby) == [batch]
    empty_payload = Records((Record(101, 4, 0, b""),))
    assert deliver(primary.send(empty_payload), standby) == [empty_payload]
    big = Records((Record(102, 5, 2**64 - 1, b"x" * MAX_PAYLOAD),))
    assert deliver(primary.send(big), standby) == [big]
    for event in (Ack(102), Ack(102, "disk full: no space"), Heartbeat(2**63, 102, b"", b"\x01" * 255)):
        assert deliver(standby.send(event), primary) == [event]
    heartbeat = Heartbeat(5, 6, DIGEST, DIGEST)
    assert deliver(primary.send(heartbeat), standby) == [heartbeat]
    error = Error("bye", "going away")
    assert deliver(standby.send(error), primary) == [error]
    assert primary.state is State.CLOSED


def test_reject_round_trip_closes() -> None:
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", OTHER_KEY)
    deliver(standby.send(hello()), primary)
    deliver(primary.send(Challenge()), standby)
    [auth] = deliver(standby.send(Auth()), primary)
    assert isinstance(auth, Auth) and not auth.verified
    with pytest.raises(LocalProtocolError, match="did not verify"):
        primary.send(welcome())
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", OTHER_KEY)
    deliver(standby.send(hello()), primary)
    deliver(primary.send(Challenge()), standby)
    deliver(standby.send(Auth()), primary)
    reject = Reject("authentication failed")
    assert deliver(primary.send(reject), standby) == [reject]
    assert standby.state is primary.state is State.CLOSED
    assert deliver(b"", standby) == [ConnectionClosed()]


def test_bodies_round_trip_without_a_connection() -> None:
    cases: list[tuple[FrameType, Any]] = [
        (FrameType.HELLO, hello(nonce=b"n" * 32)),
        (FrameType.CHALLENGE, Challenge(b"c" * 32)),
        (FrameType.AUTH, Auth(b"p" * 32)),
        (FrameType.WELCOME, Welcome("a", 1, Position(1, 2), "v", b"d", proof=b"q" * 32)),
        (FrameType.REJECT, Reject("no")),
        (FrameType.TRUNCATE, Truncate(Position(1, 2), "why")),
        (FrameType.POSITION, PositionReport(Position(1, 2), True)),
        (FrameType.RECORDS, Records(tuple(records(7, 3)))),
        (FrameType.ACK, Ack(3)),
        (FrameType.HEARTBEAT, Heartbeat(1, 2, b"c", b"v")),
        (FrameType.ERROR, Error("c", "m")),
    ]
    for frame_type, event in cases:
        assert decode_body(frame_type, memoryview(encode_body(event))) == event


def test_whole_conversation_one_byte_at_a_time() -> None:
    chunks, script = conversation()
    seen = _replay(chunks, byte_at_a_time=True)
    assert [comparable(e) for e in seen] == [comparable(e) for e in script]


def _replay(chunks: list[tuple[str, bytes]], *, byte_at_a_time: bool = False,
            splits: list[int] | None = None) -> list[Any]:
    """Feed a recorded conversation to two fresh receivers that also *send* the same
    frames (so their state and counters follow), checking every received event."""
    # The receivers must hold the session state the senders had: re-run the sends on
    # shadow objects fed with the same nonces.
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", KEY)
    seen: list[Any] = []
    for side, data in chunks:
        receiver, shadow_sender = (primary, standby) if side == "s" else (standby, primary)
        pieces: list[bytes]
        if byte_at_a_time:
            pieces = [data[i:i + 1] for i in range(len(data))]
        elif splits:
            cuts = sorted({c % (len(data) + 1) for c in splits} | {0, len(data)})
            pieces = [data[a:b] for a, b in zip(cuts, cuts[1:])]
        else:
            pieces = [data]
        events: list[Any] = []
        for piece in pieces:
            receiver.receive_data(piece)
            events += drain(receiver)
        assert len(events) == 1, events
        seen += events
        # The sender side of the replay must move its state the same way: re-send the
        # event it would have sent (nonces and proofs come from what it received).
        _shadow_send(shadow_sender, events[0])
    return seen


def _shadow_send(conn: ReplicationConnection, event: Any) -> None:
    """Move ``conn`` (the original sender's replica) past ``event`` as if it had sent it."""
    if isinstance(event, Hello):
        conn.send(Hello(event.node_id, event.role, event.epoch, event.last, event.software_version,
                        event.config_digest, event.nonce))
    elif isinstance(event, Challenge):
        conn.send(Challenge(event.nonce))
    elif isinstance(event, Auth):
        conn.send(Auth())
    elif isinstance(event, Welcome):
        conn.send(Welcome(event.node_id, event.epoch, event.last, event.software_version, event.config_digest))
    else:
        conn.send(event)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_split_of_the_conversation_gives_the_same_events(splits: list[int]) -> None:
    chunks, script = conversation()
    seen = _replay(chunks, splits=splits)
    assert [comparable(e) for e in seen] == [comparable(e) for e in script]


def test_many_frames_in_one_chunk() -> None:
    primary, standby = streaming()
    data = b"".join(primary.send(Records(tuple(records(i, 1)))) for i in range(1, 201))
    events = deliver(data, standby)
    assert [e.records[0].seq for e in events] == list(range(1, 201))


# ------------------------------------------------------------------ garbage


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["primary", "standby"]))
def test_garbage_only_ever_raises_the_protocol_error(data: bytes, role: str) -> None:
    conn = ReplicationConnection(role, KEY)  # type: ignore[arg-type]
    try:
        conn.receive_data(data)
        drain(conn)
        conn.receive_data(b"")
        drain(conn)
    except ReplicationProtocolError:
        assert conn.state is State.BROKEN
        with pytest.raises(ReplicationProtocolError):
            conn.next_event()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_only_ever_raise_the_protocol_error(data: st.DataObject) -> None:
    """Valid headers with mangled bodies reach the body parsers and the MAC check."""
    primary, standby = streaming()
    frame = bytearray(primary.send(Records(tuple(records(1, 3)))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    try:
        events = deliver(bytes(frame[:cut]), standby) if cut else []
        events += deliver(b"", standby)
    except ReplicationProtocolError:
        return
    assert events in ([ConnectionClosed()], [Records(tuple(records(1, 3))), ConnectionClosed()])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.sampled_from(list(FrameType)))
def test_any_body_for_any_type_parses_or_raises_the_protocol_error(body: bytes, frame_type: FrameType) -> None:
    try:
        decode_body(frame_type, memoryview(body))
    except ReplicationProtocolError:
        pass


def test_wrong_magic_is_refused_at_the_first_wrong_byte() -> None:
    conn = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match="not a lifeline replication frame"):
        conn.receive_data(b"G")  # "GET / HTTP/1.1" from a port scanner
    assert conn.state is State.BROKEN


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    conn = ReplicationConnection("standby", KEY)
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.RECORDS, 0, MAX_FRAME)
    with pytest.raises(ReplicationProtocolError, match=r"RECORDS frame of 8388620 bytes announced, at most 8388608"):
        conn.receive_data(header)
    assert len(conn._buffer) == HEADER_SIZE  # nothing of the body was waited for
    with pytest.raises(ReplicationProtocolError, match="broken"):
        conn.receive_data(b"x" * 100)


def test_the_largest_frame_is_accepted_and_one_more_byte_is_not() -> None:
    assert HEADER_SIZE + 0xFFFFFFFF > MAX_FRAME
    _primary, conn = streaming()
    conn.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.RECORDS, FLAG_MAC, MAX_FRAME - HEADER_SIZE))
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("frame_type", list(MAX_HANDSHAKE_BODY))
def test_before_authentication_a_frame_is_hello_sized(frame_type: FrameType) -> None:
    # The primary's side of the flood in issue 16: an 8 MiB "hello" from a stranger
    # was buffered whole. Now the header alone is refused, nothing of the body kept.
    limit = MAX_HANDSHAKE_BODY[frame_type]
    assert limit <= 2 + 4096  # at most a REJECT's reason; a HELLO is under 1 KiB
    for role in ("primary", "standby"):
        conn = ReplicationConnection(role, KEY)  # type: ignore[arg-type]
        conn.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, 0, limit))
        assert conn.state is not State.BROKEN
        conn = ReplicationConnection(role, KEY)  # type: ignore[arg-type]
        with pytest.raises(ReplicationProtocolError, match="announced before authentication, at most"):
            conn.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, 0, limit + 1))
        assert len(conn._buffer) == HEADER_SIZE


def test_handshake_bounds_hold_the_largest_real_handshake_frames() -> None:
    name = "n" * MAX_NAME
    big = ReplicationConnection("primary", KEY)
    big_hello = Hello(name, "standby", 2**64 - 1, Position(2**64 - 1, 2**64 - 1), name, b"d" * MAX_NAME)
    standby = ReplicationConnection("standby", KEY)
    [got] = deliver(standby.send(big_hello), big)
    assert isinstance(got, Hello) and got.node_id == name
    deliver(big.send(Challenge()), standby)
    deliver(standby.send(Auth()), big)
    [got_welcome] = deliver(big.send(Welcome(name, 2**64 - 1, Position(2**64 - 1, 2**64 - 1), name,
                                             b"d" * MAX_NAME)), standby)
    assert isinstance(got_welcome, Welcome)
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", KEY)
    deliver(standby.send(hello()), primary)
    deliver(primary.send(Challenge()), standby)
    deliver(standby.send(Auth()), primary)
    [reject] = deliver(primary.send(Reject("x" * 10_000)), standby)
    assert isinstance(reject, Reject)


def test_after_authentication_frames_may_be_large_again() -> None:
    _primary, standby = handshake()
    standby.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.RECORDS, FLAG_MAC, 1024 * 1024))
    assert standby.state is State.SYNCING


def test_a_lower_max_frame_applies() -> None:
    conn = ReplicationConnection("standby", KEY, max_frame=1024)
    with pytest.raises(ReplicationProtocolError, match="at most 1024"):
        conn.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, 1013))


def test_version_mismatch_names_both_versions_and_the_fix() -> None:
    conn = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError) as info:
        conn.receive_data(MAGIC + bytes([PROTOCOL_VERSION + 1]))
    assert str(info.value) == (f"the peer speaks replication protocol version {PROTOCOL_VERSION + 1}, this node "
                               f"speaks version {PROTOCOL_VERSION}: upgrade both hosts of the pair to the same "
                               "lifeline release")


def test_unknown_type_and_flags_are_refused() -> None:
    conn = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match="unknown frame type 99"):
        conn.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, 99, 0, 0))
    conn = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match="unknown flags 0x0100"):
        conn.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0x100, 0))


def test_trailing_bytes_and_truncated_bodies_are_refused() -> None:
    standby = ReplicationConnection("standby", KEY)
    body = encode_body(hello(nonce=b"n" * 32))
    primary = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match="1 unexpected trailing bytes"):
        deliver(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, len(body) + 1) + body + b"x", primary)
    primary = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match="HELLO frame is truncated"):
        deliver(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, 10) + body[:10], primary)
    del standby


def test_records_that_lie_about_their_count_or_order_are_refused() -> None:
    good = encode_body(Records(tuple(records(5, 2))))
    with pytest.raises(ReplicationProtocolError, match="claims 1000000 records"):
        decode_body(FrameType.RECORDS, memoryview(struct.pack("!I", 1_000_000) + good[4:]))
    gap = struct.pack("!I", 2) + good[4:4 + 28 + 10] + struct.pack("!QQQI", 9, 4, 0, 0)
    with pytest.raises(ReplicationProtocolError, match="consecutive"):
        decode_body(FrameType.RECORDS, memoryview(gap))
    huge = struct.pack("!I", 1) + struct.pack("!QQQI", 1, 1, 0, MAX_PAYLOAD + 1)
    with pytest.raises(ReplicationProtocolError, match="claims 1048577 bytes"):
        decode_body(FrameType.RECORDS, memoryview(huge))
    with pytest.raises(ReplicationProtocolError, match="no records"):
        decode_body(FrameType.RECORDS, memoryview(struct.pack("!I", 0)))


def test_end_of_stream_in_the_middle_of_a_frame_is_an_error() -> None:
    primary, standby = streaming()
    frame = primary.send(Records(tuple(records(1, 2))))
    standby.receive_data(frame[:-1])
    assert standby.next_event() is NEED_DATA
    standby.receive_data(b"")
    with pytest.raises(ReplicationProtocolError, match=r"closed in the middle of a RECORDS frame \(\d+ of \d+ bytes\)"):
        standby.next_event()


def test_end_of_stream_at_a_frame_boundary_is_connection_closed() -> None:
    primary, standby = streaming()
    assert deliver(b"", standby) == [ConnectionClosed()]
    assert standby.state is State.CLOSED
    with pytest.raises(ReplicationProtocolError, match="after end of stream"):
        standby.receive_data(b"more")


# ------------------------------------------------------------------ state machine


def test_records_before_authentication_are_refused() -> None:
    standby_side = ReplicationConnection("standby", KEY)
    forged = HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.RECORDS, 0, 0)
    with pytest.raises(ReplicationProtocolError,
                       match="can't handle RECORDS from the primary in state await-hello"):
        deliver(forged, standby_side)
    # Even after HELLO, before WELCOME.
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", KEY)
    deliver(standby.send(hello()), primary)
    body = encode_body(Records(tuple(records(1, 1))))
    with pytest.raises(ReplicationProtocolError, match="can't handle RECORDS from the primary in state "
                                                       "await-challenge"):
        deliver(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.RECORDS, 0, len(body)) + body, standby)


@pytest.mark.parametrize("frame_type,sender", [
    (FrameType.HELLO, "primary"), (FrameType.ACK, "primary"), (FrameType.WELCOME, "standby"),
    (FrameType.TRUNCATE, "standby"), (FrameType.RECORDS, "standby"), (FrameType.ERROR, "standby"),
])
def test_frames_from_the_wrong_side_are_refused(frame_type: FrameType, sender: str) -> None:
    receiver = ReplicationConnection("primary" if sender == "standby" else "standby", KEY)
    with pytest.raises(ReplicationProtocolError, match=f"can't handle {frame_type.name} from the {sender}"):
        deliver(HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, 0, 0), receiver)


def test_truncate_is_refused_once_streaming() -> None:
    primary, standby = streaming()
    with pytest.raises(LocalProtocolError, match="can't handle TRUNCATE from the primary in state streaming"):
        primary.send(Truncate(Position(1, 1), "late"))
    assert primary.state is State.BROKEN


def test_a_second_hello_is_refused() -> None:
    primary = ReplicationConnection("primary", KEY)
    data = ReplicationConnection("standby", KEY).send(hello())
    deliver(data, primary)
    with pytest.raises(ReplicationProtocolError, match="can't handle HELLO from the standby in state await-challenge"):
        deliver(data, primary)


def test_a_hello_claiming_to_be_a_primary_is_refused() -> None:
    body = encode_body(Hello("x", "primary", 1, Position(0, 0), "v", b"", b"n" * 32))
    primary = ReplicationConnection("primary", KEY)
    with pytest.raises(ReplicationProtocolError, match="says role primary"):
        deliver(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.HELLO, 0, len(body)) + body, primary)


def test_sending_out_of_turn_is_a_local_error_and_sticky() -> None:
    standby = ReplicationConnection("standby", KEY)
    with pytest.raises(LocalProtocolError, match="can't handle ACK from the standby in state await-hello"):
        standby.send(Ack(1))
    with pytest.raises(ReplicationProtocolError, match="broken"):
        standby.send(hello())
    with pytest.raises(ReplicationProtocolError, match="broken"):
        standby.receive_data(b"")


def test_every_transition_is_reachable_only_from_its_sender() -> None:
    for (state, sender, frame_type), target in TRANSITIONS.items():
        assert isinstance(target, State)
        assert sender in ("primary", "standby")
        if frame_type in (FrameType.HELLO, FrameType.AUTH, FrameType.POSITION, FrameType.ACK):
            assert sender == "standby"
        if frame_type in (FrameType.CHALLENGE, FrameType.WELCOME, FrameType.REJECT, FrameType.TRUNCATE,
                          FrameType.RECORDS):
            assert sender == "primary"


# ------------------------------------------------------------------ MAC


def test_a_tampered_frame_fails_its_mac() -> None:
    primary, standby = streaming()
    frame = bytearray(primary.send(Records(tuple(records(1, 3)))))
    frame[HEADER_SIZE + 40] ^= 0x01  # one bit of a payload
    with pytest.raises(ReplicationProtocolError, match="RECORDS frame fails its MAC"):
        deliver(bytes(frame), standby)


def test_an_injected_frame_without_mac_is_refused_after_authentication() -> None:
    primary, standby = streaming()
    body = encode_body(Records(tuple(records(1, 1))))
    with pytest.raises(ReplicationProtocolError, match="RECORDS frame without a MAC in state streaming"):
        deliver(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.RECORDS, 0, len(body)) + body, standby)


def test_a_replayed_frame_is_refused_by_its_counter() -> None:
    primary, standby = streaming()
    frame = primary.send(Records(tuple(records(1, 1))))
    deliver(frame, standby)
    deliver(primary.send(Records(tuple(records(2, 1)))), standby)
    with pytest.raises(ReplicationProtocolError, match=r"replayed RECORDS frame: counter 2, expected 4"):
        deliver(frame, standby)


def test_a_dropped_frame_is_noticed_by_the_next_counter() -> None:
    primary, standby = streaming()
    primary.send(Records(tuple(records(1, 1))))  # lost on the way
    with pytest.raises(ReplicationProtocolError, match="out-of-order RECORDS frame: counter 3, expected 2"):
        deliver(primary.send(Records(tuple(records(2, 1)))), standby)


def test_a_frame_from_another_session_fails_its_mac() -> None:
    primary_a, standby_a = streaming()
    primary_b, standby_b = streaming()
    frame = primary_a.send(Heartbeat(1, 2, DIGEST, DIGEST))
    with pytest.raises(ReplicationProtocolError, match="fails its MAC"):
        deliver(frame, standby_b)


def test_a_reflected_frame_fails_its_mac() -> None:
    primary, standby = streaming()
    heartbeat = standby.send(Heartbeat(1, 2, DIGEST, DIGEST))
    # Send the standby's own heartbeat back to it, as if from the primary.
    with pytest.raises(ReplicationProtocolError, match="fails its MAC"):
        deliver(heartbeat, standby)


def test_welcome_from_a_primary_without_our_key_fails() -> None:
    primary = ReplicationConnection("primary", OTHER_KEY)
    standby = ReplicationConnection("standby", KEY)
    deliver(standby.send(hello()), primary)
    deliver(primary.send(Challenge()), standby)
    deliver(standby.send(Auth()), primary)
    primary.peer_verified = True  # a malicious primary welcomes anyone
    primary._set_session()
    with pytest.raises(ReplicationProtocolError, match="WELCOME frame fails its MAC"):
        deliver(primary.send(welcome()), standby)


def test_proofs_are_bound_to_role_and_transcript() -> None:
    transcript = transcript_digest(b"hello", b"n" * 32)
    assert proof(KEY, "standby", transcript) != proof(KEY, "primary", transcript)
    assert proof(KEY, "standby", transcript) != proof(KEY, "standby", transcript_digest(b"hellO", b"n" * 32))
    assert proof(KEY, "standby", transcript) != proof(OTHER_KEY, "standby", transcript)
    assert derive_session_key(KEY, b"a" * 32, b"b" * 32) != derive_session_key(KEY, b"b" * 32, b"a" * 32)


def test_a_tampered_hello_breaks_the_proof() -> None:
    """The HELLO travels unauthenticated; a MITM that lowers the stated position makes
    the standby's proof fail, because the proof covers the HELLO as sent."""
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", KEY)
    data = bytearray(standby.send(hello()))
    data[HEADER_SIZE + 1 + 8 + 8 + 7] ^= 0x01  # last.seq's low byte
    deliver(bytes(data), primary)
    deliver(primary.send(Challenge()), standby)
    [auth] = deliver(standby.send(Auth()), primary)
    assert not auth.verified


# ------------------------------------------------------------------ encode side


def test_encoding_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(LocalProtocolError, match="consecutive"):
        encode_body(Records((records(1, 1)[0], records(3, 1)[0])))
    with pytest.raises(LocalProtocolError, match="at least one"):
        encode_body(Records(()))
    with pytest.raises(LocalProtocolError, match="64 bits"):
        encode_body(Ack(-1))
    with pytest.raises(LocalProtocolError, match="at most 255"):
        encode_body(Heartbeat(0, 0, b"x" * 256, b""))


def test_a_batch_larger_than_a_frame_must_be_split() -> None:
    primary, standby = streaming()
    batch = [Record(i, 1, 0, b"x" * MAX_PAYLOAD) for i in range(1, 10)]
    with pytest.raises(LocalProtocolError, match="split the batch"):
        primary.send(Records(tuple(batch)))
    primary, standby = streaming()
    parts = split_batch(batch)
    assert [len(p) for p in parts] == [7, 2]
    got = []
    for part in parts:
        got += deliver(primary.send(Records(tuple(part))), standby)
    assert [r for e in got for r in e.records] == batch


def test_long_reasons_are_shortened_not_refused() -> None:
    primary = ReplicationConnection("primary", KEY)
    standby = ReplicationConnection("standby", OTHER_KEY)
    deliver(standby.send(hello()), primary)
    deliver(primary.send(Challenge()), standby)
    deliver(standby.send(Auth()), primary)
    [reject] = deliver(primary.send(Reject("é" * 5000)), standby)
    assert reject.reason.endswith("...") and len(reject.reason.encode()) <= 4096


# ------------------------------------------------------------------ catch-up rule


class History:
    def __init__(self, epochs: list[int], first_seq: int = 1) -> None:
        self.epochs = epochs  # epochs[i] is the epoch of seq first_seq + i
        self.first_seq = first_seq

    @property
    def last(self) -> Position:
        if not self.epochs:
            return Position(0, 0)
        return Position(self.epochs[-1], self.first_seq + len(self.epochs) - 1)

    def epoch_at(self, seq: int) -> int | None:
        i = seq - self.first_seq
        return self.epochs[i] if 0 <= i < len(self.epochs) else None

    def candidate(self, claim: Position) -> Position:
        return next_candidate(claim, self.epoch_at, self.first_seq, self.last.seq)


def agree(primary: History, standby: History) -> tuple[int, int]:
    """Run the exchange as the shells do; answers (common seq, rounds)."""
    claim, is_last = standby.last, True
    for rounds in range(1000):
        candidate = primary.candidate(claim)
        if candidate == claim and is_last:
            return claim.seq, rounds
        to = candidate
        mine = standby.epoch_at(to.seq)
        if to.seq == 0 or mine == to.epoch:
            del standby.epochs[to.seq:]  # truncate_after
            claim, is_last = to, True
        else:
            claim = standby.candidate(to)
            is_last = claim == standby.last
    raise AssertionError("no agreement")


def true_common(a: list[int], b: list[int]) -> int:
    common = 0
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            break
        common = i + 1
    return common


def test_agreeing_journals_need_no_truncation() -> None:
    primary = History([1] * 10 + [2] * 10)
    standby = History([1] * 10 + [2] * 5)
    assert agree(primary, standby) == (15, 0)


def test_an_old_epoch_tail_is_cut_back_to_the_fork() -> None:
    primary = History([1] * 50 + [3] * 50)
    standby = History([1] * 50 + [2] * 20)  # the old primary's unreplicated tail
    assert agree(primary, standby) == (50, 1)
    assert standby.epochs == [1] * 50


def test_a_standby_ahead_in_the_same_epoch_is_cut_to_the_primary() -> None:
    primary = History([1] * 10)
    standby = History([1] * 15)
    assert agree(primary, standby) == (10, 1)


def test_no_common_record_means_start_over() -> None:
    primary = History([2] * 10)
    standby = History([1] * 10)
    assert agree(primary, standby) == (0, 1)
    assert standby.epochs == []


def test_an_empty_standby_starts_from_zero() -> None:
    assert agree(History([1] * 3), History([])) == (0, 0)


def test_a_primary_that_dropped_old_segments_cannot_find_an_older_fork() -> None:
    primary = History([3] * 10, first_seq=41)  # seqs 41..50, all epoch 3
    with pytest.raises(CatchUpError, match="below seq 41"):
        primary.candidate(Position(2, 45))
    assert primary.candidate(Position(3, 45)) == Position(3, 45)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 4), max_size=40), st.lists(st.integers(1, 4), max_size=40),
       st.integers(0, 40))
def test_the_exchange_always_finds_the_largest_common_point(steps_a: list[int], steps_b: list[int],
                                                             shared: int) -> None:
    """Two journals with a shared prefix and then independent tails. An epoch names one
    history, so the tails use epochs the other side never wrote after the fork."""
    def monotone(steps: list[int], start: int) -> list[int]:
        out, epoch = [], start
        for s in steps:
            epoch += s - 1
            out.append(epoch)
        return out

    prefix = monotone(steps_a[:shared], 1)
    top = prefix[-1] if prefix else 1
    # After the fork the primary writes even epochs and the standby odd ones above the
    # prefix's, so they never share an epoch beyond the fork.
    tail_p = [2 * e + 2 * top + 2 for e in monotone(steps_a[shared:], 0)]
    tail_s = [2 * e + 2 * top + 1 for e in monotone(steps_b, 0)]
    primary_epochs = prefix + tail_p
    standby_epochs = prefix + tail_s
    if standby_epochs and primary_epochs and standby_epochs[-1] > max(primary_epochs):
        standby_epochs = prefix  # a standby newer than the primary is refused before this rule
    expected = true_common(primary_epochs, standby_epochs)
    standby = History(list(standby_epochs))
    common, rounds = agree(History(primary_epochs), standby)
    assert common == expected
    assert standby.epochs == primary_epochs[:common]
    assert rounds <= 2 * (len(set(primary_epochs) | set(standby_epochs)) + 1)


# ------------------------------------------------------------------ keys


def test_generated_key_is_0600_hex_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "replication.key"
    key = generate_replication_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.hex() + "\n"
    assert load_replication_key(path) == key
    assert generate_replication_key(tmp_path / "other.key") != key


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "replication.key"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        generate_replication_key(path)
    assert path.read_text() == "keep me"


def test_load_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "replication.key"
    generate_replication_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as info:
        load_replication_key(path)
    assert str(path) in str(info.value) and f"chmod 600 {path}" in str(info.value)
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        load_replication_key(path)


def test_load_refuses_short_and_non_hex_keys(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("00" * 15 + "\n")
    os.chmod(short, 0o600)
    with pytest.raises(KeyFileError, match="15 bytes, at least 16"):
        load_replication_key(short)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key at all\n")
    os.chmod(garbage, 0o600)
    with pytest.raises(KeyFileError, match="hex"):
        load_replication_key(garbage)
    with pytest.raises(OSError):
        load_replication_key(tmp_path / "missing.key")
