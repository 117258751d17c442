"""The standby service: the journal, its replication, and the writer API on the control
socket.

The trading engine talks to it over the control socket:

``journal.append`` ``{"payloads": ["text", ...]}`` (or ``"payloads_b64"`` for binary)
    appends the records in order and answers one result per record:
    ``{"seq": 42, "epoch": 1, "status": "ok" | "in_doubt", "durable_on": ..., "reason": ...}``.

    The writer's contract: **ok** means the record is durable as the mode promises (in
    ``sync`` mode, on the standby's disk too: a failover cannot lose it). **in_doubt**
    means the record *is* in the primary's journal with that seq but may not have
    reached the standby (the wait for its acknowledgement timed out or was cancelled,
    or the standby is gone under ``on_standby_loss = "block"``). The engine must not
    treat an in-doubt order as placed or as not placed: it must not resend it blindly
    (that could trade twice) — it reconciles first (ask the venue by client order id,
    or read the journal back after the pair is in sync) and then decides. A request the
    daemon refuses outright (not primary, payload too large) is an error reply: nothing
    was written.

``journal.read`` ``{"from": SEQ, "limit": N}``  records back, payloads as text when
they are UTF-8, else base64 (``"payload_b64"``).

``journal.stats``  the journal's and the replication link's figures.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Iterable

import trio

from daemon.config import Config
from daemon.control_client import ControlError
from daemon.events import EventBus, JournalTailTruncated
from daemon.log import get_logger
from daemon.service import MetricFamily, ServiceStatus
from daemon.standby import MAX_PAYLOAD, Record, StandbyError

log = get_logger("standby")

#: How often closed segments are considered for removal (journal retention).
RETENTION_INTERVAL = 60.0

#: Most records one journal.append request may carry.
MAX_BATCH = 10_000


def journal_directory(config: Config) -> Path:
    return Path(config.node.state_dir) / "journal"


def record_to_json(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": record.seq, "epoch": record.epoch, "timestamp_ns": record.timestamp_ns}
    try:
        out["payload"] = record.payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload_b64"] = base64.b64encode(record.payload).decode()
    return out


def payloads_from_params(params: dict[str, Any]) -> list[bytes]:
    """The payloads of a journal.append request, validated; ControlError otherwise."""
    if "payloads" in params:
        items = params["payloads"]
        # str.encode over the list in C; it refuses a non-string item (TypeError), which
        # is the same check as isinstance(item, str) without a second pass.
        if not isinstance(items, list):
            raise ControlError("bad_request", '"payloads" must be a list of strings')
        try:
            payloads = list(map(str.encode, items))
        except TypeError:
            raise ControlError("bad_request", '"payloads" must be a list of strings') from None
    elif "payloads_b64" in params:
        items = params["payloads_b64"]
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            raise ControlError("bad_request", '"payloads_b64" must be a list of base64 strings')
        try:
            payloads = [base64.b64decode(p, validate=True) for p in items]
        except (binascii.Error, ValueError) as exc:
            raise ControlError("bad_request", f"invalid base64 in payloads_b64: {exc}") from None
    elif "payload" in params and isinstance(params["payload"], str):
        payloads = [params["payload"].encode("utf-8")]
    else:
        raise ControlError("bad_request", 'expected {"payloads": ["...", ...]} or {"payloads_b64": [...]}')
    if not payloads:
        raise ControlError("bad_request", "no payloads")
    if len(payloads) > MAX_BATCH:
        raise ControlError("bad_request", f"at most {MAX_BATCH} payloads per request, found {len(payloads)}")
    if max(map(len, payloads)) > MAX_PAYLOAD:
        for i, payload in enumerate(payloads):
            if len(payload) > MAX_PAYLOAD:
                raise ControlError("too_large", f"payload {i} is {len(payload)} bytes; the limit is {MAX_PAYLOAD}")
    return payloads


class StandbyService:
    """Owns the journal and the replication role of this host."""

    name = "standby"

    def __init__(self, config: Config, bus: EventBus, *, key: bytes | None = None) -> None:
        assert config.standby is not None
        self.config = config
        self.settings = config.standby
        self.bus = bus
        self.role = self.settings.role
        self._key = key
        self.journal: Any = None
        self.replication: Any = None
        self.appends = 0
        self.in_doubt = 0
        #: Torn tails cut when the journal was opened (shown in status details).
        self.repairs: list[str] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from daemon.standby.journal import Journal
        from daemon.standby.keys import load_replication_key
        from daemon.standby.replication import ReplicationPrimary, ReplicationStandby

        key = self._key if self._key is not None else load_replication_key(self.settings.key_file)
        directory = journal_directory(self.config)
        # Opening scans and verifies every segment: blocking file I/O, off the loop.
        self.journal = await trio.to_thread.run_sync(Journal.open, directory, self.settings.journal)
        # The journal logged each repair as it made it; tell subscribers and status too.
        for report in getattr(self.journal, "recoveries", ()):
            self.repairs.append(str(report))
            self.bus.publish(JournalTailTruncated(
                source=self.name, file=str(report.file), records_dropped=report.records_dropped,
                bytes_dropped=report.bytes_dropped, reason=report.reason))
        node = self.config.node.name
        if self.role == "primary":
            self.replication = ReplicationPrimary(self.journal, self.settings, node, key, bus=self.bus)
        else:
            self.replication = ReplicationStandby(self.journal, self.settings, node, key, bus=self.bus)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.journal.run)
                await nursery.start(self.replication.run)
                nursery.start_soon(self._retention_loop)
                log.info("standby.started", role=self.role, journal=str(directory),
                         last_seq=self.journal.last.seq, last_epoch=self.journal.last.epoch)
                task_status.started()
        finally:
            # Flush and release the files (and the directory lock) on the way out.
            self.journal.close()

    async def _retention_loop(self) -> None:
        """Remove old closed segments, but only ones both nodes hold: on the primary, up
        to what the standby acknowledged; on the standby, up to its own durable end (it
        received every record from the primary)."""
        while True:
            await trio.sleep(RETENTION_INTERVAL)
            if self.role == "primary":
                through = int(getattr(self.replication, "standby_acked_seq", 0))
            else:
                through = self.journal.last.seq
            if through <= 0:
                continue
            try:
                removed = self.journal.remove_segments_through(through)
            except StandbyError as exc:
                log.warning("journal.retention_failed", error=str(exc))
                continue
            if removed:
                log.info("journal.retention", segments_removed=removed, through_seq=through)

    # ------------------------------------------------------------------ control

    def register_control(self, control: Any) -> None:
        control.register("journal.append", self._append,
                         help='Append records: {"payloads": ["...", ...]}; one result per record '
                              '(status ok | in_doubt; see the writer contract in the README).')
        control.register("journal.read", self._read, help='Records back: {"from": SEQ, "limit": N}.')
        control.register("journal.stats", self._stats, help="The journal's and the replication link's figures.")

    async def _append(self, params: dict[str, Any]) -> Any:
        if self.role != "primary" or self.replication is None:
            raise ControlError("not_primary", f"this host ({self.config.node.name}) is the {self.role}; "
                                              "append on the primary")
        payloads = payloads_from_params(params)
        replication = self.replication
        try:
            if hasattr(replication, "append_runs"):
                runs = await replication.append_runs(payloads)
            else:
                runs = [(r.seq, r.seq, r.epoch, r.status, r.durable_on, r.reason, r.degraded)
                        for r in await replication.append_many(payloads)]
        except StandbyError as exc:
            raise ControlError("refused", str(exc)) from None
        out: list[dict[str, Any]] = []
        for first, last, epoch, status, durable_on, reason, _degraded in runs:
            count = last - first + 1
            self.appends += count
            if status != "ok":
                self.in_doubt += count
            out += [{"seq": seq, "epoch": epoch, "status": status, "durable_on": durable_on, "reason": reason}
                    for seq in range(first, last + 1)]
        return {"results": out}

    async def _read(self, params: dict[str, Any]) -> Any:
        start = params.get("from", 1)
        limit = params.get("limit", 100)
        if not isinstance(start, int) or isinstance(start, bool) or start < 1:
            raise ControlError("bad_request", '"from" must be a positive integer (a seq)')
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise ControlError("bad_request", '"limit" must be an integer from 1 to 10000')
        if self.journal is None:
            raise ControlError("not_ready", "the journal is not open yet")
        records = await trio.to_thread.run_sync(self.journal.read, start, limit)
        return {"records": [record_to_json(r) for r in records], "last_seq": self.journal.last.seq,
                "first_seq": self.journal.first_seq}

    async def _stats(self, params: dict[str, Any]) -> Any:
        return self.details()

    # ------------------------------------------------------------------ reporting

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "appends": self.appends, "in_doubt": self.in_doubt,
                               "repaired_at_open": self.repairs}
        if self.journal is not None:
            out["journal"] = self.journal.stats()
        if self.replication is not None:
            out["replication"] = self.replication.details()
        return out

    def status(self) -> ServiceStatus:
        if self.replication is None or self.journal is None:
            return ServiceStatus("ok", "opening the journal")
        replication = self.replication.status()
        last = self.journal.last
        summary = f"{self.role}, journal at seq {last.seq} (epoch {last.epoch}); {replication.summary}"
        return ServiceStatus(replication.health, summary, self.details())

    def metrics(self) -> Iterable[MetricFamily]:
        if self.journal is not None:
            last = self.journal.last
            yield MetricFamily.single("lifeline_journal_last_seq", "gauge", "Seq of the journal's last record.",
                                      last.seq)
            yield MetricFamily.single("lifeline_journal_epoch", "gauge", "Epoch of the journal's last record.",
                                      last.epoch)
            yield MetricFamily.single("lifeline_journal_appends_total", "counter",
                                      "Records appended through the control socket.", self.appends)
            yield MetricFamily.single("lifeline_journal_in_doubt_total", "counter",
                                      "Appends answered in-doubt.", self.in_doubt)
        if self.replication is not None and hasattr(self.replication, "metrics"):
            yield from self.replication.metrics()
