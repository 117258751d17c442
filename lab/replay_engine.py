"""The lab's stand-in for a trading engine: real recorded market data, appended to the
journal through the control socket.

The feeds are the Binance spot, USDⓈ-M and COIN-M recordings (BTC and ETH, 2024-08-08)
shipped in ``lab/data/hftbacktest_feeds/`` (from nkaz001/hftbacktest, MIT licence, trimmed
to their first 20 s; see ``lab/data/README.md``): gzip text, one message per line,
``<local_ts_ns> <json>``. A benchmark may replay the full upstream recordings from a
folder given on its command line (``FULL_FEEDS``; ``bench/replication.py --data DIR``).
The files are merged in order of their local receive timestamps, and each *line itself*
(without its newline) becomes one journal record, so a test can compare what the standby
holds with the source files byte for byte.

Pace: ``None`` appends as fast as the daemon acknowledges; ``1.0`` at the recorded pace;
``N`` N times faster. Lines go in batches (``journal.append`` takes many payloads per
request) over one connection, so the journal's order is the feed's order.
"""

from __future__ import annotations

import gzip
import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
#: The trimmed recordings shipped in the repository (18 816 lines, 0.8 MB gzipped).
DATA_DIR = ROOT / "lab" / "data" / "hftbacktest_feeds"

#: The Binance recordings shipped here; the Hyperliquid sample is another format.
BINANCE_FEEDS = (
    "spot_btcusdt_20240808.gz", "usdm_btcusdt_20240808.gz", "cm_btcusd_perp_20240808.gz",
    "spot_ethusdt_20240808.gz", "usdm_ethusdt_20240808.gz", "cm_ethusd_perp_20240808.gz",
)
#: The whole upstream set (about 440 000 lines), for a benchmark pointed at a full copy.
FULL_FEEDS = BINANCE_FEEDS + ("spot_btcusdt_20240809.gz", "cm_btcusd_perp_20240809.gz")


def feed_paths(data_dir: Path = DATA_DIR, names: Iterable[str] = BINANCE_FEEDS) -> list[Path]:
    paths = [data_dir / name for name in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"recorded feeds not found: {', '.join(missing)} (the repository ships them in "
                                f"lab/data/hftbacktest_feeds; see lab/data/README.md)")
    return paths


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with gzip.open(path, "rb") as handle:
        for raw in handle:
            line = raw.rstrip(b"\n")
            if not line:
                continue
            stamp, _, _ = line.partition(b" ")
            try:
                yield int(stamp), line
            except ValueError:
                raise ValueError(f"{path}: line without a leading nanosecond timestamp: {line[:60]!r}") from None


def merged_lines(paths: Iterable[Path]) -> Iterator[tuple[int, bytes]]:
    """Every line of every file, in order of local receive time (ties: file order)."""
    return heapq.merge(*(_lines(p) for p in paths), key=lambda item: item[0])


@dataclass
class ReplayStats:
    sent: int = 0
    ok: int = 0
    in_doubt: int = 0
    errors: int = 0
    batches: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: seq of every record acknowledged "ok", in order (for loss checks).
    acknowledged: list[int] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


AppendBatch = Callable[[list[bytes]], list[dict[str, Any]]]


def replay(lines: Iterable[tuple[int, bytes]], append_batch: AppendBatch, *, pace: float | None = None,
           batch: int = 256, limit: int | None = None, on_batch: Callable[[ReplayStats], None] | None = None,
           keep_seqs: bool = False) -> ReplayStats:
    """Append ``lines`` through ``append_batch`` (payloads in, one result per payload out:
    ``{"status": "ok" | "in_doubt", "seq": ...}``)."""
    stats = ReplayStats()
    began = time.monotonic()
    first_ts: int | None = None
    pending: list[bytes] = []

    def flush() -> None:
        if not pending:
            return
        results = append_batch(list(pending))
        stats.batches += 1
        stats.sent += len(pending)
        stats.bytes += sum(len(p) for p in pending)
        for result in results:
            status = result.get("status")
            if status == "ok":
                stats.ok += 1
                if keep_seqs:
                    stats.acknowledged.append(int(result["seq"]))
            elif status == "in_doubt":
                stats.in_doubt += 1
            else:
                stats.errors += 1
        pending.clear()
        if on_batch is not None:
            on_batch(stats)

    for count, (stamp, line) in enumerate(lines):
        if limit is not None and count >= limit:
            break
        if pace is not None:
            if first_ts is None:
                first_ts = stamp
            due = began + (stamp - first_ts) / 1e9 / pace
            wait = due - time.monotonic()
            if wait > 0:
                flush()  # what is due now goes before we sleep
                time.sleep(wait)
        pending.append(line)
        if len(pending) >= batch:
            flush()
    flush()
    stats.seconds = time.monotonic() - began
    return stats


def control_socket_writer(client: Any) -> AppendBatch:
    """``append_batch`` over a connected :class:`daemon.core.control_client.ControlClient`:
    payloads that are UTF-8 go as text, others base64."""
    import base64

    def append_batch(payloads: list[bytes]) -> list[dict[str, Any]]:
        try:
            texts = [p.decode("utf-8") for p in payloads]
            params: dict[str, Any] = {"payloads": texts}
        except UnicodeDecodeError:
            params = {"payloads_b64": [base64.b64encode(p).decode() for p in payloads]}
        return list(client.call("journal.append", params)["results"])

    return append_batch


def feed_lines(*, endless: bool = False) -> Iterator[bytes]:
    """The recorded Binance feed lines, merged in receive order (each line one journal
    record); ``endless`` starts over at the end (drills that run for a while)."""
    paths = feed_paths()
    while True:
        for _, line in merged_lines(paths):
            yield line
        if not endless:
            return
