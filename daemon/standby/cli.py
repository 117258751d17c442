"""The standby's commands: ``lifeline role``, ``standby promote``, ``switchover``,
``pause``/``resume``, ``journal tail|stats|verify`` and ``keys replication|witness``.

daemon/cli.py (the registry) calls the ``add_*`` functions with its subparsers (in the
order of `lifeline --help`) and the host's ``--socket``/``--config`` options, and the
``cmd_*`` handlers with the host's ``connect`` (and, for ``journal verify``, its config
loader)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

# lazy-imports: each handler imports what it runs, so that `lifeline role --check` (keepalived's
# track_script) and `lifeline --help` start fast (CLI start-up, bench/cli_startup.py).

Connect = Callable[[argparse.Namespace], Any]
#: The host's config loader, for ``journal verify`` without DIR: the root config of a file
#: (None: the default path); raises ConfigError.
LoadConfig = Callable[["Path | None"], Any]
AddClientOptions = Callable[[argparse.ArgumentParser], None]


def add_role_parser(sub: Any, add_client_options: AddClientOptions) -> None:
    """``lifeline role`` (after ``uplink`` in `lifeline --help`)."""
    role = sub.add_parser("role", help="this node's role, epoch and lease (or follow its changes)")
    add_client_options(role)
    role.add_argument("--follow", action="store_true", help="print every role change as it happens")
    role.add_argument("--json", action="store_true")
    role.add_argument("--check", choices=("primary", "standby"), default=None,
                      help="exit 0 if this node is that (primary: accepting and before valid_until), "
                           "1 if not, 2 if the daemon is unreachable (keepalived's track_script)")


def add_operator_parsers(sub: Any, add_client_options: AddClientOptions, default_config: Path) -> None:
    """``lifeline standby promote``, ``switchover``, ``pause``, ``resume`` and ``journal``
    (after ``preflight`` in `lifeline --help`)."""
    standby = sub.add_parser("standby", help="operator actions on the pair")
    standby_sub = standby.add_subparsers(dest="standby_command", metavar="ACTION", required=True)
    promote = standby_sub.add_parser("promote", help="let this node take a FREE lease although it may lack "
                                                     "acknowledged records (never steals a live lease)")
    add_client_options(promote)
    promote.add_argument("--accept-loss", action="store_true",
                         help="required: you accept that records the old primary acknowledged may be missing here")

    switchover = sub.add_parser("switchover", help="planned handover: the primary hands the lease to its in-sync "
                                                   "standby (no acknowledged record lost); run on the primary")
    add_client_options(switchover)
    switchover.add_argument("--to", metavar="NODE", help="the standby to hand over to (default: the in-sync one)")
    switchover.add_argument("--json", action="store_true")
    pause = sub.add_parser("pause", help="maintenance mode: no automatic promotion in the pair until it expires "
                                         "or `lifeline resume`")
    add_client_options(pause)
    pause.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                       help="how long: 90s, 30m, 2h (default 1h, at most 24h)")
    pause.add_argument("--json", action="store_true")
    resume = sub.add_parser("resume", help="end the maintenance pause: automatic promotion again")
    add_client_options(resume)
    resume.add_argument("--json", action="store_true")

    journal = sub.add_parser("journal", help="the execution journal: tail, verify, stats")
    journal_sub = journal.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    tail = journal_sub.add_parser("tail", help="the last records (through the daemon)")
    add_client_options(tail)
    tail.add_argument("-n", "--lines", type=int, default=10, help="how many records (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    stats = journal_sub.add_parser("stats", help="journal and replication figures (through the daemon)")
    add_client_options(stats)
    stats.add_argument("--json", action="store_true", help="print them as JSON")
    verify = journal_sub.add_parser("verify", help="check every record of a journal directory on disk "
                                                   "(read-only; the daemon may be stopped)")
    verify.add_argument("directory", type=Path, nargs="?", default=None,
                        help="journal directory (default: STATE_DIR/journal from --config)")
    verify.add_argument("--config", type=Path, default=None, help=f"config file (default {default_config})")


def add_key_parsers(keys_sub: Any) -> None:
    """``lifeline keys replication`` and ``keys witness`` (``keys new`` is recovery's)."""
    replication_key = keys_sub.add_parser("replication", help="a pre-shared key for journal replication "
                                                              "(copy the same file to both hosts)")
    replication_key.add_argument("--out", type=Path, required=True, help="where to write it (mode 0600)")
    replication_key.add_argument("--owner", metavar="USER[:GROUP]", default=None,
                                 help="give the file to this user (the service user, lifeline; run as root), "
                                      "so that the daemon can read it")
    witness_key = keys_sub.add_parser("witness", help="a key for the lease witness, one per cluster, apart from "
                                                      "the replication key (both nodes and the witness get it)")
    witness_key.add_argument("--out", type=Path, required=True, help="where to write it (mode 0600)")
    witness_key.add_argument("--owner", metavar="USER[:GROUP]", default=None,
                             help="give the file to this user (the service user, lifeline; run as root)")

def cmd_keys(args: argparse.Namespace) -> int:
    """`lifeline keys replication|witness`."""
    from daemon.core.files import resolve_owner
    from daemon.standby.keys import generate_replication_key, generate_witness_key

    generate = generate_witness_key if args.keys_command == "witness" else generate_replication_key
    try:
        uid, gid, owner = resolve_owner(args.owner) if args.owner else (-1, -1, "")
        generate(args.out)
        if args.owner:
            os.chown(args.out, uid, gid)
    except (OSError, ValueError) as exc:
        print(f"lifeline keys: {exc}", file=sys.stderr)
        return 1
    owner = f", owner {owner}" if owner else ""
    if args.keys_command == "witness":
        print(f"wrote {args.out} (mode 0600{owner}). Copy it to both nodes and the witness host over a trusted "
              f"channel; set [standby.lease] witness_key_file on both nodes and start the witness with --key-file "
              f"(or --cluster-key CLUSTER={args.out}).")
    else:
        print(f"wrote {args.out} (mode 0600{owner}). Copy it to the other host over a trusted channel and set "
              f"standby.key_file on both.")
    return 0


def cmd_journal(args: argparse.Namespace, connect: Connect, load_config: LoadConfig) -> int:
    from daemon.core.control_client import ControlError
    from daemon.core.log import format_table

    if args.journal_command == "verify":
        return journal_verify(args, load_config)
    with connect(args) as client:
        try:
            if args.journal_command == "stats":
                stats = client.call("journal.stats")
                if args.json:
                    print(json.dumps(stats, indent=2, sort_keys=True))
                else:
                    print(format_table(stats), end="")
                return 0
            first = client.call("journal.read", {"from": 1, "limit": 1})
            start = max(first["first_seq"], first["last_seq"] - args.lines + 1, 1)
            while True:
                page = client.call("journal.read", {"from": start, "limit": 1000})
                for record in page["records"]:
                    print(json.dumps(record) if args.json else _format_record(record), flush=True)
                    start = record["seq"] + 1
                if not args.follow:
                    return 0
                if not page["records"]:
                    time.sleep(0.2)
        except ControlError as exc:
            print(f"lifeline journal: {exc.message}", file=sys.stderr)
            return 2


def _format_record(record: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record["timestamp_ns"] / 1e9))
    payload = record.get("payload")
    if payload is None:
        payload = f"<{len(record.get('payload_b64', '')) * 3 // 4} bytes, binary>"
    elif len(payload) > 160:
        payload = payload[:157] + "..."
    return f"{record['seq']:>10} e{record['epoch']} {stamp}Z {payload}"


