"""`lifeline drill power` and `lifeline drill enclosure` (lab/hardware_drills.py),
run as an operator runs them: one repetition each, figures as JSON, exit 0 only when the
targets are met. On loopback: no namespaces, real daemons, a real witness, simulated
devices on ptys, signed playbooks."""

from __future__ import annotations

import json

from tests.support.cli import cli


def drill(name: str) -> tuple[int, dict, str]:
    result = cli("drill", name, "--repeat", "1", "--json", timeout=60)
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output (exit {result.returncode}):\n{result.stderr}"
    return result.returncode, json.loads(lines[-1]), result.stderr


def test_power_drill_hands_over_to_the_standby_on_battery_with_no_loss() -> None:
    code, figures, stderr = drill("power")
    assert code == 0 and figures["ok"], json.dumps(figures, indent=1) + "\n" + stderr
    assert figures["drill"] == "power" and figures["repeat"] == 1
    for name in ("detection_ms", "playbook_ms", "fenced_ms", "handover_ms"):
        assert len(figures[name]) == 1 and figures[name][0] is not None and figures[name][0] >= 0, name
    # Within two UPS polls (200 ms each) plus a loaded machine's margin.
    assert figures["detection_ms"][0] < 1000
    assert figures["detection_ms"][0] <= figures["playbook_ms"][0] + 50
    assert figures["handover_ms"][0] < 5000
    assert figures["lost_acked_records"] == 0 and figures["acked_records"] > 0
    assert figures["overlap_ms"] == [0.0]
    assert figures["errors"] == []


def test_enclosure_drill_times_the_event_and_the_playbook() -> None:
    code, figures, stderr = drill("enclosure")
    assert code == 0 and figures["ok"], json.dumps(figures, indent=1) + "\n" + stderr
    assert figures["drill"] == "enclosure" and figures["repeat"] == 1
    # The door over RFC 2217 when the driver can open it; else the temperature path, said so.
    assert figures["path"] in ("door", "temperature")
    if figures["path"] == "temperature":
        assert figures["door_over_rfc2217"].startswith("unavailable: ")
        assert "FALLBACK" in stderr
    for name in ("detection_ms", "playbook_ms", "notice_ms"):
        assert len(figures[name]) == 1 and figures[name][0] is not None and figures[name][0] >= 0, name
    assert figures["detection_ms"][0] < 1500 and figures["notice_ms"][0] < 3000
    assert figures["detection_ms"][0] <= figures["notice_ms"][0] + 50
    assert figures["errors"] == []
