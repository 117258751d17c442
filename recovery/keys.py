"""Operator keys and the keyring that says whose signatures count.

**Keys.** ``lifeline keys new --name alice`` makes an Ed25519 key pair:

* ``alice.key``: the private key, PEM PKCS#8, encrypted with the passphrase when one
  is given; created with mode 0600 (``O_CREAT|O_EXCL``: never overwrites a file).
  :func:`load_private_key` refuses a key file that group or others can access, as
  OpenSSH does.
* ``alice.pub``: one line ``lifeline-ed25519 <base64 of the raw 32 bytes> alice``.
  Wherever a public key is read, an OpenSSH ``ssh-ed25519 AAAA... comment`` line is
  accepted too, so operators may trust the Ed25519 SSH keys they already have.

A key's **id** is ``sha256(b"lifeline-key-v1\\0" + raw public key)[:32 hex]``; it is
what signature lines and the keyring name. Operators see the **fingerprint**, its
first 16 hex digits in groups of four (``3f2a-91c0-5be7-0d44``), and may type any
prefix of either (with or without the dashes) where a command asks for a key.

**Keyring** (``/etc/lifeline/keyring.toml``): the trusted public keys with their
holders, which of them may sign playbooks (``can_sign``), the threshold m (a playbook
needs valid signatures by m distinct such keys), the revoked key ids, and ``exec_allow``,
the absolute programs a playbook's ``exec`` step may run. :func:`load_keyring` checks
every field (a key's ``id`` must be the id derived from its ``public``), refuses
unknown fields (a typo must not silently weaken the policy) and refuses a keyring that
group or others may write (whoever can write the keyring can add a key and sign alone).

**Rotation** (tested in tests/unit/recovery/test_recovery_keys.py): ``lifeline keyring add
--key new.pub`` first, have the new key sign what the old one signed, then ``lifeline
keyring revoke OLD``. From then on the old key's signatures no longer count (they are
reported, not counted); a revoked key cannot be added back. Revoking is never refused,
even when it leaves fewer signing keys than the threshold (a stolen key must be
revocable at once); the command then says loudly that no playbook passes until a key is
added. While a holder has two unrevoked signing keys (between ``add`` and ``revoke``),
both count as distinct keys: ``keyring show`` and ``keyring add`` point this out, and
the fix is to finish the rotation promptly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.core.files import create_new_file, fsync_directory, link_new_file, replace_file
from recovery.errors import RecoveryError

KEY_ID_LABEL = b"lifeline-key-v1\0"
KEY_ID_HEX = 32
PUBLIC_PREFIX = "lifeline-ed25519"
SSH_PREFIX = "ssh-ed25519"
DEFAULT_KEYRING = Path("/etc/lifeline/keyring.toml")
KEYRING_VERSION = 1
#: The env variable the CLI reads a key's passphrase from when none is given otherwise.
PASSPHRASE_ENV = "LIFELINE_KEY_PASSPHRASE"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")


class KeyFileError(RecoveryError, ValueError):
    """A key file or public key line cannot be used; the message names the file and the fix."""


class KeyringError(RecoveryError, ValueError):
    """The keyring cannot be used or changed; the message names the file, the field and the fix."""


# --------------------------------------------------------------------------- ids


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


#: The encodings of Ed25519 points of small order (orders 1, 2, 4 and 8; "Taming the many
#: EdDSAs", Chalkias et al. 2020, and libsodium's blocklist), the all-zero key among them.
#: A signature under such a key can verify for many messages: never trust one.
SMALL_ORDER_KEYS = frozenset(bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity, order 1
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # (0, -1), order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4 (the all-zero key)
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
))
_P = 2**255 - 19


def weak_public_key(raw: bytes) -> str | None:
    """Why ``raw`` (32 bytes) must not be trusted as an Ed25519 public key, or None: a
    point of small order, or a non-canonical encoding (y >= p, or x = 0 with the sign
    bit set, the other spellings of small-order points)."""
    if len(raw) != 32:
        return "not 32 bytes"
    if raw in SMALL_ORDER_KEYS:
        return "a point of small order (a weak key: a signature under it proves nothing)"
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P:
        return "a non-canonical encoding (y >= p)"
    if raw[31] & 0x80 and y in (1, _P - 1):
        return "a non-canonical encoding of a point of small order"
    return None


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: 32 lowercase hex digits derived from the raw public key."""
    return hashlib.sha256(KEY_ID_LABEL + raw_public(public_key)).hexdigest()[:KEY_ID_HEX]


