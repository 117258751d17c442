#!/usr/bin/env python3
"""Benchmark: what the circuit breakers cost per journal record and per tick.

    .venv/bin/python bench/breakers.py [--records 200000] [--rounds 5]

No root needed. A realistic journal stream (80 % order records of which a fifth end the
order, 15 % mark records over 20 symbols at 2 venues, 5 % other payloads) is fed to
:meth:`daemon.guard.breakers.Breakers.observe_payload`, as the breaker service does for
every record it tails; the **baseline** is one ``json.loads`` per payload (the least any
reader of the journal pays). Rounds are interleaved. Then the **tick** (re-judging all
four breakers, with the windows full of that stream) is timed.

``ratio`` = observe per record / json.loads per record (medians over rounds). The last
line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.guard.breakers import Breakers  # noqa: E402
from daemon.guard.breakers_config import BreakersConfig  # noqa: E402

T0 = 1_800_000_000.0
STATES = ["new", "open", "partially_filled", "filled", "new", "open", "filled", "cancelled", "rejected", "open"]


def stream(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        k = i % 20
        if k < 16:
            out.append(json.dumps({"record": "order", "v": 1, "client_order_id": f"mm-{i}", "venue": "kraken",
                                   "symbol": f"S{i % 20}/USD", "side": "buy", "amount": "0.5",
                                   "price": "43000.1", "state": STATES[i % len(STATES)], "epoch": 7,
                                   "time": T0 + i / 1000}, separators=(",", ":")).encode())
        elif k < 19:
            out.append(json.dumps({"record": "mark", "v": 1, "venue": ("kraken", "coinbase")[i % 2],
                                   "symbol": f"S{i % 20}/USD", "price": f"{43000 + (i % 97) / 10}",
                                   "time": T0 + i / 1000}, separators=(",", ":")).encode())
        else:
            out.append(b'{"fill":"engine-private","n":%d}' % i)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    payloads = stream(args.records)
    observe, baseline, ticks = [], [], []
    for _ in range(args.rounds):
        began = time.perf_counter_ns()
        for p in payloads:
            json.loads(p)
        baseline.append((time.perf_counter_ns() - began) / len(payloads))
        b = Breakers(BreakersConfig().specs())
        began = time.perf_counter_ns()
        for i, p in enumerate(payloads):
            b.observe_payload(p, T0 + i / 1000)
        observe.append((time.perf_counter_ns() - began) / len(payloads))
        b.observe_paths([(v, u, "up") for v in ("kraken", "coinbase") for u in ("fibre", "starlink")], T0)
        b.observe_load(0.3, T0)
        now = T0 + len(payloads) / 1000
        for j in range(50):
            began = time.perf_counter_ns()
            b.tick(now + j * 0.001)
            ticks.append(time.perf_counter_ns() - began)
    figures = {
        "records": args.records, "rounds": args.rounds,
        "observe_ns_per_record": round(statistics.median(observe), 1),
        "json_loads_ns_per_record": round(statistics.median(baseline), 1),
        "tick_us_p50": round(statistics.median(ticks) / 1000, 1),
        "tick_us_max": round(max(ticks) / 1000, 1),
        "ratio": round(statistics.median(observe) / statistics.median(baseline), 3),
    }
    print(f"observe {figures['observe_ns_per_record']:.0f} ns/record vs json.loads "
          f"{figures['json_loads_ns_per_record']:.0f} ns (ratio {figures['ratio']}); tick p50 "
          f"{figures['tick_us_p50']} us, max {figures['tick_us_max']} us")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
