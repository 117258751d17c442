"""The alert rules and the dashboard that ship in monitoring/: promtool checks the rules
and runs their unit tests, the dashboard parses, and every expression in both names only
metrics lifeline exports — those a real daemon serves on /metrics (the example config),
those the code declares (every ``"lifeline_..."`` name in daemon/, recovery/, hardware/),
and Prometheus' own ``up``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from lab.procs import DaemonProcess
from tests.support.cli import ROOT, cli
from tests.integration.host.test_daemon_process import example_config_in

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "lifeline.rules.yml"
DASHBOARD = MONITORING / "lifeline.dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install "
                                                             "prometheus; ./run system-deps installs it)")

#: PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}
#: Names Prometheus makes itself.
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions,
    keywords, label names (in ``{...}`` or ``by (...)``), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                 # strings
    text = re.sub(r"\{[^}]*\}", "", text)                            # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                           # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # 1e3, 0.5e-3
        names.add(word)
    return names


def test_metric_names_finds_selectors_only() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, instance) (rate(lifeline_x_seconds_bucket{instance=~"a|b"}[5m])))'
            ' > on(instance) group_left lifeline_threshold and abs(lifeline_off) > 1e3')
    assert metric_names(expr) == {"lifeline_x_seconds_bucket", "lifeline_threshold", "lifeline_off"}
    assert metric_names('min by (job, instance) (lifeline_uplink_state{state="down"}) == 1') == {"lifeline_uplink_state"}


def declared_names() -> set[str]:
    """Every metric name the code declares, histograms with their series' suffixes."""
    names: set[str] = set()
    for package in ("daemon", "recovery", "hardware"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            names |= set(re.findall(r'"(lifeline_[a-z0-9_]+)"', text))
            for histogram in re.findall(r'histogram\(\s*"(lifeline_[a-z0-9_]+)"', text):
                names |= {histogram + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


def served_names(tmp_path: Path) -> set[str]:
    """The names a real daemon (the example config) serves on /metrics."""
    proc = DaemonProcess(config=example_config_in(tmp_path), workdir=tmp_path, watchdog_usec=1_000_000)
    proc.start()
    try:
        assert proc.wait_ready(30), "no READY=1:\n" + proc.log_text()
        status = json.loads(cli("status", "--json", "--socket", str(tmp_path / "run" / "control.sock")).stdout)
        address = next(s for s in status["services"] if s["name"] == "metrics")["details"]["address"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        proc.close()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in body.splitlines() if line and not line.startswith("#")}


def rule_expressions() -> dict[str, str]:
    """alert name -> expr (every rule's expr is on one line)."""
    exprs: dict[str, str] = {}
    alert = None
    for line in RULES.read_text().splitlines():
        if m := re.match(r"\s*- alert: (\S+)", line):
            alert = m.group(1)
        elif m := re.match(r"\s*expr: (.+)", line):
            assert alert is not None, line
            exprs[alert] = m.group(1).strip()
    return exprs


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"{panel['title']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs[f"variable {variable['name']}"] = re.sub(r"^label_values\((.*), *\w+\)$", r"\1",
                                                           variable["definition"])
    return exprs


def test_rules_and_dashboard_name_only_metrics_lifeline_exports(tmp_path: Path) -> None:
    served = served_names(tmp_path)
    assert "process_resident_memory_bytes" in served and "lifeline_service_up" in served
    known = served | declared_names() | PROMETHEUS_OWN
    rules, panels = rule_expressions(), dashboard_expressions()
    assert len(rules) >= 18 and len(panels) >= 50
    unknown = {where: sorted(metric_names(expr) - known) for where, expr in {**rules, **panels}.items()}
    assert {where: names for where, names in unknown.items() if names} == {}
    # Each alert the issue asks for is there.
    assert {"LifelineFenced", "LifelineRoleFlapping", "LifelineReplicationDegraded", "LifelineReplicationLagging",
            "LifelineStandbyNotInSync", "LifelineLeaseStoreUnreachable", "LifelineUplinkDown",
            "LifelineAllUplinksDown", "LifelineVenueDown", "LifelineDeadmanRearmFailing", "LifelineHardwareStale",
            "LifelineUpsOnBattery", "LifelineUpsRuntimeLow", "LifelineClockOffsetHigh", "LifelinePlaybookRefused",
            "LifelinePlaybookFailed", "LifelineAuditChainBroken"} <= set(rules)
    # And the check has teeth: a misspelt metric is caught.
    assert metric_names("rate(lifeline_uplink_probes_sent[5m])") - known == {"lifeline_uplink_probes_sent"}


def test_dashboard_parses_with_unique_panel_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "lifeline" and dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["type"] in ("row", "stat", "timeseries"), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    tests = sorted((MONITORING / "tests").glob("*.yml"))
    assert tests
    result = subprocess.run([PROMTOOL, "test", "rules", *map(str, tests)], capture_output=True, text=True,
                            timeout=120, cwd=MONITORING / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout
