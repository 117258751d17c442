"""Live drills on the real pair, inside the daemon: ``drill.switchover`` and
``drill.uplink`` (admin role; `lifeline drill switchover|uplink --live`).

They run here, with the daemon's privileges and its state, so the caller is known
(SO_PEERCRED) and named in the log and the audit chain. Each one refuses to start
unless ``[drills] live = true``, outside trading hours (or ``--force``), and the pair
healthy (:mod:`daemon.livedrills` decides, sans-IO); each stops by itself at its
deadline whatever happens.

* ``drill.switchover`` (on the primary): append a ``{"record": "drill"}`` marker,
  run the ordinary switchover to the in-sync standby, then wait until this node
  follows the new primary with the marker and the same last (epoch, seq) as the
  primary announces over the replication link and reports in the lease store. The
  way back is the same drill run on the new primary (the old primary cannot ask the
  peer's control socket): `lifeline drill switchover --live` on each node in turn.
* ``drill.uplink``: install the nftables table ``inet lifeline_drill`` that cuts the
  preferred uplink (its device and its probe targets) in the host's own netns for N
  seconds (``max_duration`` caps it), measure fibre DOWN, the route on the backup and
  the venues through the backup, delete the table (shielded: also on cancel or
  error) and measure failback. Daemon start removes a table left over by a crash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from daemon import livedrills as core
from daemon.control import ControlError
from daemon.core.acl import audit_by
from daemon.core.log import get_logger
from recovery.audit import AuditLog, load_or_create_host_key

if TYPE_CHECKING:
    from daemon.app import Daemon

log = get_logger("drill")

POLL = 0.02


def register(daemon: "Daemon") -> None:
    async def switchover(params: dict[str, Any]) -> Any:
        return await live_switchover(daemon, force=_force(params))

    async def uplink(params: dict[str, Any]) -> Any:
        return await live_uplink(daemon, force=_force(params), seconds=params.get("seconds"))

    daemon.control.register("drill.switchover", switchover,
                            help='Live drill: switchover to the in-sync standby, timed, records checked identical '
                                 '({"force": true} inside trading hours); `lifeline drill switchover --live`.')
    daemon.control.register("drill.uplink", uplink,
                            help='Live drill: cut the preferred uplink in nftables for {"seconds": N}, measure '
                                 "failover, venues through the backup and failback; `lifeline drill uplink --live`.")


def _force(params: dict[str, Any]) -> bool:
    force = params.get("force", False)
    if not isinstance(force, bool):
        raise ControlError("bad_request", '"force" must be true or false')
    return force


def _by() -> str:
    by = audit_by()
    if isinstance(by, dict):
        return str(by.get("user") or by.get("uid"))
    return str(by or "control")


def _gate(daemon: "Daemon", drill: str, force: bool) -> None:
    settings = daemon.config.drills
    refusal = core.gate(settings, dt.datetime.now(dt.timezone.utc), force=force, drill=drill)
    if refusal is not None:
        log.warning("drill.refused", drill=drill, by=_by(), reason=refusal)
        raise ControlError("refused", f"live {drill} drill refused: {refusal}")
    if force and core.in_trading_hours(dt.datetime.now(dt.timezone.utc), settings.trading_hours, settings.timezone):
        log.warning("drill.forced", drill=drill, by=_by(), detail="inside trading hours")


async def _audit(daemon: "Daemon", action: str, **fields: Any) -> None:
    by = audit_by()

    def append() -> None:
        recovery = daemon.config.recovery
        state_dir = daemon.config.node.state_dir
        path = (recovery.audit_log if recovery is not None and recovery.audit_log is not None
                else Path(state_dir) / "recovery" / "audit.jsonl")
        key, _ = load_or_create_host_key(state_dir)
        with AuditLog(path, key) as audit:
            audit.append(action, node=daemon.config.node.name, by=by, **fields)

    try:
        await trio.to_thread.run_sync(append)
    except Exception as exc:  # noqa: BLE001 - the drill stands; the failure is reported
        log.error("drill.audit_failed", action=action, error=f"{type(exc).__name__}: {exc}")


def _check(name: str, ok: bool, figure: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "figure": figure}


# --------------------------------------------------------------------------- switchover


async def live_switchover(daemon: "Daemon", *, force: bool) -> dict[str, Any]:
    _gate(daemon, "switchover", force)
    standby = daemon.standby
    if standby is None or standby.journal is None:
        raise ControlError("refused", "live switchover drill refused: this host has no [standby] journal")
    role = await standby._role_status({})
    replication = standby.replication.details() if standby.replication is not None else None
    refusal = core.switchover_refusal(role, replication)
    if refusal is not None:
        log.warning("drill.refused", drill="switchover", by=_by(), reason=refusal)
        raise ControlError("refused", f"live switchover drill refused: the pair is not healthy: {refusal}")
    node = daemon.config.node.name
    peer = role.get("sync_mark")
    run_id = secrets.token_hex(4)
    max_s = float(daemon.config.drills.max_duration)
    log.warning("drill.started", drill="switchover", run=run_id, by=_by(), to=peer, forced=force,
                deadline_s=max_s)
    out: dict[str, Any] = {"drill": "switchover", "live": True, "run": run_id, "node": node, "from": node,
                           "to": peer, "forced": force, "max_duration_s": max_s}
    checks: list[dict[str, Any]] = []
    started = trio.current_time()
    with trio.move_on_after(max_s) as scope:
        marker = core.drill_record("switchover", "before", run_id, node)
        answer = await standby._append({"payloads": [marker.decode()]})
        result = answer["results"][0]
        out["marker"] = {"seq": result["seq"], "epoch": result["epoch"], "status": result["status"]}
        checks.append(_check("marker acknowledged by the standby", result["status"] == "ok",
                             f"seq {result['seq']} {result['status']}"))
        assert standby.leadership is not None  # _role_status above refused a host without a lease
        switched = await standby.leadership.switchover(None, by=_by())
        out["switchover"] = switched
        out["pause_ms"] = switched.get("seen_ms")
        checks.append(_check(f"{peer} took the lease", bool(switched.get("ok")),
                             f"epoch {switched.get('previous_epoch')} -> {switched.get('epoch')}, appends refused "
                             f"for {switched.get('seen_ms')} ms"))
        if switched.get("ok"):
            switched_at = trio.current_time()
            follow = await _wait_follow(standby, (result["seq"], result["epoch"], marker),
                                        timeout=max(1.0, max_s - (switched_at - started)))
            out["follow_ms"] = round((trio.current_time() - switched_at) * 1000, 1)
            out.update(follow)
            checks.append(_check(f"this node follows {peer} as standby", follow["following"],
                                 f"role {follow['role']}, connected {follow['connected']}"))
            checks.append(_check("records identical on both nodes", follow["identical"],
                                 f"caught up to seq {follow['caught_up_to']} that {peer} announced (here epoch "
                                 f"{follow['last_epoch']}, seq {follow['last_seq']}); sha256 of the "
                                 f"{follow['tail_records']} records from the marker {follow['tail_sha256'][:16]}"))
            checks.append(_check("the marker is in the journal unchanged", follow["marker_ok"],
                                 f"seq {result['seq']}"))
            out["next"] = (f"run `lifeline drill switchover --live` on {peer} to move the primary back "
                           f"(the drill's way back)")
    if scope.cancelled_caught:
        checks.append(_check(f"within the deadline ({max_s:g}s)", False, "the drill stopped at its deadline"))
    out["duration_ms"] = round((trio.current_time() - started) * 1000, 1)
    out["checks"] = checks
    out["ok"] = core.verdict(checks)
    log.warning("drill.finished", drill="switchover", run=run_id, ok=out["ok"], pause_ms=out.get("pause_ms"),
                by=_by())
    await _audit(daemon, "drill.switchover", run=run_id, forced=force, ok=out["ok"], to=peer,
                 pause_ms=out.get("pause_ms"))
    return out


async def _wait_follow(standby: Any, marker: tuple[int, int, bytes], timeout: float = 30.0) -> dict[str, Any]:
    """Wait until this node is a connected standby, then until its journal reaches the
    last seq the new primary announced at that moment; compare the positions, the
    marker (same seq, epoch and bytes) and digest the records up to there."""
    facts: dict[str, Any] = _follow_facts(standby)
    target: int | None = None
    with trio.move_on_after(timeout):
        while True:
            facts = _follow_facts(standby)
            if target is None and facts["following"] and facts["primary_last_seq"] is not None:
                target = int(facts["primary_last_seq"])
            if target is not None and facts["last_seq"] >= target:
                break
            await trio.sleep(POLL)
    journal = standby.journal
    seq, epoch, payload = marker
    upto = min(facts["last_seq"], target) if target is not None else facts["last_seq"]
    first = max(seq, upto - 999)
    records = await trio.to_thread.run_sync(journal.read, first, max(1, upto - first + 1))
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.seq}:{record.epoch}:".encode())
        digest.update(bytes(record.payload))
    found = await trio.to_thread.run_sync(journal.read, seq, 1)
    facts["caught_up_to"] = target
    facts["tail_sha256"] = digest.hexdigest()
    facts["tail_records"] = len(records)
    facts["marker_ok"] = bool(found) and found[0].seq == seq and found[0].epoch == epoch and \
        bytes(found[0].payload) == payload
    facts["identical"] = bool(facts["following"] and target is not None and facts["last_seq"] >= target)
    return facts


def _follow_facts(standby: Any) -> dict[str, Any]:
    rep = standby.replication.details() if standby.replication is not None else {}
    last = standby.journal.last
    role = standby.current_role()
    return {"role": role, "connected": bool(rep.get("connected")),
            "following": role.startswith("standby") and rep.get("role") == "standby" and bool(rep.get("connected")),
            "last_seq": last.seq, "last_epoch": last.epoch, "primary_last_seq": rep.get("primary_last_seq")}


# --------------------------------------------------------------------------- uplink


async def nft(script: str | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(10):  # nft answers in milliseconds; a hung one must not hold the drill
        return await trio.run_process(["nft", *(["-f", "-"] if script is not None else args)],
                                      stdin=script.encode() if script is not None else b"",
                                      capture_stdout=True, capture_stderr=True, check=False)


async def table_present() -> bool:
    done = await nft(None, "list", "table", core.NFT_FAMILY, core.NFT_TABLE)
    return done.returncode == 0


async def remove_table(why: str) -> bool:
    """Delete the drill's table if it is there; True if one was removed."""
    if not await table_present():
        return False
    done = await nft(None, "delete", "table", core.NFT_FAMILY, core.NFT_TABLE)
    if done.returncode != 0:
        log.error("drill.nft_delete_failed", table=core.NFT_TABLE, error=done.stderr.decode(errors="replace").strip())
        return False
    log.warning("drill.table_removed", table=f"{core.NFT_FAMILY} {core.NFT_TABLE}", why=why)
    return True


