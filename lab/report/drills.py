"""The drills' reports as the report's plain data (the schema in :mod:`lab.report`).

    from lab.report.drills import write
    write("lab.html", "lifeline lab", [uplink_report, standby_report, venue_report, ...])

:func:`section` picks the adapter by the report's type (its class name, so nothing here
imports a drill); :func:`swimlane` builds one swimlane from role changes and role.watch
messages, for any drill that records them (a new drill: build its ``drill`` dict with
it, append it to the list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.figures import SERIES, TARGETS_MS
from lab.report import merge_intervals, overlap_ns, trading_intervals, write_report

#: Keys of a drill's figures() left out of the figures table (shown elsewhere, or bulky).
HIDDEN = {"errors", "writer", "repetitions", "missed", "lease", "settings"}


def write(path: Path | str, title: str, reports: list[Any], *, subtitle: str = "") -> Path:
    """Render the drills' ``reports`` (any mix; None entries skipped) into ``path``."""
    return write_report(path, report_data(title, [r for r in reports if r is not None], subtitle=subtitle))


def report_data(title: str, reports: list[Any], *, subtitle: str = "") -> dict[str, Any]:
    drills = [r if isinstance(r, dict) else section(r) for r in reports]
    return {"title": title, "subtitle": subtitle, "drills": drills,
            "ok": bool(drills) and all(d.get("ok") for d in drills)}


def section(report: Any) -> dict[str, Any]:
    adapters = {"HaReport": promotion_section, "DrillReport": uplink_section, "VenueDrillReport": venue_section,
                "HardwareReport": hardware_section, "LifecycleReport": lifecycle_section,
                "NemesisReport": nemesis_section}
    kind = type(report).__name__
    if kind not in adapters:
        raise TypeError(f"lab.report: no adapter for a {kind}; hand render_html a drill dict instead")
    out = adapters[kind](report)
    trace = getattr(report, "trace", None)
    rows = breaker_rows(trace.get("events") or [] if isinstance(trace, dict) else [])
    final = trace.get("breakers") if isinstance(trace, dict) else None
    if isinstance(final, dict):  # the state at the drill's end, when the drill asked for it
        rows += [{"breaker": name, "subject": None, "change": f"{b.get('state')} at the end",
                  "figure": b.get("figure"), "threshold": b.get("threshold"), "response": b.get("response"),
                  "reason": f"{b.get('trips', 0)} trip(s); window {b.get('window_s')} s, recovery "
                            f"{b.get('recovery_s')} s"} for name, b in final.items()]
    if rows:
        out["breakers"] = rows
    return out


def breaker_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drill daemon's circuit-breaker trips and recoveries (BreakerTripped /
    BreakerRecovered events, in order): the report's breaker section."""
    rows = []
    for e in events:
        kind = e.get("kind")
        if kind not in ("BreakerTripped", "BreakerRecovered"):
            continue
        rows.append({"breaker": e.get("breaker"), "subject": e.get("subject"),
                     "change": "tripped" if kind == "BreakerTripped" else "recovered",
                     "figure": e.get("figure"), "threshold": e.get("threshold"), "response": e.get("response"),
                     "tripped_for_s": e.get("tripped_for_s"), "reason": e.get("reason"),
                     "wall_time": e.get("wall_time")})
    return rows


def _figures(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k not in HIDDEN}


def _check(name: str, ok: bool, figure: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "figure": figure}


def _ms(value: float | None) -> str:
    return "MISSED" if value is None else f"{value:.0f} ms"


# --------------------------------------------------------------------------- swimlanes