def journal_verify(args: argparse.Namespace, load_config: LoadConfig) -> int:
    """`lifeline journal verify [DIR]`: read-only; DIR defaults to STATE_DIR/journal of the
    config (``load_config``: the host's loader, ``args.config`` or its default)."""
    from daemon.core.config import ConfigError
    from daemon.standby.journal import verify_directory  # trio, crc32c

    directory = args.directory
    if directory is None:
        from daemon.standby.service import journal_directory

        try:
            directory = journal_directory(load_config(args.config))
        except ConfigError as exc:
            print("lifeline journal verify: " + "\n  ".join(exc.problems), file=sys.stderr)
            return 2
    report = verify_directory(directory)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def format_role(info: dict[str, Any]) -> str:
    waiting = info.get("role") == "primary" and info.get("accepting_appends") is False
    lines = [f"{info.get('node', '?')}: {info.get('role', '?')} at epoch {info.get('epoch', 0)}"
             f"{' (not yet accepting appends)' if waiting else ''}",
             f"  why: {info.get('reason', '')}"]
    if info.get("role") == "primary" and not info.get("fixed"):
        lines.append("  " + format_trading_deadline(info))
    lease = info.get("lease")
    if lease:
        holder = lease.get("holder") or "nobody (free)"
        lines.append(f"  lease: held by {holder}, epoch {lease.get('epoch')}, {lease.get('ttl_remaining')}s left; "
                     f"synchronous standby: {lease.get('sync_node') or 'none'}; last holder: "
                     f"{lease.get('last_holder') or 'none'}")
    if info.get("store"):
        reach = {True: "reachable", False: "UNREACHABLE", None: "not asked yet"}[info.get("store_reachable")]
        lines.append(f"  store: {info['store']} ({reach}{': ' + info['store_error'] if info.get('store_error') else ''})")
    if info.get("blocked"):
        lines.append(f"  BLOCKED from becoming primary: {info['blocked']}")
    paused = info.get("paused")
    if paused:
        from daemon.core.durations import format_duration_short

        lines.append(f"  PAUSED (maintenance, by {paused.get('by')}): no automatic promotion for "
                     f"{format_duration_short(paused.get('for_s', 0))} more; `lifeline resume` ends it")
    if info.get("handover_to"):
        lines.append(f"  switching over to {info['handover_to']}")
    return "\n".join(lines)


