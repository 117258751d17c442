"""The witness: a third small process holding the pair's leader lease (stub, being written)."""

from __future__ import annotations

import argparse


def add_witness_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sub.add_parser("witness", help="run the lease witness (the pair's quorum device)")


def run_witness_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