def swimlane(title: str, nodes: list[str], changes: list[dict[str, Any]], feed: list[dict[str, Any]], *,
             end_ns: int, origin_ns: int | None = None, deaths_ns: dict[str, list[int]] | None = None,
             markers: list[dict[str, Any]] | None = None, overlap_ms: float | None = None) -> dict[str, Any]:
    """One swimlane: ``changes`` are RoleChanged records ({node, role, epoch,
    monotonic_ns}), ``feed`` the role.watch messages (with ``valid_until``), ``deaths_ns``
    when a node's process was killed (its role ends there). ``overlap_ms`` is the drill's
    own figure; without it the primary intervals' overlap is computed here."""
    deaths_ns = deaths_ns or {}
    roles: dict[str, list[list[Any]]] = {}
    for node in nodes:
        mine = sorted((c for c in changes if c.get("node") == node), key=lambda c: c["monotonic_ns"])
        spans = []
        for i, change in enumerate(mine):
            start = change["monotonic_ns"]
            stop = mine[i + 1]["monotonic_ns"] if i + 1 < len(mine) else end_ns
            death = next((d for d in sorted(deaths_ns.get(node, [])) if start <= d < stop), None)
            spans.append([start, death if death is not None else stop, change["role"], int(change.get("epoch", 0))])
        roles[node] = spans
    if overlap_ms is None:
        primaries = [[[s, e] for s, e, role, _ in roles[n] if role == "primary"] for n in nodes]
        overlap_ms = overlap_ns(*primaries[:2]) / 1e6 if len(primaries) == 2 else 0.0
    trading = {node: trading_intervals(feed, node) for node in nodes}
    # The handover: from one node's last allowance to the other's first one after it.
    gaps = [(s - max(ends)) / 1e6 for n in nodes for other in nodes if other != n for s, _ in trading[n]
            if (origin_ns is None or s >= origin_ns) and (ends := [e for _, e in trading[other] if e <= s])]
    starts = [c["monotonic_ns"] for c in changes] + [m["monotonic_ns"] for m in feed if "monotonic_ns" in m]
    return {"title": title, "nodes": list(nodes), "origin_ns": origin_ns,
            "start_ns": min(starts, default=origin_ns or end_ns), "end_ns": end_ns, "roles": roles,
            "trading": trading, "markers": list(markers or []), "overlap_ms": overlap_ms,
            "trading_gap_ms": min(gaps) if gaps else None,
            "trading_overlap_ms": (overlap_ns(*[merge_intervals(trading[n]) for n in nodes[:2]]) / 1e6
                                   if len(nodes) == 2 else 0.0)}


def swimlane_from_feed(title: str, nodes: list[str], messages: list[dict[str, Any]], *, end_ns: int,
                       markers: list[dict[str, Any]] | None = None, origin_ns: int | None = None) -> dict[str, Any]:
    """A swimlane from role.watch messages alone (each with ``node``; a drill that follows
    the feeds, such as the nemesis): a role change is a message whose role differs from
    the node's previous one; a feed that ends (``unknown``) ends the role. Without
    ``origin_ns`` the plot is one panel over the whole run, in seconds."""
    changes: list[dict[str, Any]] = []
    last: dict[str, str] = {}
    for m in sorted((m for m in messages if isinstance(m.get("monotonic_ns"), int)), key=lambda m: m["monotonic_ns"]):
        role = str(m.get("role"))
        if last.get(m["node"]) != role:
            changes.append({"node": m["node"], "role": role, "epoch": int(m.get("epoch") or 0),
                            "monotonic_ns": m["monotonic_ns"]})
            last[m["node"]] = role
    return swimlane(title, nodes, changes, messages, end_ns=end_ns, origin_ns=origin_ns, markers=markers)


def repetition_swimlane(rep: Any) -> dict[str, Any] | None:
    """A promotion drill's repetition (lab.ha_drills.Repetition) as a swimlane."""
    if not rep.roles or rep.end_ns is None:
        return None
    nodes = sorted({c["node"] for c in rep.roles} | {m["node"] for m in rep.feed})
    if rep.primary and rep.new_primary:
        nodes = [rep.primary, rep.new_primary]
    fault = rep.fault_ns
    markers: list[dict[str, Any]] = []
    if fault is not None:
        markers.append({"at_ns": fault, "node": None, "kind": "fault", "label": rep.fault})
        for death in rep.deaths_ns:
            markers.append({"at_ns": death, "node": rep.primary, "kind": "killed", "label": "SIGKILL"})
        fenced = [c for c in rep.roles if c["node"] == rep.primary and c["role"] == "fenced"
                  and c["monotonic_ns"] >= fault]
        if fenced:
            markers.append({"at_ns": fenced[0]["monotonic_ns"], "node": rep.primary, "kind": "fenced",
                            "label": "fenced"})
        promoted = [c for c in rep.roles if c["node"] == rep.new_primary and c["role"] == "primary"
                    and c["monotonic_ns"] >= fault]
        if promoted:
            markers.append({"at_ns": promoted[0]["monotonic_ns"], "node": rep.new_primary, "kind": "promoted",
                            "label": f"primary, epoch {promoted[0].get('epoch')}"})
    if rep.promoted_ns is not None:
        markers.append({"at_ns": rep.promoted_ns, "node": rep.new_primary, "kind": "first_ok", "label": "first ok"})
    overlap = f"overlap {rep.overlap_ms:.0f} ms" if rep.overlap_ms is not None else "overlap not measured"
    title = (f"repetition {rep.index}: {rep.fault or 'no fault'}; {rep.new_primary} trading after "
             f"{_ms(rep.promotion_ms)}; {overlap}")
    return swimlane(title, nodes, rep.roles, rep.feed, end_ns=rep.end_ns, origin_ns=fault,
                    deaths_ns={rep.primary: list(rep.deaths_ns)}, markers=markers, overlap_ms=rep.overlap_ms)


