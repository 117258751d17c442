"""The audit chain: an append-only, hash-chained, host-signed JSON-lines log.

What this module owns
---------------------
* The host key: ``STATE_DIR/recovery/host.key`` (Ed25519, PEM PKCS8, unencrypted, mode
  0600, made on first use) and ``host.pub`` (one line ``lifeline-ed25519 <base64> host``,
  the format of :mod:`recovery.keys`): :func:`load_or_create_host_key`.
* The writer, :class:`AuditLog`: every verification result, start, step and end of a
  playbook run becomes one line, written and fsynced before ``append`` returns.
* The checker, :func:`verify_audit`: walks the chain from the first line and names the
  FIRST broken link, and :func:`format_entry` for ``lifeline audit show``.
* The commands ``lifeline audit verify`` and ``lifeline audit show``
  (:func:`add_audit_parser`, :func:`run_audit_command`).

On-disk format
--------------
``STATE_DIR/recovery/audit.jsonl``, UTF-8, one entry per line, each line the canonical
JSON of the entry (keys sorted, separators ``,`` and ``:``, non-ASCII kept as is)::

    {"fields":{...},"hash":"<64 hex>","kind":"started","prev":"<64 hex>","seq":7,
     "sig":"<base64 of 64 bytes>","time":"2026-11-26T12:00:00.123Z"}

* ``seq`` counts from 1 without gaps; ``prev`` is the previous entry's ``hash`` (64
  zeros for the first entry).
* ``hash = sha256(b"\\x00" + canonical_json(entry without hash and sig))``: the 0x00
  prefix keeps entry hashes apart from any other hash of ours (Certificate Transparency
  does the same for leaves, RFC 6962 §2.1).
* ``sig = Ed25519(host key, b"lifeline-audit-v1\\0" + bytes.fromhex(hash))``: the context
  label keeps an audit signature from verifying as anything else (a playbook signature
  uses another label).

What verification catches, and what it cannot
---------------------------------------------
Any changed byte of a line (the line must be exactly the canonical form of what it
parses to, the hash must match, the base64 of the signature must be canonical), a
deleted, inserted, duplicated or reordered line, and entries written without the host's
private key (the signature). Checking against a copy of ``host.pub`` kept off the host
(``--pub``) also catches a rewritten ``host.pub`` — the lesson of journald's Forward
Secure Sealing, whose verification key is kept off the host too.

It cannot see a cut tail: the first N entries of a valid chain are a valid chain. The
report prints the head (last seq and hash): compare it with a head you noted earlier.
And whoever holds ``host.key`` (root on this host) can rewrite the whole chain; the chain
makes tampering *visible* to those who cannot.

Torn last line
--------------
An append that was interrupted (power cut, crash) leaves the file without its final
newline. Like the execution journal, :class:`AuditLog` cuts such a tail off when it opens
the file (or when it finds one before an append), fsyncs, logs
``audit.tail_truncated`` and keeps an :class:`AuditRecovery` in ``AuditLog.recovery``;
``verify_audit`` reports it as ``torn`` without changing anything. A complete last line
that is damaged is not a torn tail: the log refuses to continue that chain
(:class:`AuditError` naming the file and the fix).

Writers
-------
Several :class:`AuditLog` objects (in one or several processes) may append to the same
file: every append takes an exclusive ``flock``, and when the file grew since its own
last append the writer re-reads and checks the last line first, so the chain never forks.
``append`` is synchronous (write + fsync, a few milliseconds on a local disk).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime as dt
import enum
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from daemon.core.config import ConfigError
from daemon.core.files import fsync_directory, link_new_file, replace_file
from daemon.core.log import format_value, get_logger
from recovery.errors import RecoveryError

log = get_logger("recovery")

#: Signed with each entry's hash (see the module docstring).
AUDIT_CONTEXT = b"lifeline-audit-v1\0"
#: Prefix of the bytes an entry's hash covers.
HASH_PREFIX = b"\x00"
#: ``prev`` of the first entry.
GENESIS = "0" * 64

AUDIT_FILE = "audit.jsonl"
HOST_KEY_FILE = "host.key"
HOST_PUB_FILE = "host.pub"
DEFAULT_STATE_DIR = Path("/var/lib/lifeline")
PUBLIC_KEY_PREFIX = "lifeline-ed25519"

# Why a line breaks the chain (the second item of AuditReport.first_break).
MODIFIED = "modified"  # the line's bytes differ from what was written (hash, canonical form, shape)
DELETED = "deleted"  # entries are missing before this line (a seq gap)
INSERTED = "inserted"  # an entry that does not belong here (a copy, another chain's entry)
REORDERED = "reordered"  # the entry that belongs here is further down
BAD_SIGNATURE = "bad signature"  # the entry is consistent but not signed by this key
NOT_JSON = "not JSON"  # the line does not parse (or is not UTF-8, or is empty)
TORN = "torn"  # the last line has no newline: an interrupted append
REASONS = (MODIFIED, DELETED, INSERTED, REORDERED, BAD_SIGNATURE, NOT_JSON, TORN)

_ENTRY_KEYS = frozenset({"seq", "time", "kind", "fields", "prev", "hash", "sig"})
_HEX = frozenset("0123456789abcdef")
_CHUNK = 64 * 1024


class AuditError(RecoveryError):
    """The audit log or a key file cannot be used; the message names the file and the fix
    in one line."""


# --------------------------------------------------------------------------- encoding


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of ``obj`` that hashes and lines use."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash of an entry: over every key but ``hash`` and ``sig``."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(HASH_PREFIX + canonical_json(body).encode("utf-8")).hexdigest()


def _signed_message(hash_hex: str) -> bytes:
    return AUDIT_CONTEXT + bytes.fromhex(hash_hex)


def _utc_iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _plain(value: Any) -> Any:
    """``value`` as JSON data that survives a round trip unchanged (the entry ``append``
    returns is exactly what a reader of the file gets back)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate cannot be written as UTF-8
            value = value.encode("utf-8", "replace").decode("utf-8")
        return str(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {_plain_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=canonical_json)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return _plain(str(value))


def _plain_key(key: Any) -> str:
    text = _plain(key)
    return text if isinstance(text, str) else canonical_json(text)


# --------------------------------------------------------------------------- host key


def _public_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def format_public_key(public_key: Ed25519PublicKey, name: str = "host") -> str:
    """The ``.pub`` line (with its newline) of :mod:`recovery.keys`."""
    return f"{PUBLIC_KEY_PREFIX} {base64.b64encode(_public_raw(public_key)).decode('ascii')} {name}\n"


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """The operator's fingerprint of a key, as :mod:`recovery.keys` shows it
    (``3f2a-91c0-5be7-0d44``)."""
    key_id = hashlib.sha256(b"lifeline-key-v1\0" + _public_raw(public_key)).hexdigest()[:32]
    return "-".join(key_id[i:i + 4] for i in range(0, 16, 4))


def parse_public_key(text: str, source: str = "<text>") -> Ed25519PublicKey:
    """A public key from a ``lifeline-ed25519 <base64> NAME`` or ``ssh-ed25519 AAAA...``
    line (the first line that is not blank or a ``#`` comment)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    parts = line.split()
    fix = "expected one line `lifeline-ed25519 <base64 of 32 bytes> NAME` (host.pub) or an `ssh-ed25519 AAAA...` line"
    if len(parts) >= 2 and parts[0] == PUBLIC_KEY_PREFIX:
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise AuditError(f"{source}: the key is not base64 of 32 bytes; {fix}")
        return Ed25519PublicKey.from_public_bytes(raw)
    if len(parts) >= 2 and parts[0] == "ssh-ed25519":
        try:
            key = serialization.load_ssh_public_key(" ".join(parts[:2]).encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise AuditError(f"{source}: not a valid ssh-ed25519 key ({exc}); {fix}") from None
        if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - the prefix says ed25519
            raise AuditError(f"{source}: not an Ed25519 key; {fix}")
        return key
    raise AuditError(f"{source}: no public key found; {fix}")


def read_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The public key in the file ``path`` (see :func:`parse_public_key`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditError(f"{path}: no such file; pass --pub with the host's public key (host.pub, written next "
                         f"to host.key when the daemon first writes the audit log)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the public key: {exc}") from None
    return parse_public_key(text, str(path))


def _load_host_key(path: Path) -> Ed25519PrivateKey:
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditError(f"{path}: the host key is accessible by group or others (mode {mode & 0o777:04o}); "
                             f"fix it with `chmod 600 {path}`")
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise AuditError(f"{path}: the host key is encrypted; the daemon signs unattended and needs it "
                         "unencrypted (move it aside: a new one is made on the next start)") from None
    except ValueError as exc:
        raise AuditError(f"{path}: not a PEM PKCS8 private key ({exc}); move it aside: a new one is made on the "
                         "next start (entries signed with the old key then verify only with the old host.pub)"
                         ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path}: the host key is a {type(key).__name__}, expected Ed25519; move it aside: a new "
                         "one is made on the next start")
    return key


def _create_host_key(path: Path) -> Ed25519PrivateKey:
    """Make the key in a temporary file and link it into place: another process racing
    us either wins (we load its key) or loses; nobody ever reads a half-written key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        link_new_file(path, pem, 0o600, exists_message=f"{path} already exists")
    except FileExistsError:
        return _load_host_key(path)
    log.info("audit.host_key_created", key=path, fingerprint=key_fingerprint(key.public_key()))
    return key


def _write_public_key(pub_path: Path, public_key: Ed25519PublicKey) -> None:
    line = format_public_key(public_key)
    try:
        current = pub_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    if current == line:
        return
    replace_file(pub_path, line.encode("ascii"), 0o644)
    if current is None:
        log.info("audit.host_pub_written", pub=pub_path, fingerprint=key_fingerprint(public_key))
    else:
        log.warning("audit.host_pub_replaced", pub=pub_path, fingerprint=key_fingerprint(public_key),
                    note="host.pub did not match host.key; it now does")


def host_audit_factory(state_dir: str | os.PathLike[str], audit_log: str | os.PathLike[str] | None = None,
                       ) -> Callable[[], AuditLog]:
    """Opens the host's audit log: ``audit_log`` (``recovery.audit_log``) or
    ``STATE_DIR/recovery/audit.jsonl``, signed with the host key. What the composition root
    (:mod:`daemon.app`) hands the venues and the standby as their audit sink."""

    def open_log() -> AuditLog:
        path = Path(audit_log) if audit_log is not None else Path(state_dir) / "recovery" / "audit.jsonl"
        key, _ = load_or_create_host_key(state_dir)
        return AuditLog(path, key)

    return open_log


def load_or_create_host_key(state_dir: str | os.PathLike[str]) -> tuple[Ed25519PrivateKey, Path]:
    """The host's audit key, made on first use: ``STATE_DIR/recovery/host.key`` (mode 0600,
    PEM PKCS8, unencrypted) and ``host.pub`` (rewritten whenever it does not match the
    key). Returns the private key and the path of ``host.pub``; keep a copy of that file
    off the host to verify the log with. Raises :class:`AuditError` for an unusable key."""
    directory = Path(state_dir) / "recovery"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / HOST_KEY_FILE
    pub_path = directory / HOST_PUB_FILE
    try:
        key = _load_host_key(key_path)
    except FileNotFoundError:
        key = _create_host_key(key_path)
    _write_public_key(pub_path, key.public_key())
    return key, pub_path


# --------------------------------------------------------------------------- checking one line


@dataclass(frozen=True)
class _Line:
    """What one line is on its own: an authentic entry (reason None) or why not."""

    entry: dict[str, Any] | None
    reason: str | None = None
    detail: str = ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """json.loads without NaN/Infinity (which Python accepts and JSON does not)."""
    return json.loads(text, parse_constant=_reject_constant)


def _json_error(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _shape_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an audit entry object"
    missing = sorted(_ENTRY_KEYS - obj.keys())
    if missing:
        return f"not an audit entry: no {', '.join(repr(k) for k in missing)}"
    extra = sorted(obj.keys() - _ENTRY_KEYS)
    if extra:
        return f"not an audit entry: unexpected {', '.join(repr(k) for k in extra)}"
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return f"'seq' must be an integer >= 1, found {seq!r:.40}"
    for key in ("time", "kind", "sig"):
        if not isinstance(obj[key], str):
            return f"{key!r} must be a string"
    if not isinstance(obj["fields"], dict):
        return "'fields' must be an object"
    for key in ("prev", "hash"):
        value = obj[key]
        if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
            return f"{key!r} must be 64 lowercase hex digits"
    return None


def _examine(raw: bytes, public_key: Ed25519PublicKey) -> _Line:
    if not raw:
        return _Line(None, NOT_JSON, "an empty line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Line(None, NOT_JSON, f"not UTF-8 text (byte {exc.start})")
    try:
        obj = _loads(text)
    except (ValueError, RecursionError) as exc:
        return _Line(None, NOT_JSON, f"not valid JSON ({_json_error(exc)})")
    problem = _shape_problem(obj)
    if problem is not None:
        return _Line(None, MODIFIED, problem)
    seq = obj["seq"]
    if entry_hash(obj) != obj["hash"]:
        return _Line(None, MODIFIED, f"the content of entry seq {seq} does not match its hash (changed after "
                                     "it was written)")
    if canonical_json(obj) != text:
        return _Line(None, MODIFIED, f"entry seq {seq} is not in the exact form the log writes (its bytes were "
                                     "changed after it was written)")
    try:
        sig = base64.b64decode(obj["sig"], validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if len(sig) != 64 or base64.b64encode(sig).decode("ascii") != obj["sig"]:
        return _Line(None, BAD_SIGNATURE, f"the signature of entry seq {seq} is not the base64 of 64 bytes")
    try:
        public_key.verify(sig, _signed_message(obj["hash"]))
    except InvalidSignature:
        return _Line(None, BAD_SIGNATURE, f"the signature of entry seq {seq} does not verify with key "
                                          f"{key_fingerprint(public_key)} (written without the host key, or "
                                          "--pub is not this host's key)")
    return _Line(obj)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_audit` found, without changing a byte.

    ``entries`` are the entries verified before the first break (all of them when
    ``ok``); ``first_break`` is ``(line number from 1, reason)`` with the reason one of
    :data:`REASONS`; ``lines`` say it for humans (the break in one line)."""

    ok: bool
    entries: list[dict[str, Any]]
    first_break: tuple[int, str] | None
    lines: list[str] = field(default_factory=list)

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last verified entry; (0, GENESIS) when there is none."""
        return (self.entries[-1]["seq"], self.entries[-1]["hash"]) if self.entries else (0, GENESIS)


def verify_audit(path: str | os.PathLike[str], public_key: Ed25519PublicKey) -> AuditReport:
    """Walk the chain in ``path`` from its first line with ``public_key`` (the host's
    ``host.pub``) and report the first broken link. Read-only (a shared ``flock`` keeps a
    writer's append out while the file is read). Raises :class:`AuditError` when the file
    cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            except OSError:  # a filesystem without flock (a copy on a share): read it anyway
                pass
            data = f.read()
    except FileNotFoundError:
        raise AuditError(f"{path}: no such file; pass --log with the audit log (STATE_DIR/recovery/{AUDIT_FILE}, "
                         "written once the daemon has verified a playbook)") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from None
    return verify_audit_bytes(data, public_key, source=str(path))


def verify_audit_bytes(data: bytes, public_key: Ed25519PublicKey | Ed25519PrivateKey,
                       source: str = "<memory>") -> AuditReport:
    """:func:`verify_audit` on the contents of a log."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    parts = data.split(b"\n")
    tail = parts.pop()  # b"" when the data ends with a newline (or is empty)
    lines = parts
    cache: dict[int, _Line] = {}

    def examine(i: int) -> _Line:  # 1-based
        if i not in cache:
            cache[i] = _examine(lines[i - 1], public_key)
        return cache[i]

    good: list[dict[str, Any]] = []
    seen_hash: dict[str, int] = {}  # hash -> line
    seen_seq: dict[int, int] = {}  # seq -> line
    expect_seq, expect_prev = 1, GENESIS
    broken: tuple[int, str, str] | None = None
    for i in range(1, len(lines) + 1):
        checked = examine(i)
        if checked.reason is not None:
            broken = (i, checked.reason, checked.detail)
            break
        entry = checked.entry
        assert entry is not None
        seq, digest = entry["seq"], entry["hash"]
        if seq == expect_seq and entry["prev"] == expect_prev:
            good.append(entry)
            seen_hash[digest] = i
            seen_seq[seq] = i
            expect_seq, expect_prev = seq + 1, digest
            continue
        broken = (i, *_classify(i, entry, lines, examine, expect_seq, expect_prev, seen_hash, seen_seq))
        break
    if broken is None and tail:
        broken = (len(lines) + 1, TORN, (f"the last line is incomplete ({len(tail)} bytes without a newline): an "
                                         "interrupted append; the daemon cuts it when it next opens the log"))
    return _report(source, public_key, len(lines) + (1 if tail else 0), good, broken)


def _classify(i: int, entry: dict[str, Any], lines: Sequence[bytes], examine: Callable[[int], _Line],
              expect_seq: int, expect_prev: str, seen_hash: dict[str, int],
              seen_seq: dict[int, int]) -> tuple[str, str]:
    """Why the authentic entry on line ``i`` does not continue the chain."""
    seq, digest = entry["seq"], entry["hash"]
    after = f"after seq {expect_seq - 1}" if expect_seq > 1 else "at the start"
    if seq < expect_seq:
        if digest in seen_hash:
            return INSERTED, f"a copy of line {seen_hash[digest]} (seq {seq}) {after}"
        return INSERTED, (f"seq {seq} {after}, but line {seen_seq[seq]} already has seq {seq}: an entry of "
                          "another chain")
    if seq == expect_seq:
        return INSERTED, (f"seq {seq} does not link to line {i - 1}'s entry (its prev {entry['prev'][:16]}... is "
                          f"not {expect_prev[:16]}...): an entry of another chain")
    raw = lines[i - 1]
    for j in range(i + 1, len(lines) + 1):
        if lines[j - 1] == raw:
            return INSERTED, f"a copy of line {j} (seq {seq}) {after}, ahead of its place"
    due = next((j for j in range(i + 1, len(lines) + 1)
                if (e := examine(j).entry) is not None and e["seq"] == expect_seq), None)
    if due is not None:
        # The entry that belongs here is further down. This one was moved up only if its
        # own predecessor is in the file too; else it comes from elsewhere.
        linked = any((e := examine(j).entry) is not None and e["hash"] == entry["prev"]
                     for j in range(1, len(lines) + 1) if j != i)
        if linked:
            return REORDERED, f"seq {seq} where seq {expect_seq} belongs; seq {expect_seq} is on line {due}"
        return INSERTED, (f"seq {seq} {after}, and no line holds the entry it links to: an entry of another "
                          f"chain (seq {expect_seq} is on line {due})")
    missing = f"seq {expect_seq}" if seq == expect_seq + 1 else f"seq {expect_seq}..{seq - 1}"
    return DELETED, f"{missing} missing: line {i} has seq {seq} {after}"


def _report(source: str, public_key: Ed25519PublicKey, line_count: int, good: list[dict[str, Any]],
            broken: tuple[int, str, str] | None) -> AuditReport:
    head_seq, head_hash = (good[-1]["seq"], good[-1]["hash"]) if good else (0, GENESIS)
    out = [(f"{source}: {line_count} line(s), {len(good)} entr{'y' if len(good) == 1 else 'ies'} verified "
            f"with host key {key_fingerprint(public_key)}")]
    if broken is None:
        out.append(f"OK: every hash, link and signature verified; head seq {head_seq} hash {head_hash[:16]} "
                   "(a cut tail shows only against a head noted earlier)")
        return AuditReport(True, good, None, out)
    line_no, reason, detail = broken
    out.append(f"BROKEN at line {line_no} ({reason}): {detail}")
    return AuditReport(False, good, (line_no, reason), out)


# --------------------------------------------------------------------------- the writer


@dataclass(frozen=True)
class AuditRecovery:
    """A torn last line the log cut off (never silently: it is logged too)."""

    path: Path
    offset: int  # where the file was cut
    bytes_dropped: int
    last_seq: int  # the last entry kept

    def __str__(self) -> str:
        return (f"{self.path}: cut a torn last line at offset {self.offset} ({self.bytes_dropped} bytes without a "
                f"newline, an interrupted append); the chain continues after seq {self.last_seq}")


def _rfind_newline(fd: int, before: int) -> int:
    """Offset of the last ``\\n`` at an offset < ``before``; -1 if none."""
    end = before
    while end > 0:
        start = max(0, end - _CHUNK)
        chunk = os.pread(fd, end - start, start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 20), offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file does not do this
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def _errno_text(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    return f"{errno.errorcode.get(exc.errno, str(exc.errno))} ({os.strerror(exc.errno)})"


class AuditLog:
    """The audit log at ``path``, signed with ``host_key``; see the module docstring.

    Opening checks the last line (its hash and signature with ``host_key``) and continues
    the chain after it; a torn last line is cut (``recovery``). ``append`` writes one
    entry and fsyncs before it returns. Thread-safe; usable from several processes."""

    def __init__(self, path: str | os.PathLike[str], host_key: Ed25519PrivateKey, *,
                 clock: Callable[[], float] = time.time, fsync: bool = True) -> None:
        self.path = Path(path)
        self.host_key = host_key
        self.public_key = host_key.public_key()
        self._clock = clock
        self._fsync = fsync
        self._lock = threading.Lock()
        self._seq = 0
        self._prev = GENESIS
        self._end = -1  # the file size after our last append or check; -1: not read yet
        self._failed: AuditError | None = None
        #: Why the chain cannot be continued (its last entry damaged, or a failed append
        #: that could not be undone); None while it is whole. For the metrics and alerts.
        self.broken: str | None = None
        self.recoveries: list[AuditRecovery] = []
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open the audit log: {_errno_text(exc)}; check the directory "
                             "exists and the daemon's user may write it (or set recovery.audit_log)") from exc
        try:
            if created and fsync:
                fsync_directory(self.path.parent)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._catch_up()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        log.info("audit.opened", path=self.path, last_seq=self._seq, head=self._prev[:16],
                 fingerprint=key_fingerprint(self.public_key), torn_tail_cut=bool(self.recoveries))

    # ------------------------------------------------------------------ state

    @property
    def recovery(self) -> AuditRecovery | None:
        """The torn last line cut when the log was opened (or before an append), if any."""
        return self.recoveries[-1] if self.recoveries else None

    @property
    def last_seq(self) -> int:
        """Seq of the last entry (0: empty log)."""
        return self._seq

    @property
    def last_hash(self) -> str:
        """Hash of the last entry (:data:`GENESIS` for an empty log): the head to note."""
        return self._prev

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __repr__(self) -> str:
        return f"<AuditLog {self.path} last_seq={self._seq}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # ------------------------------------------------------------------ appending

    def append(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """Write one entry and fsync it; return it as it is in the file (``fields`` turned
        into plain JSON: paths and other objects become strings, bytes hex). Raises
        :class:`AuditError` when it cannot be written (the file is then as it was)."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string, not {kind!r}")
        plain = _plain(fields)
        with self._lock:
            if self._fd is None:
                raise AuditError(f"{self.path}: the audit log is closed")
            if self._failed is not None:
                raise self._failed
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                try:
                    self._catch_up()
                except AuditError as exc:
                    self.broken = str(exc)
                    raise
                body = {"seq": self._seq + 1, "time": _utc_iso(self._clock()), "kind": _plain(kind),
                        "fields": plain, "prev": self._prev}
                digest = entry_hash(body)
                sig = self.host_key.sign(_signed_message(digest))
                entry = {**body, "hash": digest, "sig": base64.b64encode(sig).decode("ascii")}
                line = (canonical_json(entry) + "\n").encode("utf-8")
                try:
                    _write_all(fd, line)
                    if self._fsync:
                        os.fsync(fd)
                except OSError as exc:
                    self._undo(fd, exc)
                    raise AuditError(f"{self.path}: cannot append entry seq {entry['seq']} ({kind}): "
                                     f"{_errno_text(exc)}; free space or fix the disk") from exc
                self._end += len(line)
                self._seq += 1
                self._prev = digest
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return entry

    def _undo(self, fd: int, exc: OSError) -> None:
        """Put the file back as it was before a failed append."""
        try:
            os.ftruncate(fd, self._end)
            if self._fsync:
                os.fsync(fd)
        except OSError as undo:
            self._failed = AuditError(f"{self.path}: an append failed ({_errno_text(exc)}) and the partial line "
                                      f"could not be removed ({_errno_text(undo)}); restart the daemon: it cuts "
                                      "the torn line when it opens the log")
            self.broken = str(self._failed)
            log.error("audit.undo_failed", path=self.path, error=_errno_text(exc), undo_error=_errno_text(undo))

    def _catch_up(self) -> None:
        """Under the flock: make our seq/prev those of the file's last line (when the file
        changed since we last looked), cutting a torn last line."""
        assert self._fd is not None
        fd = self._fd
        size = os.fstat(fd).st_size
        if size == self._end:
            return
        last_nl = _rfind_newline(fd, size)
        end = last_nl + 1
        if end < size:
            os.ftruncate(fd, end)
            if self._fsync:
                os.fsync(fd)
        if end == 0:
            seq, prev = 0, GENESIS
        else:
            start = _rfind_newline(fd, last_nl) + 1
            checked = _examine(_pread_all(fd, last_nl - start, start), self.public_key)
            if checked.reason is not None:
                raise AuditError(f"{self.path}: the last entry is damaged ({checked.reason}: {checked.detail}); the "
                                 f"chain cannot be continued. See `lifeline audit verify --log {self.path}`, then "
                                 f"move the file aside to start a new chain")
            assert checked.entry is not None
            seq, prev = checked.entry["seq"], checked.entry["hash"]
        if end < size:
            report = AuditRecovery(self.path, end, size - end, seq)
            self.recoveries.append(report)
            log.warning("audit.tail_truncated", path=self.path, offset=end, bytes_dropped=size - end,
                        last_seq=seq)
        self._seq, self._prev, self._end = seq, prev, end


# --------------------------------------------------------------------------- reading for humans


def _show_value(value: Any) -> str:
    if isinstance(value, (dict, list)):  # JSON as is: delimited by itself, newlines escaped
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return format_value(value)


def format_entry(entry: dict[str, Any]) -> str:
    """One line for ``lifeline audit show``: seq, time, kind, then the fields as
    ``key=value`` (strings quoted when needed, lists and objects as compact JSON)."""
    fields = entry.get("fields")
    shown = " ".join(f"{key}={_show_value(value)}" for key, value in sorted(fields.items())) \
        if isinstance(fields, dict) else _show_value(fields)
    return f"{entry.get('seq', '?'):>6}  {entry.get('time', '?')}  {format_value(entry.get('kind', '?'))}" \
           + (f"  {shown}" if shown else "")


def show_lines(data: bytes, limit: int | None = None) -> list[str]:
    """The lines of ``lifeline audit show`` for a log's contents (the last ``limit``
    lines; unverified: ``lifeline audit verify`` checks)."""
    parts = data.split(b"\n")
    tail = parts.pop()
    numbered: list[tuple[int, bytes | None]] = [(i, raw) for i, raw in enumerate(parts, 1)]
    if tail:
        numbered.append((len(parts) + 1, None))
    if limit is not None:
        numbered = numbered[-limit:] if limit > 0 else []
    out = []
    for i, raw in numbered:
        if raw is None:
            out.append(f"  line {i}: incomplete ({len(tail)} bytes without a newline: an interrupted append)")
            continue
        try:
            obj = _loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            out.append(f"  line {i}: not JSON ({len(raw)} bytes)")
            continue
        if not isinstance(obj, dict):
            out.append(f"  line {i}: not an audit entry")
            continue
        out.append(format_entry(obj))
    return out


# --------------------------------------------------------------------------- commands


def add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``lifeline audit verify|show`` (dispatch with :func:`run_audit_command`)."""
    audit = sub.add_parser("audit", help="the hash-chained audit log of playbook runs: verify it, show it")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log", type=Path, default=None, metavar="PATH",
                       help=f"the audit log (default: recovery.audit_log from the config, else "
                            f"STATE_DIR/recovery/{AUDIT_FILE})")
        p.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                       help=f"the daemon's state directory (default: node.state_dir from the config, else "
                            f"{DEFAULT_STATE_DIR})")
        p.add_argument("--config", type=Path, default=None, metavar="PATH",
                       help="config file to read the state directory from (default /etc/lifeline/lifeline.toml "
                            "when it exists)")

    verify = audit_sub.add_parser("verify", help="walk the chain; exit 0 if intact, 1 at the first broken link "
                                                 "(deleted, inserted, modified or reordered line, bad signature)")
    common(verify)
    verify.add_argument("--pub", type=Path, default=None, metavar="PATH",
                        help="the host's public key (default STATE_DIR/recovery/host.pub; better: a copy kept "
                             "off this host)")
    show = audit_sub.add_parser("show", help="print the entries readably (not verified: use verify)")
    common(show)
    show.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                      help="only the last N entries (default: all)")


class _UsageError(Exception):
    pass


def _state_defaults(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(STATE_DIR, recovery.audit_log from the config or None)."""
    if getattr(args, "state_dir", None) is not None:
        return Path(args.state_dir), None
    # lazy: `lifeline audit` only, and the one upward import of a capability (the host's config loader,
    # listed in the contracts' ignore_imports): loading the audit chain must not load the host
    from daemon.config import DEFAULT_CONFIG_PATH, load_config

    explicit = getattr(args, "config", None)
    config_path = Path(explicit) if explicit is not None else DEFAULT_CONFIG_PATH
    if explicit is None and not config_path.exists():
        return DEFAULT_STATE_DIR, None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise _UsageError(f"{'; '.join(exc.problems)} (or pass --state-dir DIR, or --log and --pub)") from None
    audit_log = config.recovery.audit_log if config.recovery is not None else None
    return Path(config.node.state_dir), audit_log


def run_audit_command(args: argparse.Namespace) -> int:
    """Run ``lifeline audit verify|show``. Exit codes: 0 intact (verify) or shown; 1 the
    chain is broken; 2 usage error or a file that cannot be read."""
    command = getattr(args, "audit_command", None)
    prog = f"lifeline audit {command}"
    try:
        log_path: Path | None = args.log
        pub_path: Path | None = getattr(args, "pub", None)
        if log_path is None or (command == "verify" and pub_path is None):
            state_dir, configured_log = _state_defaults(args)
            log_path = log_path or configured_log or state_dir / "recovery" / AUDIT_FILE
            pub_path = pub_path or state_dir / "recovery" / HOST_PUB_FILE
        if command == "verify":
            assert pub_path is not None
            report = verify_audit(log_path, read_public_key(pub_path))
            for line in report.lines:
                print(line)
            return 0 if report.ok else 1
        if command == "show":
            limit = getattr(args, "lines", None)
            if limit is not None and limit < 0:
                raise _UsageError("-n must be 0 or more")
            try:
                data = Path(log_path).read_bytes()
            except FileNotFoundError:
                raise _UsageError(f"{log_path}: no such file; pass --log with the audit log "
                                  f"(STATE_DIR/recovery/{AUDIT_FILE})") from None
            except OSError as exc:
                raise _UsageError(f"{log_path}: cannot read the audit log: {exc.strerror or exc}") from None
            for line in show_lines(data, limit):
                print(line)
            return 0
        raise _UsageError(f"unknown action {command!r}; expected verify or show")
    except (AuditError, _UsageError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recovery.audit audit verify ...`` (the same as ``lifeline audit ...``)."""
    parser = argparse.ArgumentParser(prog="lifeline")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_audit_parser(sub)
    args = parser.parse_args(argv)
    try:
        return run_audit_command(args)
    except BrokenPipeError:  # pragma: no cover - `| head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
