"""Does this host fit the config? What `lifeline run` checks before it starts any service,
and what `lifeline config check` checks (``--host``, the default) for the service user.

Every file the daemon opens at start-up because the config names it, and every directory
it writes: the uplinks' interfaces and addresses, the replication and witness keys, the
venues' credentials, the hardware watchdog, the state, runtime and control-socket
directories. Each problem is one line naming the config file, the key path and the fix.
What the daemon tolerates at start-up (no playbook directory, a keyring that does not
load, a missing hook program, serial device, lease watchdog or control-socket group) are
*warnings*: the daemon starts and reports them; `config check` prints them and still
exits 0.

``user`` is the account the daemon will run as (``config check --user lifeline``); the
checks then go by that account's uid, groups and each file's owner and mode, whoever runs
the check (root, usually). Without it they go by this process's own access.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.standby.keys import load_replication_key
from daemon.uplinks.config import check_uplinks_on_host

if TYPE_CHECKING:
    from daemon.config import Config

EX_CONFIG = 78  # sysexits.h: the unit's RestartPreventExitStatus=78 stops restarts on it

# Created by the unit (StateDirectory=, RuntimeDirectory=) and by lifeline.tmpfiles.conf.
UNIT_DIRECTORIES = (Path("/var/lib/lifeline"), Path("/run/lifeline"))


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> ServiceUser:
        """The account ``name``; ``KeyError`` naming the fix if this host has none."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise KeyError(f"no user {name!r} on this host: create it with systemd-sysusers "
                           f"(the package's /usr/lib/sysusers.d/lifeline.conf), or pass --user NAME") from None
        return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))

    def may(self, st: os.stat_result, bits: int) -> bool:
        """May this user read (4), write (2) or search/execute (1) a file with ``st``?"""
        if self.uid == 0:
            return not bits & 1 or bool(st.st_mode & 0o111) or stat.S_ISDIR(st.st_mode)
        if st.st_uid == self.uid:
            return (st.st_mode >> 6) & bits == bits
        if st.st_gid in self.gids:
            return (st.st_mode >> 3) & bits == bits
        return st.st_mode & bits == bits


@dataclass
class HostReport:
    problems: list[str] = field(default_factory=list)   # the daemon refuses to start
    warnings: list[str] = field(default_factory=list)   # it starts, and reports these


def _access(path: Path, bits: int, user: ServiceUser | None) -> str | None:
    """None if ``user`` (else this process) may access ``path`` with ``bits``; else why not."""
    if user is None:
        mode = (os.R_OK if bits & 4 else 0) | (os.W_OK if bits & 2 else 0) | (os.X_OK if bits & 1 else 0)
        return None if os.access(path, mode) else "permission denied"
    # Every directory on the way must be searchable by the user.
    for parent in reversed(path.absolute().parents):
        try:
            st = parent.stat()
        except OSError:
            return None  # reported by the caller's own stat
        if not user.may(st, 1):
            return (f"{user.name} cannot enter {parent} (owner {_owner(st)}, mode {st.st_mode & 0o7777:04o}); "
                    f"fix: chgrp {user.name} {parent} && chmod g+x {parent}")
    st = path.stat()
    if not user.may(st, bits):
        what = "read" if bits == 4 else "write"
        return f"{user.name} cannot {what} it (owner {_owner(st)}, mode {st.st_mode & 0o7777:04o})"
    return None


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _secret_file(report: HostReport, where: str, path: Path, user: ServiceUser | None, load: Any,
                 make: str) -> None:
    """A key or credentials file: it exists, the service user can read it, and it loads."""
    who = user.name if user else "lifeline"
    try:
        path.stat()
    except FileNotFoundError:
        report.problems.append(f"{where}: {path}: no such file; {make}")
        return
    except OSError as exc:
        report.problems.append(f"{where}: {path}: cannot stat ({exc.strerror})")
        return
    denied = _access(path, 4, user)
    if denied:
        fix = "" if "fix:" in denied else f"; fix: chown {who}: {path} && chmod 600 {path}"
        report.problems.append(f"{where}: {path}: {denied}{fix}")
        return
    try:
        load(path)
    except (OSError, ValueError) as exc:
        text = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        report.problems.append(f"{where}: {text}")


def _writable_directory(report: HostReport, where: str, path: Path, user: ServiceUser | None) -> None:
    who = user.name if user else "lifeline"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path:
        if path in UNIT_DIRECTORIES:
            return  # the unit and tmpfiles make it, owned by lifeline
        denied = _access(existing, 3, user)
        if denied:
            denied = denied.split("; fix:")[0]
            report.problems.append(f"{where}: {path} does not exist and cannot be created ({existing}: {denied}); "
                                   f"fix: install -d -m 0750 -o {who} {path}")
        return
    if not path.is_dir():
        report.problems.append(f"{where}: {path} is not a directory")
        return
    denied = _access(path, 3, user)
    if denied:
        fix = "" if "fix:" in denied else f"; fix: chown {who}: {path} && chmod 0750 {path}"
        report.problems.append(f"{where}: {path}: {denied}{fix}")


