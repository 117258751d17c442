#!/usr/bin/env python3
"""Benchmark: what the pre-trade risk gate adds to the journal's append path, per order record.

    .venv/bin/python bench/risk_gate.py [--records 50000] [--rate 10000] [--fold 1000000]

No root needed. A realistic order stream — 2 venues x 3 symbols; each order ``new`` ->
``open`` -> ``partially_filled`` -> ``filled`` or ``cancelled`` (one in three cancelled),
orders interleaved (about 40 open at a time), one ``mark`` record per 10 order records —
is fed one record per ``journal.append`` (what an engine does), paced at ``--rate`` records
per second (each record through both paths in the same slot, alternating which goes
first, so that both see the same load), through the standby's own append-path code (``StandbyService._check_order_records``
and, with the gate, the :class:`AppendGate` seam's ``check`` then ``written``), built from a
real config as ``lifeline run`` builds it:

* **without**: the venues' format check (``check_payload``), the append path before the gate;
* **with**: :class:`daemon.guard.service.GuardService` as the ``AppendGate`` with signed-file
  limits on every figure (amount, notional, collar, open orders, position, daily loss,
  message rate, duplicate ids), none of them refusing: parse once (the venues' parser),
  decide, reserve, fold on ``written``.

The journal write and the replication wait are not measured: they are the same with and
without the gate (``bench/replication.py`` measures them). Per record, with
``time.perf_counter_ns``: p50/p99 of each path; ``added_p50_us`` / ``added_p99_us`` = with
minus without at that quantile. ``ratio`` = the replay throughput (records/s, unpaced,
the same stream) with the gate / without. ``fold_1m_s``: the start-up fold of ``--fold``
records written to a real journal (``GuardService``'s fold loop until it says started:
``journal.read`` in batches, parse, fold), scaled to 1 M. Target: ``added_p99_us`` <= 50. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import parse_config  # noqa: E402
from daemon.core.bus import EventBus  # noqa: E402
from daemon.guard.book import Book  # noqa: E402
from daemon.guard.limits import Limits, LimitSet, SignedLimits  # noqa: E402
from daemon.guard.service import GuardService  # noqa: E402
from daemon.standby.service import StandbyService  # noqa: E402
from daemon.venues.orders import check_payload, parse_for_append, parse_journal_record  # noqa: E402

TARGET_US = 50.0
VENUES = ("kraken", "binance")
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
PRICES = {"BTC/USDT": 43000.0, "ETH/USDT": 2300.0, "SOL/USDT": 95.0}


def stream(n: int, seed: int = 7) -> list[bytes]:
    """``n`` payloads: order lifecycles interleaved, a mark every 10 order records."""
    rng = random.Random(seed)
    out: list[bytes] = [json.dumps({"record": "mark", "v": 1, "venue": v, "symbol": s, "price": f"{PRICES[s]:.2f}"},
                                   separators=(",", ":")).encode() for v in VENUES for s in SYMBOLS]
    live: list[dict[str, Any]] = []
    count = 0
    t = 1_800_000_000.0
    while len(out) < n:
        t += 0.0001
        if count % 10 == 0:
            venue, symbol = rng.choice(VENUES), rng.choice(SYMBOLS)
            price = PRICES[symbol] * (1 + rng.uniform(-0.001, 0.001))
            out.append(json.dumps({"record": "mark", "v": 1, "venue": venue, "symbol": symbol,
                                   "price": f"{price:.2f}", "time": t}, separators=(",", ":")).encode())
        count += 1
        if len(live) < 40 or rng.random() < 0.2:
            symbol = rng.choice(SYMBOLS)
            order = {"record": "order", "v": 1, "client_order_id": f"mm-{count}", "venue": rng.choice(VENUES),
                     "symbol": symbol, "side": rng.choice(("buy", "sell")), "amount": "0.5",
                     "price": f"{PRICES[symbol] * (1 + rng.uniform(-0.002, 0.002)):.2f}", "state": "new",
                     "type": "limit", "epoch": 3, "time": t}
            live.append(order)
        else:
            order = live[rng.randrange(len(live))]
            state = order["state"]
            order["time"] = t
            if state == "new":
                order.update(state="open", venue_order_id=f"V{order['client_order_id']}", filled="0")
            elif state == "open":
                if rng.random() < 0.33:
                    order["state"] = "cancelled"
                else:
                    order.update(state="partially_filled", filled="0.2")
            else:
                order.update(state="filled", filled="0.5")
            if order["state"] in ("filled", "cancelled"):
                live.remove(order)
        out.append(json.dumps(order, separators=(",", ":")).encode())
    return out[:n]


def limits() -> Limits:
    return Limits(version=1, expires=datetime(2099, 1, 1, tzinfo=timezone.utc), no_reference="refuse",
                  max_message_rate=1_000_000, max_daily_loss=Decimal("1e12"),
                  entries=(LimitSet(max_order_amount=Decimal(10), max_order_notional=Decimal(10_000_000),
                                    price_collar=Decimal("0.05"), max_open_orders=10_000,
                                    max_position=Decimal(1_000_000)),
                           LimitSet(venue="kraken", symbol="BTC/USDT", max_order_amount=Decimal(5))))


def config() -> Any:
    return parse_config(f"""
