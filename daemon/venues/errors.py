"""The venues' error root: every error the venues raise derives from :class:`VenueError`
(and so from :class:`daemon.core.errors.LifelineError`)."""

from __future__ import annotations

from daemon.core.errors import LifelineError


class VenueError(LifelineError):
    """The root of the venues' errors."""
