#!/usr/bin/env python3
"""Benchmark: an idle `lifeline run`'s memory and CPU, with and without venues, against an
idle bare trio process.

    .venv/bin/python bench/idle.py [--settle 10] [--window 30]

No root needed. Three processes, started one after the other on loopback:

* ``core``: the shipped example config (examples/lifeline.toml) as a primary without a
  peer: [standby] with a fixed role and a fresh key, [recovery] with an empty playbook
  directory, metrics on; without [uplinks] and [hardware] (they name this edge host's
  interfaces and serial ports) and without [venues];
* ``venues``: the same plus the example's [venues.kraken] (fetch_time probes every
  second, no credentials) pointed at the lab's venue emulator on 127.0.0.1;
* ``baseline``: ``python -c`` running an idle ``trio.run(trio.sleep_forever)`` (the floor
  of any trio daemon in this interpreter).

Each runs ``--settle`` seconds, then is measured over ``--window`` seconds: resident
memory (VmRSS, and its peak VmHWM) from /proc/PID/status, CPU = (utime + stime) over the
window / wall time, as a percentage of one core, from /proc/PID/stat. Also reported: the
third-party libraries the daemon mapped (shared objects under site-packages). Targets:
RSS <= 60 MB without venues, <= 100 MB with; CPU <= 2 % of a core. ``rss_ratio`` = RSS /
baseline RSS. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import dump_toml  # noqa: E402
from lab.procs import DaemonProcess  # noqa: E402
from daemon.standby.keys import generate_replication_key  # noqa: E402

TARGETS = {"core": (60.0, 2.0), "venues": (100.0, 2.0)}
TICKS = os.sysconf("SC_CLK_TCK")


def config(tmp: Path, venues_url: str | None) -> Path:
    data: dict[str, Any] = tomllib.loads((ROOT / "examples" / "lifeline.toml").read_text())
    data.pop("uplinks")
    data.pop("hardware")
    venues = data.pop("venues")
    data["node"].update(state_dir=str(tmp / "state"), runtime_dir=str(tmp / "run"))
    data["control"].update(socket=str(tmp / "run" / "control.sock"), group="")
    data["metrics"]["listen"] = "127.0.0.1:0"
    key = tmp / "replication.key"
    generate_replication_key(key)
    standby = data["standby"]
    standby.pop("lease")
    standby.pop("peer")
    standby.update(key_file=str(key), role="primary", listen="127.0.0.1:0")
    (tmp / "playbooks").mkdir()
    data["recovery"].update(playbooks=str(tmp / "playbooks"), keyring=str(tmp / "keyring.toml"))
    if venues_url is not None:
        kraken = venues["kraken"]
        kraken.pop("credentials")
        kraken.pop("uplinks")
        kraken.update(api_url=venues_url)
        data["venues"] = {"kraken": kraken}
    path = tmp / "lifeline.toml"
    path.write_text(dump_toml(data))
    return path


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def memory(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted(set(re.findall(r"site-packages/([A-Za-z0-9_]+)", maps)))


def measure(pid: int, settle: float, window: float) -> dict[str, Any]:
    time.sleep(settle)
    began, ticks = time.monotonic(), cpu_ticks(pid)
    time.sleep(window)
    cpu = (cpu_ticks(pid) - ticks) / TICKS / (time.monotonic() - began) * 100
    rss, peak = memory(pid)
    return {"rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1), "cpu_percent": round(cpu, 2),
            "libraries": libraries(pid)}


def run_daemon(path: Path, workdir: Path, settle: float, window: float) -> dict[str, Any]:
    daemon = DaemonProcess(config=path, workdir=workdir, watchdog_usec=10_000_000)  # as the unit
    daemon.start()
    try:
        if not daemon.wait_ready(60):
            raise SystemExit("the daemon did not start:\n" + daemon.log_text())
        assert daemon.proc is not None
        return measure(daemon.proc.pid, settle, window)
    finally:
        daemon.stop()
        daemon.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before measuring (default 10)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured (default 30)")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lifeline-idle-") as name:
        tmp = Path(name)
        (tmp / "core").mkdir()
        results["core"] = run_daemon(config(tmp / "core", None), tmp / "core" / "proc", args.settle, args.window)
        emulator = subprocess.Popen([sys.executable, "-m", "lab.venue_emulator", "--listen", "127.0.0.1:0"],
                                    cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            line = emulator.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("venue-emulator ready "):
                raise SystemExit(f"the venue emulator did not start: {line!r}")
            (tmp / "venues").mkdir()
            results["venues"] = run_daemon(config(tmp / "venues", line.split()[-1]), tmp / "venues" / "proc",
                                           args.settle, args.window)
        finally:
            emulator.terminate()
            emulator.wait(10)
        baseline = subprocess.Popen([sys.executable, "-c", "import trio; trio.run(trio.sleep_forever)"])
        try:
            results["baseline"] = measure(baseline.pid, min(args.settle, 2.0), args.window)
        finally:
            baseline.kill()
            baseline.wait()

    figures: dict[str, Any] = {
        "benchmark": "idle", "settle_s": args.settle, "window_s": args.window,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ok = True
    base = results["baseline"]["rss_mb"]
    print(f"idle lifeline run, measured over {args.window:.0f} s after {args.settle:.0f} s:")
    for name, r in results.items():
        verdict = ""
        if name in TARGETS:
            max_mb, max_cpu = TARGETS[name]
            met = r["rss_mb"] <= max_mb and r["cpu_percent"] <= max_cpu
            ok &= met
            verdict = f"  target <= {max_mb:.0f} MB, <= {max_cpu:.0f} %: {'ok' if met else 'MISSED'}"
        print(f"  {name:<9} RSS {r['rss_mb']:6.1f} MB (peak {r['peak_rss_mb']:6.1f}, x{r['rss_mb'] / base:4.2f} of "
              f"bare trio)  CPU {r['cpu_percent']:5.2f} % of a core{verdict}")
        if name != "baseline":
            print(f"            libraries mapped: {', '.join(r['libraries']) or '-'}")
        for key in ("rss_mb", "peak_rss_mb", "cpu_percent"):
            figures[f"{name}_{key}"] = r[key]
        if name != "baseline":
            figures[f"{name}_rss_ratio"] = round(r["rss_mb"] / base, 2)
            figures[f"{name}_libraries"] = r["libraries"]
    figures["targets_met"] = ok
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
