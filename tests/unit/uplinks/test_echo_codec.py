"""The probe codecs: UDP echo payload, ICMP echo, DNS query/response — no I/O."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.echo import delay_range, parse_delay
from daemon.uplinks.echo import (
    MAGIC,
    PROBE_SIZE,
    DnsAnswer,
    EchoReply,
    decode_dns_response,
    decode_icmp_echo_reply,
    decode_reply,
    encode_dns_name,
    encode_dns_query,
    encode_icmp_echo,
    encode_probe,
    internet_checksum,
)

NONCE = bytes(range(8))

# ------------------------------------------------------------------ UDP echo payload


def test_probe_round_trip() -> None:
    data = encode_probe(7, 42, 123_456_789, NONCE)
    assert len(data) == PROBE_SIZE == 32
    assert data.startswith(MAGIC)
    assert decode_reply(data) == EchoReply(7, 42, 123_456_789, NONCE)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.binary(min_size=8, max_size=8))
def test_probe_round_trip_any_fields(uplink_id: int, seq: int, sent_ns: int, nonce: bytes) -> None:
    assert decode_reply(encode_probe(uplink_id, seq, sent_ns, nonce)) == EchoReply(uplink_id, seq, sent_ns, nonce)


def test_probe_layout_is_fixed() -> None:
    data = encode_probe(1, 2, 3, NONCE)
    assert data == b"LLP1" + struct.pack("!IQQ", 1, 2, 3) + NONCE


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 0, NONCE), (2**32, 0, 0, NONCE), (0, -1, 0, NONCE), (0, 2**64, 0, NONCE), (0, 0, -1, NONCE),
     (0, 0, 0, b"short"), (0, 0, 0, NONCE + b"x")],
)
def test_probe_encode_rejects_fields_that_do_not_fit(args: tuple) -> None:
    with pytest.raises(ValueError):
        encode_probe(*args)


def test_reply_one_byte_at_a_time_is_garbage() -> None:
    data = encode_probe(7, 42, 99, NONCE)
    for i in range(len(data)):
        assert decode_reply(data[i : i + 1]) is None
    for cut in range(len(data)):
        assert decode_reply(data[:cut]) is None, f"truncated to {cut} bytes"
    assert decode_reply(data + b"\0") is None, "trailing bytes"


def test_wrong_magic_is_garbage() -> None:
    data = encode_probe(7, 42, 99, NONCE)
    assert decode_reply(b"LLP2" + data[4:]) is None
    assert decode_reply(b"") is None


@given(st.binary(max_size=100))
def test_decode_reply_never_raises(data: bytes) -> None:
    reply = decode_reply(data)
    assert reply is None or (len(data) == PROBE_SIZE and data.startswith(MAGIC))


# ------------------------------------------------------------------ ICMP echo


def test_icmp_checksum_rfc1071_example() -> None:
    # RFC 1071 §3 worked example: words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement 220d).
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length padded with a zero byte


def test_icmp_echo_request_has_valid_checksum_and_fields() -> None:
    payload = encode_probe(1, 300, 5, NONCE)
    packet = encode_icmp_echo(0xBEEF, 300, payload)
    assert packet[0] == 8 and packet[1] == 0
    assert internet_checksum(packet) == 0, "a correct checksum sums to zero"
    assert struct.unpack("!HH", packet[4:8]) == (0xBEEF, 300)
    assert packet[8:] == payload
    v6 = encode_icmp_echo(1, 2, payload, v6=True)
    assert v6[0] == 128 and v6[2:4] == b"\0\0", "the kernel fills the ICMPv6 checksum"
    with pytest.raises(ValueError):
        encode_icmp_echo(0x10000, 0, b"")


def _as_reply(request: bytes, v6: bool = False) -> bytes:
    return bytes([129 if v6 else 0]) + request[1:]


def test_icmp_reply_decodes_with_and_without_ip_header() -> None:
    payload = encode_probe(1, 5, 6, NONCE)
    reply = _as_reply(encode_icmp_echo(77, 5, payload))
    echo = decode_icmp_echo_reply(reply)
    assert echo is not None and (echo.identifier, echo.sequence, echo.payload) == (77, 5, payload)
    ip_header = bytes([0x45]) + bytes(19)
    assert decode_icmp_echo_reply(ip_header + reply, ip_header=True) == echo
    # IHL 6 (24 bytes, with options)
    assert decode_icmp_echo_reply(bytes([0x46]) + bytes(23) + reply, ip_header=True) == echo
    assert decode_icmp_echo_reply(_as_reply(encode_icmp_echo(1, 2, b"x", v6=True), v6=True), v6=True) is not None


def test_icmp_requests_and_other_types_are_not_replies() -> None:
    request = encode_icmp_echo(77, 5, b"abc")
    assert decode_icmp_echo_reply(request) is None
    assert decode_icmp_echo_reply(bytes([3, 3]) + request[2:]) is None, "destination unreachable"
    assert decode_icmp_echo_reply(_as_reply(request), v6=True) is None, "type 0 is not an ICMPv6 echo reply"
    assert decode_icmp_echo_reply(bytes([0x4F]) + bytes(10), ip_header=True) is None, "IHL beyond the data"
    assert decode_icmp_echo_reply(bytes([0x60]) + bytes(40), ip_header=True) is None, "not IPv4"


@given(st.binary(max_size=80), st.booleans(), st.booleans())
def test_decode_icmp_never_raises(data: bytes, v6: bool, ip_header: bool) -> None:
    decode_icmp_echo_reply(data, v6=v6, ip_header=ip_header)


# ------------------------------------------------------------------ DNS

# Hand-computed per RFC 1035 §4.1: id 0x1234; flags 0x0100 (RD); QDCOUNT 1; AN/NS/AR 0;
# QNAME 7"example" 3"com" 0; QTYPE 1 (A); QCLASS 1 (IN).
EXAMPLE_QUERY = bytes.fromhex("1234 0100 0001 0000 0000 0000 076578616d706c6503636f6d00 0001 0001")


def test_dns_query_matches_a_hand_computed_packet() -> None:
    assert encode_dns_query(0x1234, "example.com") == EXAMPLE_QUERY
    assert encode_dns_query(0x1234, "example.com.") == EXAMPLE_QUERY, "a trailing dot is the same name"
    aaaa = encode_dns_query(0xFFFF, "a.b", qtype=28)
    assert aaaa == bytes.fromhex("ffff 0100 0001 0000 0000 0000 0161016200 001c 0001")
    assert encode_dns_query(0, ".") == bytes.fromhex("0000 0100 0001 0000 0000 0000 00 0001 0001")


@pytest.mark.parametrize(
    "name",
    ["", "..", "a..b", ".a", "-a.com", "a-.com", "a b.com", "exämple.com", "a" * 64 + ".com",
     ".".join(["a" * 63] * 4), "a/b"],
)
def test_dns_name_validation(name: str) -> None:
    with pytest.raises(ValueError):
        encode_dns_query(1, name)


def test_dns_name_limits() -> None:
    encode_dns_name("a" * 63 + ".com")
    name = ".".join(["a" * 63] * 3 + ["a" * 61])  # 4*64 - 2 + 1 = 255 bytes encoded
    assert len(encode_dns_name(name)) == 255
    with pytest.raises(ValueError, match="at most 255"):
        encode_dns_name(name + "a")
    encode_dns_name("_dmarc.example-1.com")
    with pytest.raises(ValueError):
        encode_dns_query(0x10000, "example.com")
    with pytest.raises(ValueError):
        encode_dns_query(1, "example.com", qtype=-1)


def _response(query: bytes, rcode: int, *, ancount: int = 0, flags: int = 0x8180) -> bytes:
    header = struct.pack("!HHHHHH", int.from_bytes(query[:2], "big"), flags | rcode, 1, ancount, 0, 0)
    return header + query[12:]


@pytest.mark.parametrize("rcode, name, works", [(0, "NOERROR", True), (3, "NXDOMAIN", True),
                                                 (2, "SERVFAIL", False), (5, "REFUSED", False),
                                                 (4, "NOTIMP", False), (15, "RCODE15", False)])
def test_dns_response_rcodes(rcode: int, name: str, works: bool) -> None:
    answer = decode_dns_response(_response(EXAMPLE_QUERY, rcode), 0x1234)
    assert answer == DnsAnswer(0x1234, rcode, name, 0, False)
    assert answer.resolver_works is works


def test_dns_response_not_ours_is_none() -> None:
    good = _response(EXAMPLE_QUERY, 0, ancount=1)
    assert decode_dns_response(good, 0x1234, "example.com") is not None
    assert decode_dns_response(good, 0x1234, "EXAMPLE.com") is not None, "0x20 case randomisation"
    assert decode_dns_response(good, 0x1235) is None, "another id"
    assert decode_dns_response(EXAMPLE_QUERY, 0x1234) is None, "a query, not a response"
    assert decode_dns_response(good, 0x1234, "example.org") is None, "answers another question"
    assert decode_dns_response(good[:11], 0x1234) is None, "shorter than a header"
    assert decode_dns_response(_response(EXAMPLE_QUERY, 0, flags=0x8000 | 0x2800), 0x1234) is None, "opcode 5"
    truncated = decode_dns_response(_response(EXAMPLE_QUERY, 0, flags=0x8380), 0x1234)
    assert truncated is not None and truncated.truncated


def test_dns_response_one_byte_at_a_time_is_garbage() -> None:
    good = _response(EXAMPLE_QUERY, 0)
    for i in range(len(good)):
        assert decode_dns_response(good[i : i + 1], 0x1234) is None


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_decode_dns_never_raises(data: bytes, txid: int) -> None:
    decode_dns_response(data, txid)
    decode_dns_response(data, txid, "example.com")


@given(st.integers(0, 0xFFFF), st.binary(max_size=200))
def test_decode_dns_with_matching_id_never_raises(txid: int, rest: bytes) -> None:
    data = txid.to_bytes(2, "big") + b"\x81\x80\x00\x01" + rest
    decode_dns_response(data, txid, "example.com")


# ------------------------------------------------------------------ lab echo --delay spec


def test_delay_spec() -> None:
    rule = parse_delay("10.71.0.0/16=1ms..3ms")
    assert (str(rule.network), rule.low, rule.high) == ("10.71.0.0/16", 0.001, 0.003)
    assert str(rule) == "10.71.0.0/16=1ms..3ms"
    fixed = parse_delay("fd00::/8=25ms")
    assert (fixed.low, fixed.high) == (0.025, 0.025)
    rules = [rule, parse_delay("10.0.0.0/8=25ms..60ms")]
    assert delay_range(rules, "10.71.3.4") == (0.001, 0.003), "first match wins"
    assert delay_range(rules, "10.72.3.4") == (0.025, 0.06)
    assert delay_range(rules, "192.0.2.1") is None
    assert delay_range(rules, "fd00::1") is None
    assert delay_range(rules, "not an address") is None


@pytest.mark.parametrize(
    "spec, message",
    [("10.0.0.0/8", "CIDR=MIN..MAX"), ("10.0.0.0/33=1ms", "not a network"), ("x=1ms", "not a network"),
     ("10.0.0.0/8=3..4ms", "need a unit"), ("10.0.0.0/8=5ms..1ms", "MIN <= MAX"), ("=1ms", "CIDR=MIN..MAX"),
     ("10.0.0.0/8=-1ms..1ms", "MIN <= MAX")],
)
def test_delay_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_delay(spec)
