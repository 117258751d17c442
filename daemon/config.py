"""The daemon's configuration: one TOML file, typed and validated before anything starts.

The schema is a tree of frozen dataclasses. Each field carries its documentation and its
limits (``option(...)``); the loader walks the TOML document against that tree and
collects *every* problem before refusing, each one naming the file, the dotted key path
(``uplinks.fibre.interval``), what was expected and what was found. Nothing is guessed:
an unknown key is an error (it is usually a typo of a key whose default then silently
applies), a wrong type is an error, an out-of-range number is an error.

Durations are strings with a unit (``"200ms"``, ``"3s"``, ``"2m"``, ``"1h"``) and load
as :class:`Duration`, a float of seconds. Relative paths are resolved against the
directory of the config file, so a config and its key files can travel together.

Later capabilities add their sections here (``uplinks``, ``standby``, ``venues``, ...);
one place defines what a valid config is.
"""

from __future__ import annotations

import dataclasses
import decimal
import fractions
import ipaddress
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from daemon.listeners import Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 and older
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/lifeline/lifeline.toml")

#: Longest path a unix socket can bind to (sun_path is 108 bytes, NUL included).
UNIX_PATH_MAX = 107


class ConfigError(Exception):
    """The config cannot be used. ``problems`` holds one line per problem, each naming
    the file and the key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Duration(float):
    """A length of time in seconds, written in config as ``"200ms"``, ``"3s"``, ``"2m"``."""

    _UNITS = {
        "ms": fractions.Fraction(1, 1000),
        "s": fractions.Fraction(1),
        "m": fractions.Fraction(60),
        "h": fractions.Fraction(3600),
    }
    _PATTERN = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", re.ASCII)

    @classmethod
    def parse(cls, text: str) -> "Duration":
        match = cls._PATTERN.fullmatch(text)
        if not match:
            raise ValueError(text)
        # Exact arithmetic, rounded once: "300ms" is exactly 0.3, the same float as "0.3s".
        return cls(float(fractions.Fraction(match.group(1)) * cls._UNITS[match.group(2)]))

    def __str__(self) -> str:
        return format_duration(self)

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: ``0.2`` → ``"200ms"``, ``120`` → ``"2m"``.

    Exact means ``Duration.parse(format_duration(x)) == x`` for every finite ``x``.
    """
    seconds = float(seconds)
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {seconds!r}")
    if seconds == int(seconds):
        whole = int(seconds)
        if whole >= 3600 and whole % 3600 == 0:
            return f"{whole // 3600}h"
        if whole >= 60 and whole % 60 == 0:
            return f"{whole // 60}m"
        return f"{whole}s"
    ms = round(seconds * 1000)
    if ms / 1000 == seconds:
        return f"{ms}ms"
    for text in (_decimal(seconds * 1000) + "ms", _decimal(seconds) + "s"):
        if float(Duration.parse(text)) == seconds:
            return text
    return _decimal(seconds) + "s"  # pragma: no cover - the seconds spelling is always exact


