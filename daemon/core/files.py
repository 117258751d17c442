"""Durable files: how lifeline writes a file that must survive a crash or a power cut.

Each idiom lives here once, because each is easy to get subtly wrong:

* a file created, renamed, linked or unlinked is durable only once its *directory* is
  fsynced (:func:`fsync_directory`);
* a secret must never exist with a wider mode, not even for a moment, and the umask
  must not decide its final mode (:func:`create_new_file`, :func:`link_new_file`);
* a file that others read must never be seen half-written: write a temporary file in
  the same directory, fsync, then rename (:func:`replace_file`) or hard-link
  (:func:`link_new_file`) it into place.

Plain blocking I/O, no trio: async code calls these from a thread.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["create_new_file", "fsync_directory", "link_new_file", "make_directory", "replace_file"]

#: The journal's directory and files (order records: the daemon's user and group only),
#: whatever the umask.
DATA_DIR_MODE = 0o750
DATA_FILE_MODE = 0o640


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """fsync the directory ``path``: an entry created, renamed, linked or unlinked in it
    survives a power cut only once this returns (fsyncing the file is not enough)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(path: str | os.PathLike[str], mode: int = DATA_DIR_MODE) -> None:
    """Create ``path`` (and its parents) if missing; then make sure it grants no more
    than ``mode`` (a new one gets exactly ``mode``, whatever the umask; an existing one
    only loses bits, so an operator's tighter 0700 stays)."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    current = path.stat().st_mode & 0o7777
    wanted = mode if created else current & mode
    if current != wanted:
        os.chmod(path, wanted)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk); keep going until it errors."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def create_new_file(path: str | os.PathLike[str], data: bytes, mode: int, *, exists_message: str) -> None:
    """Create ``path`` holding ``data`` with exactly ``mode``, and fsync it.

    ``O_EXCL``: never overwrites, not even a file that appeared a moment ago (then
    ``FileExistsError(exists_message)``); ``O_NOFOLLOW``: never writes through a link.
    ``mode`` is given at creation so the file is never more readable than that, then set
    again with fchmod because the umask may have taken bits away. On any failure the
    half-written file is removed. The directory is not fsynced: a caller creating
    several files calls :func:`fsync_directory` once, after the last."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise FileExistsError(exists_message) from None
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """A new, fsynced file holding ``data`` (exactly ``mode``) next to ``path``, named
    ``.NAME.XXXXXXXX.tmp``: same directory, so a rename or link of it is atomic; a
    unique name, so concurrent writers never share one."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)  # mkstemp made it 0600
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def replace_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace (or create) ``path`` with ``data``, mode exactly ``mode``: a crash leaves
    the old file or the new one, never a mix, and once this returns the new one
    survives a power cut (temporary file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    tmp = _write_temporary(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def link_new_file(path: str | os.PathLike[str], data: bytes, mode: int, *, exists_message: str) -> None:
    """Create ``path`` holding ``data``, mode exactly ``mode``, only if it does not exist
    (else ``FileExistsError(exists_message)``), and durably.

    Unlike :func:`create_new_file`, nobody ever sees ``path`` half-written, not even
    after a crash: the data goes to a temporary file, which is hard-linked into place
    (a link, unlike a rename, refuses an existing name). For files that other processes
    read, or race to create."""
    path = Path(path)
    tmp = _write_temporary(path, data, mode)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(exists_message) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def resolve_owner(owner: str) -> tuple[int, int, str]:
    """``owner`` ("USER" or "USER:GROUP"; USER's own group by default) as (uid, gid,
    "user:group"), for giving a key made as root to the service user; ``ValueError``
    naming the fix if either does not exist."""
    import grp
    import pwd

    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"--owner: no user {user!r} on this host (the package's sysusers.d makes "
                         f"'lifeline'; or run systemd-sysusers)") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"--owner: no group {group!r} on this host") from None
    return entry.pw_uid, gid, f"{user}:{grp.getgrgid(gid).gr_name}"
