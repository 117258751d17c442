"""The pre-market checklist (`lifeline preflight`): gathered facts in, checks out (sans-IO).

The daemon gathers the facts (:meth:`daemon.app.Daemon.preflight_facts`: its services'
details, the role and lease, the playbooks, the venue x uplink matrix, the hardware
readings, free disk, `journal verify`, `audit verify`) and :func:`evaluate` turns them
into one :class:`Check` per line: PASS, WARN or FAIL with its figure and, unless it
passed, what to do. SKIP marks what is not configured on this host. No trio, no I/O:
a function of the facts and ``now`` (wall seconds).

Exit code of the command (:func:`exit_code`): 0 when nothing FAILed (WARNs are printed
and counted but do not block the open), 1 when a check FAILed; the CLI returns 2 when
the daemon cannot be reached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
RESULTS = (PASS, WARN, FAIL, SKIP)

#: A playbook expiring within this is a WARN (sign a new one before it lapses).
WARN_EXPIRY_S = 7 * 86400.0
#: A primary's remaining lease (valid_for) below this share of the ttl is a WARN.
LEASE_MARGIN = 1 / 3
#: Free space for the journal: FAIL below the first, WARN below the second (fractions
#: of the filesystem), FAIL below MIN_FREE_BYTES whatever the size.
DISK_FAIL, DISK_WARN = 0.05, 0.10
MIN_FREE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    figure: str
    action: str = ""

    def line(self) -> str:
        text = f"{self.result:4}  {self.name}: {self.figure}"
        return text + (f" -> {self.action}" if self.action and self.result != PASS else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.result == FAIL for c in checks) else 0


def counts(checks: Iterable[Check]) -> dict[str, int]:
    out = dict.fromkeys(RESULTS, 0)
    for c in checks:
        out[c.result] += 1
    return out


def summary(checks: list[Check]) -> str:
    n = counts(checks)
    failed = [c.name for c in checks if c.result == FAIL]
    head = f"preflight: {n[PASS]} pass, {n[WARN]} warn, {n[FAIL]} fail, {n[SKIP]} skipped"
    return head + (f"; FAILED: {', '.join(failed)}" if failed else "; ready for the open" if not n[WARN]
                   else "; ready for the open, read the warnings")


def evaluate(facts: Mapping[str, Any], now: float) -> list[Check]:
    """Every check, in the order an operator reads them."""
    checks: list[Check] = []
    checks += config_checks(facts.get("config"))
    checks += role_checks(facts.get("role"), facts.get("replication"))
    checks += playbook_checks(facts.get("playbooks"), now)
    checks += uplink_checks(facts.get("uplinks"))
    checks += venue_checks(facts.get("venues"))
    checks += hardware_checks(facts.get("hardware"), facts.get("thresholds") or {})
    checks += disk_checks(facts.get("disk"))
    checks += verify_checks(facts.get("journal_verify"), facts.get("audit_verify"))
    checks += breaker_checks(facts.get("services"))
    return checks


# --------------------------------------------------------------------------- sections


def config_checks(config: Mapping[str, Any] | None) -> list[Check]:
    if config is None:
        return [Check("config", SKIP, "the daemon was started without a config file")]
    problems = list(config.get("problems") or [])
    source = config.get("source", "the config")
    if problems:
        return [Check("config", FAIL, f"{source}: {len(problems)} problem(s): {'; '.join(problems)}",
                      "fix the file (`lifeline config check FILE` names each key), then `lifeline reload`")]
    return [Check("config", PASS, f"{source} is valid and matches this host")]


def role_checks(role: Mapping[str, Any] | None, replication: Mapping[str, Any] | None) -> list[Check]:
    if role is None:
        return [Check("standby in sync", SKIP, "no [standby]: no journal on this host"),
                Check("lease", SKIP, "no [standby.lease]")]
    out: list[Check] = []
    name = str(role.get("role"))
    rep = replication or {}
    if name == "primary":
        state = rep.get("state")
        peer = (rep.get("peer") or {}).get("node") if isinstance(rep.get("peer"), dict) else None
        figure = f"replication {state}" + (f" with {peer}" if peer else "")
        if state == "in-sync":
            out.append(Check("standby in sync", PASS, figure))
        elif state in ("catching-up", "converging", "connecting"):
            out.append(Check("standby in sync", WARN, figure, "wait for in-sync; `lifeline journal stats` shows "
                                                              "the lag"))
        else:
            out.append(Check("standby in sync", FAIL, figure + " (no standby holds the records)",
                             "start or repair the standby; check the replication link and key"))
    elif name == "standby":
        connected = rep.get("connected")
        lag = rep.get("lag_records")
        figure = f"connected, {lag if lag is not None else '?'} records behind" if connected else "NOT connected"
        if not connected:
            out.append(Check("standby in sync", FAIL, figure + " to the primary",
                             "check the primary runs and the replication link (peer, key, firewall)"))
        elif lag not in (0, None):
            out.append(Check("standby in sync", WARN, figure, "wait until it has caught up"))
        else:
            out.append(Check("standby in sync", PASS, figure))
    else:
        out.append(Check("standby in sync", FAIL, f"this node is {name}: {role.get('reason', '')}",
                         "`lifeline role` says why; `lifeline cluster` shows the pair"))
    if role.get("fixed"):
        out.append(Check("lease", SKIP, f"fixed role {name} (no [standby.lease])"))
        return out
    reachable = role.get("store_reachable")
    store = role.get("store") or "the lease store"
    if reachable is False:
        out.append(Check("lease store", FAIL, f"{store} UNREACHABLE: {role.get('store_error') or ''}".rstrip(": "),
                         "check the witness/etcd runs and the network to it; no failover is possible without it"))
    elif reachable is None:
        out.append(Check("lease store", WARN, f"{store} not asked yet", "run preflight again in a few seconds"))
    else:
        out.append(Check("lease store", PASS, f"{store} reachable"))
    lease = role.get("lease") or {}
    ttl = role.get("ttl")
    if name == "primary":
        left = role.get("valid_for")
        if left is None:
            out.append(Check("lease", FAIL, "primary without a valid_until (past its fence deadline)",
                             "the lease is not being renewed: check the store; the engine must not trade"))
        elif isinstance(ttl, (int, float)) and ttl > 0 and left < ttl * LEASE_MARGIN:
            out.append(Check("lease", WARN, f"valid for {left:.3f}s of a {ttl:g}s ttl (below {LEASE_MARGIN:.0%})",
                             "renewals are slow: check the store's latency"))
        else:
            of = f" of a {ttl:g}s ttl" if isinstance(ttl, (int, float)) else ""
            out.append(Check("lease", PASS, f"held at epoch {role.get('epoch')}, valid for {left:.3f}s{of}"))
    else:
        holder = lease.get("holder")
        if holder:
            out.append(Check("lease", PASS, f"held by {holder} at epoch {lease.get('epoch')}, "
                                            f"{lease.get('ttl_remaining')}s left"))
        else:
            out.append(Check("lease", FAIL, "nobody holds the lease", "no primary: `lifeline cluster` on both "
                                                                      "nodes; see the role's reason"))
    if role.get("blocked"):
        out.append(Check("promotable", WARN, f"blocked from becoming primary: {role['blocked']}",
                         "resolve it before relying on a failover"))
    return out


def _expiry(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def playbook_checks(playbooks: Mapping[str, Any] | None, now: float) -> list[Check]:
    if playbooks is None:
        return [Check("playbooks", SKIP, "no [recovery]")]
    out: list[Check] = []
    refused = playbooks.get("refused") or {}
    for label, why in (refused.items() if isinstance(refused, dict) else ((str(r), "refused") for r in refused)):
        out.append(Check(f"playbook {label}", FAIL, f"does not verify: {why}",
                         "re-sign it (`lifeline playbook sign`) or remove it, then `lifeline playbook reload`"))
    for p in playbooks.get("playbooks") or []:
        name = f"playbook {p.get('name')}"
        expires = _expiry(p.get("expires"))
        if expires is None:
            out.append(Check(name, WARN, f"expiry unreadable: {p.get('expires')!r}", "re-sign it"))
            continue
        days = (expires - now) / 86400
        if expires <= now:
            out.append(Check(name, FAIL, f"expired {-days:.1f} days ago", "sign a new version"))
        elif expires - now < WARN_EXPIRY_S:
            out.append(Check(name, WARN, f"verifies; expires in {days:.1f} days ({p.get('expires')})",
                             "sign a new version this week"))
        else:
            out.append(Check(name, PASS, f"verifies (v{p.get('version')}); expires in {days:.0f} days"))
    if not out:
        out.append(Check("playbooks", WARN, "no playbooks loaded", "put signed playbooks in the playbook directory"))
    return out


def uplink_checks(uplinks: Mapping[str, Any] | None) -> list[Check]:
    if not uplinks:
        return [Check("uplinks", SKIP, "no [uplinks]")]
    out = []
    for name, u in (uplinks.get("uplinks") or {}).items():
        state = u.get("state")
        figure = f"{state}, rtt {u.get('rtt_ms')} ms, loss {float(u.get('loss') or 0):.1%}"
        if state == "up":
            out.append(Check(f"uplink {name}", PASS, figure))
        elif state == "degraded":
            out.append(Check(f"uplink {name}", WARN, figure, "check the link; failover may move to it or off it"))
        else:
            out.append(Check(f"uplink {name}", FAIL, figure + (f" ({u.get('reason')})" if u.get("reason") else ""),
                             "the backup path is not there when needed: check the link and its gateway"))
    return out


def venue_checks(venues: Mapping[str, Any] | None) -> list[Check]:
    if not venues:
        return [Check("venues", SKIP, "no [venues]")]
    out: list[Check] = []
    for name, v in (venues.get("venues") or {}).items():
        for p in v.get("paths") or []:
            label = f"venue {name} via {p.get('uplink')}"
            state = p.get("state")
            latency = p.get("median_ms") if p.get("median_ms") is not None else p.get("latency_ms")
            if state == "up":
                out.append(Check(label, PASS, f"up, {latency} ms"))
            elif state == "degraded":
                out.append(Check(label, WARN, f"degraded, {latency} ms ({p.get('error') or 'slow'})",
                                 "watch it; orders may be slow through this path"))
            else:
                why = p.get("error") or ("no probe answered yet" if state == "unknown" else "no answer")
                out.append(Check(label, FAIL, f"{state}: {why}",
                                 f"{name} is unreachable through {p.get('uplink')}: check that uplink's route "
                                 "and firewall to the venue before the open"))
        dm = v.get("deadman") or {}
        label = f"dead-man switch {name}"
        if not dm.get("enabled"):
            out.append(Check(label, SKIP, "deadman = false"))
        elif v.get("credentials") == "none":
            out.append(Check(label, SKIP, "probe-only venue (no credentials): nothing to arm"))
        elif dm.get("supported") is False:
            out.append(Check(label, WARN, f"{v.get('exchange')} has no dead-man switch",
                             "rely on reconciliation after a failover"))
        elif dm.get("error"):
            out.append(Check(label, FAIL, f"arming failed: {dm['error']}", "check the key's permissions and the "
                                                                          "venue's status"))
        elif dm.get("armed_at") is not None:
            out.append(Check(label, PASS, f"armed ({dm.get('arms')} re-arms, timeout {dm.get('timeout_s')}s)"))
        elif dm.get("supported"):
            out.append(Check(label, PASS, "supported; armed while this node is primary"))
        else:
            out.append(Check(label, WARN, "not asked yet whether the venue supports it",
                             "run preflight again once the venue answered"))
    return out


def hardware_checks(hardware: Mapping[str, Any] | None, thresholds: Mapping[str, Any]) -> list[Check]:
    out: list[Check] = []
    devices = dict(hardware or {})
    ups = {k: v for k, v in devices.items() if k.startswith("ups:")}
    gnss = {k: v for k, v in devices.items() if k.startswith("gnss:")}
    if not ups:
        out.append(Check("ups", SKIP, "no [hardware.ups]"))
    for key, d in ups.items():
        label = f"ups {key.split(':', 1)[1]}"
        reading = d.get("reading") or {}
        if d.get("stale") or not reading:
            out.append(Check(label, FAIL, f"no reading ({d.get('error') or 'stale'})", "check the UPS's cable"))
            continue
        status = set(reading.get("status") or ())
        on_battery = reading.get("on_battery", bool(status & {"OB", "FSD"}))
        runtime = reading.get("runtime_s")
        floor = thresholds.get("ups_runtime_s")
        figure = f"{'ON BATTERY' if on_battery else 'on line'}, runtime {runtime if runtime is not None else '?'}s"
        if isinstance(floor, (int, float)):
            figure += f" (threshold {floor:g}s)"
        if on_battery:
            out.append(Check(label, FAIL, figure, "mains is out: do not open on battery"))
        elif isinstance(runtime, (int, float)) and isinstance(floor, (int, float)) and runtime < floor:
            out.append(Check(label, FAIL, figure, "the battery cannot carry a clean stop: replace or charge it"))
        elif runtime is None:
            out.append(Check(label, WARN, figure, "the UPS reports no runtime"))
        else:
            out.append(Check(label, PASS, figure))
    if not gnss:
        out.append(Check("gnss", SKIP, "no [hardware.gnss]"))
    for key, d in gnss.items():
        label = f"gnss {key.split(':', 1)[1]}"
        reading = d.get("reading") or {}
        if d.get("stale") or not reading:
            out.append(Check(label, FAIL, f"no reading ({d.get('error') or 'stale'})", "check the receiver"))
            continue
        offset_ms = reading.get("offset_ms")
        limit = thresholds.get("gnss_offset_s")
        figure = (f"fix {'yes' if reading.get('fix') else 'NO'}, {reading.get('satellites', '?')} satellites, "
                  f"clock offset {offset_ms if offset_ms is not None else '?'} ms")
        if not reading.get("fix"):
            out.append(Check(label, FAIL, figure, "no fix: check the antenna's view of the sky"))
        elif isinstance(offset_ms, (int, float)) and isinstance(limit, (int, float)) \
                and abs(offset_ms) / 1000 > limit:
            out.append(Check(label, FAIL, figure + f" (limit {limit * 1000:g} ms)",
                             "the host clock is off: check chrony/PTP"))
        else:
            out.append(Check(label, PASS, figure))
    return out


def disk_checks(disk: Mapping[str, Any] | None) -> list[Check]:
    if not disk:
        return [Check("journal disk", SKIP, "no journal")]
    free, total = int(disk.get("free_bytes", 0)), int(disk.get("total_bytes", 0)) or 1
    share = free / total
    figure = f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB ({share:.0%}) at {disk.get('path')}"
    if free < MIN_FREE_BYTES or share < DISK_FAIL:
        return [Check("journal disk", FAIL, figure, "free space or grow the filesystem before the open")]
    if share < DISK_WARN:
        return [Check("journal disk", WARN, figure, "free space this week")]
    return [Check("journal disk", PASS, figure)]


def verify_checks(journal: Mapping[str, Any] | None, audit: Mapping[str, Any] | None) -> list[Check]:
    out = []
    if journal is None:
        out.append(Check("journal verify", SKIP, "no journal"))
    elif journal.get("ok"):
        out.append(Check("journal verify", PASS, str(journal.get("figure") or "clean")))
    else:
        out.append(Check("journal verify", FAIL, str(journal.get("figure") or "damaged"),
                         "`lifeline journal verify` prints the damage; the standby holds a copy"))
    if audit is None:
        out.append(Check("audit verify", SKIP, "no audit log yet"))
    elif audit.get("ok"):
        out.append(Check("audit verify", PASS, str(audit.get("figure") or "clean")))
    else:
        out.append(Check("audit verify", FAIL, str(audit.get("figure") or "broken"),
                         "`lifeline audit verify` names the first broken line; keep the file for review"))
    return out


def breaker_checks(services: Iterable[Mapping[str, Any]] | None) -> list[Check]:
    out = []
    for s in services or []:
        name, health = s.get("name"), s.get("health")
        if name == "system":
            details = s.get("details") or {}
            if details.get("overloaded"):
                out.append(Check("host circuit breaker", FAIL, f"OPEN: {s.get('summary')}",
                                 "the host is overloaded: find the process (top) before the open"))
            else:
                out.append(Check("host circuit breaker", PASS, f"closed ({s.get('summary')})"))
        elif name == "breakers":
            out += trading_breaker_checks((s.get("details") or {}).get("breakers") or {})
        elif health not in ("ok", None) and name not in ("venues", "uplinks", "standby", "hardware"):
            out.append(Check(f"service {name}", FAIL if health == "failing" else WARN,
                             f"{health}: {s.get('summary')}", "`lifeline status` shows why"))
    return out


def trading_breaker_checks(breakers: Mapping[str, Any]) -> list[Check]:
    """The trading guard's circuit breakers: tripped FAILs (its pause / throttle / kill is in
    force), recovering WARNs (it closes once the figure stays clear for its recovery time)."""
    out = []
    for name, b in breakers.items():
        label, state = f"breaker {name}", b.get("state")
        figure = f"{b.get('figure', 0.0):.3g} (threshold {b.get('threshold')}, window {b.get('window_s'):g}s)"
        subjects = ", ".join(b.get("symbols") or {})
        if subjects:
            figure += f" on {subjects}"
        if state == "tripped":
            out.append(Check(label, FAIL, f"TRIPPED: {figure}; response {b.get('response')}",
                             "find the cause (`lifeline status --json`, the BreakerTripped event); it closes "
                             "by itself once the figure stays clear for its recovery time"))
        elif state == "recovering":
            out.append(Check(label, WARN, f"recovering: {figure}",
                             f"closes after {b.get('recovery_s'):g}s clear; `lifeline risk status` shows the blocks"))
        else:
            out.append(Check(label, PASS, f"closed: {figure}"))
    return out
