"""`--report FILE.html` wired into a real drill: `lifeline drill standby --repeat 1
--report X.html` (root: the pair lab) writes a report whose swimlane shows both nodes
and the drill's overlap, 0 ms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.support.cli import cli

from lab.pair import pair_unavailable

UNAVAILABLE = pair_unavailable()


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the pair lab needs {UNAVAILABLE}")
def test_the_standby_drill_writes_a_report_with_both_nodes_swimlane_and_overlap_0_ms(tmp_path: Path) -> None:
    page = tmp_path / "standby.html"
    result = cli("drill", "standby", "--repeat", "1", "--report", str(page), "--workdir", str(tmp_path / "drill"),
                 timeout=300)
    context = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, context
    assert f"drill report: {page}" in result.stderr, context
    text = page.read_text()
    lanes = re.findall(r'<figure class="plot swimlane[^>]*>\s*(<svg.*?</svg>)', text, re.S)
    assert len(lanes) == 1, context
    svg = lanes[0]
    assert "edge-a" in svg and "edge-b" in svg
    assert "overlap 0 ms" in svg
    # The trading intervals (role.watch valid_until) were recorded and drawn: a primary
    # per node over the repetition, and the check that they never overlap passed.
    assert re.search(r"trading intervals never overlap.*?PASS", text, re.S)
