"""Small-order (weak) Ed25519 public keys are refused wherever a key is read: in the
keyring and in a public key line. The blocklist is checked against an independent
computation of each point's order (pure-Python Edwards arithmetic, RFC 8032)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recovery.keys import (
    KEY_ID_HEX,
    KEY_ID_LABEL,
    SMALL_ORDER_KEYS,
    KeyFileError,
    KeyringError,
    format_keyring,
    init_keyring,
    parse_keyring,
    parse_public_line,
    raw_public,
    weak_public_key,
)

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def decode(raw: bytes) -> tuple[int, int] | None:
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x, y


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def order_divides_8(point: tuple[int, int]) -> bool:
    q = point
    for _ in range(3):
        q = add(q, q)
    return q == (0, 1)


def test_the_blocklist_is_exactly_the_points_of_small_order() -> None:
    assert len(SMALL_ORDER_KEYS) == 8
    for raw in SMALL_ORDER_KEYS:
        point = decode(raw)
        assert point is not None and order_divides_8(point), raw.hex()
    real = raw_public(Ed25519PrivateKey.generate().public_key())
    point = decode(real)
    assert point is not None and not order_divides_8(point)
    assert weak_public_key(real) is None


def key_id(raw: bytes) -> str:
    return hashlib.sha256(KEY_ID_LABEL + raw).hexdigest()[:KEY_ID_HEX]


@pytest.mark.parametrize("raw", sorted(SMALL_ORDER_KEYS) + [
    bytes.fromhex("01" + "00" * 30 + "80"),                 # the identity with the sign bit: non-canonical
    (P).to_bytes(32, "little"), (P + 1).to_bytes(32, "little")])  # y >= p
def test_a_weak_key_in_the_keyring_is_refused(raw: bytes) -> None:
    good = Ed25519PrivateKey.generate().public_key()
    other = Ed25519PrivateKey.generate().public_key()
    text = format_keyring(init_keyring(1, [(good, "alice"), (other, "mallory")], (), source="k.toml"))
    assert parse_keyring(text, "k.toml")  # the real keys load
    b64 = base64.b64encode(raw_public(other)).decode()
    text = text.replace(b64, base64.b64encode(raw).decode()).replace(key_id(raw_public(other)), key_id(raw))
    with pytest.raises(KeyringError, match="refused") as info:
        parse_keyring(text, "k.toml")
    assert "k.toml" in str(info.value) and "public" in str(info.value)
    with pytest.raises(KeyFileError, match="refused"):
        parse_public_line(f"lifeline-ed25519 {base64.b64encode(raw).decode()} mallory", "mallory.pub")
