"""`lifeline preflight` against a real pair of daemons on loopback (no root): every
configured check passes, each run leaves a PreflightFinished event and an audit line
(which the next run's `audit verify` checks), and the exit codes are 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.pair import Pair
from tests.support.cli import cli


def test_preflight_passes_on_a_healthy_pair(tmp_path: Path) -> None:
    pair = Pair.create(tmp_path)
    try:
        pair.start()
        pair.wait_in_sync()
        for node in (pair.primary, pair.standby):
            out = cli("preflight", "--socket", str(node.socket), timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "FAIL" not in out.stdout, out.stdout
            assert "PASS  standby in sync:" in out.stdout, out.stdout
            assert "PASS  journal verify:" in out.stdout and "PASS  config:" in out.stdout, out.stdout
            assert out.stdout.rstrip().splitlines()[-1].startswith("preflight: ")
        # The second run on the primary: --json, and the first run's audit line verifies.
        out = cli("preflight", "--socket", str(pair.primary.socket), "--json", timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["audit verify"]["result"] == "PASS", checks["audit verify"]
        assert "1 entries" in checks["audit verify"]["figure"]
        assert result["exit_code"] == 0 and result["counts"]["FAIL"] == 0
        events = [e for e in pair.primary.events() if e["kind"] == "PreflightFinished"]
        assert len(events) == 2 and events[-1]["failed"] == 0 and events[-1]["node"] == "edge-a"
        audit = (pair.primary.state_dir / "recovery" / "audit.jsonl").read_text().splitlines()
        assert [json.loads(line)["kind"] for line in audit].count("preflight.run") == 2, audit

        # The end-of-day report on the same pair: today's preflights, journal verify OK.
        out = cli("report", "eod", "--socket", str(pair.primary.socket), "--config", str(pair.primary.config),
                  "--out-dir", str(tmp_path / "reports"), timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("end of day on edge-a") and "PreflightFinished" in out.stdout, out.stdout
        assert "journal verify: OK" in out.stdout and out.stdout.rstrip().endswith("result: OK"), out.stdout
        assert len(list((tmp_path / "reports").glob("eod-*.json"))) == 1

        # The standby goes away: the primary's preflight fails, naming the check.
        pair.standby.stop()
        out = cli("preflight", "--socket", str(pair.primary.socket), "--no-verify", timeout=60)
        assert out.returncode == 1, out.stdout
        assert "FAIL  standby in sync:" in out.stdout and "FAILED: standby in sync" in out.stdout, out.stdout
        pair.primary.stop()
        out = cli("preflight", "--socket", str(pair.primary.socket))
        assert out.returncode == 2
    finally:
        pair.close()