[node]
name = "bench"
state_dir = "/tmp/lifeline-bench-risk"
runtime_dir = "/tmp/lifeline-bench-risk/run"
[standby]
role = "primary"
key_file = "unused"
listen = "127.0.0.1:1"
[venues.kraken]
exchange = "kraken"
[venues.binance]
exchange = "binance"
""")


def paths(cfg: Any) -> tuple[StandbyService, StandbyService, GuardService]:
    venues = list(cfg.venues)
    without = StandbyService(cfg, EventBus(16), check_payload=partial(check_payload, venues=venues))
    guard = GuardService(cfg, EventBus(16), parse_order=parse_journal_record,
                         check_order=partial(parse_for_append, venues=venues))
    guard.ready = True
    guard.gate.limits = limits()
    guard.signed = SignedLimits(guard.gate.limits, Path("bench"), "0" * 64, ("bench",), 0.0)
    with_gate = StandbyService(cfg, EventBus(16), check_payload=partial(check_payload, venues=venues))
    with_gate.append_gate = guard
    return without, with_gate, guard


def paced(payloads: list[bytes], steps: tuple[Callable[[list[bytes], int], None], ...], rate: float
          ) -> tuple[list[list[int]], list[list[int]]]:
    """Per-record wall ns and CPU ns (this thread's) of each of ``steps``, one record per
    append, started on a ``rate``/s schedule; each record goes through every step in the
    same slot (the order alternating), so that all of them see the same machine (a shared
    2-core host is noisy: the wall-clock tail is mostly time spent waiting for a CPU,
    which the CPU figures leave out)."""
    wall: list[list[int]] = [[] for _ in steps]
    cpu: list[list[int]] = [[] for _ in steps]
    interval = 1.0 / rate
    clock = time.perf_counter
    ns = time.perf_counter_ns
    tns = time.thread_time_ns
    start = clock()
    order = list(range(len(steps)))
    for i, payload in enumerate(payloads):
        due = start + i * interval
        while clock() < due:
            pass
        batch = [payload]
        for k in (order if i % 2 == 0 else order[::-1]):
            c0 = tns()
            t0 = ns()
            steps[k](batch, i + 1)
            wall[k].append(ns() - t0)
            cpu[k].append(tns() - c0)
    return wall, cpu


def journal_fold(payloads: list[bytes]) -> tuple[float, float]:
    """(seconds to fold, seconds to write): ``payloads`` into a real journal (fsync never),
    then GuardService's start-up fold of it."""
    import tempfile

    import trio

    from daemon.standby.config import JournalConfig
    from daemon.standby.journal import Journal

    with tempfile.TemporaryDirectory(prefix="lifeline-bench-fold-") as tmp:
        directory = Path(tmp) / "journal"
        settings = JournalConfig(fsync="never", segment_bytes=256 * 1024 * 1024)
        journal = Journal.open(directory, settings)

        async def write() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                for i in range(0, len(payloads), 5000):
                    await journal.append_many(payloads[i:i + 5000], 1)
                nursery.cancel_scope.cancel()

        t0 = time.perf_counter()
        trio.run(write)
        written = time.perf_counter() - t0
        journal.close()
        journal = Journal.open(directory, settings)

        class Host:
            accepting = False

        host = Host()
        host.journal = journal  # type: ignore[attr-defined]
        guard = GuardService(config(), EventBus(16), standby=host,  # type: ignore[arg-type]
                             parse_order=parse_journal_record)

        async def fold() -> float:
            async with trio.open_nursery() as nursery:
                t = time.perf_counter()
                await nursery.start(guard._fold_loop)  # started = folded to the end
                elapsed = time.perf_counter() - t
                nursery.cancel_scope.cancel()
            return elapsed

        folded = trio.run(fold)
        assert guard.book.position == len(payloads), guard.book.position
        journal.close()
    return folded, written


def quantile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--fold", type=int, default=1_000_000)
    args = parser.parse_args()
    gc.set_threshold(50_000, 20, 100)  # as run_daemon does
    payloads = stream(args.records)
    gc.freeze()

    def without_step(svc: StandbyService) -> Callable[[list[bytes], int], None]:
        def step(batch: list[bytes], seq: int) -> None:
            svc._check_order_records(batch)
        return step

    def with_step(svc: StandbyService, guard: GuardService) -> Callable[[list[bytes], int], None]:
        def step(batch: list[bytes], seq: int) -> None:
            ticket = svc._check_order_records(batch)
            guard.written(ticket, seq, seq)
        return step

    cfg = config()
    w0, _, _ = paths(cfg)
    _, w1, guard = paths(cfg)
    (times_without, times_with), (cpu_without, cpu_with) = paced(
        payloads, (without_step(w0), with_step(w1, guard)), args.rate)
    refused = sum(guard.gate.refusals.values())

    # Replay throughput, unpaced: the same stream through fresh paths.
    def replay(make: Callable[[], Callable[[list[bytes], int], None]]) -> float:
        step = make()
        t0 = time.perf_counter()
        for i, p in enumerate(payloads, 1):
            step([p], i)
        return len(payloads) / (time.perf_counter() - t0)

    rates_without, rates_with = [], []
    for _ in range(3):
        a, _, _ = paths(cfg)
        rates_without.append(replay(lambda: without_step(a)))
        _, b, g = paths(cfg)
        rates_with.append(replay(lambda: with_step(b, g)))
    throughput_without = statistics.median(rates_without)
    throughput_with = statistics.median(rates_with)

    # The start-up fold: --fold records written to a real journal, then folded by the guard
    # exactly as at start (journal.read in batches, parse, fold).
    big = stream(args.fold, seed=11)
    fold_s, journal_write_s = journal_fold(big)

    p50_wo, p99_wo = quantile(times_without, 0.5), quantile(times_without, 0.99)
    p50_w, p99_w = quantile(times_with, 0.5), quantile(times_with, 0.99)
    result = {
        "records": len(times_with), "rate_per_s": args.rate, "venues": len(VENUES), "symbols": len(SYMBOLS),
        "without_p50_us": round(p50_wo, 2), "without_p99_us": round(p99_wo, 2),
        "with_p50_us": round(p50_w, 2), "with_p99_us": round(p99_w, 2),
        "added_p50_us": round(p50_w - p50_wo, 2), "added_p99_us": round(p99_w - p99_wo, 2),
        "added_cpu_p50_us": round(quantile(cpu_with, 0.5) - quantile(cpu_without, 0.5), 2),
        "added_cpu_p99_us": round(quantile(cpu_with, 0.99) - quantile(cpu_without, 0.99), 2),
        "without_cpu_p99_us": round(quantile(cpu_without, 0.99), 2),
        "with_cpu_p99_us": round(quantile(cpu_with, 0.99), 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "replay_without_per_s": round(throughput_without), "replay_with_per_s": round(throughput_with),
        "ratio": round(throughput_with / throughput_without, 3),
        "fold_records": args.fold, "fold_1m_s": round(fold_s * 1_000_000 / args.fold, 2),
        "fold_per_s": round(args.fold / fold_s), "refused": refused, "target_added_p99_us": TARGET_US,
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    print(f"append path per order record, one per append at {args.rate:g}/s ({len(times_with)} records):")
    print(f"  without the gate (format check)  p50 {p50_wo:7.2f} us   p99 {p99_wo:7.2f} us")
    print(f"  with the gate                    p50 {p50_w:7.2f} us   p99 {p99_w:7.2f} us")
    print(f"  added                            p50 {p50_w - p50_wo:7.2f} us   p99 {p99_w - p99_wo:7.2f} us "
          f"(target <= {TARGET_US:g} us at p99)")
    print(f"  added, CPU time of this thread   p50 {result['added_cpu_p50_us']:7.2f} us   p99 "
          f"{result['added_cpu_p99_us']:7.2f} us (load average {result['loadavg_1m']})")
    print(f"replay throughput: {throughput_without:,.0f}/s without, {throughput_with:,.0f}/s with "
          f"(ratio {throughput_with / throughput_without:.3f})")
    print(f"start-up fold: {args.fold:,} records in {fold_s:.2f} s ({args.fold / fold_s:,.0f}/s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
