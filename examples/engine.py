#!/usr/bin/env python3
"""A reference trading engine that follows lifeline's engine contract (README "Engine contract").

It trades one symbol at one venue with ccxt, and before anything reaches the venue it asks
lifeline over the control socket:

1. It follows ``role.watch``: it sends an order only while the last line says ``primary`` and
   CLOCK_MONOTONIC is before that line's ``valid_until``; every order record carries the
   ``epoch`` that line names. (On a host with a fixed role, ``role.watch`` answers
   ``no_lease``: it reads ``role.status`` instead, which says ``"fixed": true``.)
2. It journals every order *before* sending it (a ``new`` order record through
   ``journal.append``). A refusal — the risk gate, the kill switch, a pause, ``not_primary`` —
   means the order is not sent: it prints ``REFUSED <client_order_id>: <code>: <message>``.
   An ``in_doubt`` answer is not sent either (reconcile first).
3. It journals what the venue answered (``open`` with the venue's id, ``filled`` with
   ``filled``/``average``, ``rejected``) and, every ``--interval``, what changed at the venue
   (an order gone from the venue's open orders: ``cancelled`` or ``filled``, as ``fetch_order``
   says) and a ``mark`` record from ``fetch_ticker`` (the risk gate's price reference).

Commands, one per line on stdin: ``buy AMOUNT [PRICE]``, ``sell AMOUNT [PRICE]`` (a limit order
at PRICE, by default the last mark), ``cancel CLIENT_ORDER_ID``, ``quit``. One line per outcome
on stdout (``READY``, ``SENT``, ``REFUSED``, ``NOT SENT``, ``REJECTED``, ``CANCELLED``, ``FILLED``).

    python examples/engine.py --socket /run/lifeline/control.sock --venue kraken \\
        --exchange kraken --api-url http://127.0.0.1:8450 --credentials kraken.credentials.toml \\
        --symbol BTC/USDT
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import tomllib
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt

from daemon.core.control_client import ControlClient, ControlError

OPEN_STATES = ("new", "open", "partially_filled")


def say(*words: object) -> None:
    print(*words, flush=True)


class Role:
    """What the last role.watch line said; trade only while ``may_trade()``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.role = "unknown"
        self.epoch: int | None = None
        self.valid_until: int | None = None  # CLOCK_MONOTONIC ns; None: no deadline (fixed role) or may not
        self.fixed = False

    def update(self, line: dict[str, Any], fixed: bool = False) -> None:
        with self.lock:
            self.role, self.epoch, self.fixed = line.get("role", "unknown"), line.get("epoch"), fixed
            self.valid_until = line.get("valid_until")

    def may_trade(self) -> tuple[bool, str]:
        with self.lock:
            if self.role != "primary":
                return False, f"this node is {self.role}, not primary"
            if self.fixed:
                return True, "fixed primary"
            if self.valid_until is None or time.monotonic_ns() >= self.valid_until:
                return False, "the lease deadline (valid_until) has passed with no newer role.watch line"
            return True, "primary"


def follow_role(socket: str, role: Role) -> None:
    """Thread: keep ``role`` to the daemon's role.watch feed; re-subscribe when it closes."""
    while True:
        try:
            with ControlClient(socket) as client:
                try:
                    client.call("role.watch")
                except ControlError as exc:
                    if exc.code != "no_lease":
                        raise
                    role.update(client.call("role.status"), fixed=True)  # a fixed role: no lease, no deadline
                    time.sleep(1.0)
                    continue
                while True:
                    line = client.read_line(timeout=None)
                    if not line.get("renewal"):
                        say(f"ROLE {line.get('role')} epoch={line.get('epoch')}: {line.get('reason', '')}")
                    role.update(line)
                    if line.get("role") == "unknown":
                        break  # the feed closed: stop trading, re-subscribe
        except (ConnectionError, ControlError, OSError) as exc:
            role.update({"role": "unknown"})
            say(f"ROLE unknown: {exc}; retrying")
            time.sleep(1.0)


