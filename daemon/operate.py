"""The operator's day, inside the daemon: ``preflight.run`` (the pre-market checklist)
``cluster.status`` (the pair at a glance) and ``config.reload`` (SIGHUP).

The daemon has the state, so the checklist is evaluated here: :func:`gather` collects
the facts from the running services (and runs ``journal verify`` / ``audit verify`` and
the config re-check in worker threads), :func:`daemon.preflight.evaluate` (sans-IO)
turns them into PASS/WARN/FAIL lines, and each run publishes a ``PreflightFinished``
event and appends one line to the audit chain naming who asked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from daemon.config import ConfigError, load_config, to_dict
from daemon.control import ControlError
from daemon.core.acl import audit_by
from daemon.core.events import ConfigReloaded, PreflightFinished
from daemon.core.log import LEVELS, get_logger
from daemon.preflight import counts, evaluate, exit_code, summary
from daemon.reload import ReloadPlan, plan
from daemon.standby.journal import verify_directory
from daemon.standby.lease import LeaseError
from daemon.standby.service import journal_directory
from daemon.standby.stores import open_lease_store
from daemon.uplinks.health import HealthSettings
from daemon.uplinks.config import check_uplinks_on_host
from recovery.audit import (
    AUDIT_FILE,
    AuditError,
    AuditLog,
    HOST_PUB_FILE,
    load_or_create_host_key,
    read_public_key,
    verify_audit,
)

if TYPE_CHECKING:
    from daemon.app import Daemon

log = get_logger("operate")


def register(daemon: "Daemon") -> None:
    async def preflight(params: dict[str, Any]) -> Any:
        verify = params.get("verify", True)
        if not isinstance(verify, bool):
            raise ControlError("bad_request", '"verify" must be true or false')
        return await run_preflight(daemon, verify=verify)

    async def cluster(params: dict[str, Any]) -> Any:
        return await cluster_status(daemon)

    daemon.control.register("cluster.status", cluster,
                            help="Both nodes of the pair: role, epoch, journal position, lag, sync state, the lease "
                                 "and the store's health; `lifeline cluster`.")
    async def reload(params: dict[str, Any]) -> Any:
        return await reload_config(daemon, by=audit_by() or "control")

    daemon.control.register("config.reload", reload,
                            help="Re-read the config file; apply what can change without releasing the lease, refuse "
                                 "the rest naming each key; `lifeline reload` (SIGHUP does the same).")

    async def on_sighup() -> None:
        try:
            await reload_config(daemon, by="signal SIGHUP")
        except Exception as exc:  # noqa: BLE001 - a failed reload never stops the daemon
            log.error("config.reload_failed", error=f"{type(exc).__name__}: {exc}", by="signal SIGHUP")

    daemon.supervisor.on_reload = on_sighup
    daemon.control.register("preflight.run", preflight,
                            help='The pre-market checklist: every check PASS/WARN/FAIL with its figure and what to '
                                 'do ({"verify": false} skips journal/audit verify); `lifeline preflight`.')


# --------------------------------------------------------------------------- preflight


def _config_problems(daemon: "Daemon") -> dict[str, Any] | None:
    """The config file as `lifeline config check` and `lifeline run` judge it now (the
    file may have changed since the daemon read it)."""
    source = Path(daemon.config.source)
    if str(source) == "<memory>":
        return None
    try:
        config = load_config(source)
    except ConfigError as exc:
        return {"source": str(source), "problems": list(exc.problems)}
    problems: list[str] = []
    if config.uplinks:
        problems = list(check_uplinks_on_host(config))
    return {"source": str(source), "problems": problems}


def _journal_verify(directory: Path) -> dict[str, Any]:
    report = verify_directory(directory)
    lines = report.lines()
    return {"ok": report.ok, "figure": "; ".join(lines[:1] + [x for x in lines[1:] if not x.startswith("OK")])}


def _audit_verify(daemon: "Daemon") -> dict[str, Any] | None:
    state_dir = Path(daemon.config.node.state_dir)
    recovery = daemon.config.recovery
    path = (recovery.audit_log if recovery is not None and recovery.audit_log is not None
            else state_dir / "recovery" / AUDIT_FILE)
    pub = state_dir / "recovery" / HOST_PUB_FILE
    if not Path(path).exists():
        return None
    try:
        report = verify_audit(path, read_public_key(pub))
    except AuditError as exc:
        return {"ok": False, "figure": str(exc)}
    figure = f"{path}: {len(report.entries)} entries" + ("" if report.ok else f"; {'; '.join(report.lines)}")
    return {"ok": report.ok, "figure": figure + (", chain intact" if report.ok else "")}


def _role(daemon: "Daemon") -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    standby = daemon.standby
    if standby is None:
        return None, None
    replication = standby.replication.details() if standby.replication is not None else None
    leadership = standby.leadership
    if leadership is None:
        return ({"node": daemon.config.node.name, "role": standby.role, "epoch": standby.epoch, "fixed": True,
                 "reason": "fixed role"}, replication)
    role = leadership.details()
    role["accepting_appends"] = standby.accepting
    role["ttl"] = leadership.timings.ttl
    return role, replication


async def gather(daemon: "Daemon", *, verify: bool = True) -> dict[str, Any]:
    config = daemon.config
    facts: dict[str, Any] = {"node": config.node.name}
    facts["config"] = await trio.to_thread.run_sync(_config_problems, daemon)
    facts["role"], facts["replication"] = _role(daemon)
    recovery = daemon.recovery
    if recovery is not None:
        facts["playbooks"] = {
            "playbooks": [{"name": p.name, "version": p.version, "expires": p.expires.isoformat()}
                          for p in sorted(recovery.playbooks.values(), key=lambda p: p.name)],
            "refused": dict(recovery.refused)}
    facts["uplinks"] = daemon.uplinks.details() if daemon.uplinks is not None else None
    facts["venues"] = daemon.venues.details() if daemon.venues is not None else None
    if daemon.hardware is not None:
        facts["hardware"] = daemon.hardware.details()
        hw = config.hardware
        assert hw is not None  # the hardware service runs only with [hardware]
        facts["thresholds"] = {
            "ups_runtime_s": float(hw.ups.runtime_threshold) if hw.ups is not None else None,
            "gnss_offset_s": float(hw.gnss.offset_threshold) if hw.gnss is not None else None}
    if daemon.standby is not None:
        directory = journal_directory(config)
        usage = await trio.to_thread.run_sync(shutil.disk_usage, directory)
        facts["disk"] = {"path": str(directory), "free_bytes": usage.free, "total_bytes": usage.total}
        if verify:
            facts["journal_verify"] = await trio.to_thread.run_sync(_journal_verify, directory)
    if verify:
        facts["audit_verify"] = await trio.to_thread.run_sync(_audit_verify, daemon)
    facts["services"] = [{k: s.get(k) for k in ("name", "health", "summary", "details") if k in s}
                         for s in daemon.supervisor.status()["services"]]
    return facts


async def run_preflight(daemon: "Daemon", *, verify: bool = True) -> dict[str, Any]:
    started = time.monotonic()
    facts = await gather(daemon, verify=verify)
    now = time.time()
    checks = evaluate(facts, now)
    n = counts(checks)
    failed = [c.name for c in checks if c.result == "FAIL"]
    warned = [c.name for c in checks if c.result == "WARN"]
    code = exit_code(checks)
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    daemon.bus.publish(PreflightFinished(source="preflight", node=daemon.config.node.name, passed=n["PASS"],
                                         warned=n["WARN"], failed=n["FAIL"], failed_checks=failed,
                                         duration_ms=duration_ms))
    by = audit_by()
    await _audit(daemon, by=by, passed=n["PASS"], warned=warned, failed=failed)
    return {"node": daemon.config.node.name, "at": now, "duration_ms": duration_ms,
            "checks": [c.to_dict() for c in checks], "lines": [c.line() for c in checks],
            "counts": n, "summary": summary(checks), "exit_code": code}


async def _audit(daemon: "Daemon", **fields: Any) -> None:
    """One line in the audit chain per run (who asked, what failed)."""

    def append() -> None:
        recovery = daemon.config.recovery
        state_dir = daemon.config.node.state_dir
        path = (recovery.audit_log if recovery is not None and recovery.audit_log is not None
                else Path(state_dir) / "recovery" / "audit.jsonl")
        key, _ = load_or_create_host_key(state_dir)
        with AuditLog(path, key) as audit:
            audit.append("preflight.run", node=daemon.config.node.name, **fields)

    try:
        await trio.to_thread.run_sync(append)
    except Exception as exc:  # noqa: BLE001 - the checklist stands; the failure is reported
        log.error("preflight.audit_failed", error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the pair at a glance


async def read_store(daemon: "Daemon") -> dict[str, Any]:
    """One read of the lease store on a connection of its own (never the one the lease
    is renewed on: a slow or failed read here cannot delay or drop a renewal)."""
    standby = daemon.standby
    assert standby is not None and standby.settings.lease is not None
    lease = standby.settings.lease
    leadership = standby.leadership
    name = (leadership.store_name if leadership is not None else None) or lease.backend
    out: dict[str, Any] = {"name": name}
    store = None
    started = time.monotonic()
    try:
        assert standby._key is not None  # loaded when the standby started
        store = open_lease_store(lease, daemon.config.node.name, standby._key)
        with trio.fail_after(float(lease.retry_timeout) * 2):
            state = await store.read()
    except (LeaseError, trio.TooSlowError, OSError, ValueError) as exc:
        out.update(reachable=False, error=str(exc) or type(exc).__name__)
        return out
    finally:
        if store is not None:
            with trio.move_on_after(1, shield=True):
                await store.aclose()
    out.update(reachable=True, read_ms=round((time.monotonic() - started) * 1000, 1),
               holder=None if state.free else state.holder, epoch=state.epoch,
               ttl_remaining=round(state.ttl_remaining, 3), sync_node=state.sync_node,
               last_holder=state.last_holder,
               members=[{"node": m.node, "seq": m.position.seq, "epoch": m.position.epoch,
                         "seen_epoch": m.seen_epoch} for m in state.members])
    return out


async def cluster_status(daemon: "Daemon") -> dict[str, Any]:
    """Both nodes as this one sees them: itself from its own state, its peer from the
    authenticated replication link (what the peer acknowledged or announced), the lease
    from a fresh read of the store (holder, epoch, expiry, synchronous standby, and the
    positions members reported there)."""
    standby = daemon.standby
    node = daemon.config.node.name
    if standby is None or standby.journal is None:
        raise ControlError("no_journal", f"{node} has no [standby] (or its journal is not open yet): there is no pair")
    role, replication = _role(daemon)
    assert role is not None
    last = standby.journal.last
    # A standby's own epoch is 0 (it never held the lease): show the epoch it follows.
    epoch = role.get("epoch") if role.get("role") == "primary" else role.get("highest_epoch", role.get("epoch"))
    me: dict[str, Any] = {"node": node, "self": True, "role": role.get("role"), "epoch": epoch,
                          "seq": last.seq, "journal_epoch": last.epoch, "accepting": bool(standby.accepting),
                          "valid_for": role.get("valid_for"), "reason": role.get("reason"), "source": "self"}
    rep = replication or {}
    peer: dict[str, Any] | None = None
    if rep.get("role") == "primary":
        me.update(lag_records=0, sync=rep.get("state"))
        p = rep.get("peer") or {}
        peer = {"node": p.get("node") or "(no standby connected)", "role": "standby" if p else None,
                "seq": p.get("acked_seq", rep.get("acked_seq")), "lag_records": rep.get("lag_records") if p else None,
                "lag_ms": rep.get("lag_ms") if p else None, "sync": rep.get("state"), "connected": bool(p),
                "last_heartbeat_age_s": p.get("last_heartbeat_age_s"), "source": "replication link"}
    elif rep.get("role") == "standby":
        me.update(lag_records=rep.get("lag_records"), lag_ms=rep.get("lag_ms"),
                  sync="connected" if rep.get("connected") else "NOT connected")
        p = rep.get("primary") or {}
        peer = {"node": p.get("node") or rep.get("peer") or "(primary unknown)", "role": "primary" if p else None,
                "epoch": p.get("epoch"), "seq": rep.get("primary_last_seq"), "connected": bool(rep.get("connected")),
                "source": "replication link"}
    out: dict[str, Any] = {"node": node, "members": [me] + ([peer] if peer else [])}
    if standby.leadership is not None:
        store = await read_store(daemon)
        out["store"] = store
        by_node = {m["node"]: m for m in out["members"]}
        for reported in store.get("members") or []:
            member = by_node.get(reported["node"])
            if member is None:
                member = {"node": reported["node"], "source": "lease store"}
                out["members"].append(member)
            member["store_report"] = {"seq": reported["seq"], "epoch": reported["epoch"],
                                      "seen_epoch": reported["seen_epoch"]}
        holder = store.get("holder")
        for member in out["members"]:
            member["lease_holder"] = holder is not None and member["node"] == holder
            if member.get("role") is None and holder is not None:
                member["role"] = "primary" if member["node"] == holder else "not primary"
    else:
        out["store"] = None
    return out


def format_cluster(info: dict[str, Any]) -> list[str]:
    """`lifeline cluster` as a table (patronictl list's columns), then the lease."""
    rows = [("member", "role", "epoch", "seq", "lag", "sync", "lease", "seen via")]
    for m in info.get("members", []):
        lag = m.get("lag_records")
        lag_text = "-" if lag is None else f"{lag}" + (f" ({m['lag_ms']:.0f} ms)" if m.get("lag_ms") else "")
        rows.append((m["node"] + (" *" if m.get("self") else ""), str(m.get("role") or "?"),
                     str(m.get("epoch") if m.get("epoch") is not None else "-"),
                     str(m.get("seq") if m.get("seq") is not None else
                         (m.get("store_report") or {}).get("seq", "?")),
                     lag_text, str(m.get("sync") or "-"), "holder" if m.get("lease_holder") else "-",
                     str(m.get("source"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    store = info.get("store")
    if store is None:
        lines.append("lease: none (fixed roles, no [standby.lease])")
    elif not store.get("reachable"):
        lines.append(f"lease store {store.get('name')}: UNREACHABLE ({store.get('error')})")
    else:
        holder = store.get("holder") or "nobody (FREE)"
        lines.append(f"lease: held by {holder} at epoch {store.get('epoch')}, {store.get('ttl_remaining')}s left; "
                     f"synchronous standby: {store.get('sync_node') or 'none'}; last holder: "
                     f"{store.get('last_holder') or 'none'}")
        lines.append(f"lease store {store.get('name')}: reachable (read in {store.get('read_ms')} ms)")
    lines.append("(* this node; the peer as seen over the authenticated replication link and the lease store)")
    return lines


# --------------------------------------------------------------------------- reload


async def reload_config(daemon: "Daemon", *, by: Any) -> dict[str, Any]:
    """Re-read the config file and apply what can change without releasing the lease
    (:mod:`daemon.reload` decides); refuse the rest, naming each key, and keep running on
    the old config. The playbooks are verified again either way. One log line, one
    ``ConfigReloaded`` event."""
    source = Path(daemon.config.source)
    if str(source) == "<memory>":
        raise ControlError("no_file", "this daemon was not started from a config file: nothing to re-read")
    try:
        new = await trio.to_thread.run_sync(load_config, source)
    except ConfigError as exc:
        result = ReloadPlan(refused=[("(file)", p) for p in exc.problems])
    else:
        result = plan(to_dict(daemon.config), to_dict(new))
        if result.ok:
            _apply(daemon, new, result)
    playbooks = None
    if daemon.recovery is not None and result.ok:
        await trio.to_thread.run_sync(daemon.recovery._load_all)
        daemon.recovery._publish_refusals()
        playbooks = {"verified": len(daemon.recovery.playbooks), "refused": len(daemon.recovery.refused)}
    limits = None
    guard = daemon.guard
    if result.ok and daemon.config.guard.limits is not None:
        limits = await guard.reload_limits(by=str(by))  # a refused file keeps the last good limits
    if not result.ok:
        result.apply = {}  # nothing was applied: say so everywhere
    line = result.line()
    fields = {"file": str(source), "applied": sorted(result.apply), "refused": [k for k, _ in result.refused],
              "by": by}
    (log.info if result.ok else log.warning)("config.reload", outcome="applied" if result.ok else "refused",
                                             detail=line, **fields)
    daemon.bus.publish(ConfigReloaded(source="operate", file=str(source), applied=sorted(result.apply),
                                      refused=[f"{k}: {why}" for k, why in result.refused], by=str(by)), log=False)
    return {"ok": result.ok, "applied": result.apply, "refused": [{"key": k, "why": why} for k, why in result.refused],
            "playbooks": playbooks, "limits": limits, "summary": line}


def _apply(daemon: "Daemon", new: Any, result: Any) -> None:
    import logging

    uplinks_changed = set()
    for key in result.apply:
        if key == "log.level":
            logging.getLogger("lifeline").setLevel(LEVELS.get(new.log.level, logging.INFO))
        elif key.startswith("uplinks."):
            uplinks_changed.add(key.split(".")[1])
    if uplinks_changed and daemon.uplinks is not None:
        for name in uplinks_changed:
            uplink = daemon.uplinks.uplinks.get(name)
            if uplink is not None:
                uplink.config = new.uplinks[name]
                uplink.health.settings = HealthSettings.from_config(new.uplinks[name])
    # Every key that differs was applied: the new config is now the daemon's.
    daemon.config = new
