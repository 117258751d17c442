"""The bound on audit lines written for repeated playbook refusals (sans-IO)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from recovery.verify import RefusalCoalescer


def test_identical_refusals_once_per_window_with_a_count() -> None:
    c = RefusalCoalescer(window=60, max_per_window=20)
    key = ("tampered", "modified", "x")
    assert c.note(key, 0.0) == 0
    assert all(c.note(key, t / 10) is None for t in range(1, 300))
    assert c.note(key, 59.9) is None
    assert c.note(key, 60.0) == 300
    assert c.note(key, 61.0) is None
    assert c.note(key, 125.0) == 1


def test_distinct_refusals_are_rate_limited_and_counted() -> None:
    c = RefusalCoalescer(window=60, max_per_window=3)
    written = [c.note(("p", "r", str(i)), float(i)) for i in range(10)]
    assert written[:3] == [0, 0, 0] and written[3:] == [None] * 7
    # In the next window the suppressed one is written with its count.
    assert c.note(("p", "r", "5"), 70.0) == 1


def test_the_table_is_bounded() -> None:
    c = RefusalCoalescer(window=60, max_per_window=10**9, max_keys=50)
    for i in range(10_000):
        c.note(("p", "r", str(i)), float(i) / 1000)
    assert len(c._keys) == 50


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1000)), max_size=300))
def test_at_most_max_per_window_lines_per_window(events: list[tuple[int, float]]) -> None:
    c = RefusalCoalescer(window=60, max_per_window=4, max_keys=3)
    times = sorted(t for _, t in events)
    writes = [t for (k, _), t in zip(events, times) if c.note(k, t) is not None]
    # Windows are anchored where one starts: any 60 s span overlaps at most two.
    for start in writes:
        assert len([t for t in writes if start <= t < start + 60]) <= 8


def test_the_replication_rejection_table_is_bounded() -> None:
    """A wrong-key flood from 10 000 source addresses: the announcement table stays at
    its cap, and a known peer is still announced once per interval."""
    from daemon.standby.replication import MAX_ANNOUNCED_REJECTIONS, due_again

    table: dict[tuple[str, str], float] = {}
    announced = sum(due_again(table, (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "wrong key"), i / 1000, 60)
                    for i in range(10_000))
    assert announced == 10_000 and len(table) == MAX_ANNOUNCED_REJECTIONS
    assert due_again(table, ("10.9.9.9", "wrong key"), 20.0, 60)
    assert not due_again(table, ("10.9.9.9", "wrong key"), 30.0, 60)
    assert due_again(table, ("10.9.9.9", "wrong key"), 80.0, 60)
