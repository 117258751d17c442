"""/primary, /standby, /health on a real pair's metrics listeners, and `lifeline role --check`
against the real daemons (and against no daemon: exit 2)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.pair import Pair
from tests.support.cli import cli
from tests.support.ports import free_port


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_endpoints_and_role_check_on_a_real_pair(tmp_path: Path) -> None:
    pair = Pair.create(tmp_path)
    ports = {}
    for node in (pair.primary, pair.standby):
        ports[node.name] = free_port()
        node.extra = {"metrics": {"enabled": True, "listen": f"127.0.0.1:{ports[node.name]}"}}
        node.write_config()
    try:
        pair.start()
        pair.wait_in_sync()
        a, b = ports["edge-a"], ports["edge-b"]
        assert get(a, "/primary")[0] == 200
        code, body = get(a, "/standby")
        assert code == 503 and body["why"] == "role is primary"
        assert get(b, "/standby")[0] == 200
        code, body = get(b, "/primary")
        assert code == 503 and body["role"] == "standby"
        for port in (a, b):
            code, body = get(port, "/health")
            assert code == 200, body
        # HEAD: the code, no body.
        req = urllib.request.Request(f"http://127.0.0.1:{b}/standby", method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b""

        assert cli("role", "--socket", str(pair.primary.socket), "--check", "primary").returncode == 0
        out = cli("role", "--socket", str(pair.standby.socket), "--check", "primary")
        assert out.returncode == 1 and "check primary: NO (role is standby)" in out.stdout
        assert cli("role", "--socket", str(pair.standby.socket), "--check", "standby").returncode == 0

        # The primary goes away: the standby is no longer replicating.
        pair.primary.stop()
        from tests.support.waiting import wait_for
        wait_for(lambda: get(b, "/standby")[0] == 503, "/standby to turn 503 without a primary", 15)
        assert cli("role", "--socket", str(pair.primary.socket), "--check", "primary").returncode == 2
    finally:
        pair.close()
