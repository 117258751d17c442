"""`lifeline config check` checks the host as the service user will see it, and `lifeline
run` refuses a config this host cannot serve with exit 78 (EX_CONFIG), one line per
problem and no traceback: what `RestartPreventExitStatus=78` in the unit relies on."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon.config import dump_toml, load_config
from daemon.host_check import EX_CONFIG, ServiceUser, check_host
from daemon.standby.keys import generate_replication_key
from tests.support.cli import ROOT, cli

USER = "nobody"  # an account every Debian has, never root


def standby_config(tmp_path: Path, key_file: Path, **node: str) -> Path:
    data = {
        "node": {"name": "edge-a", "state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run"),
                 **node},
        "control": {"socket": str(tmp_path / "run" / "control.sock"), "group": ""},
        "metrics": {"enabled": False},
        "standby": {"key_file": str(key_file), "role": "primary", "listen": "127.0.0.1:0"},
    }
    path = tmp_path / "lifeline.toml"
    path.write_text(dump_toml(data))
    return path


def test_a_missing_key_file_refuses_to_start_with_ex_config_in_one_line(tmp_path: Path) -> None:
    config = standby_config(tmp_path, tmp_path / "absent.key")
    result = cli("run", "--config", str(config))
    assert result.returncode == EX_CONFIG == 78, result.stderr
    assert "Traceback" not in result.stderr and "FileNotFoundError" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{config}: standby.key_file: {tmp_path / 'absent.key'}: no such file" in lines[0]
    assert "lifeline keys replication --out PATH --owner lifeline" in lines[0]
    assert not (tmp_path / "run" / "control.sock").exists()


def test_a_key_readable_by_others_refuses_to_start_naming_chmod(tmp_path: Path) -> None:
    key = tmp_path / "replication.key"
    generate_replication_key(key)
    key.chmod(0o640)
    result = cli("run", "--config", str(standby_config(tmp_path, key)))
    assert result.returncode == 78 and f"chmod 600 {key}" in result.stderr, result.stderr


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_config_check_sees_the_host_as_the_service_user() -> None:
    # (not pytest's tmp_path: its parents are 0700, which the service user could not enter)
    with tempfile.TemporaryDirectory(prefix="ll-hostcheck-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)
        check_as_the_service_user(tmp)
    with tempfile.TemporaryDirectory(prefix="ll-hostcheck-") as name:
        Path(name).chmod(0o755)
        (Path(name) / "inner").mkdir(mode=0o700)
        key = Path(name) / "inner" / "replication.key"
        generate_replication_key(key)
        os.chown(key, pwd.getpwnam(USER).pw_uid, -1)
        check = cli("config", "check", str(standby_config(Path(name), key)), "--user", USER)
        assert f"{USER} cannot enter {Path(name) / 'inner'} (owner root:" in check.stderr, check.stderr
        assert f"fix: chgrp {USER} {Path(name) / 'inner'} && chmod g+x" in check.stderr


def check_as_the_service_user(tmp_path: Path) -> None:
    key = tmp_path / "replication.key"
    made = cli("keys", "replication", "--out", str(key))  # as root, as the README did before --owner
    assert made.returncode == 0, made.stderr
    (tmp_path / "state").mkdir(mode=0o750)
    config = standby_config(tmp_path, key)

    check = cli("config", "check", str(config), "--user", USER)
    assert check.returncode == 1
    assert f"{config}: standby.key_file: {key}: {USER} cannot read it (owner root:" in check.stderr
    assert f"chown {USER}: {key}" in check.stderr
    assert f"{config}: node.state_dir: {tmp_path / 'state'}: {USER} cannot write it" in check.stderr
    # the runtime directory does not exist, but the user could not make it in tmp_path either
    assert f"node.runtime_dir: {tmp_path / 'run'} does not exist and cannot be created" in check.stderr

    # --no-host: the file alone is fine
    assert cli("config", "check", str(config), "--no-host").returncode == 0

    # the fixes it names, then OK
    key.unlink()
    owned = cli("keys", "replication", "--out", str(key), "--owner", USER)
    assert owned.returncode == 0 and f"owner {USER}:" in owned.stdout, owned.stderr
    assert key.stat().st_uid == pwd.getpwnam(USER).pw_uid and key.stat().st_mode & 0o777 == 0o600
    for directory in ("state", "run"):
        (tmp_path / directory).mkdir(exist_ok=True)
        os.chown(tmp_path / directory, pwd.getpwnam(USER).pw_uid, -1)
    check = cli("config", "check", str(config), "--user", USER)
    assert check.returncode == 0, check.stderr
    assert f"this host fits it for user {USER}" in check.stdout


def test_config_check_names_a_missing_service_user(tmp_path: Path) -> None:
    key = tmp_path / "replication.key"
    generate_replication_key(key)
    check = cli("config", "check", str(standby_config(tmp_path, key)), "--user", "ll-no-such-user")
    assert check.returncode == 1 and "no user 'll-no-such-user' on this host" in check.stderr


def test_keys_owner_refuses_an_unknown_user_before_writing(tmp_path: Path) -> None:
    key = tmp_path / "replication.key"
    result = cli("keys", "replication", "--out", str(key), "--owner", "ll-no-such-user")
    assert result.returncode == 1 and "--owner: no user 'll-no-such-user'" in result.stderr
    assert not key.exists()


def test_credentials_the_daemon_could_not_read_are_problems_and_devices_warnings(tmp_path: Path) -> None:
    key = tmp_path / "replication.key"
    generate_replication_key(key)
    config = standby_config(tmp_path, key)
    text = config.read_text() + (
        '[venues.kraken]\nexchange = "kraken"\napi_url = "http://127.0.0.1:9"\n'
        f'credentials = "{tmp_path / "kraken.toml"}"\n'
        f'[hardware.ups]\nport = "{tmp_path / "ttyUSB9"}"\n')
    config.write_text(text)
    report = check_host(load_config(config))
    assert report.problems == [f"{config}: venues.kraken.credentials: {tmp_path / 'kraken.toml'}: no such file; "
                               "create it (api_key, secret) with mode 0600, owned by the service user"]
    assert report.warnings == [f"{config}: hardware.ups.port: no device {tmp_path / 'ttyUSB9'}; "
                               "the ups will be reported stale"]


def test_service_user_permissions_follow_owner_group_other() -> None:
    user = ServiceUser("svc", 1000, frozenset({1000, 20}))

    def st(uid: int, gid: int, mode: int) -> os.stat_result:
        return os.stat_result((mode | 0o100000, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    assert user.may(st(1000, 0, 0o600), 4) and not user.may(st(1000, 0, 0o200), 4)
    assert user.may(st(0, 20, 0o640), 4) and not user.may(st(0, 20, 0o604), 4)  # group bits, not other
    assert not user.may(st(0, 0, 0o600), 4) and user.may(st(0, 0, 0o604), 4)
    assert not user.may(st(1000, 1000, 0o060), 4)  # the owner's bits apply to the owner, not the group's
    assert ServiceUser("root", 0, frozenset({0})).may(st(5, 5, 0o000), 6)


def test_venues_without_ccxt_are_a_config_error_naming_the_extra(tmp_path: Path) -> None:
    """A host with the core only (no `lifeline[venues]`): python -S hides site-packages."""
    config = tmp_path / "lifeline.toml"
    config.write_text('[node]\nname = "w"\n[venues.kraken]\nexchange = "kraken"\n')
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from daemon.config import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[2])\nexcept ConfigError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT), str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"{config}: venues.kraken.exchange: venues need ccxt, which is not installed here: " \
           "pip install 'lifeline[venues]'" in result.stdout, result.stdout


def test_a_missing_hardware_watchdog_refuses_to_start_with_ex_config(tmp_path: Path) -> None:
    """The hardware service opens it at start; without the check the daemon crashed (exit 1)."""
    key = tmp_path / "replication.key"
    generate_replication_key(key)
    config = standby_config(tmp_path, key)
    config.write_text(config.read_text() + f'[hardware.watchdog]\ndevice = "{tmp_path / "watchdog9"}"\n')
    result = cli("run", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert f"{config}: hardware.watchdog.device: no device {tmp_path / 'watchdog9'}; load the board's " \
           f"watchdog driver" in result.stderr
    assert "Traceback" not in result.stderr
