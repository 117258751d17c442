"""The hot standby: the execution journal, its replication, and (next) leases and roles.

    journal.py      append-only segment files, recovery on open, group commit
    journal_format.py  sans-IO: record frames, segment headers, the scan and the torn-tail rule
    channel.py      sans-IO authenticated channel: handshake, MACs, state-dependent frame caps
    protocol.py     sans-IO codec of the replication stream (on the channel)
    replication.py  the names of replication's trio shell, in three modules:
      link.py       what both ends share (the link, digests, the announcer)
      primary.py    the primary's server
      follower.py   the standby's client
    service.py      the trio service: writer API on the control socket, status, metrics

Shared vocabulary lives here so the pieces agree on it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from daemon.core.errors import LifelineError

#: Largest payload of one record (the engine's unit of durable state).
MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True, order=True)
class Position:
    """Where a journal ends: the (epoch, seq) of its last record; (0, 0) when empty.
    Ordered by epoch first, as a newer leader's history wins."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Record:
    """One journal record. ``seq`` is 1, 2, 3, ... without gaps for the life of the
    journal; ``epoch`` is the fencing epoch of the primary that wrote it (never lower than
    its predecessor's); ``timestamp_ns`` is the primary's wall clock when it was appended."""

    seq: int
    epoch: int
    timestamp_ns: int
    payload: bytes

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)


class StandbyError(LifelineError):
    """Base of the standby package's errors."""


class JournalCorrupt(StandbyError):
    """A record in the middle of the journal (not its tail) fails its checks: the daemon
    stops rather than guess. Names the file, the offset and what failed."""


class ChannelError(StandbyError):
    """An authenticated connection (:mod:`daemon.standby.channel`) cannot go on; it is
    closed, and only it. ``peer_fault`` says whose fault: True, the peer sent what the
    protocol does not allow (garbage, a bad MAC, a frame out of turn); False, this side
    tried to send what it may not (:class:`daemon.standby.channel.LocalProtocolError`,
    a bug here)."""

    peer_fault: bool = True


class ReplicationProtocolError(ChannelError):
    """The peer sent something the replication protocol does not allow; the connection is closed."""


def record_to_json(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": record.seq, "epoch": record.epoch, "timestamp_ns": record.timestamp_ns}
    try:
        out["payload"] = record.payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload_b64"] = base64.b64encode(record.payload).decode()
    return out
