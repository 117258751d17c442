"""The operator commands for keys, the keyring and playbook signatures.

    lifeline keys new --name NAME [--out DIR] [--passphrase-env VAR]
    lifeline keyring init --threshold M --key A.pub --key B.pub ... [--exec-allow /abs/prog ...] [--out PATH]
    lifeline keyring add --key C.pub [--holder NAME] [--no-sign] [--keyring PATH]
    lifeline keyring revoke KEYID-or-fingerprint-prefix [--keyring PATH]
    lifeline keyring show [--keyring PATH]
    lifeline playbook sign FILE --key NAME.key [--passphrase-env VAR] [--keyring PATH]
    lifeline playbook verify FILE [--keyring PATH] [--state-dir DIR]

``--keyring`` defaults to /etc/lifeline/keyring.toml everywhere. A refusal exits 1 with
its reason in one line on stderr; a command that cannot run at all (no keyring, a key
that cannot be read) exits 2.

Wiring (daemon/cli.py): ``build_parser`` calls :func:`add_parsers` with its subparsers
and the ``keys`` subparsers; ``main`` sends ``keyring`` and ``playbook`` (and ``keys``
other than ``replication``) to :func:`run`, which calls the ``recovery_handler`` that
each sub-command sets. ``playbook run`` and ``playbook list`` ask the daemon:
:func:`add_playbook_client_parsers` adds them with the host's client options and
``connect``. **Hook for more playbook commands**: add parsers to :data:`playbook_sub` (also
in the returned :class:`RecoveryParsers`) and ``set_defaults(recovery_handler=fn)`` on
them; :func:`run` dispatches them the same way.
``audit`` is a separate top-level command, not created here.

Imports of cryptography and the recovery modules are lazy so that building the parser
stays cheap for every other `lifeline` command.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from functools import partial
from typing import Any, Callable, NamedTuple

# lazy-imports: the handlers import cryptography and the recovery modules when they run, so that
# building this parser stays cheap for every other `lifeline` command (CLI start-up).

DEFAULT_KEYRING = Path("/etc/lifeline/keyring.toml")
DEFAULT_STATE_DIR = Path("/var/lib/lifeline")
PASSPHRASE_ENV = "LIFELINE_KEY_PASSPHRASE"

Handler = Callable[[argparse.Namespace], int]
#: The host's connection to the daemon's control socket (daemon/cli.py's).
Connect = Callable[[argparse.Namespace], Any]

#: The ``playbook`` sub-command's subparsers, once :func:`add_parsers` ran (hook for `run`/`list`).
playbook_sub: Any = None
#: The ``playbook`` parser itself.
playbook_parser: argparse.ArgumentParser | None = None


class RecoveryParsers(NamedTuple):
    keys_new: argparse.ArgumentParser
    keyring: argparse.ArgumentParser
    keyring_sub: Any
    playbook: argparse.ArgumentParser
    playbook_sub: Any


def _keyring_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyring", type=Path, default=DEFAULT_KEYRING, metavar="PATH",
                        help=f"the keyring (default {DEFAULT_KEYRING})")


def add_parsers(sub: Any, keys_sub: Any) -> RecoveryParsers:
    """Add ``keys new``, ``keyring ...`` and ``playbook sign|verify``."""
    global playbook_sub, playbook_parser

    new = keys_sub.add_parser("new", help="an Ed25519 key pair for signing playbooks (NAME.key 0600, NAME.pub)")
    new.add_argument("--name", required=True, help="the key's name, usually the operator's login")
    new.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                     help="directory to write NAME.key and NAME.pub into (default: the current one)")
    new.add_argument("--passphrase-env", metavar="VAR",
                     help="encrypt the private key with the passphrase in environment variable VAR")
    new.set_defaults(recovery_handler=cmd_keys_new)

    keyring = sub.add_parser("keyring", help="the keys trusted to sign recovery playbooks, and the threshold")
    keyring_sub = keyring.add_subparsers(dest="keyring_command", metavar="ACTION", required=True)
    init = keyring_sub.add_parser("init", help="a new keyring: M of the given keys must sign a playbook")
    init.add_argument("--threshold", type=int, required=True, metavar="M",
                      help="how many distinct keys must sign a playbook")
    init.add_argument("--key", action="append", required=True, type=Path, metavar="NAME.pub",
                      help="a trusted public key (repeat; the holder is the name in the .pub line)")
    init.add_argument("--exec-allow", action="append", default=[], metavar="/ABS/PROG",
                      help="a program the exec action may run (repeat)")
    init.add_argument("--out", type=Path, default=DEFAULT_KEYRING, metavar="PATH",
                      help=f"where to write it (default {DEFAULT_KEYRING}; never overwritten)")
    init.set_defaults(recovery_handler=cmd_keyring_init)
    add = keyring_sub.add_parser("add", help="trust one more key (rotation: add the new key, then revoke the old)")
    add.add_argument("--key", required=True, type=Path, metavar="NAME.pub", help="the public key to trust")
    add.add_argument("--holder", help="who holds it (default: the name in the .pub line)")
    add.add_argument("--no-sign", action="store_true", help="trusted, but its playbook signatures do not count")
    _keyring_option(add)
    add.set_defaults(recovery_handler=cmd_keyring_add)
    revoke = keyring_sub.add_parser("revoke", help="stop trusting a key: its signatures no longer count")
    revoke.add_argument("key", metavar="KEY", help="key id or fingerprint prefix (from `lifeline keyring show`)")
    _keyring_option(revoke)
    revoke.set_defaults(recovery_handler=cmd_keyring_revoke)
    show = keyring_sub.add_parser("show", help="the keys, holders, threshold, revocations and exec allow-list")
    _keyring_option(show)
    show.set_defaults(recovery_handler=cmd_keyring_show)

    playbook = sub.add_parser("playbook", help="sign and verify recovery playbooks")
    psub = playbook.add_subparsers(dest="playbook_command", metavar="ACTION", required=True)
    sign = psub.add_parser("sign", help="add your signature to FILE.sig (each operator signs in turn)")
    sign.add_argument("file", type=Path, metavar="FILE")
    sign.add_argument("--key", required=True, type=Path, metavar="NAME.key", help="your private key")
    sign.add_argument("--passphrase-env", metavar="VAR",
                      help=f"read the key's passphrase from VAR (default: ${PASSPHRASE_ENV}, else asked)")
    sign.add_argument("--keyring", type=Path, default=None, metavar="PATH",
                      help=f"check the signatures already there against it (default {DEFAULT_KEYRING} if present)")
    sign.set_defaults(recovery_handler=cmd_playbook_sign)
    verify = psub.add_parser("verify", help="check FILE as the daemon will before running it; exit 0 or 1")
    verify.add_argument("file", type=Path, metavar="FILE")
    _keyring_option(verify)
    verify.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"the daemon's state directory, for the versions already run "
                             f"(default {DEFAULT_STATE_DIR}; reads DIR/recovery/versions.json)")
    verify.set_defaults(recovery_handler=cmd_playbook_verify)

    playbook_sub, playbook_parser = psub, playbook
    return RecoveryParsers(new, keyring, keyring_sub, playbook, psub)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the handler the chosen sub-command set."""
    handler: Handler | None = getattr(args, "recovery_handler", None)
    if handler is None:
        print(f"lifeline: no handler for {args.command}", file=sys.stderr)
        return 2
    return handler(args)


