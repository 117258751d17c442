"""The drill report: one self-contained HTML file (no network, no script, no web font)
with the pictures a risk reviewer signs off, drawn by matplotlib as inline SVG.

    from lab.report import render_html, write_report
    html = render_html({"title": ..., "drills": [drill, ...]})     # plain data in, a string out

The input is plain data (dicts, lists, numbers, strings: JSON-able, so a drill's data can
be saved and rendered later). :mod:`lab.report.drills` turns the drills' report objects
into it (``sections(...)``); a new drill hands over one ``drill`` dict of its own. Times
are CLOCK_MONOTONIC: ``*_ns`` integers, or ``at`` floats in seconds where the drill
measured with ``time.monotonic()`` (the same clock). ::

    report = {"title": str, "ok": bool (default: every drill ok), "subtitle": str,
              "drills": [drill, ...]}
    drill  = {"name": "standby", "title": str, "ok": bool,
              "checks":  [{"name": str, "ok": bool, "figure": str}],   # PASS/FAIL lines
              "figures": {key: scalar | list | dict},                   # the figures table
              "errors":  [str],
              "findings": [{"rule": str, "severity": str, "message": str}],  # a checker's
              "swimlanes":  [swimlane],     # promotion drills: both nodes' roles on one axis
              "uplinks":    uplinks,        # RTT and loss per uplink against the thresholds
              "venues":     venues,         # venue x uplink health over time
              "histograms": [{"name": str, "values": [ms], "target": ms | None}]}
    swimlane = {"title": str, "nodes": [a, b], "origin_ns": int (the fault: t = 0),
                "start_ns": int, "end_ns": int, "zero_ns": int (no fault: the axis' 0),
                "roles":   {node: [[start_ns, end_ns, role, epoch], ...]},
                "trading": {node: [[start_ns, end_ns], ...]},   # role.watch: primary, before valid_until
                "markers": [{"at_ns": int, "node": str | None, "kind": str, "label": str}],
                #          kind: fault, killed, promoted, fenced, first_ok
                "overlap_ms": float, "trading_overlap_ms": float,
                "trading_gap_ms": float | None}   # the handover: no node may trade
    uplinks = {"origin": s, "end": s, "names": [uplink, ...],
               "status": [[at, {uplink: {"state", "loss", "rtt_ms"}}], ...],   # the daemon's window
               "echo": [[sent, answered], ...],                  # venue echo over the default route
               "routes": [{"at": s, "uplink": str}],             # the kernel's default route
               "thresholds": {uplink: {"rtt_ms": float, "loss": float}},
               "marks": [{"at": s, "kind": cut|detected|switched|restored|failback, "label": str}],
               "zoom": [from_s, to_s] | None}
    venues  = {"origin_ns": int, "end_ns": int, "paths": ["kraken/fibre", ...],
               "changes": [{"path": str, "at_ns": int, "state": str}],
               "marks": [{"at_ns": int, "kind": fault|restored, "label": str}]}

:func:`trading_intervals` is the engine contract of the README turned into intervals:
after a ``role.watch`` message at ``t`` the node may trade iff it says ``primary`` and
the clock is before its ``valid_until``, until the node's next message.
"""

from __future__ import annotations

import datetime
import html
import json
import socket
from pathlib import Path
from typing import Any

__all__ = ["render_html", "write_report", "trading_intervals", "overlap_ns", "merge_intervals"]


def trading_intervals(feed: list[dict[str, Any]], node: str) -> list[list[int]]:
    """``node``'s trading intervals by its ``role.watch`` messages (each with ``node``,
    ``role``, ``monotonic_ns``, ``valid_until``): message i allows [t_i, min(valid_until_i,
    t_i+1)); adjacent allowances (renewals) merged."""
    mine = sorted((m for m in feed if m.get("node") == node and isinstance(m.get("monotonic_ns"), int)),
                  key=lambda m: m["monotonic_ns"])
    out: list[list[int]] = []
    for i, message in enumerate(mine):
        until = message.get("valid_until")
        if message.get("role") != "primary" or not isinstance(until, int):
            continue
        start = message["monotonic_ns"]
        end = min(until, mine[i + 1]["monotonic_ns"]) if i + 1 < len(mine) else until
        if end > start:
            out.append([start, end])
    return merge_intervals(out)


