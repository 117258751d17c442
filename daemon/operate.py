"""The operator's day, inside the daemon: ``preflight.run`` (the pre-market checklist).

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

from daemon.control import ControlError
from daemon.log import get_logger

if TYPE_CHECKING:
    from daemon.app import Daemon

log = get_logger("operate")


def register(daemon: "Daemon") -> None:
    async def preflight(params: dict[str, Any]) -> Any:
        verify = params.get("verify", True)
        if not isinstance(verify, bool):
            raise ControlError("bad_request", '"verify" must be true or false')
        return await run_preflight(daemon, verify=verify)

    daemon.control.register("preflight.run", preflight,
                            help='The pre-market checklist: every check PASS/WARN/FAIL with its figure and what to '
                                 'do ({"verify": false} skips journal/audit verify); `lifeline preflight`.')


# --------------------------------------------------------------------------- preflight


def _config_problems(daemon: "Daemon") -> dict[str, Any] | None:
    """The config file as `lifeline config check` and `lifeline run` judge it now (the
    file may have changed since the daemon read it)."""
    from daemon.config import ConfigError, load_config

    source = Path(daemon.config.source)
    if str(source) == "<memory>":
        return None
    try:
        config = load_config(source)
    except ConfigError as exc:
        return {"source": str(source), "problems": list(exc.problems)}
    problems: list[str] = []
    if config.uplinks:
        from daemon.uplinks.service import check_uplinks_on_host

        problems = list(check_uplinks_on_host(config))
    return {"source": str(source), "problems": problems}


def _journal_verify(directory: Path) -> dict[str, Any]:
    from daemon.standby.journal import verify_directory

    report = verify_directory(directory)
    lines = report.lines()
    return {"ok": report.ok, "figure": "; ".join(lines[:1] + [x for x in lines[1:] if not x.startswith("OK")])}


def _audit_verify(daemon: "Daemon") -> dict[str, Any] | None:
    from recovery.audit import AUDIT_FILE, HOST_PUB_FILE, AuditError, read_public_key, verify_audit

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
    from daemon.standby.service import journal_directory

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
        facts["thresholds"] = {
            "ups_runtime_s": float(hw.ups.runtime_threshold) if getattr(hw, "ups", None) is not None else None,
            "gnss_offset_s": float(hw.gnss.offset_threshold) if getattr(hw, "gnss", None) is not None else None}
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
    from daemon.acl import audit_by
    from daemon.events import PreflightFinished
    from daemon.preflight import counts, evaluate, exit_code, summary

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
        from recovery.audit import AuditLog, load_or_create_host_key

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
