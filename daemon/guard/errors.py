"""The guard's error root: every error the guard raises derives from :class:`GuardError`
(and so from :class:`daemon.core.errors.LifelineError`)."""

from __future__ import annotations

from daemon.core.errors import LifelineError


class GuardError(LifelineError):
    """The root of the guard's errors."""
