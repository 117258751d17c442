"""``python -m lab.venues --listen HOST:PORT [--api-key VENUE=KEY] [--data DIR]``: run
the venue emulator until SIGTERM or SIGINT (see :mod:`lab.venues`)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from daemon.core import log as logsetup
from daemon.config import parse_host_port
from lab import venues
from lab.venues.recorded import DEFAULT_DATA_DIR
from lab.venues.server import VenueEmulator
from lab.venues.venue import VENUES

def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _api_key(text: str) -> tuple[str, str]:
    venue, sep, key = text.partition("=")
    if not sep or venue not in VENUES or not key:
        raise argparse.ArgumentTypeError(f"expected VENUE=KEY with VENUE one of {', '.join(VENUES)}, "
                                         f"found {text.split('=', 1)[0]!r}=...")
    return venue, key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab.venues",
                                     description=(venues.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="address to serve on (port 0: any free port; default 127.0.0.1:0)")
    parser.add_argument("--api-key", action="append", type=_api_key, default=[], metavar="VENUE=KEY",
                        help="refuse private calls that do not present KEY (repeatable, one per venue)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help=f"folder with kraken/coinbase.response.json (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--kraken-nonce-window", type=int, default=None, metavar="N",
                        help="enforce Kraken's nonces per API key: each above the last, or within N of it "
                             "(0: strictly increasing, Kraken's default); default: not checked")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="stderr log level (default warning: quiet unless something is missing)")
    return parser


async def _main(emulator: VenueEmulator) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(emulator.run)
            print(f"venue-emulator ready {url}", flush=True)
            async for _signal in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logsetup.setup(level=args.log_level)
    keys = dict(args.api_key)
    try:
        emulator = VenueEmulator(args.listen[0], args.listen[1], data_dir=args.data, api_keys=keys,
                                 kraken_nonce_window=args.kraken_nonce_window)
    except (OSError, ValueError) as exc:
        print(f"venue-emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        trio.run(_main, emulator)
    except OSError as exc:
        print(f"venue-emulator: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}", file=sys.stderr,
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
