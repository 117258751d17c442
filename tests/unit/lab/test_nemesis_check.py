"""The nemesis checker over hand-made histories: each rule found where it is broken and
silent where it holds (lab/nemesis_check.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.nemesis_check import check, trading_intervals

MS = 1_000_000


def role(node: str, at: int, role_: str, *, epoch: int = 1, feed: int = 1, first: bool = False,
         stamp: int | None = None, valid_until: int | None = None) -> dict:
    msg: dict = {"role": role_, "epoch": epoch, "monotonic_ns": at if stamp is None else stamp}
    if valid_until is not None:
        msg["valid_until"] = valid_until
    return {"kind": "role", "node": node, "feed": feed, "first": first, "recv_ns": at, "msg": msg}


def append(node: str, sent: int, recv: int, results: list[tuple[int, str]], payloads: list[str],
           outcome: str = "answered", epoch: int = 1) -> dict:
    return {"kind": "append", "node": node, "sent_ns": sent, "recv_ns": recv, "payloads": payloads,
            "outcome": outcome,
            "results": [{"seq": s, "epoch": epoch, "status": st_} for s, st_ in results]}


def rules(result) -> list[str]:
    return sorted({f.rule for f in result.violations})


BASE = [role("a", 0, "primary", first=True), role("b", 0, "standby", first=True)]


def test_a_clean_history_passes_with_its_figures():
    history = BASE + [
        append("a", 10 * MS, 11 * MS, [(1, "ok"), (2, "ok")], ["p1", "p2"]),
        append("a", 12 * MS, 13 * MS, [(3, "in_doubt")], ["p3"]),
        append("a", 14 * MS, 15 * MS, [], ["p4"], outcome="timeout"),
        append("b", 16 * MS, 17 * MS, [], ["p5"], outcome="refused"),
        {"kind": "fault", "class": "kill9", "target": "a"},
        {"kind": "fault", "class": "partition"},
    ]
    journals = {"a": {1: b"p1", 2: b"p2", 3: b"p3", 4: b"p4"}, "b": {1: b"p1", 2: b"p2"}}
    result = check(history, journals, "a", end_ns=100 * MS)
    assert result.ok, result.findings
    fig = result.figures
    assert fig["records_acked"] == 2
    assert fig["records_in_doubt"] == 1 and fig["in_doubt_present"] == 1 and fig["in_doubt_absent"] == 0
    assert fig["records_unanswered"] == 1 and fig["unanswered_present"] == 1
    assert fig["faults"] == {"kill9": 1, "partition": 1} and fig["faults_total"] == 2
    assert fig["promotions"] == 1
    # The in-doubt record is reported, read back.
    doubt = [f for f in result.findings if f.rule == "in_doubt"]
    assert len(doubt) == 1 and doubt[0].severity == "info" and doubt[0].detail["present"] is True


def test_an_in_doubt_record_absent_from_the_final_journal_is_reported_not_failed():
    history = BASE + [append("a", 10, 11, [(1, "in_doubt")], ["p1"])]
    result = check(history, {"a": {}}, "a", end_ns=100)
    assert result.ok
    assert result.figures["in_doubt_absent"] == 1
    assert [f.detail["present"] for f in result.findings if f.rule == "in_doubt"] == [False]


def test_an_acknowledged_record_missing_from_the_final_primary_is_lost():
    history = BASE + [append("a", 10, 11, [(1, "ok"), (2, "ok")], ["p1", "p2"])]
    result = check(history, {"a": {1: b"p1"}, "b": {1: b"p1"}}, "b", end_ns=100)
    assert rules(result) == ["lost"]
    assert result.figures["lost"] == 1
    assert result.violations[0].detail["seq"] == 2


def test_a_different_record_at_an_acknowledged_seq_is_lost_byte_for_byte():
    history = BASE + [append("a", 10, 11, [(1, "ok")], ["p1"])]
    result = check(history, {"b": {1: b"p1 "}}, "b", end_ns=100)
    assert rules(result) == ["lost", "unknown_payload"]
    assert "different record" in result.violations[0].message


def test_one_seq_acknowledged_twice_with_different_payloads():
    # The hole: a acknowledges seq 5 alone, b promotes without it and writes seq 5 anew.
    history = BASE + [
        append("a", 10, 11, [(5, "ok")], ["from-a"]),
        role("a", 20, "fenced"), role("b", 20, "primary", epoch=2),
        append("b", 30, 31, [(5, "ok")], ["from-b"], epoch=2),
    ]
    result = check(history, {"a": {5: b"from-a"}, "b": {5: b"from-b"}}, "b", end_ns=100)
    assert rules(result) == ["diverged", "double_ack", "lost"]
    assert result.figures["double_acked"] == 1 and result.figures["lost"] == 1
    assert result.figures["promotions"] == 2


def test_the_same_payload_acknowledged_twice_at_one_seq_is_not_a_double_ack():
    history = BASE + [append("a", 10, 11, [(1, "ok")], ["p1"]), append("a", 12, 13, [(1, "ok")], ["p1"])]
    result = check(history, {"a": {1: b"p1"}}, "a", end_ns=100)
    assert result.ok


def test_ok_from_a_node_whose_feed_never_said_primary():
    history = BASE + [append("b", 10, 11, [(1, "ok")], ["p1"])]
    result = check(history, {"b": {1: b"p1"}}, "b", end_ns=100)
    assert rules(result) == ["outside_interval"]
    assert "never said primary" in result.violations[0].message


def test_valid_until_bounds_the_interval_by_send_and_receive_times():
    history = [role("a", 0, "primary", valid_until=100), role("b", 0, "standby")]
    # Sent before the deadline, answered after it: the append may have happened in time.
    inside = append("a", 90, 150, [(1, "ok")], ["p1"])
    # Sent after the deadline had passed: a violation, whatever the record's stamps say.
    late = append("a", 101, 120, [(2, "ok")], ["p2"])
    result = check(history + [inside, late], {"a": {1: b"p1", 2: b"p2"}}, "a", end_ns=1000)
    assert rules(result) == ["outside_interval"]
    assert [f.detail["seq"] for f in result.violations] == [2]
    assert "1.0 ms" not in result.violations[0].message and "valid_until" in result.violations[0].message


def test_renewals_extend_the_interval_and_a_gap_between_deadlines_is_outside():
    history = [role("a", 0, "primary", valid_until=100), role("a", 90, "primary", valid_until=200),
               role("a", 300, "primary", valid_until=400), role("b", 0, "standby")]
    ok_renewed = append("a", 150, 160, [(1, "ok")], ["p1"])
    in_gap = append("a", 210, 290, [(2, "ok")], ["p2"])
    after_renewal = append("a", 310, 320, [(3, "ok")], ["p3"])
    result = check(history + [ok_renewed, in_gap, after_renewal], {"a": {1: b"p1", 2: b"p2", 3: b"p3"}}, "a",
                   end_ns=1000)
    assert [f.detail["seq"] for f in result.violations] == [2]


def test_a_fenced_message_closes_the_interval_before_its_deadline():
    history = [role("a", 0, "primary", valid_until=1000), role("a", 50, "fenced"), role("b", 0, "standby")]
    result = check(history + [append("a", 60, 70, [(1, "ok")], ["p1"])], {"a": {1: b"p1"}}, "a", end_ns=2000)
    assert rules(result) == ["outside_interval"]


def test_without_valid_until_a_primary_message_holds_until_the_next_message():
    # Today's feed: no deadline, so "primary" holds until the node says something else,
    # or its feed connection ends (the process died).
    history = [role("a", 0, "primary", feed=1), {"kind": "feed_end", "node": "a", "feed": 1, "recv_ns": 500},
               role("a", 800, "standby", feed=2, first=True), role("b", 0, "standby")]
    before = append("a", 400, 450, [(1, "ok")], ["p1"])
    after = append("a", 600, 650, [(2, "ok")], ["p2"])
    result = check(history + [before, after], {"a": {1: b"p1", 2: b"p2"}}, "a", end_ns=1000)
    assert [f.detail["seq"] for f in result.violations] == [2]
    intervals = trading_intervals(history, 1000)
    assert [(iv.start_ns, iv.end_ns, iv.source) for iv in intervals["a"]] == [(0, 500, "next_message")]


def test_the_interval_starts_at_the_publication_stamp_not_the_receive_time():
    # The node published "primary" at 10; the watcher received it at 50; the ok came at 30.
    history = [role("a", 50, "primary", stamp=10), role("b", 0, "standby")]
    result = check(history + [append("a", 20, 30, [(1, "ok")], ["p1"])], {"a": {1: b"p1"}}, "a", end_ns=100)
    assert result.ok


def test_feed_overlap_is_measured():
    history = [role("a", 0, "primary"), role("a", 300 * MS, "fenced"), role("b", 200 * MS, "primary", epoch=2)]
    result = check(history, {"a": {}, "b": {}}, "b", end_ns=1000 * MS)
    assert result.figures["feed_overlap_ms"] == 100.0


def test_duplicates_and_unknown_payloads_in_the_final_journal():
    history = BASE + [append("a", 10, 11, [(1, "ok")], ["p1"])]
    result = check(history, {"a": {1: b"p1", 2: b"p1", 3: b"stranger"}}, "a", end_ns=100)
    assert rules(result) == ["duplicate", "unknown_payload"]


def test_a_refused_request_payload_in_the_journal_is_unknown():
    # A refusal means nothing was written: finding its payload later is a violation.
    history = BASE + [append("b", 10, 11, [], ["p1"], outcome="refused")]
    result = check(history, {"a": {1: b"p1"}}, "a", end_ns=100)
    assert rules(result) == ["unknown_payload"]


def test_a_missing_final_journal_is_a_violation():
    result = check(BASE, {}, "a", end_ns=100)
    assert not result.ok


def test_many_findings_are_capped_and_counted():
    history = BASE + [append("a", 10, 11, [(i, "ok") for i in range(1, 51)], [f"p{i}" for i in range(1, 51)])]
    result = check(history, {"a": {}}, "a", end_ns=100)
    lost = [f for f in result.findings if f.rule == "lost"]
    assert len(lost) == 21 and lost[-1].detail == {"omitted": 30}
    assert result.figures["lost"] == 50


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 5), st.booleans()), min_size=1, max_size=30),
       st.data())
def test_a_faithful_pair_never_fails_and_dropping_an_ack_is_always_found(steps, data):
    """Simulate a correct pair: the primary moves between a and b, each move published on
    the feeds; every ok lands in one shared journal. The checker finds nothing; removing
    any one acknowledged record from the final journal is always reported lost."""
    history: list[dict] = []
    journal: dict[int, bytes] = {}
    t, seq, epoch, n = 0, 0, 0, 0
    current = None
    for node, count, doubt in steps:
        if node != current:
            epoch += 1
            t += 10
            if current is not None:
                history.append(role(current, t, "fenced", epoch=epoch - 1))
            t += 10
            history.append(role(node, t, "primary", epoch=epoch))
            current = node
        t += 5
        payloads = [f"r{n + i}" for i in range(count)]
        n += count
        results = []
        for p in payloads:
            seq += 1
            journal[seq] = p.encode()
            results.append((seq, "in_doubt" if doubt else "ok"))
        history.append(append(node, t, t + 2, results, payloads, epoch=epoch))
        t += 5
    result = check(history, {current: dict(journal)}, current, end_ns=t + 100)
    assert result.ok, result.violations
    acked = [s for r in history if r["kind"] == "append" for s in (x["seq"] for x in r["results"] if x["status"] == "ok")]
    if acked:
        victim = data.draw(st.sampled_from(acked))
        damaged = dict(journal)
        del damaged[victim]
        broken = check(history, {current: damaged}, current, end_ns=t + 100)
        assert [f.detail.get("seq") for f in broken.violations if f.rule == "lost"] == [victim]


def test_the_compact_records_of_the_nemesis_writer():
    from lab.nemesis import compress_results
    from lab.nemesis_check import payload_text

    results = [{"seq": 1, "epoch": 1, "status": "ok"}, {"seq": 2, "epoch": 1, "status": "ok"},
               {"seq": 3, "epoch": 1, "status": "in_doubt"}, {"seq": 4, "epoch": 2, "status": "in_doubt"}]
    runs = compress_results(results)
    assert runs == [[1, 2, 1, "ok"], [3, 3, 1, "in_doubt"], [4, 4, 2, "in_doubt"]]
    history = [{"kind": "start", "seed": 9}, role("a", 0, "primary"),
               {"kind": "append", "node": "a", "sent_ns": 10, "recv_ns": 11, "first_n": 5, "count": 4,
                "outcome": "answered", "runs": runs}]
    journal = {i + 1: payload_text(9, 5 + i).encode() for i in range(4)}
    result = check(history, {"a": journal}, "a", end_ns=100)
    assert result.ok and result.figures["records_acked"] == 2 and result.figures["records_in_doubt"] == 2
    del journal[2]
    assert [f.detail["payload"] for f in check(history, {"a": journal}, "a", end_ns=100).violations] == [
        "nemesis seed=9 n=6"]


def test_the_schedule_is_a_function_of_the_seed():
    from lab.nemesis import CLASSES, make_schedule

    a, b = make_schedule(42, 60), make_schedule(42, 60)
    assert a == b and a != make_schedule(43, 60)
    assert {f.cls for f in make_schedule(1, 600)} == set(CLASSES)
    assert {f.cls for f in make_schedule(1, 60, ("pause", "flap"))} == {"pause", "flap"}
    for fault in make_schedule(5, 600):
        assert [f.describe() for f in [fault]]  # every class formats
        if fault.cls == "one_way":
            assert len(set(fault.targets)) == 2
    import pytest

    with pytest.raises(ValueError, match="unknown fault class"):
        make_schedule(1, 60, ("meteor",))


def test_a_primary_message_with_a_null_deadline_opens_no_interval():
    # The feed carries deadlines; null means "primary, but may not trade now".
    history = [{"kind": "role", "node": "a", "feed": 1, "first": True, "recv_ns": 0,
                "msg": {"role": "primary", "epoch": 1, "monotonic_ns": 0, "valid_until": None, "valid_for": None}},
               role("b", 0, "standby")]
    result = check(history + [append("a", 10, 20, [(1, "ok")], ["p1"])], {"a": {1: b"p1"}}, "a", end_ns=100)
    assert rules(result) == ["outside_interval"]
    assert trading_intervals(history, 100) == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 30)), max_size=8), st.integers(0, 130),
       st.integers(0, 30))
def test_merged_intervals_answer_like_the_intervals_themselves(spans, a, width):
    from lab.nemesis_check import Interval, _meets, _merge

    intervals = [Interval("a", s, s + w, 1, "valid_until") for s, w in spans]
    b = a + width
    assert _meets(_merge(intervals), a, b) == any(iv.meets(a, b) for iv in intervals)


def test_both_feeds_allowing_trading_at_once_is_an_overlap_with_deadlines():
    # b promoted at 150 while a's deadline runs to 200: both may trade for 50 ns.
    history = [role("a", 0, "primary", valid_until=200 * MS), role("b", 150 * MS, "primary", epoch=2,
                                                                 valid_until=400 * MS)]
    result = check(history, {"b": {}}, "b", end_ns=1000 * MS)
    assert rules(result) == ["overlap"]
    assert result.figures["feed_overlap_ms"] == 50.0 and result.figures["overlaps"] == 1


def test_a_closed_feed_ends_the_engines_interval_not_the_nodes_deadline():
    # a's feed closed at 120 (a stopped; its "fenced" never reached the watcher) and b
    # promoted at 150: an engine stops on a closed feed, so no overlap; a's own deadline
    # still decides whether an ok it gave was in time.
    history = [role("a", 0, "primary", valid_until=200), {"kind": "feed_end", "node": "a", "feed": 1, "recv_ns": 120},
               role("b", 150, "primary", epoch=2, valid_until=400)]
    in_time = append("a", 130, 140, [(1, "ok")], ["p1"])
    result = check(history + [in_time], {"b": {1: b"p1"}}, "b", end_ns=1000)
    assert result.ok, result.violations
    assert result.figures["feed_overlap_ms"] == 0


def test_without_deadlines_an_overlap_is_only_a_figure():
    history = [role("a", 0, "primary"), role("a", 300 * MS, "fenced"), role("b", 200 * MS, "primary", epoch=2)]
    result = check(history, {"b": {}}, "b", end_ns=1000 * MS)
    assert result.ok and result.figures["feed_overlap_ms"] == 100.0 and result.figures["overlaps"] == 0


def test_records_below_the_retained_journal_are_unverifiable_not_lost():
    history = BASE + [append("a", 10, 11, [(1, "ok"), (2, "ok"), (3, "ok")], ["p1", "p2", "p3"])]
    result = check(history, {"a": {3: b"p3"}}, "a", end_ns=100, retained_from=3)
    assert result.ok and result.figures["acked_unverifiable"] == 2 and result.figures["lost"] == 0
    assert not check(history, {"a": {3: b"p3"}}, "a", end_ns=100).ok
