"""The host's side of the risk gate: the limits file's signature check (the recovery keyring,
injected into :mod:`daemon.guard` as a :class:`~daemon.guard.limits.LimitsVerifier`) and the
``lifeline risk`` commands.

    lifeline risk [status] [--json]
    lifeline risk pause [--venue V] [--symbol S] [--for DURATION] --reason TEXT     (admin)
    lifeline risk resume [--venue V] [--symbol S] --reason TEXT                     (admin)
    lifeline risk throttle --rate N [--burst B] [--for DURATION] --reason TEXT      (admin)
    lifeline risk unthrottle --reason TEXT                                          (admin)
    lifeline risk sign LIMITS.toml --key NAME.key [--keyring PATH]
    lifeline risk verify LIMITS.toml [--keyring PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from daemon.core.durations import Duration
from daemon.guard.cli import DEFAULT_KEYRING
from daemon.guard.limits import LimitsError, load_limits
from recovery.keys import KeyringError, fingerprint, load_keyring, load_private_key
from recovery.signing import SigningError, sign_playbook, signature_path
from recovery.verify import RollbackState, VerificationError, _read, check_signatures

#: The limits' own signature context: a playbook signature never counts on a limits file.
LIMITS_CONTEXT = b"lifeline-limits-signature-v1\0"
SIGN_COMMAND = "lifeline risk sign"


class KeyringLimitsVerifier:
    """m of n signatures by the recovery keyring, anti-rollback in STATE_DIR/guard/versions.json."""

    NAME = "limits"

    def __init__(self, keyring_path: Path, state_dir: Path | None) -> None:
        self.keyring_path = Path(keyring_path)
        self.state_dir = state_dir

    def _rollback(self) -> Any:

        assert self.state_dir is not None
        return RollbackState(Path(self.state_dir) / "guard" / "versions.json")

    def signers(self, path: Path, data: bytes) -> tuple[str, ...]:

        try:
            keyring = load_keyring(self.keyring_path)
        except (KeyringError, OSError) as exc:
            raise LimitsError("no_signatures", f"{path}: cannot check its signatures: the keyring "
                                               f"{self.keyring_path}: {exc}") from None
        sig_path = signature_path(path)
        try:
            raw = _read(sig_path, "signature file")
        except FileNotFoundError:
            raise LimitsError("no_signatures", f"{sig_path}: missing: the limits file is not signed; sign it with "
                                               f"`{SIGN_COMMAND} {path} --key NAME.key`") from None
        except VerificationError as exc:
            raise LimitsError("invalid", exc.message) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LimitsError("modified", f"{sig_path}: not UTF-8 text: restore it or re-sign") from None
        try:
            report = check_signatures(path, data, text, keyring, context=LIMITS_CONTEXT, sign_command=SIGN_COMMAND)
        except VerificationError as exc:
            raise LimitsError(exc.reason, exc.message) from None
        holders = []
        for kid in report.valid:
            entry = keyring.get(kid)
            holders.append(entry.holder if entry is not None else kid)
        return tuple(holders)

    def check_version(self, path: Path, version: int, sha256: str) -> None:
        if self.state_dir is None:
            return

        try:
            self._rollback().check(self.NAME, version, sha256)
        except VerificationError as exc:
            message = exc.message.replace("playbook", "limits file").replace("run on this host", "loaded on this host")
            raise LimitsError(exc.reason, f"{path}: {message}") from None

    def record_version(self, version: int, sha256: str) -> None:
        if self.state_dir is not None:
            state = self._rollback()
            state.record_seen(self.NAME, version, sha256)


def verifier_for(config: Any) -> KeyringLimitsVerifier:
    guard = config.guard
    keyring = guard.keyring if guard.keyring is not None else (
        config.recovery.keyring if config.recovery is not None else DEFAULT_KEYRING)
    return KeyringLimitsVerifier(keyring, Path(config.node.state_dir))


def check_limits_at_start(config: Any) -> str | None:
    """`lifeline run`: the limits file must pass before the daemon starts (exit 78 if not)."""
    import time


    path = config.guard.limits
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
        load_limits(Path(path), data, verifier_for(config), time.time())
    except LimitsError as exc:
        return f"guard.limits: {exc.message}"
    except OSError as exc:
        return f"guard.limits: {path}: cannot read it ({exc.strerror}); fix the path or its permissions"
    return None


# --------------------------------------------------------------------------- the CLI


def run(args: argparse.Namespace, call: Any) -> int:
    """``call(method, params)`` reaches the daemon (the CLI's control client)."""
    command = args.risk_command or "status"
    if command == "sign":
        return _sign(args)
    if command == "verify":
        return _verify(args)
    if command == "status":
        result = call("risk.status", {})
        if getattr(args, "json", False):
            print(json.dumps(result, indent=2))
        else:
            print(format_status(result))
        return 0
    params: dict[str, Any] = {"reason": args.reason}
    for name in ("venue", "symbol", "rate", "burst"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    if getattr(args, "duration", None):

        params["seconds"] = float(Duration.parse(args.duration))
    result = call(f"risk.{command}", params)
    print(result.get("summary", json.dumps(result)))
    return 0


def _sign(args: argparse.Namespace) -> int:
    import os


    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if value is None:
            print(f"lifeline risk sign: ${args.passphrase_env} is not set", file=sys.stderr)
            return 2
        passphrase = value.encode()
    try:
        key = load_private_key(args.key, passphrase)
        keyring = load_keyring(args.keyring) if args.keyring is not None else None
        line = sign_playbook(args.file, key, keyring=keyring, context=LIMITS_CONTEXT)
    except (SigningError, ValueError, OSError) as exc:
        print(f"lifeline risk sign: {exc}", file=sys.stderr)
        return 1

    print(f"{args.file}: signed by key {fingerprint(line.key_id)} (line {line.line}); "
          f"check with `lifeline risk verify {args.file}`")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import time


    verifier = KeyringLimitsVerifier(args.keyring, None)
    try:
        data = Path(args.file).read_bytes()
        signed = load_limits(Path(args.file), data, verifier, time.time())
    except LimitsError as exc:
        print(f"REFUSED ({exc.reason}): {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: cannot read it ({exc.strerror})", file=sys.stderr)
        return 1
    limits = signed.limits
    print(f"{args.file}: OK: version {limits.version}, expires {limits.to_dict()['expires']}, signed by "
          f"{', '.join(signed.signers)}; {len(limits.entries)} [[limits]] entr{'y' if len(limits.entries) == 1 else 'ies'}"
          " (the daemon also refuses a version below the highest it loaded)")
    return 0


def format_status(result: dict[str, Any]) -> str:
    lines: list[str] = []
    limits = result.get("limits")
    if limits:
        lines.append(f"limits: {limits['file']} version {limits['version']}, expires {limits['expires']}, signed by "
                     f"{', '.join(limits['signers'])}")
    else:
        lines.append("limits: none loaded (only the blocks apply)")
    if result.get("limits_error"):
        lines.append(f"  LAST RELOAD REFUSED: {result['limits_error']} (the limits above stay in force)")
    use = result.get("utilisation") or []
    if use:
        lines.append(f"{'LIMIT':<20} {'VENUE':<12} {'SYMBOL':<12} {'USE':>7} {'VALUE':>14} {'LIMIT':>14}")
        for u in use:
            lines.append(f"{u['limit']:<20} {u['venue']:<12} {u['symbol']:<12} {u['utilisation'] * 100:>6.1f}% "
                         f"{u['value']:>14} {u['limit_value']:>14}")
    book = result.get("book") or {}
    lines.append(f"day P&L {book.get('day_pnl', '0')}; {book.get('open_orders', 0)} open order(s); folded through "
                 f"seq {book.get('position', 0)}")
    for inst in book.get("instruments", []):
        lines.append(f"  {inst['venue']:<12} {inst['symbol']:<12} position {inst['position']:>12} open "
                     f"{inst['open_orders']:>4} mark {inst['mark'] or '-':>12} realised {inst['realised_today']} "
                     f"unrealised {inst['unrealised']}")
    blocks = (result.get("blocks") or {})
    for block in blocks.get("blocks", []):
        lines.append(f"BLOCK {block['kind']} on {block['scope']}: {block['reason']} (by {block['by']})")
    if blocks.get("throttle"):
        t = blocks["throttle"]
        lines.append(f"THROTTLE {t['rate']}/s burst {t['burst']}: {t['reason']} (by {t['by']})")
    refusals = result.get("refusals") or {}
    if refusals:
        lines.append("refusals: " + ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())))
    return "\n".join(lines)
