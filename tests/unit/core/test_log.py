"""Structured logging: one key=value line per event, quoted only when needed, journald
priority prefixes, and JOURNAL_STREAM detection against a real file's dev:ino."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.core import log as lifelog
from daemon.core.log import format_fields, format_value, get_logger, running_under_journald, setup


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    lifeline = logging.getLogger("lifeline")
    saved = (list(root.handlers), root.level, lifeline.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    lifeline.setLevel(saved[2])


def capture(level: str = "debug", journal: bool = False) -> io.StringIO:
    stream = io.StringIO()
    setup(level, journal=journal, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("starlink", "starlink"),
        (42, "42"),
        (3.5, "3.5"),
        (0.1 + 0.2, "0.3"),
        (True, "true"),
        (False, "false"),
        (None, "-"),
        (["fibre", "starlink"], "fibre,starlink"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line1\nline2", '"line1\\nline2"'),
        ("tab\there", '"tab\\there"'),
        ("back\\slash", '"back\\\\slash"'),
        ("bell\x07", '"bell\\u0007"'),
        ("café", "café"),
        (Path("/run/lifeline/control.sock"), "/run/lifeline/control.sock"),
    ],
)
def test_format_value(value: object, expected: str) -> None:
    assert format_value(value) == expected


def test_quoted_values_read_back_as_json() -> None:
    for text in ['a "b" c', "x=1 y=2", "multi\nline\r\n", "  ", "\\"]:
        quoted = format_value(text)
        assert "\n" not in quoted
        assert json.loads(quoted) == text


def test_format_fields_keeps_order() -> None:
    assert format_fields({"uplink": "starlink", "took_ms": 312, "ok": True, "why": "3 lost probes"}) == (
        'uplink=starlink took_ms=312 ok=true why="3 lost probes"'
    )


# --- lines --------------------------------------------------------------------------------


def test_one_line_per_event_key_value(restore_logging: None) -> None:
    stream = capture()
    logger = get_logger("uplinks")
    logger.info("route.changed", uplink="starlink", took_ms=312, reason="fibre DOWN after 3 lost probes",
                primary=False, previous=None)
    logger.warning("probe.lost", target="1.1.1.1")
    out = lines(stream)
    assert out == [
        'level=info component=uplinks event=route.changed uplink=starlink took_ms=312 '
        'reason="fibre DOWN after 3 lost probes" primary=false previous=-',
        "level=warning component=uplinks event=probe.lost target=1.1.1.1",
    ]
    # Every line splits into key=value pairs the way a shell would read it.
    for line in out:
        for token in shlex.split(line):
            assert re.fullmatch(r"[a-z_]+=.*", token), token


def test_values_with_quotes_equals_and_newlines_stay_on_one_line(restore_logging: None) -> None:
    stream = capture()
    get_logger("control").info("request", body='{"method": "x"}', query="a=b", text="one\ntwo")
    (line,) = lines(stream)
    assert line == (
        'level=info component=control event=request body="{\\"method\\": \\"x\\"}" query="a=b" text="one\\ntwo"'
    )


def test_level_filtering(restore_logging: None) -> None:
    stream = capture("warning")
    logger = get_logger("x")
    logger.debug("hidden")
    logger.info("hidden")
    logger.warning("shown")
    assert lines(stream) == ["level=warning component=x event=shown"]


def test_exception_traceback_is_folded_into_one_line(restore_logging: None) -> None:
    stream = capture()
    logger = get_logger("control")

    def handler() -> None:
        raise ValueError('bad "thing"\nsecond line')

    try:
        handler()
    except ValueError:
        logger.exception("control.handler_failed", method="status")
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    (line,) = lines(stream)
    assert line.startswith("level=error component=control event=control.handler_failed method=status error=")
    match = re.search(r" traceback=(\".*\")$", line)
    assert match, line
    traceback_text = json.loads(match.group(1))
    assert traceback_text.startswith("Traceback (most recent call last):")
    assert "in handler" in traceback_text
    assert traceback_text.count("\n") >= 3
    assert traceback_text.endswith('ValueError: bad "thing"\nsecond line')


def test_library_records_are_kept_as_msg(restore_logging: None) -> None:
    stream = capture()
    logging.getLogger("trio.somewhere").warning("something %s happened", "odd")
    logging.getLogger("chatty").info("libraries below warning are dropped")
    assert lines(stream) == ['level=warning component=trio.somewhere event=library.log msg="something odd happened"']


def test_journal_priority_prefixes(restore_logging: None) -> None:
    stream = capture(journal=True)
    logger = get_logger("x")
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    logger.error("e")
    logging.getLogger("lib").critical("c")
    out = lines(stream)
    assert [line[:3] for line in out] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert out[1] == "<6>level=info component=x event=i"
    assert out[3] == "<3>level=error component=x event=e"


def test_no_prefix_without_journal(restore_logging: None) -> None:
    stream = capture(journal=False)
    get_logger("x").error("e")
    assert lines(stream) == ["level=error component=x event=e"]


# --- JOURNAL_STREAM --------------------------------------------------------------------


def test_running_under_journald_matches_dev_and_inode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert running_under_journald(stream) is True
        assert running_under_journald(other) is False  # same device, different inode

        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev + 1}:{st.st_ino}")
        assert running_under_journald(stream) is False
        for junk in ("", "garbage", "1:x", ":", f"{st.st_ino}"):
            monkeypatch.setenv("JOURNAL_STREAM", junk)
            assert running_under_journald(stream) is False
        monkeypatch.delenv("JOURNAL_STREAM")
        assert running_under_journald(stream) is False

        # A stream without a file descriptor is never the journal.
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert running_under_journald(io.StringIO()) is False  # type: ignore[arg-type]


def test_setup_detects_the_journal_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    monkeypatch.setattr(lifelog, "JOURNAL_SOCKET", str(tmp_path / "no-journald"))  # the stream, prefixed
    with open(tmp_path / "journal", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup("info", stream=stream)
        get_logger("x").error("boom")
        get_logger("x").info("fine")
    with open(tmp_path / "plain", "w") as stream:
        setup("info", stream=stream)
        get_logger("x").error("boom")
    assert (tmp_path / "journal").read_text() == "<3>level=error component=x event=boom\n<6>level=info component=x event=fine\n"
    assert (tmp_path / "plain").read_text() == "level=error component=x event=boom\n"


def test_levels_table() -> None:
    assert lifelog.LEVELS["info"] == logging.INFO
    assert lifelog.LEVELS["error"] == logging.ERROR


# --- journald's native protocol ----------------------------------------------------------


def parse_journal(datagram: bytes) -> dict[str, str]:
    """The native protocol, decoded independently of daemon.core.log (systemd's
    sd_journal_sendv(3) format): NAME=value lines, or NAME, newline, 64-bit LE length,
    value, newline."""
    import struct

    fields: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        end = datagram.index(b"\n", i)
        line = datagram[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", datagram[end + 1:end + 9])
            value = datagram[end + 9:end + 9 + size]
            assert datagram[end + 9 + size:end + 10 + size] == b"\n"
            i = end + 10 + size
        assert re.fullmatch(rb"[A-Z][A-Z0-9_]{0,63}", name), name
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[socket.socket]:
    """A real datagram socket standing in for journald's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.socket"))
    sock.settimeout(2)
    try:
        yield sock
    finally:
        sock.close()


