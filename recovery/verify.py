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
   run *or verified* by the daemon on this host (:class:`RollbackState`; verifying a
   newer version disarms the older ones even before it runs); the same version again
   is fine; ``pinned``: the same name and version was verified before with other bytes
   (a version names one content: re-signing changed bytes needs a new version);
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
from recovery.errors import RecoveryError
from recovery.keys import Keyring, fingerprint
from recovery.playbook import PlaybookError, parse_playbook
from recovery.signing import CONTEXT, SignatureReport, signature_path, verify_signatures

REASONS = frozenset({"modified", "unknown_key", "revoked_key", "duplicate_key", "threshold", "expired", "rollback",
                     "name_mismatch", "invalid", "no_signatures", "exec_not_allowed", "pinned"})


class VerificationError(RecoveryError):
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

_ABSENT = object()


def _read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; ``_ABSENT`` when there is no such file; None (which no schema
    check accepts) when it is not JSON; ``VerificationError("rollback")`` when it cannot
    be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return _ABSENT
    except OSError as exc:
        raise VerificationError("rollback", f"{path}: cannot read {what} ({exc.strerror}); "
                                "fix its permissions") from None
    try:
        return json.loads(data)
    except ValueError:
        return None


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
        record = _read_json(self.path, "the anti-rollback record")
        if record is _ABSENT:
            return {}
        if not isinstance(record, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in record.items()):
            raise VerificationError("rollback", f"{self.path}: the anti-rollback record is damaged (expected a JSON "
                                    "object {name: version}); restore it from a backup or rewrite it by hand with the "
                                    "highest version of each playbook run here")
        return record

    def highest(self, name: str) -> int | None:
        return self.load().get(name)

    # The versions *verified* by the daemon and the digest of each, beside the record of
    # runs: ``seen.json`` = {name: {"seen": highest verified, "pins": {version: sha256}}}.
    MAX_PINS = 32  # per playbook: the newest versions' digests

    @property
    def seen_path(self) -> Path:
        return self.path.with_name("seen.json")

    def load_seen(self) -> dict[str, dict[str, Any]]:
        record = _read_json(self.seen_path, "the record of verified versions")
        if record is _ABSENT:
            return {}
        if not isinstance(record, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("seen"), int) and isinstance(v.get("pins"), dict)
                for v in record.values()):
            raise VerificationError("rollback", f"{self.seen_path}: the record of verified versions is damaged "
                                    '(expected {name: {"seen": N, "pins": {...}}}); restore it from a backup')
        return record

    def check(self, name: str, version: int, sha256: str | None = None) -> int | None:
        """Refuse (``VerificationError("rollback")``) ``version`` below the highest run or
        verified, and (``"pinned"``) a version verified before with other bytes; return
        the highest run (None: never run here)."""
        highest = self.load().get(name)
        if highest is not None and version < highest:
            raise VerificationError("rollback", f"{name} version {version} is older than version {highest}, already "
                                    f"run on this host ({self.path}): an old playbook is refused; sign a version >= "
                                    f"{highest}")
        seen = self.load_seen().get(name)
        if seen is not None:
            if version < seen["seen"]:
                raise VerificationError("rollback", f"{name} version {version} is older than version {seen['seen']}, "
                                        f"already verified on this host ({self.seen_path}): an old playbook is "
                                        f"refused; sign a version >= {seen['seen']}")
            pinned = seen["pins"].get(str(version))
            if sha256 is not None and pinned is not None and pinned != sha256:
                raise VerificationError("pinned", f"{name} version {version} was verified here with other bytes "
                                        f"(sha256 {pinned[:16]}…, now {sha256[:16]}…): a version names one content; "
                                        f"raise `version` and have it signed again")
        return highest

    def record_seen(self, name: str, version: int, sha256: str) -> None:
        """Record that the daemon verified ``version`` of ``name`` with these bytes."""
        record = self.load_seen()
        entry = record.get(name) or {"seen": version, "pins": {}}
        if entry["seen"] >= version and entry["pins"].get(str(version)) == sha256:
            return
        entry["seen"] = max(entry["seen"], version)
        pins = dict(entry["pins"])
        pins[str(version)] = sha256
        keep = sorted(pins, key=int)[-self.MAX_PINS:]
        entry["pins"] = {v: pins[v] for v in keep}
        record[name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.seen_path, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("utf-8"), 0o600)

    def record_run(self, name: str, version: int) -> None:
        """Record that ``version`` of ``name`` starts running now (durably, before it runs)."""
        record = self.load()
        if name in record and record[name] >= version:
            return
        record[name] = version
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.path, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("utf-8"), 0o600)


