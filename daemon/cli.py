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

This module is the registry: the host's own commands, and each capability's from its cli.py
(``daemon/uplinks/cli.py``, ``daemon/standby/cli.py``, ``daemon/venues/cli.py``,
``hardware/cli.py``, ``recovery/cli.py``: their parsers, and handlers given the host's
``connect`` and config loader). Imports are lazy so that client commands such as
`lifeline status` start fast: they do not load trio, psutil or ccxt.

Exit codes: 0 success / all healthy; 1 a check failed or something is unhealthy;
2 usage error or the daemon could not be reached; `lifeline run`: 78 (EX_CONFIG) for a
config or host that cannot work (one line per problem; systemd does not restart it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# lazy-imports: each command imports what it runs inside its handler, so that client commands
# such as `lifeline status` start without trio, psutil, ccxt or cryptography (bench/cli_startup.py);
# tests/unit/host/test_daemon_never_imports_lab.py accepts this file's function-local imports.

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
# by tests/unit/packaging/test_packaging.py.
LAZY_COMMAND_HELP = {
    "audit": "the hash-chained audit log of playbook runs: verify it, show it",
    "witness": "run the lease witness (the pair's quorum device)",
    # The uplinks' and the standby's (daemon/uplinks/cli.py, daemon/standby/cli.py): their
    # packages are not loaded by the other commands.
    "uplink": "show the uplinks, pin one, or return to automatic choice",
    "role": "this node's role, epoch and lease (or follow its changes)",
    "standby": "operator actions on the pair",
    "switchover": "planned handover: the primary hands the lease to its in-sync standby (no acknowledged record "
                  "lost); run on the primary",
    "pause": "maintenance mode: no automatic promotion in the pair until it expires or `lifeline resume`",
    "resume": "end the maintenance pause: automatic promotion again",
    "journal": "the execution journal: tail, verify, stats",
}


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser (``command`` None), or one whose slow-to-import parts are built
    only for ``command`` (what :func:`main` uses, so that start-up stays fast)."""

    def needs(name: str) -> bool:
        return command is None or command == name

    def lazily(names: tuple[str, ...], add: Callable[[], None]) -> None:
        """``add`` the full parsers of ``names`` when one of them runs (or for the whole
        parser), else each with its help line only."""
        if command is None or command in names:
            add()
        else:
            for name in names:
                sub.add_parser(name, help=LAZY_COMMAND_HELP[name])

    # Each capability's cli.py owns its subcommands' parsers and handlers; they are added here
    # in the order of `lifeline --help`.
    from daemon.venues.cli import add_venue_parsers
    from hardware.cli import HARDWARE_KINDS
    from hardware.cli import add_parsers as add_hardware_parsers
    from recovery.cli import add_parsers as add_recovery_parsers
    from recovery.cli import add_playbook_client_parsers

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

    lazily(("uplink",), lambda: _uplink_cli().add_parsers(sub, _add_client_options))
    lazily(("role",), lambda: _standby_cli().add_role_parser(sub, _add_client_options))
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
    lazily(("standby", "switchover", "pause", "resume", "journal"),
           lambda: _standby_cli().add_operator_parsers(sub, _add_client_options, DEFAULT_CONFIG))

    keys = sub.add_parser("keys", help="make keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="KIND", required=True)
    if needs("keys"):
        _standby_cli().add_key_parsers(keys_sub)  # keys replication, keys witness

    recovery_parsers = add_recovery_parsers(sub, keys_sub)  # keys new, keyring ..., playbook sign|verify
    add_playbook_client_parsers(recovery_parsers.playbook_sub, _add_client_options, _connect)  # playbook run|list

    sim = sub.add_parser("sim", help="run a device simulator on a new pty (commissioning, tests); prints its path; "
                                     "`sim venue --listen HOST:PORT` runs the venue emulator (Kraken, Coinbase)")
    sim.add_argument("device", choices=HARDWARE_KINDS + ("venue",))
    sim.add_argument("--listen", default="127.0.0.1:8080", help="venue emulator only: address to serve on")
    sim.add_argument("--data", type=Path, default=None, metavar="DIR",
                     help="venue emulator only: the folder with kraken/coinbase.response.json "
                          "(default: lab/data/ccxt_static)")
    sim.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    add_hardware_parsers(sub)
    add_venue_parsers(sub, _add_client_options)
    from daemon.guard.cli import add_kill_parsers, add_risk_parser  # argparse only: no trio, no cryptography

    add_kill_parsers(sub, _add_client_options)
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
        from daemon.witness_server import add_witness_parser  # here: it loads trio (~100 ms)

        add_witness_parser(sub)
    else:
        sub.add_parser("witness", help=LAZY_COMMAND_HELP["witness"])

    return parser


#: The commands the lab provides, with their help (kept equal to lab/cli.py's by
#: tests/unit/host/test_daemon_never_imports_lab.py).
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
        "uplink": _capability("daemon.uplinks.cli", "cmd_uplink", connect=_connect),
        "drill": cmd_drill,
        "journal": _capability("daemon.standby.cli", "cmd_journal", connect=_connect, load_config=_load_config),
        "keys": cmd_keys,
        "lab": _lab,
        "witness": _witness,
        "role": _capability("daemon.standby.cli", "cmd_role", connect=_connect),
        "preflight": cmd_preflight,
        "cluster": cmd_cluster,
        "reload": cmd_reload,
        "report": cmd_report,
        "standby": _capability("daemon.standby.cli", "cmd_standby", connect=_connect),
        "switchover": _capability("daemon.standby.cli", "cmd_switchover", connect=_connect),
        "pause": _capability("daemon.standby.cli", "cmd_pause", connect=_connect),
        "resume": _capability("daemon.standby.cli", "cmd_pause", connect=_connect),
        "keyring": _recovery,
        "playbook": _recovery,
        "audit": _audit,
        "sim": cmd_sim,
        "hardware": _capability("hardware.cli", "cmd_hardware"),
        "venues": _capability("daemon.venues.cli", "cmd_venues", connect=_connect),
        "reconcile": _capability("daemon.venues.cli", "cmd_reconcile", connect=_connect),
        "kill": _capability("daemon.guard.cli", "cmd_kill", connect=_connect),
        "unkill": _capability("daemon.guard.cli", "cmd_kill", connect=_connect),
        "risk": cmd_risk,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _simulator_module(kind: str) -> Any:
    # The one place the daemon's CLI reaches into the lab: `lifeline sim` runs the lab's
    # device simulators (loaded on use; production code never imports lab).
    return importlib.import_module(f"lab.sim.{kind}")


def _capability(module: str, name: str, **host: Any) -> Callable[[argparse.Namespace], int]:
    """The handler ``module.name`` of a capability's cli.py, loaded when its command runs,
    called with the args and the pieces of the host it takes (``connect``: the control
    socket; ``load_config``: the root config loader)."""

    def handler(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module), name)(args, **host)
        return result

    return handler


def _uplink_cli() -> Any:
    import daemon.uplinks.cli

    return daemon.uplinks.cli


def _standby_cli() -> Any:
    import daemon.standby.cli

    return daemon.standby.cli


def _load_config(path: Path | None) -> Any:
    """The root config of ``path`` (default /etc/lifeline/lifeline.toml); raises ConfigError."""
    from daemon.config import load_config

    return load_config(path or DEFAULT_CONFIG)


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


def _audit(args: argparse.Namespace) -> int:
    from recovery.audit import run_audit_command

    return run_audit_command(args)


def _recovery(args: argparse.Namespace) -> int:
    from recovery.cli import run

    return run(args)


def _witness(args: argparse.Namespace) -> int:
    from daemon.witness_server import run_witness_command

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
        if config.venues:
            from daemon.venues.config import fencing_lines

            print("venue fencing: the longest a deposed primary's orders can live at each venue:")
            for line in fencing_lines(config.venues, config.lease_bound()):
                print(f"  {line}")
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
    from daemon.status import format_status

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


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command in ("replication", "witness"):
        from daemon.standby.cli import cmd_keys as make_standby_key

        return make_standby_key(args)
    return _recovery(args)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
