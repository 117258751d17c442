"""`lifeline lab`: build the lab, run the drills, print a report an operator can read.

    lifeline lab [--seconds S] [--workdir DIR] [--json]   run the drills (the default)
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
from typing import Any


def add_lab_parser(sub: Any) -> None:
    lab = sub.add_parser("lab", help="run the lab drills on the embedded default and report")
    lab.add_argument("--seconds", type=float, default=3.0, help="how long the daemon runs under watch (default 3)")
    lab.add_argument("--workdir", type=Path, default=None,
                     help="keep the lab's files here (default: a temporary directory, removed afterwards)")
    lab.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=False)
    up = actions.add_parser("up", help="build the lab's world (namespaces, routers, venue echo) and leave it up")
    down = actions.add_parser("down", help="remove every namespace, link and process the lab made")
    status = actions.add_parser("status", help="which lab namespaces exist, the echo responder, the edge's route")
    for parser in (up, down, status):
        # SUPPRESS: an absent option must not overwrite `lifeline lab --workdir DIR ACTION`.
        parser.add_argument("--workdir", type=Path, default=argparse.SUPPRESS,
                            help="the lab's files: logs, pid files (default $TMPDIR/lifeline-lab)")
    up.add_argument("--loopback", action="store_true",
                    help="no namespaces: everything on lo, route backend none (the default without root)")


def run_lab_command(args: argparse.Namespace) -> int:
    action = getattr(args, "lab_command", None)
    if action is None:
        return run_drills(args)
    return {"up": lab_up, "down": lab_down, "status": lab_status}[action](args)


def lab_up(args: argparse.Namespace) -> int:
    from daemon.lab.netns import LabError
    from daemon.lab.world import DEFAULT_WORKDIR, make_world, netns_unavailable

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
    from daemon.lab.netns import LabError
    from daemon.lab.world import DEFAULT_WORKDIR, PREFIX, LabWorld, LoopbackWorld, netns_unavailable

    workdir = args.workdir or DEFAULT_WORKDIR
    removed: list[str] = []
    failed = False
    try:
        removed += LoopbackWorld(workdir).down()
        if netns_unavailable() is None:
            removed += LabWorld(workdir).down()
        elif _lab_namespaces():
            print(f"lab down: {PREFIX}* namespaces exist but cannot be removed: {netns_unavailable()}",
                  file=sys.stderr)
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
    from daemon.lab import netns
    from daemon.lab.world import PREFIX

    if shutil.which("ip") is None:
        return []
    try:
        return netns.lab_namespaces(PREFIX)
    except netns.LabError:
        return []


def lab_status(args: argparse.Namespace) -> int:
    """Exit 0 when a whole lab is up, 1 otherwise."""
    from daemon.lab.netns import LabError
    from daemon.lab.world import DEFAULT_WORKDIR, NAMESPACES, LabWorld, LoopbackWorld

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

    from daemon.cli import format_status
    from daemon.lab.lifecycle import run_lifecycle_drill

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifeline-lab-"))
    try:
        print(f"lab: starting a real `lifeline run` under {workdir} (notify socket, watchdog 1 s)",
              file=sys.stderr, flush=True)
        report = run_lifecycle_drill(workdir, seconds=args.seconds)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"ok": report.ok, "checks": [c.__dict__ for c in report.checks], **report.figures}))
        return 0 if report.ok else 1
    if report.status is not None:
        print(format_status(report.status))
        print()
    print("lifecycle drill")
    width = max(len(c.name) for c in report.checks) if report.checks else 0
    for check in report.checks:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name.ljust(width)}  {check.figure}")
    print(f"\nresult: {'PASS' if report.ok else 'FAIL'} ({sum(c.ok for c in report.checks)}/{len(report.checks)} checks)")
    if not report.ok and report.log_tail:
        print("\nlast lines of the daemon's log:\n" + report.log_tail, file=sys.stderr)
    return 0 if report.ok else 1
