"""The risk gate in a real `lifeline run` (a fixed primary with a journal): a new order over
a signed limit is refused on journal.append through the control socket, the error naming
the limit, the figure and the field, and nothing of the batch is written; `lifeline risk`
shows the limits and their use; an unsigned limits file refuses to start (exit 78); a
reload with an under-signed file keeps the last good limits; risk.pause refuses new orders
and names the caller."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.support.cli import cli
from tests.support.ports import free_port
from tests.support.waiting import until

from daemon.config import dump_toml
from daemon.core.control_client import ControlClient, ControlError
from daemon.risk import LIMITS_CONTEXT
from lab.procs import DaemonProcess
from recovery.keys import init_keyring, write_keyring
from recovery.signing import signature_path, sign_playbook

LIMITS = '''version = {version}
expires = 2099-01-01T00:00:00Z
no_reference = "refuse"
duplicate_client_order_id = "refuse"

[[limits]]
venue = "*"
symbol = "*"
max_order_amount = "{amount}"
max_open_orders = 3
price_collar = "0.05"
'''


def order(coid: str, amount: str = "1", price: str = "100", state: str = "new") -> str:
    return json.dumps({"record": "order", "v": 1, "client_order_id": coid, "venue": "kraken", "symbol": "BTC/USDT",
                       "side": "buy", "amount": amount, "price": price, "state": state})


MARK = json.dumps({"record": "mark", "v": 1, "venue": "kraken", "symbol": "BTC/USDT", "price": "100"})


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.keys = [Ed25519PrivateKey.generate() for _ in range(2)]
        keyring = init_keyring(2, [(k.public_key(), h) for k, h in zip(self.keys, ["alice", "bob"])])
        write_keyring(keyring, tmp / "keyring.toml", create=True)
        self.limits = tmp / "limits.toml"
        self.socket = tmp / "run" / "control.sock"
        key = tmp / "replication.key"
        key.write_text(bytes(range(32)).hex() + "\n")
        key.chmod(0o600)
        self.config = tmp / "lifeline.toml"
        self.config.write_text(dump_toml({
            "node": {"name": "edge-a", "state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
            "control": {"socket": str(self.socket), "group": ""},
            "metrics": {"enabled": False},
            "standby": {"role": "primary", "key_file": str(key), "mode": "async",
                        "listen": f"127.0.0.1:{free_port()}", "journal": {"fsync": "never"}},
            "guard": {"limits": str(self.limits), "keyring": str(tmp / "keyring.toml")},
        }))

    def write_limits(self, version: int, amount: str, signers: int = 2) -> None:
        self.limits.write_text(LIMITS.format(version=version, amount=amount))
        signature_path(self.limits).unlink(missing_ok=True)
        for key in self.keys[:signers]:
            sign_playbook(self.limits, key, context=LIMITS_CONTEXT)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with ControlClient(self.socket) as client:
            return client.call(method, params)


def test_unsigned_limits_refuse_to_start_with_exit_78(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.write_limits(1, "2", signers=1)
    daemon = DaemonProcess(config=setup.config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 78
    text = daemon.log_text()
    assert "guard.limits" in text and "1 valid signature(s), 2 needed" in text, text[-2000:]


def test_a_real_daemon_refuses_an_order_over_a_limit_and_writes_nothing(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.write_limits(1, "2")
    daemon = DaemonProcess(config=setup.config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        assert until(lambda: setup.call("risk.status")["ready"], 10)
        ok = setup.call("journal.append", {"payloads": [MARK, order("a", "2")]})
        assert [r["status"] for r in ok["results"]] == ["ok", "ok"]
        last = setup.call("journal.stats")["journal"]["last_seq"]

        with pytest.raises(ControlError) as info:
            setup.call("journal.append", {"payloads": [order("b", "1"), order("c", "2.5")]})
        assert info.value.code == "risk_refused"
        message = info.value.message
        assert "payload 1" in message and "limit max_order_amount" in message and "field amount" in message
        assert "amount 2.5 is above the limit 2" in message and "nothing was written" in message
        assert setup.call("journal.stats")["journal"]["last_seq"] == last, "nothing of the batch was written"

        with pytest.raises(ControlError) as info:  # the collar against the engine's mark
            setup.call("journal.append", {"payloads": [order("d", "1", "106")]})
        assert "limit price_collar" in info.value.message and "field price" in info.value.message
        with pytest.raises(ControlError) as info:  # a duplicate client order id
            setup.call("journal.append", {"payloads": [order("a", "1")]})
        assert "duplicate_client_order_id" in info.value.message
        with pytest.raises(ControlError) as info:  # the engine may not write guard records
            setup.call("journal.append", {"payloads": [json.dumps(
                {"record": "guard", "v": 1, "action": "unkill", "reason": "x", "by": "engine", "time": 1.0})]})
        assert info.value.code == "bad_record"
        # fills and cancels always pass, over every limit
        setup.call("journal.append", {"payloads": [order("z", "9", state="open")]})

        status = setup.call("risk.status")
        assert status["limits"]["version"] == 1 and status["limits"]["signers"] == ["alice", "bob"]
        assert status["refusals"] == {"max_order_amount": 1, "price_collar": 1, "duplicate_client_order_id": 1}
        out = cli("risk", "--socket", str(setup.socket))
        assert out.returncode == 0, out.stderr
        assert "max_open_orders" in out.stdout and "version 1" in out.stdout, out.stdout
        first_limit = out.stdout.splitlines()[2]
        assert first_limit.startswith("max_open_orders"), out.stdout  # 2 of 3 open: the nearest first

        # a pause by the operator (root here: admin) refuses new orders, names the caller
        paused = cli("risk", "pause", "--venue", "kraken", "--reason", "test pause", "--socket", str(setup.socket))
        assert paused.returncode == 0, paused.stderr
        assert "uid=" in paused.stdout
        with pytest.raises(ControlError) as info:
            setup.call("journal.append", {"payloads": [order("e", "1")]})
        assert "limit pause" in info.value.message and "test pause" in info.value.message
        records = setup.call("journal.read", {"from": 1, "limit": 100})["records"]
        guard = [json.loads(r["payload"]) for r in records if '"guard"' in r["payload"]]
        assert guard and guard[0]["action"] == "pause" and guard[0]["by"].startswith("uid=")
        cli("risk", "resume", "--venue", "kraken", "--reason", "done", "--socket", str(setup.socket))
        setup.call("journal.append", {"payloads": [order("e", "1")]})

        # an under-signed version 2 on reload: refused, version 1 stays in force
        setup.write_limits(2, "5", signers=1)
        reload = cli("reload", "--socket", str(setup.socket))
        assert reload.returncode == 1 and "limits: REFUSED" in reload.stdout, reload.stdout + reload.stderr
        assert setup.call("risk.status")["limits"]["version"] == 1
        with pytest.raises(ControlError):
            setup.call("journal.append", {"payloads": [order("f", "3")]})
        setup.write_limits(2, "5")
        reload = cli("reload", "--socket", str(setup.socket))
        assert reload.returncode == 0 and "limits: version 2 in force" in reload.stdout, reload.stdout
        with pytest.raises(ControlError) as info:  # a, z and e are open: the limit is 3
            setup.call("journal.append", {"payloads": [order("f", "3")]})
        assert "limit max_open_orders" in info.value.message and "4 open orders" in info.value.message
        setup.call("journal.append", {"payloads": [order("e", "1", state="cancelled")]})
        setup.call("journal.append", {"payloads": [order("f", "3")]})
        book = setup.call("risk.status")["book"]
    finally:
        daemon.stop()

    # A restart folds the journal before READY=1: the same book, the same refusals.
    again = DaemonProcess(config=setup.config, workdir=tmp_path / "proc2", watchdog_usec=None)
    again.start()
    try:
        assert again.wait_ready(30), again.log_text()
        status = setup.call("risk.status")
        assert status["ready"] and status["limits"]["version"] == 2
        assert status["book"]["instruments"] == book["instruments"]
        assert status["book"]["open_orders"] == book["open_orders"] == 3
        with pytest.raises(ControlError) as info:
            setup.call("journal.append", {"payloads": [order("f", "1")]})
        assert "duplicate_client_order_id" in info.value.message
        assert "event=guard.folded" in again.log_text()
    finally:
        again.stop()


def test_risk_sign_and_verify_commands(tmp_path: Path) -> None:
    """What an operator types: two holders sign in turn; verify says who; one is not enough."""
    from recovery.keys import generate_key, load_public_key

    a = generate_key("alice", tmp_path)
    b = generate_key("bob", tmp_path)
    keyring = init_keyring(2, [(load_public_key(a.pub_path), "alice"), (load_public_key(b.pub_path), "bob")])
    write_keyring(keyring, tmp_path / "keyring.toml", create=True)
    limits = tmp_path / "limits.toml"
    limits.write_text(LIMITS.format(version=1, amount="2"))
    first = cli("risk", "sign", str(limits), "--key", str(a.key_path), "--keyring", str(tmp_path / "keyring.toml"))
    assert first.returncode == 0 and "signed by key" in first.stdout, first.stderr
    refused = cli("risk", "verify", str(limits), "--keyring", str(tmp_path / "keyring.toml"))
    assert refused.returncode == 1 and "REFUSED (threshold)" in refused.stderr, refused.stderr
    assert "lifeline risk sign" in refused.stderr
    cli("risk", "sign", str(limits), "--key", str(b.key_path))
    ok = cli("risk", "verify", str(limits), "--keyring", str(tmp_path / "keyring.toml"))
    assert ok.returncode == 0 and "signed by alice, bob" in ok.stdout, ok.stdout + ok.stderr
    # a playbook signature is not a limits signature
    playbook = cli("playbook", "verify", str(limits), "--keyring", str(tmp_path / "keyring.toml"))
    assert playbook.returncode != 0
