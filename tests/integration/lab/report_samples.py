"""Drill reports made up for the report's tests (no root, no lab): the drills' own report
classes, filled as a run fills them, with timings like the lab's."""

from __future__ import annotations

import random
from typing import Any

from lab.drills import DrillReport, RepetitionResult
from lab.ha_drills import HaReport, HaSettings, Repetition, overlap_ns, primary_intervals
from lab.venue_drills import PHASES, PhaseResult, VenueDrillReport
from lab.venue_drills import Repetition as VenueRepetition

MS = 1_000_000
BASE = 5_000_000_000_000  # a CLOCK_MONOTONIC of a machine up for ~83 minutes


def _feed(node: str, start_ms: float, stop_ms: float, epoch: int, *, renew_ms: float = 500,
          valid_ms: float = 1200) -> list[dict[str, Any]]:
    """A primary's role.watch messages: the snapshot, then a renewal every ``renew_ms``."""
    out = []
    t = start_ms
    first = True
    while t < stop_ms:
        out.append({"node": node, "role": "primary", "epoch": epoch, "renewal": not first,
                    "monotonic_ns": BASE + int(t * MS), "valid_until": BASE + int((t + valid_ms) * MS)})
        first = False
        t += renew_ms
    return out


def promotion_repetition(index: int, kind: str, rng: random.Random) -> Repetition:
    a, b = ("edge-a", "edge-b") if index % 2 else ("edge-b", "edge-a")
    last_renewal = -rng.uniform(10, 480)
    promoted = last_renewal + 1200 + rng.uniform(40, 260)  # after the old deadline passed
    first_ok = promoted + rng.uniform(4, 30)
    def ns(ms: float) -> int:
        return BASE + int(ms * MS)
    changes = [
        {"node": a, "role": "candidate", "previous": "waiting", "epoch": 0, "reason": "", "monotonic_ns": ns(-3100)},
        {"node": a, "role": "primary", "previous": "candidate", "epoch": index, "reason": "lease acquired",
         "monotonic_ns": ns(-3050)},
        {"node": b, "role": "standby", "previous": "waiting", "epoch": index, "reason": "", "monotonic_ns": ns(-2950)},
        {"node": b, "role": "candidate", "previous": "standby", "epoch": index, "reason": "lease expired",
         "monotonic_ns": ns(promoted - 40)},
        {"node": b, "role": "primary", "previous": "candidate", "epoch": index + 1, "reason": "lease acquired",
         "monotonic_ns": ns(promoted)},
    ]
    deaths: list[int] = []
    feed = _feed(a, -3050, last_renewal + 1, index)
    if kind == "standby":
        deaths.append(ns(rng.uniform(2, 6)))
        fault = f"kill -9 {a}"
        changes.append({"node": a, "role": "waiting", "previous": "", "epoch": 0, "reason": "restarted",
                        "monotonic_ns": ns(promoted + 520)})
    else:
        fenced = last_renewal + 1200 + rng.uniform(0, 5)
        changes.append({"node": a, "role": "fenced", "previous": "primary", "epoch": index,
                        "reason": "lease not renewed by the fence deadline", "monotonic_ns": ns(fenced)})
        feed.append({"node": a, "role": "fenced", "epoch": index, "monotonic_ns": ns(fenced), "valid_until": None})
        fault = f"cut {a} from the witness"
    changes.append({"node": a, "role": "standby", "previous": "", "epoch": index + 1, "reason": "follows",
                    "monotonic_ns": ns(promoted + 700)})
    feed += _feed(b, promoted, promoted + 1900, index + 1)
    end = ns(promoted + 1900)
    rep = Repetition(index, primary=a, new_primary=b, fault=fault, acked_before=2000 + index * 37,
                     promotion_ms=first_ok, role_ms=promoted, acked=4200 + index * 51, lost=0,
                     back_as_standby=True, caught_up=True, identical=True, catchup_ms=rng.uniform(80, 300))
    if kind != "standby":
        rep.fenced_ms = next(c["monotonic_ns"] for c in changes if c["role"] == "fenced") / MS - BASE / MS
    rep.roles = sorted(changes, key=lambda c: c["monotonic_ns"])
    rep.feed, rep.fault_ns, rep.deaths_ns, rep.end_ns = feed, BASE, deaths, end
    rep.promoted_ns = ns(first_ok)
    rep.overlap_ms = overlap_ns(primary_intervals(rep.roles, a, deaths, end),
                                primary_intervals(rep.roles, b, [], end)) / 1e6
    return rep


