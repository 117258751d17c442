"""The `lifeline` command.

    lifeline run [--config PATH]                 run the daemon (systemd's ExecStart)
    lifeline status [--json]                     what every service is doing
    lifeline events [--follow] [--kind K ...]    recent events, or a live stream
    lifeline config check FILE [--no-host]       validate a config and this host; exit 0 or 1
    lifeline config show FILE                    the effective config, defaults filled in
    lifeline lab [...]                           the lab: start the daemon, drill, report
    lifeline preflight [--json]                  the pre-market checklist; exit 0, 1 (a FAIL) or 2
    lifeline cluster [--json]                    both nodes of the pair, the lease and the store
    lifeline reload                              re-read the config (as SIGHUP does)
    lifeline report eod [--out-dir DIR]          the end-of-day report

Client commands find the control socket from ``--socket``, else from the config file
(``--config``, default /etc/lifeline/lifeline.toml), else the default path.

Imports are lazy so that client commands such as `lifeline status` start fast: they do
not load trio, psutil or ccxt.

Exit codes: 0 success / all healthy; 1 a check failed or something is unhealthy;
2 usage error or the daemon could not be reached; `lifeline run`: 78 (EX_CONFIG) for a
config or host that cannot work (one line per problem; systemd does not restart it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from daemon.status import format_duration_short, format_status

EX_CONFIG = 78  # sysexits.h; the unit's RestartPreventExitStatus=78: a bad config is not restarted
DEFAULT_SOCKET = Path("/run/lifeline/control.sock")
DEFAULT_CONFIG = Path("/etc/lifeline/lifeline.toml")


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, help="control socket (default: from the config)")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"config file to read the socket path from (default {DEFAULT_CONFIG})")


# Commands whose parsers live in modules that are slow to import (trio, cryptography, the
# drills): `lifeline --help` and every other command show them with this help line only;
# the full parser is built when the command itself runs. Kept equal to the modules' own help
# by tests/unit/test_packaging.py.
LAZY_COMMAND_HELP = {
    "audit": "the hash-chained audit log of playbook runs: verify it, show it",
    "witness": "run the lease witness (the pair's quorum device)",
}


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser (``command`` None), or one whose slow-to-import parts are built
    only for ``command`` (what :func:`main` uses, so that start-up stays fast)."""

    def needs(name: str) -> bool:
        return command is None or command == name

    parser = argparse.ArgumentParser(prog="lifeline", description="Resilience daemon for hardened trading hosts.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground (as systemd does)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")

    status = sub.add_parser("status", help="print every service's state")
    _add_client_options(status)
    status.add_argument("--json", action="store_true", help="print the full status as JSON")

    events = sub.add_parser("events", help="print recent events, or follow them live")
    _add_client_options(events)
    events.add_argument("--follow", "-f", action="store_true", help="stream events until interrupted")
    events.add_argument("--kind", action="append", default=None, help="only events of this kind (repeatable)")
    events.add_argument("--limit", type=int, default=50, help="how many recent events (default 50)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")

    config = sub.add_parser("config", help="check or show a config file")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate FILE, and this host against it; exit 0 if usable, "
                                                 "1 otherwise")
    check.add_argument("file", type=Path)
    check.add_argument("--host", action=argparse.BooleanOptionalAction, default=True,
                       help="also check this host: interfaces and addresses, key and credential files readable "
                            "by --user, directories writable by it (default; --no-host: the file only)")
    check.add_argument("--user", default="lifeline",
                       help="the account the daemon runs as, for --host (default lifeline)")
    show = config_sub.add_parser("show", help="print FILE's effective config with every default filled in")
    show.add_argument("file", type=Path)

    uplink = sub.add_parser("uplink", help="show the uplinks, pin one, or return to automatic choice")
    uplink_sub = uplink.add_subparsers(dest="uplink_command", metavar="ACTION", required=True)
    for action, text in (("status", "every uplink's health and the active one"),
                         ("use", "pin NAME: traffic goes through it while it is usable"),
                         ("auto", "remove the pin: automatic choice again")):
        p = uplink_sub.add_parser(action, help=text)
        _add_client_options(p)
        if action == "use":
            p.add_argument("name")
        if action == "status":
            p.add_argument("--json", action="store_true")

    role = sub.add_parser("role", help="this node's role, epoch and lease (or follow its changes)")
    _add_client_options(role)
    role.add_argument("--follow", action="store_true", help="print every role change as it happens")
    role.add_argument("--json", action="store_true")
    role.add_argument("--check", choices=("primary", "standby"), default=None,
                      help="exit 0 if this node is that (primary: accepting and before valid_until), "
                           "1 if not, 2 if the daemon is unreachable (keepalived's track_script)")
    cluster = sub.add_parser("cluster", help="both nodes of the pair: role, epoch, position, lag, sync, the lease "
                                             "and the store (from either node)")
    _add_client_options(cluster)
    cluster.add_argument("--json", action="store_true")
    report = sub.add_parser("report", help="operator reports (eod: the end-of-day report after the close)")
    report_sub = report.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    eod = report_sub.add_parser("eod", help="the day's events, a reconciliation dry run of every venue and journal "
                                            "verify; exit 0 if nothing needs a look, 1 if something does")
    _add_client_options(eod)
    eod.add_argument("--json", action="store_true", help="print the report as JSON")
    eod.add_argument("--out-dir", type=Path, default=None,
                     help="also write eod-YYYY-MM-DD.txt and .json into this directory")
    reload = sub.add_parser("reload", help="re-read the config: apply what can change without releasing the lease "
                                           "(log level, uplink thresholds, playbooks), refuse the rest naming the key")
    _add_client_options(reload)
    preflight = sub.add_parser("preflight", help="the pre-market checklist: PASS/WARN/FAIL per check; exit 0 if "
                                                 "nothing failed, 1 if a check failed, 2 if the daemon is unreachable")
    _add_client_options(preflight)
    preflight.add_argument("--json", action="store_true", help="the checks as one JSON object")
    preflight.add_argument("--no-verify", action="store_true", help="skip journal verify and audit verify (fast)")
    standby = sub.add_parser("standby", help="operator actions on the pair")
    standby_sub = standby.add_subparsers(dest="standby_command", metavar="ACTION", required=True)
    promote = standby_sub.add_parser("promote", help="let this node take a FREE lease although it may lack "
                                                     "acknowledged records (never steals a live lease)")
    _add_client_options(promote)
    promote.add_argument("--accept-loss", action="store_true",
                         help="required: you accept that records the old primary acknowledged may be missing here")

    switchover = sub.add_parser("switchover", help="planned handover: the primary hands the lease to its in-sync "
                                                   "standby (no acknowledged record lost); run on the primary")
    _add_client_options(switchover)
    switchover.add_argument("--to", metavar="NODE", help="the standby to hand over to (default: the in-sync one)")
    switchover.add_argument("--json", action="store_true")
    pause = sub.add_parser("pause", help="maintenance mode: no automatic promotion in the pair until it expires "
                                         "or `lifeline resume`")
    _add_client_options(pause)
    pause.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                       help="how long: 90s, 30m, 2h (default 1h, at most 24h)")
    pause.add_argument("--json", action="store_true")
    resume = sub.add_parser("resume", help="end the maintenance pause: automatic promotion again")
    _add_client_options(resume)
    resume.add_argument("--json", action="store_true")

    journal = sub.add_parser("journal", help="the execution journal: tail, verify, stats")
    journal_sub = journal.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    tail = journal_sub.add_parser("tail", help="the last records (through the daemon)")
    _add_client_options(tail)
    tail.add_argument("-n", "--lines", type=int, default=10, help="how many records (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    stats = journal_sub.add_parser("stats", help="journal and replication figures (through the daemon)")
    _add_client_options(stats)
    stats.add_argument("--json", action="store_true", help="print them as JSON")
    verify = journal_sub.add_parser("verify", help="check every record of a journal directory on disk "
                                                   "(read-only; the daemon may be stopped)")
    verify.add_argument("directory", type=Path, nargs="?", default=None,
                        help="journal directory (default: STATE_DIR/journal from --config)")
    verify.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG})")

    keys = sub.add_parser("keys", help="make keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="KIND", required=True)
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

    from recovery.cli import add_parsers as add_recovery_parsers

    recovery_parsers = add_recovery_parsers(sub, keys_sub)  # keys new, keyring ..., playbook sign|verify
    run_playbook = recovery_parsers.playbook_sub.add_parser(
        "run", help="verify and run a playbook in the daemon (through the control socket)")
    run_playbook.add_argument("name", help="the playbook's name (PLAYBOOKS_DIR/NAME.toml)")
    run_playbook.add_argument("--dry-run", action="store_true", help="verify, check preconditions, print the plan; "
                                                                     "change nothing")
    _add_client_options(run_playbook)
    run_playbook.set_defaults(recovery_handler=cmd_playbook_run)
    list_playbooks = recovery_parsers.playbook_sub.add_parser("list", help="the daemon's verified and refused "
                                                                           "playbooks")
    list_playbooks.add_argument("--json", action="store_true")
    _add_client_options(list_playbooks)
    list_playbooks.set_defaults(recovery_handler=cmd_playbook_list)

    sim = sub.add_parser("sim", help="run a device simulator on a new pty (commissioning, tests); prints its path; "
                                     "`sim venue --listen HOST:PORT` runs the venue emulator (Kraken, Coinbase)")
    sim.add_argument("device", choices=HARDWARE_KINDS + ("venue",))
    sim.add_argument("--listen", default="127.0.0.1:8080", help="venue emulator only: address to serve on")
    sim.add_argument("--data", type=Path, default=None, metavar="DIR",
                     help="venue emulator only: the folder with kraken/coinbase.response.json "
                          "(default: lab/data/ccxt_static)")
    sim.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    hardware = sub.add_parser("hardware", help="read the host's devices")
    hardware_sub = hardware.add_subparsers(dest="hardware_command", metavar="ACTION", required=True)
    read = hardware_sub.add_parser("read", help="one reading from a real or simulated device, or a clear error")
    read.add_argument("device", choices=HARDWARE_KINDS)
    read.add_argument("--port", required=True, help="serial port, pyserial URL, nut://HOST:PORT/UPS or gpsd://HOST:PORT")
    read.add_argument("--timeout", type=float, default=3.0)
    read.add_argument("--json", action="store_true")

    from daemon.venues.cli import add_venue_parsers

    add_venue_parsers(sub, _add_client_options)

    from daemon.risk import add_parser as add_risk_parser  # argparse only: no trio, no cryptography

    add_risk_parser(sub, _add_client_options)

    if needs("audit"):
        from recovery.audit import add_audit_parser  # here: it loads cryptography (~40 ms)

        add_audit_parser(sub)
    else:
        sub.add_parser("audit", help=LAZY_COMMAND_HELP["audit"])

    # The lab's commands (lab/cli.py): their arguments are added when one of them runs.
    for name, help_text in LAB_COMMAND_HELP.items():
        _lab_parser(sub.add_parser(name, help=help_text), name)

    if needs("witness"):
        from daemon.standby.witness import add_witness_parser  # here: it loads trio (~100 ms)

        add_witness_parser(sub)
    else:
        sub.add_parser("witness", help=LAZY_COMMAND_HELP["witness"])

    return parser


#: The commands the lab provides, with their help (kept equal to lab/cli.py's by
#: tests/unit/test_daemon_never_imports_lab.py).
LAB_COMMAND_HELP = {
    "drill": "scripted failures in the lab, timed (needs root)",
    "lab": "run the lab drills on the embedded default and report",
}


class _LabParser(argparse.ArgumentParser):
    """A lab command's parser, completed by lab/cli.py the first time it parses or prints its
    help: the daemon's CLI is the one module that may load the lab, and only for a lab command
    (the daemon never imports lab/; README "Layout")."""

    lab_command: str | None = None

    def _complete(self) -> None:
        if self.lab_command is not None:
            command, self.lab_command = self.lab_command, None
            # lazily: the lab is its own room, loaded by `lifeline lab` and `lifeline drill` only
            from lab.cli import add_arguments

            add_arguments(command, self, live_options=_add_live_options)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()


def _lab_parser(parser: argparse.ArgumentParser, command: str) -> None:
    parser.__class__ = _LabParser
    parser.lab_command = command  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv) or "")
    args = parser.parse_args(argv)
    if args.version:
        from daemon import __version__

        print(f"lifeline {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handler = {
        "run": cmd_run,
        "status": cmd_status,
        "events": cmd_events,
        "config": cmd_config,
        "uplink": cmd_uplink,
        "drill": cmd_drill,
        "journal": cmd_journal,
        "keys": cmd_keys,
        "lab": _lab,
        "witness": _witness,
        "role": cmd_role,
        "preflight": cmd_preflight,
        "cluster": cmd_cluster,
        "reload": cmd_reload,
        "report": cmd_report,
        "standby": cmd_standby,
        "switchover": cmd_switchover,
        "pause": cmd_pause,
        "resume": cmd_pause,
        "keyring": _recovery,
        "playbook": _recovery,
        "audit": _audit,
        "sim": cmd_sim,
        "hardware": cmd_hardware,
        "venues": _venues,
        "reconcile": _reconcile,
        "risk": cmd_risk,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


HARDWARE_KINDS = ("ups", "gnss", "enclosure")


def _hardware_module(kind: str) -> Any:
    import importlib

    return importlib.import_module(f"hardware.{kind}.driver")


def _simulator_module(kind: str) -> Any:
    # The one place the daemon's CLI reaches into the lab: `lifeline sim` runs the lab's
    # device simulators (loaded on use; production code never imports lab).
    import importlib

    return importlib.import_module(f"lab.sim.{kind}")


def _venues(args: argparse.Namespace) -> int:
    from daemon.venues.cli import cmd_venues

    return cmd_venues(args, _connect)


def _reconcile(args: argparse.Namespace) -> int:
    from daemon.venues.cli import cmd_reconcile

    return cmd_reconcile(args, _connect)


def cmd_sim(args: argparse.Namespace) -> int:
    if args.device == "venue":
        # The CLI registry loads the lab's subcommand lazily: the daemon never imports lab/ otherwise.
        from lab.venues.__main__ import main as emulator_main

        return emulator_main(["--listen", args.listen, *(["--data", str(args.data)] if args.data else [])])
    simulator = _simulator_module(args.device).start_simulator()
    print(simulator.path, flush=True)
    print(f"{args.device} simulator on {simulator.path}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        time.sleep(args.seconds) if args.seconds is not None else signal_pause()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.close()
    return 0


def signal_pause() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    while True:
        signal.pause()


def cmd_hardware(args: argparse.Namespace) -> int:
    import trio

    from hardware.errors import HardwareError

    module = _hardware_module(args.device)
    try:
        reading = trio.run(lambda: module.read_once(args.port, timeout=args.timeout))
    except HardwareError as exc:
        print(f"lifeline hardware read {args.device}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reading, default=str, sort_keys=True))
    else:
        print(format_table(reading), end="")
    return 0


def format_table(data: dict[str, Any], prefix: str = "") -> str:
    """``data`` as aligned ``name  value`` lines, nested tables flattened to ``a.b``."""
    from daemon.core.log import human

    rows: list[tuple[str, str]] = []

    def walk(item: dict[str, Any], path: str) -> None:
        for key, value in item.items():
            name = f"{path}{key}"
            if isinstance(value, dict) and value:
                walk(value, name + ".")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, entry in enumerate(value):
                    walk(entry, f"{name}[{i}].")
            else:
                rows.append((name, human(value)))

    walk(data, prefix)
    width = max((len(name) for name, _ in rows), default=0)
    return "".join(f"{name:<{width}}  {value}\n" for name, value in rows)


def _audit(args: argparse.Namespace) -> int:
    from recovery.audit import run_audit_command

    return run_audit_command(args)


def cmd_playbook_run(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
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


def cmd_playbook_list(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
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


def _recovery(args: argparse.Namespace) -> int:
    from recovery.cli import run

    return run(args)


def _witness(args: argparse.Namespace) -> int:
    from daemon.standby.witness import run_witness_command

    return run_witness_command(args)


def _lab(args: argparse.Namespace) -> int:
    from lab.cli import run_lab_command  # lazily: a lab command

    return run_lab_command(args)


# ---------------------------------------------------------------------- run / config


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError, load_config
    from daemon.core import log

    log.setup("info")
    logger = log.get_logger("cli")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # One line per problem, no traceback; exit 78 so that systemd does not restart it.
        for problem in exc.problems:
            logger.error("config.invalid", problem=problem, exit_code=EX_CONFIG)
        return EX_CONFIG
    from daemon.host_check import check_host

    # Every file and directory the services open at start-up, checked before any starts.
    host = check_host(config)
    for warning in host.warnings:
        logger.warning("config.host_warning", problem=warning)
    for problem in host.problems:
        logger.error("config.host_mismatch", problem=problem, exit_code=EX_CONFIG)
    if host.problems:
        return EX_CONFIG
    from daemon.risk import check_limits_at_start

    refused = check_limits_at_start(config)  # a refused limits file, no last good one: do not start
    if refused is not None:
        logger.error("config.invalid", problem=refused, exit_code=EX_CONFIG)
        return EX_CONFIG
    log.setup(config.log.level)
    from daemon.app import run_daemon

    return run_daemon(config)


def cmd_config(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError, dump_toml, load_config, to_dict

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: INVALID, {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.config_command == "check":
        checked = ""
        if args.host:
            from daemon.host_check import ServiceUser, check_host

            try:
                user = ServiceUser.named(args.user)
            except KeyError as exc:
                print(f"{args.file}: cannot check this host: {exc.args[0]}", file=sys.stderr)
                return 1
            host = check_host(config, user)
            for warning in host.warnings:
                print(f"  warning: {warning}", file=sys.stderr)
            if host.problems:
                print(f"{args.file}: this host does not fit it, {len(host.problems)} problem(s) "
                      f"(for user {user.name}):", file=sys.stderr)
                for problem in host.problems:
                    print(f"  {problem}", file=sys.stderr)
                return 1
            checked = f"; this host fits it for user {user.name}"
        print(f"{args.file}: OK (node {config.node.name}, control socket {config.control.socket}{checked})")
        return 0
    print(f"# effective config of {args.file}, defaults filled in")
    print(dump_toml(to_dict(config)), end="")
    return 0


# ---------------------------------------------------------------------- client commands


def socket_path(args: argparse.Namespace) -> Path:
    """--socket, else the config's control.socket, else the default."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    config_path = args.config or DEFAULT_CONFIG
    if config_path.exists():
        from daemon.config import ConfigError, load_config

        try:
            return Path(load_config(config_path).control.socket)
        except ConfigError as exc:
            if args.config:
                print(f"lifeline: cannot use {config_path}:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
                raise SystemExit(2)
    elif args.config:
        print(f"lifeline: {config_path}: no such file", file=sys.stderr)
        raise SystemExit(2)
    return DEFAULT_SOCKET


def _connect(args: argparse.Namespace) -> Any:
    from daemon.core.control_client import ControlClient

    path = socket_path(args)
    try:
        return ControlClient(path).connect()
    except ConnectionError as exc:
        print(f"lifeline: {exc}", file=sys.stderr)
        raise SystemExit(2)


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
        try:
            status = client.call("status")
        except ControlError as exc:
            print(f"lifeline: the daemon refused status: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    healthy = all(s.get("health") == "ok" for s in status.get("services", [])) and status.get("ready")
    return 0 if healthy else 1


def cmd_uplink(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
        try:
            if args.uplink_command == "use":
                result = client.call("uplink.use", {"name": args.name})
                print(f"pinned {args.name}; active uplink: {result['active']}"
                      + (f" ({result['note']})" if result.get("note") else ""))
                return 0
            if args.uplink_command == "auto":
                result = client.call("uplink.auto")
                print(f"automatic choice; active uplink: {result['active']}")
                return 0
            details = client.call("uplink.status")
        except ControlError as exc:
            print(f"lifeline: {exc.message}", file=sys.stderr)
            return 1 if exc.code != "unknown_method" else 2
    if args.json:
        print(json.dumps(details, indent=2, sort_keys=True))
        return 0
    print(format_uplinks(details))
    return 0 if not details.get("all_down") else 1


def format_uplinks(details: dict[str, Any]) -> str:
    pin = f", pinned {details['pinned']}" if details.get("pinned") else ""
    lines = [f"active uplink: {details.get('active') or 'none'}{pin} (route backend {details.get('backend')}, "
             f"{details.get('switches', 0)} switches, {details.get('route_errors', 0)} route errors)"]
    if details.get("last_decision"):
        lines.append(f"last decision: {details['last_decision']}")
    rows = [("UPLINK", "STATE", "FOR", "RTT", "JITTER", "LOSS", "PRIO", "REASON")]
    for name, u in details.get("uplinks", {}).items():
        rows.append((name, u["state"].upper(), format_duration_short(u.get("for_s") or 0),
                     f"{u['rtt_ms']:.1f}ms" if u.get("rtt_ms") is not None else "-",
                     f"{u['jitter_ms']:.1f}ms" if u.get("jitter_ms") is not None else "-",
                     f"{u['loss']:.1%}", str(u.get("priority")), u.get("reason", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    lines.append("")
    for row in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:7])) + "  " + row[7])
    return "\n".join(lines)


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command not in ("replication", "witness"):
        return _recovery(args)
    import os

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


def cmd_journal(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    if args.journal_command == "verify":
        return journal_verify(args)
    with _connect(args) as client:
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


def journal_verify(args: argparse.Namespace) -> int:
    from daemon.standby.journal import verify_directory

    directory = args.directory
    if directory is None:
        from daemon.config import ConfigError, load_config
        from daemon.standby.service import journal_directory

        try:
            directory = journal_directory(load_config(args.config or DEFAULT_CONFIG))
        except ConfigError as exc:
            print("lifeline journal verify: " + "\n  ".join(exc.problems), file=sys.stderr)
            return 2
    report = verify_directory(directory)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def cmd_drill(args: argparse.Namespace) -> int:
    if getattr(args, "live", False) or args.drill_command == "switchover":
        return cmd_live_drill(args)  # on the real pair, through the daemon: not the lab
    from lab.cli import run_drill_command  # lazily: a lab command

    return run_drill_command(args)


def format_event(event: dict[str, Any]) -> str:
    from daemon.core.log import human

    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("wall_time", 0)))
    fields = " ".join(f"{k}={human(v)}" for k, v in event.items() if k not in ("kind", "wall_time", "sequence"))
    return f"{stamp} {event.get('kind', '?')} {fields}"


def cmd_events(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
        try:
            if not args.follow:
                result = client.call("events.recent", {"limit": args.limit, "kinds": args.kind or []})
                for event in result["events"]:
                    print(json.dumps(event) if args.json else format_event(event))
                return 0
            client.call("events.subscribe", {"kinds": args.kind} if args.kind else {})
            print("following events; Ctrl-C to stop", file=sys.stderr)
            while True:
                line = client.read_line(timeout=None)
                if "dropped" in line:
                    print(f"... {line['dropped']} event(s) dropped: this client was too slow", file=sys.stderr)
                    continue
                event = line.get("event", {})
                print(json.dumps(event) if args.json else format_event(event), flush=True)
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2


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
    from daemon.config import Duration

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


def cmd_role(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
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


def cmd_cluster(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError
    from daemon.operate import format_cluster

    with _connect(args) as client:
        try:
            info = client.call("cluster.status")
        except (ControlError, ConnectionError) as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else "\n".join(format_cluster(info)))
    store = info.get("store")
    return 1 if store is not None and not store.get("reachable") else 0


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import date

    from daemon import eod
    from daemon.core.control_client import ControlError

    journal_dir = None
    config_path = args.config or DEFAULT_CONFIG
    if config_path.exists():
        from daemon.config import ConfigError, load_config
        from daemon.standby.service import journal_directory

        try:
            config = load_config(config_path)
            journal_dir = journal_directory(config) if config.standby is not None else None
        except ConfigError:
            pass
    with _connect(args) as client:
        try:
            report = eod.gather(client, journal_dir)
        except (ControlError, ConnectionError) as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    text = "\n".join(eod.lines(report)) + "\n"
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else text, end="" if not args.json else "\n")
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = args.out_dir / f"eod-{date.today().isoformat()}"
        stem.with_suffix(".txt").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"written: {stem}.txt, {stem}.json", file=sys.stderr)
    return 0 if report["ok"] else 1


def cmd_reload(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
        try:
            result = client.call("config.reload")
        except (ControlError, ConnectionError) as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    print(f"reload: {result.get('summary')}")
    if result.get("playbooks"):
        print(f"playbooks: {result['playbooks']['verified']} verified, {result['playbooks']['refused']} refused")
    limits = result.get("limits")
    if limits:
        print(f"limits: version {limits['limits']['version']} in force" if limits.get("ok") and limits.get("limits")
              else f"limits: REFUSED ({limits.get('error')}); the last good limits stay in force")
        if not limits.get("ok"):
            return 1
    return 0 if result.get("ok") else 1


def cmd_risk(args: argparse.Namespace) -> int:
    """`lifeline risk ...` (daemon/risk.py): sign / verify are local; the rest ask the daemon."""
    from daemon import risk
    from daemon.core.control_client import ControlError

    if args.risk_command in ("sign", "verify"):
        return risk.run(args, None)
    with _connect(args) as client:
        try:
            return risk.run(args, client.call)
        except ControlError as exc:
            print(f"lifeline risk: {exc.message}", file=sys.stderr)
            return 1 if exc.code != "unknown_method" else 2


def cmd_preflight(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
        try:
            client.set_timeout(120.0)  # journal verify reads every segment
            result = client.call("preflight.run", {"verify": not args.no_verify})
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"preflight on {result.get('node')} ({result.get('duration_ms')} ms)")
        for line in result.get("lines", []):
            print(line)
        print(result.get("summary", ""))
    return int(result.get("exit_code", 1))


def cmd_standby(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    if not args.accept_loss:
        print("lifeline standby promote: refused without --accept-loss. This node takes the lease only once it "
              "is free; records the old primary acknowledged but never sent here would be missing. Check "
              "`lifeline role` on both hosts first; then re-run with --accept-loss.", file=sys.stderr)
        return 2
    with _connect(args) as client:
        try:
            result = client.call("standby.promote", {"accept_loss": True})
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 2
    print(f"{'accepted' if result.get('accepted') else 'REFUSED'}: {result.get('reason')} "
          f"(role now {result.get('role')})")
    return 0 if result.get("accepted") else 1




def _add_live_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--live", action="store_true",
                        help="on the real pair, through the daemon (admin role, [drills] live = true, outside "
                             "trading hours)")
    parser.add_argument("--force", action="store_true", help="--live: run inside trading hours (logged and audited)")
    _add_client_options(parser)


def cmd_live_drill(args: argparse.Namespace) -> int:
    """`lifeline drill switchover|uplink --live`: the daemon runs it (drill.*), this prints it."""
    from daemon.core.control_client import ControlError

    if not args.live:
        print(f"lifeline drill {args.drill_command}: only live (add --live: it runs on this host's pair through the "
              "daemon); the lab's HA drills are `lifeline drill standby|partition|region`", file=sys.stderr)
        return 2
    params: dict[str, Any] = {"force": bool(args.force)}
    if args.drill_command == "uplink":
        params["seconds"] = args.seconds
    elif args.drill_command != "switchover":
        print(f"lifeline drill {args.drill_command}: no live version (live: switchover, uplink)", file=sys.stderr)
        return 2
    with _connect(args) as client:
        client.set_timeout(700.0)  # the daemon's own deadline ([drills] max_duration) ends it first
        try:
            result = client.call(f"drill.{args.drill_command}", params)
        except ControlError as exc:
            print(f"lifeline: {exc}", file=sys.stderr)
            return 1 if "refused" in str(exc) else 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        head = {"switchover": f"live switchover drill {result.get('from')} -> {result.get('to')}: pause "
                              f"{result.get('pause_ms')} ms, {result.get('duration_ms')} ms in all",
                "uplink": f"live uplink drill: {result.get('fibre')} cut for {result.get('seconds')}s; failover "
                          f"{result.get('route_on_backup_s')}s, failback {result.get('failback_s')}s"}
        print(head[args.drill_command])
        for check in result.get("checks", []):
            print(f"  {'PASS' if check['ok'] else 'FAIL'}  {check['name']}: {check['figure']}")
        if result.get("next"):
            print(f"next: {result['next']}")
        print("drill " + ("PASSED" if result.get("ok") else "FAILED"))
    report = getattr(args, "report", None)
    if report is not None:
        from lab.report import write_report

        figures = {k: v for k, v in result.items() if k not in ("checks", "switchover") and
                   isinstance(v, (int, float, str, bool, type(None), list, dict))}
        write_report(report, {"title": f"lifeline live {args.drill_command} drill", "subtitle": "on the real pair",
                              "drills": [{"name": args.drill_command, "title": f"live {args.drill_command} drill",
                                          "ok": bool(result.get("ok")), "checks": result.get("checks", []),
                                          "figures": figures}]})
        print(f"report: {report}", file=sys.stderr)
    return 0 if result.get("ok") else 1


def cmd_switchover(args: argparse.Namespace) -> int:
    from daemon.core.control_client import ControlError

    with _connect(args) as client:
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


def cmd_pause(args: argparse.Namespace) -> int:
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
    with _connect(args) as client:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
