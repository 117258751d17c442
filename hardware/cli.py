"""``lifeline hardware read DEVICE``: one reading from a real or simulated device.

daemon/cli.py (the registry) calls :func:`add_parsers` with its subparsers and
:func:`cmd_hardware` when the command runs; ``lifeline sim`` (the lab's simulators) uses
:data:`HARDWARE_KINDS` for its choices."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

# lazy-imports: the handler imports what it runs (CLI start-up: every `lifeline` command builds
# this parser).

HARDWARE_KINDS = ("ups", "gnss", "enclosure")


def add_parsers(sub: Any) -> None:
    hardware = sub.add_parser("hardware", help="read the host's devices")
    hardware_sub = hardware.add_subparsers(dest="hardware_command", metavar="ACTION", required=True)
    read = hardware_sub.add_parser("read", help="one reading from a real or simulated device, or a clear error")
    read.add_argument("device", choices=HARDWARE_KINDS)
    read.add_argument("--port", required=True, help="serial port, pyserial URL, nut://HOST:PORT/UPS or gpsd://HOST:PORT")
    read.add_argument("--timeout", type=float, default=3.0)
    read.add_argument("--json", action="store_true")


def hardware_module(kind: str) -> Any:
    """The device's driver module (``hardware.KIND.driver``), loaded when a command reads it."""
    return importlib.import_module(f"hardware.{kind}.driver")


def cmd_hardware(args: argparse.Namespace) -> int:
    import trio

    from daemon.core.log import format_table
    from hardware.errors import HardwareError

    module = hardware_module(args.device)
    try:
        reading = trio.run(lambda: module.read_once(args.port, timeout=args.timeout))
    except HardwareError as exc:
        print(f"lifeline hardware read {args.device}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reading, default=str, sort_keys=True))
    else:
        print(format_table(reading), end="")
    return 0