def promotion_report(kind: str = "standby", repeat: int = 3, seed: int = 7) -> HaReport:
    rng = random.Random(seed)
    report = HaReport(kind, seed, HaSettings(repeat=repeat))
    report.repetitions = [promotion_repetition(i, kind, rng) for i in range(1, repeat + 1)]
    return report


def uplink_report(cuts: int = 2, seed: int = 3) -> DrillReport:
    """A failover phase: cuts every 9 s, the daemon's status every 100 ms, venue echoes
    every 10 ms over the default route."""
    rng = random.Random(seed)
    t0 = 5000.0
    report = DrillReport()
    status: list[tuple[float, dict[str, Any]]] = []
    events: list[dict[str, Any]] = [{"at": t0, "kind": "ActiveUplinkChanged", "active": "fibre"}]
    routes = [{"at": t0, "uplink": "fibre"}]
    venue: list[tuple[float, float]] = []
    cut_times = [t0 + 2 + 9 * i for i in range(cuts)]
    restore_times = [c + 2.2 for c in cut_times]
    downs, switches, backs = [], [], []
    for cut, restore in zip(cut_times, restore_times):
        down = cut + rng.uniform(0.55, 0.8)
        switch = down + rng.uniform(0.002, 0.01)
        back = restore + 3 + 2 + rng.uniform(0.0, 0.2)  # up_after 10 rounds + hold-down 3 s
        downs.append(down)
        switches.append(switch)
        backs.append(back)
        events += [{"at": down, "kind": "UplinkHealthChanged", "uplink": "fibre", "state": "down"},
                   {"at": switch, "kind": "ActiveUplinkChanged", "active": "starlink", "route_ms": 2.1}]
        routes += [{"at": switch, "uplink": "starlink"}, {"at": back, "uplink": "fibre"}]
        report.repetitions.append(RepetitionResult((down - cut) * 1000, (switch - cut) * 1000,
                                                   (switch - cut) * 1000 + 12, (back - restore) * 1000, 2.1))
    end = cut_times[-1] + 8.5
    window: list[bool] = []
    t = t0
    while t < end:
        cut_now = any(c <= t < r for c, r in zip(cut_times, restore_times))
        window = (window + [not cut_now])[-50:]
        state = "up"
        if any(d <= t < r + 2 for d, r in zip(downs, restore_times)):
            state = "down"
        status.append((t, {"fibre": {"state": state, "loss": round(1 - sum(window) / len(window), 4),
                                     "rtt_ms": round(rng.uniform(0.25, 0.4), 3), "lost_streak": 0},
                           "starlink": {"state": "up", "loss": 0.0, "rtt_ms": round(rng.uniform(24, 32), 2),
                                        "lost_streak": 0}}))
        t += 0.1
    t = t0
    while t < end:
        on = "fibre"
        for s, b in zip(switches, backs):
            if s <= t < b:
                on = "starlink"
        cut_now = any(c <= t < s for c, s in zip(cut_times, switches))
        if not cut_now:
            venue.append((t, t + (rng.uniform(0.0002, 0.0006) if on == "fibre" else rng.uniform(0.022, 0.035))))
        t += 0.01
    report.trace = {"events": events, "routes": routes, "venue": venue, "status": status, "cuts": cut_times,
                    "restores": restore_times,
                    "thresholds": {"fibre": {"rtt_ms": 100.0, "loss": 0.2}, "starlink": {"rtt_ms": 250.0, "loss": 0.2}}}
    report.flaps, report.soak_rounds, report.soak_real_s = 0, 3000, 60.2
    return report


