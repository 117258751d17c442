"""Events on the bus, as the tests read them."""

from __future__ import annotations

from typing import Any

import trio


def drain(sub: Any) -> list[Any]:
    """Every event waiting on a bus subscription (or any trio receive channel), without
    blocking."""
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except trio.WouldBlock:
            return out
