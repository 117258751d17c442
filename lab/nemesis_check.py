"""The nemesis's checker: a pure function from a run's history and final journals to
findings and figures. No trio, no I/O: it is tested with hand-made histories.

The history is a list of records (dicts, as the nemesis writes them one JSON line each),
every time a CLOCK_MONOTONIC reading in ns (``time.monotonic_ns()``, one clock for every
process and namespace of the host):

``{"kind": "append", "node": N, "sent_ns": S, "recv_ns": R, "payloads": [text...],``
``"outcome": "answered" | "refused" | "timeout" | "lost" | "not_sent", "results":``
``[{"seq", "epoch", "status"}...], "error": code}``
    one ``journal.append`` request and what came back. ``answered``: one result per
    payload, ``status`` ``ok`` or ``in_doubt``; ``refused``: an error reply (nothing was
    written); ``timeout`` / ``lost``: sent, no answer (the outcome is unknown);
    ``not_sent``: the connection failed before the request left. The nemesis writes
    the same compactly: ``"first_n": N, "count": K`` for the payloads
    :func:`payload_text` (seed, N) ... (seed, N + K - 1), the seed being the ``start``
    record's, and ``"runs": [[first_seq, last_seq, epoch, status], ...]`` for the results.
``{"kind": "start", "seed": S, ...}``  the run's seed (first record).
``{"kind": "role", "node": N, "feed": F, "first": bool, "recv_ns": R, "msg": {...}}``
    one ``role.watch`` message of node ``N`` on feed connection ``F`` (``first``: the
    snapshot a subscription starts with).
``{"kind": "feed_end", "node": N, "feed": F, "recv_ns": R}``
    that feed connection ended (the process died, or the feed was cut).
``{"kind": "fault", "class": C, ...}``
    a fault the nemesis injected (counted by class).

The journals: ``{node: {seq: payload bytes}}`` read back at the end, and which node was
primary then. Only the final primary's must be whole; of the others, the records that
differ from the final primary's are enough (the nemesis keeps no more, to save memory).

The rules (each finding names its rule):

``lost``  every ``ok`` record is in the final primary's journal, byte-identical, at its seq.
``double_ack``  no seq is answered ``ok`` twice with different payloads.
``outside_interval``  no ``ok`` from a node outside its own trading intervals as its
    feed defined them. A ``primary`` message opens an interval at the message's
    ``monotonic_ns`` stamp (when the node published it; the receive time if absent) and
    closes it at its ``valid_until`` (the fence deadline the feed now carries; ``null``:
    no interval, the node may not trade) or, with no ``valid_until`` key at all (the
    feed before it had one), at the node's next message on that
    feed (its stamp, else its receive time) or the end of the feed connection; any later
    non-primary message of the node (``fenced``, ``standby``...) closes it earlier. An
    ``ok`` answer to a request sent at S and answered at R is legitimate when [S, R]
    meets one of its node's intervals; a violation when it meets none: the request was
    sent after the node's last published deadline had passed (or before it first said
    primary) and the node still answered ``ok``.
``overlap``  no instant at which both nodes' feeds allowed trading (at most one host
    trades), as an engine following the contract sees them: an interval also ends when
    its feed connection closes ("stop at once on a closed feed"). A violation when both
    intervals come from ``valid_until``; with the fallback only the figure
    ``feed_overlap_ms`` (a frozen primary's old feed says "primary" until it can speak).
``duplicate``  no payload is at two seqs of the final journal (each payload is unique).
``unknown_payload``  the final journal holds nothing the writer did not send.
``diverged``  after the final catch-up, every node's journal agrees with the final
    primary's on every seq both hold.
``in_doubt`` (informational)  every ``in_doubt`` record is read back: present at its seq
    or absent; every request without an answer is looked up by payload.

``findings`` with ``severity`` ``"violation"`` fail the run; ``"info"`` ones report.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

VIOLATIONS = ("lost", "double_ack", "outside_interval", "overlap", "duplicate", "unknown_payload", "diverged")
#: At most this many findings of one rule are listed one by one; the rest are counted.
EXAMPLES = 20


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "violation" | "info"
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    findings: list[Finding]
    figures: dict[str, Any]

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "violation"]

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "figures": self.figures, "findings": [asdict(f) for f in self.findings]}


@dataclass(frozen=True)
class Interval:
    node: str
    start_ns: int
    end_ns: int  # exclusive: the node's own end (its deadline, its next message)
    epoch: int
    source: str  # "valid_until" | "next_message"
    #: The end as an engine following the contract sees it: also when its feed closed.
    engine_end_ns: int = 0

    def __post_init__(self) -> None:
        if not self.engine_end_ns:
            object.__setattr__(self, "engine_end_ns", self.end_ns)

    def meets(self, a: int, b: int) -> bool:
        """Whether [a, b] and [start, end) share an instant."""
        return self.start_ns <= b and a < self.end_ns


def payload_text(seed: int, n: int) -> str:
    """The nemesis writer's ``n``-th payload: unique in a run, and across runs by seed."""
    return f"nemesis seed={seed} n={n}"