def check_host(config: Config, user: ServiceUser | None = None) -> HostReport:
    """What on this host keeps ``config`` from running (see the module docstring)."""
    report = HostReport()
    source = config.source

    if config.uplinks:
        report.problems.extend(check_uplinks_on_host(config))

    directories: dict[Path, str] = {}
    for key, path in (("node.state_dir", config.node.state_dir), ("node.runtime_dir", config.node.runtime_dir),
                      ("control.socket", Path(config.control.socket).parent)):
        directories.setdefault(Path(path), key)
    for path, key in directories.items():
        _writable_directory(report, f"{source}: {key}", path, user)

    group = config.control.group
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            report.warnings.append(f"{source}: control.group: no group {group!r} on this host, so only the "
                                   f"service user may use the socket; create it (systemd-sysusers makes "
                                   f"lifeline's) or set group = \"\"")
        else:
            if user is not None and user.uid != 0 and gid not in user.gids:
                report.warnings.append(f"{source}: control.group: {user.name} is not in group {group!r}, so the "
                                       f"socket keeps its own group; fix: usermod -aG {group} {user.name}")

    if config.standby is not None:
        make = "make it with `lifeline keys replication --out PATH --owner lifeline` (the same file on both hosts)"
        _secret_file(report, f"{source}: standby.key_file", Path(config.standby.key_file), user,
                     load_replication_key, make)
        lease = config.standby.lease
        if lease is not None and lease.witness_key_file is not None:
            _secret_file(report, f"{source}: standby.lease.witness_key_file", Path(lease.witness_key_file), user,
                         load_replication_key, make)
        if lease is not None:
            for hook in ("on_primary", "on_fenced", "on_standby"):
                argv = getattr(lease, hook)
                if argv and not os.access(argv[0], os.X_OK):
                    report.warnings.append(f"{source}: standby.lease.{hook}: {argv[0]} is not an executable file")

    venues = config.venues
    for name, venue in venues.items():
        if venue.credentials is None:
            continue
        try:
            from daemon.venues.client import load_credentials  # lazy: ccxt (the venues extra), only with credentials
        except ImportError:
            break  # the config check already says to install lifeline[venues]
        _secret_file(report, f"{source}: venues.{name}.credentials", Path(venue.credentials), user,
                     load_credentials, "create it (api_key, secret) with mode 0600, owned by the service user")

    recovery = config.recovery
    if recovery is not None:
        playbooks = Path(recovery.playbooks)
        if not playbooks.is_dir():
            report.warnings.append(f"{source}: recovery.playbooks: {playbooks} is not a directory; no playbook "
                                   f"will run (fix: mkdir -p {playbooks})")
        elif any(playbooks.glob("*.toml")):
            from recovery.keys import load_keyring  # lazy: cryptography (~40 ms), only with playbooks (CLI start-up)

            before = len(report.problems)
            _secret_file(report, f"{source}: recovery.keyring", Path(recovery.keyring), user, load_keyring,
                         "make it with `lifeline keyring init`")
            # The daemon refuses each playbook instead: a warning, not a refusal to start.
            report.warnings.extend(report.problems[before:])
            del report.problems[before:]

    hardware = config.hardware
    if hardware is not None and hardware.watchdog is not None:  # opened at start: a failure stops the daemon
        device = Path(hardware.watchdog.device)
        if not device.exists():
            report.problems.append(f"{source}: hardware.watchdog.device: no device {device}; load the board's "
                                   f"watchdog driver (iTCO_wdt, sp5100_tco, ...; softdog for tests) or remove "
                                   f"[hardware.watchdog]")
        elif denied := _access(device, 2, user):
            report.problems.append(f"{source}: hardware.watchdog.device: {device}: {denied}")
    lease = config.standby.lease if config.standby is not None else None
    if lease is not None and lease.watchdog != "off" and not Path(lease.watchdog_device).exists():
        report.warnings.append(f"{source}: standby.lease.watchdog_device: no device {lease.watchdog_device}; with "
                               f'watchdog = "{lease.watchdog}" this node '
                               + ("will never become primary" if lease.watchdog == "required"
                                  else "will be primary without a watchdog"))
    if hardware is not None:
        for kind in ("ups", "gnss", "enclosure"):
            device = getattr(hardware, kind)
            for key in ("port", "door_port"):
                port = getattr(device, key, None) if device is not None else None
                if isinstance(port, str) and port.startswith("/") and not os.path.exists(port):
                    report.warnings.append(f"{source}: hardware.{kind}.{key}: no device {port}; the {kind} "
                                           f"will be reported stale")
    return report