class RefusalCoalescer:
    """Bounds the audit lines that repeated refusals write (sans-IO: ``now`` is given).

    :meth:`note` answers None (count it, write nothing) or the number of identical
    refusals suppressed since the last one written (write one line carrying that
    count). An identical refusal is written at most once per ``window`` seconds; all
    refusals together at most ``max_per_window`` times per window; at most ``max_keys``
    distinct refusals are remembered (the oldest forgotten first)."""

    def __init__(self, window: float = 60.0, max_per_window: int = 20, max_keys: int = 256) -> None:
        self.window = window
        self.max_per_window = max_per_window
        self.max_keys = max_keys
        self._keys: dict[Any, list[float | int]] = {}  # key -> [written_at, suppressed]
        self._window_start = float("-inf")
        self._written = 0

    def note(self, key: Any, now: float) -> int | None:
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        if now - self._window_start >= self.window:
            self._window_start, self._written = now, 0
        if self._written >= self.max_per_window:
            self._keys[key] = [now, suppressed + 1]
            self._trim()
            return None
        self._written += 1
        self._keys.pop(key, None)
        self._keys[key] = [now, 0]
        self._trim()
        return suppressed

    def _trim(self) -> None:
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]


# --------------------------------------------------------------------------- verification


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return text
    more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
    return lines[0] + more


def _read(path: Path, what: str) -> bytes:
    """The file's bytes, opened with O_NOFOLLOW: a symbolic link is refused, so a link
    in the playbook directory cannot make a file elsewhere run under its name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VerificationError("invalid", f"{path}: the {what} is a symbolic link; put the file itself in "
                                    "the playbook directory") from None
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        raise VerificationError("invalid", f"{path}: cannot read the {what} ({reason})") from None
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        raise VerificationError("invalid", f"{path}: cannot read the {what} ({reason})") from None


def check_signatures(path: Path, data: bytes, sig_text: str, keyring: Keyring, *, context: bytes = CONTEXT,
                     sign_command: str = "lifeline playbook sign") -> SignatureReport:
    """Step 1 of :func:`verify_playbook`: the report, or the VerificationError it implies.
    ``context`` / ``sign_command``: another signed file kind (the guard's limits) with its
    own signature context and signing command."""
    report = verify_signatures(data, sig_text, keyring, context=context)
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
        raise VerificationError("no_signatures", f"{sig_path}: no signatures; sign with `{sign_command} "
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
                                f"{keyring.threshold - len(report.valid)} more operator(s) run `{sign_command} "
                                f"{path} --key NAME.key`", report=report)
    return report


def verify_playbook(path: str | os.PathLike[str], keyring: Keyring, *, now: datetime | None = None,
                    rollback_state: RollbackState | None) -> Verified:
    """Verify ``path`` (and ``path``.sig) completely; ``Verified`` or ``VerificationError``.

    ``now``: an aware datetime (default: the current UTC time). ``rollback_state``: the
    host's record of versions run; ``None`` skips that check (only for tools that never
    run the playbook, e.g. signing on an operator's workstation)."""
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
            highest = rollback_state.check(playbook.name, playbook.version, hashlib.sha256(data).hexdigest())
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