def fingerprint(key_id: str) -> str:
    """What operators are shown: the id's first 16 hex digits as ``3f2a-91c0-5be7-0d44``."""
    return "-".join(key_id[i:i + 4] for i in range(0, 16, 4))


def b64decode_strict(text: str, length: int) -> bytes | None:
    """Decode canonical standard base64 of exactly ``length`` bytes, else None.

    Canonical: re-encoding gives the same text. Plain ``b64decode`` ignores the unused
    low bits of the last digit, so two different texts would decode to the same bytes
    (a changed character that nobody notices)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != length or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what}: expected 1-63 letters, digits, '.', '_', '@' or '-' (starting with a letter "
                         f"or digit), found {name!r}")
    return name


# --------------------------------------------------------------------------- key files


@dataclass(frozen=True)
class KeyFiles:
    key_path: Path
    pub_path: Path
    key_id: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_id)


def public_line(public_key: Ed25519PublicKey, name: str) -> str:
    """The ``NAME.pub`` line (without the newline)."""
    return f"{PUBLIC_PREFIX} {base64.b64encode(raw_public(public_key)).decode('ascii')} {name}"


def _exists_message(path: Path) -> str:
    return (f"{path} already exists; choose another --name or --out, or remove the old file first if you really "
            "mean to replace it")


def generate_key(name: str, out_dir: str | os.PathLike[str] = ".", passphrase: bytes | None = None) -> KeyFiles:
    """Write ``NAME.key`` (0600, encrypted when ``passphrase``) and ``NAME.pub`` into ``out_dir``.

    Refuses (``FileExistsError``) when either file exists: an operator's key is replaced
    on purpose, never by accident."""
    check_name(name, "--name")
    out = Path(out_dir)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for existing in (key_path, pub_path):
        if os.path.lexists(existing):
            raise FileExistsError(_exists_message(existing))
    if passphrase is not None and not passphrase:
        raise KeyFileError("the passphrase is empty; give a real one, or none for an unencrypted key")
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = private.public_key()
    create_new_file(key_path, pem, 0o600, exists_message=_exists_message(key_path))
    try:
        create_new_file(pub_path, (public_line(public, name) + "\n").encode("ascii"), 0o644,
                        exists_message=_exists_message(pub_path))
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    fsync_directory(out)
    return KeyFiles(key_path, pub_path, key_id(public))


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether the private key file is passphrase-protected (without decrypting it)."""
    with open(path, "rb") as f:
        return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in f.read(64 * 1024)


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The private key in ``path``. ``KeyFileError`` (a ValueError) when group or others
    can access the file, when it is encrypted and no (or a wrong) passphrase is given, or
    when it is not an Ed25519 private key; ``OSError`` when it cannot be read."""
    path = Path(path)
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path}: the private key is accessible by group or others (mode "
                               f"{stat.filemode(mode)}); fix it with `chmod 600 {path}`")
        data = f.read(64 * 1024)
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and not passphrase:
        raise KeyFileError(f"{path} is encrypted: give its passphrase (--passphrase-env VAR, or the "
                           f"{PASSPHRASE_ENV} environment variable, or type it when asked)")
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise KeyFileError(f"{path}: wrong passphrase (the key could not be decrypted)") from None
        raise KeyFileError(f"{path}: not a PEM private key (expected the NAME.key that `lifeline keys new` "
                           "writes)") from None
    except TypeError as exc:  # pragma: no cover - covered by the checks above
        raise KeyFileError(f"{path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removeprefix('_')} key, expected Ed25519 "
                           "(make one with `lifeline keys new --name NAME`)")
    return key


@dataclass(frozen=True)
class PublicKeyInfo:
    """A public key as read from a ``.pub`` file or line, with the name it carries."""

    key: Ed25519PublicKey = field(repr=False)
    comment: str
    key_id: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_id)


def parse_public_line(line: str, source: str = "public key") -> PublicKeyInfo:
    """Parse a ``lifeline-ed25519 B64 [name]`` or ``ssh-ed25519 AAAA... [comment]`` line."""
    text = line.strip()
    parts = text.split(None, 2)
    if len(parts) >= 2 and parts[0] == PUBLIC_PREFIX:
        raw = b64decode_strict(parts[1], 32)
        if raw is None:
            raise KeyFileError(f"{source}: the key after {PUBLIC_PREFIX!r} is not the base64 of 32 bytes; copy the "
                               "whole line again from the NAME.pub file")
        weak = weak_public_key(raw)
        if weak is not None:
            raise KeyFileError(f"{source}: refused: the public key is {weak}; make a real key with "
                               "`lifeline keys new`")
        public = Ed25519PublicKey.from_public_bytes(raw)
    elif len(parts) >= 2 and parts[0] == SSH_PREFIX:
        try:
            loaded = serialization.load_ssh_public_key(" ".join(parts[:2]).encode("ascii"))
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise KeyFileError(f"{source}: not a valid ssh-ed25519 public key line; copy it again from the "
                               "~/.ssh/*.pub file") from None
        if not isinstance(loaded, Ed25519PublicKey):  # pragma: no cover - the prefix says ed25519
            raise KeyFileError(f"{source}: not an Ed25519 key")
        weak = weak_public_key(raw_public(loaded))
        if weak is not None:
            raise KeyFileError(f"{source}: refused: the ssh-ed25519 key is {weak}; use a real key")
        public = loaded
    else:
        first = parts[0] if parts else ""
        raise KeyFileError(f"{source}: expected a line `{PUBLIC_PREFIX} <base64> NAME` (from `lifeline keys new`) or "
                           f"`{SSH_PREFIX} AAAA... comment`, found {first[:40]!r}")
    comment = parts[2].strip() if len(parts) > 2 else ""
    return PublicKeyInfo(public, comment, key_id(public))


def read_public_key(path_or_line: str | os.PathLike[str]) -> PublicKeyInfo:
    """A public key from a ``.pub`` file (its first line that is not blank or a
    comment) or from the line itself."""
    if isinstance(path_or_line, str) and (
            path_or_line.lstrip().startswith((PUBLIC_PREFIX + " ", SSH_PREFIX + " "))
            or (len(path_or_line.strip().split()) > 1 and not os.path.exists(path_or_line))):
        return parse_public_line(path_or_line)
    path = Path(path_or_line)
    text = path.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return parse_public_line(line, str(path))
    raise KeyFileError(f"{path}: no public key line in the file (expected `{PUBLIC_PREFIX} <base64> NAME`)")


def load_public_key(path_or_line: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a ``.pub`` file or a public key line."""
    return read_public_key(path_or_line).key


