"""Who may call what on the control socket: roles, the method table, and the caller.

Sans-IO apart from the user database look-ups in :func:`resolve_caller` (passwd and
group names; no trio). The control server (:mod:`daemon.control`) reads the peer's
credentials with ``SO_PEERCRED`` on every connection, turns them into a
:class:`Caller` here, and asks :func:`required_roles` before each call.

Roles
-----
``engine``    the trading engine: ``journal.append`` plus the reads it trades on.
``operator``  people on call: every read, ``uplink.use``/``auto``, playbook lists and
              dry runs, reconciliation dry runs, ``playbook.reload``.
``admin``     what can lose money or records: ``standby.promote`` (``accept_loss``),
              ``playbook.run`` for real, ``venues.reconcile`` that acts,
              ``standby.switchover``, ``standby.pause`` / ``resume``, the live drills
              ``drill.switchover`` / ``drill.uplink``.

Roles are cumulative in one direction only: admin includes operator; engine is apart
(an operator cannot append order records, which reconciliation trusts, and the engine
cannot pin an uplink). Both engine and operator read status, events and roles. root and
the daemon's own user hold every role.

Mapping (``[control.roles]``): each role lists user names, numeric uids, ``@group``
names or ``@gid`` numbers. A user *named* (or numbered) in some role gets exactly the
roles it is named in; group entries apply only to users named nowhere. So
``engine = ["trader"]`` with ``operator = ["@lifeline"]`` keeps the engine an engine
even though it must be in group ``lifeline`` to open the socket. A caller's groups come
from the user database (``getgrouplist``), not from the process (the unit's
``ProtectProc=invisible`` hides other users' ``/proc``).
"""

from __future__ import annotations

import contextvars
import grp
import os
import pwd
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from daemon.core.errors import LifelineError

ENGINE = "engine"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (ENGINE, OPERATOR, ADMIN)

#: Anyone who can open the socket.
ANYONE: frozenset[str] = frozenset()
READ = frozenset({ENGINE, OPERATOR})
ONLY_ENGINE = frozenset({ENGINE})
ONLY_OPERATOR = frozenset({OPERATOR})
ONLY_ADMIN = frozenset({ADMIN})

#: Every control method the daemon registers, and the roles that may call it (any one
#: of them suffices). A method missing here needs admin (fail closed); a test checks
#: that a fully configured daemon registers nothing missing from this table.
METHODS: dict[str, frozenset[str]] = {
    "ping": ANYONE,
    "help": ANYONE,
    "status": READ,
    "events.recent": READ,
    "events.subscribe": READ,
    "role.status": READ,
    "role.watch": READ,
    "journal.stats": READ,
    "journal.read": READ,
    "uplink.status": READ,
    "venues.status": READ,
    "venues.watch": READ,
    "journal.append": ONLY_ENGINE,
    "uplink.use": ONLY_OPERATOR,
    "uplink.auto": ONLY_OPERATOR,
    "playbook.list": ONLY_OPERATOR,
    "playbook.reload": ONLY_OPERATOR,
    "playbook.run": ONLY_ADMIN,        # {"dry_run": true}: operator
    "venues.reconcile": ONLY_ADMIN,    # {"dry_run": true}: operator
    "standby.promote": ONLY_ADMIN,
    "cluster.status": READ,
    "preflight.run": ONLY_OPERATOR,    # reads, plus one audit line per run
    "config.reload": ONLY_ADMIN,
    "standby.switchover": ONLY_ADMIN,
    "standby.pause": ONLY_ADMIN,
    "standby.resume": ONLY_ADMIN,
    "drill.switchover": ONLY_ADMIN,    # live drills on the real pair ([drills] live = true)
    "drill.uplink": ONLY_ADMIN,
    "guard.kill": ONLY_ADMIN,          # the kill switch (daemon/guard/killswitch.py)
    "guard.unkill": ONLY_ADMIN,
    "guard.status": READ,
    "risk.status": READ,
    "risk.pause": ONLY_ADMIN,
    "risk.resume": ONLY_ADMIN,
    "risk.throttle": ONLY_ADMIN,
    "risk.unthrottle": ONLY_ADMIN,
}
#: Methods whose dry run an operator may ask for.
DRY_RUN_OPERATOR = frozenset({"playbook.run", "venues.reconcile"})
#: Methods that change state: each call is logged with the caller.
STATE_CHANGING = frozenset({"journal.append", "uplink.use", "uplink.auto", "playbook.reload", "playbook.run",
                            "venues.reconcile", "standby.promote", "config.reload", "standby.switchover",
                            "standby.pause", "standby.resume", "drill.switchover", "drill.uplink",
                            "guard.kill", "guard.unkill",
                            "risk.pause", "risk.resume", "risk.throttle", "risk.unthrottle"})

DEFAULT_ROLES: dict[str, list[str]] = {
    ENGINE: [],
    OPERATOR: ["@lifeline"],
    ADMIN: ["root", "@lifeline-admin"],
}


