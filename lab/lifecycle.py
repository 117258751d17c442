"""The lifecycle drill: one real daemon, started and stopped as systemd would, timed.

Start ``lifeline run`` with a notify socket and a watchdog, wait for ``READY=1``, ask
``status`` over the control socket (timing it), scrape ``/metrics`` over HTTP, let it
run while counting watchdog pings, then SIGTERM it and check it says ``STOPPING=1`` and
exits 0. Every check is reported with its figure, so an operator sees at a glance what
held and what did not.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient
from lab.procs import DaemonProcess

#: status must answer within this (the foundation issue's target).
STATUS_TARGET_MS = 100.0


def default_lab_config(workdir: Path, node: str = "lab-edge") -> dict[str, Any]:
    """The embedded default config of the lab's daemon: everything under ``workdir``."""
    return {
        "node": {"name": node, "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run")},
        "log": {"level": "info"},
        "control": {"socket": str(workdir / "run" / "control.sock"), "group": ""},
        "metrics": {"enabled": True, "listen": "127.0.0.1:0"},
        "system": {"interval": "500ms", "sustain": "5s"},
    }


@dataclass
class Check:
    name: str
    ok: bool
    figure: str


@dataclass
class LifecycleReport:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, figure: str) -> None:
        self.checks.append(Check(name, ok, figure))


def run_lifecycle_drill(workdir: Path, *, seconds: float = 3.0, status_calls: int = 20) -> LifecycleReport:
    report = LifecycleReport()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "lifeline.toml"
    config_path.write_text(dump_toml(default_lab_config(workdir)))
    watchdog_usec = 1_000_000
    daemon = DaemonProcess(config=config_path, workdir=workdir, watchdog_usec=watchdog_usec)
    try:
        daemon.start()
        ready = daemon.wait_ready(timeout=30)
        report.add("READY=1 sent", ready,
                   f"{daemon.ready_after * 1000:.0f} ms after exec" if ready and daemon.ready_after else "never")
        report.figures["ready_ms"] = round(daemon.ready_after * 1000, 1) if daemon.ready_after else None
        if not ready:
            report.log_tail = daemon.log_text()[-4000:]
            return report

        socket_path = workdir / "run" / "control.sock"
        latencies = []
        with ControlClient(socket_path) as client:
            for _ in range(status_calls):
                began = time.perf_counter()
                status = client.call("status")
                latencies.append((time.perf_counter() - began) * 1000)
        report.status = status
        median = statistics.median(latencies)
        report.figures["status_ms_median"] = round(median, 2)
        report.figures["status_ms_max"] = round(max(latencies), 2)
        report.add(f"status answers < {STATUS_TARGET_MS:.0f} ms", median < STATUS_TARGET_MS,
                   f"median {median:.1f} ms, max {max(latencies):.1f} ms over {status_calls} calls")
        unhealthy = [s["name"] for s in status["services"] if s["health"] != "ok"]
        report.add("every service running and ok", not unhealthy,
                   f"{len(status['services'])} services" + (f", not ok: {', '.join(unhealthy)}" if unhealthy else ""))

        metrics_address = next(s for s in status["services"] if s["name"] == "metrics")["details"]["address"]
        began = time.perf_counter()
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
            body = response.read().decode()
        scrape_ms = (time.perf_counter() - began) * 1000
        families = sum(1 for line in body.splitlines() if line.startswith("# TYPE "))
        report.figures["metrics_families"] = families
        report.add("/metrics scraped", "lifeline_service_up" in body,
                   f"{families} metric families in {scrape_ms:.1f} ms")

        pings_before = len(daemon.notify.with_key("WATCHDOG"))
        daemon.notify.drain(seconds)
        pings = len(daemon.notify.with_key("WATCHDOG")) - pings_before
        expected = seconds / (watchdog_usec / 1e6 / 2)
        report.figures["watchdog_pings"] = pings
        report.add("watchdog pinged every half period", pings >= expected * 0.7,
                   f"{pings} pings in {seconds:g} s (period {watchdog_usec / 1e6:g} s, expected ~{expected:.0f})")

        code = daemon.stop(timeout=20)
        stopping = daemon.notify.wait_for("STOPPING", "1", timeout=0.5) is not None
        report.figures["stop_ms"] = round(daemon.stopped_after * 1000, 1) if daemon.stopped_after else None
        report.figures["exit_code"] = code
        report.add("SIGTERM: STOPPING=1 and exit 0", code == 0 and stopping,
                   f"exit {code} after {report.figures['stop_ms']} ms, STOPPING=1 {'seen' if stopping else 'MISSING'}")
        report.add("control socket removed on exit", not socket_path.exists(), str(socket_path))
        report.log_tail = daemon.log_text()[-4000:]
        return report
    finally:
        daemon.close()
