"""Durable writes, as the tests watch them."""

from __future__ import annotations

import os
import stat

import pytest


def spy_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on (for the test), every ``os.fsync`` still syncs and appends the file
    type of its descriptor (``stat.S_IFREG``, ``stat.S_IFDIR``) to the list returned."""
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_IFMT(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced
