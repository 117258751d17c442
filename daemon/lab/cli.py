"""`lifeline lab`: build the lab, run the drills, print a report an operator can read."""

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


def run_lab_command(args: argparse.Namespace) -> int:
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
