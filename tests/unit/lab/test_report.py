"""The drill report's core (lab.report): plain data in, one self-contained HTML string
out. The trading intervals are the README's engine contract; the HTML must carry no
reference to anything outside itself."""

from __future__ import annotations

import re
from typing import Any

from lab.report import merge_intervals, overlap_ns, render_html, trading_intervals
from lab.report.drills import swimlane, swimlane_from_feed

MS = 1_000_000


def msg(node: str, role: str, at_ms: float, valid_ms: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"node": node, "role": role, "monotonic_ns": int(at_ms * MS),
            "valid_until": None if valid_ms is None else int(valid_ms * MS), **extra}


def test_trading_interval_runs_from_each_primary_message_to_its_valid_until_or_the_next_message() -> None:
    feed = [msg("a", "standby", 0), msg("a", "primary", 100, 1300),
            msg("a", "primary", 600, 1800, renewal=True),   # a renewal extends it
            msg("a", "primary", 2000, 2500, renewal=True),  # after a gap: the deadline passed at 1800
            msg("a", "fenced", 2200),                       # the next message ends it early
            msg("b", "primary", 1000, 9000)]                # another node's messages are not a's
    assert trading_intervals(feed, "a") == [[100 * MS, 1800 * MS], [2000 * MS, 2200 * MS]]


def test_a_primary_message_without_valid_until_allows_no_trading() -> None:
    assert trading_intervals([msg("a", "primary", 0, None), msg("a", "unknown", 5)], "a") == []


def test_overlap_adds_up_and_merge_joins_touching_intervals() -> None:
    assert merge_intervals([[5, 9], [0, 5], [12, 14]]) == [[0, 9], [12, 14]]
    assert overlap_ns([[0, 10], [20, 30]], [[5, 25]]) == 5 + 5
    assert overlap_ns([[0, 10]], [[10, 20]]) == 0


def test_swimlane_ends_a_role_at_the_death_and_measures_both_overlaps() -> None:
    changes = [{"node": "a", "role": "primary", "epoch": 1, "monotonic_ns": 0},
               {"node": "b", "role": "standby", "epoch": 1, "monotonic_ns": 10 * MS},
               {"node": "b", "role": "primary", "epoch": 2, "monotonic_ns": 1500 * MS}]
    # a's feed let it trade until 1600 ms although it died at 1000 ms: the engine may
    # still be trading on its last message, which is what the trading overlap shows.
    feed = [msg("a", "primary", 0, 1600), msg("b", "primary", 1500, 3000)]
    lane = swimlane("t", ["a", "b"], changes, feed, end_ns=2000 * MS, origin_ns=900 * MS,
                    deaths_ns={"a": [1000 * MS]})
    assert lane["roles"]["a"] == [[0, 1000 * MS, "primary", 1]]
    assert lane["overlap_ms"] == 0
    assert lane["trading_overlap_ms"] == 100.0
    assert lane["trading_gap_ms"] is None  # no gap: they overlap
    assert lane["start_ns"] == 0


def report_data() -> dict[str, Any]:
    changes = [{"node": "edge-a", "role": "primary", "epoch": 3, "monotonic_ns": 0},
               {"node": "edge-b", "role": "standby", "epoch": 3, "monotonic_ns": 5 * MS},
               {"node": "edge-a", "role": "fenced", "epoch": 3, "monotonic_ns": 1200 * MS},
               {"node": "edge-b", "role": "primary", "epoch": 4, "monotonic_ns": 1300 * MS}]
    feed = [msg("edge-a", "primary", 0, 1150), msg("edge-b", "primary", 1300, 2600)]
    lane = swimlane("repetition 1", ["edge-a", "edge-b"], changes, feed, end_ns=2500 * MS, origin_ns=100 * MS,
                    markers=[{"at_ns": 100 * MS, "node": None, "kind": "fault", "label": "cut"},
                             {"at_ns": 1300 * MS, "node": "edge-b", "kind": "promoted", "label": "primary"}])
    return {"title": "a <drill> & report", "drills": [{
        "name": "partition", "title": "partition drill", "ok": True,
        "checks": [{"name": "overlap 0 ms", "ok": True, "figure": "0 ms"},
                   {"name": "lost", "ok": False, "figure": "1 of 10"}],
        "figures": {"promotion_ms": [1300.0, 1250.5], "lease": {"ttl": "1.5s"}, "seed": 7},
        "errors": ["repetition 2: <script>alert(1)</script>"],
        "swimlanes": [lane],
        "histograms": [{"name": "promotion", "values": [1300.0, 1250.5, 1402.0], "target": 2000.0}]}]}