# --------------------------------------------------------------------------- adapters


def promotion_section(report: Any) -> dict[str, Any]:
    """The standby, partition and region drills (lab.ha_drills.HaReport)."""
    figures = report.figures()
    promotions = report.series("promotion_ms")
    overlaps = [o for o in figures["overlap_ms"] if o is not None]
    lanes = [lane for rep in report.repetitions if (lane := repetition_swimlane(rep)) is not None]
    trading = [lane["trading_overlap_ms"] for lane in lanes]
    p95 = figures.get("promotion_p95_ms")
    checks = [
        _check(f"promotion p95 < {report.target_ms:.0f} ms", bool(promotions) and p95 is not None
               and p95 < report.target_ms, f"p95 {_ms(p95)} over {len(promotions)} of {len(report.repetitions)}"),
        _check("no acknowledged record lost", figures["lost_acked_records"] == 0,
               f"{figures['lost_acked_records']} lost of {figures['acked_records']} acknowledged"),
        _check("overlap 0 ms in every repetition (primary intervals)",
               bool(overlaps) and len(overlaps) == len(report.repetitions) and max(overlaps) == 0,
               f"max overlap {_ms(max(overlaps)) if overlaps else 'not measured'}"),
        _check("trading intervals never overlap (role.watch valid_until)", bool(trading) and max(trading) == 0,
               f"max {_ms(max(trading)) if trading else 'not measured'} over {len(trading)} swimlane(s)"),
        _check("no automatic failback", figures["failbacks"] == 0, f"{figures['failbacks']} failback(s)"),
        _check("old primary back as standby and caught up, record for record",
               all(figures["caught_up"]) and all(figures["back_as_standby"]) and bool(report.repetitions),
               f"{sum(figures['caught_up'])} of {len(report.repetitions)}"),
    ]
    titles = {"standby": "standby drill: kill -9 of the primary",
              "partition": "partition drill: the primary cut from the witness",
              "region": "region drill: the primary's whole site lost (etcd in 3 sites)"}
    return {"name": report.drill, "title": titles.get(report.drill, report.drill), "ok": report.ok,
            "checks": checks, "figures": _figures(figures), "errors": figures["errors"], "swimlanes": lanes,
            "histograms": [{"name": "promotion (fault to the new primary's first ok)", "values": promotions,
                            "target": report.target_ms},
                           {"name": "RoleChanged(primary) of the new primary", "values": report.series("role_ms")},
                           {"name": "old primary fenced", "values": report.series("fenced_ms")}]}


