"""`lifeline lab`: build the lab, run the drills, print a report an operator can read.

    lifeline lab [--seconds S] [--workdir DIR] [--json]   run the drills and the nemesis (the default)
    lifeline lab up [--workdir DIR] [--loopback]          build the lab's world and leave it up
    lifeline lab down [--workdir DIR]                     remove everything the lab made
    lifeline lab status [--workdir DIR]                   what of the lab exists right now
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from daemon.config import Duration
from daemon.core.control_client import ControlClient, ControlError
from daemon.status import format_status
from lab import netns
from lab.drills import (
    DrillSettings,
    add_report_argument,
    format_report,
    report_json,
    run_uplink_drill,
    write_drill_report,
)
from lab.etcd import EtcdCluster
from lab.ha_drills import (
    DRILLS,
    HaSettings,
    add_ha_drill_parsers,
    format_report as format_promotion,
    run_drill,
    run_ha_drill,
)
from lab.hardware_drills import add_hardware_drill_parsers, run_hardware_drill
from lab.lifecycle import run_lifecycle_drill
from lab.nemesis import (
    NemesisSettings,
    add_nemesis_parser,
    format_report as format_nemesis,
    run_nemesis,
    run_nemesis_drill,
)
from lab.netns import LabError
from lab.pair import PREFIX as PAIR_PREFIX, PairLab
from lab.replay_engine import control_socket_writer, feed_paths, merged_lines, replay
from lab.venue_drills import (
    VenueDrillSettings,
    add_venue_drill_parser,
    format_report as format_venue,
    run_drill as run_venue_repetitions,
    run_venue_drill,
)
from lab.world import DEFAULT_WORKDIR, LabWorld, LoopbackWorld, NAMESPACES, PREFIX, make_world, netns_unavailable

#: The lab's commands and their help (daemon/cli.py lists them without importing the lab).
COMMAND_HELP = {
    "drill": "scripted failures in the lab, timed (needs root)",
    "lab": "run the lab drills on the embedded default and report",
}


def add_arguments(command: str, parser: argparse.ArgumentParser,
                  live_options: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Complete the parser of ``lifeline COMMAND`` (daemon/cli.py calls it when the command runs,
    with its ``--live`` options: a live drill runs in the daemon, not in the lab)."""
    if command == "drill":
        add_drill_arguments(parser, live_options)
    else:
        add_lab_arguments(parser)


# --quick: every drill still runs and is judged, just fewer times and a shorter soak.
QUICK = {"repeat": 2, "soak": "1m", "compress": 10.0, "promotion_repeat": 1, "venue_repeat": 1,
         "nemesis_duration": "1m"}


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float)
                     else f"--{key.replace('_', '-')} {value}" for key, value in values.items())


def add_lab_parser(sub: Any) -> None:
    add_lab_arguments(sub.add_parser("lab", help=COMMAND_HELP["lab"]))


def add_lab_arguments(lab: argparse.ArgumentParser) -> None:
    lab.add_argument("--seconds", type=float, default=3.0, help="how long the daemon runs under watch (default 3)")
    lab.add_argument("--workdir", type=Path, default=None,
                     help="keep the lab's files here (default: a temporary directory, removed afterwards)")
    lab.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    lab.add_argument("--repeat", type=int, default=5, help="fibre cuts in the uplink drill (default 5; 0 skips it)")
    lab.add_argument("--soak", default="10m", help='simulated length of the uplink loss soak (default "10m")')
    lab.add_argument("--compress", type=float, default=10.0, help="soak speed-up (default 10: 10m takes 1 minute)")
    lab.add_argument("--promotion-repeat", type=int, default=3,
                     help="repetitions of each promotion drill: standby, partition, region (default 3; 0 skips them)")
    lab.add_argument("--venue-repeat", type=int, default=3,
                     help="repetitions of the venue drill: silent through the fibre, then dead (default 3; 0 skips it)")
    lab.add_argument("--nemesis-duration", default="2m",
                     help='faults of the nemesis after the venue drill (default "2m"; "0" skips it)')
    lab.add_argument("--nemesis-seed", type=int, default=None, help="seed of the nemesis's schedule (printed)")

    add_report_argument(lab)
    lab.add_argument("--quick", action="store_true",
                     help=f"every drill, fewer repetitions (CI): {_describe(QUICK)}, unless given")
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=False)
    up = actions.add_parser("up", help="build the lab's world (namespaces, routers, venue echo) and leave it up")
    down = actions.add_parser("down", help="remove every namespace, link and process the lab made")
    status = actions.add_parser("status", help="which lab namespaces exist, the echo responder, the edge's route")
    for parser in (up, down, status):
        # SUPPRESS: an absent option must not overwrite `lifeline lab --workdir DIR ACTION`.
        parser.add_argument("--workdir", type=Path, default=argparse.SUPPRESS,
                            help="the lab's files: logs, pid files (default $TMPDIR/lifeline-lab)")
    replay = actions.add_parser("replay", help="append the recorded Binance feeds to a daemon's journal "
                                               "(the lab's stand-in for a trading engine)")
    replay.add_argument("--socket", type=Path, required=True, help="the primary's control socket")
    replay.add_argument("--pace", type=float, default=None,
                        help="1 = the recorded pace, N = N times faster (default: as fast as acknowledged)")
    replay.add_argument("--limit", type=int, default=None, help="stop after this many lines")
    replay.add_argument("--batch", type=int, default=256, help="lines per journal.append request (default 256)")
    up.add_argument("--loopback", action="store_true",
                    help="no namespaces: everything on lo, route backend none (the default without root)")


