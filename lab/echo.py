"""The lab's UDP echo responder (RFC 862), with a per-sender delay standing in for netem.

    python -m lab.echo --listen 10.80.0.2:7 \\
        --delay 10.71.0.0/16=1ms..3ms --delay 10.72.0.0/16=25ms..60ms

Every datagram goes back to its sender unchanged, after a delay drawn uniformly from the
first ``--delay`` rule whose network holds the sender's address (no rule: at once). The
kernel here has no netem, so the fibre and the Starlink paths get their latency from
here. Delayed replies are independent (one small task each), so a slow path never holds
up a fast one; at most ``--max-pending`` replies wait at once and the rest are dropped
and counted, so a flood cannot grow memory without bound.

Prints ``echo.ready listen=IP:PORT[,IP:PORT...]`` on stderr once every socket is bound
(the lab waits for that line; port 0 is replaced by the real port) and exits 0 on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import signal
import socket as stdlib_socket
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import trio

from daemon.config import Duration, parse_host_port

DEFAULT_MAX_PENDING = 10000


@dataclass(frozen=True)
class DelayRule:
    """Senders in ``network`` wait between ``low`` and ``high`` seconds for their echo."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.network}={Duration(self.low)}..{Duration(self.high)}"


def parse_delay(spec: str) -> DelayRule:
    """``"10.71.0.0/16=1ms..3ms"`` (or ``"10.71.0.0/16=5ms"`` for a fixed delay) → rule."""
    hint = 'expected CIDR=MIN..MAX such as "10.71.0.0/16=1ms..3ms" (or CIDR=DELAY)'
    cidr, sep, delays = spec.strip().partition("=")
    if not sep or not cidr or not delays:
        raise ValueError(f"{hint}, found {spec!r}")
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{cidr.strip()!r} is not a network; {hint}") from None
    low_text, dots, high_text = delays.partition("..")
    try:
        low = float(Duration.parse(low_text))
        high = float(Duration.parse(high_text)) if dots else low
    except ValueError:
        raise ValueError(f'bad delay {delays!r}: durations need a unit, such as "3ms" or "1s"; {hint}') from None
    if low < 0 or high < low:
        raise ValueError(f"delay range {delays!r} must satisfy 0 <= MIN <= MAX")
    return DelayRule(network, low, high)


def delay_range(rules: Sequence[DelayRule], address: str) -> tuple[float, float] | None:
    """The first rule's (MIN, MAX) for a sender, or None (echo at once)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    for rule in rules:
        if ip.version == rule.network.version and ip in rule.network:
            return rule.low, rule.high
    return None


@dataclass
class EchoResponder:
    """The bound responder: its real addresses and what it did."""

    addresses: list[tuple[str, int]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: {"received": 0, "echoed": 0, "delayed": 0,
                                                              "dropped": 0, "errors": 0})
    pending: int = 0


async def serve(listens: Sequence[tuple[str, int]], delays: Sequence[DelayRule] = (), *,
                max_pending: int = DEFAULT_MAX_PENDING, rng: random.Random | None = None,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Echo on every ``listens`` address until cancelled; ``task_status.started()`` gets
    the :class:`EchoResponder` once all sockets are bound."""
    rng = rng or random.Random()
    responder = EchoResponder()
    sockets = []
    try:
        for host, port in listens:
            family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
            sock = trio.socket.socket(family, stdlib_socket.SOCK_DGRAM)
            sockets.append(sock)
            await sock.bind((host, port))
            responder.addresses.append(sock.getsockname()[:2])
        async with trio.open_nursery() as nursery:
            for sock in sockets:
                nursery.start_soon(_echo_loop, sock, list(delays), max_pending, rng, responder, nursery)
            task_status.started(responder)
            await trio.sleep_forever()
    finally:
        for sock in sockets:
            sock.close()


async def _echo_loop(sock: trio.socket.SocketType, delays: list[DelayRule], max_pending: int,
                     rng: random.Random, responder: EchoResponder, nursery: trio.Nursery) -> None:
    counters = responder.counters
    while True:
        try:
            data, address = await sock.recvfrom(65536)
        except OSError:
            counters["errors"] += 1
            continue
        counters["received"] += 1
        span = delay_range(delays, address[0])
        if span is None or span[1] <= 0:
            await _send(sock, data, address, counters)
            continue
        if responder.pending >= max_pending:
            counters["dropped"] += 1
            continue
        responder.pending += 1
        nursery.start_soon(_echo_later, sock, data, address, rng.uniform(*span), responder)


async def _echo_later(sock: trio.socket.SocketType, data: bytes, address: Any, delay: float,
                      responder: EchoResponder) -> None:
    try:
        await trio.sleep(delay)
        responder.counters["delayed"] += 1
        await _send(sock, data, address, responder.counters)
    finally:
        responder.pending -= 1


async def _send(sock: trio.socket.SocketType, data: bytes, address: Any, counters: dict[str, int]) -> None:
    try:
        await sock.sendto(data, address)
        counters["echoed"] += 1
    except (OSError, trio.ClosedResourceError):
        counters["errors"] += 1


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _delay(text: str) -> DelayRule:
    try:
        return parse_delay(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab.echo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", action="append", type=_listen, required=True, metavar="IP:PORT",
                        help="address to echo on (repeatable)")
    parser.add_argument("--delay", action="append", type=_delay, default=[], metavar="CIDR=MIN..MAX",
                        help="delay replies to senders in CIDR (first match wins; repeatable)")
    parser.add_argument("--max-pending", type=int, default=DEFAULT_MAX_PENDING,
                        help="delayed replies allowed to wait at once; more are dropped")
    parser.add_argument("--seed", type=int, default=None, help="seed the delay draws (reproducible runs)")
    return parser


async def _main(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            responder: EchoResponder = await nursery.start(
                lambda task_status: serve(args.listen, args.delay, max_pending=args.max_pending,
                                          rng=random.Random(args.seed), task_status=task_status))
            listen = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in responder.addresses)
            print(f"echo.ready listen={listen}", file=sys.stderr, flush=True)
            async for _signal in signals:
                nursery.cancel_scope.cancel()
                break
    counters = " ".join(f"{k}={v}" for k, v in responder.counters.items())
    print(f"echo.stopped {counters}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trio.run(_main, args)
    except OSError as exc:
        print(f"echo.failed error={exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
