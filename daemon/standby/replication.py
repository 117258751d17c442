"""Journal replication over TCP: the primary serves, the standby follows.

The wire format, the handshake and the catch-up rule live in
:mod:`daemon.standby.protocol` (sans-IO, on :mod:`daemon.standby.channel`); the trio
shell around it is three modules, and this one names what they offer:

    link.py      what both ends share: the link, digests, the announcer, constants
    primary.py   ReplicationPrimary: serves one standby, answers the writer
    follower.py  ReplicationStandby: follows the primary, writes and acknowledges

:class:`ReplicationPrimary` listens on ``standby.listen`` and takes one authenticated
standby at a time. After the handshake the two agree on the common point of their
journals (a standby tail that is not on the primary's history is truncated back to it,
never merged), then the primary streams records as they are appended — many records per
frame, without waiting for acknowledgements (the window is TCP's) — and the standby
answers cumulative ACKs: the highest seq durable on its disk. Heartbeats go both ways
every ``heartbeat``; a link silent for ``peer_timeout`` is dead.

:meth:`ReplicationPrimary.append` is the writer's entry point. The record goes to the
local journal first (it is durable on the primary when that returns), then:

* ``mode = "async"``: ok at once (``durable_on = "primary"``).
* ``mode = "sync"`` with the standby in sync: ok once the standby has acknowledged the
  record (``durable_on = "primary+standby"``: RPO 0). If the wait times out
  (``sync_timeout``) or is cancelled, the record is **in doubt**, never ok: it is in the
  primary's journal and will still be streamed, but a failover before the standby has
  it would lose it. PostgreSQL has the same hole (Patroni documents that a cancelled
  synchronous-commit wait leaves the change visible but not replicated); the writer's
  contract (``daemon/standby/service.py``) says what to do with an in-doubt record:
  reconcile before acting on it again, never resend it blindly.
* ``mode = "sync"`` without a standby in sync (none connected, one still catching up,
  or one that reported a write error such as disk full): ``on_standby_loss = "block"``
  answers in-doubt at once; ``"degrade-to-async"`` answers ok with ``degraded=True``
  and raises an alarm in :meth:`status` until a standby is in sync again.

A standby counts as *in sync* — and the lease store may mark it synchronous, which lets
it promote itself — only once it has acknowledged everything the primary held when its
session started **and** every record ever answered ok without it
(:mod:`daemon.standby.insync` states and checks the rule). While it replays the backlog,
appends do not wait for it (a long catch-up does not stall writers); once the backlog is
replayed with few records answered alone left to send (else another catch-up round),
appends wait for it again until it holds every record answered alone.

Events (``daemon.core.events``): StandbyConnected, StandbyLost, ReplicationDegraded,
ReplicationRecovered, ReplicationRejected, DriftDetected, StandbyDiskFull,
StandbyWriteError, StandbyTruncated, PrimaryConnected, PrimaryLost; the last 200 are
also kept in ``announce.recent`` for status.
"""

from __future__ import annotations

from daemon.standby.follower import APPLY_BYTES, APPLY_QUEUE, APPLY_RECORDS, ReplicationStandby
from daemon.standby.link import (
    CLOSE_TIMEOUT,
    HANDSHAKE_CHUNK,
    HANDSHAKE_TIMEOUT,
    MAX_ANNOUNCED_REJECTIONS,
    RECEIVE_CHUNK,
    REANNOUNCE_AFTER,
    JournalLike,
    LinkLost,
    config_digest,
    describe_write_error,
    due_again,
    software_digest,
    software_version,
)
from daemon.standby.primary import (
    APPEND_TIMES_KEPT,
    BATCH_BYTES,
    BATCH_RECORDS,
    IN_DOUBT_KEPT,
    MAX_CATCHUP_ROUNDS,
    AppendResult,
    AppendRun,
    ReplicationPrimary,
    expand_runs,
)

__all__ = [
    "APPEND_TIMES_KEPT", "APPLY_BYTES", "APPLY_QUEUE", "APPLY_RECORDS", "BATCH_BYTES", "BATCH_RECORDS",
    "CLOSE_TIMEOUT", "HANDSHAKE_CHUNK", "HANDSHAKE_TIMEOUT", "IN_DOUBT_KEPT", "MAX_ANNOUNCED_REJECTIONS",
    "MAX_CATCHUP_ROUNDS", "RECEIVE_CHUNK", "REANNOUNCE_AFTER", "AppendResult", "AppendRun", "JournalLike", "LinkLost",
    "ReplicationPrimary", "ReplicationStandby", "config_digest", "describe_write_error", "due_again", "expand_runs",
    "software_digest", "software_version",
]
