"""Waiting with a deadline.

``until`` and ``wait_for`` poll what a real process exposes (a route, a status, a file),
because a test cannot be told by the kernel or another process when that changes.
``wait_until`` is the same inside a trio run, for a state that real I/O (a serial port,
loopback TCP) moves; everything else in-process waits on events or runs under a
MockClock instead.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from lab.procs import until  # noqa: F401  (one polling helper for the lab and the tests)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.05,
             detail: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it answers something truthy (returned) or the deadline
    passes (AssertionError naming ``what``, plus ``detail()`` for the diagnosis)."""
    value = until(predicate, timeout, interval)
    if value:
        return value
    extra = ""
    if detail is not None:
        try:
            extra = "\n" + detail()
        except Exception as exc:  # the diagnosis must not hide the timeout
            extra = f"\n(detail failed: {exc!r})"
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")


async def wait_until(predicate: Callable[[], Any], what: str = "the condition", timeout: float = 10.0,
                     every: float = 0.01) -> Any:
    """:func:`wait_for` inside a trio run: check ``predicate`` every ``every`` seconds until
    it answers something truthy (returned), else AssertionError naming ``what``."""
    with trio.move_on_after(timeout):
        while not (value := predicate()):
            await trio.sleep(every)
        return value
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
