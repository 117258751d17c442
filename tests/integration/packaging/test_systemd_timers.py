"""The daily-rhythm units (systemd/lifeline-{preflight,eod,verify}.{service,timer}):
`systemd-analyze verify` finds no syntax error, every OnCalendar= parses and names the
exchange's time zone, each timer has its service, and every ExecStart= is a real
`lifeline` command line (its arguments parse)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.cli import build_parser
from tests.integration.packaging.test_systemd_unit import _TOOL_ENV, SYSTEMD_DIR, parse_unit

TIMERS = ("lifeline-preflight", "lifeline-eod", "lifeline-verify")
ZONE = "America/New_York"


def tool() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not on PATH")
    return path


@pytest.mark.parametrize("name", [f"{t}.{kind}" for t in TIMERS for kind in ("service", "timer")])
def test_units_verify(name: str, tmp_path: Path) -> None:
    # The binary is not installed here: "not executable" is expected; syntax errors are not.
    proc = subprocess.run([tool(), "verify", "--man=no", str(SYSTEMD_DIR / name)], capture_output=True, text=True,
                          env=_TOOL_ENV, timeout=120)
    output = proc.stdout + proc.stderr
    bad = [line for line in output.splitlines()
           if re.search(r"Unknown (key|section|lvalue)|Failed to parse|Invalid|Missing '='|bad-setting", line)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("timer", TIMERS)
def test_calendar_in_the_exchange_time_zone(timer: str) -> None:
    sections = parse_unit((SYSTEMD_DIR / f"{timer}.timer").read_text())
    assert (SYSTEMD_DIR / f"{timer}.service").exists()
    assert sections["Install"]["WantedBy"] == ["timers.target"]
    specs = sections["Timer"]["OnCalendar"]
    assert len(specs) == 1 and specs[0].endswith(f" {ZONE}"), specs
    proc = subprocess.run([tool(), "calendar", specs[0]], capture_output=True, text=True, env=_TOOL_ENV, timeout=30)
    assert proc.returncode == 0 and "Next elapse:" in proc.stdout, proc.stdout + proc.stderr


def test_preflight_before_the_open_and_eod_after_the_close() -> None:
    def hhmm(timer: str) -> str:
        spec = parse_unit((SYSTEMD_DIR / f"{timer}.timer").read_text())["Timer"]["OnCalendar"][0]
        return re.search(r"(\d\d:\d\d)", spec).group(1)  # type: ignore[union-attr]

    assert hhmm("lifeline-preflight") < "09:30" < "16:00" < hhmm("lifeline-eod")


@pytest.mark.parametrize("timer", TIMERS)
def test_exec_start_lines_are_lifeline_commands(timer: str) -> None:
    service = parse_unit((SYSTEMD_DIR / f"{timer}.service").read_text())["Service"]
    assert service["Type"] == ["oneshot"] and service["User"] == ["lifeline"]
    parser = build_parser()
    for line in service["ExecStart"]:
        argv = shlex.split(line)
        assert argv[0] == "/opt/lifeline/bin/lifeline", line
        parser.parse_args(argv[1:])  # raises SystemExit on an unknown option
