"""The error root: every lifeline error a capability raises across a seam derives from
:class:`LifelineError`, so that a caller in another room catches it without importing that
room (e.g. recovery's playbook actions catch :class:`Unavailable` from the venues)."""

from __future__ import annotations


class LifelineError(Exception):
    """The root of lifeline's own errors."""


class Unavailable(LifelineError):
    """A capability cannot do what was asked right now (no credentials, no usable path, the
    call failed): the caller reports it, the daemon carries on."""
