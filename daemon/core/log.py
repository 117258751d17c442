"""Structured logging: one line per event, ``key=value``, to stderr.

Every log line is ``level=LEVEL component=NAME event=WHAT key=value ...``. journald adds
the time, so we do not. When stderr is connected to the journal (systemd sets
``JOURNAL_STREAM`` to the device:inode of that stream), each line starts with the
syslog priority prefix (``<3>`` for errors, ``<6>`` for info, ...) so journald files it
at the right priority (sd-daemon(3)).

Under journald, the daemon also speaks the journal's native protocol (one datagram per
record to ``/run/systemd/journal/socket``, systemd.journal-fields(7)) when that socket
exists: ``MESSAGE=`` is the same key=value line, and each field is a journal field too,
``EVENT=`` (the event's name: ``RoleChanged`` for a bus event, ``metrics.listening``
otherwise), ``COMPONENT=``, ``PRIORITY=``, and the line's own keys upper-cased
(``UPLINK=``, ``ROLE=``, ``VENUE=``, ``EPOCH=`` ...), so ``journalctl -u lifeline
EVENT=RoleChanged`` finds every role change. A datagram the socket does not take (no
journald, a full buffer, a record too large) is written as the stderr line instead.

Values are quoted only when they must be (spaces, quotes, ``=``, newlines, empty), so a
line stays greppable; a multi-line value such as a traceback becomes one line with
``\\n`` escapes, so one event is always one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import struct
import sys
import traceback
from typing import Any, TextIO

# syslog priorities (sd-daemon(3), SD_ERR etc.)
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}

LEVELS = {name: level for level, name in _LEVEL_NAMES.items()}


def format_value(value: Any) -> str:
    """Render one value for a key=value line: bare when safe, JSON-quoted otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' "=\n\r\t\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def human(value: Any) -> str:
    """One value as a person reads it: no Python reprs (``['OL']`` is ``OL``, None is
    ``-``), floats rounded to what matters (0.693845 ms is 0.694, 230.0 V is 230)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ",".join(human(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={human(v)}" for k, v in value.items()) or "-"
    return str(value)


def format_table(data: dict[str, Any], prefix: str = "") -> str:
    """``data`` as aligned ``name  value`` lines, nested tables flattened to ``a.b`` (the
    CLI's tables: `lifeline journal stats`, `lifeline hardware read`)."""
    rows: list[tuple[str, str]] = []

    def walk(item: dict[str, Any], path: str) -> None:
        for key, value in item.items():
            name = f"{path}{key}"
            if isinstance(value, dict) and value:
                walk(value, name + ".")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, entry in enumerate(value):
                    walk(entry, f"{name}[{i}].")
            else:
                rows.append((name, human(value)))

    walk(data, prefix)
    width = max((len(name) for name, _ in rows), default=0)
    return "".join(f"{name:<{width}}  {value}\n" for name, value in rows)


def format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in fields.items())


class KeyValueFormatter(logging.Formatter):
    """Formats records made by :class:`Logger` (and any stray stdlib record) as one line."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "component": record.name.removeprefix("lifeline."),
        }
        event = getattr(record, "event", None)
        if event is None:
            # A record from a library logger: keep its message as a field.
            fields["event"] = "library.log"
            fields["msg"] = record.getMessage()
        else:
            fields["event"] = event
            fields.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            fields["traceback"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        line = format_fields(fields)
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class Logger:
    """A component's logger: ``log.info("route.changed", uplink="starlink", took_ms=312)``."""

    def __init__(self, component: str) -> None:
        self._logger = logging.getLogger(f"lifeline.{component}")

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"event": event, "fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log at error level with the exception being handled and its traceback."""
        self._emit(logging.ERROR, event, fields, exc_info=True)


#: journald's native socket (sd_journal_sendv(3)).
JOURNAL_SOCKET = "/run/systemd/journal/socket"

#: Fields the journal handler sets itself; a record's key with one of these names is left
#: to MESSAGE.
_OWN_FIELDS = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "EVENT", "COMPONENT", "LEVEL"})


def _journal_name(key: str) -> str | None:
    """``key`` as a journal field name (upper case, digits, underscores; not starting with
    an underscore or digit, at most 64 characters), or None if it has no such form."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_0123456789")[:64]
    return name if name and name not in _OWN_FIELDS else None


def _journal_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def journal_fields(record: logging.LogRecord, message: str) -> list[tuple[str, str]]:
    """The journal fields of one record (its key=value line is ``message``)."""
    event = getattr(record, "event", None)
    fields: list[tuple[str, str]] = [
        ("MESSAGE", message),
        ("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
        ("SYSLOG_IDENTIFIER", "lifeline"),
        ("COMPONENT", record.name.removeprefix("lifeline.")),
        ("EVENT", "library.log" if event is None else str(event).removeprefix("event.")),
    ]
    seen = {name for name, _ in fields}
    for key, value in (getattr(record, "fields", None) or {}).items():
        name, text = _journal_name(str(key)), _journal_text(value)
        if name is not None and text is not None and name not in seen:
            seen.add(name)
            fields.append((name, text))
    return fields


def encode_journal(fields: list[tuple[str, str]]) -> bytes:
    """The native protocol's datagram: ``NAME=value\\n``, or for a value with a newline
    ``NAME\\n`` + its length (64-bit little-endian) + the value + ``\\n``."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald's socket with its structured fields; whatever the
    socket does not take goes to ``fallback`` (the stderr line) instead, so nothing is
    lost and logging never blocks the daemon (the socket is non-blocking)."""

    def __init__(self, path: str | os.PathLike[str], fallback: logging.Handler) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.fallback = fallback
        self.line = KeyValueFormatter(journal=False)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.sent = 0
        self.fell_back = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            datagram = encode_journal(journal_fields(record, self.line.format(record)))
        except Exception:
            self.handleError(record)
            return
        try:
            self.sock.sendto(datagram, self.path)
            self.sent += 1
        except OSError:  # no journald, a full buffer, too large: the plain line instead
            self.fell_back += 1
            self.fallback.handle(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def get_logger(component: str) -> Logger:
    return Logger(component)


def running_under_journald(stream: TextIO = sys.stderr) -> bool:
    """True when ``stream`` is the journal stream systemd handed us (``JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def setup(level: str = "info", journal: bool | None = None, stream: TextIO | None = None,
          journal_socket: str | os.PathLike[str] | None = None) -> None:
    """Send every lifeline (and library) record to stderr as key=value lines; under
    journald (``JOURNAL_STREAM`` names ``stream``) to the journal's socket with fields,
    if it exists. ``journal_socket``: use that socket whatever the environment."""
    stream = stream if stream is not None else sys.stderr
    detected = journal is None
    if journal is None:
        journal = running_under_journald(stream)
    lines = logging.StreamHandler(stream)
    lines.setFormatter(KeyValueFormatter(journal=journal))
    handler: logging.Handler = lines
    if journal_socket is not None:
        handler = JournalHandler(journal_socket, fallback=lines)
    elif detected and journal and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler(JOURNAL_SOCKET, fallback=lines)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, JournalHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and up
    logging.getLogger("lifeline").setLevel(LEVELS.get(level, logging.INFO))
