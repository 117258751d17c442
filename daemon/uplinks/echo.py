"""Sans-IO codecs for the probes: the UDP echo payload, ICMP echo, and a DNS query.

No sockets and no trio here: bytes in, values out. Every ``decode_*`` answers ``None``
for bytes that are not what it expects (wrong magic, wrong length, truncated, not a
reply) and never raises on input from the network; only the ``encode_*`` functions raise
``ValueError``, and only for bad arguments from our own side.

UDP echo payload (network byte order, 32 bytes)::

    magic "LLP1" | uplink id u32 | sequence u64 | sent_ns u64 | nonce 8 bytes

Any RFC 862 echo server sends the datagram back unchanged, so the reply is the payload.
The sequence number and the per-prober random nonce let the prober tell a fresh reply
from a late one (an older sequence), from a replay or a forgery (wrong nonce), and from
another prober's reply; ``sent_ns`` is carried for the curious (captures, the lab).

The same payload rides inside ICMP echo requests (RFC 792, RFC 4443), so a reply can be
matched on sequence and nonce even where the kernel rewrites the ICMP identifier
(unprivileged ping sockets).

The DNS query is RFC 1035 §4.1: a 12-byte header with RD set and one question.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# --------------------------------------------------------------------------- UDP echo

MAGIC = b"LLP1"
NONCE_SIZE = 8
_PROBE = struct.Struct("!4sIQQ8s")
PROBE_SIZE = _PROBE.size  # 32


@dataclass(frozen=True)
class EchoReply:
    """A decoded probe payload, as echoed back to us."""

    uplink_id: int
    seq: int
    sent_ns: int
    nonce: bytes


def encode_probe(uplink_id: int, seq: int, sent_ns: int, nonce: bytes) -> bytes:
    """The payload of one echo probe; ``ValueError`` if a field does not fit its slot."""
    if not 0 <= uplink_id < 2**32:
        raise ValueError(f"uplink_id must fit in 32 bits, found {uplink_id}")
    if not 0 <= seq < 2**64:
        raise ValueError(f"seq must fit in 64 bits, found {seq}")
    if not 0 <= sent_ns < 2**64:
        raise ValueError(f"sent_ns must fit in 64 bits, found {sent_ns}")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, found {len(nonce)}")
    return _PROBE.pack(MAGIC, uplink_id, seq, sent_ns, bytes(nonce))


def decode_reply(data: bytes) -> EchoReply | None:
    """The probe echoed in ``data``, or ``None`` for anything else (garbage)."""
    if len(data) != PROBE_SIZE or bytes(data[:4]) != MAGIC:
        return None
    try:
        _magic, uplink_id, seq, sent_ns, nonce = _PROBE.unpack(bytes(data))
    except struct.error:  # pragma: no cover - the length was checked above
        return None
    return EchoReply(uplink_id, seq, sent_ns, nonce)


# --------------------------------------------------------------------------- ICMP echo

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
_ICMP = struct.Struct("!BBHHH")


@dataclass(frozen=True)
class IcmpEcho:
    """A decoded ICMP echo message: identifier, 16-bit sequence and the payload."""

    type: int
    identifier: int
    sequence: int
    payload: bytes


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_icmp_echo(identifier: int, sequence: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An echo request. For ICMPv6 the checksum covers a pseudo-header the kernel knows
    and we do not, so it is left 0 for the kernel to fill (it always does for ICMPv6)."""
    if not 0 <= identifier <= 0xFFFF or not 0 <= sequence <= 0xFFFF:
        raise ValueError(f"identifier and sequence are 16-bit, found {identifier}, {sequence}")
    kind = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    header = _ICMP.pack(kind, 0, 0, identifier, sequence)
    if v6:
        return header + payload
    checksum = internet_checksum(header + payload)
    return _ICMP.pack(kind, 0, checksum, identifier, sequence) + payload