def apply_quick(args: argparse.Namespace) -> None:
    """--quick: the QUICK values for every option left at its default."""
    build = argparse.ArgumentParser()
    add_lab_parser(build.add_subparsers())  # the defaults, to tell them from given values
    defaults = build.parse_args(["lab"])
    for key, value in QUICK.items():
        if getattr(args, key) == getattr(defaults, key):
            setattr(args, key, value)


def run_lab_command(args: argparse.Namespace) -> int:
    action = getattr(args, "lab_command", None)
    if action is None:
        if args.quick:
            apply_quick(args)
        return run_drills(args)
    return {"up": lab_up, "down": lab_down, "status": lab_status, "replay": lab_replay}[action](args)


def lab_replay(args: argparse.Namespace) -> int:
    def progress(stats: Any) -> None:
        if stats.batches % 200 == 0:
            print(f"  {stats.sent} lines, {stats.ok} ok, {stats.in_doubt} in doubt", file=sys.stderr, flush=True)

    try:
        paths = feed_paths()
        with ControlClient(args.socket, timeout=60) as client:
            stats = replay(merged_lines(paths), control_socket_writer(client), pace=args.pace, batch=args.batch,
                           limit=args.limit, on_batch=progress)
    except (FileNotFoundError, ConnectionError, ControlError) as exc:
        print(f"lab replay: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {stats.sent} lines ({stats.bytes / 1e6:.1f} MB) from {len(paths)} recorded feeds in "
          f"{stats.seconds:.1f} s: {stats.ok} ok, {stats.in_doubt} in doubt, {stats.errors} errors, "
          f"{stats.records_per_s:,.0f} records/s")
    return 0 if stats.in_doubt == 0 and stats.errors == 0 else 1


def lab_up(args: argparse.Namespace) -> int:
    workdir = args.workdir or DEFAULT_WORKDIR
    reason = netns_unavailable()
    if reason and not args.loopback:
        print(f"lab: {reason}: running in loopback mode (route backend none; cut and restore only)",
              file=sys.stderr)
    world = make_world(workdir, loopback=args.loopback)
    try:
        report = world.up(workdir)
    except LabError as exc:
        print(f"lab up: FAILED: {exc}", file=sys.stderr)
        return 1
    print("lab up:")
    for line in report.lines():
        print(f"  {line}")
    print(f"  files: {workdir}; remove it all with `lifeline lab down`")
    return 0


def lab_down(args: argparse.Namespace) -> int:
    workdir = args.workdir or DEFAULT_WORKDIR
    removed: list[str] = []
    failed = False
    try:
        removed += LoopbackWorld(workdir).down()
        if netns_unavailable() is None:
            removed += LabWorld(workdir).down()
            # The promotion drills' pair lab: its own llp-* namespaces.
            removed += PairLab().down()
        elif _lab_namespaces():
            print(f"lab down: {PREFIX}* / {PAIR_PREFIX}* namespaces exist but cannot be removed: "
                  f"{netns_unavailable()}", file=sys.stderr)
            failed = True
    except LabError as exc:
        print(f"lab down: FAILED: {exc}", file=sys.stderr)
        return 1
    if removed:
        print("lab down: removed")
        for item in removed:
            print(f"  {item}")
    elif not failed:
        print("lab down: nothing to remove")
    return 1 if failed else 0


def _lab_namespaces() -> list[str]:
    if shutil.which("ip") is None:
        return []
    try:
        return netns.lab_namespaces(PREFIX) + netns.lab_namespaces(PAIR_PREFIX)
    except netns.LabError:
        return []