def merge_intervals(intervals: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def overlap_ns(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


# --------------------------------------------------------------------------- HTML

CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 24px 32px; color: #1c2330;
       background: #fff; max-width: 1320px; }
h1 { font-size: 24px; margin: 0 0 4px 0; }
h2 { font-size: 20px; margin: 36px 0 8px 0; padding-top: 12px; border-top: 2px solid #d0d6e0; }
h3 { font-size: 15px; margin: 18px 0 6px 0; color: #334; }
.sub { color: #556; font-size: 13px; margin-bottom: 14px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: bold;
         font-size: 0.8em; vertical-align: middle; margin-left: 8px; }
.pass { background: #1a7f37; } .fail { background: #c62828; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px 0; }
th, td { border: 1px solid #d0d6e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f8; }
td.ok { color: #1a7f37; font-weight: bold; } td.bad { color: #c62828; font-weight: bold; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cols { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 8px 0 16px 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 12.5px; color: #445; max-width: 1250px; }
.errors { color: #c62828; font-size: 13px; white-space: pre-wrap; }
.overlap { font-weight: bold; }
nav { font-size: 13px; margin: 8px 0 0 0; }
nav a { margin-right: 14px; }
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML document (a string; nothing is written)."""
    from lab.report import plots  # lazy: matplotlib (the test extra), only when a report is drawn

    drills = list(report.get("drills") or [])
    ok = report.get("ok", all(d.get("ok", False) for d in drills) and bool(drills))
    title = str(report.get("title") or "lifeline drill report")
    generated = report.get("generated") or datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    host = report.get("host") or socket.gethostname()
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # No script, no network: the policy says so, and the browser enforces it.
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
             'style-src \'unsafe-inline\'; img-src data:">',
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f'<h1>{_e(title)}{_badge(ok)}</h1>',
             f'<div class="sub">{_e(report.get("subtitle") or "")} generated {_e(generated)} on {_e(host)}; '
             "every time is the host's CLOCK_MONOTONIC, which all the lab's network namespaces share.</div>"]
    if drills:
        parts.append("<table><tr><th>drill</th><th>result</th><th>checks</th></tr>")
        for d in drills:
            checks = d.get("checks") or []
            passed = sum(1 for c in checks if c.get("ok"))
            parts.append(f'<tr><td><a href="#{_id(d)}">{_e(d.get("title") or d.get("name"))}</a></td>'
                         f'{_okcell(d.get("ok", False))}<td class="num">{passed}/{len(checks)}</td></tr>')
        parts.append("</table>")
    for d in drills:
        parts.append(_drill_html(d, plots))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path | str, report: dict[str, Any]) -> Path:
    """Render and write ``report`` to ``path`` (created or replaced)."""
    path = Path(path)
    text = render_html(report)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _drill_html(d: dict[str, Any], plots: Any) -> str:
    name = str(d.get("name") or "drill")
    out = [f'<section id="{_id(d)}"><h2>{_e(d.get("title") or name)}{_badge(d.get("ok", False))}</h2>']
    checks = d.get("checks") or []
    figures = d.get("figures") or {}
    out.append('<div class="cols">')
    if checks:
        out.append("<div><h3>Checks</h3><table><tr><th>check</th><th>result</th><th>figure</th></tr>")
        for c in checks:
            out.append(f'<tr><td>{_e(c.get("name"))}</td>{_okcell(bool(c.get("ok")))}'
                       f'<td>{_e(c.get("figure", ""))}</td></tr>')
        out.append("</table></div>")
    out.append("</div>")
    if figures:
        # Long tables in three columns side by side.
        items = list(figures.items())
        size = max(8, -(-len(items) // 3))
        out.append('<h3>Figures</h3><div class="cols">')
        for i in range(0, len(items), size):
            out.append("<table><tr><th>figure</th><th>value</th></tr>")
            for key, value in items[i:i + size]:
                out.append(f'<tr><td>{_e(key)}</td><td class="num">{_e(_value(value))}</td></tr>')
            out.append("</table>")
        out.append("</div>")
    findings = d.get("findings") or []
    if findings:
        out.append("<h3>Findings</h3><table><tr><th>rule</th><th>severity</th><th>finding</th></tr>")
        for f in findings:
            bad = f.get("severity") == "violation"
            out.append(f'<tr><td>{_e(f.get("rule"))}</td><td class="{"bad" if bad else ""}">'
                       f'{_e(f.get("severity"))}</td><td>{_e(str(f.get("message"))[:400])}</td></tr>')
        out.append("</table>")
    breakers = d.get("breakers") or []
    if breakers:
        out.append("<h3>Circuit breakers</h3><table><tr><th>breaker</th><th>change</th><th>figure</th>"
                   "<th>threshold</th><th>response / held</th><th>reason</th></tr>")
        for b in breakers:
            tripped = b.get("change") == "tripped"
            what = b.get("breaker") if not b.get("subject") else f'{b.get("breaker")} {b.get("subject")}'
            held = b.get("response") if b.get("tripped_for_s") is None else f'held {_value(b.get("tripped_for_s"))} s'
            out.append(f'<tr><td>{_e(what)}</td><td class="{"bad" if tripped else ""}">{_e(b.get("change"))}</td>'
                       f'<td class="num">{_e(_value(b.get("figure")))}</td>'
                       f'<td class="num">{_e(_value(b.get("threshold")))}</td><td>{_e(held)}</td>'
                       f'<td>{_e(str(b.get("reason"))[:300])}</td></tr>')
        out.append("</table>")
    errors = d.get("errors") or []
    if errors:
        out.append('<h3>Errors</h3><div class="errors">' + "\n".join(_e(str(e)[:600]) for e in errors) + "</div>")
    for i, lane in enumerate(d.get("swimlanes") or [], 1):
        overlap = lane.get("overlap_ms")
        trading = lane.get("trading_overlap_ms")
        words = (f'overlap {_ms(overlap)}' if overlap is not None else "overlap not measured")
        caption = (f'<span class="overlap">{_e(words)}</span> (primary intervals, the drill\'s figure); '
                   f"trading overlap {_e(_ms(trading))} (role.watch: primary and before valid_until)"
                   + (f"; no node could trade for {_e(_ms(lane['trading_gap_ms']))} at the handover. "
                      if lane.get("trading_gap_ms") is not None else ". ") +
                   "Bars: each node's role from its RoleChanged events (primary labelled with its epoch); "
                   "green strip: the interval in which the feed allowed the engine to trade; "
                   "red line: the fault; markers: kill, fence, promotion, the new primary's first ok.")
        out.append(_figure(f"swimlane swimlane-{name}", f"swimlane-{name}-{i}", plots.swimlane(lane), caption))
    if d.get("uplinks"):
        up = d["uplinks"]
        caption = ("Top: RTT — each uplink's median over the daemon's probe window (uplink.status, sampled every "
                   "100 ms) against its DEGRADED threshold (dashed), and every venue echo over the default route "
                   "(dots, coloured by the uplink the route was on). Middle: loss over the window against the "
                   "threshold. Bottom: each uplink's state and the kernel's default route. Marks: cut, detection "
                   "(fibre DOWN), route switch, restore, failback.")
        out.append(_figure("uplinks", f"uplinks-{name}", plots.uplinks(up), caption))
        if up.get("zoom"):
            out.append(_figure("uplinks zoom", f"uplinks-zoom-{name}", plots.uplinks(up, zoom=True),
                               "The first cut, close up (ms from the cut)."))
    if d.get("venues"):
        out.append(_figure("venues", f"venues-{name}", plots.venues(d["venues"]),
                           "Each venue × uplink path's health as the daemon published it (VenueHealthChanged); "
                           "faults and restores marked."))
    histograms = [h for h in d.get("histograms") or [] if h.get("values")]
    if histograms:
        out.append(_figure("histograms", f"histograms-{name}", plots.histograms(histograms),
                           "Across repetitions: p50 and p95 (nearest rank) and the target."))
    out.append("</section>")
    return "\n".join(out)


def _figure(cls: str, ident: str, svg: str, caption: str) -> str:
    return f'<figure class="plot {cls}" id="{_e(ident)}">{svg}<figcaption>{caption}</figcaption></figure>'


def _id(d: dict[str, Any]) -> str:
    return "drill-" + "".join(ch if ch.isalnum() else "-" for ch in str(d.get("name") or "drill"))


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _badge(ok: bool) -> str:
    return f' <span class="badge {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span>'


def _okcell(ok: bool) -> str:
    return f'<td class="{"ok" if ok else "bad"}">{"PASS" if ok else "FAIL"}</td>'


def _ms(value: Any) -> str:
    if value is None:
        return "not measured"
    return f"{value:.0f} ms" if float(value) == round(float(value)) or abs(value) >= 1 else f"{value:.3f} ms"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        if not value:
            return "-"
        text = ", ".join(_value(v) for v in value)
        return text if len(text) <= 90 else text[:87] + "..."
    if isinstance(value, dict):
        text = json.dumps(value, default=str)
        return text if len(text) <= 90 else text[:87] + "..."
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m lab.report DATA.json OUT.html``: render saved report data."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.report", description=main.__doc__)
    parser.add_argument("data", type=Path, help="the report's data (JSON, the schema in lab/report/__init__.py)")
    parser.add_argument("out", type=Path, help="the HTML file to write")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.data.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"{args.data}: {exc}")
    write_report(args.out, data)
    print(f"report: {args.out}")
    return 0
