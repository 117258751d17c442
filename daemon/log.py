"""Structured logging: one line per event, ``key=value``, to stderr.

Every log line is ``level=LEVEL component=NAME event=WHAT key=value ...``. journald adds
the time, so we do not. When stderr is connected to the journal (systemd sets
``JOURNAL_STREAM`` to the device:inode of that stream), each line starts with the
syslog priority prefix (``<3>`` for errors, ``<6>`` for info, ...) so journald files it
at the right priority (sd-daemon(3)).

Values are quoted only when they must be (spaces, quotes, ``=``, newlines, empty), so a
line stays greppable; a multi-line value such as a traceback becomes one line with
``\\n`` escapes, so one event is always one line.
"""

from __future__ import annotations

import json
import logging
import os
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


def setup(level: str = "info", journal: bool | None = None, stream: TextIO | None = None) -> None:
    """Send every lifeline (and library) record to stderr as key=value lines."""
    stream = stream if stream is not None else sys.stderr
    if journal is None:
        journal = running_under_journald(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter(journal=journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and up
    logging.getLogger("lifeline").setLevel(LEVELS.get(level, logging.INFO))
