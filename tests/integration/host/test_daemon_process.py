"""`lifeline run` as a real process on the example config, the way systemd runs it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from lab.procs import DaemonProcess
from tests.support.cli import ROOT, cli

EXAMPLE = ROOT / "examples" / "lifeline.toml"


def example_config_in(tmp_path: Path, **overrides: dict[str, Any]) -> Path:
    """The shipped example config with its paths moved under tmp_path."""
    data = tomllib.loads(EXAMPLE.read_text())
    # The example's uplinks name interfaces of a real edge host; the lab tests them.
    data.pop("uplinks", None)
    data.pop("standby", None)  # the journal has tests of its own with real pairs
    data.pop("recovery", None)  # so do the playbooks (test_playbook_e2e.py)
    data.pop("hardware", None)  # and the serial devices, against simulators
    data.pop("venues", None)  # and the venues, against the venue emulator (test_venue_daemon.py)
    data["node"]["state_dir"] = str(tmp_path / "state")
    data["node"]["runtime_dir"] = str(tmp_path / "run")
    data.setdefault("control", {})["socket"] = str(tmp_path / "run" / "control.sock")
    data["control"]["group"] = ""
    data.setdefault("metrics", {})["listen"] = "127.0.0.1:0"
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "lifeline.toml"
    path.write_text(dump_toml(data))
    return path



@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(config=example_config_in(tmp_path), workdir=tmp_path, watchdog_usec=1_000_000)
    proc.start()
    try:
        assert proc.wait_ready(30), "no READY=1:\n" + proc.log_text()
        yield proc
    finally:
        proc.close()


def test_run_status_events_metrics_and_sigterm(daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "control.sock"
    assert oct(sock.stat().st_mode & 0o777) == "0o660"

    status = cli("status", "--socket", str(sock))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "edge-a" in status.stdout
    for service in ("control", "system", "metrics"):
        assert any(line.startswith(service) and " running " in line for line in status.stdout.splitlines()), status.stdout

    as_json = json.loads(cli("status", "--json", "--socket", str(sock)).stdout)
    assert as_json["ready"] is True and as_json["node"] == "edge-a"
    assert {s["name"]: s["lifecycle"] for s in as_json["services"]} == {
        "control": "running", "system": "running", "guard": "running", "breakers": "running", "metrics": "running"}

    # status answers fast while the daemon runs (the 100 ms); here the daemon's
    # own answer time over a held connection, the median of 20.
    with ControlClient(sock) as client:
        times = []
        for _ in range(20):
            began = time.perf_counter()
            client.call("status")
            times.append(time.perf_counter() - began)
    assert sorted(times)[10] < 0.1

    events = cli("events", "--socket", str(sock))
    assert events.returncode == 0
    assert "DaemonReady" in events.stdout and "ServiceStarted" in events.stdout
    # --kind filters first, then --limit takes the last N of that kind (DaemonReady came after).
    started = cli("events", "--kind", "ServiceStarted", "--limit", "3", "--socket", str(sock))
    assert started.returncode == 0, started.stderr
    assert [line.split()[1] for line in started.stdout.splitlines()] == ["ServiceStarted"] * 3
    assert "service=guard" in started.stdout and "service=breakers" in started.stdout
    assert "service=metrics" in started.stdout
    # Fields for people: took_ms rounded, no Python reprs.
    took = [f for f in started.stdout.split() if f.startswith("took_ms=")]
    assert took and all(len(f.split("=")[1].split(".")[-1]) <= 3 for f in took), took
    # A misspelt kind is refused, naming the closest one.
    wrong = cli("events", "--kind", "ServiceStart", "--socket", str(sock))
    assert wrong.returncode == 2
    assert 'unknown event kind "ServiceStart"; did you mean "ServiceStarted"?' in wrong.stderr

    address = next(s for s in as_json["services"] if s["name"] == "metrics")["details"]["address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'lifeline_service_up{service="control"} 1.0' in body
    assert "lifeline_host_overloaded 0.0" in body
    assert 'lifeline_breaker_state{breaker="system_load",state="closed"} 1.0' in body
    assert 'lifeline_breaker_threshold{breaker="execution_failure_rate"} 0.02' in body
    assert "process_resident_memory_bytes " in body

    assert daemon.stop(20) == 0, daemon.log_text()
    assert daemon.notify.wait_for("STOPPING", "1", timeout=1) is not None
    assert not sock.exists(), "the control socket is removed on a clean stop"
    log = daemon.log_text()
    assert "event=daemon.stopped" in log and "reason=\"signal SIGTERM\"" in log
    # One line per event, key=value: every line parses as such.
    for line in log.splitlines():
        assert line.startswith("level="), line
    # ... and each event is logged once: a service's start, the daemon's readiness and
    # its stop each make one line (the bus's), not a second one from the publisher.
    started = [line for line in log.splitlines() if "service=metrics" in line and "started" in line.lower()]
    assert len(started) == 1, started
    assert sum("ready" in line.lower() for line in log.splitlines()) == 1, log
    assert sum("stopping" in line.lower() for line in log.splitlines()) == 1, log


def test_events_follow_streams_live_events(daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "control.sock"
    follower = subprocess.Popen([sys.executable, "-m", "daemon.cli", "events", "--follow", "--json",
                                 "--socket", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
    try:
        assert follower.stderr is not None and follower.stdout is not None
        assert "following events" in follower.stderr.readline()
        daemon.stop(20)  # the daemon publishes DaemonStopping on its way out
        line = follower.stdout.readline()
        assert json.loads(line)["kind"] == "DaemonStopping"
        assert follower.wait(10) == 2, "the follower reports the daemon going away"
    finally:
        follower.kill()
        follower.wait()


def test_bad_config_refuses_to_start_and_names_the_key(tmp_path: Path) -> None:
    path = example_config_in(tmp_path, system={"interval": "-5s"})
    result = cli("run", "--config", str(path))
    assert result.returncode == 78  # EX_CONFIG: the unit's RestartPreventExitStatus=78
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"{path}: system.interval: expected a value above 0s, found -5s" in result.stderr
    assert not (tmp_path / "run" / "control.sock").exists()


def test_a_failing_service_exits_nonzero_naming_it(tmp_path: Path) -> None:
    # Something else holds the metrics port: the metrics service cannot start.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        path = example_config_in(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
        proc = DaemonProcess(config=path, workdir=tmp_path / "w", watchdog_usec=None)
        proc.start()
        try:
            assert not proc.wait_ready(20)
            assert proc.proc is not None and proc.proc.wait(20) == 1
            log = proc.log_text()
            assert "event=service.crashed service=metrics" in log
            assert "Address already in use" in log
            assert "event=daemon.failed service=metrics" in log
            assert proc.notify.wait_for("STOPPING", "1", timeout=1) is not None
        finally:
            proc.close()
    finally:
        blocker.close()


def test_unknown_interface_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "lifeline.toml"
    # (Interface names that cannot exist here, whatever this machine's NICs are called.)
    path.write_text(EXAMPLE.read_text().replace('"eth1"', '"llabsent1"').replace('"eth2"', '"llabsent2"'))
    result = cli("run", "--config", str(path))
    assert result.returncode == 78
    assert f"{path}: uplinks.fibre.interface: no interface 'llabsent1' on this host" in result.stderr
    assert f"{path}: uplinks.starlink.interface: no interface 'llabsent2' on this host" in result.stderr


def test_status_without_a_daemon_says_what_to_do(tmp_path: Path) -> None:
    result = cli("status", "--socket", str(tmp_path / "nothing.sock"))
    assert result.returncode == 2
    assert "is lifeline running?" in result.stderr
