#!/usr/bin/env python3
"""Benchmark: promotion time after kill -9 of the primary, lifeline's default lease
timings against Patroni's defaults expressed in lifeline's config, measured in the same run.

    sudo .venv/bin/python bench/promotion.py [--repeat 20] [--baseline-repeat 3] [--seed S]

Both runs are the ``standby`` drill (:mod:`lab.ha_drills`) in the pair lab: two
real ``lifeline run`` processes in their own network namespaces, the witness in a third,
a writer appending the recorded Binance feed through the primary's control socket in
``mode = "sync"``; kill -9 of the primary at a random point; promotion = from the kill
until the writer's first append answered ``ok`` by the other node. Each repetition
starts from a fresh pair (new key, empty journals, a fresh witness), then restarts the
killed node and checks it comes back as standby and catches up.

Patroni's defaults (docs/dynamic_configuration.rst: ``ttl`` 30, ``loop_wait`` 10,
``retry_timeout`` 10) in ``[standby.lease]``: ``ttl = "30s"``, ``renew_interval =
"10s"`` (loop_wait: the leader's update period), ``retry_timeout = "10s"``. Patroni
has no fencing margin of its own (a replica may take the key once it expired), and its
watchdog ``safety_margin`` defaults to 5 s; lifeline's config checks need
``safety_margin < ttl - renew_interval`` (20 s) and ``> 2 * max_clock_rate_error * ttl``
(0.6 s), so the baseline uses ``safety_margin = "5s"`` and lifeline's own
``fencing_margin = "100ms"``. Everything else (replication timers, the writer, the lab)
is the same in both runs. Those are slow repetitions (the lease outlives a dead primary
by up to 30 s), so the baseline runs fewer of them (``--baseline-repeat``, default 3).

Figures are nearest-rank percentiles; records lost and overlap are totals / maxima over
both runs' repetitions. Human lines go to stdout, progress to stderr; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.ha_drills import HaReport, HaSettings, percentile, run_drill

PATRONI = {"ttl": "30s", "renew_interval": "10s", "retry_timeout": "10s", "safety_margin": "5s",
           "fencing_margin": "100ms"}
TARGET_P95_MS = 2000.0


def summary(prefix: str, report: HaReport) -> dict[str, Any]:
    values = report.series("promotion_ms")
    overlaps = [r.overlap_ms for r in report.repetitions if r.overlap_ms is not None]
    out: dict[str, Any] = {f"{prefix}repeat": len(report.repetitions), f"{prefix}measured": len(values)}
    if values:
        out.update({f"{prefix}promotion_p50_ms": round(percentile(values, 50), 1),
                    f"{prefix}promotion_p95_ms": round(percentile(values, 95), 1),
                    f"{prefix}promotion_max_ms": round(max(values), 1)})
    out[f"{prefix}lost_acked_records"] = report.lost
    out[f"{prefix}acked_records"] = sum(r.acked for r in report.repetitions)
    out[f"{prefix}overlap_max_ms"] = round(max(overlaps), 3) if overlaps else None
    out[f"{prefix}failbacks"] = sum(1 for r in report.repetitions if r.failback)
    out[f"{prefix}errors"] = report.figures()["errors"]
    return out


def line(label: str, figures: dict[str, Any], prefix: str) -> str:
    if f"{prefix}promotion_p50_ms" not in figures:
        return f"  {label}: no promotion measured ({figures[prefix + 'repeat']} repetitions)"
    return (f"  {label}: p50 {figures[prefix + 'promotion_p50_ms']:.0f} ms, "
            f"p95 {figures[prefix + 'promotion_p95_ms']:.0f} ms, max {figures[prefix + 'promotion_max_ms']:.0f} ms "
            f"({figures[prefix + 'measured']}/{figures[prefix + 'repeat']} measured); "
            f"lost {figures[prefix + 'lost_acked_records']} of {figures[prefix + 'acked_records']} acknowledged; "
            f"max overlap {figures[prefix + 'overlap_max_ms']} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="standby drills at lifeline's defaults (default 20)")
    parser.add_argument("--baseline-repeat", type=int, default=3,
                        help="standby drills at Patroni's timings (each takes about a minute; default 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill points (printed)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the drills' files here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    log = lambda text: print(text, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-") as tmp:
        base = args.workdir or Path(tmp)
        log(f"lifeline defaults: {args.repeat} standby drills (seed {seed})")
        ours = run_drill("standby", base / "ours", HaSettings(repeat=args.repeat, seed=seed), progress=log)
        log(f"Patroni's timings {PATRONI}: {args.baseline_repeat} standby drills")
        theirs = run_drill("standby", base / "patroni", HaSettings(repeat=args.baseline_repeat, seed=seed + 1,
                                                                    lease=dict(PATRONI)), progress=log)
    figures: dict[str, Any] = {"seed": seed, **summary("", ours), **summary("patroni_", theirs),
                               "patroni_lease": PATRONI}
    ours_ms, theirs_ms = ours.series("promotion_ms"), theirs.series("promotion_ms")
    if ours_ms and theirs_ms:
        figures["ratio_p50"] = round(percentile(theirs_ms, 50) / percentile(ours_ms, 50), 1)
        figures["ratio_p95"] = round(percentile(theirs_ms, 95) / percentile(ours_ms, 95), 1)
    overlaps = [r.overlap_ms for r in ours.repetitions + theirs.repetitions if r.overlap_ms is not None]
    figures["ok"] = bool(ours_ms and len(ours_ms) == args.repeat and percentile(ours_ms, 95) < TARGET_P95_MS
                         and ours.lost == 0 and theirs.lost == 0 and overlaps and max(overlaps) == 0
                         and ours.ok)
    print(f"promotion after kill -9 of the primary (kill -> first append acknowledged by the new primary): "
          f"{len(ours.repetitions)} drills at lifeline's defaults, {len(theirs.repetitions)} at Patroni's timings")
    print(line("lifeline defaults", figures, ""))
    print(line("Patroni timings  ", figures, "patroni_"))
    if "ratio_p50" in figures:
        print(f"  Patroni / lifeline: {figures['ratio_p50']}x at p50, {figures['ratio_p95']}x at p95")
    verdict = "PASS" if figures["ok"] else "FAIL"
    p95 = figures.get("promotion_p95_ms")
    print(f"result: {verdict}: p95 {f'{p95:.0f} ms' if p95 is not None else 'not measured'} "
          f"(target < {TARGET_P95_MS:.0f} ms), {ours.lost + theirs.lost} lost, max overlap "
          f"{max(overlaps) if overlaps else '-'} ms")
    print(json.dumps(figures))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
