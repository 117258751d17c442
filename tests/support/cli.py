"""The repository's root and the `lifeline` CLI as a subprocess, for the tests that drive
real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The repository's root (the tests run the CLI and read shipped files from here).
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The `lifeline` CLI as a subprocess (what an operator types)."""
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
