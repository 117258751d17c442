"""The hardware layers stay as issue 15 drew them: each device's sans-IO modules (codecs,
protocols, readings, monitors) load without trio, and no production module imports the
lab (the simulators live in ``lab/sim/``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from tests.support.cli import ROOT


SANS_IO = [
    "hardware.errors",
    "hardware.ups.q1", "hardware.ups.nut", "hardware.ups.reading", "hardware.ups.runtime",
    "hardware.ups.monitor",
    "hardware.gnss.nmea", "hardware.gnss.gpsd", "hardware.gnss.monitor",
    "hardware.enclosure.modbus", "hardware.enclosure.registers", "hardware.enclosure.door",
    "hardware.enclosure.monitor",
]


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_module_loads_without_trio(module: str) -> None:
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print(sorted(m for m in ('trio', 'serial') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} pulled in {done.stdout.strip()}"


def test_every_sans_io_module_is_checked() -> None:
    """A new sans-IO module (anything but a driver) is added to the list above."""
    found = {f"hardware.{p.parent.name}.{p.stem}" for p in ROOT.glob("hardware/*/*.py")
             if p.stem not in ("__init__", "driver")}
    assert found <= set(SANS_IO)


IMPORTS_LAB = re.compile(r"^\s*(?:import lab\b|from lab\b)", re.M)
