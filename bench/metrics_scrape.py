#!/usr/bin/env python3
"""Benchmark: one scrape of ``/metrics`` for a fully configured host, against an empty one.

    .venv/bin/python bench/metrics_scrape.py [--scrapes 200] [--rounds 5]

No root needed. In one trio run it starts two :class:`daemon.metrics.MetricsServer` on
loopback: **full**, whose collector yields what a host with every service reports (two
uplinks, two venues through both, a UPS, a GNSS receiver, an enclosure, the journal,
replication, the lease, recovery: the services' own ``metrics()`` output shape, with the
five histograms filled by real observations) plus ``process_*``; and **baseline**, whose
collector yields nothing (the HTTP exchange and an empty render: the floor of any
scrape). Each scrape is a new TCP connection, ``GET /metrics``, read to the end, timed
with ``time.perf_counter``; rounds of both alternate so that both see the same machine.

``ratio`` = full median / baseline median. The last line is one JSON object with the
figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

from daemon.metrics import MetricsServer  # noqa: E402
from daemon.core.service import MetricFamily, Sample, histogram  # noqa: E402

UPLINKS = ("fibre", "starlink")
VENUES = ("kraken", "coinbase")


def full_host() -> list:
    """The families of a host with every service configured, and filled histograms."""
    rng = random.Random(1)
    rtt = histogram("lifeline_uplink_probe_rtt_seconds", "RTT.", "rtt", ("uplink",))
    venue = histogram("lifeline_venue_probe_latency_seconds", "Latency.", "venue", ("venue", "uplink"))
    fsync = histogram("lifeline_journal_fsync_seconds", "fsync.", "fsync")
    ack = histogram("lifeline_replication_append_to_ack_seconds", "ack.", "ack")
    promotion = histogram("lifeline_promotion_seconds", "promotion.", "promotion")
    for _ in range(5000):
        for u in UPLINKS:
            rtt.labels(uplink=u).observe(rng.uniform(0.002, 0.06))
            for v in VENUES:
                venue.labels(venue=v, uplink=u).observe(rng.uniform(0.02, 0.4))
        fsync.observe(rng.uniform(0.0002, 0.004))
        ack.observe(rng.uniform(0.0005, 0.01))
    promotion.observe(1.4)
    families: list = []
    gauge = lambda name, samples: MetricFamily(name, "gauge", name, samples)  # noqa: E731
    counter = lambda name, samples: MetricFamily(name, "counter", name, samples)  # noqa: E731
    states = ("up", "degraded", "down", "unknown")
    families.append(gauge("lifeline_uplink_state", [Sample({"uplink": u, "state": s}, float(s == "up"))
                                                     for u in UPLINKS for s in states]))
    for name in ("lifeline_uplink_rtt_seconds", "lifeline_uplink_jitter_seconds", "lifeline_uplink_loss_ratio",
                 "lifeline_uplink_active"):
        families.append(gauge(name, [Sample({"uplink": u}, 0.01) for u in UPLINKS]))
    for name in ("lifeline_uplink_probes_sent_total", "lifeline_uplink_probes_received_total"):
        families.append(counter(name, [Sample({"uplink": u}, 123456) for u in UPLINKS]))
    families.append(gauge("lifeline_venue_state", [Sample({"venue": v, "uplink": u, "state": s}, float(s == "up"))
                                                   for v in VENUES for u in UPLINKS for s in states]))
    for name in ("lifeline_venue_up", "lifeline_venue_deadman_failing"):
        families.append(gauge(name, [Sample({"venue": v}, 1) for v in VENUES]))
    for name in ("lifeline_venue_probes_total", "lifeline_venue_deadman_arms_total",
                 "lifeline_venue_reconciliations_total"):
        families.append(counter(name, [Sample({"venue": v}, 42) for v in VENUES]))
    for name in ("input_volts", "output_volts", "battery_volts", "load_ratio", "frequency_hertz",
                 "battery_charge_ratio", "battery_runtime_seconds", "temperature_celsius", "ups_on_battery",
                 "ups_battery_low", "clock_offset_seconds", "gnss_satellites", "gnss_fix", "humidity_ratio",
                 "door_open", "stale"):
        families.append(gauge(f"lifeline_hardware_{name}", [Sample({"device": "ups", "kind": "ups"}, 1.5)]))
    for name in ("lifeline_role",):
        families.append(gauge(name, [Sample({"role": r}, float(r == "primary"))
                                     for r in ("waiting", "standby", "candidate", "primary", "fenced")]))
    for name in ("lifeline_lease_epoch", "lifeline_lease_highest_epoch", "lifeline_lease_store_reachable",
                 "lifeline_journal_last_seq", "lifeline_journal_epoch", "lifeline_replication_connected",
                 "lifeline_replication_in_sync", "lifeline_replication_acked_seq", "lifeline_replication_lag_records",
                 "lifeline_replication_degraded", "lifeline_replication_lag_seconds", "lifeline_playbooks_verified",
                 "lifeline_playbooks_refused", "lifeline_audit_chain_ok", "lifeline_uptime_seconds",
                 "lifeline_host_cpu_fraction", "lifeline_host_memory_used_fraction", "lifeline_host_overloaded"):
        families.append(gauge(name, [Sample({}, 7)]))
    for name in ("lifeline_role_changes_total", "lifeline_journal_appends_total", "lifeline_journal_in_doubt_total",
                 "lifeline_replication_records_sent_total", "lifeline_events_published_total",
                 "lifeline_playbook_runs_total"):
        families.append(counter(name, [Sample({}, 99)]))
    families.append(gauge("lifeline_service_up", [Sample({"service": s}, 1) for s in
                                                  ("control", "system", "metrics", "uplinks", "standby", "hardware",
                                                   "venues", "recovery")]))
    for h in (rtt, venue, fsync, ack, promotion):
        families += h.collect()
    return families


async def scrape(port: int) -> tuple[float, int]:
    began = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        size = 0
        while data := await stream.receive_some(65536):
            size += len(data)
    return time.perf_counter() - began, size


async def run(scrapes: int, rounds: int) -> dict:
    families = full_host()
    full = MetricsServer("127.0.0.1", 0, lambda: families)
    empty = MetricsServer("127.0.0.1", 0, lambda: [], process=False)
    times: dict[str, list[float]] = {"full": [], "baseline": []}
    sizes: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(full.run)
        await nursery.start(empty.run)
        for _ in range(rounds):
            for name, server in (("full", full), ("baseline", empty)):
                for _ in range(scrapes // rounds):
                    took, size = await scrape(server.bound_port)  # type: ignore[arg-type]
                    times[name].append(took)
                    sizes[name] = size
        nursery.cancel_scope.cancel()
    samples = sum(len(f.samples) for f in families)
    stats = {name: {"median_ms": round(statistics.median(t) * 1000, 3),
                    "p99_ms": round(sorted(t)[int(len(t) * 0.99) - 1] * 1000, 3)} for name, t in times.items()}
    return {"full_median_ms": stats["full"]["median_ms"], "full_p99_ms": stats["full"]["p99_ms"],
            "baseline_median_ms": stats["baseline"]["median_ms"], "baseline_p99_ms": stats["baseline"]["p99_ms"],
            "ratio": round(stats["full"]["median_ms"] / stats["baseline"]["median_ms"], 2),
            "response_bytes": sizes["full"], "service_samples": samples, "scrapes": len(times["full"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = trio.run(run, args.scrapes, args.rounds)
    print(f"full host: median {figures['full_median_ms']} ms, p99 {figures['full_p99_ms']} ms, "
          f"{figures['response_bytes']} bytes ({figures['service_samples']} service samples + process_*)")
    print(f"baseline (empty collector): median {figures['baseline_median_ms']} ms; ratio {figures['ratio']}")
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
