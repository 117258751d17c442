"""The promotion drills, end to end: `lifeline drill standby|partition|region --repeat 1
--json` as an operator runs them (real namespaces, a real witness or three real etcd
members, two real `lifeline run` processes, the recorded Binance feed as the journal's
payloads), and their figures checked against the targets: 0 acknowledged records lost,
0 ms of overlapping primaries, promotion under target, the old primary back as standby
and caught up.

The overlap arithmetic the drills rely on is checked first, on made-up intervals, so a
drill that reports 0 is known to be able to report more.

Needs root, ``ip`` and ``nft`` (and etcd for the regional drill); skipped otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import cli

from lab.etcd import EtcdCluster
from lab.ha_drills import TARGET_MS, overlap_ns, primary_intervals
from lab.pair import pair_unavailable

UNAVAILABLE = pair_unavailable()
needs_lab = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the pair lab needs {UNAVAILABLE}")
DRILL_TIMEOUT = 100


def change(node: str, role: str, at_ms: float) -> dict[str, Any]:
    return {"node": node, "role": role, "monotonic_ns": int(at_ms * 1_000_000)}


def test_primary_intervals_end_at_the_next_change_or_the_death_and_overlaps_add_up() -> None:
    changes = [change("a", "candidate", 0), change("a", "primary", 10), change("a", "fenced", 1210),
               change("b", "standby", 5), change("b", "candidate", 1500), change("b", "primary", 1510),
               change("a", "standby", 3000)]
    end = 5_000_000_000
    a = primary_intervals(changes, "a", [], end)
    b = primary_intervals(changes, "b", [], end)
    assert a == [(10_000_000, 1_210_000_000)]
    assert b == [(1_510_000_000, 5_000_000_000)]
    assert overlap_ns(a, b) == 0
    # Fenced late: 90 ms during which both were primary.
    late = [dict(c, monotonic_ns=1_600_000_000) if c["role"] == "fenced" else c for c in changes]
    assert overlap_ns(primary_intervals(late, "a", [], end), b) == 90_000_000
    # Killed while primary: the interval ends at the death, not at the next incarnation's change.
    killed = [c for c in changes if c["role"] != "fenced"]
    assert primary_intervals(killed, "a", [1_400_000_000], end) == [(10_000_000, 1_400_000_000)]
    # Never fenced nor killed: primary until the end, overlapping the new primary.
    never = [c for c in changes if c["node"] == "b" or c["role"] in ("candidate", "primary")]
    assert overlap_ns(primary_intervals(never, "a", [], end), b) == 3_490_000_000


def run_drill(kind: str, workdir: Path) -> dict[str, Any]:
    result = cli("drill", kind, "--repeat", "1", "--json", "--workdir", str(workdir), timeout=DRILL_TIMEOUT)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    context = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-4000:]}"
    if not lines:
        pytest.fail(f"lifeline drill {kind} printed no JSON\n{context}\n{_logs(workdir)}")
    figures = json.loads(lines[-1])
    figures["_context"] = context + "\n" + (_logs(workdir) if result.returncode else "")
    figures["_exit"] = result.returncode
    return figures


def _logs(workdir: Path, chars: int = 2500) -> str:
    """The tails of every daemon, witness and etcd log the drill left, for a failure."""
    parts = []
    for path in sorted(workdir.rglob("*.log")):
        text = path.read_text(errors="replace")
        parts.append(f"--- {path.relative_to(workdir)}:\n{text[-chars:]}")
    return "\n".join(parts)


def check_figures(kind: str, figures: dict[str, Any]) -> None:
    context = figures["_context"]
    assert figures["errors"] == [], context
    assert figures["repeat"] == 1 and figures["missed"] == 0, context
    assert len(figures["promotion_ms"]) == 1 and figures["promotion_ms"][0] < TARGET_MS[kind], context
    assert figures["lost_acked_records"] == 0 and figures["acked_records"] > 0, context
    assert figures["overlap_ms"] == [0], context
    assert figures["failbacks"] == 0 and figures["back_as_standby"] == [True], context
    assert figures["caught_up"] == [True], context
    assert figures["ok"] is True and figures["_exit"] == 0, context


@needs_lab
def test_standby_drill_kill_9_promotes_within_target_without_loss(tmp_path: Path) -> None:
    figures = run_drill("standby", tmp_path / "drill")
    check_figures("standby", figures)


@needs_lab
def test_partition_drill_the_cut_primary_fences_before_the_standby_takes_over(tmp_path: Path) -> None:
    figures = run_drill("partition", tmp_path / "drill")
    check_figures("partition", figures)
    # The old primary fenced itself, and before its peer became primary.
    assert len(figures["fenced_ms"]) == 1 and figures["fenced_ms"][0] <= figures["role_ms"][0], \
        figures["_context"]


@needs_lab
@pytest.mark.skipif(not EtcdCluster.available(), reason="etcd is not installed (apt-get install etcd-server)")
def test_region_drill_losing_the_primarys_site_fails_over_through_etcd(tmp_path: Path) -> None:
    figures = run_drill("region", tmp_path / "drill")
    check_figures("region", figures)
    assert figures["faults"][0].startswith("lose site"), figures["faults"]


@needs_lab
def test_the_main_job_runs_every_promotion_drill(tmp_path: Path) -> None:
    """`lifeline lab` (the README's main job) includes the promotion drills."""
    result = cli("lab", "--repeat", "0", "--seconds", "1", "--promotion-repeat", "1", "--venue-repeat", "0",
                 "--nemesis-duration", "0", "--json", "--workdir", str(tmp_path / "lab"), timeout=3 * DRILL_TIMEOUT)
    context = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-4000:]}"
    figures = json.loads(result.stdout.splitlines()[-1])
    for kind in ("standby", "partition") + (("region",) if EtcdCluster.available() else ()):
        assert figures[kind]["ok"] is True, context
        assert figures[kind]["lost_acked_records"] == 0 and figures[kind]["overlap_ms"] == [0], context
    assert figures["ok"] is True and result.returncode == 0, context