def test_the_html_is_self_contained_escaped_and_carries_the_swimlane_with_its_overlap() -> None:
    text = render_html(report_data())
    assert text.startswith("<!DOCTYPE html>")
    # Nothing from outside: no script, no link, no URL but the SVG namespaces' identifiers.
    assert "<script" not in text and "<link" not in text and "@import" not in text
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", text))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert "Content-Security-Policy" in text
    assert "a &lt;drill&gt; &amp; report" in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    swimlane_figure = re.search(r'<figure class="plot swimlane[^"]*" id="swimlane-partition-1">(.*?)</figure>',
                                text, re.S)
    assert swimlane_figure is not None
    assert swimlane_figure.group(1).lstrip().startswith("<svg")
    # Text stays text in the SVG (searchable): the lanes' node names are there.
    assert "edge-a" in swimlane_figure.group(1) and "edge-b" in swimlane_figure.group(1)
    assert "overlap 0 ms" in swimlane_figure.group(1)
    assert 'id="histograms-partition"' in text
    assert text.count("<svg") == 2
    assert ">FAIL<" in text  # the failed check is shown as such


def test_a_drill_without_plots_renders_its_tables_only() -> None:
    text = render_html({"title": "t", "drills": [{"name": "lifecycle", "ok": False,
                                                  "checks": [{"name": "ready", "ok": False, "figure": "-"}]}]})
    assert "<svg" not in text and "ready" in text and 'class="badge fail"' in text


def test_a_swimlane_from_the_feeds_alone_finds_the_role_changes_and_lets_renewals_extend_trading() -> None:
    messages = [msg("a", "primary", 0, 900, epoch=1), msg("a", "primary", 500, 1400, epoch=1, renewal=True),
                msg("b", "standby", 10, epoch=1), msg("a", "unknown", 1000),   # a's feed was cut
                msg("b", "primary", 1600, 2600, epoch=2)]
    lane = swimlane_from_feed("nemesis", ["a", "b"], messages, end_ns=3000 * MS,
                              markers=[{"at_ns": 990 * MS, "node": None, "kind": "fault", "label": "kill9"}])
    assert lane["roles"]["a"] == [[0, 1000 * MS, "primary", 1], [1000 * MS, 3000 * MS, "unknown", 0]]
    assert lane["roles"]["b"] == [[10 * MS, 1600 * MS, "standby", 1], [1600 * MS, 3000 * MS, "primary", 2]]
    assert lane["trading"]["a"] == [[0, 1000 * MS]]
    assert lane["overlap_ms"] == 0 and lane["trading_overlap_ms"] == 0
    assert lane["trading_gap_ms"] == 1600 - 1000
    assert "<svg" in render_html({"title": "n", "drills": [{"name": "nemesis", "ok": True, "swimlanes": [lane]}]})


