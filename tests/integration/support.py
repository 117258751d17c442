"""Helpers shared by the integration tests that drive real processes.

``until`` polls what a real process exposes (a route, a status, a file) because a test
cannot be told by the kernel or another process when that changes; everything in-process
waits on events or runs under a MockClock instead.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


from lab.procs import until  # noqa: F401  (one polling helper for the lab and the tests)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The `lifeline` CLI as a subprocess (what an operator types)."""
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
