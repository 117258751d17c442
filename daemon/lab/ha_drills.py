"""The promotion drills: standby, partition, region (stub, being written)."""

from __future__ import annotations

import argparse


def add_ha_drill_parsers(drill_sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    for name in ("standby", "partition", "region"):
        drill_sub.add_parser(name, help=f"the {name} promotion drill")


def run_ha_drill(args: argparse.Namespace) -> int:
    raise NotImplementedError
