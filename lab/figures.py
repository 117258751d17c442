"""What the drills measure and their report draws, in one place below both: the
percentile every figure is quoted with, and the hardware drills' series and targets.
(The report renders the drills' results; it imports no drill.)"""

from __future__ import annotations

import math

#: The hardware drills' (lab.hardware_drills) targets per drill, in milliseconds.
TARGETS_MS = {"power": {"detection_ms": 1000.0, "handover_ms": 5000.0},
              "enclosure": {"detection_ms": 1500.0, "notice_ms": 3000.0}}
#: The figures each hardware drill measures per repetition, in order.
SERIES = {"power": ("detection_ms", "playbook_ms", "fenced_ms", "handover_ms"),
          "enclosure": ("detection_ms", "playbook_ms", "notice_ms")}


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure quoted was observed)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
