"""The standby's config section: ``[standby]`` with its ``journal`` and ``lease`` tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from daemon.core.config import ListenersConfig, NodeConfig, option, parse_host_port
from daemon.core.durations import Duration, format_duration


@dataclass(frozen=True)
class JournalConfig:
    fsync: Literal["always", "batch", "never"] = option(
        "always", doc='"always": every acknowledged append is fsynced (group commit batches concurrent ones); '
        '"batch": fsync at most every batch_interval; "never": leave it to the OS (tests only).'
    )
    batch_interval: Duration = option(Duration(0.005), doc='With fsync = "batch": longest time between fsyncs.',
                                      above=0)
    segment_bytes: int = option(64 * 1024 * 1024, doc="A segment file rolls over past this size.",
                                min=1024 * 1024, max=16 * 1024 * 1024 * 1024)
    retain_segments: int = option(16, doc="Closed segments kept (only those the standby also holds are removed).",
                                  min=1)
    retain_age: Duration = option(Duration(7 * 86400.0), doc="Closed segments older than this may be removed "
                                  "(once the standby holds them), even under retain_segments.", above=0)


@dataclass(frozen=True)
class LeaseConfig:
    backend: Literal["witness", "etcd"] = option(
        doc='"witness": a `lifeline witness` process on a third host (a two-host site); "etcd": an etcd v3 '
        "cluster (three regions)."
    )
    cluster: str = option("lifeline", doc="The lease's name in the store: one lease per pair.")
    witness: str | None = option(None, doc='The witness\'s "HOST:PORT" (backend = "witness").')
    witness_key_file: Path | None = option(
        None, doc="Key shared with the witness, one per cluster: `lifeline keys witness --out FILE`. Without it "
        "the replication key_file is used (compatibility only, logged: the witness host then holds the "
        "replication key).")
    etcd_endpoints: list[str] = option(
        factory=list, doc='etcd client URLs ("http://10.0.1.5:2379", ...), tried in order (backend = "etcd").')
    etcd_prefix: str = option("/lifeline/", doc="Key prefix in etcd; the lease lives under PREFIX + cluster.")
    etcd_ca: Path | None = option(None, doc="CA bundle (PEM) etcd's server certificate must chain to (https:// "
                                  "endpoints; default: the system's authorities).")
    etcd_cert: Path | None = option(None, doc="Client certificate (PEM, no common name) presented to an etcd run "
                                    "with --client-cert-auth; needs etcd_key.")
    etcd_key: Path | None = option(None, doc="The client certificate's private key (PEM, unencrypted, mode 0600).")
    etcd_user: str | None = option(None, doc="etcd user to authenticate as (etcd's auth enabled); needs "
                                   "etcd_password_file and https:// endpoints.")
    etcd_password_file: Path | None = option(None, doc="File holding etcd_user's password on its first line, "
                                             "mode 0600 (never the password inline).")
    ttl: Duration = option(Duration(1.5), doc="Lease time to live. A dead primary's lease passes on after "
                           "about ttl + fencing_margin. etcd rounds it up to whole seconds, at least 1.5 x its "
                           "election timeout (2s with default timers): safe, since the primary still fences on "
                           "this ttl, but the standby waits the longer one.", above=0)
    renew_interval: Duration | None = option(None, doc="Time between renewals (default ttl / 3).", above=0)
    retry_timeout: Duration = option(Duration(0.5), doc="Longest wait for one answer from the lease store.",
                                     above=0)
    safety_margin: Duration = option(Duration(0.3), doc="The primary fences itself this long before its lease "
                                     "could expire at the store.", above=0)
    fencing_margin: Duration = option(Duration(0.1), doc="A standby waits this long past the lease's expiry "
                                      "before taking it.", min=0)
    max_clock_rate_error: float = option(0.01, doc="Bound on any clock's rate error (NTP keeps it far below "
                                         "1 %); safety_margin must exceed 2 * this * ttl.", min=0, max=0.49)
    watchdog: Literal["off", "optional", "required"] = option(
        "off", doc='The hardware watchdog while primary: "required" refuses to become primary without a working '
        'one; "optional" uses it when it opens; "off" never opens it.')
    watchdog_device: Path = option(Path("/dev/watchdog"), doc="The watchdog device.")
    watchdog_timeout: Duration = option(Duration(1.0), doc="Watchdog timeout (whole seconds); below ttl - "
                                        "safety_margin, so a hung primary reboots before its lease passes on.",
                                        above=0)
    on_primary: list[str] = option(factory=list, doc="argv run (no shell) after becoming primary; empty: none.")
    on_fenced: list[str] = option(factory=list, doc="argv run after fencing (no longer primary).")
    on_standby: list[str] = option(factory=list, doc="argv run after becoming standby (following a primary).")
    hook_timeout: Duration = option(Duration(10.0), doc="A hook still running after this is killed.", above=0)

    def timings(self) -> "RoleTimingsLike":
        # lazy: the role machine (~10 ms) only with a lease; every client command reads this config (CLI start-up)
        from daemon.standby.roles import RoleTimings

        return RoleTimings(
            ttl=float(self.ttl), renew_interval=None if self.renew_interval is None else float(self.renew_interval),
            retry_timeout=float(self.retry_timeout), safety_margin=float(self.safety_margin),
            fencing_margin=float(self.fencing_margin),
            watchdog_timeout=None if self.watchdog == "off" else float(self.watchdog_timeout),
            max_clock_rate_error=float(self.max_clock_rate_error))

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.backend == "witness":
            if self.witness is None:
                problems.append(("witness", 'required with backend = "witness": the witness\'s "HOST:PORT"'))
            else:
                try:
                    parse_host_port(self.witness)
                except ValueError as exc:
                    problems.append(("witness", str(exc)))
        if self.backend == "etcd":
            if not self.etcd_endpoints:
                problems.append(("etcd_endpoints", 'required with backend = "etcd": ["http://HOST:2379", ...]'))
            for url in self.etcd_endpoints:
                if not re.fullmatch(r"https?://[^/\s]+/?", url):
                    problems.append(("etcd_endpoints", f'{url!r} is not "http://HOST:PORT"'))
            # lazy: the etcd client loads httpx and trio (~150 ms); only a config with etcd pays it (CLI start-up)
            from daemon.standby.etcd import setup_problems

            problems += setup_problems(self.etcd_endpoints, self.etcd_ca, self.etcd_cert, self.etcd_key,
                                       self.etcd_user, self.etcd_password_file)
        if self.watchdog != "off" and float(self.watchdog_timeout) != int(self.watchdog_timeout):
            problems.append(("watchdog_timeout", f"the Linux watchdog counts whole seconds, found "
                                                 f"{format_duration(self.watchdog_timeout)}"))
        for hook in ("on_primary", "on_fenced", "on_standby"):
            argv = getattr(self, hook)
            if argv and not argv[0].startswith("/"):
                problems.append((hook, f"the program must be an absolute path (no shell, no PATH search), "
                                       f"found {argv[0]!r}"))
        for message in self.timings().problems():
            name = _timing_name(message)
            problems.append((name, message))
        return problems


RoleTimingsLike = Any


def _timing_name(message: str) -> str:
    """The key a timing problem is about (its first word), for the dotted path."""
    first = message.split(" ", 1)[0]
    return first if first.isidentifier() else "ttl"


@dataclass(frozen=True)
class StandbyConfig:
    key_file: Path = option(doc="Pre-shared key file (32+ random bytes, mode 0600), the same on both hosts: "
                            "`lifeline keys replication --out FILE` makes one.")
    role: Literal["primary", "standby"] | None = option(
        None, doc='A fixed role, for a pair without a lease store: "primary" serves the journal, "standby" '
        'follows it. Leave it out when [standby.lease] is set: the lease decides, and it moves at failover.'
    )
    listen: str = option("0.0.0.0:7470", doc='The primary\'s replication address, "HOST:PORT": this host\'s '
                         'cross-connect address (the default listens on every interface, uplinks included).')
    peer: str | None = option(None, doc='The other host\'s replication address ("HOST:PORT"): a standby '
                              'connects there to follow it. Required with role = "standby" and with [standby.lease].')
    mode: Literal["sync", "async"] = option(
        "sync", doc='"sync": an append is acknowledged only once the standby has it on disk (RPO 0); '
        '"async": once it is on the primary\'s disk.'
    )
    sync_timeout: Duration = option(
        Duration(2.0), doc="Longest wait for the standby's acknowledgement before an append answers in-doubt.",
        above=0
    )
    on_standby_loss: Literal["block", "degrade-to-async"] = option(
        "degrade-to-async", doc='With mode = "sync" and the standby gone: "block" refuses appends (in-doubt) until '
        'it is back; "degrade-to-async" keeps trading on the primary\'s disk alone, with an alarm.'
    )
    heartbeat: Duration = option(Duration(0.5), doc="Heartbeat interval on the replication link.", above=0)
    peer_timeout: Duration = option(Duration(3.0), doc="The link is dead after this long without a frame.",
                                    above=0)
    reconnect_max: Duration = option(Duration(2.0), doc="Longest backoff between the standby's reconnects.",
                                     above=0)
    journal: JournalConfig = option(factory=JournalConfig, doc="The journal's files.")
    lease: LeaseConfig | None = option(None, doc="The leader lease that decides which host is primary "
                                       "(absent: the fixed role above).")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        try:
            parse_host_port(self.listen)
        except ValueError as exc:
            problems.append(("listen", str(exc)))
        if self.role is None and self.lease is None:
            problems.append(("role", 'set role = "primary" or "standby", or add a [standby.lease] table so the '
                                     "lease decides"))
        if self.role is not None and self.lease is not None:
            problems.append(("role", "remove it: with [standby.lease] the lease decides the role (a fixed role "
                                     "next to a lease could make two primaries)"))
        if self.lease is not None and self.peer is None:
            problems.append(("peer", 'required with [standby.lease]: the other host\'s replication "HOST:PORT", '
                                     "followed while it is primary"))
        if self.role == "standby" and self.peer is None:
            problems.append(("peer", 'required with role = "standby": the primary\'s "HOST:PORT"'))
        if self.peer is not None:
            try:
                parse_host_port(self.peer)
            except ValueError as exc:
                problems.append(("peer", str(exc)))
        if self.peer_timeout <= self.heartbeat:
            problems.append(("peer_timeout", f"must exceed heartbeat ({format_duration(self.heartbeat)}), "
                                             f"found {format_duration(self.peer_timeout)}"))
        return problems


class StandbySettings(Protocol):
    """What the standby service reads of the root config (:class:`daemon.config.Config` is one):
    this host and its section."""

    @property
    def node(self) -> NodeConfig: ...

    @property
    def standby(self) -> StandbyConfig | None: ...

    @property
    def listeners(self) -> ListenersConfig: ...
