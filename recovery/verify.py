"""The full check a playbook passes before a single step runs.

:func:`verify_playbook` reads ``NAME.toml`` and ``NAME.toml.sig`` and checks, in this
order (the first failure is the one reported, as a :class:`VerificationError` whose
``reason`` is a stable word for programs and whose message is one line for humans):

1. the signatures (:func:`recovery.signing.verify_signatures`) — before the TOML is
   parsed, so nothing unauthenticated is ever interpreted:
   ``no_signatures`` (no .sig file or no signature line), ``modified`` (a malformed
   line, or a signature that does not match these bytes: a changed byte anywhere),
   ``duplicate_key`` (a key on two lines), then, when fewer valid signatures than the
   keyring's threshold remain, ``revoked_key`` / ``unknown_key`` if a signature did not
   count for that reason, else ``threshold``;
2. ``invalid``: the playbook does not parse or validate (:func:`recovery.playbook.parse_playbook`);
3. ``name_mismatch``: the playbook's ``name`` is not the file's stem (a signed
   ``fibre-lost`` copied over ``ups-on-battery.toml`` must not run as that);
4. ``expired``: ``now >= expires``. The host clock is trusted (it is NTP-disciplined,
   and a clock far enough off to matter already breaks the venues' TLS and API
   signatures); a playbook is re-verified, expiry included, at every run;
5. ``rollback``: its version is lower than the highest version of that name already
   run on this host (:class:`RollbackState`); the same version again is fine;
6. ``exec_not_allowed`` (added to the contract's list, which is silent on it): an
   ``exec`` step (or rollback step) runs a program that is not in the keyring's
   ``exec_allow``.

Refusals are reported, never "repaired": the report of a refusal still carries what was
learnt (``exc.report``: signatures; ``exc.playbook`` once parsed) so that
``lifeline playbook verify`` can show who signed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from daemon.core.files import replace_file
from recovery.keys import Keyring, fingerprint
from recovery.signing import SignatureReport, signature_path, verify_signatures

REASONS = frozenset({"modified", "unknown_key", "revoked_key", "duplicate_key", "threshold", "expired", "rollback",
                     "name_mismatch", "invalid", "no_signatures", "exec_not_allowed"})


class VerificationError(Exception):
    """The playbook is refused. ``reason``: one of :data:`REASONS`; ``message``: one line
    naming the file, what is wrong and what to do (also ``str(exc)``)."""

    def __init__(self, reason: str, message: str, *, report: SignatureReport | None = None,
                 playbook: Any = None) -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.message = message
        self.report = report
        self.playbook = playbook
        super().__init__(message)


@dataclass(frozen=True)
class Signer:
    """A signature that counted."""

    key_id: str
    holder: str
    line: int

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_id)


@dataclass(frozen=True)
class Verified:
    """A playbook that passed. ``signers``: the key ids that counted (plain strings, fit
    for the audit log); ``signed_by``: the same with holders and line numbers;
    ``notes``: signatures that did not count but did not refuse it (revoked, unknown);
    ``highest_run``: the highest version of this playbook run here before (None: never)."""

    playbook: Any  # recovery.playbook.Playbook
    path: Path
    sha256: str
    signers: tuple[str, ...]
    signed_by: tuple[Signer, ...]
    threshold: int
    notes: tuple[str, ...] = ()
    highest_run: int | None = None


# --------------------------------------------------------------------------- anti-rollback


class RollbackState:
    """The highest version of each playbook run on this host: a JSON object
    ``{name: version}`` at ``path`` (STATE_DIR/recovery/versions.json).

    :meth:`check` refuses a version below the highest recorded; :meth:`record_run` (called
    by the executor when a run *starts*) raises the record, never lowers it, and writes
    it atomically: temp file, fsync, rename, fsync of the directory. A missing file is
    an empty record (a new host); a file that cannot be read or parsed refuses every
    check (fail closed: a damaged record must not become a licence to roll back)."""

    FILENAME = "versions.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> RollbackState:
        """The record under ``STATE_DIR/recovery/versions.json``."""
        return cls(Path(state_dir) / "recovery" / cls.FILENAME)

    def load(self) -> dict[str, int]:
        """The record; ``VerificationError("rollback")`` when it exists but cannot be used."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise VerificationError("rollback", f"{self.path}: cannot read the anti-rollback record "
                                    f"({exc.strerror}); fix its permissions") from None
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in record.items()):
            raise VerificationError("rollback", f"{self.path}: the anti-rollback record is damaged (expected a JSON "
                                    "object {name: version}); restore it from a backup or rewrite it by hand with the "
                                    "highest version of each playbook run here")
        return record

    def highest(self, name: str) -> int | None:
        return self.load().get(name)

    def check(self, name: str, version: int) -> int | None:
        """Refuse (``VerificationError("rollback")``) ``version`` below the highest run;
        return that highest (None: never run here)."""
        highest = self.load().get(name)
        if highest is not None and version < highest:
            raise VerificationError("rollback", f"{name} version {version} is older than version {highest}, already "
                                    f"run on this host ({self.path}): an old playbook is refused; sign a version >= "
                                    f"{highest}")
        return highest

    def record_run(self, name: str, version: int) -> None:
        """Record that ``version`` of ``name`` starts running now (durably, before it runs)."""
        record = self.load()
        if name in record and record[name] >= version:
            return
        record[name] = version
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.path, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("utf-8"), 0o600)


# --------------------------------------------------------------------------- verification


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return text
    more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
    return lines[0] + more


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        raise VerificationError("invalid", f"{path}: cannot read the {what} ({reason})") from None


