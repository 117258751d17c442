"""One error root per package: every exception class a lifeline module defines derives from
its room's root, and every root from daemon.core.errors.LifelineError (issue 15)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from daemon.core.errors import LifelineError
from daemon.guard.errors import GuardError
from daemon.standby import StandbyError
from daemon.venues.errors import VenueError
from hardware.errors import HardwareError
from recovery.errors import RecoveryError

#: The room (package prefix) -> its root. Rooms with one error class (daemon.uplinks'
#: RouteError) and the host and core modules derive from LifelineError directly.
ROOTS: dict[str, type[Exception]] = {
    "daemon.standby.": StandbyError, "daemon.witness_server": StandbyError, "daemon.venues.": VenueError,
    "daemon.guard.": GuardError, "hardware.": HardwareError, "recovery.": RecoveryError,
}


def defined_exceptions() -> list[tuple[str, type[BaseException]]]:
    found = []
    for package in ("daemon", "hardware", "recovery"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            try:
                module = importlib.import_module(info.name)
            except ImportError:  # an optional extra that is not installed
                continue
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                        and not name.startswith("_")):
                    found.append((f"{info.name}.{name}", obj))
    return found


def test_every_lifeline_error_derives_from_its_rooms_root() -> None:
    exceptions = defined_exceptions()
    assert len(exceptions) > 20
    wrong = []
    for qualified, cls in exceptions:
        root = next((r for prefix, r in ROOTS.items() if qualified.startswith(prefix)), LifelineError)
        if cls is not root and not issubclass(cls, root):
            wrong.append(f"{qualified} does not derive from {root.__name__}")
        elif not issubclass(cls, LifelineError):
            wrong.append(f"{qualified} does not derive from LifelineError")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("root", [StandbyError, VenueError, GuardError, HardwareError, RecoveryError])
def test_each_rooms_root_derives_from_lifeline_error(root: type[Exception]) -> None:
    assert issubclass(root, LifelineError)