def uplink_section(report: Any) -> dict[str, Any]:
    """The uplink drill (lab.drills.DrillReport)."""
    figures = report.figures()
    failover = report.series("failover_ms")
    p95 = figures.get("failover_p95_ms")
    checks = [
        _check("failover p95 < 1000 ms (route on starlink)", p95 is not None and p95 < 1000,
               f"p95 {_ms(p95)} over {len(failover)} cut(s)"),
        _check("every cut and restore measured", figures["missed"] == 0 and bool(report.repetitions),
               f"{figures['missed']} missed of {figures['repeat']}"),
        _check("no route errors", report.route_errors == 0, f"{report.route_errors}"),
    ]
    if report.flaps is not None:
        checks.append(_check("no flap in the loss soak", report.flaps == 0,
                             f"{report.flaps} flaps in {report.soak_rounds} rounds"))
    out = {"name": "uplink", "title": "uplink drill: the fibre cut upstream of the edge", "ok": report.ok,
           "checks": checks, "figures": _figures(figures), "errors": report.errors,
           "histograms": [{"name": "failover (cut to route on starlink)", "values": failover, "target": 1000.0},
                          {"name": "detection (fibre DOWN)", "values": report.series("detection_ms")},
                          {"name": "venue reachable again", "values": report.series("venue_ms")},
                          {"name": "failback (restore to route on fibre)", "values": report.series("failback_ms")}]}
    if report.trace.get("status"):
        out["uplinks"] = uplink_timeline(report.trace)
    return out


def uplink_timeline(trace: dict[str, Any]) -> dict[str, Any]:
    """The uplink drill's trace (lab.drills.failover_trace) as the ``uplinks`` plot data."""
    status = trace["status"]
    names = list(trace.get("thresholds") or status[0][1])
    events, routes = trace.get("events") or [], trace.get("routes") or []
    marks: list[dict[str, Any]] = []
    zoom_end = None
    for i, cut in enumerate(trace.get("cuts") or [], 1):
        marks.append({"at": cut, "kind": "cut", "label": f"cut {i}"})
        detected = next((e["at"] for e in events if e["at"] >= cut and e.get("kind") == "UplinkHealthChanged"
                         and e.get("uplink") == names[0] and e.get("state") == "down"), None)
        switched = next((r["at"] for r in routes if r["at"] >= cut and r["uplink"] != names[0]), None)
        if detected is not None:
            marks.append({"at": detected, "kind": "detected", "label": "fibre DOWN"})
        if switched is not None:
            marks.append({"at": switched, "kind": "switched", "label": "route switched"})
        if i == 1:
            zoom_end = max([t for t in (detected, switched) if t is not None], default=cut + 1.0) + 0.8
    for restore in trace.get("restores") or []:
        marks.append({"at": restore, "kind": "restored", "label": "restored"})
        back = next((r["at"] for r in routes if r["at"] >= restore and r["uplink"] == names[0]), None)
        if back is not None:
            marks.append({"at": back, "kind": "failback", "label": "route back"})
    cuts = trace.get("cuts") or []
    return {"origin": status[0][0], "end": status[-1][0], "names": names, "status": status,
            "echo": trace.get("venue") or [], "routes": routes, "thresholds": trace.get("thresholds") or {},
            "marks": marks, "zoom": [cuts[0] - 0.5, zoom_end] if cuts and zoom_end else None}


def venue_section(report: Any) -> dict[str, Any]:
    """The venue drill (lab.venue_drills.VenueDrillReport)."""
    figures = report.figures()
    detection = report.series(None, "detection_ms")
    p95 = figures.get("detection_p95_ms")
    target = figures["target_ms"]
    checks = [
        _check(f"detection p95 < {target:.0f} ms", p95 is not None and p95 < target,
               f"p95 {_ms(p95)} over {len(detection)} path(s)"),
        _check("every expected change seen", not report.missed(), f"{len(report.missed())} missed"),
        _check("starlink paths stayed UP while the fibre path failed", report.starlink_left_up() == 0,
               f"{report.starlink_left_up()} left UP"),
        _check("the uplinks stayed UP and the route stayed", report.uplinks_left_up() == 0
               and report.route_moves() == 0,
               f"{report.uplinks_left_up()} uplink changes, {report.route_moves()} route moves"),
        _check("the dead-man switch armed, and re-armed after the venue's restart",
               bool(report.deadman_armed) and bool(report.deadman_rearmed), f"{report.deadman_arms} arms"),
    ]
    out = {"name": "venue", "title": "venue drill: silent through the fibre only, then dead", "ok": report.ok,
           "checks": checks, "figures": _figures(figures), "errors": report.all_errors(),
           "histograms": [{"name": "detection (fault to DEGRADED)", "values": detection, "target": target},
                          {"name": "DOWN", "values": report.series(None, "down_ms")},
                          {"name": "UP again (from the restore)", "values": report.series(None, "recovery_ms")}]}
    events = [e for e in (report.trace.get("events") or []) if e.get("kind") == "VenueHealthChanged"
              and isinstance(e.get("monotonic_ns"), int)]
    if events:
        paths = [f"{v}/{u}" for v in figures["venues"] for u in figures["uplinks"]]
        marks = []
        short = {"fibre_only": "fibre only", "venue_dead": "venue dead"}
        for rep in report.repetitions:
            for phase, result in rep.phases.items():
                if result.fault_ns is not None:
                    marks.append({"at_ns": result.fault_ns, "kind": "fault",
                                  "label": f"{rep.index}: {short.get(phase, phase)}"})
                if result.restore_ns is not None:
                    marks.append({"at_ns": result.restore_ns, "kind": "restored", "label": ""})
        out["venues"] = {"origin_ns": min(e["monotonic_ns"] for e in events),
                         "end_ns": report.trace.get("end_ns") or max(e["monotonic_ns"] for e in events),
                         "paths": paths, "marks": marks,
                         "changes": [{"path": f"{e.get('venue')}/{e.get('uplink')}", "at_ns": e["monotonic_ns"],
                                      "state": e.get("state")} for e in events]}
    return out