def check_signatures(path: Path, data: bytes, sig_text: str, keyring: Keyring) -> SignatureReport:
    """Step 1 of :func:`verify_playbook`: the report, or the VerificationError it implies."""
    report = verify_signatures(data, sig_text, keyring)
    sig_path = signature_path(path)
    fatal = report.fatal
    if fatal is not None:
        if fatal.reason == "modified" and fatal.key_id is not None:
            bad = {p.line for p in report.details if p.reason == "modified"}
            duplicates = {p.line for p in report.details if p.reason == "duplicate_key"}
            known = [s for s in report.lines if keyring.get(s.key_id) is not None and s.line not in duplicates]
            if len(known) > 1 and all(s.line in bad for s in known):
                # no known key's signature matches: the playbook itself changed
                raise VerificationError(
                    "modified", f"{path}: changed since it was signed: none of the {len(known)} signature(s) by known "
                    f"keys matches its bytes (sha256 {hashlib.sha256(data).hexdigest()[:16]}…); review the change and "
                    "have it signed again, or restore the signed file", report=report)
            raise VerificationError("modified", f"{sig_path}: {fatal.message}: the signature or the playbook was "
                                    "changed; re-sign it", report=report)
        if fatal.reason == "modified":
            raise VerificationError("modified", f"{sig_path}: {fatal.message}; restore it or re-sign", report=report)
        raise VerificationError(fatal.reason, f"{sig_path}: {fatal.message}", report=report)
    if not report.lines:
        raise VerificationError("no_signatures", f"{sig_path}: no signatures; sign with `lifeline playbook sign "
                                f"{path} --key NAME.key`", report=report)
    if len(report.valid) < keyring.threshold:
        have = f"{len(report.valid)} valid signature(s), {keyring.threshold} needed"
        for reason in ("revoked_key", "unknown_key"):
            ignored = [p for p in report.details if p.reason == reason]
            if ignored:
                fix = ("revoked keys no longer count: have a current key holder sign" if reason == "revoked_key"
                       else f"add the key to {keyring.source} (`lifeline keyring add`) or have a listed holder sign")
                raise VerificationError(reason, f"{path}: {have}: {ignored[0].message}; {fix}", report=report)
        raise VerificationError("threshold", f"{path}: {have} (distinct signing keys of {keyring.source}); have "
                                f"{keyring.threshold - len(report.valid)} more operator(s) run `lifeline playbook sign "
                                f"{path} --key NAME.key`", report=report)
    return report


def verify_playbook(path: str | os.PathLike[str], keyring: Keyring, *, now: datetime | None = None,
                    rollback_state: RollbackState | None) -> Verified:
    """Verify ``path`` (and ``path``.sig) completely; ``Verified`` or ``VerificationError``.

    ``now``: an aware datetime (default: the current UTC time). ``rollback_state``: the
    host's record of versions run; ``None`` skips that check (only for tools that never
    run the playbook, e.g. signing on an operator's workstation)."""
    from recovery.playbook import PlaybookError, parse_playbook

    path = Path(path)
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify_playbook: now must be an aware datetime")
    try:
        data = _read(path, "playbook")
    except FileNotFoundError:
        raise VerificationError("invalid", f"{path}: no such playbook file") from None
    sig_path = signature_path(path)
    try:
        sig_raw = _read(sig_path, "signature file")
    except FileNotFoundError:
        raise VerificationError("no_signatures", f"{sig_path}: missing: the playbook is not signed; sign it with "
                                f"`lifeline playbook sign {path} --key NAME.key`") from None
    try:
        sig_text = sig_raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationError("modified", f"{sig_path}: not UTF-8 text (byte {exc.start}): the signature file was "
                                "changed or damaged; restore it or re-sign") from None

    report = check_signatures(path, data, sig_text, keyring)

    try:
        playbook = parse_playbook(data, str(path))
    except PlaybookError as exc:
        raise VerificationError("invalid", _one_line(str(exc)), report=report) from None
    if playbook.name != path.stem or path.suffix != ".toml":
        raise VerificationError("name_mismatch", f"{path}: the playbook is named {playbook.name!r} but the file is "
                                f"{path.name!r}: a playbook runs only as {playbook.name}.toml; rename the file back",
                                report=report, playbook=playbook)
    if now >= playbook.expires:
        raise VerificationError("expired", f"{path}: expired at {_iso(playbook.expires)} ({_ago(now - playbook.expires)}"
                                f" ago); review it, raise `version` and `expires`, and have it signed again",
                                report=report, playbook=playbook)
    highest = None
    if rollback_state is not None:
        try:
            highest = rollback_state.check(playbook.name, playbook.version)
        except VerificationError as exc:
            raise VerificationError(exc.reason, f"{path}: {exc.message}", report=report, playbook=playbook) from None
    allowed = set(keyring.exec_allow)
    for i, step in enumerate(playbook.steps):
        for where, s in ((f"step[{i}]", step), (f"step[{i}].rollback", step.rollback)):
            if s is not None and s.action == "exec" and s.args["argv"][0] not in allowed:
                listed = ", ".join(keyring.exec_allow) or "nothing"
                raise VerificationError("exec_not_allowed", f"{path}: {where}.args.argv[0] = {s.args['argv'][0]!r} is "
                                        f"not in the exec_allow of {keyring.source} (which allows {listed}); add it "
                                        "there if it is meant to run", report=report, playbook=playbook)
    signed_by = tuple(Signer(sig.key_id, keyring.get(sig.key_id).holder, sig.line)  # type: ignore[union-attr]
                      for sig in report.lines if sig.key_id in report.valid)
    return Verified(playbook, path, hashlib.sha256(data).hexdigest(), tuple(report.valid), signed_by,
                    keyring.threshold, tuple(report.problems), highest)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(delta: Any) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
