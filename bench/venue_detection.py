#!/usr/bin/env python3
"""Benchmark: time from a venue going silent to ``VenueHealthChanged``, at default settings.

    .venv/bin/python bench/venue_detection.py [--repetitions 20] [--venue kraken]

No root needed: everything on loopback. The venue emulator (lab/venues/,
serving ccxt's recorded Kraken and Coinbase responses) runs in-process; a VenueService
probes one venue through two "uplinks" (source addresses 127.0.0.1 and 127.0.0.2) with
the defaults of ``[venues.NAME]`` (a ``fetch_time`` round every 1 s, 0.8 s timeout,
DEGRADED on the first failure, DOWN after 3). Each repetition waits a random part of a
probe interval, then makes the venue silent for 127.0.0.2 only (the emulator reads the
request and never answers: the hardest case, only a timeout can tell), and measures on
CLOCK_MONOTONIC:

* **detection**: fault → the ``VenueHealthChanged`` event of the silent path (its
  ``monotonic_ns``);
* **down**: fault → the path's DOWN;
* and checks the other path never left UP.

**Baseline**, measured in the same run against the same emulator: the floor of any
poller at this interval and timeout — a bare ``requests`` GET of the same endpoint from
127.0.0.2 every interval with the same timeout, whose first failed request after the
fault is its detection. ``ratio`` = our median / the baseline's median (1.0 would mean
the daemon adds nothing to what polling at this cadence allows).

Target (issue 9): p95 detection < 2000 ms at default settings. The last line is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from daemon.config import parse_config  # noqa: E402
from daemon.core.bus import EventBus
from daemon.venues.service import VenueService  # noqa: E402
from lab.venues.server import VenueEmulator  # noqa: E402

PATHS = {"near": "127.0.0.1", "far": "127.0.0.2"}
ENDPOINT = {"kraken": "/0/public/Time", "coinbase": "/v2/time"}


def config_text(url: str, venue: str, workdir: Path) -> str:
    uplinks = "".join(
        f'[uplinks.{name}]\ninterface = "lo"\nsource = "{source}"\ngateway = "127.0.0.254"\n'
        f'targets = ["udp://127.0.0.1:7"]\n\n' for name, source in PATHS.items())
    return (f'[node]\nname = "bench"\nstate_dir = "{workdir}/state"\nruntime_dir = "{workdir}/run"\n\n'
            f"{uplinks}[venues.{venue}]\nexchange = \"{venue}\"\napi_url = \"{url}\"\n")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def baseline_poller(url: str, stop: threading.Event, failures: list[float], interval: float, timeout: float) -> None:
    """A bare poller: GET every ``interval`` from 127.0.0.2 with ``timeout``; records the
    monotonic time of each failed request (when it failed)."""
    import requests
    from requests.adapters import HTTPAdapter

    class Bound(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            kwargs["source_address"] = (PATHS["far"], 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.trust_env = False
    session.mount("http://", Bound())
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            session.get(url, timeout=timeout).raise_for_status()
        except requests.RequestException:
            failures.append(time.monotonic())
        next_at = max(next_at + interval, time.monotonic())
        stop.wait(max(0.0, next_at - time.monotonic()))


async def run(repetitions: int, venue: str, seed: int) -> dict:
    rng = random.Random(seed)
    emulator = VenueEmulator()
    detection, down, baseline, other_left_up = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-venue-") as tmp:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(emulator.run)
            config = parse_config(config_text(url, venue, Path(tmp)), "bench.toml")
            vc = config.venues[venue]
            bus = EventBus(1000)
            service = VenueService(config, bus)
            with bus.subscribe("bench") as events:
                await nursery.start(service.run)

                async def until(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
                    with trio.fail_after(timeout):
                        async for event in events:
                            if event.kind == "VenueHealthChanged" and predicate(event):
                                return event

                def all_up() -> bool:
                    return all(p.health.state.value == "up" for p in service.venues[venue].paths.values())

                with trio.fail_after(30):
                    while not all_up():
                        await trio.sleep(0.05)
                stop = threading.Event()
                fails: list[float] = []
                poller = threading.Thread(target=baseline_poller, daemon=True, args=(
                    url + ENDPOINT[venue], stop, fails, float(vc.interval), float(vc.timeout)))
                poller.start()
                try:
                    for i in range(repetitions):
                        await trio.sleep(rng.uniform(0.0, float(vc.interval)))
                        t0 = time.monotonic_ns()
                        fails_before = len(fails)
                        emulator.set_fault(venue, "silent", sources=[f"{PATHS['far']}/32"])
                        first = await until(lambda e: e.uplink == "far" and e.state != "up")
                        detection.append((first.monotonic_ns - t0) / 1e6)
                        gone = await until(lambda e: e.uplink == "far" and e.state == "down")
                        down.append((gone.monotonic_ns - t0) / 1e6)
                        with trio.fail_after(10):
                            while len(fails) == fails_before:
                                await trio.sleep(0.02)
                        baseline.append((fails[fails_before] - t0 / 1e9) * 1000)
                        if service.venues[venue].paths["near"].health.state.value != "up":
                            other_left_up += 1
                        emulator.set_fault(venue, "ok")
                        await until(lambda e: e.uplink == "far" and e.state == "up")
                        print(f"repetition {i + 1}: detection {detection[-1]:.0f} ms, down {down[-1]:.0f} ms, "
                              f"baseline poller {baseline[-1]:.0f} ms", file=sys.stderr, flush=True)
                finally:
                    stop.set()
            nursery.cancel_scope.cancel()
    median = statistics.median(detection)
    base = statistics.median(baseline)
    return {
        "venue": venue, "repetitions": repetitions, "interval_s": 1.0, "timeout_s": 0.8,
        "detection_p50_ms": round(median, 1), "detection_p95_ms": round(percentile(detection, 0.95), 1),
        "detection_max_ms": round(max(detection), 1),
        "down_p50_ms": round(statistics.median(down), 1), "down_p95_ms": round(percentile(down, 0.95), 1),
        "baseline_p50_ms": round(base, 1), "baseline_p95_ms": round(percentile(baseline, 0.95), 1),
        "ratio_p50": round(median / base, 2) if base else None,
        "other_path_left_up": other_left_up, "target_p95_ms": 2000,
        "target_met": percentile(detection, 0.95) < 2000 and other_left_up == 0,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--venue", choices=sorted(ENDPOINT), default="kraken")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from daemon.core import log

    log.setup("error")  # the daemon's own event lines would drown the figures
    figures = trio.run(run, args.repetitions, args.venue, args.seed)
    print(f"detection (silent venue through one uplink, default settings): p50 {figures['detection_p50_ms']} ms, "
          f"p95 {figures['detection_p95_ms']} ms, max {figures['detection_max_ms']} ms; DOWN p50 "
          f"{figures['down_p50_ms']} ms; bare poller at the same cadence p50 {figures['baseline_p50_ms']} ms "
          f"(ratio {figures['ratio_p50']}); other path left UP {figures['other_path_left_up']} times")
    print(json.dumps(figures))
    return 0 if figures["target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