# --------------------------------------------------------------------------- keyring


@dataclass(frozen=True)
class KeyEntry:
    """One ``[[key]]`` of the keyring."""

    id: str
    holder: str
    public_key: Ed25519PublicKey = field(repr=False, compare=False)
    can_sign: bool = True

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.id)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(raw_public(self.public_key)).decode("ascii")


@dataclass(frozen=True)
class Keyring:
    """The trust policy for playbooks. Build with :func:`load_keyring` or
    :func:`init_keyring`; change with :func:`add_key` / :func:`revoke_key` (which
    return a new Keyring) and :func:`write_keyring`."""

    threshold: int
    keys: tuple[KeyEntry, ...]
    revoked: tuple[str, ...] = ()
    exec_allow: tuple[str, ...] = ()
    version: int = KEYRING_VERSION
    source: str = field(default="<keyring>", compare=False)

    @cached_property
    def _by_id(self) -> dict[str, KeyEntry]:
        return {k.id: k for k in self.keys}

    @cached_property
    def _revoked(self) -> frozenset[str]:
        return frozenset(self.revoked)

    @cached_property
    def _signers(self) -> dict[str, KeyEntry]:
        return {k.id: k for k in self.keys if k.can_sign and k.id not in self._revoked}

    def signers(self) -> dict[str, KeyEntry]:
        """The keys whose playbook signatures count: trusted, ``can_sign``, not revoked (by id)."""
        return self._signers

    def get(self, key_id: str) -> KeyEntry | None:
        return self._by_id.get(key_id)

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self._revoked

    def find(self, query: str) -> KeyEntry:
        """The one key whose id or fingerprint starts with ``query`` (dashes ignored, at
        least 4 hex digits), or whose holder is ``query`` when that is unambiguous."""
        wanted = query.strip().lower().replace("-", "").replace(":", "")
        matches: list[KeyEntry] = []
        if re.fullmatch(r"[0-9a-f]{4,32}", wanted):
            matches = [k for k in self.keys if k.id.startswith(wanted)]
        if not matches:
            matches = [k for k in self.keys if k.holder == query.strip()]
        if not matches:
            raise KeyringError(f"{self.source}: no key matches {query!r}; give a key id or fingerprint prefix "
                               "(at least 4 hex digits) from `lifeline keyring show`")
        if len(matches) > 1:
            listed = ", ".join(f"{k.holder} {k.fingerprint}" for k in matches)
            raise KeyringError(f"{self.source}: {query!r} matches {len(matches)} keys ({listed}); give more of the "
                               "key id")
        return matches[0]

    def warnings(self) -> list[str]:
        """What an operator should fix although the keyring loads."""
        out = []
        signers = self.signers()
        if len(signers) < self.threshold:
            out.append(f"threshold is {self.threshold} but only {len(signers)} unrevoked signing key(s): no "
                       "playbook can pass until you `lifeline keyring add` a key (or lower the threshold)")
        holders: dict[str, list[KeyEntry]] = {}
        for k in signers.values():
            holders.setdefault(k.holder, []).append(k)
        for holder, ks in sorted(holders.items()):
            if len(ks) > 1:
                out.append(f"{holder} holds {len(ks)} unrevoked signing keys ({', '.join(k.fingerprint for k in ks)}) "
                           "that count as distinct signers: finish the rotation with `lifeline keyring revoke OLD`")
        return out


