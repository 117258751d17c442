"""Free TCP ports on loopback for the tests' listeners: the lab's helper (one for the lab,
the benchmarks and the tests)."""

from __future__ import annotations

from lab.procs import free_port

__all__ = ["free_port"]
