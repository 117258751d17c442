"""Operator keys and the keyring (recovery/keys.py)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recovery.keys import (
    KeyFileError,
    KeyringError,
    add_key,
    fingerprint,
    format_keyring,
    generate_key,
    init_keyring,
    is_encrypted,
    key_id,
    load_keyring,
    load_private_key,
    load_public_key,
    parse_keyring,
    public_line,
    read_public_key,
    revoke_key,
    write_keyring,
)
from tests.support.files import spy_fsync


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def new_keys(n: int) -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(n)]


def ring(keys: list[Ed25519PrivateKey], threshold: int, holders: list[str] | None = None, **kw):
    holders = holders or [f"op{i}" for i in range(len(keys))]
    return init_keyring(threshold, [(k.public_key(), h) for k, h in zip(keys, holders)], **kw)


# --------------------------------------------------------------------------- ids and key files


def test_key_id_and_fingerprint_follow_the_contract() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = hashlib.sha256(b"lifeline-key-v1\0" + raw).hexdigest()[:32]
    assert key_id(key) == expected
    assert fingerprint(expected) == "-".join(expected[i:i + 4] for i in (0, 4, 8, 12))
    assert len(fingerprint(expected)) == 19


def test_generate_key_writes_a_0600_private_key_and_a_public_line(tmp_path: Path) -> None:
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        files = generate_key("alice", tmp_path, None)
    finally:
        os.umask(old)
    assert files.key_path == tmp_path / "alice.key" and files.pub_path == tmp_path / "alice.pub"
    assert mode(files.key_path) == 0o600
    assert mode(files.pub_path) == 0o644
    line = files.pub_path.read_text()
    prefix, b64, name = line.rstrip("\n").split(" ")
    assert (prefix, name) == ("lifeline-ed25519", "alice") and line.endswith("\n")
    assert len(base64.b64decode(b64)) == 32
    private = load_private_key(files.key_path)
    assert key_id(private.public_key()) == files.key_id == key_id(load_public_key(files.pub_path))
    assert not is_encrypted(files.key_path)
    assert files.key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_generate_key_never_overwrites(tmp_path: Path) -> None:
    generate_key("alice", tmp_path, None)
    before = (tmp_path / "alice.key").read_bytes()
    with pytest.raises(FileExistsError, match="alice.key already exists"):
        generate_key("alice", tmp_path, None)
    assert (tmp_path / "alice.key").read_bytes() == before
    (tmp_path / "bob.pub").write_text("something else\n")
    with pytest.raises(FileExistsError, match="bob.pub already exists"):
        generate_key("bob", tmp_path, None)
    assert not (tmp_path / "bob.key").exists()


@pytest.mark.parametrize("name", ["", "-x", "a b", "../evil", "x" * 64])
def test_generate_key_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="--name"):
        generate_key(name, tmp_path, None)


def test_encrypted_private_key(tmp_path: Path) -> None:
    files = generate_key("bob", tmp_path, b"correct horse")
    assert mode(files.key_path) == 0o600
    assert is_encrypted(files.key_path)
    assert b"ENCRYPTED PRIVATE KEY" in files.key_path.read_bytes()
    with pytest.raises(KeyFileError, match=r"bob.key is encrypted: give its passphrase \(--passphrase-env VAR"):
        load_private_key(files.key_path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(files.key_path, b"battery staple")
    key = load_private_key(files.key_path, b"correct horse")
    assert key_id(key.public_key()) == files.key_id


def test_a_passphrase_given_for_an_unencrypted_key_is_ignored(tmp_path: Path) -> None:
    files = generate_key("carol", tmp_path, None)
    assert key_id(load_private_key(files.key_path, b"whatever").public_key()) == files.key_id


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="passphrase is empty"):
        generate_key("dave", tmp_path, b"")


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644])
def test_private_key_readable_by_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    files = generate_key("alice", tmp_path, None)
    files.key_path.chmod(bad_mode)
    with pytest.raises(KeyFileError, match=r"accessible by group or others .*chmod 600"):
        load_private_key(files.key_path)


def test_private_key_must_be_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "rsa.key"
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pem)
    os.close(fd)
    with pytest.raises(KeyFileError, match="expected Ed25519"):
        load_private_key(path)
    garbage = tmp_path / "garbage.key"
    fd = os.open(garbage, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(garbage)


def test_public_keys_from_lines_files_and_openssh() -> None:
    private = Ed25519PrivateKey.generate()
    line = public_line(private.public_key(), "alice")
    info = read_public_key(line)
    assert info.comment == "alice" and info.key_id == key_id(private.public_key())
    ssh = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode() + " alice@laptop"
    ssh_info = read_public_key(ssh)
    assert ssh_info.key_id == info.key_id and ssh_info.comment == "alice@laptop"


def test_public_key_file_skips_comments(tmp_path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "x.pub"
    path.write_text("# alice's key\n\n" + public_line(private.public_key(), "alice") + "\n")
    assert key_id(load_public_key(path)) == key_id(private.public_key())


def test_bad_public_keys_are_refused(tmp_path: Path) -> None:
    rsa_line = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    with pytest.raises(KeyFileError, match="expected a line `lifeline-ed25519"):
        read_public_key(rsa_line)
    good = public_line(Ed25519PrivateKey.generate().public_key(), "a")
    b64 = good.split()[1]
    # the last digit before "=" carries 2 unused bits: a changed unused bit must not be accepted
    tweaked = b64[:-2] + ("B" if b64[-2] == "A" else "A") + "="
    if base64.b64decode(tweaked) == base64.b64decode(b64):
        with pytest.raises(KeyFileError, match="not the base64 of 32 bytes"):
            read_public_key(f"lifeline-ed25519 {tweaked} a")
    with pytest.raises(KeyFileError, match="not the base64 of 32 bytes"):
        read_public_key("lifeline-ed25519 AAAA a")
    empty = tmp_path / "empty.pub"
    empty.write_text("# nothing\n")
    with pytest.raises(KeyFileError, match="no public key line"):
        read_public_key(empty)


# --------------------------------------------------------------------------- keyring


def test_keyring_round_trip(tmp_path: Path) -> None:
    keys = new_keys(3)
    keyring = ring(keys, 2, ["alice", "bob", "carol"], exec_allow=["/usr/local/bin/page-desk"])
    path = tmp_path / "keyring.toml"
    write_keyring(keyring, path, create=True)
    assert mode(path) == 0o644
    loaded = load_keyring(path)
    assert loaded == keyring
    assert loaded.source == str(path)
    assert [k.holder for k in loaded.keys] == ["alice", "bob", "carol"]
    assert loaded.exec_allow == ("/usr/local/bin/page-desk",)
    assert set(loaded.signers()) == {key_id(k.public_key()) for k in keys}
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"
    text = path.read_text()
    assert f"# fingerprint {fingerprint(key_id(keys[0].public_key()))}" in text


def test_keyring_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keyring.toml"
    write_keyring(ring(new_keys(2), 2), path, create=True)
    before = path.read_text()
    with pytest.raises(FileExistsError, match="already exists"):
        write_keyring(ring(new_keys(2), 1), path, create=True)
    assert path.read_text() == before


def test_write_keyring_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = spy_fsync(monkeypatch)
    write_keyring(ring(new_keys(1), 1), tmp_path / "k.toml")
    assert stat.S_IFREG in synced and stat.S_IFDIR in synced


def test_init_refuses_impossible_threshold_and_duplicate_keys() -> None:
    keys = new_keys(2)
    with pytest.raises(KeyringError, match="threshold 3 is more than the 2 key"):
        ring(keys, 3)
    with pytest.raises(KeyringError, match=r"--threshold must be an integer >= 1"):
        ring(keys, 0)
    with pytest.raises(KeyringError, match="is given twice"):
        init_keyring(1, [(keys[0].public_key(), "a"), (keys[0].public_key(), "b")])
    with pytest.raises(KeyringError, match="--exec-allow: expected an absolute, normalised path"):
        ring(keys, 1, exec_allow=["page-desk"])


def keyring_text(keys: list[Ed25519PrivateKey], threshold: int = 1, **overrides: str) -> str:
    text = format_keyring(ring(keys, threshold))
    for old, new in overrides.items():
        assert old in text or old.startswith("+"), old
        text = text + new if old.startswith("+") else text.replace(old, new)
    return text


@pytest.mark.parametrize("change, message", [
    ({"version = 1": "version = 2"}, r"version: expected 1, found 2; set `version = 1`"),
    ({"threshold = 1": "threshold = 0"}, r"threshold: expected an integer >= 1, found 0"),
    ({"threshold = 1": 'threshold = "2"'}, r"threshold: expected an integer >= 1, found '2'"),
    ({"+": "\ncolour = 1\n"}, None),  # appended into the last [[key]] table
    ({"revoked = []": "revoked = []\nthresold = 2"}, r"thresold: unknown field"),
    ({"revoked = []": 'revoked = ["XYZ"]'}, r"revoked\[0\]: expected a key id"),
    ({'exec_allow = []': 'exec_allow = ["/usr/bin/../bin/sh"]'}, r"exec_allow\[0\]: expected an absolute, normalised"),
    ({'exec_allow = []': 'exec_allow = ["/bin/a", "/bin/a"]'}, r"exec_allow: a program is listed twice"),
    ({"can_sign = true": 'can_sign = "yes"'}, r"key\[0\].can_sign: expected true or false"),
    ({'holder = "op0"': 'holder = "op 0"'}, r"key\[0\].holder"),
    ({"[[key]]": "[[kee]]"}, r"kee: unknown field"),
])
def test_keyring_load_errors_name_the_field_and_the_fix(change: dict[str, str], message: str | None) -> None:
    text = keyring_text(new_keys(1), **change)
    with pytest.raises(KeyringError) as info:
        parse_keyring(text, "/etc/lifeline/keyring.toml")
    assert str(info.value).startswith("/etc/lifeline/keyring.toml: ")
    assert "\n" not in str(info.value)
    if message is None:
        assert "key[0].colour: unknown field" in str(info.value)
    else:
        assert __import__("re").search(message, str(info.value)), str(info.value)


def test_keyring_key_id_must_match_the_public_key() -> None:
    keys = new_keys(2)
    text = format_keyring(ring(keys, 1))
    text = text.replace(key_id(keys[0].public_key()), "0" * 32, 1)
    with pytest.raises(KeyringError, match=r"key\[0\].id: '0{32}' is not the id of this public key"):
        parse_keyring(text)
    public = base64.b64encode(keys[0].public_key().public_bytes(serialization.Encoding.Raw,
                                                                 serialization.PublicFormat.Raw)).decode()
    text = format_keyring(ring(keys, 1)).replace(public, "AAAA")
    with pytest.raises(KeyringError, match=r"key\[0\].public: not the base64 of a 32-byte"):
        parse_keyring(text)


def test_keyring_file_problems(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match=r"no such keyring; create it with `lifeline keyring init"):
        load_keyring(tmp_path / "missing.toml")
    path = tmp_path / "keyring.toml"
    write_keyring(ring(new_keys(1), 1), path)
    path.chmod(0o664)
    with pytest.raises(KeyringError, match=r"writable by group or others .*chmod 644"):
        load_keyring(path)
    path.chmod(0o644)
    path.write_text("threshold = [")
    with pytest.raises(KeyringError, match="not valid TOML"):
        load_keyring(path)


def test_signers_are_trusted_signing_unrevoked_keys() -> None:
    a, b, c = new_keys(3)
    keyring = ring([a, b], 1, ["alice", "bob"])
    keyring = add_key(keyring, c.public_key(), "carol", can_sign=False)
    keyring, _ = revoke_key(keyring, key_id(a.public_key()))
    assert set(keyring.signers()) == {key_id(b.public_key())}
    assert keyring.get(key_id(c.public_key())).can_sign is False
    assert keyring.is_revoked(key_id(a.public_key()))
    reloaded = parse_keyring(format_keyring(keyring))
    assert reloaded == keyring and set(reloaded.signers()) == {key_id(b.public_key())}


def test_add_refuses_present_and_revoked_keys() -> None:
    a, b = new_keys(2)
    keyring = ring([a, b], 1, ["alice", "bob"])
    with pytest.raises(KeyringError, match="already in the keyring"):
        add_key(keyring, a.public_key(), "alice2")
    keyring, _ = revoke_key(keyring, "alice")
    with pytest.raises(KeyringError, match="was revoked and cannot be trusted again"):
        add_key(keyring, a.public_key(), "alice")


def test_revoke_by_fingerprint_prefix(tmp_path: Path) -> None:
    a, b = new_keys(2)
    keyring = ring([a, b], 1, ["alice", "bob"])
    fp = fingerprint(key_id(a.public_key()))
    updated, entry = revoke_key(keyring, fp[:9])  # "3f2a-91c0"
    assert entry.holder == "alice" and updated.revoked == (entry.id,)
    with pytest.raises(KeyringError, match="already revoked"):
        revoke_key(updated, fp)
    with pytest.raises(KeyringError, match="no key matches"):
        revoke_key(keyring, "nobody")
    with pytest.raises(KeyringError, match="no key matches"):
        revoke_key(keyring, "zz")


def test_revoke_ambiguous_prefix_is_refused() -> None:
    # find two keys whose ids share the first 4 hex digits' first digit... use the holder instead
    a, b = new_keys(2)
    keyring = ring([a, b], 1, ["alice", "alice"])
    with pytest.raises(KeyringError, match="matches 2 keys"):
        revoke_key(keyring, "alice")


def test_revoking_below_the_threshold_is_allowed_but_warned() -> None:
    a, b = new_keys(2)
    keyring = ring([a, b], 2, ["alice", "bob"])
    updated, _ = revoke_key(keyring, "alice")  # a stolen key must be revocable at once
    assert any("no playbook can pass" in w for w in updated.warnings())


def test_a_holder_with_two_signing_keys_is_warned() -> None:
    a, b, a2 = new_keys(3)
    keyring = add_key(ring([a, b], 2, ["alice", "bob"]), a2.public_key(), "alice")
    assert any("alice holds 2 unrevoked signing keys" in w for w in keyring.warnings())
    rotated, _ = revoke_key(keyring, key_id(a.public_key()))
    assert rotated.warnings() == []