class Engine:
    def __init__(self, args: argparse.Namespace, role: Role) -> None:
        self.args, self.role = args, role
        self.venue, self.symbol = args.venue, args.symbol
        self.control: ControlClient | None = ControlClient(args.socket, timeout=10.0).connect()
        self.exchange = make_exchange(args.exchange, args.api_url, args.credentials)
        self.exchange.load_markets()
        self.mark: str | None = None
        self.orders: dict[str, dict[str, Any]] = {}  # client_order_id → its last record
        self.counter = 0

    # -- the journal
    def journal(self, *records: dict[str, Any]) -> list[dict[str, Any]]:
        """journal.append; raises ControlError on a refusal (then nothing was written)."""
        payloads = [json.dumps(r, separators=(",", ":")) for r in records]
        try:
            if self.control is None:
                self.control = ControlClient(self.args.socket, timeout=10.0).connect()
            return list(self.control.call("journal.append", {"payloads": payloads})["results"])
        except OSError as exc:  # no answer (a frozen daemon): the order is in doubt; a new connection next time
            if self.control is not None:
                self.control.close()
            self.control = None
            raise ConnectionError(f"journal.append: {exc!r}: in doubt, reconcile before resending") from None

    def record(self, coid: str, state: str, **changes: Any) -> dict[str, Any]:
        """The order's next record: a complete snapshot (README "The engine's order records")."""
        record = dict(self.orders[coid], state=state, time=round(time.time(), 3), **changes)
        return {k: v for k, v in record.items() if v is not None}

    # -- orders
    def place(self, side: str, amount: str, price: str | None) -> None:
        may, why = self.role.may_trade()
        self.counter += 1
        coid = f"{self.args.prefix}-{self.counter:06d}"
        if not may:
            say(f"NOT SENT {coid}: {why}")
            return
        price = price or self.mark
        if price is None:
            say(f"NOT SENT {coid}: no mark yet, give a price")
            return
        amount = self.exchange.amount_to_precision(self.symbol, amount)
        price = self.exchange.price_to_precision(self.symbol, price)
        new: dict[str, Any] = {"record": "order", "v": 1, "client_order_id": coid, "venue": self.venue,
                               "symbol": self.symbol, "side": side, "amount": amount, "price": price,
                               "state": "new", "type": "limit", "epoch": self.role.epoch,
                               "time": round(time.time(), 3)}
        new = {k: v for k, v in new.items() if v is not None}
        try:
            [result] = self.journal(new)
        except ControlError as exc:  # the gate (or a block, or not_primary): nothing written, never sent
            say(f"REFUSED {coid}: {exc.code}: {exc.message}")
            return
        except ConnectionError as exc:
            say(f"NOT SENT {coid}: {exc}")
            return
        if result.get("status") != "ok":
            say(f"NOT SENT {coid}: journal answered {result.get('status')}: reconcile before resending")
            return
        self.orders[coid] = new
        try:
            answer = self.exchange.create_order(self.symbol, "limit", side, float(amount), float(price),
                                                {"clientOrderId": coid})
        except ccxt.BaseError as exc:
            self.write(self.record(coid, "rejected"))
            say(f"REJECTED {coid}: {type(exc).__name__}: {str(exc)[:200]}")
            return
        self.orders[coid]["venue_order_id"] = answer["id"]
        self.apply(coid, answer)
        say(f"SENT {coid} {side} {amount} {self.symbol} @ {price} venue_order_id={answer['id']} "
            f"epoch={self.role.epoch}")

    def apply(self, coid: str, order: dict[str, Any]) -> None:
        """Journal the venue's view of an order when it moved the order's state."""
        status, filled = order.get("status"), order.get("filled")
        filled_text = None if filled is None else format(Decimal(str(filled)).normalize(), "f")
        average = order.get("average")
        average_text = None if not average else format(Decimal(str(average)).normalize(), "f")
        last = self.orders[coid]
        if status == "closed" or (filled_text and Decimal(filled_text) >= Decimal(last["amount"])):
            state = "filled"
        elif status in ("canceled", "cancelled"):
            state = "cancelled"
        elif status in ("rejected", "expired"):
            state = status
        elif filled_text and Decimal(filled_text) > 0:
            state = "partially_filled"
        else:
            state = "open"
        if state == last["state"] and filled_text == last.get("filled"):
            return
        changes: dict[str, Any] = {"filled": filled_text}
        if average_text and filled_text and Decimal(filled_text) > 0:
            changes["average"] = average_text
        self.write(self.record(coid, state, **changes))
        if state in ("cancelled", "filled", "rejected", "expired"):
            say(f"{state.upper()} {coid} venue_order_id={last.get('venue_order_id')} filled={filled_text}")

    def write(self, record: dict[str, Any]) -> None:
        """Journal what the venue did; such records pass every limit and every block."""
        try:
            self.journal(record)
        except (ControlError, ConnectionError) as exc:
            say(f"JOURNAL FAILED {record['client_order_id']} {record['state']}: {exc}")
            return
        self.orders[record["client_order_id"]] = record

    def cancel(self, coid: str) -> None:
        last = self.orders.get(coid)
        if last is None or "venue_order_id" not in last:
            say(f"NOT SENT cancel {coid}: no such open order")
            return
        try:
            self.exchange.cancel_order(last["venue_order_id"], self.symbol)
        except ccxt.OrderNotFound:
            pass  # gone already: the next sync journals what became of it
        self.sync()

    # -- market data and the venue's view
    def sync(self) -> None:
        ticker = self.exchange.fetch_ticker(self.symbol)
        if ticker.get("last"):
            self.mark = self.exchange.price_to_precision(self.symbol, ticker["last"])
        if self.mark is not None and self.role.may_trade()[0]:  # marks go to the primary's journal
            mark = {"record": "mark", "v": 1, "venue": self.venue, "symbol": self.symbol, "price": self.mark,
                    "time": round(time.time(), 3)}
            try:
                self.journal(mark)
            except (ControlError, ConnectionError) as exc:
                say(f"MARK NOT JOURNALLED: {exc}")
        listed = {o["id"] for o in self.exchange.fetch_open_orders(self.symbol)}
        for coid, last in list(self.orders.items()):
            vid = last.get("venue_order_id")
            if last["state"] in OPEN_STATES and vid and vid not in listed:
                self.apply(coid, self.exchange.fetch_order(vid, self.symbol))