def test_every_drill_report_class_has_an_adapter() -> None:
    from lab.hardware_drills import HardwareReport
    from lab.hardware_drills import Repetition as HwRepetition
    from lab.lifecycle import LifecycleReport
    from lab.report.drills import report_data

    power = HardwareReport("power", 2, [HwRepetition(1, {"detection_ms": 410.0, "playbook_ms": 600.0,
                                                         "fenced_ms": 900.0, "handover_ms": 2100.0},
                                                     acked=10, lost=0, overlap_ms=0.0),
                                        HwRepetition(2, {"detection_ms": None}, errors=["no UPS event"])])
    lifecycle = LifecycleReport()
    lifecycle.add("READY=1", True, "812 ms")
    data = report_data("t", [power, lifecycle])
    text = render_html(data)
    assert [d["name"] for d in data["drills"]] == ["power", "lifecycle"]
    assert data["ok"] is False  # repetition 2 of the power drill failed
    assert "no UPS event" in text and "READY=1" in text and 'id="histograms-power"' in text


def test_saved_report_data_renders_from_the_command_line(tmp_path: Any, capsys: Any) -> None:
    import json

    from lab.report import main

    data = tmp_path / "data.json"
    data.write_text(json.dumps(report_data()))
    assert main([str(data), str(tmp_path / "out.html")]) == 0
    assert 'id="swimlane-partition-1"' in (tmp_path / "out.html").read_text()
    assert "out.html" in capsys.readouterr().out


def _nemesis_history(stray_ok: bool = False) -> tuple[list[dict[str, Any]], dict[str, dict[int, bytes]]]:
    """edge-a primary (epoch 1, renewed every 500 ms, valid 1.5 s), frozen at 3 s by a
    pause; edge-b promotes at 4.7 s (epoch 2); edge-a wakes at 7.5 s, fenced, standby."""
    def role(node: str, at_ms: float, role_: str, epoch: int, valid_ms: float | None = None,
             feed: int = 1) -> dict[str, Any]:
        message = {"role": role_, "epoch": epoch, "monotonic_ns": int(at_ms * MS),
                   "valid_until": None if valid_ms is None else int(valid_ms * MS)}
        return {"kind": "role", "node": node, "feed": feed, "first": False, "recv_ns": int(at_ms * MS),
                "msg": message}

    def append(node: str, at_ms: float, seq: int, epoch: int) -> dict[str, Any]:
        return {"kind": "append", "node": node, "sent_ns": int(at_ms * MS), "recv_ns": int((at_ms + 2) * MS),
                "payloads": [f"p{seq}"], "outcome": "answered",
                "results": [{"seq": seq, "epoch": epoch, "status": "ok"}]}

    history: list[dict[str, Any]] = [{"kind": "start", "seed": 7, "now_ns": 0}]
    history += [role("edge-a", t, "primary", 1, t + 1500) for t in range(0, 3000, 500)]
    history += [role("edge-b", 1, "standby", 1, feed=2)]
    history += [append("edge-a", 100 + 250 * i, i + 1, 1) for i in range(10)]
    history.append({"kind": "fault", "class": "pause", "index": 1, "targets": ["primary"], "hosts": ["edge-a"],
                    "start_ns": 3000 * MS, "end_ns": 7500 * MS})
    history += [role("edge-b", t, "primary", 2, t + 1500, feed=2) for t in range(4700, 10000, 500)]
    history += [append("edge-b", 5000 + 250 * i, i + 11, 2) for i in range(10)]
    if stray_ok:  # the frozen node answers ok after its deadline: a violation
        history.append(append("edge-a", 7400, 21, 1))
    history += [role("edge-a", 7501, "fenced", 1), role("edge-a", 8000, "standby", 2)]
    journal = {seq: f"p{seq}".encode() for seq in range(1, 22 if stray_ok else 21)}
    return history, {"edge-b": journal, "edge-a": dict(journal)}


def _nemesis_report(stray_ok: bool = False) -> Any:
    from lab.nemesis import TIMELINE_KINDS, NemesisReport
    from lab.nemesis_check import check

    history, journals = _nemesis_history(stray_ok)
    faults = [r for r in history if r["kind"] == "fault"]
    report = NemesisReport(7, 10.0, [], applied=faults, elapsed=12.0,
                           timeline=[r for r in history if r["kind"] in TIMELINE_KINDS])
    report.result = check(history, journals, "edge-b", end_ns=10_000 * MS)
    return report


