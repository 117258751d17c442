"""The signed limits file (daemon/guard/limits.py) checked through the recovery keyring
(daemon/risk.py): unsigned, under-signed, expired, rolled back, pinned, playbook-signed —
each refused with a clear reason; the most specific [[limits]] entry wins."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.guard.limits import LimitsError, load_limits, parse_limits
from daemon.risk import LIMITS_CONTEXT, KeyringLimitsVerifier
from recovery.keys import init_keyring, write_keyring
from recovery.signing import signature_path, sign_playbook

NOW = time.time()


def limits_text(version: int = 3, expires: str = "2099-01-01T00:00:00Z", extra: str = "") -> bytes:
    return f'''version = {version}
expires = {expires}
no_reference = "refuse"
max_message_rate = 100
max_daily_loss = "5000"
{extra}
[[limits]]
venue = "*"
symbol = "*"
max_order_amount = "2"
max_open_orders = 10

[[limits]]
venue = "kraken"
max_order_amount = "1"

[[limits]]
venue = "kraken"
symbol = "BTC/USDT"
max_position = "3"
'''.encode()


class World:
    def __init__(self, tmp: Path, n: int = 3, threshold: int = 2) -> None:
        self.tmp = tmp
        self.keys = [Ed25519PrivateKey.generate() for _ in range(n)]
        keyring = init_keyring(threshold, [(k.public_key(), h) for k, h in zip(self.keys, ["alice", "bob", "carol"])],
                               source=str(tmp / "keyring.toml"))
        write_keyring(keyring, tmp / "keyring.toml", create=True)
        self.verifier = KeyringLimitsVerifier(tmp / "keyring.toml", tmp / "state")
        self.path = tmp / "limits.toml"

    def write(self, data: bytes, *signers: int, context: bytes = LIMITS_CONTEXT) -> Path:
        self.path.write_bytes(data)
        signature_path(self.path).unlink(missing_ok=True)
        for i in signers:
            sign_playbook(self.path, self.keys[i], context=context)
        return self.path

    def load(self, now: float = NOW):
        return load_limits(self.path, self.path.read_bytes(), self.verifier, now)

    def refusal(self, now: float = NOW) -> LimitsError:
        with pytest.raises(LimitsError) as info:
            self.load(now)
        assert "\n" not in info.value.message
        return info.value


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_signed_by_two_of_three_loads_with_signers(world: World) -> None:
    world.write(limits_text(), 0, 1)
    signed = world.load()
    assert signed.signers == ("alice", "bob")
    assert signed.limits.version == 3
    assert signed.describe()["version"] == 3


def test_unsigned_refused(world: World) -> None:
    world.write(limits_text())
    exc = world.refusal()
    assert exc.reason == "no_signatures" and "lifeline risk sign" in exc.message


def test_under_signed_refused(world: World) -> None:
    world.write(limits_text(), 0)
    exc = world.refusal()
    assert exc.reason == "threshold" and "1 valid signature(s), 2 needed" in exc.message
    assert "lifeline risk sign" in exc.message


def test_changed_after_signing_refused(world: World) -> None:
    world.write(limits_text(), 0, 1)
    world.path.write_bytes(world.path.read_bytes().replace(b'"2"', b'"20"'))
    assert world.refusal().reason == "modified"


def test_playbook_signatures_do_not_count_on_limits(world: World) -> None:
    world.write(limits_text(), 0, 1, context=b"lifeline-playbook-signature-v1\0")
    assert world.refusal().reason == "modified"


def test_expired_refused(world: World) -> None:
    world.write(limits_text(expires="2020-01-01T00:00:00Z"), 0, 1)
    exc = world.refusal()
    assert exc.reason == "expired" and "2020-01-01T00:00:00Z" in exc.message


def test_rolled_back_refused_and_same_version_other_bytes_pinned(world: World) -> None:
    world.write(limits_text(version=4), 0, 1)
    world.load()
    world.write(limits_text(version=3), 0, 1)
    exc = world.refusal()
    assert exc.reason == "rollback" and "version 3" in exc.message and "limits file" in exc.message
    world.write(limits_text(version=4, extra="duplicate_client_order_id = \"pass\""), 0, 1)
    assert world.refusal().reason == "pinned"
    world.write(limits_text(version=5), 1, 2)
    assert world.load().limits.version == 5


def test_invalid_names_the_key() -> None:
    with pytest.raises(LimitsError) as info:
        parse_limits(b'version = 1\nexpires = 2099-01-01T00:00:00Z\n[[limits]]\nmax_order_amount = "-1"\n', "l.toml")
    assert info.value.reason == "invalid" and "limits[0].max_order_amount" in info.value.message
    with pytest.raises(LimitsError) as info:
        parse_limits(b'version = 1\nexpires = 2099-01-01T00:00:00Z\nmax_ordr = 1\n', "l.toml")
    assert "max_ordr: unknown key" in info.value.message


def test_most_specific_entry_wins() -> None:
    limits = parse_limits(limits_text())
    r = limits.for_("kraken", "BTC/USDT")
    assert r.max_order_amount == Decimal("1") and r.max_position == Decimal("3") and r.max_open_orders == 10
    assert r.source["max_order_amount"] == "kraken/*"
    other = limits.for_("binance", "ETH/USDT")
    assert other.max_order_amount == Decimal("2") and other.max_position is None


def test_the_example_limits_file_parses() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "limits.toml"
    limits = parse_limits(example.read_bytes(), str(example))
    assert limits.for_("kraken", "BTC/USDT").max_position == Decimal("2")
    assert limits.for_("binance", "ETH/USDT").max_position == Decimal("5")
