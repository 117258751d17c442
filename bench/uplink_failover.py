#!/usr/bin/env python3
"""Benchmark: fibre → Starlink failover time in the lab, lifeline's defaults against
OpenWrt mwan3's shipped defaults expressed in lifeline's config, measured in the same run.

    sudo .venv/bin/python bench/uplink_failover.py [--repeat 20] [--baseline-repeat 20]

mwan3's defaults (openwrt/packages net/mwan3/files/etc/config/mwan3): a probe every 10 s
with a 4 s timeout, DOWN after 5 failed rounds, UP after 5 good ones. Both runs use the
same lab, the same cut (an upstream drop in the terrestrial router) and the same clock.
Figures are nearest-rank percentiles of the time from the cut until the kernel's default
route points at the satellite router. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.drills import DrillSettings, percentile, run_uplink_drill  # noqa: E402

MWAN3 = {"interval": "10s", "timeout": "4s", "down_after": 5, "up_after": 5}


def summary(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_p50_ms": round(percentile(values, 50), 1), f"{name}_p95_ms": round(percentile(values, 95), 1),
            f"{name}_max_ms": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--baseline-repeat", type=int, default=20,
                        help="mwan3-default drills (each takes about 2 minutes)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-") as tmp:
        log(f"lifeline defaults: {args.repeat} drills")
        ours = run_uplink_drill(Path(tmp) / "ours", DrillSettings(repeat=args.repeat, soak=0), progress=log)
        log(f"mwan3 defaults {MWAN3}: {args.baseline_repeat} drills")
        theirs = run_uplink_drill(Path(tmp) / "mwan3", DrillSettings(repeat=args.baseline_repeat, soak=0,
                                                                      uplink_overrides=MWAN3, timeout=120),
                                  progress=log)
    ours_ms, theirs_ms = ours.series("failover_ms"), theirs.series("failover_ms")
    if not ours_ms or not theirs_ms:
        print(json.dumps({"error": "a run measured no failover", "ours": ours.errors, "mwan3": theirs.errors}))
        return 1
    figures = {**summary("failover", ours_ms), **{f"mwan3_{k}": v for k, v in summary("failover", theirs_ms).items()},
               "detection_p50_ms": round(percentile(ours.series("detection_ms"), 50), 1),
               "venue_p50_ms": round(percentile(ours.series("venue_ms"), 50), 1),
               "repeat": len(ours_ms), "baseline_repeat": len(theirs_ms),
               "ratio_p50": round(percentile(theirs_ms, 50) / percentile(ours_ms, 50), 1),
               "ratio_p95": round(percentile(theirs_ms, 95) / percentile(ours_ms, 95), 1),
               "route_errors": ours.route_errors + theirs.route_errors}
    print(f"failover (cut -> route on starlink): {len(ours_ms)} drills with lifeline defaults, "
          f"{len(theirs_ms)} with mwan3 defaults")
    print(f"  lifeline defaults: p50 {figures['failover_p50_ms']:.0f} ms, p95 {figures['failover_p95_ms']:.0f} ms, "
          f"max {figures['failover_max_ms']:.0f} ms")
    print(f"  mwan3 defaults:    p50 {figures['mwan3_failover_p50_ms']:.0f} ms, "
          f"p95 {figures['mwan3_failover_p95_ms']:.0f} ms, max {figures['mwan3_failover_max_ms']:.0f} ms")
    print(f"  mwan3 / lifeline:  {figures['ratio_p50']}x at p50, {figures['ratio_p95']}x at p95")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
