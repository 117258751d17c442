"""The hardware service in a real `lifeline run`, against the device simulators on real
ptys: readings in `lifeline status`, the UPS going on battery becomes UpsOnBattery,
the enclosure getting hot becomes EnclosureTemperatureHigh, a silent UPS becomes
DeviceStale (and the status says so), and `lifeline hardware read` / `lifeline sim`
work as an operator commissioning a site would use them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon.config import dump_toml
from lab.procs import DaemonProcess, quiet_system
from lab.sim import enclosure, ups
from tests.support.cli import ROOT, cli
from tests.support.waiting import until


def events(socket: Path) -> list[dict[str, Any]]:
    result = cli("events", "--json", "--limit", "200", "--socket", str(socket))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def kinds(socket: Path) -> list[str]:
    return [e["kind"] for e in events(socket)]


def test_a_daemon_reads_the_simulated_ups_and_enclosure_and_reports_events(tmp_path: Path) -> None:
    ups_sim, enc_sim = ups.start_simulator(), enclosure.start_simulator()
    socket = tmp_path / "run" / "control.sock"
    config = tmp_path / "lifeline.toml"
    config.write_text(dump_toml({
        "node": {"name": "edge-a", "state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
        "control": {"socket": str(socket), "group": ""},
        "metrics": {"enabled": False},
        "system": quiet_system(),
        "hardware": {
            "ups": {"port": ups_sim.path, "interval": "200ms", "stale_after": "1500ms", "runtime_threshold": "5m"},
            "enclosure": {"port": enc_sim.path, "interval": "200ms", "stale_after": "3s", "temperature_high": 40.0},
        },
    }))
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()

        def hardware_status() -> dict[str, Any]:
            status = json.loads(cli("status", "--json", "--socket", str(socket)).stdout)
            return next(s for s in status["services"] if s["name"] == "hardware")

        assert until(lambda: all(d.get("reading") for k, d in hardware_status()["details"].items()
                                 if k != "watchdog"), 10), hardware_status()
        assert hardware_status()["health"] == "ok"
        ups_sim.on_battery()
        assert until(lambda: "UpsOnBattery" in kinds(socket), 5), daemon.log_text()[-2000:]
        enc_sim.set(celsius=48.5)
        assert until(lambda: "EnclosureTemperatureHigh" in kinds(socket), 5), daemon.log_text()[-2000:]
        hot = next(e for e in events(socket) if e["kind"] == "EnclosureTemperatureHigh")
        assert hot["celsius"] == 48.5 and hot["threshold_c"] == 40.0
        ups_sim.silent()
        assert until(lambda: "DeviceStale" in kinds(socket), 6), daemon.log_text()[-2000:]
        stale = next(e for e in events(socket) if e["kind"] == "DeviceStale")
        assert stale["device_type"] == "ups"
        assert hardware_status()["health"] == "degraded" and "STALE" in hardware_status()["summary"]
        assert daemon.stop(20) == 0
    finally:
        daemon.close()
        ups_sim.close()
        enc_sim.close()


def test_hardware_read_and_sim_for_commissioning(tmp_path: Path) -> None:
    sim = subprocess.Popen([sys.executable, "-m", "daemon.cli", "sim", "ups", "--seconds", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert sim.stdout is not None
        path = sim.stdout.readline().strip()
        assert path.startswith("/dev/pts/"), path
        read = cli("hardware", "read", "ups", "--port", path, "--json")
        assert read.returncode == 0, read.stderr
        reading = json.loads(read.stdout)
        assert reading["on_battery"] is False
        # For people: an aligned table, no Python reprs, floats rounded.
        table = cli("hardware", "read", "ups", "--port", path)
        assert table.returncode == 0, table.stderr
        rows = dict(line.split(None, 1) for line in table.stdout.splitlines())
        assert rows["status"] == ",".join(reading["status"]) and rows["on_battery"] == "no"
        assert "None" not in table.stdout and "[" not in table.stdout and "'" not in table.stdout
        assert all(len(v.split(".")[-1]) <= 3 for v in rows.values() if v.replace(".", "").isdigit()), rows
    finally:
        sim.terminate()
        sim.wait(10)
    missing = cli("hardware", "read", "ups", "--port", str(tmp_path / "no-such-port"))
    assert missing.returncode == 1 and "no-such-port" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_a_daemon_follows_the_simulated_gnss_receiver(tmp_path: Path) -> None:
    from lab.sim import gnss

    sim = gnss.start_simulator(interval=0.2)
    socket = tmp_path / "run" / "control.sock"
    config = tmp_path / "lifeline.toml"
    config.write_text(dump_toml({
        "node": {"name": "edge-a", "state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
        "control": {"socket": str(socket), "group": ""},
        "metrics": {"enabled": False},
        "hardware": {"gnss": {"port": sim.path, "stale_after": "2s", "offset_threshold": "500ms"}},
    }))
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        assert until(lambda: "GnssFixAcquired" in kinds(socket), 10), daemon.log_text()[-2000:]
        sim.set(fix=False)
        assert until(lambda: "GnssFixLost" in kinds(socket), 10), daemon.log_text()[-2000:]
        assert daemon.stop(20) == 0
    finally:
        daemon.close()
        sim.close()