def venue_report(repeat: int = 2, seed: int = 5) -> VenueDrillReport:
    rng = random.Random(seed)
    report = VenueDrillReport(repeat, route="default via 10.71.1.1 dev ...", deadman_armed=True,
                              deadman_rearmed=True, deadman_arms=4)
    events: list[dict[str, Any]] = []
    start = BASE
    for v in ("kraken", "coinbase"):
        for u in ("fibre", "starlink"):
            events.append({"kind": "VenueHealthChanged", "venue": v, "uplink": u, "state": "up",
                           "previous": "unknown", "monotonic_ns": start + int(rng.uniform(900, 1100) * MS)})
    t = start + 3000 * MS
    for i in range(1, repeat + 1):
        rep = VenueRepetition(i)
        for phase in PHASES:
            result = PhaseResult(phase)
            result.fault_ns = t
            paths = [("kraken", "fibre"), ("coinbase", "fibre")] if phase == "fibre_only" else \
                [(v, u) for v in ("kraken", "coinbase") for u in ("fibre", "starlink")]
            worst = 0
            for v, u in paths:
                degraded = t + int(rng.uniform(300, 1100) * MS)
                down = degraded + 2000 * MS
                worst = max(worst, down)
                result.detection_ms[f"{v}/{u}"] = (degraded - t) / MS
                result.down_ms[f"{v}/{u}"] = (down - t) / MS
                events += [{"kind": "VenueHealthChanged", "venue": v, "uplink": u, "state": "degraded",
                            "previous": "up", "monotonic_ns": degraded},
                           {"kind": "VenueHealthChanged", "venue": v, "uplink": u, "state": "down",
                            "previous": "degraded", "monotonic_ns": down}]
            result.restore_ns = worst + 200 * MS
            back = 0
            for v, u in paths:
                up = result.restore_ns + int(rng.uniform(2100, 3000) * MS)
                back = max(back, up)
                events.append({"kind": "VenueHealthChanged", "venue": v, "uplink": u, "state": "up",
                               "previous": "down", "monotonic_ns": up})
            result.recovery_ms = (back - result.restore_ns) / MS
            rep.phases[phase] = result
            t = back + 1500 * MS
        report.repetitions.append(rep)
    report.trace = {"events": sorted(events, key=lambda e: e["monotonic_ns"]), "end_ns": t}
    return report


def nemesis_report(seconds: int = 300, seed: int = 5) -> Any:
    """A nemesis run's report (lab.nemesis.NemesisReport) over ``seconds``: the
    primary moves between the nodes after a fault every ~10 s (a kill, a pause, a cut),
    its feed renewed every 500 ms with 1.5 s deadlines, judged by the real checker."""
    from lab.nemesis import TIMELINE_KINDS, NemesisReport
    from lab.nemesis_check import check

    rng = random.Random(seed)
    history: list[dict[str, Any]] = [{"kind": "start", "seed": seed, "duration_s": seconds, "now_ns": BASE}]
    nodes = ["edge-a", "edge-b"]
    feeds = {"edge-a": 1, "edge-b": 2}
    t, epoch, index, seq = 0.0, 1, 0, 0
    journal: dict[int, bytes] = {}

    def role(node: str, at: float, name: str, valid: float | None = None) -> dict[str, Any]:
        message = {"role": name, "epoch": epoch, "monotonic_ns": BASE + int(at * MS),
                   "valid_until": None if valid is None else BASE + int(valid * MS)}
        return {"kind": "role", "node": node, "feed": feeds[node], "first": False,
                "recv_ns": BASE + int(at * MS), "msg": message}

    while t < seconds * 1000:
        primary, standby = nodes[epoch % 2], nodes[(epoch + 1) % 2]
        history.append(role(standby, t, "standby"))
        stop = t + rng.uniform(6000, 14000)
        renew = t
        while renew < stop:
            history.append(role(primary, renew, "primary", renew + 1500))
            seq += 1
            journal[seq] = f"p{seq}".encode()
            history.append({"kind": "append", "node": primary, "sent_ns": BASE + int((renew + 5) * MS),
                            "recv_ns": BASE + int((renew + 9) * MS), "payloads": [f"p{seq}"],
                            "outcome": "answered", "results": [{"seq": seq, "epoch": epoch, "status": "ok"}]})
            renew += 500
        index += 1
        cls = rng.choice(["kill9", "pause", "partition", "crash"])
        fault = {"kind": "fault", "class": cls, "index": index, "targets": ["primary"], "hosts": [primary],
                 "start_ns": BASE + int(stop * MS), "end_ns": BASE + int((stop + 2500) * MS)}
        if cls in ("kill9", "crash"):
            fault["killed_ns"] = fault["start_ns"]
            feeds[primary] += 2
            history.append({"kind": "feed_end", "node": primary, "feed": feeds[primary] - 2,
                            "recv_ns": fault["start_ns"] + 2 * MS})
        history.append(fault)
        last_valid = renew - 500 + 1500
        t = last_valid + rng.uniform(40, 400)  # the other node promotes after the deadline
        if cls in ("pause", "partition"):
            history.append(role(primary, stop + 2500, "fenced"))
        epoch += 1
    history.sort(key=lambda r: r.get("recv_ns", r.get("start_ns", 0)))
    final = nodes[(epoch - 1) % 2]
    report = NemesisReport(seed, float(seconds), [], applied=[r for r in history if r["kind"] == "fault"],
                           elapsed=seconds + 60.0, timeline=[r for r in history if r["kind"] in TIMELINE_KINDS])
    report.result = check(history, {"edge-a": journal, "edge-b": journal}, final,
                          end_ns=BASE + int(t * MS))
    return report
