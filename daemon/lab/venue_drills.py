"""``lifeline drill venue`` (placeholder: being written)."""

from __future__ import annotations

import argparse
from typing import Any


def add_venue_drill_parser(drill_sub: Any) -> None:
    drill_sub.add_parser("venue", help="the venue goes silent through the fibre only, then dies entirely")


def run_venue_drill(args: argparse.Namespace) -> int:
    raise NotImplementedError