def _keyring_problem(source: str, field_name: str, problem: str, fix: str) -> KeyringError:
    return KeyringError(f"{source}: {field_name}: {problem}; {fix}")


_TOP_FIELDS = {"version", "threshold", "exec_allow", "revoked", "key"}
_KEY_FIELDS = {"id", "holder", "public", "can_sign"}


def parse_keyring(text: str, source: str = "<keyring>") -> Keyring:
    """A Keyring from TOML text; ``KeyringError`` naming the first problem, its field and the fix."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyringError(f"{source}: not valid TOML ({exc}); fix the syntax or re-create it with "
                           "`lifeline keyring init`") from None
    unknown = sorted(set(doc) - _TOP_FIELDS)
    if unknown:
        raise _keyring_problem(source, unknown[0], "unknown field", f"the fields are {', '.join(sorted(_TOP_FIELDS))}")
    version = doc.get("version")
    if version != KEYRING_VERSION or isinstance(version, bool):
        raise _keyring_problem(source, "version", f"expected {KEYRING_VERSION}, found {version!r}",
                               f"set `version = {KEYRING_VERSION}`")
    threshold = doc.get("threshold")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise _keyring_problem(source, "threshold", f"expected an integer >= 1, found {threshold!r}",
                               "set how many distinct keys must sign a playbook, e.g. `threshold = 2`")
    exec_allow = doc.get("exec_allow", [])
    if not isinstance(exec_allow, list):
        raise _keyring_problem(source, "exec_allow", "expected a list of absolute paths", 'e.g. `exec_allow = '
                               '["/usr/local/bin/page-desk"]`')
    for i, program in enumerate(exec_allow):
        problem = _exec_path_problem(program)
        if problem:
            raise _keyring_problem(source, f"exec_allow[{i}]", problem, "give the program's absolute, normalised path")
    if len(set(exec_allow)) != len(exec_allow):
        raise _keyring_problem(source, "exec_allow", "a program is listed twice", "remove the duplicate")
    revoked = doc.get("revoked", [])
    if not isinstance(revoked, list):
        raise _keyring_problem(source, "revoked", "expected a list of key ids", "e.g. `revoked = []`")
    for i, rid in enumerate(revoked):
        if not isinstance(rid, str) or not _KEY_ID.fullmatch(rid):
            raise _keyring_problem(source, f"revoked[{i}]", f"expected a key id (32 lowercase hex digits), found "
                                   f"{rid!r}", "copy the id from `lifeline keyring show`")
    if len(set(revoked)) != len(revoked):
        raise _keyring_problem(source, "revoked", "a key id is listed twice", "remove the duplicate")
    tables = doc.get("key", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _keyring_problem(source, "key", "expected [[key]] tables", "see `lifeline keyring init`")
    entries: list[KeyEntry] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        where = f"key[{i}]"
        unknown = sorted(set(table) - _KEY_FIELDS)
        if unknown:
            raise _keyring_problem(source, f"{where}.{unknown[0]}", "unknown field",
                                   f"a key has {', '.join(sorted(_KEY_FIELDS))}")
        for name in ("id", "holder", "public"):
            if not isinstance(table.get(name), str):
                raise _keyring_problem(source, f"{where}.{name}", "missing or not a string",
                                       "re-add the key with `lifeline keyring add --key NAME.pub`")
        holder = table["holder"]
        try:
            check_name(holder, "holder")
        except ValueError as exc:
            raise _keyring_problem(source, f"{where}.holder", str(exc).removeprefix("holder: "),
                                   "use a short name such as the operator's login") from None
        raw = b64decode_strict(table["public"], 32)
        if raw is None:
            raise _keyring_problem(source, f"{where}.public", "not the base64 of a 32-byte Ed25519 public key",
                                   "copy it from the holder's NAME.pub (the part after `lifeline-ed25519`)")
        weak = weak_public_key(raw)
        if weak is not None:
            raise _keyring_problem(source, f"{where}.public", f"refused: {weak}",
                                   "remove this key; have its holder make a real one with `lifeline keys new`")
        public = Ed25519PublicKey.from_public_bytes(raw)
        derived = key_id(public)
        if table["id"] != derived:
            raise _keyring_problem(source, f"{where}.id", f"{table['id']!r} is not the id of this public key "
                                   f"({derived})", "re-add the key with `lifeline keyring add` rather than editing ids")
        if derived in seen:
            raise _keyring_problem(source, where, f"key {fingerprint(derived)} is listed twice", "remove one")
        seen.add(derived)
        can_sign = table.get("can_sign", True)
        if not isinstance(can_sign, bool):
            raise _keyring_problem(source, f"{where}.can_sign", f"expected true or false, found {can_sign!r}",
                                   "write `can_sign = true` or `can_sign = false`")
        entries.append(KeyEntry(derived, holder, public, can_sign))
    return Keyring(threshold, tuple(entries), tuple(revoked), tuple(exec_allow), version, source)


def load_keyring(path: str | os.PathLike[str] = DEFAULT_KEYRING) -> Keyring:
    """The keyring at ``path``; ``KeyringError`` (a ValueError) naming file, field and fix."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except FileNotFoundError:
        raise KeyringError(f"{path}: no such keyring; create it with `lifeline keyring init --threshold M --key "
                           f"A.pub --key B.pub --out {path}` or pass --keyring PATH") from None
    except OSError as exc:
        raise KeyringError(f"{path}: cannot read the keyring ({exc.strerror}); check its permissions") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyringError(f"{path}: the keyring is writable by group or others (mode {stat.filemode(mode)}), so "
                           f"anyone could add a key; fix it with `chmod 644 {path}`")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyringError(f"{path}: not UTF-8 text; re-create it with `lifeline keyring init`") from None
    return parse_keyring(text, str(path))


