"""Signed playbooks end to end, as operators and the daemon use them: two operators make
keys and sign, a real `lifeline run` verifies the playbooks at start, a triggering event
runs one, an operator runs another by hand (dry run first), a tampered one is refused
before any step, and the audit log verifies — until a byte of it is changed.

Everything goes through the real CLI (`lifeline keys|keyring|playbook|audit`) and the
real daemon process; the steps' effects are files an allow-listed program creates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.config import dump_toml
from lab.procs import DaemonProcess, quiet_system
from tests.support.cli import cli
from tests.support.waiting import until

TOUCH = "/usr/bin/touch"


def playbook(name: str, *, trigger: str | None, marker: Path, version: int = 1) -> str:
    lines = [
        f'name = "{name}"',
        f"version = {version}",
        "expires = 2099-01-01T00:00:00Z",
        f'description = "test playbook {name}"',
    ]
    if trigger:
        lines += ["", "[[trigger]]", f'event = "{trigger}"']
    lines += ["", "[[step]]", 'action = "notify"', f'args = {{ message = "{name} running" }}',
              "", "[[step]]", 'action = "exec"', f'args = {{ argv = ["{TOUCH}", "{marker}"] }}', 'timeout = "5s"']
    return "\n".join(lines) + "\n"


def ok(result: Any) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def test_two_operators_sign_the_daemon_runs_on_a_trigger_and_by_hand_and_the_audit_verifies(tmp_path: Path) -> None:
    keys, books, state = tmp_path / "keys", tmp_path / "playbooks", tmp_path / "state"
    for d in (keys, books, state):
        d.mkdir()
    for operator in ("alice", "bob"):
        ok(cli("keys", "new", "--name", operator, "--out", str(keys)))
    keyring = tmp_path / "keyring.toml"
    ok(cli("keyring", "init", "--threshold", "2", "--key", str(keys / "alice.pub"), "--key", str(keys / "bob.pub"),
           "--exec-allow", TOUCH, "--out", str(keyring)))

    by_trigger, by_hand, tampered_marker = tmp_path / "ran-by-trigger", tmp_path / "ran-by-hand", tmp_path / "never"
    (books / "on-ready.toml").write_text(playbook("on-ready", trigger="DaemonReady", marker=by_trigger))
    (books / "by-hand.toml").write_text(playbook("by-hand", trigger=None, marker=by_hand))
    (books / "tampered.toml").write_text(playbook("tampered", trigger="DaemonReady", marker=tampered_marker))
    for name in ("on-ready", "by-hand", "tampered"):
        for operator in ("alice", "bob"):
            ok(cli("playbook", "sign", str(books / f"{name}.toml"), "--key", str(keys / f"{operator}.key")))
    verify = cli("playbook", "verify", str(books / "by-hand.toml"), "--keyring", str(keyring),
                 "--state-dir", str(state))
    assert "alice" in ok(verify) and "bob" in verify.stdout
    # One changed byte after signing: the daemon must refuse it before any step.
    text = (books / "tampered.toml").read_text()
    (books / "tampered.toml").write_text(text.replace("tampered running", "tampered runnin!"))
    refused = cli("playbook", "verify", str(books / "tampered.toml"), "--keyring", str(keyring),
                  "--state-dir", str(state))
    assert refused.returncode != 0 and "modified" in (refused.stdout + refused.stderr)

    socket = tmp_path / "run" / "control.sock"
    config = tmp_path / "lifeline.toml"
    config.write_text(dump_toml({
        "node": {"name": "edge-a", "state_dir": str(state), "runtime_dir": str(tmp_path / "run")},
        "control": {"socket": str(socket), "group": ""},
        "metrics": {"enabled": False},
        "system": quiet_system(),
        "recovery": {"playbooks": str(books), "keyring": str(keyring)},
    }))
    daemon = DaemonProcess(config=config, workdir=tmp_path / "proc", watchdog_usec=None)
    daemon.start()
    try:
        assert daemon.wait_ready(30), daemon.log_text()
        # The triggering event (DaemonReady) ran the verified playbook...
        assert until(by_trigger.exists, 10), daemon.log_text()[-3000:]
        # ... and never the tampered one.
        listed = json.loads(ok(cli("playbook", "list", "--json", "--socket", str(socket))))
        assert sorted(p["name"] for p in listed["playbooks"]) == ["by-hand", "on-ready"]
        assert "modified" in listed["refused"]["tampered"]
        assert not tampered_marker.exists()
        # By hand: a dry run changes nothing, then the real run.
        planned = ok(cli("playbook", "run", "by-hand", "--dry-run", "--socket", str(socket)))
        assert "dry_run" in planned or "dry run" in planned
        assert not by_hand.exists()
        ok(cli("playbook", "run", "by-hand", "--socket", str(socket)))
        assert by_hand.exists()
        again = cli("playbook", "run", "tampered", "--socket", str(socket))
        assert again.returncode != 0 and "modified" in (again.stdout + again.stderr)
        assert daemon.stop(20) == 0
    finally:
        daemon.close()

    audit = state / "recovery" / "audit.jsonl"
    checked = ok(cli("audit", "verify", "--state-dir", str(state)))
    assert "OK" in checked
    kinds = [json.loads(line)["kind"] for line in audit.read_text().splitlines()]
    for kind in ("verify.ok", "verify.refused", "run.started", "step", "run.finished"):
        assert kind in kinds, kinds
    # Rewrite one byte of an entry: the chain names the line.
    lines = audit.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"kind":"', '"kind":"x', 1)
    audit.write_text("".join(lines))
    broken = cli("audit", "verify", "--state-dir", str(state))
    assert broken.returncode == 1 and "line 2" in broken.stdout, broken.stdout + broken.stderr
