"""Recovery's error root: every error recovery raises derives from :class:`RecoveryError`
(and so from :class:`daemon.core.errors.LifelineError`)."""

from __future__ import annotations

from daemon.core.errors import LifelineError


class RecoveryError(LifelineError):
    """The root of recovery's errors."""
