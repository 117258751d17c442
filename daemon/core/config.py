"""The config machinery every section uses: ``option()`` (a field with its documentation and
limits), :class:`ConfigError`, how a found value is shown, ``HOST:PORT``, the host's identity
(:class:`NodeConfig`), and TOML rendering. The root :class:`daemon.config.Config` and the
loader sit on top, in the host."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.core.durations import Duration, format_duration
from daemon.core.errors import LifelineError
from daemon.core.listeners import Limits

#: Longest path a unix socket can bind to (sun_path is 108 bytes, NUL included).
UNIX_PATH_MAX = 107


class ConfigError(LifelineError):
    """The config cannot be used. ``problems`` holds one line per problem, each naming
    the file and the key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


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


def closest(key: str, candidates: Iterable[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.7)
    return matches[0] if matches else None


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
    accept_rate_per_source: float = option(
        1.0, doc="Connections per second one address may open that end without proving the key (or sending "
                 "a request), past its burst; the rest are closed at accept.", above=0, max=1e6)
    accept_burst_per_source: int = option(
        8, doc="How many such connections one address may open before it is paced.", min=1, max=65536)

    def limits(self) -> Limits:
        """As the listeners take them."""
        return Limits(self.max_connections, self.max_per_source, self.max_unauthenticated,
                      self.max_unauthenticated_per_source, float(self.handshake_timeout),
                      float(self.accept_rate_per_source), self.accept_burst_per_source)
