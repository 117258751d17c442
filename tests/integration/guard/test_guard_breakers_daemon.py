"""The circuit breakers in a real pair of `lifeline run` processes: a burst of rejected order
records through journal.append trips execution_failure_rate on both nodes; the primary
writes the throttle (a guard record by breaker:execution_failure_rate, replicated), the
standby cannot and does not; status and the preflight show the trip."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.pair import Pair
from tests.support.waiting import wait_for
from tests.support.cli import cli


def order(n: int, state: str) -> str:
    return json.dumps({"record": "order", "v": 1, "client_order_id": f"burst-{n}", "venue": "kraken",
                       "symbol": "BTC/USD", "side": "buy", "amount": "1", "price": "100", "state": state},
                      separators=(",", ":"))


def guard_records(node: object) -> list[dict[str, object]]:
    return [json.loads(p) for _, _, _, p in node.records() if b'"record":"guard"' in p]  # type: ignore[attr-defined]


def test_a_burst_of_rejected_orders_trips_the_breaker_and_throttles_new_orders(tmp_path: Path) -> None:
    pair = Pair.create(tmp_path)
    for node in (pair.primary, pair.standby):
        node.extra = {"guard": {"breakers": {"tick": "200ms"}}}
        node.write_config()
    try:
        pair.start()
        pair.wait_in_sync()
        # 3 of 3 rejected: below min_orders (20), not a rate yet.
        pair.primary.call("journal.append", {"payloads": [order(i, "rejected") for i in range(3)]})
        filled = [order(i, "filled") for i in range(100, 114)]
        pair.primary.call("journal.append", {"payloads": filled})  # 17 ended, 3 failed
        burst = [order(i, "rejected") for i in range(3, 6)]
        result = pair.primary.call("journal.append", {"payloads": burst})  # 20 ended, 6 failed: 0.30
        assert all(r["status"] == "ok" for r in result["results"])

        def tripped(node: object) -> dict[str, object] | None:
            for e in node.call("events.recent", {"kinds": ["BreakerTripped"]})["events"]:  # type: ignore[attr-defined]
                if e["breaker"] == "execution_failure_rate":
                    return e
            return None

        event = wait_for(lambda: tripped(pair.primary), "BreakerTripped on the primary", 15)
        assert event["figure"] == 0.3 and event["response"] == "throttle", event
        assert "6 of 20 ended orders rejected or expired" in event["reason"]
        wait_for(lambda: tripped(pair.standby), "BreakerTripped on the standby (it folds the same journal)", 15)

        records = wait_for(lambda: guard_records(pair.primary), "the throttle record in the journal", 15)
        (throttle,) = records
        assert throttle["action"] == "throttle" and throttle["by"] == "breaker:execution_failure_rate"
        assert throttle["rate"] == 2.0 and throttle["burst"] == 5.0
        assert 179.0 < throttle["until"] - throttle["time"] <= 180.0  # type: ignore[operator]  # the recovery time
        pair.wait_in_sync()
        assert guard_records(pair.standby) == records  # replicated; the standby wrote none of its own

        status = cli("status", "--socket", str(pair.primary.socket))
        assert "execution_failure_rate TRIPPED 0.3/0.02" in status.stdout, status.stdout
        preflight = cli("preflight", "--socket", str(pair.primary.socket), "--no-verify")
        assert "breaker execution_failure_rate" in preflight.stdout and "TRIPPED" in preflight.stdout, \
            preflight.stdout + preflight.stderr
        assert "breaker.throttle" in pair.primary.log_text()
        audit = (pair.primary.state_dir / "recovery" / "audit.jsonl").read_text()
        (entry,) = [json.loads(line) for line in audit.splitlines() if "guard.breaker.throttle" in line]
        assert entry["fields"]["by"] == "breaker:execution_failure_rate" and entry["fields"]["node"] == "edge-a"
        verified = cli("audit", "verify", "--state-dir", str(pair.primary.state_dir))
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        pair.close()