def request_payloads(request: Mapping[str, Any], seed: int | None) -> list[bytes]:
    if "payloads" in request:
        return [p.encode() for p in request["payloads"]]
    first, count = int(request.get("first_n", 0)), int(request.get("count", 0))
    return [payload_text(seed or 0, n).encode() for n in range(first, first + count)]


def request_results(request: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    """(seq, epoch, status) per payload, from ``results`` or from ``runs``."""
    if "runs" in request:
        return [(seq, int(epoch), str(status)) for first, last, epoch, status in request["runs"]
                for seq in range(int(first), int(last) + 1)]
    return [(int(r["seq"]), int(r.get("epoch", 0)), str(r.get("status"))) for r in request.get("results", [])]


def _stamp(record: Mapping[str, Any]) -> int:
    msg = record.get("msg") or {}
    stamp = msg.get("monotonic_ns")
    return int(stamp) if isinstance(stamp, int) and not isinstance(stamp, bool) else int(record["recv_ns"])


def trading_intervals(history: Iterable[Mapping[str, Any]], end_ns: int) -> dict[str, list[Interval]]:
    """Each node's trading intervals as its ``role.watch`` feeds defined them (see the
    module docstring). ``end_ns``: the end of the run, closing a feed still open."""
    feeds: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    ends: dict[tuple[str, Any], int] = {}
    for record in history:
        if record.get("kind") == "role":
            feeds.setdefault((record["node"], record.get("feed")), []).append(record)
        elif record.get("kind") == "feed_end":
            ends[(record["node"], record.get("feed"))] = int(record["recv_ns"])
    out: dict[str, list[Interval]] = {}
    for (node, feed), messages in feeds.items():
        messages = sorted(messages, key=lambda r: int(r["recv_ns"]))
        feed_end = ends.get((node, feed), end_ns)
        for i, record in enumerate(messages):
            msg = record.get("msg") or {}
            if msg.get("role") != "primary":
                continue
            start = _stamp(record)
            later = messages[i + 1:]
            # Any later message that is not primary ends the interval (when it was stamped).
            closing = next((_stamp(r) for r in later if (r.get("msg") or {}).get("role") != "primary"), None)
            valid_until = msg.get("valid_until")
            if isinstance(valid_until, int) and not isinstance(valid_until, bool):
                end, source = int(valid_until), "valid_until"
            elif "valid_until" in msg:
                continue  # a feed with deadlines, and none: this node may not trade now
            else:
                # Fallback (a feed without deadlines): valid until the node's next message.
                end = _stamp(later[0]) if later else feed_end
                source = "next_message"
            if closing is not None:
                end = min(end, closing)
            # The contract: stop at once on a closed feed (the deadline still binds the node).
            engine_end = min(end, feed_end)
            if end > start:
                out.setdefault(node, []).append(Interval(node, start, end, int(msg.get("epoch", 0) or 0), source,
                                                         max(start, engine_end)))
    for intervals in out.values():
        intervals.sort(key=lambda iv: iv.start_ns)
    return out


def _merge(intervals: list[Interval]) -> list[tuple[int, int]]:
    """The union of intervals as disjoint [start, end) pairs, sorted."""
    out: list[tuple[int, int]] = []
    for iv in sorted(intervals, key=lambda iv: iv.start_ns):
        if out and iv.start_ns <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], iv.end_ns))
        else:
            out.append((iv.start_ns, iv.end_ns))
    return out


