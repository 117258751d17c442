"""Detached signatures over a playbook's exact bytes.

Each signature signs a domain-separated message::

    b"lifeline-playbook-signature-v1\\0" + bytes.fromhex(key_id) + sha256(playbook bytes)

The context string keeps a playbook signature from ever being valid as anything else
(and anything else, such as an audit entry signed by a host key, from being valid as a
playbook signature); the key id binds the signature to the key the line names. TOML has
no canonical form, so the file's exact bytes are signed, not a parsed form.

The signature file ``NAME.toml.sig`` holds one line per signature::

    lifeline-sig-v1 <key id: 32 lowercase hex> <base64 of the 64-byte signature>

Lines starting with ``#`` are comments and are not signed; blank lines are ignored.
Every other line must match that form exactly: no stray spaces, no CR, canonical base64
(so that any changed byte of a signature line is noticed, never silently tolerated).
``lifeline playbook sign`` writes no comments: who signed is shown by
``lifeline playbook verify`` from the keyring, which is trusted, never from a comment,
which is not.

How each line counts (:func:`verify_signatures`):

* malformed, or a known key's signature that does not verify over these bytes:
  fatal, reason ``modified`` (a changed byte, in the playbook or in the signature);
* the same key id on two lines: fatal, ``duplicate_key`` (a key counts once; the
  signer refuses to sign twice, so only an edited file has this);
* a revoked key, a key not in the keyring, a key that may not sign: the signature does
  not count (reasons ``revoked_key`` / ``unknown_key``), and is reported. It refuses
  the playbook only when the remaining valid signatures are fewer than the threshold
  (this is what makes rotation work: old signatures stop counting, they do not poison
  a playbook that the new keys have signed). A revoked key's signature is still checked,
  and one that does not verify is ``modified``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recovery.errors import RecoveryError
from recovery.keys import Keyring, b64decode_strict, fingerprint, key_id

CONTEXT = b"lifeline-playbook-signature-v1\0"
SIG_MAGIC = "lifeline-sig-v1"
SIG_SUFFIX = ".sig"

_LINE = re.compile(r"lifeline-sig-v1 ([0-9a-f]{32}) ([A-Za-z0-9+/]{86}==)")

#: reasons a signature problem may carry (a subset of recovery.verify.REASONS)
FATAL_REASONS = ("modified", "duplicate_key")


class SigningError(RecoveryError, ValueError):
    """Signing refused (already signed by this key, a damaged signature file, ...)."""


def signature_path(playbook_path: str | os.PathLike[str]) -> Path:
    """``NAME.toml`` -> ``NAME.toml.sig``."""
    p = Path(playbook_path)
    return p.with_name(p.name + SIG_SUFFIX)


def signed_message(playbook_bytes: bytes, key_id: str, *, context: bytes = CONTEXT) -> bytes:
    """The exact message a signature by ``key_id`` over ``playbook_bytes`` signs."""
    return context + bytes.fromhex(key_id) + hashlib.sha256(playbook_bytes).digest()


@dataclass(frozen=True)
class SignatureLine:
    key_id: str
    signature: bytes = field(repr=False)
    line: int  # 1-based line number in the signature file

    def text(self) -> str:
        return f"{SIG_MAGIC} {self.key_id} {base64.b64encode(self.signature).decode('ascii')}"


@dataclass(frozen=True)
class SignatureProblem:
    reason: str       # modified | duplicate_key | unknown_key | revoked_key
    line: int
    key_id: str | None
    message: str
    fatal: bool


@dataclass(frozen=True)
class SignatureReport:
    """``valid``: key ids whose signatures count, in file order. ``problems``: one line
    per signature that does not count or is wrong (``details`` has them structured)."""

    valid: list[str]
    problems: list[str]
    details: list[SignatureProblem] = field(default_factory=list)
    lines: list[SignatureLine] = field(default_factory=list)

    @property
    def fatal(self) -> SignatureProblem | None:
        """The problem that refuses the playbook whatever the threshold, if any
        (``modified`` before ``duplicate_key``)."""
        for reason in FATAL_REASONS:
            for p in self.details:
                if p.fatal and p.reason == reason:
                    return p
        return None


def _parse_line(text: str, number: int) -> SignatureLine | SignatureProblem:
    m = _LINE.fullmatch(text)
    if m is not None:
        raw = b64decode_strict(m.group(2), 64)
        if raw is not None:
            return SignatureLine(m.group(1), raw, number)
    hint = " (it ends in a CR: Windows line endings)" if text.endswith("\r") else ""
    return SignatureProblem("modified", number, None,
                            f"line {number} is not a signature line{hint} (expected `{SIG_MAGIC} <key id> <base64>`): "
                            "the signature file was changed or damaged", True)


def parse_signatures(sig_text: str) -> tuple[list[SignatureLine], list[SignatureProblem]]:
    """The signature lines of a ``.sig`` file, and the lines that are not (as problems)."""
    lines: list[SignatureLine] = []
    bad: list[SignatureProblem] = []
    for number, text in enumerate(sig_text.split("\n"), start=1):
        if not text or text.startswith("#"):
            continue
        parsed = _parse_line(text, number)
        (lines if isinstance(parsed, SignatureLine) else bad).append(parsed)  # type: ignore[arg-type]
    return lines, bad


def _who(keyring: Keyring, kid: str) -> str:
    entry = keyring.get(kid)
    return f"{entry.holder}'s key {fingerprint(kid)}" if entry else f"key {fingerprint(kid)}"


def verify_signatures(playbook_bytes: bytes, sig_text: str, keyring: Keyring, *,
                      context: bytes = CONTEXT) -> SignatureReport:
    """Check every line of a signature file against ``playbook_bytes`` and ``keyring``.
    Never raises for bad input: everything wrong is in the report (see the module doc
    for which problems are fatal)."""
    lines, details = parse_signatures(sig_text)
    digest = hashlib.sha256(playbook_bytes).digest()
    signers = keyring.signers()
    valid: list[str] = []
    seen: dict[str, int] = {}
    for sig in lines:
        kid = sig.key_id
        if kid in seen:
            details.append(SignatureProblem("duplicate_key", sig.line, kid,
                                            f"line {sig.line} repeats the signature of {_who(keyring, kid)} (first on "
                                            f"line {seen[kid]}): a key counts once; delete the repeated line", True))
            continue
        seen[kid] = sig.line
        entry = keyring.get(kid)
        if entry is None:
            details.append(SignatureProblem("unknown_key", sig.line, kid,
                                            f"line {sig.line} is signed by key {fingerprint(kid)}, which is not in the "
                                            f"keyring {keyring.source}", False))
            continue
        try:
            entry.public_key.verify(sig.signature, context + bytes.fromhex(kid) + digest)
        except InvalidSignature:
            details.append(SignatureProblem("modified", sig.line, kid,
                                            f"the signature on line {sig.line} ({_who(keyring, kid)}) does not match "
                                            "these bytes", True))
            continue
        if keyring.is_revoked(kid):
            details.append(SignatureProblem("revoked_key", sig.line, kid,
                                            f"line {sig.line} is signed by {_who(keyring, kid)}, which is revoked",
                                            False))
        elif kid not in signers:
            details.append(SignatureProblem("unknown_key", sig.line, kid,
                                            f"line {sig.line} is signed by {_who(keyring, kid)}, which may not sign "
                                            "playbooks (can_sign = false)", False))
        else:
            valid.append(kid)
    details.sort(key=lambda p: p.line)
    return SignatureReport(valid, [p.message for p in details], details, lines)


def sign_bytes(playbook_bytes: bytes, private_key: Ed25519PrivateKey, *, context: bytes = CONTEXT) -> SignatureLine:
    """A signature line for ``playbook_bytes`` (line number 0: not yet in a file)."""
    kid = key_id(private_key.public_key())
    return SignatureLine(kid, private_key.sign(signed_message(playbook_bytes, kid, context=context)), 0)


def sign_playbook(playbook_path: str | os.PathLike[str], private_key: Ed25519PrivateKey, *,
                  keyring: Keyring | None = None, context: bytes = CONTEXT) -> SignatureLine:
    """Append a signature by ``private_key`` over the playbook's bytes to ``NAME.toml.sig``.

    The other signatures are kept. Refused (``SigningError``) when the file already has a
    signature by this key, when it has a line that is not a signature, or — when a
    ``keyring`` is given — when a signature by a known key in it does not match the
    playbook as it is now (the playbook changed since they signed: signing it would not
    help). The read-check-append happens under an exclusive lock on the signature file,
    so two operators signing at once both land. Returns the line written."""
    path = Path(playbook_path)
    data = path.read_bytes()
    line = sign_bytes(data, private_key, context=context)
    sig_path = signature_path(path)
    fd = os.open(sig_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        chunks: list[bytes] = []
        while chunk := os.pread(fd, 1 << 16, sum(len(c) for c in chunks)):
            chunks.append(chunk)
        existing = b"".join(chunks)
        try:
            text = existing.decode("utf-8")
        except UnicodeDecodeError:
            raise SigningError(f"{sig_path}: not a signature file (not UTF-8 text); move it away and sign "
                               "again") from None
        lines, bad = parse_signatures(text)
        if bad:
            raise SigningError(f"{sig_path}: {bad[0].message}; fix or remove that line before signing")
        for other in lines:
            if other.key_id == line.key_id:
                raise SigningError(f"{sig_path}: already signed by this key ({fingerprint(line.key_id)}, line "
                                   f"{other.line}); a key counts once, another operator must sign")
        if keyring is not None and lines:
            report = verify_signatures(data, text, keyring, context=context)
            stale = [p for p in report.details if p.reason == "modified"]
            if stale:
                raise SigningError(f"{path}: {stale[0].message}: the playbook changed since it was signed; review "
                                   f"the change, then remove {sig_path} and have everyone sign again")
        prefix = b"\n" if existing and not existing.endswith(b"\n") else b""
        os.write(fd, prefix + line.text().encode("ascii") + b"\n")
        os.fsync(fd)
        number = text.count("\n") + (1 if prefix else 0) + 1
    finally:
        os.close(fd)
    return SignatureLine(line.key_id, line.signature, number)
