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
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 and older
    import tomli as tomllib

from daemon.core.acl import RoleSpecError, parse_entry
from daemon.core.config import (  # noqa: F401 - re-exported: the loader and the CLI use them
    UNIX_PATH_MAX,
    ConfigError,
    ListenersConfig,
    NodeConfig,
    closest,
    describe_value,
    dump_toml,
    option,
    parse_host_port,
    to_dict,
)
from daemon.core.durations import Duration, format_duration  # noqa: F401
from daemon.guard.config import GuardConfig  # noqa: F401
from daemon.livedrills import parse_hours, zone
from daemon.standby.config import JournalConfig, LeaseConfig, StandbyConfig  # noqa: F401
from daemon.system_config import SystemConfig  # noqa: F401
from daemon.uplinks.config import UPLINK_KIND_DEFAULTS, FailoverConfig, UplinkConfig  # noqa: F401
from daemon.venues.config import VENUE_PROBE_CALLS, VenueConfig, ccxt_exchange_ids, fencing_problems  # noqa: F401
from daemon.venues.fencing import LeaseBound
from hardware.config import (  # noqa: F401
    EnclosureConfig,
    GnssConfig,
    HardwareConfig,
    HardwareWatchdogConfig,
    UpsConfig,
)
from recovery.config import RecoveryConfig  # noqa: F401

DEFAULT_CONFIG_PATH = Path("/etc/lifeline/lifeline.toml")


# --------------------------------------------------------------------------- sections


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
class EventsConfig:
    subscriber_buffer: int = option(
        1024,
        doc="Events buffered per subscriber; past it the oldest are dropped and counted, "
        "so a slow subscriber never blocks a publisher.",
        min=16, max=1_000_000,
    )


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
    guard: GuardConfig = option(factory=GuardConfig, doc="The trading guard: the signed risk limits on "
                                "journal.append, the circuit breakers ([guard.breakers.NAME]) (issue 19).")

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
            for i, uplink_name in enumerate(venue.uplinks or ()):
                if uplink_name not in self.uplinks:
                    known = ", ".join(self.uplinks) or "none configured"
                    problems.append((f"venues.{name}.uplinks[{i}]", f"no [uplinks.{uplink_name}] (uplinks: {known})"))
        lease = self.standby.lease if self.standby is not None else None
        # Venue-side fencing: each venue's survival bound against the lease (README "Venue-side fencing").
        problems += fencing_problems(self.venues, self.lease_bound())
        if self.hardware is not None and self.hardware.watchdog is not None and lease is not None \
                and lease.watchdog != "off":
            problems.append(("hardware.watchdog", "the lease already drives the watchdog (standby.lease.watchdog): "
                                                  "use one of them, not both"))
        return problems

    def lease_bound(self) -> LeaseBound | None:
        """The lease's timings venue-side fencing needs (None without [standby.lease])."""
        lease = self.standby.lease if self.standby is not None else None
        return None if lease is None else LeaseBound(float(lease.ttl), float(lease.safety_margin),
                                                     float(lease.max_clock_rate_error))

    #: The file this config came from (not a config key).
    source: Path = field(default=Path("<memory>"), metadata={"internal": True}, compare=False)


# --------------------------------------------------------------------------- helpers


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

    def section(self, cls: Any, data: Any, path: str) -> Any:
        where = path or "top level"
        if not isinstance(data, dict):
            self.problem(where, f"expected a table, found {describe_value(data)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        for key in data:
            if key not in fields:
                close = closest(key, fields)
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