def hardware_section(report: Any) -> dict[str, Any]:
    """The power and enclosure drills (lab.hardware_drills.HardwareReport)."""
    figures = report.figures()
    targets = TARGETS_MS[report.drill]
    checks = [_check(f"repetition {rep.index}", report.rep_ok(rep),
                     ", ".join(f"{k} {_ms(v)}" for k, v in rep.figures.items()) or "; ".join(rep.errors)[:200])
              for rep in report.repetitions]
    for name, limit in targets.items():
        values = report.series(name)
        checks.append(_check(f"{name.removesuffix('_ms')} < {limit:.0f} ms", bool(values) and max(values) < limit,
                             f"max {_ms(max(values)) if values else None}"))
    return {"name": report.drill, "title": f"{report.drill} drill", "ok": report.ok, "checks": checks,
            "figures": _figures(figures), "errors": figures["errors"],
            "histograms": [{"name": name.removesuffix("_ms"), "values": report.series(name),
                            "target": targets.get(name)} for name in SERIES[report.drill]]}


def lifecycle_section(report: Any) -> dict[str, Any]:
    """The lifecycle drill (lab.lifecycle.LifecycleReport)."""
    return {"name": "lifecycle", "title": "lifecycle drill: a real `lifeline run` under watch", "ok": report.ok,
            "checks": [_check(c.name, c.ok, c.figure) for c in report.checks], "figures": dict(report.figures)}


# --------------------------------------------------------------------------- the nemesis

#: Seconds of the run per close-up swimlane below the whole run's.
NEMESIS_WINDOW_S = 120.0
#: Informational findings listed one by one in the report.
NEMESIS_INFO = 5


