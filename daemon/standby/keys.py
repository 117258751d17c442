"""The replication pre-shared key: one file, the same on both hosts of the pair.

The file holds 32 random bytes as 64 hex digits and a newline, mode 0600. Hex rather
than raw bytes so it survives copy-and-paste between hosts and shows a truncated copy
for what it is. ``lifeline keys replication --out FILE`` calls
:func:`generate_replication_key`; the daemon calls :func:`load_replication_key`, which
refuses a file anyone but its owner can read — a key others can read is no longer a
secret of the pair (OpenSSH refuses private keys on the same grounds).
"""

from __future__ import annotations

import binascii
import os
import secrets
import stat
from pathlib import Path

from daemon.core.files import create_new_file
from daemon.standby import StandbyError

KEY_BYTES = 32
#: Shorter keys are refused: 128 bits is the floor for an HMAC-SHA256 key.
MIN_KEY_BYTES = 16


class KeyFileError(StandbyError, ValueError):
    """The key file cannot be used; the message names the file and the fix."""


def generate_replication_key(path: str | os.PathLike[str]) -> bytes:
    """Write a new random key to ``path`` (mode 0600) and return it.

    Refuses to overwrite an existing file (``FileExistsError``): replacing the key of a
    running pair breaks replication until both hosts have the new one, so it must be a
    deliberate act (remove the old file first)."""
    path = Path(path)
    key = secrets.token_bytes(KEY_BYTES)
    # Never overwrite, not even a file that appeared a moment ago; the mode is set at
    # creation so the key is never readable by others, not even briefly.
    create_new_file(path, key.hex().encode("ascii") + b"\n", 0o600,
                    exists_message=f"{path} already exists; remove it first if you really mean to replace the key "
                                   "(both hosts must then get the new one)")
    return key


def generate_witness_key(path: str | os.PathLike[str]) -> bytes:
    """A new random witness key in ``path`` (mode 0600), the replication key's format.
    One per cluster, apart from the replication key: the witness host never holds the
    key that authenticates the journal's replication."""
    path = Path(path)
    key = secrets.token_bytes(KEY_BYTES)
    create_new_file(path, key.hex().encode("ascii") + b"\n", 0o600,
                    exists_message=f"{path} already exists; remove it first if you really mean to replace the key "
                                   "(both nodes and the witness must then get the new one)")
    return key


def load_replication_key(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path``. ``KeyFileError`` (a ``ValueError``) if the file is readable
    by group or others, is not hex, or holds fewer than 16 bytes; ``OSError`` if it
    cannot be read at all."""
    path = Path(path)
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: the replication key is accessible by group or others (mode {stat.filemode(mode)}, "
                f"{mode & 0o777:04o}); fix it with `chmod 600 {path}`"
            )
        raw = f.read(4096)
    text = raw.strip()
    try:
        key = binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: expected the key as hex digits (as `lifeline keys replication` writes "
                           "it)") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{path}: the key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed; "
                           f"make a new one with `lifeline keys replication --out FILE`")
    return key