def role_matches(info: dict[str, Any], wanted: str) -> tuple[bool, str]:
    """``lifeline role --check``: is this node ``wanted`` (as /primary and /standby judge)?"""
    role = info.get("role")
    if role != wanted:
        return False, f"role is {role}"
    if wanted == "primary":
        if info.get("accepting_appends") is False:
            return False, "primary but not accepting appends yet"
        if not info.get("fixed") and info.get("valid_until") is None:
            return False, "primary but past its fence deadline (no valid_until)"
    return True, f"{role} at epoch {info.get('epoch', 0)}"


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h`` or plain seconds; ValueError naming the form."""
    from daemon.core.durations import Duration

    text = text.strip().lower()
    try:
        value = float(Duration.parse(text)) if not text.replace(".", "", 1).isdigit() else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration: write 90s, 30m or 2h") from None
    if not 0 < value <= 24 * 3600:
        raise ValueError(f"{text!r}: a pause lasts more than 0 and at most 24h")
    return value


def format_trading_deadline(info: dict[str, Any]) -> str:
    """A primary's fence deadline, as role.status / role.watch give it."""
    until, left = info.get("valid_until"), info.get("valid_for")
    if until is None or left is None:
        return "may NOT trade: no valid_until (its fence deadline has passed, or it is not trading)"
    return f"may trade for {round(left * 1000)} ms (until monotonic {until})"


def cmd_role(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    with connect(args) as client:
        try:
            if not args.follow:
                info = client.call("role.status")
                print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_role(info))
                if args.check is not None:
                    ok, why = role_matches(info, args.check)
                    print(f"check {args.check}: {'yes' if ok else 'NO'} ({why})")
                    return 0 if ok else 1
                return 0
            client.call("role.watch")
            print("following role changes; Ctrl-C to stop", file=sys.stderr)
            while True:
                change = client.read_line(timeout=None)
                if args.json:
                    print(json.dumps(change), flush=True)
                elif not change.get("renewal"):  # a renewal only moves valid_until (--json shows each)
                    deadline = f"; {format_trading_deadline(change)}" if change.get("role") == "primary" else ""
                    print(f"{change.get('role')} epoch={change.get('epoch')} (was {change.get('previous') or '-'}): "
                          f"{change.get('reason', '')}{deadline}", flush=True)
                if change.get("role") == "unknown":
                    return 1
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2


def cmd_standby(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    if not args.accept_loss:
        print("lifeline standby promote: refused without --accept-loss. This node takes the lease only once it "
              "is free; records the old primary acknowledged but never sent here would be missing. Check "
              "`lifeline role` on both hosts first; then re-run with --accept-loss.", file=sys.stderr)
        return 2
    with connect(args) as client:
        try:
            result = client.call("standby.promote", {"accept_loss": True})
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    print(f"{'accepted' if result.get('accepted') else 'REFUSED'}: {result.get('reason')} "
          f"(role now {result.get('role')})")
    return 0 if result.get("accepted") else 1


def cmd_switchover(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    with connect(args) as client:
        client.set_timeout(30.0)  # drain + handover: a few ttl at most
        try:
            result = client.call("standby.switchover", {"to": args.to})
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
        except TimeoutError:
            print("lifeline: no answer within 30 s: check `lifeline role` on both nodes", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif result.get("ok"):
        print(f"switched over: {result.get('from')} -> {result.get('to')} at epoch {result.get('epoch')}; appends "
              f"refused here {result.get('seen_ms')} ms until {result.get('from')} saw {result.get('to')} primary "
              f"(after {result.get('wind_down_ms')} ms of trading without renewals). {result.get('reason')}")
    else:
        print(f"switchover REFUSED: {result.get('reason')}")
    return 0 if result.get("ok") else 1


def cmd_pause(args: argparse.Namespace, connect: Connect) -> int:
    from daemon.core.control_client import ControlError

    if args.command == "pause":
        try:
            seconds = parse_duration(args.duration)
        except ValueError as exc:
            print(f"lifeline pause: --for {exc}", file=sys.stderr)
            return 2
        method, params = "standby.pause", {"seconds": seconds}
    else:
        method, params = "standby.resume", {}
    with connect(args) as client:
        try:
            result = client.call(method, params)
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{'paused' if args.command == 'pause' else 'resumed'}: {result.get('reason')}" if result.get("ok")
              else f"{args.command} FAILED: {result.get('reason')}")
    return 0 if result.get("ok") else 1

