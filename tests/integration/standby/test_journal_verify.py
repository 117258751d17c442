"""`lifeline journal verify`: read-only, says what is torn and what is corrupt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from daemon.config import JournalConfig
from daemon.standby.journal import Journal, verify_directory
from tests.support.cli import ROOT


async def _fill(directory: Path, count: int) -> None:
    journal = Journal.open(directory, JournalConfig(fsync="never"))
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(count):
            await journal.append(f"record {i}".encode(), epoch=1)
        nursery.cancel_scope.cancel()
    journal.close()


async def test_verify_ok_torn_and_corrupt(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    await _fill(directory, 50)
    report = verify_directory(directory)
    assert report.ok and report.records == 50 and report.last.seq == 50 and report.last.epoch == 1
    segment = sorted(directory.glob("*.seg"))[-1]
    before = segment.read_bytes()
    segment.write_bytes(before[:-5])  # a torn last record
    report = verify_directory(directory)
    assert not report.ok and report.problem is None
    assert report.torn_tail is not None and report.torn_tail.records_dropped == 1
    assert segment.read_bytes() == before[:-5], "verify changes nothing"
    cli = subprocess.run([sys.executable, "-m", "daemon.cli", "journal", "verify", str(directory)],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 1 and "TORN TAIL" in cli.stdout and "would be cut" in cli.stdout
    middle = bytearray(before)
    middle[200] ^= 0xFF  # damage followed by valid records: corruption, not a torn tail
    segment.write_bytes(bytes(middle))
    report = verify_directory(directory)
    assert report.problem is not None and "corrupt journal at offset" in report.problem
    assert str(segment) in report.problem
    segment.write_bytes(before)
    cli = subprocess.run([sys.executable, "-m", "daemon.cli", "journal", "verify", str(directory)],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 0 and "OK:" in cli.stdout


def test_verify_missing_directory(tmp_path: Path) -> None:
    report = verify_directory(tmp_path / "nope")
    assert not report.ok and "no such journal directory" in (report.problem or "")
