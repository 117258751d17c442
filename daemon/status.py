"""The human form of `lifeline status` (the control socket's ``status`` answer), shared by
the CLI and the lab's lifecycle drill."""

from __future__ import annotations

from typing import Any

from daemon.core.durations import format_duration_short  # noqa: F401 - re-exported (the CLI)


def format_status(status: dict[str, Any]) -> str:
    """The human table of `lifeline status`."""
    lines = [
        f"lifeline {status.get('version', '?')} on {status.get('node', '?')} "
        f"(pid {status.get('pid', '?')}, up {format_duration_short(status.get('uptime_s', 0))}"
        f"{'' if status.get('ready') else ', NOT READY'})",
        status.get("summary", ""),
        "",
    ]
    rows = [("SERVICE", "STATE", "HEALTH", "SUMMARY")]
    for service in status.get("services", []):
        rows.append((service["name"], service.get("lifecycle", "?"), service.get("health", "?"),
                     service.get("summary", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    events = status.get("events", {})
    subscribers = events.get("subscribers", [])
    lines.append("")
    lines.append(f"events: {events.get('published', 0)} published, {events.get('dropped', 0)} dropped "
                 f"for slow subscribers, {len(subscribers)} subscriber(s)")
    return "\n".join(lines)