def test_records_go_to_the_journal_socket_with_fields(
    tmp_path: Path, journald: socket.socket, restore_logging: None
) -> None:
    from daemon.core.events import RoleChanged, log_event

    stream = io.StringIO()
    setup("info", stream=stream, journal_socket=tmp_path / "journal.socket")
    log_event(RoleChanged(source="standby", node="edge-a", role="primary", previous="candidate", epoch=7,
                          reason="lease granted", monotonic_ns=1))
    get_logger("uplinks").warning("uplink.odd", uplink="starlink", note="two\nlines", skipped=None)
    first = parse_journal(journald.recv(65536))
    assert first["EVENT"] == "RoleChanged"
    assert first["ROLE"] == "primary" and first["EPOCH"] == "7" and first["NODE"] == "edge-a"
    assert first["PRIORITY"] == "6" and first["COMPONENT"] == "events" and first["SYSLOG_IDENTIFIER"] == "lifeline"
    assert first["MESSAGE"].startswith("level=info component=events event=event.RoleChanged ")
    second = parse_journal(journald.recv(65536))
    assert second["EVENT"] == "uplink.odd" and second["UPLINK"] == "starlink" and second["PRIORITY"] == "4"
    assert second["NOTE"] == "two\nlines"  # the length-prefixed form
    assert "SKIPPED" not in second
    assert stream.getvalue() == ""  # not written twice


def test_journal_socket_gone_falls_back_to_the_stream(tmp_path: Path, restore_logging: None) -> None:
    stream = io.StringIO()
    setup("info", stream=stream, journal=True, journal_socket=tmp_path / "nobody-listens")
    get_logger("x").error("boom", uplink="fibre")
    assert stream.getvalue() == "<3>level=error component=x event=boom uplink=fibre\n"


def test_under_journald_setup_uses_the_socket_when_it_exists(
    tmp_path: Path, journald: socket.socket, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    monkeypatch.setattr(lifelog, "JOURNAL_SOCKET", str(tmp_path / "journal.socket"))
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup("info", stream=stream)
        get_logger("standby").info("role.changed", role="fenced")
    assert parse_journal(journald.recv(65536))["ROLE"] == "fenced"
    assert (tmp_path / "stream").read_text() == ""
    # Not under journald (no JOURNAL_STREAM): plain lines, the socket untouched.
    monkeypatch.delenv("JOURNAL_STREAM")
    stream2 = io.StringIO()
    setup("info", stream=stream2)
    get_logger("standby").info("role.changed", role="primary")
    assert stream2.getvalue() == "level=info component=standby event=role.changed role=primary\n"
    journald.settimeout(0.05)
    with pytest.raises(TimeoutError):
        journald.recv(65536)