def make_exchange(exchange_id: str, api_url: str | None, credentials: Path | None) -> Any:
    config: dict[str, Any] = {"enableRateLimit": True, "timeout": 5000}
    if credentials is not None:
        secret = tomllib.loads(credentials.read_text())
        config.update({"apiKey": secret["api_key"], "secret": secret["secret"]})
        if "password" in secret:
            config["password"] = secret["password"]
    exchange = getattr(ccxt, exchange_id)(config)
    if api_url:  # the lab's emulator: every API URL to it, path kept
        base = api_url.rstrip("/")

        def rewrite(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: rewrite(v) for k, v in value.items()}
            if isinstance(value, str) and "://" in value:
                parts = urllib.parse.urlsplit(value)
                return base + parts.path + (f"?{parts.query}" if parts.query else "")
            return value
        exchange.urls["api"] = rewrite(exchange.urls["api"])
    return exchange


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default="/run/lifeline/control.sock")
    parser.add_argument("--venue", required=True, help="the [venues.NAME] of lifeline's config")
    parser.add_argument("--exchange", required=True, help="the ccxt exchange id, e.g. kraken")
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--api-url", help="send every API call here (the lab's venue emulator)")
    parser.add_argument("--credentials", type=Path, help="TOML with api_key and secret (as lifeline's)")
    parser.add_argument("--prefix", default=f"e{int(time.time())}", help="client order ids: PREFIX-000001")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between syncs with the venue")
    args = parser.parse_args(argv)

    role = Role()
    threading.Thread(target=follow_role, args=(args.socket, role), daemon=True).start()
    engine = Engine(args, role)
    commands: queue.Queue[str | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put(None)
    threading.Thread(target=read_stdin, daemon=True).start()

    deadline = time.monotonic() + 10
    while not role.may_trade()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.sync()
    say(f"READY {args.venue} {args.symbol} role={role.role} epoch={role.epoch} mark={engine.mark}")
    next_sync = time.monotonic() + args.interval
    while True:
        try:
            command = commands.get(timeout=max(0.0, next_sync - time.monotonic()))
        except queue.Empty:
            command = ""
        if command is None or command == "quit":
            return 0
        words = command.split()
        try:
            if words and words[0] in ("buy", "sell") and len(words) in (2, 3):
                engine.place(words[0], words[1], words[2] if len(words) == 3 else None)
            elif words and words[0] == "cancel" and len(words) == 2:
                engine.cancel(words[1])
            elif words and words[0] == "sync":
                engine.sync()
                say("SYNCED")
            elif words:
                say(f"UNKNOWN COMMAND {command!r}: use buy|sell AMOUNT [PRICE], cancel ID, sync, quit")
            if time.monotonic() >= next_sync:
                engine.sync()
                next_sync = time.monotonic() + args.interval
        except (ccxt.BaseError, ControlError, ConnectionError) as exc:
            say(f"ERROR {type(exc).__name__}: {str(exc)[:300]}")
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
