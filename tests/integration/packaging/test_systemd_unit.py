"""The systemd integration files: hardening score, key settings, sysusers/tmpfiles.

Plain synchronous tests. The checks that shell out to systemd tools skip (with the
reason) only when the tool is not installed; everything that runs against a
directory tree uses ``--root=<tmp_path>`` so nothing on the host is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.cli import ROOT as REPO

SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "lifeline.service"
SYSUSERS = SYSTEMD_DIR / "lifeline.sysusers.conf"
TMPFILES = SYSTEMD_DIR / "lifeline.tmpfiles.conf"

MAX_EXPOSURE = 2.0
EXPECTED_CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
DIRECTORIES = ("/var/lib/lifeline", "/run/lifeline", "/etc/lifeline")

_EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")
# Plain environment for the systemd tools: no colours, no pager, C locale.
_TOOL_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}


# --------------------------------------------------------------------------- parsing


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into {section: {key: [values in order]}}.

    Unlike configparser this keeps repeated keys (DeviceAllow=, SystemCallFilter=)
    and joins backslash continuation lines; ``#``/``;`` lines are comments.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        assert current is not None, f"assignment outside a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, "unit ends in a continuation line"
    return sections


def effective_set(values: list[str]) -> set[str]:
    """Fold list-valued assignments the way systemd does (empty value resets)."""
    result: set[str] = set()
    for value in values:
        assert not value.startswith("~"), "capabilities must be an allow list"
        if value == "":
            result = set()
        else:
            result |= set(value.split())
    return result


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    sections = parse_unit(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= sections.keys()
    return sections["Service"]


def single(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values, f"{key}= is not set"
    assert len(values) == 1, f"{key}= set more than once: {values}"
    return values[0]


# ------------------------------------------------------------- systemd-analyze security


def exposure(unit_path: Path) -> float:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not on PATH")
    proc = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        env=_TOOL_ENV,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    match = _EXPOSURE_RE.search(output)
    assert match, f"no exposure line (rc={proc.returncode}):\n{output}"
    assert match.group(1) == unit_path.name
    return float(match.group(2))


def test_security_exposure_is_ok() -> None:
    score = exposure(UNIT)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


# Sandboxing directives; removing them must push the unit past the threshold.
HARDENING_KEYS = {
    "CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges",
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateMounts", "ProtectProc",
    "DevicePolicy", "DeviceAllow", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
    "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute", "KeyringMode",
    "RemoveIPC", "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
    "UMask",
}


def test_score_check_catches_removed_hardening(tmp_path: Path) -> None:
    """Guard the guard: the same unit without its sandboxing must fail the threshold."""
    kept = []
    for line in UNIT.read_text().splitlines():
        key = line.partition("=")[0].strip()
        if key not in HARDENING_KEYS:
            kept.append(line)
    stripped = tmp_path / "lifeline.service"
    stripped.write_text("\n".join(kept) + "\n")
    assert "ProtectSystem" not in stripped.read_text()
    score = exposure(stripped)
    assert score > MAX_EXPOSURE, f"unhardened unit still scores {score}"


def test_unit_has_no_syntax_errors() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not on PATH")
    # verify exits non-zero here because /opt/lifeline/bin/lifeline is not installed;
    # only parse errors matter.
    proc = subprocess.run(
        [tool, "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        env=_TOOL_ENV,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    bad = [
        line
        for line in output.splitlines()
        if re.search(r"Unknown (key|section|lvalue)|Failed to parse|Invalid|Missing '='", line)
    ]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------- unit contents


def test_notify_and_watchdog(service: dict[str, list[str]]) -> None:
    assert single(service, "Type") == "notify"
    assert single(service, "NotifyAccess") == "main"
    assert single(service, "WatchdogSec") not in ("", "0", "infinity")
    assert single(service, "Restart") == "on-failure"


def test_exec_start_runs_the_daemon(service: dict[str, list[str]]) -> None:
    exec_start = single(service, "ExecStart")
    assert exec_start.startswith("/opt/lifeline/bin/lifeline ")
    assert " run " in exec_start
    assert "--config /etc/lifeline/lifeline.toml" in exec_start


def test_capabilities_are_exactly_net_admin_and_net_raw(service: dict[str, list[str]]) -> None:
    assert effective_set(service["CapabilityBoundingSet"]) == EXPECTED_CAPS
    assert effective_set(service["AmbientCapabilities"]) == EXPECTED_CAPS


def test_identity_and_directories(service: dict[str, list[str]]) -> None:
    assert single(service, "User") == "lifeline"
    assert single(service, "Group") == "lifeline"
    assert "DynamicUser" not in service
    assert single(service, "StateDirectory") == "lifeline"
    assert single(service, "RuntimeDirectory") == "lifeline"
    assert single(service, "ConfigurationDirectory") == "lifeline"
    assert single(service, "RuntimeDirectoryPreserve") == "no"
    assert single(service, "UMask") == "0027"


def test_key_sandboxing(service: dict[str, list[str]]) -> None:
    assert single(service, "NoNewPrivileges") == "yes"
    assert single(service, "ProtectSystem") == "strict"
    assert single(service, "ProtectHome") == "yes"
    assert single(service, "PrivateTmp") == "yes"
    assert single(service, "MemoryDenyWriteExecute") == "yes"
    assert single(service, "RestrictNamespaces") == "yes"
    assert single(service, "SystemCallArchitectures") == "native"
    assert service["SystemCallFilter"][0] == "@system-service"
    assert set(single(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
    }
    # Serial ports and the watchdog stay reachable, everything else is closed.
    assert single(service, "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in service["DeviceAllow"]}
    assert allowed == {"char-ttyS", "char-ttyUSB", "char-ttyACM", "/dev/watchdog", "char-watchdog"}


def test_settings_that_would_break_the_daemon_are_absent(service: dict[str, list[str]]) -> None:
    # psutil reads /proc/loadavg, /proc/stat, /proc/meminfo.
    assert "ProcSubset" not in service
    # The hardware drivers need /dev/tty* and /dev/watchdog.
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    # Capabilities in a private user namespace do not apply to the host's routes.
    assert service.get("PrivateUsers", ["no"]) == ["no"]
    # The daemon changes the host's routes and must reach the venues.
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service


# ------------------------------------------------------------ sysusers / tmpfiles


def _lines(path: Path) -> list[list[str]]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line.split())
    return out


def test_sysusers_declares_lifeline() -> None:
    lines = _lines(SYSUSERS)
    users = [f for f in lines if f[:2] == ["u", "lifeline"]]
    assert len(users) == 1
    text = SYSUSERS.read_text()
    assert "/var/lib/lifeline" in text
    assert "nologin" in text


def test_tmpfiles_declares_directories() -> None:
    entries = {f[1]: f for f in _lines(TMPFILES)}
    for directory in DIRECTORIES:
        assert directory in entries, directory
        assert entries[directory][0] == "d"
        assert entries[directory][2] == "0750"
        assert entries[directory][4] == "lifeline"
    assert entries["/etc/lifeline"][3] == "root"
    assert entries["/var/lib/lifeline"][3] == "lifeline"
    assert entries["/run/lifeline"][3] == "lifeline"


def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    """Really apply both snippets, confined to tmp_path via --root."""
    sysusers = shutil.which("systemd-sysusers")
    tmpfiles = shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers / systemd-tmpfiles not on PATH")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)  # sysusers needs <root>/etc for its lock file

    def run(*argv: str, chown_may_fail: bool = False) -> None:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=_TOOL_ENV, timeout=60
        )
        if proc.returncode != 0 and chown_may_fail and os.geteuid() != 0:
            # Unprivileged: the only acceptable failures are the chowns themselves.
            errors = [
                line for line in proc.stderr.splitlines()
                if "fchownat()" not in line or "Operation not permitted" not in line
            ]
            assert not errors, f"{argv}: rc={proc.returncode}\n{proc.stderr}"
            return
        assert proc.returncode == 0, f"{argv}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}"

    # Absolute config paths: relative ones are resolved inside --root.
    run(sysusers, f"--root={root}", str(SYSUSERS))
    passwd = {
        f[0]: f for f in (l.split(":") for l in (root / "etc/passwd").read_text().splitlines())
    }
    group = {
        f[0]: f for f in (l.split(":") for l in (root / "etc/group").read_text().splitlines())
    }
    assert "lifeline" in passwd and "lifeline" in group
    user = passwd["lifeline"]
    uid, gid = int(user[2]), int(user[3])
    assert gid == int(group["lifeline"][2])
    assert uid < 1000, "must be a system user"
    assert user[5] == "/var/lib/lifeline"
    assert user[6].endswith("nologin")

    run(tmpfiles, "--create", f"--root={root}", str(TMPFILES), chown_may_fail=True)
    expected = {
        "/var/lib/lifeline": (uid, gid),
        "/run/lifeline": (uid, gid),
        "/etc/lifeline": (0, gid),
    }
    for directory, (owner, grp) in expected.items():
        st = (root / directory.lstrip("/")).stat()
        assert (st.st_mode & 0o7777) == 0o750, directory
        if os.geteuid() == 0:  # only root can chown; as a user tmpfiles keeps our ids
            assert (st.st_uid, st.st_gid) == (owner, grp), directory


def test_resource_limits(service: dict[str, list[str]]) -> None:
    # Issue 16: at the default soft limit of 1024 descriptors a flood of bare TCP
    # connections failed every listener; memory and tasks are bounded too.
    assert int(service["LimitNOFILE"][-1]) >= 4096
    memory = service["MemoryMax"][-1]
    assert memory.endswith("M") and 256 <= int(memory[:-1]) <= 2048
    assert 64 <= int(service["TasksMax"][-1]) <= 1024


# ------------------------------------------------------------------- exit 78, the witness unit

WITNESS_UNIT = SYSTEMD_DIR / "lifeline-witness.service"


def test_a_config_error_is_not_restarted(service: dict[str, list[str]]) -> None:
    # `lifeline run` exits 78 (EX_CONFIG) on a config or host it cannot serve
    from daemon.cli import EX_CONFIG

    assert single(service, "Restart") == "on-failure"
    assert str(EX_CONFIG) in single(service, "RestartPreventExitStatus").split()


def test_the_witness_unit_is_hardened_and_runs_the_witness() -> None:
    unit = parse_unit(WITNESS_UNIT.read_text())["Service"]
    assert exposure(WITNESS_UNIT) <= 2.0
    assert single(unit, "ExecStart").startswith("/opt/lifeline/bin/lifeline witness --listen ")
    assert "--key-file /etc/lifeline/witness.key" in single(unit, "ExecStart")
    assert single(unit, "CapabilityBoundingSet") == "" and single(unit, "User") == "lifeline"
    assert single(unit, "StateDirectory") == "lifeline-witness"
    assert "/var/lib/lifeline-witness/witness.state" in single(unit, "ExecStart")
    assert single(unit, "Type") == "notify"  # the witness sends READY=1 once it listens
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        proc = subprocess.run([tool, "verify", "--man=no", str(WITNESS_UNIT)], capture_output=True, text=True,
                              env=_TOOL_ENV, timeout=120)
        bad = [line for line in (proc.stdout + proc.stderr).splitlines()
               if re.search(r"Unknown (key|section|lvalue)|Failed to parse|Invalid|Missing '='", line)]
        assert not bad, "\n".join(bad)