def required_roles(method: str, params: Mapping[str, Any]) -> frozenset[str]:
    """The roles that may make this call (empty: anyone connected)."""
    need = METHODS.get(method, ONLY_ADMIN)
    if method in DRY_RUN_OPERATOR and params.get("dry_run") is True:
        return ONLY_OPERATOR
    return need


def effective(roles: Iterable[str]) -> frozenset[str]:
    """Roles with what they include (admin includes operator)."""
    out = set(roles)
    if ADMIN in out:
        out.add(OPERATOR)
    return frozenset(out)


def allowed(held: frozenset[str], need: frozenset[str]) -> bool:
    return not need or bool(held & need)


def describe(need: frozenset[str]) -> str:
    """``"the admin role"``, ``"the engine or operator role"``."""
    names = [r for r in ROLES if r in need]
    return "the " + " or ".join(names) + " role"


# --------------------------------------------------------------------------- mapping


class RoleSpecError(LifelineError, ValueError):
    pass


@dataclass(frozen=True)
class RoleMap:
    """``[control.roles]`` parsed: per role, the users (uids) and groups (gids) named.
    Names that do not resolve are kept in ``missing`` (logged, never fatal: a group
    created later needs a restart)."""

    users: dict[str, frozenset[int]]
    groups: dict[str, frozenset[int]]
    missing: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, spec: Mapping[str, Iterable[str | int]]) -> "RoleMap":
        users: dict[str, set[int]] = {r: set() for r in ROLES}
        groups: dict[str, set[int]] = {r: set() for r in ROLES}
        missing: list[str] = []
        for role, entries in spec.items():
            if role not in ROLES:
                raise RoleSpecError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
            for entry in entries:
                kind, ident = parse_entry(entry)
                try:
                    if kind == "group":
                        groups[role].add(ident if isinstance(ident, int) else grp.getgrnam(ident).gr_gid)
                    else:
                        users[role].add(ident if isinstance(ident, int) else pwd.getpwnam(ident).pw_uid)
                except KeyError:
                    missing.append(f"{role}: {entry}")
        return cls({r: frozenset(v) for r, v in users.items()}, {r: frozenset(v) for r, v in groups.items()},
                   tuple(missing))

    def roles_for(self, uid: int, gids: Iterable[int], *, superusers: Iterable[int] = (0,)) -> frozenset[str]:
        if uid in set(superusers):
            return frozenset(ROLES)
        named = {r for r in ROLES if uid in self.users.get(r, ())}
        if named:
            return effective(named)
        gid_set = set(gids)
        return effective(r for r in ROLES if gid_set & self.groups.get(r, frozenset()))


def parse_entry(entry: str | int) -> tuple[str, str | int]:
    """``"trader"`` → user, ``"1001"``/``1001`` → uid, ``"@lifeline"`` → group, ``"@1001"`` → gid."""
    if isinstance(entry, bool):
        raise RoleSpecError(f"{entry!r} is not a user or @group")
    if isinstance(entry, int):
        if entry < 0:
            raise RoleSpecError(f"{entry} is not a uid")
        return "user", entry
    text = str(entry).strip()
    kind = "user"
    if text.startswith("@"):
        kind, text = "group", text[1:]
    if not text:
        raise RoleSpecError(f"{entry!r}: empty name")
    if text.isdigit():
        return kind, int(text)
    if not all(c.isalnum() or c in "._-$" for c in text):
        raise RoleSpecError(f"{entry!r} is not a user or group name")
    return kind, text


# --------------------------------------------------------------------------- the caller


@dataclass(frozen=True)
class Caller:
    """The peer of one control connection (from ``SO_PEERCRED``) and its roles."""

    pid: int
    uid: int
    gid: int
    user: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def log_fields(self) -> dict[str, Any]:
        return {"uid": self.uid, "pid": self.pid, "user": self.user, "roles": ",".join(sorted(self.roles)) or "-"}

    def audit_fields(self) -> dict[str, Any]:
        """What an audit entry records of who did it."""
        return {"uid": self.uid, "pid": self.pid, "user": self.user}

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid}, pid {self.pid})"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def caller_groups(uid: int, gid: int) -> list[int]:
    """The user's groups from the user database, its primary gid included."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    try:
        return list(set(os.getgrouplist(name, gid)))
    except OSError:
        return [gid]


def resolve_caller(pid: int, uid: int, gid: int, role_map: RoleMap) -> Caller:
    supers = {0, os.geteuid()}
    roles = role_map.roles_for(uid, caller_groups(uid, gid), superusers=supers)
    return Caller(pid, uid, gid, user_name(uid), roles)


#: The caller of the control request being answered (None outside one: a trigger, a
#: timer). Handlers and the audit code read it; the control server sets it per request.
CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("lifeline_caller", default=None)


def current_caller() -> Caller | None:
    return CURRENT_CALLER.get()


def audit_by() -> dict[str, Any] | None:
    """``{"uid", "pid", "user"}`` of the control caller behind this act, or None."""
    caller = CURRENT_CALLER.get()
    return None if caller is None else caller.audit_fields()