def _exec_path_problem(program: Any) -> str | None:
    if not isinstance(program, str) or not program:
        return f"expected an absolute path, found {program!r}"
    if not program.startswith("/") or os.path.normpath(program) != program or "\0" in program:
        return f"expected an absolute, normalised path, found {program!r}"
    return None


def format_keyring(keyring: Keyring) -> str:
    """The keyring as TOML (what :func:`write_keyring` writes), with explanatory comments."""

    def s(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    lines = [
        "# lifeline keyring: whose signatures count for recovery playbooks.",
        "# Change it with `lifeline keyring add|revoke`; check it with `lifeline keyring show`.",
        f"version = {keyring.version}",
        f"threshold = {keyring.threshold}    # valid signatures by this many distinct, unrevoked signing keys",
        "exec_allow = [" + ", ".join(s(p) for p in keyring.exec_allow) + "]",
    ]
    if keyring.revoked:
        lines.append("revoked = [")
        for rid in keyring.revoked:
            entry = keyring.get(rid)
            note = f"  # {entry.holder} {entry.fingerprint}" if entry else ""
            lines.append(f"  {s(rid)},{note}")
        lines.append("]")
    else:
        lines.append("revoked = []")
    for k in keyring.keys:
        lines += [
            "",
            "[[key]]",
            f"id = {s(k.id)}    # fingerprint {k.fingerprint}{' (REVOKED)' if keyring.is_revoked(k.id) else ''}",
            f"holder = {s(k.holder)}",
            f"public = {s(k.public_b64)}",
            f"can_sign = {'true' if k.can_sign else 'false'}",
        ]
    return "\n".join(lines) + "\n"


def write_keyring(keyring: Keyring, path: str | os.PathLike[str], *, create: bool = False) -> None:
    """Write ``keyring`` to ``path`` atomically (temp file, fsync, rename, fsync of the
    directory), mode 0644. With ``create``, refuse (``FileExistsError``) when ``path``
    exists: re-initialising a keyring by accident would throw away its trust."""
    path = Path(path)
    text = format_keyring(keyring)
    parse_keyring(text, str(path))  # never write what would not load
    if create:
        link_new_file(path, text.encode("utf-8"), 0o644,  # atomic create-if-absent
                      exists_message=f"{path} already exists; change it with `lifeline keyring add|revoke`, or "
                                     "remove it first if you really mean to start over")
    else:
        replace_file(path, text.encode("utf-8"), 0o644)


def init_keyring(threshold: int, keys: Sequence[tuple[Ed25519PublicKey, str]],
                 exec_allow: Iterable[str] = (), *, source: str = "<keyring>") -> Keyring:
    """A new keyring trusting ``keys`` ((public key, holder) pairs, all may sign)."""
    if not keys:
        raise KeyringError(f"{source}: no keys given; pass --key A.pub --key B.pub ...")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise KeyringError(f"{source}: --threshold must be an integer >= 1, found {threshold!r}")
    entries: list[KeyEntry] = []
    for public, holder in keys:
        try:
            check_name(holder, "holder")
        except ValueError as exc:
            raise KeyringError(f"{source}: {exc}; name the holder with a short name (e.g. their login)") from None
        kid = key_id(public)
        if any(e.id == kid for e in entries):
            raise KeyringError(f"{source}: the key {fingerprint(kid)} ({holder}) is given twice; each --key must be a "
                               "different key")
        entries.append(KeyEntry(kid, holder, public, True))
    if threshold > len(entries):
        raise KeyringError(f"{source}: threshold {threshold} is more than the {len(entries)} key(s) given: no playbook "
                           "could ever pass; give more --key or a lower --threshold")
    allow = tuple(exec_allow)
    for program in allow:
        problem = _exec_path_problem(program)
        if problem:
            raise KeyringError(f"{source}: --exec-allow: {problem}; give the program's absolute path")
    if len(set(allow)) != len(allow):
        raise KeyringError(f"{source}: --exec-allow lists a program twice; remove the duplicate")
    return Keyring(threshold, tuple(entries), (), allow, KEYRING_VERSION, source)


def add_key(keyring: Keyring, public_key: Ed25519PublicKey, holder: str, *, can_sign: bool = True) -> Keyring:
    """``keyring`` with one more key. Refuses a key already present or revoked."""
    try:
        check_name(holder, "holder")
    except ValueError as exc:
        raise KeyringError(f"{keyring.source}: {exc}; pass --holder NAME") from None
    kid = key_id(public_key)
    if keyring.is_revoked(kid):
        raise KeyringError(f"{keyring.source}: key {fingerprint(kid)} was revoked and cannot be trusted again; the "
                           "holder must make a new key (`lifeline keys new`)")
    existing = keyring.get(kid)
    if existing is not None:
        raise KeyringError(f"{keyring.source}: key {fingerprint(kid)} is already in the keyring (holder "
                           f"{existing.holder})")
    entry = KeyEntry(kid, holder, public_key, can_sign)
    return Keyring(keyring.threshold, keyring.keys + (entry,), keyring.revoked, keyring.exec_allow,
                   keyring.version, keyring.source)


def revoke_key(keyring: Keyring, query: str) -> tuple[Keyring, KeyEntry]:
    """``keyring`` with the key matching ``query`` (id / fingerprint prefix, or holder
    when unambiguous) revoked, and that key. The key stays listed (so reports can name
    its holder) but its signatures no longer count. Never refused for leaving too few
    signing keys: see :meth:`Keyring.warnings`."""
    entry = keyring.find(query)
    if keyring.is_revoked(entry.id):
        raise KeyringError(f"{keyring.source}: {entry.holder}'s key {entry.fingerprint} is already revoked")
    return (Keyring(keyring.threshold, keyring.keys, keyring.revoked + (entry.id,), keyring.exec_allow,
                    keyring.version, keyring.source), entry)