def test_the_nemesis_section_draws_the_feeds_with_lapsed_deadlines_faults_and_promotion_times() -> None:
    from lab.report.drills import report_data

    data = report_data("nemesis", [_nemesis_report()])
    (d,) = data["drills"]
    assert d["name"] == "nemesis" and d["ok"] is True and all(c["ok"] for c in d["checks"])
    assert d["figures"]["records_acked"] == 20 and d["figures"]["faults"] == {"pause": 1}
    (lane,) = d["swimlanes"]  # 10 s: no close-ups
    # The frozen primary's feed said primary until it could speak at 7.5 s; as the engine
    # contract reads it, that ended at its last valid_until (2.5 s + 1.5 s): no overlap.
    assert lane["roles"]["edge-a"][:2] == [[0, 4000 * MS, "primary", 1], [4000 * MS, 7501 * MS, "lapsed", 1]]
    assert lane["trading"]["edge-a"] == [[0, 4000 * MS]] and lane["overlap_ms"] == 0
    assert lane["trading_overlap_ms"] == 0 and lane["trading_gap_ms"] == 700
    kinds = sorted(m["kind"] for m in lane["markers"])
    assert kinds == ["fault", "fenced", "promoted"], kinds
    promotion, gap = d["histograms"]
    assert promotion["values"] == [1700.0] and gap["values"] == [700.0]
    text = render_html(data)
    assert 'id="swimlane-nemesis-1"' in text and 'id="histograms-nemesis"' in text and "PASS" in text


def test_the_nemesis_section_fails_and_lists_the_checkers_finding() -> None:
    from lab.report.drills import report_data

    data = report_data("nemesis", [_nemesis_report(stray_ok=True)])
    (d,) = data["drills"]
    assert d["ok"] is False and data["ok"] is False
    failed = [c["name"] for c in d["checks"] if not c["ok"]]
    assert failed == ["no ok outside the node's trading interval (valid_until)"], failed
    assert [f["rule"] for f in d["findings"] if f["severity"] == "violation"] == ["outside_interval"]
    text = render_html(data)
    assert "<h3>Findings</h3>" in text and "seq 21 answered ok by edge-a outside" in text


def test_a_drill_whose_daemon_tripped_a_breaker_gets_a_breaker_section() -> None:
    from lab.report.drills import section

    class LifecycleReport:  # the adapter is picked by the class name
        ok = True
        checks: list[Any] = []
        figures: dict[str, Any] = {}
        trace = {"events": [
            {"kind": "VenueHealthChanged", "venue": "kraken"},
            {"kind": "BreakerTripped", "breaker": "market_volatility", "subject": "BTC/USD", "figure": 0.07,
             "threshold": 0.05, "response": "pause", "reason": "market_volatility BTC/USD 0.07 > 0.05 over 300s"},
            {"kind": "BreakerRecovered", "breaker": "market_volatility", "subject": "BTC/USD", "figure": 0.0,
             "tripped_for_s": 612.5, "reason": "at or below 0.04 for 300s"}]}

    d = section(LifecycleReport())
    assert [(b["breaker"], b["change"]) for b in d["breakers"]] == [("market_volatility", "tripped"),
                                                                     ("market_volatility", "recovered")]
    html = render_html({"title": "t", "drills": [d], "ok": True})
    assert "Circuit breakers" in html and "market_volatility BTC/USD" in html and "held 612.5 s" in html
    LifecycleReport.trace["breakers"] = {"system_load": {"state": "closed", "figure": 0.31, "threshold": 0.9,
                                                          "response": "throttle", "trips": 0, "window_s": 120.0,
                                                          "recovery_s": 120.0}}
    d = section(LifecycleReport())
    assert d["breakers"][-1]["change"] == "closed at the end" and "0 trip(s)" in d["breakers"][-1]["reason"]
    assert "closed at the end" in render_html({"title": "t", "drills": [d], "ok": True})
    del LifecycleReport.trace
    assert "breakers" not in section(LifecycleReport())
