#!/usr/bin/env python3
"""Benchmark: start-up time and memory of the `lifeline` command, against `python -c pass`.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--lifeline PATH]

No root needed. Starts one `lifeline run` (the example config with its paths moved to a
temp dir, as tests/integration/host/test_daemon_process.py does), then runs each command N
times as a user would, alternating between them so that all see the same machine state:

* ``status``: ``lifeline status --config CFG`` (reads the config for the socket path,
  asks the running daemon, prints the table); CFG is the daemon's config plus the
  example's [venues], as on a production host;
* ``role``: ``lifeline role --config CFG``;
* ``help``: ``lifeline --help``;
* ``version``: ``lifeline --version``;
* ``baseline``: ``python -c pass`` with the same interpreter (the floor of any Python CLI).

Per command: the median wall time (fork to exit) and the median peak RSS, as
``/usr/bin/time`` reports it ("Maximum resident set size" of ``time -v``).
``ratio`` = median time / baseline median time. Targets: status < 150 ms and < 40 MB,
--help < 200 ms. ``--lifeline`` measures another install's command (e.g. an older
checkout's .venv/bin/lifeline) against the same daemon. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import dump_toml  # noqa: E402
from lab.procs import DaemonProcess  # noqa: E402

TIME = "/usr/bin/time"  # Debian: apt-get install time
TARGETS = {"status": (150.0, 40.0), "help": (200.0, None)}


def example_config(tmp: Path) -> tuple[Path, Path]:
    """The shipped example with its host-specific sections left out and its paths under
    tmp, for the daemon; and the same with the example's [venues] kept, for the commands
    (they read it for the socket path, as on a production host with venues)."""
    data = tomllib.loads((ROOT / "examples" / "lifeline.toml").read_text())
    venues = data.pop("venues")
    for section in ("uplinks", "standby", "recovery", "hardware"):
        data.pop(section, None)
    data["node"]["state_dir"] = str(tmp / "state")
    data["node"]["runtime_dir"] = str(tmp / "run")
    data["control"]["socket"] = str(tmp / "run" / "control.sock")
    data["control"]["group"] = ""
    data["metrics"]["listen"] = "127.0.0.1:0"
    path = tmp / "lifeline.toml"
    path.write_text(dump_toml(data))
    for venue in venues.values():
        venue.pop("uplinks", None)
    client = tmp / "client.toml"
    client.write_text(dump_toml({**data, "venues": venues}))
    return path, client


def run_once(argv: list[str]) -> tuple[float, float, int]:
    """(wall ms, peak RSS MB, exit code) of one child process, run under /usr/bin/time
    (a small C program: the peak RSS it reports is the command's own, not this script's)."""
    began = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "%M", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = (time.perf_counter() - began) * 1000
    return elapsed, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--lifeline", type=Path, default=None,
                        help="the lifeline command to measure (default: the one beside this Python)")
    args = parser.parse_args()
    if not os.access(TIME, os.X_OK):
        print(f"{TIME} is missing: apt-get install time", file=sys.stderr)
        return 2
    lifeline = str(args.lifeline or Path(sys.executable).parent / "lifeline")
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-") as tmp_name:
        tmp = Path(tmp_name)
        config, client_config = example_config(tmp)
        daemon = DaemonProcess(config=config, workdir=tmp / "daemon", watchdog_usec=None)
        daemon.start()
        try:
            if not daemon.wait_ready(60):
                print("the daemon did not start:\n" + daemon.log_text(), file=sys.stderr)
                return 1
            commands = {
                "status": [lifeline, "status", "--config", str(client_config)],
                "role": [lifeline, "role", "--config", str(client_config)],
                "help": [lifeline, "--help"],
                "version": [lifeline, "--version"],
                "baseline": [sys.executable, "-c", "pass"],
            }
            codes = {name: run_once(argv)[2] for name, argv in commands.items()}  # warm the page cache
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, argv in commands.items():
                    ms, mb, _ = run_once(argv)
                    samples[name].append((ms, mb))
        finally:
            daemon.stop()
            daemon.close()

    base_ms = statistics.median(ms for ms, _ in samples["baseline"])
    figures: dict[str, object] = {
        "benchmark": "cli_startup", "lifeline": lifeline, "runs": args.runs,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ok = True
    print(f"lifeline start-up, median of {args.runs} runs each ({lifeline}):")
    for name in commands:
        ms = statistics.median(m for m, _ in samples[name])
        mb = statistics.median(r for _, r in samples[name])
        figures[f"{name}_ms"] = round(ms, 1)
        figures[f"{name}_rss_mb"] = round(mb, 1)
        if name != "baseline":
            figures[f"{name}_ratio"] = round(ms / base_ms, 2)
        verdict = ""
        if name in TARGETS:
            max_ms, max_mb = TARGETS[name]
            met = ms < max_ms and (max_mb is None or mb < max_mb)
            ok &= met
            verdict = f"  target < {max_ms:.0f} ms" + (f", < {max_mb:.0f} MB" if max_mb else "") + \
                      f": {'ok' if met else 'MISSED'}"
        print(f"  {name:<9} {ms:7.1f} ms  {mb:6.1f} MB  x{ms / base_ms:5.2f} of python -c pass"
              f"  (exit {codes[name]}){verdict}")
    figures["targets_met"] = ok
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
