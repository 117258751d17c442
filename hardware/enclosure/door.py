"""The door contact's logic (sans-IO): which modem-status line it is on, which state means
open, and one line state → a :class:`~hardware.enclosure.registers.DoorReading`.

pyserial raises RTS and DTR when it opens a port, so a contact can be powered by the
port itself: wire it between RTS (DB9 pin 7) and CTS (pin 8), or DTR (pin 4) and DSR
(pin 6) or DCD (pin 1). ``open_when="deasserted"`` (the default, as in
``[hardware.enclosure] door_open_when``) means a closed door closes the circuit, so a cut
wire or an unplugged cable reads as *open*: fail-safe for a tamper loop.
``open_when="asserted"`` is for a contact that closes when the door opens.
"""

from __future__ import annotations

from typing import Literal

from hardware.enclosure.registers import DoorReading

DoorLine = Literal["cts", "dsr", "cd", "ri"]
OpenWhen = Literal["asserted", "deasserted"]


def check_door(line: str, open_when: str) -> None:
    """ValueError naming the setting when ``line`` or ``open_when`` is not one we know."""
    if line not in ("cts", "dsr", "cd", "ri"):
        raise ValueError(f"door line must be cts, dsr, cd or ri, got {line!r}")
    if open_when not in ("asserted", "deasserted"):
        raise ValueError(f"door open_when must be 'asserted' or 'deasserted', got {open_when!r}")


def door_reading(asserted: bool, *, line: str, open_when: str) -> DoorReading:
    """The contact's state from its line's state."""
    return DoorReading(open=asserted == (open_when == "asserted"), line=line, asserted=asserted)