async def startup_cleanup(daemon: "Daemon") -> None:
    """At daemon start: a table a crashed drill left behind would keep the fibre cut."""
    if not daemon.config.uplinks:
        return
    try:
        await remove_table("left over from an interrupted live drill (removed at daemon start)")
    except (OSError, trio.TooSlowError) as exc:  # no nft here (so no table), or it hung
        log.debug("drill.nft_unavailable", error=str(exc))


async def live_uplink(daemon: "Daemon", *, force: bool, seconds: Any) -> dict[str, Any]:
    _gate(daemon, "uplink", force)
    max_s = float(daemon.config.drills.max_duration)
    try:
        cut_s = core.clamp_seconds(seconds, max_s)
    except ValueError as exc:
        raise ControlError("bad_request", str(exc)) from None
    service = daemon.uplinks
    if service is None:
        raise ControlError("refused", "live uplink drill refused: this host has no [uplinks]")
    plan = core.uplink_plan(service.details())
    if isinstance(plan, str):
        log.warning("drill.refused", drill="uplink", by=_by(), reason=plan)
        raise ControlError("refused", f"live uplink drill refused: the uplinks are not healthy: {plan}")
    fibre, backup = plan
    config = daemon.config.uplinks[fibre]
    shared = any(u.interface == config.interface for n, u in daemon.config.uplinks.items() if n != fibre)
    script = core.nft_ruleset(None if shared else config.interface, core.probe_hosts(list(config.targets)),
                              config.source)
    run_id = secrets.token_hex(4)
    log.warning("drill.started", drill="uplink", run=run_id, by=_by(), cut=fibre, backup=backup, seconds=cut_s,
                forced=force)
    out: dict[str, Any] = {"drill": "uplink", "live": True, "run": run_id, "node": daemon.config.node.name,
                           "fibre": fibre, "backup": backup, "seconds": cut_s, "forced": force,
                           "max_duration_s": max_s, "table": f"{core.NFT_FAMILY} {core.NFT_TABLE}"}
    checks: list[dict[str, Any]] = []
    marks: dict[str, float] = {}
    venues_via_backup: dict[str, Any] = {}
    await remove_table("left over before a new drill")
    started = trio.current_time()
    try:
        done = await nft(script)
        if done.returncode != 0:
            raise ControlError("failed", f"nft refused the drill's table: {done.stderr.decode(errors='replace')}")
        log.warning("drill.fibre_cut", run=run_id, uplink=fibre, interface=config.interface)
        with trio.move_on_after(cut_s):
            while True:
                details = service.details()
                now = trio.current_time() - started
                if "fibre_down_s" not in marks and details["uplinks"][fibre]["state"] == "down":
                    marks["fibre_down_s"] = now
                if "route_on_backup_s" not in marks and details.get("active") == backup:
                    marks["route_on_backup_s"] = now
                if daemon.venues is not None and "route_on_backup_s" in marks:
                    for name, venue in daemon.venues.details()["venues"].items():
                        for path in venue["paths"]:
                            if path.get("uplink") == backup and path.get("state") == "up" and \
                                    name not in venues_via_backup:
                                venues_via_backup[name] = {"at_s": round(now, 3),
                                                           "latency_ms": path.get("latency_ms")}
                await trio.sleep(POLL)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await remove_table("the drill's cut is over")
            out["table_left"] = await table_present()
    restored = trio.current_time()
    log.warning("drill.fibre_restored", run=run_id, uplink=fibre)
    with trio.move_on_after(max_s):
        while True:
            details = service.details()
            if "fibre_up_s" not in marks and details["uplinks"][fibre]["state"] == "up":
                marks["fibre_up_s"] = trio.current_time() - restored
            if details.get("active") == fibre and "fibre_up_s" in marks:
                marks["failback_s"] = trio.current_time() - restored
                break
            await trio.sleep(POLL)
    out.update({k: round(v, 3) for k, v in marks.items()})
    out["venues_via_backup"] = venues_via_backup
    checks.append(_check(f"{fibre} went DOWN", "fibre_down_s" in marks, f"{marks.get('fibre_down_s', -1):.2f}s"))
    checks.append(_check(f"the route moved to {backup}", "route_on_backup_s" in marks,
                         f"{marks.get('route_on_backup_s', -1):.2f}s after the cut"))
    if daemon.venues is not None:
        names = sorted(daemon.venues.details()["venues"])
        missing = [n for n in names if n not in venues_via_backup]
        checks.append(_check(f"every venue reachable through {backup}", not missing,
                             f"{len(names) - len(missing)}/{len(names)}" + (f" (not: {', '.join(missing)})"
                                                                            if missing else "")))
    checks.append(_check("the drill's nftables table is gone", not out["table_left"], out["table"]))
    checks.append(_check(f"failback to {fibre}", "failback_s" in marks,
                         f"{marks.get('failback_s', -1):.2f}s after the restore"))
    out["duration_ms"] = round((trio.current_time() - started) * 1000, 1)
    out["checks"] = checks
    out["ok"] = core.verdict(checks)
    log.warning("drill.finished", drill="uplink", run=run_id, ok=out["ok"], by=_by(),
                failover_s=out.get("route_on_backup_s"), failback_s=out.get("failback_s"))
    await _audit(daemon, "drill.uplink", run=run_id, forced=force, ok=out["ok"], cut=fibre, seconds=cut_s)
    return out