def _meets(merged: list[tuple[int, int]], a: int, b: int) -> bool:
    """Whether [a, b] shares an instant with one of the disjoint sorted [start, end)."""
    i = bisect.bisect_right(merged, (b, 1 << 62)) - 1  # the last interval starting at or before b
    return i >= 0 and a < merged[i][1]


def _overlaps(a: list[Interval], b: list[Interval]) -> list[tuple[Interval, Interval, int]]:
    """Pairs of intervals of two nodes during which an engine following each feed could
    trade on both hosts (engine view: the feed's end counts), with the overlap in ns."""
    out = []
    for x in a:
        for y in b:
            both = min(x.engine_end_ns, y.engine_end_ns) - max(x.start_ns, y.start_ns)
            if both > 0:
                out.append((x, y, both))
    return out


def check(history: Iterable[Mapping[str, Any]], journals: Mapping[str, Mapping[int, bytes]], final_primary: str,
          *, end_ns: int | None = None, retained_from: int = 1) -> CheckResult:
    """Check a whole run. ``journals``: each node's journal read back at the end (seq →
    payload); ``final_primary``: the node that was primary then; ``retained_from``: its
    first seq still on disk (journal retention removed the ones below: an acknowledged
    record there is counted ``unverifiable``, not lost)."""
    history = list(history)
    if end_ns is None:
        end_ns = max((int(r.get("recv_ns", 0)) for r in history), default=0)
    findings: list[Finding] = []
    counts: Counter[str] = Counter()

    def report(rule: str, severity: str, message: str, **detail: Any) -> None:
        counts[rule] += 1
        if counts[rule] <= EXAMPLES:
            findings.append(Finding(rule, severity, message, detail))

    final = journals.get(final_primary)
    if final is None:
        findings.append(Finding("lost", "violation", f"no journal of the final primary {final_primary!r} to check "
                                                     "against", {}))
        final = {}
    appends = [r for r in history if r.get("kind") == "append"]
    seed = next((int(r["seed"]) for r in history if r.get("kind") == "start" and "seed" in r), None)
    intervals = trading_intervals(history, end_ns)

    # One pass over the requests; nothing per acknowledged record is kept but what a
    # finding needs (a long run acknowledges millions).
    merged = {node: _merge(ivs) for node, ivs in intervals.items()}
    acked = 0
    unverifiable = 0
    lost = 0
    lost_seqs: set[int] = set()
    outside = 0
    in_doubt: list[tuple[Mapping[str, Any], int, bytes]] = []
    unanswered: list[tuple[Mapping[str, Any], bytes]] = []
    sent_explicit: set[bytes] = set()
    sent_ranges: list[tuple[int, int]] = []  # compact requests: [first_n, first_n + count)
    statuses: Counter[str] = Counter()
    for request in appends:
        payloads = request_payloads(request, seed)
        outcome = request.get("outcome")
        statuses[f"{request.get('node')} {outcome}"] += 1
        if outcome != "not_sent" and outcome != "refused":
            if "payloads" in request:
                sent_explicit.update(payloads)
            else:
                first_n = int(request.get("first_n", 0))
                sent_ranges.append((first_n, first_n + int(request.get("count", 0))))
        if outcome in ("timeout", "lost"):
            unanswered += [(request, p) for p in payloads]
            continue
        if outcome != "answered":
            continue
        oks: list[tuple[int, int]] = []  # (seq, epoch)
        for (seq, epoch, status), payload in zip(request_results(request), payloads):
            if status == "in_doubt":
                in_doubt.append((request, seq, payload))
                continue
            if status != "ok":
                continue
            acked += 1
            oks.append((seq, epoch))
            if seq < retained_from:
                unverifiable += 1
                continue
            # (a) lost: every ok record in the final primary's journal, byte for byte, at its seq.
            held = final.get(seq)
            if held != payload:
                lost += 1
                lost_seqs.add(seq)
                why = "missing" if held is None else "a different record at that seq"
                report("lost", "violation", f"seq {seq} acknowledged ok by {request['node']} (epoch {epoch}) is "
                                            f"{why} in {final_primary}'s final journal",
                       seq=seq, node=request["node"], epoch=epoch, payload=payload.decode(errors="replace"),
                       held=None if held is None else held.decode(errors="replace"), sent_ns=request["sent_ns"])
        if not oks:
            continue
        # (c) outside_interval: an ok from a node outside every trading interval of its feed.
        node = request["node"]
        sent, received = int(request["sent_ns"]), int(request["recv_ns"])
        mine = merged.get(node, [])
        if _meets(mine, sent, received):
            continue
        outside += len(oks)
        before = sorted((iv for iv in intervals.get(node, []) if iv.end_ns <= sent), key=lambda iv: iv.end_ns)
        last = before[-1] if before else None
        last_end = last.end_ns if last is not None else None
        why = (f"its last interval ended {(sent - last.end_ns) / 1e6:.1f} ms before the request was sent "
               f"({last.source})" if last is not None else "its feed never said primary before the answer")
        for seq, _ in oks:
            report("outside_interval", "violation", f"seq {seq} answered ok by {node} outside its trading "
                                                    f"intervals: {why}", seq=seq, node=node, sent_ns=sent,
                   recv_ns=received, last_end_ns=last_end)

    # (b) double_ack: one seq answered ok with two different payloads. At most one of
    # them is the final journal's, so every such seq is among the lost ones.
    by_seq: dict[int, dict[bytes, str]] = {}
    if lost_seqs:
        for request in appends:
            if request.get("outcome") != "answered":
                continue
            for (seq, _epoch, status), payload in zip(request_results(request), request_payloads(request, seed)):
                if status == "ok" and seq in lost_seqs:
                    by_seq.setdefault(seq, {}).setdefault(payload, request["node"])
    double = 0
    for seq in sorted(by_seq):
        answers = by_seq[seq]
        if len(answers) > 1:
            double += len(answers) - 1
            report("double_ack", "violation", f"seq {seq} answered ok twice with different payloads: by "
                                              f"{' and by '.join(answers.values())}",
                   seq=seq, nodes=list(answers.values()), payloads=[p.decode(errors="replace") for p in answers])

    # Final journal: no payload twice, nothing the writer did not send.
    first_at: dict[bytes, int] = {}
    again: dict[bytes, list[int]] = {}
    for seq, payload in final.items():
        if payload in first_at:
            again.setdefault(payload, [first_at[payload]]).append(seq)
        else:
            first_at[payload] = seq
    for payload, seqs in again.items():
        report("duplicate", "violation", f"one payload at {len(seqs)} seqs of the final journal: "
                                         f"{sorted(seqs)[:5]}", seqs=sorted(seqs), payload=payload.decode(errors="replace"))
    sent_ranges.sort()
    starts = [a for a, _ in sent_ranges]
    prefix = f"nemesis seed={seed} n=".encode() if seed is not None else None
    for payload, seq in first_at.items():
        if payload in sent_explicit:
            continue
        if prefix is not None and payload.startswith(prefix) and payload[len(prefix):].isdigit():
            n = int(payload[len(prefix):])
            i = bisect.bisect_right(starts, n) - 1
            if i >= 0 and n < sent_ranges[i][1]:
                continue
        report("unknown_payload", "violation", f"seq {seq} of the final journal holds a payload the writer "
                                               "never sent", seqs=sorted(again.get(payload, [seq])))
    for node, journal in journals.items():
        if node == final_primary:
            continue
        differ = sorted(seq for seq, payload in journal.items() if seq in final and final[seq] != payload)
        if differ:
            report("diverged", "violation", f"{node}'s final journal differs from {final_primary}'s at "
                                            f"{len(differ)} seq(s), from {differ[0]}", node=node, seqs=differ[:20])

    # (d) in_doubt and unanswered records, read back.
    doubt_present = sum(1 for _, seq, payload in in_doubt if final.get(seq) == payload)
    for request, seq, payload in in_doubt:
        there = final.get(seq) == payload
        report("in_doubt", "info", f"seq {seq} in doubt from {request['node']}: "
                                   f"{'present' if there else 'absent'} in the final journal",
               seq=seq, node=request["node"], present=there)
    unanswered_present = sum(1 for _, payload in unanswered if payload in first_at)

    primary_epochs = {(r["node"], int((r.get("msg") or {}).get("epoch", 0) or 0)) for r in history
                      if r.get("kind") == "role" and (r.get("msg") or {}).get("role") == "primary"}
    # Two hosts trading at once: with deadlines on both feeds a violation of the pair's
    # second promise; with the fallback (no deadlines) a figure, since a frozen primary's
    # feed says "primary" until it can say otherwise.
    nodes = sorted(intervals)
    overlap = 0
    for x, y, both in (_overlaps(intervals[nodes[0]], intervals[nodes[1]]) if len(nodes) == 2 else []):
        overlap += both
        if x.source == "valid_until" and y.source == "valid_until":
            report("overlap", "violation", f"both feeds allowed trading for {both / 1e6:.1f} ms: {x.node} epoch "
                                           f"{x.epoch} and {y.node} epoch {y.epoch}",
                   nodes=[x.node, y.node], epochs=[x.epoch, y.epoch], start_ns=max(x.start_ns, y.start_ns),
                   overlap_ns=both)
    faults = Counter(str(r.get("class")) for r in history if r.get("kind") == "fault")
    figures: dict[str, Any] = {
        "faults": dict(sorted(faults.items())),
        "faults_total": sum(faults.values()),
        "requests": len(appends),
        "requests_by_outcome": dict(sorted(statuses.items())),
        "records_sent": len(sent_explicit) + sum(b - a for a, b in sent_ranges),
        "records_acked": acked,
        "acked_unverifiable": unverifiable,
        "records_in_doubt": len(in_doubt),
        "in_doubt_present": doubt_present,
        "in_doubt_absent": len(in_doubt) - doubt_present,
        "records_unanswered": len(unanswered),
        "unanswered_present": unanswered_present,
        "unanswered_absent": len(unanswered) - unanswered_present,
        "promotions": len(primary_epochs),
        "final_primary": final_primary,
        "final_last_seq": max(final, default=0),
        "final_first_seq": retained_from,
        "lost": lost,
        "double_acked": double,
        "outside_interval": outside,
        "duplicates": counts["duplicate"],
        "unknown_payloads": counts["unknown_payload"],
        "diverged": counts["diverged"],
        # How long both feeds allowed trading at once (a violation with deadlines on both;
        # with the fallback, a frozen primary's stale "primary" counts until its next message).
        "feed_overlap_ms": round(overlap / 1e6, 3),
        "overlaps": counts["overlap"],
        "interval_sources": dict(Counter(iv.source for ivs in intervals.values() for iv in ivs)),
    }
    for rule, count in counts.items():
        if count > EXAMPLES:
            findings.append(Finding(rule, findings_severity(rule), f"... and {count - EXAMPLES} more {rule} finding(s)",
                                    {"omitted": count - EXAMPLES}))
    return CheckResult(findings, figures)


def findings_severity(rule: str) -> str:
    return "violation" if rule in VIOLATIONS else "info"