def _decimal(value: float) -> str:
    """``repr``'s shortest round-tripping digits, without an exponent (``1e-05`` → ``0.00001``)."""
    text = format(decimal.Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def option(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its documentation and limits.

    ``min``/``max`` are inclusive bounds; ``above`` is an exclusive lower bound (for
    durations and thresholds that must be positive). A field without a default is
    required.
    """
    metadata = {"doc": doc, "min": min, "max": max, "above": above}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class NodeConfig:
    name: str = option(doc="This host's name in the pair; shown in logs, status and events.")
    state_dir: Path = option(
        Path("/var/lib/lifeline"), doc="Durable state: journal segments, epochs, audit log."
    )
    runtime_dir: Path = option(Path("/run/lifeline"), doc="Runtime files: pid, sockets.")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.name):
            problems.append(
                ("name", f"expected 1-63 letters, digits, '.', '_' or '-', found {self.name!r}")
            )
        return problems


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = option(
        "info", doc="Lowest level written to stderr (journald)."
    )


@dataclass(frozen=True)
class ControlRolesConfig:
    engine: list[str] = option(
        factory=list, doc='The trading engine: journal.append and the reads it trades on. User names, uids, '
        '"@group" or "@gid"; a user named in any role gets exactly the roles it is named in.')
    operator: list[str] = option(
        factory=lambda: ["@lifeline"], doc="Every read, uplink.use/auto, playbook lists and dry runs, "
        "reconciliation dry runs.")
    admin: list[str] = option(
        factory=lambda: ["root", "@lifeline-admin"], doc="Everything an operator may, plus standby.promote, "
        "playbook.run and venues.reconcile that act. root and the daemon's own user hold every role.")

    def validate(self) -> list[tuple[str, str]]:
        from daemon.acl import RoleSpecError, parse_entry

        problems: list[tuple[str, str]] = []
        for role in ("engine", "operator", "admin"):
            for entry in getattr(self, role):
                try:
                    parse_entry(entry)
                except RoleSpecError as exc:
                    problems.append((role, f"{exc}; write a user name, a uid, \"@group\" or \"@gid\""))
        return problems


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = option(
        Path("/run/lifeline/control.sock"),
        doc="Unix socket for `lifeline status`, `events` and the trading engine.",
    )
    mode: str = option("0660", doc="Permission bits of the socket, octal.")
    group: str = option(
        "lifeline",
        doc="Group that owns the socket; its members may talk to the daemon. "
        "If the group does not exist the daemon's own group is kept and a warning logged.",
    )
    max_request_bytes: int = option(
        64 * 1024,
        doc="Longest request line accepted; a longer one is answered with an error and "
        "the connection is closed (journal.append: max_append_bytes).",
        min=1024,
        max=64 * 1024 * 1024,
    )
    max_append_bytes: int = option(
        4 * 1024 * 1024,
        doc="Longest journal.append request, from a caller with the engine role (a batch of "
        "500 recorded feed lines is about 230 KiB).",
        min=1024,
        max=64 * 1024 * 1024,
    )
    max_connections: int = option(
        64, doc="Connections served at once; one more gets a `busy` error and is closed.", min=1, max=4096)
    max_connections_per_user: int = option(
        16, doc="Connections one uid may hold at once (root and the daemon's user: max_connections).",
        min=1, max=4096)
    idle_timeout: Duration = option(
        Duration(300.0), doc="A connection that sends no request for this long is closed (a streaming "
        "call is never idle).", above=0)
    request_timeout: Duration = option(
        Duration(10.0), doc="A request must be complete (its newline) this long after its first byte.",
        above=0)
    roles: "ControlRolesConfig" = option(
        factory=lambda: ControlRolesConfig(), doc="Who holds which role (README: the roles table).")

    @property
    def mode_bits(self) -> int:
        return int(self.mode, 8)

    def validate(self) -> list[tuple[str, str]]:
        length = len(str(self.socket).encode())
        if length > UNIX_PATH_MAX:
            return [("socket", f"{length} bytes is too long for a unix socket path (the kernel's limit is "
                               f"{UNIX_PATH_MAX}): choose a shorter path, e.g. /run/lifeline/control.sock")]
        if not re.fullmatch(r"0?[0-7]{3}", self.mode):
            return [("mode", f'expected octal permission bits such as "0660", found {self.mode!r}')]
        if self.mode_bits & 0o600 != 0o600:
            return [("mode", f"the daemon itself needs read and write (0600), found {self.mode!r}")]
        return []


@dataclass(frozen=True)
class ListenersConfig:
    """The bounds of every TCP listener of the daemon (replication, metrics), each with
    its own count: a peer that has not proved the key gets one of a few slots, a short
    deadline and a hello-sized frame. The newest connection past a cap is closed at once."""

    max_connections: int = option(64, doc="Connections one listener holds at once.", min=1, max=65536)
    max_per_source: int = option(16, doc="Connections one listener holds at once from one address.",
                                 min=1, max=65536)
    max_unauthenticated: int = option(
        16, doc="Connections one listener holds that have not proved the key (or sent their request) yet.",
        min=1, max=65536)
    max_unauthenticated_per_source: int = option(4, doc="The same, from one address.", min=1, max=65536)
    handshake_timeout: Duration = option(
        Duration(2.0), doc="Time a peer has to prove the key (replication) or send its request head (metrics).",
        above=0)

    def limits(self) -> Limits:
        """As the listeners take them."""
        return Limits(self.max_connections, self.max_per_source, self.max_unauthenticated,
                      self.max_unauthenticated_per_source, float(self.handshake_timeout))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = option(True, doc="Serve Prometheus metrics over HTTP.")
    listen: str = option(
        "127.0.0.1:9469",
        doc='Address and port of the metrics endpoint, "HOST:PORT" ("[::1]:9469" for IPv6). '
        "Port 0 picks a free port (tests).",
    )

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_host_port(self.listen)

    def validate(self) -> list[tuple[str, str]]:
        try:
            parse_host_port(self.listen)
        except ValueError as exc:
            return [("listen", str(exc))]
        return []


@dataclass(frozen=True)
class SystemConfig:
    interval: Duration = option(Duration(2.0), doc="How often host health is sampled.", above=0)
    cpu_threshold: float = option(
        0.90, doc="CPU busy fraction (all cores) above which the host is overloaded.", above=0, max=1
    )
    memory_threshold: float = option(
        0.90, doc="Fraction of memory in use (1 - available/total) above which the host is overloaded.",
        above=0, max=1,
    )
    disk_threshold: float = option(
        0.90, doc="Fraction of the state directory's filesystem in use above which the host is overloaded.",
        above=0, max=1,
    )
    temperature_threshold_c: float = option(
        85.0, doc="Hottest sensor (°C) above which the host is overloaded; ignored where the host has no sensors.",
        above=0, max=150,
    )
    sustain: Duration = option(
        Duration(10.0), doc="A threshold must be crossed for this long before the state changes.", min=0
    )
    recover_margin: float = option(
        0.05, doc="Hysteresis: a value must drop this far below its threshold to count as recovered.",
        min=0, max=0.5,
    )


@dataclass(frozen=True)
class EventsConfig:
    subscriber_buffer: int = option(
        1024,
        doc="Events buffered per subscriber; past it the oldest are dropped and counted, "
        "so a slow subscriber never blocks a publisher.",
        min=16, max=1_000_000,
    )


#: Health defaults by kind of uplink: a fibre goes DOWN fast; a Starlink link rides out
#: its normal 1-2 s drops at satellite hand-offs (15 lost rounds of 200 ms = 3 s).
UPLINK_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "terrestrial": {"interval": 0.2, "timeout": 0.25, "down_after": 3, "up_after": 10,
                    "degraded_rtt": 0.1},
    "starlink": {"interval": 0.2, "timeout": 0.6, "down_after": 15, "up_after": 10,
                 "degraded_rtt": 0.25},
    "cellular": {"interval": 0.5, "timeout": 1.0, "down_after": 8, "up_after": 10,
                 "degraded_rtt": 0.4},
    "other": {"interval": 0.2, "timeout": 0.5, "down_after": 5, "up_after": 10,
              "degraded_rtt": 0.2},
}


@dataclass(frozen=True)
class UplinkConfig:
    interface: str = option(doc="Network interface of this uplink (e.g. \"eth1\").")
    source: str = option(doc="This uplink's own IP address on that interface; probes leave from it.")
    gateway: str = option(doc="Next hop for the default route through this uplink.")
    targets: list[str] = option(
        doc='Probe targets, judged together: "udp://IP:PORT" (echo), "icmp://IP", '
        '"tcp://IP:PORT", "http://IP[:PORT]/PATH", "https://IP[:PORT]/PATH".'
    )
    kind: Literal["terrestrial", "starlink", "cellular", "other"] = option(
        "terrestrial", doc="Sets the health defaults below (a fibre goes DOWN fast; Starlink rides out hand-offs)."
    )
    priority: int = option(10, doc="Preference, lower wins (like a route metric).", min=0, max=10000)
    interval: Duration | None = option(None, doc="Time between probe rounds (kind default).", above=0)
    timeout: Duration | None = option(None, doc="A probe unanswered after this is lost (kind default).", above=0)
    down_after: int | None = option(None, doc="Consecutive lost rounds before DOWN (kind default).", min=1, max=1000)
    up_after: int | None = option(None, doc="Consecutive good rounds before a DOWN uplink is UP again (kind default).",
                                  min=1, max=10000)
    min_targets: int = option(1, doc="Targets that must answer for a round to count as good.", min=1)
    window: int = option(50, doc="Rounds in the sliding window for loss ratio, RTT and jitter.", min=5, max=10000)
    degraded_loss: float = option(0.2, doc="Loss ratio over the window at or above which the uplink is DEGRADED.",
                                  above=0, max=1)
    recovered_loss: float = option(0.05, doc="Loss ratio at or below which a DEGRADED uplink is UP again.",
                                   min=0, max=1)
    degraded_rtt: Duration | None = option(None, doc="Median RTT above which the uplink is DEGRADED (kind default).",
                                           above=0)
    dns_server: str | None = option(None, doc="Resolver queried through this uplink; DNS failing makes it DEGRADED.")
    dns_name: str = option("example.com", doc="Name the DNS probe asks for (any answer, even NXDOMAIN, is a working resolver).")
    dns_interval: Duration = option(Duration(5.0), doc="Time between DNS probes.", above=0)
    dns_failures: int = option(3, doc="Consecutive failed DNS probes before the uplink is DEGRADED.", min=1)
    table: int | None = option(None, doc="Policy-routing table for this uplink's probes (default 1000 + position).",
                               min=1, max=0xFFFFFFF0)
    starlink_dish: str | None = option(None, doc='Starlink dish gRPC address ("192.168.100.1:9200") for early '
                                       "hints; needs `pip install lifeline[starlink]`.")

    def __post_init__(self) -> None:
        # Fill the kind's defaults in, so `config show` prints what is really in force.
        defaults = UPLINK_KIND_DEFAULTS.get(self.kind, UPLINK_KIND_DEFAULTS["other"])
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, Duration(value) if isinstance(value, float) else value)

    def validate(self) -> list[tuple[str, str]]:
        from daemon.uplinks.targets import parse_target

        problems: list[tuple[str, str]] = []
        family = None
        for key in ("source", "gateway"):
            try:
                family = ipaddress.ip_address(getattr(self, key)).version
            except ValueError:
                problems.append((key, f"expected an IP address, found {getattr(self, key)!r}"))
        if not self.targets:
            problems.append(("targets", "expected at least one probe target"))
        for i, text in enumerate(self.targets):
            try:
                target = parse_target(text)
            except ValueError as exc:
                problems.append((f"targets[{i}]", str(exc)))
                continue
            if family is not None and target.family != family:
                problems.append((f"targets[{i}]", f"IPv{target.family} target but the source is IPv{family}"))
        if self.min_targets > len(self.targets):
            problems.append(("min_targets", f"expected at most {len(self.targets)} (the number of targets), "
                                            f"found {self.min_targets}"))
        if self.recovered_loss >= self.degraded_loss:
            problems.append(("recovered_loss", f"must be below degraded_loss ({self.degraded_loss:g}) for "
                                               f"hysteresis, found {self.recovered_loss:g}"))
        assert self.timeout is not None and self.interval is not None
        if self.dns_server is not None:
            try:
                ipaddress.ip_address(self.dns_server)
            except ValueError:
                problems.append(("dns_server", f"expected the resolver's IP address, found {self.dns_server!r}"))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,15}", self.interface):
            problems.append(("interface", f"expected an interface name (1-15 characters), found {self.interface!r}"))
        if self.starlink_dish is not None:
            try:
                parse_host_port(self.starlink_dish)
            except ValueError as exc:
                problems.append(("starlink_dish", str(exc)))
        return problems


@dataclass(frozen=True)
class FailoverConfig:
    route_backend: Literal["netlink", "none"] = option(
        "netlink", doc='"netlink" moves the default route (needs CAP_NET_ADMIN); "none" decides and reports only.'
    )
    hold_down: Duration = option(
        Duration(30.0), doc="A preferred uplink must be UP this long before traffic fails back to it.", min=0
    )
    min_dwell: Duration = option(
        Duration(10.0), doc="An uplink stays active at least this long before a (non-emergency) failback.", min=0
    )
    route_metric: int | None = option(None, doc="Metric of the default route lifeline installs (none: kernel default).",
                                      min=0, max=0xFFFFFFFF)
    route_check_interval: Duration = option(
        Duration(5.0), doc="How often the installed default route is re-checked and repaired if changed.", above=0
    )
    flush_conntrack: bool = option(
        True, doc="After a failover, delete the dead uplink's conntrack entries (only those) so NATed flows re-establish."
    )
    failback_flows: Literal["move", "keep"] = option(
        "move", doc='After a failback, "move" flushes the backup uplink\'s flows too; "keep" leaves them to finish.'
    )
    rule_priority: int = option(
        1000, doc="First `ip rule` priority used for the per-uplink policy-routing rules.", min=1, max=32000
    )


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


@dataclass(frozen=True)
class UpsConfig:
    port: str = option(doc='The UPS: a serial port speaking Megatec/Q1 ("/dev/ttyUSB0", any pyserial URL), or '
                       'a NUT upsd ("nut://127.0.0.1:3493/ups").')
    interval: Duration = option(Duration(2.0), doc="Time between polls.", above=0)
    stale_after: Duration = option(Duration(10.0), doc="No answer for this long: the UPS is stale (an event), "
                                   "never assumed healthy.", above=0)
    runtime_threshold: Duration = option(Duration(300.0), doc="UpsRuntimeBelow when the estimated battery "
                                         "runtime falls below this.", above=0)


@dataclass(frozen=True)
class GnssConfig:
    port: str = option(doc='The time receiver: a serial port with NMEA 0183 ("/dev/ttyACM0") or a gpsd '
                       '("gpsd://127.0.0.1:2947").')
    baud: int = option(9600, doc="Serial speed (4800 for older receivers).", min=300, max=921600)
    stale_after: Duration = option(Duration(5.0), doc="No sentence for this long: the receiver is stale.", above=0)
    offset_threshold: Duration = option(Duration(1.0), doc="ClockOffsetHigh when the receiver's UTC and the "
                                        "host clock differ by more (a rough check; chrony keeps time).", above=0)


@dataclass(frozen=True)
class EnclosureConfig:
    port: str | None = option(None, doc='The Modbus RTU temperature/humidity sensor\'s port ("/dev/ttyUSB1").')
    slave: int = option(1, doc="The sensor's Modbus address.", min=1, max=247)
    baud: int = option(9600, doc="Serial speed of the RS-485 line.", min=300, max=921600)
    interval: Duration = option(Duration(5.0), doc="Time between sensor reads.", above=0)
    stale_after: Duration = option(Duration(30.0), doc="No reading for this long: the sensor is stale.", above=0)
    temperature_high: float = option(45.0, doc="EnclosureTemperatureHigh above this, degrees Celsius.")
    humidity_high: float = option(80.0, doc="EnclosureHumidityHigh above this, percent.", min=0, max=100)
    door_port: str | None = option(None, doc='The serial port whose modem-status line the door contact is '
                                   'wired to ("/dev/ttyS0").')
    door_line: Literal["cts", "dsr", "cd"] = option("cts", doc="Which modem-status line.")
    door_open_when: Literal["asserted", "deasserted"] = option(
        "deasserted", doc='"deasserted": a closed door closes the circuit (a cut wire reads as open).')

    def validate(self) -> list[tuple[str, str]]:
        if self.port is None and self.door_port is None:
            return [("port", "set port (the sensor) or door_port (the door contact), or remove [hardware.enclosure]")]
        return []


@dataclass(frozen=True)
class HardwareWatchdogConfig:
    device: Path = option(Path("/dev/watchdog"), doc="The watchdog device, fed from the daemon's main loop.")
    timeout: Duration = option(Duration(10.0), doc="Reboot the host if the daemon has not fed it for this long "
                               "(whole seconds).", above=0)

    def validate(self) -> list[tuple[str, str]]:
        if float(self.timeout) != int(self.timeout):
            return [("timeout", f"the Linux watchdog counts whole seconds, found {format_duration(self.timeout)}")]
        return []


@dataclass(frozen=True)
class HardwareConfig:
    ups: UpsConfig | None = option(None, doc="The UPS (absent: none).")
    gnss: GnssConfig | None = option(None, doc="The GNSS time receiver (absent: none).")
    enclosure: EnclosureConfig | None = option(None, doc="Enclosure sensors and door contact (absent: none).")
    watchdog: HardwareWatchdogConfig | None = option(
        None, doc="Feed the hardware watchdog from the main loop (absent: not opened). Not with "
        "[standby.lease] watchdog, which feeds the same device only while primary.")


@dataclass(frozen=True)
class RecoveryConfig:
    playbooks: Path = option(Path("/etc/lifeline/playbooks"),
                             doc="Directory of signed playbooks (NAME.toml with NAME.toml.sig beside it).")
    keyring: Path = option(Path("/etc/lifeline/keyring.toml"),
                           doc="Trusted signing keys, the threshold (m of n), revocations, the exec allow-list.")
    triggers: bool = option(True, doc="Start a playbook when an event matches one of its triggers (false: by "
                            "hand only, `lifeline playbook run`).")
    on_busy: Literal["refuse", "wait"] = option(
        "refuse", doc='A second playbook while one runs: "refuse" it (logged, audited) or "wait" for the first.')
    audit_log: Path | None = option(None, doc="The hash-chained audit log (default STATE_DIR/recovery/audit.jsonl).")


VENUE_PROBE_CALLS = ("fetch_time", "fetch_status", "fetch_ticker", "fetch_balance")


@dataclass(frozen=True)
class VenueConfig:
    exchange: str = option(doc='The ccxt exchange id ("kraken", "coinbase", ...).')
    credentials: Path | None = option(
        None, doc="TOML file with api_key, secret (and password, uid where the venue needs them), mode 0600; "
        "needed for fetch_balance probes, the dead-man switch and reconciliation. Never logged or shown.")
    uplinks: list[str] | None = option(
        None, doc="Uplinks to probe the venue through (absent: every [uplinks.NAME]; no uplinks: the default route).")
    interval: Duration = option(Duration(1.0), doc="Time between probe rounds per uplink; never more often than the "
                                "venue's rate limit allows (ccxt's rateLimit x calls per round).", above=0)
    timeout: Duration = option(Duration(0.8), doc="A probe call unanswered after this fails (class timeout).",
                               above=0)
    probes: list[Literal["fetch_time", "fetch_status", "fetch_ticker", "fetch_balance"]] = option(
        factory=lambda: ["fetch_time"], doc="The calls one probe round makes, in order; fetch_balance (private) "
        "needs credentials; fetch_ticker needs ticker_symbol.")
    ticker_symbol: str | None = option(None, doc='Market whose ticker the fetch_ticker probe reads ("BTC/USDT").')
    degraded_latency: Duration = option(Duration(0.5), doc="Answers slower than this (slow_after in a row) make "
                                        "the venue DEGRADED through that uplink.", above=0)
    down_after: int = option(3, doc="Consecutive failed rounds before DOWN (the first failure already makes it "
                             "DEGRADED).", min=1, max=100)
    up_after: int = option(3, doc="Consecutive good rounds before a DEGRADED or DOWN venue is UP again.",
                           min=1, max=100)
    slow_after: int = option(3, doc="Consecutive slow answers before DEGRADED.", min=1, max=100)
    deadman: bool = option(True, doc="While this node is primary, keep re-arming the venue's dead-man switch "
                           "(cancelAllOrdersAfter) so the venue cancels every order by itself if this node stops "
                           "(fenced, crashed, cut off). Ignored where the venue has none (reported in status).")
    deadman_timeout: Duration = option(Duration(60.0), doc="The venue cancels every order this long after the "
                                       "last re-arm.", min=1, max=86400)
    deadman_interval: Duration = option(Duration(15.0), doc="Time between re-arms while primary.", above=0)
    reconcile: Literal["cancel-orphans", "adopt", "report-only"] = option(
        "cancel-orphans", doc='After a promotion, open orders at the venue that the journal does not know: '
        '"cancel-orphans" cancels them, "adopt" writes them into the journal as open, "report-only" reports them.')
    reconcile_on_promotion: bool = option(True, doc="Reconcile when this node becomes primary (false: only by "
                                          "hand, `lifeline reconcile`).")
    positions: bool = option(True, doc="Fetch positions too (where the venue has them) for the report.")
    api_url: str | None = option(None, doc='Replace the scheme and host of every API URL of the exchange '
                                 '("http://10.75.0.1:8080": the lab\'s venue emulator). Absent: the real venue.')
    sandbox: bool = option(False, doc="Use the venue's sandbox/testnet URLs (ccxt set_sandbox_mode).")

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        known = ccxt_exchange_ids()
        if known is None:
            problems.append(("exchange", "venues need ccxt, which is not installed here: "
                                         "pip install 'lifeline[venues]' (the Debian package has it), "
                                         "or remove the [venues.*] tables"))
        elif self.exchange not in known:
            close = _closest(self.exchange, known)
            hint = f' (did you mean "{close}"?)' if close else ""
            problems.append(("exchange", f"unknown ccxt exchange id {self.exchange!r}{hint}"))
        if not self.probes:
            problems.append(("probes", f"expected at least one of {', '.join(VENUE_PROBE_CALLS)}"))
        if "fetch_ticker" in self.probes and not self.ticker_symbol:
            problems.append(("ticker_symbol", 'the fetch_ticker probe needs a market: set ticker_symbol = "BTC/USDT"'))
        if "fetch_balance" in self.probes and self.credentials is None:
            problems.append(("credentials", "the fetch_balance probe is private: set credentials = PATH (mode 0600)"))
        if self.deadman_interval >= self.deadman_timeout:
            problems.append(("deadman_interval", f"must be shorter than deadman_timeout "
                                                 f"({format_duration(self.deadman_timeout)}), or the venue cancels "
                                                 f"between two re-arms; found {format_duration(self.deadman_interval)}"))
        if self.api_url is not None and not re.fullmatch(r"https?://[^/\s]+/?", self.api_url):
            problems.append(("api_url", f'expected "http(s)://HOST[:PORT]" without a path, found {self.api_url!r}'))
        if self.uplinks is not None and len(set(self.uplinks)) != len(self.uplinks):
            problems.append(("uplinks", "an uplink is listed twice"))
        return problems


def ccxt_exchange_ids() -> list[str] | None:
    """ccxt's exchange ids, or None if ccxt (the ``venues`` extra) is not installed.

    Read from the names of ccxt's modules without importing it: ``import ccxt`` takes
    ~0.3 s and ~40 MB, which every client command that reads the config would pay."""
    import importlib.util

    spec = importlib.util.find_spec("ccxt")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "async_support"
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    import ccxt  # an unusual layout: ask ccxt itself

    return list(ccxt.exchanges)


@dataclass(frozen=True)
class DrillsConfig:
    live: bool = option(False, doc="Allow live drills on this host (`lifeline drill switchover|uplink --live`): off "
                              "by default; they move the primary and cut the fibre for real.")
    trading_hours: str = option("09:30-16:00", doc='Hours (Monday to Friday, in `timezone`) when live drills are '
                                "refused unless --force: \"HH:MM-HH:MM\".")
    timezone: str = option("America/New_York", doc="The exchange's time zone (an IANA name) for trading_hours.")
    max_duration: Duration = option(Duration(60.0), doc="A live drill stops by itself after this, whatever happens.",
                                    above=0)

    def validate(self) -> list[tuple[str, str]]:
        from daemon.livedrills import parse_hours, zone

        problems: list[tuple[str, str]] = []
        try:
            parse_hours(self.trading_hours)
        except ValueError as exc:
            problems.append(("trading_hours", str(exc)))
        try:
            zone(self.timezone)
        except ValueError as exc:
            problems.append(("timezone", str(exc)))
        if self.max_duration > 600:
            problems.append(("max_duration", f"expected at most 600s, found {self.max_duration:g}s"))
        return problems


@dataclass(frozen=True)
class Config:
    node: NodeConfig = option(doc="This host.")
    log: LogConfig = option(factory=LogConfig, doc="Logging.")
    control: ControlConfig = option(factory=ControlConfig, doc="The control socket.")
    metrics: MetricsConfig = option(factory=MetricsConfig, doc="Prometheus metrics.")
    listeners: ListenersConfig = option(factory=ListenersConfig,
                                        doc="Bounds of the TCP listeners (replication, metrics).")
    system: SystemConfig = option(factory=SystemConfig, doc="Host health (psutil) and its circuit breaker.")
    events: EventsConfig = option(factory=EventsConfig, doc="The event bus.")
    uplinks: dict[str, UplinkConfig] = option(
        factory=dict, doc="One [uplinks.NAME] table per uplink (terrestrial fibre, Starlink, ...)."
    )
    failover: FailoverConfig = option(factory=FailoverConfig, doc="Choosing the active uplink and moving the route.")
    standby: StandbyConfig | None = option(None, doc="The replicated execution journal (absent: no journal).")
    recovery: RecoveryConfig | None = option(None, doc="Signed recovery playbooks (absent: none run).")
    hardware: HardwareConfig | None = option(None, doc="The host's serial devices and watchdog (absent: none).")
    venues: dict[str, VenueConfig] = option(
        factory=dict, doc="One [venues.NAME] table per trading venue, probed through every uplink.")
    drills: DrillsConfig = option(factory=DrillsConfig, doc="Live drills on this host (off by default).")

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        seen: dict[tuple[str, str], str] = {}
        for name, uplink in self.uplinks.items():
            # Two uplinks may share an interface (several gateways on one segment, the
            # loopback lab), never a source address: probes are told apart by it.
            for key in ("source",):
                value = getattr(uplink, key)
                if (key, value) in seen:
                    problems.append((f"uplinks.{name}.{key}", f"{value!r} is also used by uplinks.{seen[(key, value)]}"))
                seen[(key, value)] = name
        for name, venue in self.venues.items():
            for i, uplink in enumerate(venue.uplinks or ()):
                if uplink not in self.uplinks:
                    known = ", ".join(self.uplinks) or "none configured"
                    problems.append((f"venues.{name}.uplinks[{i}]", f"no [uplinks.{uplink}] (uplinks: {known})"))
        lease = self.standby.lease if self.standby is not None else None
        if self.hardware is not None and self.hardware.watchdog is not None and lease is not None \
                and lease.watchdog != "off":
            problems.append(("hardware.watchdog", "the lease already drives the watchdog (standby.lease.watchdog): "
                                                  "use one of them, not both"))
        return problems

    #: The file this config came from (not a config key).
    source: Path = field(default=Path("<memory>"), metadata={"internal": True}, compare=False)


# --------------------------------------------------------------------------- helpers


def parse_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9469"`` → ``("127.0.0.1", 9469)``; ``"[::1]:9469"`` → ``("::1", 9469)``."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f'expected "HOST:PORT" such as "127.0.0.1:9469", found {text!r}')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"expected a port from 0 to 65535, found {port}")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address inside [...], found {host!r}") from None
    return host, port


def describe_value(value: Any) -> str:
    """How a found value is shown in an error: its TOML spelling and its type."""
    import datetime as _dt

    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, str):
        return f'"{value}" (string)'
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (boolean)"
    if isinstance(value, int):
        return f"{value} (integer)"
    if isinstance(value, float):
        return f"{value!r} (float)"
    for kind, name in ((_dt.datetime, "date-time"), (_dt.date, "date"), (_dt.time, "time")):
        if isinstance(value, kind):
            return f"{value.isoformat()} ({name})"
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return _type_name(next(a for a in get_args(tp) if a is not type(None)))
    if tp is Duration:
        return 'a duration such as "200ms", "3s" or "2m"'
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in get_args(tp))
    if origin is list:
        return f"an array of {_type_name(get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


class _Loader:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def section(self, cls: type, data: Any, path: str) -> Any:
        where = path or "top level"
        if not isinstance(data, dict):
            self.problem(where, f"expected a table, found {describe_value(data)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        for key in data:
            if key not in fields:
                close = _closest(key, fields)
                hint = f' (did you mean "{close}"?)' if close else ""
                known = ", ".join(fields)
                self.problem(_join(path, key), f"unknown key{hint}; known keys here: {known}")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            key_path = _join(path, name)
            if name in data:
                value = self.value(hints[name], data[name], key_path, f.metadata)
                if value is not _INVALID:
                    values[name] = value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                tp = hints[name]
                if dataclasses.is_dataclass(tp):
                    # A required section: load it from an empty table, so each of its own
                    # required keys is reported by name.
                    self.problem(key_path, f"missing required section [{key_path}]")
                    self.section(tp, {}, key_path)
                else:
                    self.problem(key_path, f"missing required key; expected {_type_name(tp)}")
        if len(values) != len(fields) and any(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in values
            for n, f in fields.items()
        ):
            return None
        try:
            instance = cls(**values)
        except TypeError:
            return None
        validate = getattr(instance, "validate", None)
        if validate is not None:
            # Checks across keys run on the values that loaded (defaults stand in for the
            # rejected ones); a key already reported is not reported twice.
            for key, message in validate():
                key_path = _join(path, key)
                if not any(p.startswith(f"{self.source}: {key_path}:") for p in self.problems):
                    self.problem(key_path, message)
        return instance

    def value(self, tp: Any, data: Any, path: str, meta: Any) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            return self.value(args[0], data, path, meta)
        if dataclasses.is_dataclass(tp):
            result = self.section(tp, data, path)
            return _INVALID if result is None else result
        if origin is dict:
            _, value_tp = get_args(tp)
            if not isinstance(data, dict):
                self.problem(path, f"expected a table, found {describe_value(data)}")
                return _INVALID
            out = {}
            for key, item in data.items():
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", key):
                    self.problem(_join(path, key), "names are 1-32 letters, digits, '_' or '-'")
                    continue
                loaded = self.value(value_tp, item, _join(path, key), {})
                if loaded is not _INVALID:
                    out[key] = loaded
            return out
        if origin is list:
            (item_tp,) = get_args(tp)
            if not isinstance(data, list):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            items = [self.value(item_tp, item, f"{path}[{i}]", meta) for i, item in enumerate(data)]
            return _INVALID if any(i is _INVALID for i in items) else items
        if origin is Literal:
            choices = get_args(tp)
            if data not in choices or isinstance(data, bool):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            return data
        return self.scalar(tp, data, path, meta)

    def scalar(self, tp: Any, data: Any, path: str, meta: Any) -> Any:
        value: Any
        if tp is Duration:
            if not isinstance(data, str):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            try:
                value = Duration.parse(data)
            except ValueError:
                self.problem(path, f"expected {_type_name(tp)} (units ms, s, m, h), found {describe_value(data)}")
                return _INVALID
        elif tp is bool:
            if not isinstance(data, bool):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            value = data
        elif tp is int:
            if isinstance(data, bool) or not isinstance(data, int):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            value = data
        elif tp is float:
            if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            value = float(data)
        elif tp is str:
            if not isinstance(data, str):
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            value = data
        elif tp is Path:
            if not isinstance(data, str) or not data:
                self.problem(path, f"expected {_type_name(tp)}, found {describe_value(data)}")
                return _INVALID
            p = Path(data)
            value = p if p.is_absolute() else (self.base_dir / p)
        else:  # pragma: no cover - a schema bug, not a user error
            raise TypeError(f"config schema: unsupported type {tp!r} at {path}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
            shown = format_duration(value) if tp is Duration else value
            if above is not None and not value > above:
                bound = format_duration(above) if tp is Duration else above
                self.problem(path, f"expected a value above {bound}, found {shown}")
                return _INVALID
            if low is not None and value < low:
                bound = format_duration(low) if tp is Duration else low
                self.problem(path, f"expected a value of at least {bound}, found {shown}")
                return _INVALID
            if high is not None and value > high:
                bound = format_duration(high) if tp is Duration else high
                self.problem(path, f"expected a value of at most {bound}, found {shown}")
                return _INVALID
        return value


_INVALID = object()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _closest(key: str, candidates: typing.Iterable[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.7)
    return matches[0] if matches else None


# --------------------------------------------------------------------------- loading


def parse_config(text: str, source: str = "<memory>", base_dir: Path | None = None) -> Config:
    """Parse and validate config text; raise :class:`ConfigError` listing every problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    loader = _Loader(source, base_dir or Path.cwd())
    config = loader.section(Config, document, "")
    if loader.problems or config is None:
        raise ConfigError(loader.problems or [f"{source}: invalid config"])
    return dataclasses.replace(config, source=Path(source))


def load_config(path: Path | str) -> Config:
    """Load the config file at ``path``; raise :class:`ConfigError` naming it if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: no such file; pass --config PATH (a commented example is examples/lifeline.toml)"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_config(text, str(path), path.resolve().parent)


# --------------------------------------------------------------------------- rendering


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain TOML-able values (durations as strings, paths as strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("internal"):
            continue
        value = getattr(config, f.name)
        if value is not None:  # an unset optional key is simply absent in TOML
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_toml(data: dict[str, Any]) -> str:
    """Write plain nested dicts (from :func:`to_dict`) as TOML; tables after scalars."""
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, path + [key], lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string; every control character escaped (TOML refuses them raw)."""
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