def decode_icmp_echo_reply(data: bytes, *, v6: bool = False, ip_header: bool = False) -> IcmpEcho | None:
    """The echo reply in ``data``, or ``None`` if it is not one.

    ``ip_header``: ``data`` starts with an IPv4 header (what a raw IPv4 socket reads);
    ping sockets and raw ICMPv6 sockets hand over the ICMP message alone.
    """
    data = bytes(data)
    if ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        header_length = (data[0] & 0x0F) * 4
        if header_length < 20 or len(data) < header_length:
            return None
        data = data[header_length:]
    if len(data) < _ICMP.size:
        return None
    kind, code, _checksum, identifier, sequence = _ICMP.unpack_from(data)
    if kind != (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY) or code != 0:
        return None
    return IcmpEcho(kind, identifier, sequence, data[_ICMP.size :])


# --------------------------------------------------------------------------- DNS

DNS_RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
}
_DNS_HEADER = struct.Struct("!HHHHHH")
_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", re.ASCII)


@dataclass(frozen=True)
class DnsAnswer:
    """What a resolver said. NOERROR and NXDOMAIN both prove the resolver works."""

    txid: int
    rcode: int
    rcode_name: str
    answers: int
    truncated: bool

    @property
    def resolver_works(self) -> bool:
        return self.rcode in (0, 3)


def encode_dns_name(name: str) -> bytes:
    """``"example.com"`` → ``b"\\x07example\\x03com\\x00"``; ``ValueError`` for a bad name.

    Labels are letters, digits, ``-`` and ``_`` (1-63 characters, no leading or trailing
    hyphen); the encoded name is at most 255 bytes (RFC 1035 §2.3.4). ``"."`` is the root.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a DNS name must be a non-empty string such as 'example.com'")
    if name == ".":
        return b"\0"
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    out = bytearray()
    for label in labels:
        if not label:
            raise ValueError(f"empty label in DNS name {name!r}")
        if len(label) > 63:
            raise ValueError(f"label {label[:20]!r}... is {len(label)} characters, at most 63, in DNS name {name!r}")
        if not _LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} in DNS name {name!r}: use letters, digits, '-' and '_' "
                             "(no leading or trailing '-')")
        out += bytes([len(label)]) + label.encode("ascii")
    out += b"\0"
    if len(out) > 255:
        raise ValueError(f"DNS name {name[:40]!r}... is {len(out)} bytes encoded, at most 255")
    return bytes(out)


def encode_dns_query(txid: int, name: str, qtype: int = 1) -> bytes:
    """One standard query (RD set, class IN) for ``name``; ``ValueError`` for bad input."""
    if not 0 <= txid <= 0xFFFF:
        raise ValueError(f"txid is 16-bit, found {txid}")
    if not 0 <= qtype <= 0xFFFF:
        raise ValueError(f"qtype is 16-bit, found {qtype}")
    header = _DNS_HEADER.pack(txid, _FLAG_RD, 1, 0, 0, 0)
    return header + encode_dns_name(name) + struct.pack("!HH", qtype, 1)


def decode_dns_response(data: bytes, txid: int, name: str | None = None) -> DnsAnswer | None:
    """The answer to query ``txid``, or ``None`` for garbage, a query, or another id.

    With ``name``, a response whose question names something else is also ``None``
    (compared case-insensitively: resolvers may echo 0x20-randomised case).
    """
    data = bytes(data)
    if len(data) < _DNS_HEADER.size:
        return None
    try:
        rid, flags, qdcount, ancount, _ns, _ar = _DNS_HEADER.unpack_from(data)
    except struct.error:  # pragma: no cover - the length was checked above
        return None
    if rid != txid or not flags & _FLAG_QR or (flags >> 11) & 0xF != 0:
        return None
    if name is not None and qdcount >= 1:
        asked = _read_question_name(data, _DNS_HEADER.size)
        try:
            wanted = encode_dns_name(name)
        except ValueError:
            return None
        if asked is None or asked.lower() != wanted.lower():
            return None
    rcode = flags & 0xF
    return DnsAnswer(rid, rcode, DNS_RCODES.get(rcode, f"RCODE{rcode}"), ancount, bool(flags & _FLAG_TC))


def _read_question_name(data: bytes, offset: int) -> bytes | None:
    """The wire form of the uncompressed name at ``offset`` (a question's name is the first
    name in the message, so there is nothing before it to point at), or None."""
    start = offset
    while offset < len(data):
        length = data[offset]
        if length == 0:
            return data[start : offset + 1]
        if length > 63:  # a compression pointer or a reserved label type
            return None
        offset += 1 + length
        if offset - start > 255:
            return None
    return None
