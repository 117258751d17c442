"""Durable file helpers (daemon/core/files.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.core import files
from daemon.core.files import create_new_file, fsync_directory, link_new_file, replace_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o077, 0o277], ids=["umask000", "umask077", "umask277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """A permissive, the usual restrictive, and an owner-write-removing umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_fsync_directory(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    fsync_directory(tmp_path)
    fsync_directory(str(tmp_path))
    with pytest.raises(NotADirectoryError):
        fsync_directory(tmp_path / "a")


@pytest.mark.parametrize("wanted", [0o600, 0o644])
def test_create_new_file_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: int, wanted: int) -> None:
    path = tmp_path / "key"
    create_new_file(path, b"secret\n", wanted, exists_message="nope")
    assert mode(path) == wanted
    assert path.read_bytes() == b"secret\n"


def test_create_new_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError) as info:
        create_new_file(path, b"new", 0o600, exists_message=f"{path} already exists; remove it first")
    assert str(info.value) == f"{path} already exists; remove it first"
    assert path.read_bytes() == b"old"  # untouched, and not removed


def test_create_new_file_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (tmp_path / "key").symlink_to(target)  # dangling: O_CREAT alone would create target
    with pytest.raises(FileExistsError):
        create_new_file(tmp_path / "key", b"new", 0o600, exists_message="exists")
    assert not target.exists()


def test_create_new_file_removes_a_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        create_new_file(tmp_path / "key", b"data", 0o600, exists_message="exists")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("wanted", [0o600, 0o644])
def test_replace_file_creates_and_replaces_with_the_exact_mode(tmp_path: Path, umask: int, wanted: int) -> None:
    path = tmp_path / "state.json"
    replace_file(path, b"one", wanted)
    assert path.read_bytes() == b"one" and mode(path) == wanted
    replace_file(path, b"two", wanted)
    assert path.read_bytes() == b"two" and mode(path) == wanted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


def test_replace_file_default_mode_is_0644(tmp_path: Path) -> None:
    replace_file(tmp_path / "f", b"x")
    assert mode(tmp_path / "f") == 0o644


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_replace_file_leaves_the_old_content_when_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           failing: str) -> None:
    path = tmp_path / "state.json"
    replace_file(path, b"old", 0o600)

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, failing, fail)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, b"new" * 1000, 0o600)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_link_new_file_creates_whole_and_refuses_to_overwrite(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "keyring.toml"
    link_new_file(path, b"first", 0o644, exists_message="already there")
    assert path.read_bytes() == b"first" and mode(path) == 0o644
    with pytest.raises(FileExistsError, match="^already there$"):
        link_new_file(path, b"second", 0o644, exists_message="already there")
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.toml"]  # no temporary file left