def lab_status(args: argparse.Namespace) -> int:
    """Exit 0 when a whole lab is up, 1 otherwise."""
    workdir = args.workdir or DEFAULT_WORKDIR
    loopback = LoopbackWorld(workdir).status()
    try:
        world = LabWorld(workdir).status() if shutil.which("ip") else None
    except LabError as exc:
        print(f"lab status: {exc}", file=sys.stderr)
        world = None
    complete = False
    if world is not None and (world.exists or not loopback.exists):
        for line in world.lines():
            print(line)
        complete = set(NAMESPACES) <= set(world.namespaces) and bool(world.echo_pids)
    if loopback.exists:
        print(f"loopback lab ({workdir}): echo responders "
              + (", ".join(map(str, loopback.echo_pids)) or "not running"))
        complete = complete or bool(loopback.echo_pids)
    return 0 if complete else 1


def run_drills(args: argparse.Namespace) -> int:
    """The main job: the lifecycle drill, then the uplink drill, the promotion drills and
    the venue drill (in namespaces, when root)."""
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifeline-lab-"))
    uplink_report = None
    promotion_reports: list[Any] = []
    promotion_skipped: dict[str, str] = {}
    venue_report = None
    nemesis_report = None
    skipped = None
    try:
        say(f"lab: lifecycle drill: a real `lifeline run` under {workdir} (notify socket, watchdog 1 s)")
        report = run_lifecycle_drill(workdir / "lifecycle", seconds=args.seconds)
        skipped = netns_unavailable()
        if skipped is None and args.repeat > 0:
            soak = 0.0 if args.soak in ("0", "0s") else float(Duration.parse(args.soak))
            say(f"lab: uplink drill: {args.repeat} fibre cuts in network namespaces, then a "
                f"{args.soak} loss soak run {args.compress:g}x faster")
            uplink_report = run_uplink_drill(
                workdir / "uplink", DrillSettings(repeat=args.repeat, soak=soak, compress=args.compress),
                progress=say)
        elif skipped is not None:
            say(f"lab: uplink drill skipped: {skipped}; run as root for the namespace lab")
        if skipped is None and args.promotion_repeat > 0:
            promotion_reports, promotion_skipped = _promotion_drills(workdir, args.promotion_repeat, say)
        if skipped is None and args.venue_repeat > 0:
            say(f"lab: venue drill, {args.venue_repeat} repetition(s): the venue silent through the fibre only, "
                "then dead")
            venue_report = run_venue_repetitions(workdir / "venue", VenueDrillSettings(repeat=args.venue_repeat),
                                                 progress=say)
            if args.workdir is None:
                venue_report.workdir = ""  # removed below
        nemesis_report = _nemesis(args, workdir, skipped, say)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    ok = (report.ok and (uplink_report is None or uplink_report.ok) and all(r.ok for r in promotion_reports)
          and (venue_report is None or venue_report.ok) and (nemesis_report is None or nemesis_report.ok))

    ok = write_drill_report(args.report, [report, uplink_report, *promotion_reports, venue_report,
                                           nemesis_report]) and ok
    if args.json:
        out: dict[str, Any] = {"ok": ok, "lifecycle": {"ok": report.ok, "checks": [c.__dict__ for c in report.checks],
                                                      **report.figures}}
        if uplink_report is not None:
            out["uplink"] = {"ok": uplink_report.ok, **uplink_report.figures()}
        elif skipped:
            out["uplink"] = {"skipped": skipped}
        for promotion in promotion_reports:
            out[promotion.drill] = {"ok": promotion.ok, **promotion.figures()}
        for name, why in promotion_skipped.items():
            out[name] = {"skipped": why}
        if venue_report is not None:
            out["venue"] = {"ok": venue_report.ok, **venue_report.figures()}
        else:
            out["venue"] = {"skipped": skipped or "--venue-repeat 0"}
        out["nemesis"] = (nemesis_report.figures() if nemesis_report is not None
                          else {"skipped": skipped or "--nemesis-duration 0"})
        print(json.dumps(out))
        return 0 if ok else 1
    if report.status is not None:
        print(format_status(report.status))
        print()
    print("lifecycle drill")
    width = max(len(c.name) for c in report.checks) if report.checks else 0
    for check in report.checks:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name.ljust(width)}  {check.figure}")
    print(f"result: {'PASS' if report.ok else 'FAIL'} ({sum(c.ok for c in report.checks)}/{len(report.checks)} checks)")
    if not report.ok and report.log_tail:
        print("\nlast lines of the daemon's log:\n" + report.log_tail, file=sys.stderr)
    print()
    if uplink_report is not None:
        print(format_report(uplink_report))
    else:
        print(f"uplink drill: SKIPPED ({skipped or 'repeat 0'})")

    for promotion in promotion_reports:
        print()
        print(format_promotion(promotion))
    for name, why in promotion_skipped.items():
        print(f"\n{name} drill: SKIPPED ({why})")
    print()
    if venue_report is not None:
        print(format_venue(venue_report))
    else:
        print(f"venue drill: SKIPPED ({skipped or 'venue-repeat 0'})")
    print()
    if nemesis_report is not None:
        print(format_nemesis(nemesis_report))
    else:
        print(f"nemesis: SKIPPED ({skipped or 'nemesis-duration 0'})")
    print(f"\nlab: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _nemesis(args: argparse.Namespace, workdir: Path, skipped: str | None, say: Any) -> Any:
    """The nemesis (random faults against the pair, the history checked), or None."""
    duration = 0.0 if args.nemesis_duration in ("0", "0s") else float(Duration.parse(args.nemesis_duration))
    if skipped is not None or duration <= 0:
        return None
    say(f"lab: nemesis, {args.nemesis_duration} of random faults against the pair while an engine writes")
    report = run_nemesis(workdir / "nemesis", NemesisSettings(duration=duration, seed=args.nemesis_seed),
                         progress=say, history_path=workdir / "nemesis" / "history.jsonl")
    if args.workdir is None:
        report.workdir = report.history_path = ""  # removed with the workdir
    return report


def _promotion_drills(workdir: Path, repeat: int, say: Any) -> tuple[list[Any], dict[str, str]]:
    """The standby, partition and region drills (region needs etcd), ``repeat`` each."""
    reports: list[Any] = []
    skipped: dict[str, str] = {}
    for kind in DRILLS:
        if kind == "region" and not EtcdCluster.available():
            skipped[kind] = "etcd is not installed (apt-get install etcd-server)"
            continue
        say(f"lab: {kind} promotion drill, {repeat} repetition(s)")
        reports.append(run_drill(kind, workdir / kind, HaSettings(repeat=repeat), progress=say))
    return reports, skipped


def add_drill_arguments(drill: argparse.ArgumentParser,
                        live_options: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    drill_sub = drill.add_subparsers(dest="drill_command", metavar="DRILL", required=True)
    uplink_drill = drill_sub.add_parser("uplink", help="cut the fibre, time detection, failover and failback; "
                                                       "then a loss soak that must not flap")
    uplink_drill.add_argument("--repeat", type=int, default=5, help="cut/restore repetitions (default 5)")
    uplink_drill.add_argument("--soak", default="10m",
                              help='simulated length of the 5 %% loss soak ("10m"; "0" skips it)')
    uplink_drill.add_argument("--compress", type=float, default=10.0,
                              help="run the soak this many times faster than real time (default 10)")
    uplink_drill.add_argument("--hold-down", default="3s",
                              help='hold-down before failback in the drill (default "3s"; the daemon\'s is 30s)')
    uplink_drill.add_argument("--workdir", type=Path, default=None, help="keep the drill's files here")
    uplink_drill.add_argument("--json", action="store_true", help="print the figures as one JSON object")

    add_report_argument(uplink_drill)
    if live_options is not None:
        live_options(uplink_drill)
        uplink_drill.add_argument("--seconds", type=float, default=10.0,
                                  help="--live: how long the fibre stays cut (default 10; [drills] max_duration caps "
                                       "it)")
        live_switchover = drill_sub.add_parser("switchover", help="--live only: switchover to the in-sync standby on "
                                                                  "the real pair, timed, records checked identical")
        live_options(live_switchover)
        live_switchover.add_argument("--json", action="store_true", help="print the figures as one JSON object")
        add_report_argument(live_switchover)

    add_ha_drill_parsers(drill_sub)

    add_hardware_drill_parsers(drill_sub)

    add_venue_drill_parser(drill_sub)

    add_nemesis_parser(drill_sub)


def run_drill_command(args: argparse.Namespace) -> int:
    """Run ``lifeline drill DRILL``."""
    import os
    import shutil
    import tempfile

    if args.drill_command == "venue":
        return run_venue_drill(args)
    if args.drill_command == "nemesis":
        return run_nemesis_drill(args)
    if args.drill_command in ("power", "enclosure"):
        return run_hardware_drill(args)
    if args.drill_command != "uplink":
        return run_ha_drill(args)
    if os.geteuid() != 0:
        print("lifeline drill: needs root (it builds network namespaces); run it with sudo", file=sys.stderr)
        return 2
    try:
        soak = 0.0 if args.soak in ("0", "0s") else float(Duration.parse(args.soak))
        Duration.parse(args.hold_down)
    except ValueError as exc:
        print(f'lifeline drill: expected a duration such as "10m" or "3s", found {exc}', file=sys.stderr)
        return 2
    settings = DrillSettings(repeat=args.repeat, soak=soak, compress=args.compress, hold_down=args.hold_down)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifeline-drill-"))
    progress = (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        report = run_uplink_drill(workdir, settings, progress=progress)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report_json(report) if args.json else format_report(report))
    written = write_drill_report(args.report, [report])
    return 0 if report.ok and written else 1
