"""A random but reproducible stream of journal payloads for the risk gate's pair tests:
marks and order records (new, open, partially filled, filled, cancelled) at one venue."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any


def order_stream(n: int, seed: int, max_live: int) -> list[str]:
    """``n`` payloads from ``seed``: about one in ten a mark, the rest order records, with at
    most ``max_live`` orders open at once (each of amount 2, filled one unit at a time)."""
    rng = random.Random(seed)
    live: list[dict[str, Any]] = []
    out: list[str] = []
    for i in range(n):
        if rng.random() < 0.1:
            out.append(json.dumps({"record": "mark", "v": 1, "venue": "kraken", "symbol": "BTC/USDT",
                                   "price": str(rng.randint(90, 110))}))
            continue
        if len(live) < max_live and (not live or rng.random() < 0.4):
            order: dict[str, Any] = {"record": "order", "v": 1, "client_order_id": f"o{i}", "venue": "kraken",
                                     "symbol": rng.choice(["BTC/USDT", "ETH/USDT"]),
                                     "side": rng.choice(["buy", "sell"]), "amount": "2",
                                     "price": str(rng.randint(95, 105)), "state": "new"}
            live.append(order)
        else:
            order = rng.choice(live)
            filled = Decimal(order.get("filled", "0")) + rng.choice([0, 1])
            order["filled"] = str(filled)
            order["state"] = "filled" if filled == 2 else rng.choice(["open", "partially_filled", "cancelled"])
            if order["state"] in ("filled", "cancelled"):
                live.remove(order)
        out.append(json.dumps(order))
    return out
