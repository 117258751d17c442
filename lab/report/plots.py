"""The report's plots: plain data in (the schema in :mod:`lab.report`), an inline SVG
string out. matplotlib on the Agg backend (no display), text kept as text in the SVG."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lab.figures import percentile  # noqa: E402

matplotlib.rcParams.update({
    "svg.fonttype": "none",  # text as <text>: searchable, small, no embedded glyphs
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
})

ROLE_COLOURS = {"primary": "#1f5fbf", "standby": "#c9d1dc", "fenced": "#f0a030", "demoted": "#f0a030",
                "waiting": "#eceff3", "candidate": "#b9c7e6",
                "lapsed": "#f3d9a8"}
STATE_COLOURS = {"up": "#2e9d4a", "degraded": "#f2b22e", "down": "#d13b3b", "unknown": "#b9bec7"}
UPLINK_COLOURS = ["#1f5fbf", "#8a3fbf", "#1b9e9e", "#bf6a1f"]
MARKS = {  # kind -> (colour, line style, legend label)
    "cut": ("#d13b3b", "-", "fibre cut"),
    "detected": ("#f08c00", "--", "detected (fibre DOWN)"),
    "switched": ("#2e9d4a", ":", "route on starlink"),
    "restored": ("#6b7280", "-", "restored"),
    "failback": ("#1f5fbf", ":", "route back on fibre"),
    "fault": ("#d13b3b", "-", "fault"),
}
MARKERS = {  # swimlane marker kind -> (marker, colour, size, legend label)
    "killed": ("X", "#111111", 11, "SIGKILL took effect"),
    "fenced": ("s", "#f08c00", 8, "fenced (old primary)"),
    "promoted": ("^", "#1f5fbf", 10, "RoleChanged(primary)"),
    "first_ok": ("*", "#2e9d4a", 14, "first ok on the new primary"),
}


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    # Inline: drop the XML declaration and DOCTYPE, keep the <svg> element, without its
    # RDF metadata block (a creator and date per plot, and URLs that look like links).
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], count=1, flags=re.S)


def _epoch_colour(epoch: int) -> str:
    shades = ["#1f5fbf", "#3a7bd5", "#184a96", "#4f8fe8"]
    return shades[epoch % len(shades)]


# --------------------------------------------------------------------------- swimlane


def swimlane(lane: dict[str, Any]) -> str:
    """Both nodes' roles on one time axis: the whole repetition (s) and, when the fault
    is known, the moments around it (ms), side by side."""
    origin = lane.get("origin_ns") or lane.get("zero_ns") or lane.get("start_ns") or 0
    start, end = lane.get("start_ns") or origin, lane.get("end_ns") or origin
    zoom = _swimlane_zoom(lane, origin)
    if zoom is not None:
        fig, (whole, near) = plt.subplots(1, 2, figsize=(13.5, 2.5), gridspec_kw={"width_ratios": [1.05, 1]})
    else:
        fig, whole = plt.subplots(1, 1, figsize=(13.5, 2.5))
        near = None
    _draw_lanes(whole, lane, origin, 1e9, (start - origin) / 1e9, (end - origin) / 1e9)
    whole.set_xlabel("s from the fault" if lane.get("origin_ns") else
                     "s from the start of the run" if lane.get("zero_ns") else "s")
    if near is not None and zoom is not None:
        _draw_lanes(near, lane, origin, 1e6, zoom[0], zoom[1])
        near.set_xlabel("ms from the fault")
        near.set_yticklabels([])
        near.set_title("around the fault", loc="left", fontsize=10)
    whole.set_title(str(lane.get("title", "")), loc="left", fontsize=10.5)
    handles = [Patch(color=ROLE_COLOURS["primary"], label="primary (epoch)"),
               Patch(color=ROLE_COLOURS["standby"], label="standby"),
               Patch(color=ROLE_COLOURS["fenced"], label="fenced"),
               *([Patch(color=ROLE_COLOURS["lapsed"], label="primary, valid_until passed")]
                 if any(span[2] == "lapsed" for spans in (lane.get("roles") or {}).values() for span in spans)
                 else []),
               Patch(color="#22a05a", label="may trade (valid_until)"),
               Line2D([], [], color=MARKS["fault"][0], lw=1.5, label="fault")]
    kinds = {m.get("kind") for m in lane.get("markers") or []}
    for kind, (marker, colour, size, label) in MARKERS.items():
        if kind in kinds:
            handles.append(Line2D([], [], marker=marker, color=colour, lw=0, markersize=size * 0.8, label=label))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.5, frameon=False,
               bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    return _svg(fig)


def _swimlane_zoom(lane: dict[str, Any], origin: int) -> tuple[float, float] | None:
    if not lane.get("origin_ns"):
        return None
    after = [m["at_ns"] for m in lane.get("markers") or [] if m.get("kind") != "fault" and m["at_ns"] >= origin]
    last = max(after, default=origin + 500_000_000)
    span = (last - origin) / 1e6
    return (-max(150.0, span * 0.15), span * 1.2 + 100.0)


def _draw_lanes(ax: Any, lane: dict[str, Any], origin: int, unit: float, lo: float, hi: float) -> None:
    nodes = list(lane.get("nodes") or [])
    rows = {node: len(nodes) - 1 - i for i, node in enumerate(nodes)}
    width = hi - lo
    for node, row in rows.items():
        for s, e, role, epoch in lane.get("roles", {}).get(node, []):
            x0, x1 = (s - origin) / unit, (e - origin) / unit
            if x1 < lo or x0 > hi:
                continue
            colour = _epoch_colour(int(epoch)) if role == "primary" else ROLE_COLOURS.get(role, "#dde2ea")
            ax.broken_barh([(x0, x1 - x0)], (row - 0.32, 0.5), facecolors=colour, edgecolor="white", lw=0.5)
            shown0, shown1 = max(x0, lo), min(x1, hi)
            if shown1 - shown0 > width * 0.12:
                label = f"{role} e{epoch}" if role == "primary" else role
                ax.text((shown0 + shown1) / 2, row - 0.07, label, ha="center", va="center", fontsize=8.5,
                        color="white" if role == "primary" else "#333")
        for s, e in lane.get("trading", {}).get(node, []):
            x0, x1 = (s - origin) / unit, (e - origin) / unit
            if x1 >= lo and x0 <= hi:
                ax.broken_barh([(x0, x1 - x0)], (row + 0.22, 0.12), facecolors="#22a05a")
    for mark in lane.get("markers") or []:
        x = (mark["at_ns"] - origin) / unit
        if not lo <= x <= hi:
            continue
        if mark.get("kind") == "fault":
            ax.axvline(x, color=MARKS["fault"][0], lw=1.6)
            continue
        marker, colour, size, _ = MARKERS.get(mark.get("kind"), ("o", "#333", 7, ""))
        y = rows.get(mark.get("node"), -0.6) - 0.07
        ax.plot([x], [y], marker=marker, color=colour, markersize=size, markeredgecolor="white", lw=0, zorder=5)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, len(nodes) - 0.4)
    ax.set_yticks(list(rows.values()))
    ax.set_yticklabels(list(rows.keys()))
    ax.grid(axis="x", color="#e5e8ee", lw=0.6)
    ax.set_axisbelow(True)


# --------------------------------------------------------------------------- uplinks


def uplinks(data: dict[str, Any], *, zoom: bool = False) -> str:
    """RTT, loss and state per uplink over the drill (seconds from ``origin``), or close up
    around the first cut (ms)."""
    origin = float(data.get("origin", 0.0))
    names = list(data.get("names") or [])
    colours = {n: UPLINK_COLOURS[i % len(UPLINK_COLOURS)] for i, n in enumerate(names)}
    if zoom and data.get("zoom"):
        z0, z1 = data["zoom"]
        base, unit, lo, hi = z0, 1e-3, 0.0, (z1 - z0) * 1e3
        cut = next((m["at"] for m in data.get("marks", []) if m.get("kind") == "cut"), z0)
        base, lo, hi = cut, (z0 - cut) * 1e3, (z1 - cut) * 1e3
    else:
        base, unit = origin, 1.0
        lo, hi = 0.0, float(data.get("end", origin)) - origin
    def x(t: float) -> float:
        return (t - base) / unit

    fig, (ax_rtt, ax_loss, ax_state) = plt.subplots(
        3, 1, figsize=(13.5, 6.2 if not zoom else 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.6, 1.1]})
    status = data.get("status") or []
    thresholds = data.get("thresholds") or {}
    # RTT: the daemon's median per uplink, the venue echoes.
    echo = data.get("echo") or []
    routes = sorted(data.get("routes") or [], key=lambda r: r["at"])
    if echo:
        xs, ys, cs = [], [], []
        for sent, answered in _thin(echo, 4000):
            t = x(sent)
            if lo <= t <= hi:
                xs.append(t)
                ys.append(max((answered - sent) * 1000, 0.01))
                cs.append(colours.get(_route_at(routes, sent), "#888"))
        ax_rtt.scatter(xs, ys, s=3, c=cs, alpha=0.45, lw=0, label="venue echo (default route)", rasterized=False)
    for name in names:
        xs, ys = [], []
        for at, uplinks_now in status:
            u = uplinks_now.get(name) or {}
            if u.get("rtt_ms") is not None and lo <= x(at) <= hi:
                xs.append(x(at))
                ys.append(max(float(u["rtt_ms"]), 0.01))
        if xs:
            ax_rtt.plot(xs, ys, color=colours[name], lw=1.6, label=f"{name} median RTT (window)")
        limit = (thresholds.get(name) or {}).get("rtt_ms")
        if limit:
            ax_rtt.axhline(limit, color=colours[name], ls="--", lw=1.1, label=f"{name} DEGRADED above {limit:g} ms")
    ax_rtt.set_yscale("log")
    ax_rtt.set_ylabel("RTT (ms, log)")
    ax_rtt.legend(loc="upper right", fontsize=8, ncol=3, framealpha=0.9)
    # Loss over the window.
    for name in names:
        xs, ys = [], []
        for at, uplinks_now in status:
            u = uplinks_now.get(name) or {}
            if u.get("loss") is not None and lo <= x(at) <= hi:
                xs.append(x(at))
                ys.append(float(u["loss"]) * 100)
        if xs:
            ax_loss.plot(xs, ys, color=colours[name], lw=1.5, drawstyle="steps-post", label=f"{name} loss")
        limit = (thresholds.get(name) or {}).get("loss")
        if limit is not None:
            ax_loss.axhline(limit * 100, color=colours[name], ls="--", lw=1.0)
    ax_loss.set_ylabel("loss (%)")
    ax_loss.set_ylim(-3, 103)
    ax_loss.legend(loc="upper right", fontsize=8, ncol=2, framealpha=0.9)
    # States and the route.
    rows = {name: i + 1 for i, name in enumerate(reversed(names))}
    for name, row in rows.items():
        spans = _state_spans([(at, (u.get(name) or {}).get("state") or "unknown") for at, u in status])
        for s, e, state in spans:
            ax_state.broken_barh([(x(s), x(e) - x(s))], (row - 0.35, 0.7),
                                 facecolors=STATE_COLOURS.get(state, "#ccc"))
    end = float(data.get("end", routes[-1]["at"] if routes else origin))
    for i, r in enumerate(routes):
        r_end = routes[i + 1]["at"] if i + 1 < len(routes) else end
        ax_state.broken_barh([(x(r["at"]), x(r_end) - x(r["at"]))], (-0.35, 0.7),
                             facecolors=colours.get(r["uplink"], "#888"))
    ax_state.set_yticks([0, *rows.values()])
    ax_state.set_yticklabels(["default route", *rows.keys()])
    ax_state.set_ylim(-0.6, len(rows) + 0.6)
    ax_state.legend(handles=[Patch(color=c, label=s) for s, c in STATE_COLOURS.items() if s != "unknown"]
                    + [Patch(color=colours[n], label=f"route on {n}") for n in names],
                    loc="upper right", fontsize=8, ncol=5, framealpha=0.9, bbox_to_anchor=(1.0, 1.45))
    # Marks.
    seen: set[str] = set()
    for mark in data.get("marks") or []:
        t = x(mark["at"])
        if not lo <= t <= hi:
            continue
        colour, style, label = MARKS.get(mark.get("kind"), ("#333", "-", mark.get("kind")))
        for ax in (ax_rtt, ax_loss, ax_state):
            ax.axvline(t, color=colour, ls=style, lw=1.2, label=None)
        if mark.get("kind") not in seen:
            seen.add(mark.get("kind"))
            ax_rtt.plot([], [], color=colour, ls=style, label=label)
        if zoom and mark.get("label"):
            ax_rtt.annotate(mark["label"], (t, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=8,
                            ha="right", va="top", color=colour)
    ax_rtt.legend(loc="upper left", fontsize=8, ncol=4, framealpha=0.9, bbox_to_anchor=(0, 1.22))
    ax_state.set_xlim(lo, hi)
    ax_state.set_xlabel("ms from the cut" if zoom else "s from the start of the failover phase")
    for ax in (ax_rtt, ax_loss, ax_state):
        ax.grid(axis="x", color="#e5e8ee", lw=0.6)
        ax.set_axisbelow(True)
    fig.tight_layout()
    return _svg(fig)


def _thin(points: list[Any], limit: int) -> list[Any]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)]


def _route_at(routes: list[dict[str, Any]], t: float) -> str | None:
    current = None
    for r in routes:
        if r["at"] > t:
            break
        current = r["uplink"]
    return current


def _state_spans(samples: list[tuple[float, str]]) -> list[tuple[float, float, str]]:
    out: list[tuple[float, float, str]] = []
    for i, (at, state) in enumerate(samples):
        end = samples[i + 1][0] if i + 1 < len(samples) else at
        if out and out[-1][2] == state:
            out[-1] = (out[-1][0], end, state)
        else:
            out.append((at, end, state))
    return out


# --------------------------------------------------------------------------- venues


def venues(data: dict[str, Any]) -> str:
    """The venue × uplink heatmap: each path's state over time."""
    origin = int(data.get("origin_ns") or 0)
    end = int(data.get("end_ns") or origin)
    paths = list(data.get("paths") or [])
    rows = {p: len(paths) - 1 - i for i, p in enumerate(paths)}
    fig, ax = plt.subplots(figsize=(13.5, 0.55 * len(paths) + 1.6))
    for path, row in rows.items():
        changes = sorted((c for c in data.get("changes") or [] if c.get("path") == path), key=lambda c: c["at_ns"])
        for i, change in enumerate(changes):
            stop = changes[i + 1]["at_ns"] if i + 1 < len(changes) else end
            s, e = (change["at_ns"] - origin) / 1e9, (stop - origin) / 1e9
            ax.broken_barh([(s, max(e - s, 0))], (row - 0.42, 0.84),
                           facecolors=STATE_COLOURS.get(str(change.get("state")), "#ccc"))
    for mark in data.get("marks") or []:
        t = (mark["at_ns"] - origin) / 1e9
        colour = "#111" if mark.get("kind") == "fault" else "#2563eb"
        ax.axvline(t, color=colour, lw=1.2, ls="-" if mark.get("kind") == "fault" else "--")
        if mark.get("label"):
            ax.annotate(mark["label"], (t, 1.0), xycoords=("data", "axes fraction"), rotation=0, fontsize=7.5,
                        ha="left", va="bottom", color=colour)
    ax.set_yticks(list(rows.values()))
    ax.set_yticklabels(list(rows.keys()))
    ax.set_ylim(-0.6, len(paths) - 0.4)
    ax.set_xlim(0, max((end - origin) / 1e9, 1e-3))
    ax.set_xlabel("s from the first path UP")
    ax.legend(handles=[Patch(color=c, label=s) for s, c in STATE_COLOURS.items()]
              + [Line2D([], [], color="#111", lw=1.2, label="fault"),
                 Line2D([], [], color="#2563eb", lw=1.2, ls="--", label="restored")],
              loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(paths) < 5 else -0.2), ncol=6, fontsize=8.5,
              frameon=False)
    fig.tight_layout()
    return _svg(fig)


# --------------------------------------------------------------------------- histograms


def histograms(items: list[dict[str, Any]]) -> str:
    """One histogram per series, side by side, with p50, p95 and the target."""
    n = len(items)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, item in zip(axes.flat, items):
        values = sorted(float(v) for v in item["values"])
        target = item.get("target")
        top = max(values + ([float(target)] if target else []))
        bins = max(5, min(30, len(values) * 2))
        ax.hist(values, bins=bins, range=(0, top * 1.08 or 1), color="#4f7fcf", edgecolor="white")
        ax.plot(values, [0] * len(values), "|", color="#123", markersize=12)
        p50, p95 = percentile(values, 50), percentile(values, 95)
        ax.axvline(p50, color="#2e9d4a", ls="--", lw=1.2, label=f"p50 {p50:.0f} ms")
        ax.axvline(p95, color="#f08c00", ls="--", lw=1.2, label=f"p95 {p95:.0f} ms")
        if target:
            ax.axvline(float(target), color="#d13b3b", lw=1.6, label=f"target < {float(target):.0f} ms")
        ax.set_title(f"{item['name']} (n={len(values)})", loc="left", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("repetitions")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return _svg(fig)