def nemesis_feed(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The nemesis's role.watch records as the feed messages a swimlane reads ({node,
    role, epoch, monotonic_ns, valid_until}), as the engine contract reads them: a
    ``primary`` whose ``valid_until`` passes before the node's next message lapses there
    (role ``lapsed``: a frozen or cut-off node's feed cannot say so itself), and a feed
    connection that ends ends the role (``unknown``)."""
    out: list[dict[str, Any]] = []
    for r in timeline:
        if r.get("kind") == "role":
            msg = r.get("msg") or {}
            stamp = msg.get("monotonic_ns")
            at = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else int(r["recv_ns"])
            out.append({"node": r["node"], "role": str(msg.get("role")), "epoch": int(msg.get("epoch") or 0),
                        "monotonic_ns": at, "valid_until": msg.get("valid_until")})
        elif r.get("kind") == "feed_end":
            out.append({"node": r["node"], "role": "unknown", "epoch": 0, "monotonic_ns": int(r["recv_ns"])})
    out.sort(key=lambda m: m["monotonic_ns"])
    lapses = []
    for node in {m["node"] for m in out}:
        mine = [m for m in out if m["node"] == node]
        for m, nxt in zip(mine, [*mine[1:], None]):
            until = m.get("valid_until")
            if m["role"] == "primary" and isinstance(until, int) and (nxt is None or until < nxt["monotonic_ns"]):
                lapses.append({"node": node, "role": "lapsed", "epoch": m["epoch"], "monotonic_ns": until})
    return sorted(out + lapses, key=lambda m: m["monotonic_ns"])


def nemesis_promotions(feed: list[dict[str, Any]], faults: list[dict[str, Any]],
                       trading: dict[str, list[list[int]]]) -> list[dict[str, Any]]:
    """Each new primary (a node's first ``primary`` message of an epoch) after a fault:
    ``fault_ms`` from the fault (its kill when it killed, else its start) and ``gap_ms``,
    the time in which no node may trade, from the last allowance of either node before
    it to the new primary's first."""
    out = []
    seen: set[tuple[str, int]] = set()
    starts = sorted(faults, key=lambda f: f["start_ns"])
    for m in feed:
        key = (m["node"], m["epoch"])
        if m["role"] != "primary" or key in seen:
            continue
        seen.add(key)
        before = [f for f in starts if f["start_ns"] <= m["monotonic_ns"]]
        if not before or len(seen) == 1:
            continue  # the first election
        fault = before[-1]
        origin = fault.get("killed_ns") or fault["start_ns"]
        ends = [e for spans in trading.values() for _, e in spans if e <= m["monotonic_ns"]]
        out.append({"node": m["node"], "epoch": m["epoch"], "at_ns": m["monotonic_ns"], "fault": fault.get("class"),
                    "fault_ms": max(0.0, (m["monotonic_ns"] - origin) / 1e6),
                    "gap_ms": (m["monotonic_ns"] - max(ends)) / 1e6 if ends else None})
    return out


def nemesis_section(report: Any) -> dict[str, Any]:
    """The nemesis (lab.nemesis.NemesisReport): the checker's verdict as checks,
    its figures, the swimlane of both nodes over the whole run (and close-ups) from the
    role.watch history with the faults marked, and promotion times."""
    figures = report.figures()
    result = report.result
    fig = result.figures if result is not None else {}
    timeline = list(report.timeline or [])
    faults = [r for r in timeline if r.get("kind") == "fault" and isinstance(r.get("start_ns"), int)]

    def check(name: str, key: str, figure: str) -> dict[str, Any]:
        value = fig.get(key)
        return _check(name, value == 0, figure if value is not None else "not checked (the run did not finish)")

    checks = [
        check("no acknowledged record lost", "lost",
              f"{fig.get('lost')} lost of {fig.get('records_acked')} acknowledged"),
        check("no seq acknowledged twice with different payloads", "double_acked", f"{fig.get('double_acked')}"),
        check("no ok outside the node's trading interval (valid_until)", "outside_interval",
              f"{fig.get('outside_interval')} of {fig.get('requests')} requests"),
        check("the feeds never allowed trading on both nodes at once", "overlaps",
              f"{fig.get('feed_overlap_ms')} ms"),
        check("final journal: no duplicate payload", "duplicates", f"{fig.get('duplicates')}"),
        check("final journal: nothing the writer did not send", "unknown_payloads", f"{fig.get('unknown_payloads')}"),
        check("every journal agrees with the final primary's", "diverged", f"{fig.get('diverged')}"),
        _check("every in-doubt record read back", result is not None
               and fig["in_doubt_present"] + fig["in_doubt_absent"] == fig["records_in_doubt"],
               f"{fig.get('in_doubt_present')} present, {fig.get('in_doubt_absent')} absent of "
               f"{fig.get('records_in_doubt')}"),
        _check("the run completed: faults applied, the pair settled", not report.errors and result is not None,
               f"{len(report.applied)} faults, {len(report.errors)} error(s)"),
    ]
    out: dict[str, Any] = {
        "name": "nemesis", "title": f"nemesis: seed {report.seed}, {report.duration:g} s of random faults",
        "ok": report.ok, "checks": checks, "errors": list(report.errors),
        "figures": {k: v for k, v in figures.items() if k not in HIDDEN | {"violations", "drill"}},
        "findings": _nemesis_findings(result)}
    feed = nemesis_feed(timeline)
    nodes = sorted({m["node"] for m in feed})
    if not feed or len(nodes) != 2:
        return out
    end_ns = max([m["monotonic_ns"] for m in feed] + [f.get("end_ns") or f["start_ns"] for f in faults])
    markers: list[dict[str, Any]] = []
    for f in faults:
        hosts = list(f.get("hosts") or [])
        markers.append({"at_ns": f["start_ns"], "node": None, "kind": "fault",
                        "label": f"#{f.get('index')} {f.get('class')} {' '.join(hosts)}"})
        killed = f.get("killed_ns") or (f["start_ns"] if f.get("class") == "kill9" else None)
        if killed is not None and hosts:
            markers.append({"at_ns": killed, "node": hosts[0] if hosts[0] in nodes else None, "kind": "killed",
                            "label": f"SIGKILL {hosts[0]}"})
    last: dict[str, str] = {}
    for m in feed:
        if m["role"] == "fenced" and last.get(m["node"]) != "fenced":
            markers.append({"at_ns": m["monotonic_ns"], "node": m["node"], "kind": "fenced", "label": "fenced"})
        last[m["node"]] = m["role"]
    lane = swimlane_from_feed(f"the whole run: {len(faults)} faults (red lines), roles and trading intervals "
                              "from role.watch", nodes, feed, end_ns=end_ns, markers=markers)
    promotions = nemesis_promotions(feed, faults, lane["trading"])
    for p in promotions:
        lane["markers"].append({"at_ns": p["at_ns"], "node": p["node"], "kind": "promoted", "label": f"epoch {p['epoch']}"})
    lane["zero_ns"] = lane["start_ns"]
    if "feed_overlap_ms" in fig:
        lane["trading_overlap_ms"] = fig["feed_overlap_ms"]  # the checker's (engine view: closed feeds too)
    lanes = [lane]
    step = int(NEMESIS_WINDOW_S * 1e9)
    if end_ns - lane["start_ns"] > step * 1.5:
        for lo in range(lane["start_ns"], end_ns, step):
            hi = min(lo + step, end_ns)
            lanes.append(_window(lane, lo, hi, f"{(lo - lane['start_ns']) / 1e9:.0f}-"
                                               f"{(hi - lane['start_ns']) / 1e9:.0f} s of the run"))
    out["swimlanes"] = lanes
    out["histograms"] = [
        {"name": "fault to a new primary (role.watch)",
         "values": [p["fault_ms"] for p in promotions], "target": None},
        {"name": "no node may trade (before a new primary)",
         "values": [p["gap_ms"] for p in promotions if p["gap_ms"] is not None], "target": None}]
    return out


def _nemesis_findings(result: Any) -> list[dict[str, Any]]:
    """Every violation; of the informational findings (in-doubt records read back) the
    first few and a count (``--history`` lists them all)."""
    if result is None:
        return []
    out = [{"rule": f.rule, "severity": f.severity, "message": f.message} for f in result.violations]
    info = [f for f in result.findings if f.severity != "violation"]
    out += [{"rule": f.rule, "severity": f.severity, "message": f.message} for f in info[:NEMESIS_INFO]]
    fig = result.figures
    if len(info) > NEMESIS_INFO and "records_in_doubt" in fig:
        out.append({"rule": "in_doubt", "severity": "info",
                    "message": f"... {fig['records_in_doubt']} records in doubt in all, read back: "
                               f"{fig['in_doubt_present']} present, {fig['in_doubt_absent']} absent "
                               "(--history lists them)"})
    return out


def _window(lane: dict[str, Any], lo: int, hi: int, title: str) -> dict[str, Any]:
    """``lane`` drawn over [lo, hi] only (the axis stays the run's), its overlaps within."""
    def clip(spans: list[list[int]]) -> list[list[int]]:
        return [[max(s, lo), min(e, hi)] for s, e in spans if e > lo and s < hi]

    nodes = lane["nodes"]
    primaries = [clip([[s, e] for s, e, role, _ in lane["roles"][n] if role == "primary"]) for n in nodes]
    trading = [clip(lane["trading"][n]) for n in nodes]
    return {**lane, "title": title, "start_ns": lo, "end_ns": hi,
            "overlap_ms": overlap_ns(*primaries) / 1e6, "trading_overlap_ms": overlap_ns(*trading) / 1e6,
            "trading_gap_ms": None}