# --------------------------------------------------------------------------- playbook run|list (the daemon)


def add_playbook_client_parsers(psub: Any, add_client_options: Callable[[argparse.ArgumentParser], None],
                                connect: Connect) -> None:
    """``playbook run`` and ``playbook list``, which ask the daemon (the host's
    ``--socket``/``--config`` options and ``connect``); after :func:`add_parsers`."""
    run_playbook = psub.add_parser("run", help="verify and run a playbook in the daemon (through the control socket)")
    run_playbook.add_argument("name", help="the playbook's name (PLAYBOOKS_DIR/NAME.toml)")
    run_playbook.add_argument("--dry-run", action="store_true", help="verify, check preconditions, print the plan; "
                                                                     "change nothing")
    add_client_options(run_playbook)
    run_playbook.set_defaults(recovery_handler=partial(cmd_playbook_run, connect=connect))
    list_playbooks = psub.add_parser("list", help="the daemon's verified and refused playbooks")
    list_playbooks.add_argument("--json", action="store_true")
    add_client_options(list_playbooks)
    list_playbooks.set_defaults(recovery_handler=partial(cmd_playbook_list, connect=connect))


def cmd_playbook_run(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    with connect(args) as client:
        try:
            # A playbook may wait on events for minutes: no client-side timeout.
            client.set_timeout(None)
            result = client.call("playbook.run", {"name": args.name, "dry_run": args.dry_run})
        except ControlError as exc:
            print(f"lifeline playbook run: {exc}", file=sys.stderr)
            return 1
    for line in result.get("lines", []):
        print(line)
    outcome = result.get("outcome")
    print(f"{result.get('playbook')} version {result.get('version')}: {outcome} in {result.get('duration_ms')} ms")
    return 0 if outcome in ("succeeded", "dry_run") else 1


def cmd_playbook_list(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    with connect(args) as client:
        try:
            result = client.call("playbook.list")
        except ControlError as exc:
            print(f"lifeline playbook list: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    for p in result.get("playbooks", []):
        triggers = ", ".join(p["triggers"]) or "by hand only"
        print(f"{p['name']:<28} v{p['version']:<4} expires {p['expires']}  triggers: {triggers}")
    for name, why in sorted(result.get("refused", {}).items()):
        print(f"{name:<28} REFUSED: {why}")
    return 0 if not result.get("refused") else 1



def _fail(prefix: str, message: str, code: int = 1) -> int:
    print(f"{prefix}: {' '.join(str(message).split())}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- keys new


def cmd_keys_new(args: argparse.Namespace) -> int:
    from recovery.keys import KeyFileError, generate_key, public_line, read_public_key

    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            return _fail("lifeline keys new", f"--passphrase-env {args.passphrase_env}: that environment variable is "
                         "not set or empty; export the passphrase in it first", 2)
        passphrase = value.encode("utf-8")
    try:
        files = generate_key(args.name, args.out, passphrase)
    except (OSError, ValueError, KeyFileError) as exc:
        return _fail("lifeline keys new", str(exc))
    info = read_public_key(files.pub_path)
    protection = f"encrypted with the passphrase in ${args.passphrase_env}" if passphrase else "NOT encrypted"
    print(f"wrote {files.key_path} (private key, mode 0600, {protection}) and {files.pub_path}")
    print(f"  key id       {files.key_id}")
    print(f"  fingerprint  {files.fingerprint}")
    print(f"  public key   {public_line(info.key, args.name)}")
    print(f"Keep {files.key_path.name} to yourself. Give {files.pub_path.name} to whoever keeps the keyring: "
          f"`lifeline keyring add --key {files.pub_path.name}`; confirm the fingerprint with them out of band.")
    return 0


# --------------------------------------------------------------------------- keyring


def _format_keyring(keyring: Any) -> list[str]:
    signers = keyring.signers()
    lines = [f"keyring {keyring.source}: threshold {keyring.threshold} of {len(signers)} signing key(s)"]
    rows = [("HOLDER", "FINGERPRINT", "KEY ID", "SIGNS", "STATUS")]
    for k in keyring.keys:
        status = "REVOKED" if keyring.is_revoked(k.id) else "trusted"
        rows.append((k.holder, k.fingerprint, k.id, "yes" if k.can_sign else "no", status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        lines.append("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:4])) + "  " + row[4])
    listed = {k.id for k in keyring.keys}
    for rid in keyring.revoked:
        if rid not in listed:
            lines.append(f"  (revoked, not listed: {rid})")
    lines.append("exec allow-list: " + (", ".join(keyring.exec_allow) if keyring.exec_allow else "(empty: playbooks "
                                         "with exec steps are refused)"))
    for warning in keyring.warnings():
        lines.append(f"WARNING: {warning}")
    return lines


def _holder_for(info: Any, path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    return info.comment.split()[0] if info.comment else path.name.removesuffix(".pub")


def cmd_keyring_init(args: argparse.Namespace) -> int:
    from recovery.keys import KeyFileError, KeyringError, init_keyring, read_public_key, write_keyring

    keys = []
    try:
        for pub in args.key:
            info = read_public_key(pub)
            keys.append((info.key, _holder_for(info, pub, None)))
        keyring = init_keyring(args.threshold, keys, args.exec_allow, source=str(args.out))
        write_keyring(keyring, args.out, create=True)
    except (KeyFileError, KeyringError, OSError) as exc:
        return _fail("lifeline keyring init", str(exc))
    print(f"wrote {args.out}")
    for line in _format_keyring(keyring):
        print(line)
    return 0


def _load(path: Path, prefix: str) -> Any:
    from recovery.keys import KeyringError, load_keyring

    try:
        return load_keyring(path)
    except KeyringError as exc:
        raise SystemExit(_fail(prefix, str(exc), 2))


def cmd_keyring_add(args: argparse.Namespace) -> int:
    from recovery.keys import KeyFileError, KeyringError, add_key, read_public_key, write_keyring

    prefix = "lifeline keyring add"
    keyring = _load(args.keyring, prefix)
    try:
        info = read_public_key(args.key)
        holder = _holder_for(info, args.key, args.holder)
        updated = add_key(keyring, info.key, holder, can_sign=not args.no_sign)
        write_keyring(updated, args.keyring)
    except (KeyFileError, KeyringError, OSError) as exc:
        return _fail(prefix, str(exc))
    print(f"added {holder}'s key {info.fingerprint} to {args.keyring} "
          f"({'its signatures count' if not args.no_sign else 'trusted, but may not sign playbooks'}); threshold "
          f"{updated.threshold} of {len(updated.signers())} signing key(s)")
    others = [k for k in updated.signers().values() if k.holder == holder and k.id != info.key_id]
    for k in others:
        print(f"note: {holder} also has key {k.fingerprint}; if this is a rotation, have the new key sign the "
              f"playbooks, then `lifeline keyring revoke {k.fingerprint} --keyring {args.keyring}`")
    return 0


def cmd_keyring_revoke(args: argparse.Namespace) -> int:
    from recovery.keys import KeyringError, revoke_key, write_keyring

    prefix = "lifeline keyring revoke"
    keyring = _load(args.keyring, prefix)
    try:
        updated, entry = revoke_key(keyring, args.key)
        write_keyring(updated, args.keyring)
    except (KeyringError, OSError) as exc:
        return _fail(prefix, str(exc))
    left = len(updated.signers())
    print(f"revoked {entry.holder}'s key {entry.fingerprint} ({entry.id}) in {args.keyring}: its signatures no longer "
          f"count; {left} signing key(s) left for threshold {updated.threshold}")
    if left < updated.threshold:
        print(f"WARNING: no playbook can pass until you add a key (`lifeline keyring add --key NEW.pub --keyring "
              f"{args.keyring}`) and have it sign", file=sys.stderr)
    return 0


def cmd_keyring_show(args: argparse.Namespace) -> int:
    keyring = _load(args.keyring, "lifeline keyring show")
    for line in _format_keyring(keyring):
        print(line)
    return 0


# --------------------------------------------------------------------------- playbook sign / verify


def _passphrase_for(key_path: Path, env_var: str | None) -> bytes | None:
    from recovery.keys import is_encrypted

    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise ValueError(f"--passphrase-env {env_var}: that environment variable is not set or empty")
        return value.encode("utf-8")
    if not is_encrypted(key_path):
        return None
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode("utf-8")
    if sys.stdin.isatty():
        return getpass.getpass(f"passphrase for {key_path}: ").encode("utf-8") or None
    return None  # load_private_key then says how to give one


def cmd_playbook_sign(args: argparse.Namespace) -> int:
    from recovery.keys import KeyFileError, KeyringError, fingerprint, key_id, load_keyring, load_private_key
    from recovery.playbook import PlaybookError, parse_playbook
    from recovery.signing import SigningError, sign_playbook, signature_path, verify_signatures
    from recovery.verify import _one_line

    prefix = "lifeline playbook sign"
    path: Path = args.file
    try:
        private = load_private_key(args.key, _passphrase_for(args.key, args.passphrase_env))
    except (OSError, ValueError, KeyFileError) as exc:
        return _fail(prefix, str(exc), 2)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _fail(prefix, f"{path}: cannot read it ({exc.strerror})", 2)
    # Refuse to sign what verification would refuse anyway: nobody should collect
    # signatures on a playbook that can never run.
    try:
        playbook = parse_playbook(data, str(path))
    except PlaybookError as exc:
        return _fail(prefix, f"refused, the playbook is invalid: {_one_line(str(exc))}")
    if playbook.name != path.stem or path.suffix != ".toml":
        return _fail(prefix, f"refused: {path} holds the playbook {playbook.name!r}; it must be saved as "
                     f"{playbook.name}.toml to be verified")
    now = datetime.now(timezone.utc)
    if now >= playbook.expires:
        return _fail(prefix, f"refused: {path} expired at {playbook.expires.isoformat()}; raise `expires` (and "
                     "`version`) first")
    keyring = None
    keyring_path = args.keyring or DEFAULT_KEYRING
    if args.keyring is not None or keyring_path.exists():
        try:
            keyring = load_keyring(keyring_path)
        except KeyringError as exc:
            if args.keyring is not None:
                return _fail(prefix, str(exc), 2)
            print(f"note: not checking against {keyring_path}: {exc}", file=sys.stderr)
    try:
        line = sign_playbook(path, private, keyring=keyring)
    except (SigningError, OSError) as exc:
        return _fail(prefix, f"refused: {exc}")
    kid = key_id(private.public_key())
    sig_path = signature_path(path)
    print(f"signed {path} ({playbook.name} version {playbook.version}) with key {fingerprint(kid)}: "
          f"{sig_path} line {line.line}")
    if keyring is not None:
        report = verify_signatures(path.read_bytes(), sig_path.read_text(encoding="utf-8"), keyring)
        entry = keyring.signers().get(kid)
        if entry is None:
            print(f"WARNING: this key is not a signing key of {keyring.source}: its signature does not count there",
                  file=sys.stderr)
        state = "enough" if len(report.valid) >= keyring.threshold else \
            f"{keyring.threshold - len(report.valid)} more needed"
        print(f"{len(report.valid)} valid signature(s) of {keyring.threshold} needed by {keyring.source} ({state})")
    return 0


def cmd_playbook_verify(args: argparse.Namespace) -> int:
    from recovery.verify import RollbackState, VerificationError, verify_playbook

    path: Path = args.file
    keyring = _load(args.keyring, "lifeline playbook verify")
    state = RollbackState.for_state_dir(args.state_dir)
    now = datetime.now(timezone.utc)
    try:
        verified = verify_playbook(path, keyring, now=now, rollback_state=state)
    except VerificationError as exc:
        _print_details(path, keyring, exc.report, exc.playbook, now, header=f"{path}: REFUSED")
        print(f"REFUSED ({exc.reason}): {' '.join(exc.message.split())}", file=sys.stderr)
        return 1
    _print_details(path, keyring, None, verified.playbook, now, header=f"{path}: PASS", verified=verified)
    highest = "none" if verified.highest_run is None else f"version {verified.highest_run}"
    print(f"  rollback     highest version run here: {highest} ({state.path})")
    print(f"  sha256       {verified.sha256}")
    print("PASS")
    return 0


def _print_details(path: Path, keyring: Any, report: Any, playbook: Any, now: datetime, *, header: str,
                   verified: Any = None) -> None:
    from recovery.keys import fingerprint

    print(header)
    if playbook is not None:
        left = playbook.expires - now
        when = (f"in {left.days} day(s)" if left.days >= 1 else f"in {int(left.total_seconds() // 3600)} h") \
            if left.total_seconds() > 0 else "EXPIRED"
        print(f"  playbook     {playbook.name} version {playbook.version}, expires "
              f"{playbook.expires.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} ({when})")
    if verified is not None:
        valid = [(s.holder, s.fingerprint, s.line) for s in verified.signed_by]
        problems = [f"not counted: {note}" for note in verified.notes]
    elif report is not None:
        valid = [(keyring.get(k).holder, fingerprint(k), next(s.line for s in report.lines if s.key_id == k))
                 for k in report.valid]
        problems = [f"{'BAD' if p.fatal else 'not counted'}: {p.message}" for p in report.details]
    else:
        return
    print(f"  signatures   {len(valid)} valid, {keyring.threshold} needed (keyring {keyring.source})")
    width = max([len(h) for h, _, _ in valid] + [1])
    for holder, fp, line in valid:
        print(f"    {holder.ljust(width)}  {fp}  line {line}")
    for problem in problems:
        print(f"    {problem}")
