"""The audit chain (recovery/audit.py): the writer, the host key, and a verifier that
names the first broken link of any tampered chain."""

from __future__ import annotations

import base64
import datetime as dt
import enum
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recovery import audit as audit_mod
from recovery.audit import (
    AUDIT_CONTEXT,
    BAD_SIGNATURE,
    DELETED,
    GENESIS,
    INSERTED,
    MODIFIED,
    NOT_JSON,
    REASONS,
    REORDERED,
    TORN,
    AuditError,
    AuditLog,
    canonical_json,
    entry_hash,
    format_entry,
    format_public_key,
    key_fingerprint,
    load_or_create_host_key,
    parse_public_key,
    read_public_key,
    show_lines,
    verify_audit,
    verify_audit_bytes,
)

HOST = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
PUB = HOST.public_key()
CHAIN_LEN = 12


def _build(key: Ed25519PrivateKey, count: int, salt: str) -> bytes:
    """The bytes of a valid chain of ``count`` entries written by AuditLog."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        with AuditLog(path, key, fsync=False, clock=lambda: 1_790_000_000.25) as log:
            for i in range(count):
                log.append("step", playbook=f"fibre-lost-{salt}", step=i, result="ok", duration_ms=12.5 * i,
                           note="écrit ✓ \x1f" if i % 3 == 0 else None, args={"name": "starlink", "n": [i]})
        return path.read_bytes()


BASE = _build(HOST, CHAIN_LEN, "a")
ALT = _build(HOST, CHAIN_LEN, "b")  # another chain, same host key
FORGED = _build(OTHER, CHAIN_LEN, "a")  # the same content, written without the host key


def split(data: bytes) -> list[bytes]:
    """Lines with their newlines."""
    return data.splitlines(keepends=True)


BASE_LINES = split(BASE)
ALT_LINES = split(ALT)
FORGED_LINES = split(FORGED)


def chain(n: int) -> list[bytes]:
    return list(BASE_LINES[:n])


def check(lines: list[bytes], key: Any = PUB) -> audit_mod.AuditReport:
    return verify_audit_bytes(b"".join(lines), key)


def first_difference(a: list[bytes], b: list[bytes]) -> int:
    """1-based number of the first line where a and b differ."""
    for i, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return i
    return min(len(a), len(b)) + 1


def one_line(report: audit_mod.AuditReport) -> str:
    broken = [line for line in report.lines if line.startswith("BROKEN")]
    assert len(broken) == 1 and "\n" not in broken[0]
    return broken[0]


# ------------------------------------------------------------------------------ intact chains


@given(st.integers(0, CHAIN_LEN))
def test_every_prefix_of_a_valid_chain_verifies(n: int) -> None:
    report = check(chain(n))
    assert report.ok and report.first_break is None
    assert [e["seq"] for e in report.entries] == list(range(1, n + 1))
    assert report.lines[-1].startswith("OK: ")


def test_the_format_is_the_contract() -> None:
    entries = [json.loads(line) for line in BASE_LINES]
    for n, (entry, raw) in enumerate(zip(entries, BASE_LINES), 1):
        assert set(entry) == {"seq", "time", "kind", "fields", "prev", "hash", "sig"}
        assert raw == (json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        assert entry["seq"] == n
        assert entry["prev"] == (GENESIS if n == 1 else entries[n - 2]["hash"])
        body = {k: entry[k] for k in ("seq", "time", "kind", "fields", "prev")}
        assert entry["hash"] == hashlib.sha256(b"\x00" + canonical_json(body).encode()).hexdigest()
        PUB.verify(base64.b64decode(entry["sig"]), b"lifeline-audit-v1\0" + bytes.fromhex(entry["hash"]))
        assert entry["time"] == "2026-09-21T14:13:20.250Z"
    assert AUDIT_CONTEXT == b"lifeline-audit-v1\0"
    assert "écrit ✓" in BASE.decode("utf-8")  # non-ASCII kept as is


def test_empty_log_is_a_valid_chain() -> None:
    report = verify_audit_bytes(b"", PUB)
    assert report.ok and report.entries == [] and report.head == (0, GENESIS)


# ------------------------------------------------------------------------------ tampering: properties


@given(st.data())
def test_any_deleted_lines_are_found(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, CHAIN_LEN), label="n")
    k = data.draw(st.integers(1, n - 1), label="first deleted line")
    count = data.draw(st.integers(1, n - k), label="lines deleted")  # never through the last line: see below
    lines = chain(n)
    del lines[k - 1:k - 1 + count]
    report = check(lines)
    assert not report.ok
    assert report.first_break == (k, DELETED)
    assert len(report.entries) == k - 1
    missing = f"seq {k}" if count == 1 else f"seq {k}..{k + count - 1}"
    assert f"BROKEN at line {k} (deleted): {missing} missing" in one_line(report)


def test_a_cut_tail_is_visible_only_against_a_head_noted_earlier() -> None:
    """The documented limit: the first n-1 entries are a valid chain. The report prints
    the head so that an operator can compare it with one noted before."""
    full, cut = check(chain(5)), check(chain(4))
    assert cut.ok and cut.head[0] == 4 and cut.head != full.head
    assert f"head seq 4 hash {cut.head[1][:16]}" in cut.lines[-1]


@given(st.data())
def test_any_reordering_is_found_at_the_first_moved_line(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, CHAIN_LEN), label="n")
    order = data.draw(st.permutations(range(n)), label="order")
    assume(order != list(range(n)))
    original = chain(n)
    lines = [original[i] for i in order]
    report = check(lines)
    expected = first_difference(lines, original)
    assert report.first_break == (expected, REORDERED)
    assert len(report.entries) == expected - 1


@given(st.data())
def test_any_swap_of_two_lines_is_found(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, CHAIN_LEN), label="n")
    i = data.draw(st.integers(1, n - 1), label="i")
    j = data.draw(st.integers(i + 1, n), label="j")
    lines = chain(n)
    lines[i - 1], lines[j - 1] = lines[j - 1], lines[i - 1]
    report = check(lines)
    assert report.first_break == (i, REORDERED)
    assert f"seq {j} where seq {i} belongs" in one_line(report)


garbage = st.one_of(
    st.text(max_size=60).map(lambda t: t.replace("\n", " ").encode("utf-8")),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")),
    st.dictionaries(st.sampled_from(["seq", "time", "kind", "fields", "prev", "hash", "sig", "x"]),
                    st.one_of(st.integers(0, 20), st.text(max_size=8), st.none()), max_size=8)
    .map(lambda d: json.dumps(d).encode()),
)


@given(st.data())
def test_any_inserted_line_is_found(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, CHAIN_LEN - 1), label="n")
    k = data.draw(st.integers(1, n + 1), label="inserted as line")
    source = data.draw(st.sampled_from(["copy", "future", "other chain", "forged", "garbage"]), label="source")
    original = chain(n)
    if source == "copy":  # a replayed line of this chain
        new = BASE_LINES[data.draw(st.integers(0, n - 1), label="copy of")]
    elif source == "future":  # a genuine entry from later in this chain
        new = BASE_LINES[data.draw(st.integers(n, CHAIN_LEN - 1), label="entry")]
        assume(not (k == n + 1 and new == BASE_LINES[n]))  # the true next entry at the end is no tampering
    elif source == "other chain":  # signed with the host key, but from another chain
        new = ALT_LINES[data.draw(st.integers(0, CHAIN_LEN - 1), label="entry")]
    elif source == "forged":
        new = FORGED_LINES[data.draw(st.integers(0, CHAIN_LEN - 1), label="entry")]
    else:
        new = data.draw(garbage, label="garbage") + b"\n"
    lines = original[:k - 1] + [new] + original[k - 1:]
    report = check(lines)
    assert not report.ok
    expected = first_difference(lines, original)
    fork = source == "other chain" and k == 1 and new == ALT_LINES[0]
    if fork:
        # Two entries with seq 1 after the genesis: the first one is taken as the chain,
        # the second is reported (which of the two was inserted cannot be told).
        expected = 2
    assert report.first_break is not None and report.first_break[0] == expected
    reason = report.first_break[1]
    if source == "copy":
        assert reason == INSERTED
    elif source == "other chain":
        # At the end, an entry numbered beyond the next seq reads as a gap: deleted.
        assert reason == (DELETED if k == n + 1 and json.loads(new)["seq"] > n + 1 else INSERTED)
    elif source == "future":
        if k == n + 1:
            assert reason == DELETED  # entries n+1.. of the chain are missing before it
        elif new == BASE_LINES[n]:
            assert reason == REORDERED  # the same file as the chain of n+1 with its last entry moved up
        else:
            assert reason == INSERTED  # the entry it links to is in no line
    elif source == "forged":
        assert reason == BAD_SIGNATURE
    else:
        assert reason in (NOT_JSON, MODIFIED)
    one_line(report)


@given(st.data())
@settings(max_examples=300)
def test_any_modified_byte_is_found_on_its_line(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, CHAIN_LEN), label="n")
    blob = bytearray(b"".join(chain(n)))
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[pos]), label="new byte")
    line_no = blob[:pos].count(b"\n") + 1
    was_newline = blob[pos] == ord("\n")
    blob[pos] = value
    report = verify_audit_bytes(bytes(blob), PUB)
    assert not report.ok
    assert report.first_break is not None and report.first_break[0] == line_no
    allowed = {MODIFIED, NOT_JSON, BAD_SIGNATURE} | ({TORN} if was_newline and line_no == n else set())
    assert report.first_break[1] in allowed
    assert len(report.entries) == line_no - 1


@given(st.integers(1, CHAIN_LEN))
def test_a_forged_self_consistent_chain_fails_on_the_signature(n: int) -> None:
    forged = FORGED_LINES[:n]
    assert check(forged, OTHER.public_key()).ok  # consistent in itself
    report = check(forged)
    assert report.first_break == (1, BAD_SIGNATURE)
    assert f"does not verify with key {key_fingerprint(PUB)}" in one_line(report)


# ------------------------------------------------------------------------------ tampering: targeted


def _entry(line: bytes) -> dict[str, Any]:
    return json.loads(line)


def _line(entry: dict[str, Any]) -> bytes:
    return (canonical_json(entry) + "\n").encode()


def test_a_changed_field_is_modified_and_a_rehashed_one_a_bad_signature() -> None:
    lines = chain(5)
    entry = _entry(lines[2])
    entry["fields"]["result"] = "failed"
    changed = lines[:2] + [_line(entry)] + lines[3:]
    report = check(changed)
    assert report.first_break == (3, MODIFIED)
    assert "content of entry seq 3 does not match its hash" in one_line(report)
    entry["hash"] = entry_hash(entry)  # consistent again, but nobody could sign it
    rehashed = lines[:2] + [_line(entry)] + lines[3:]
    assert check(rehashed).first_break == (3, BAD_SIGNATURE)


def test_an_appended_entry_signed_with_another_key_is_a_bad_signature() -> None:
    lines = chain(4)
    head = _entry(lines[-1])
    body = {"seq": 5, "time": head["time"], "kind": "finished", "fields": {"outcome": "ok"}, "prev": head["hash"]}
    digest = entry_hash(body)
    sig = base64.b64encode(OTHER.sign(AUDIT_CONTEXT + bytes.fromhex(digest))).decode()
    report = check(lines + [_line({**body, "hash": digest, "sig": sig})])
    assert report.first_break == (5, BAD_SIGNATURE)


def test_a_signature_under_another_context_does_not_verify() -> None:
    lines = chain(2)
    entry = _entry(lines[1])
    entry["sig"] = base64.b64encode(HOST.sign(b"lifeline-playbook-signature-v1\0" + bytes.fromhex(entry["hash"]))
                                    ).decode()
    assert check(lines[:1] + [_line(entry)]).first_break == (2, BAD_SIGNATURE)


def test_base64_with_other_unused_bits_is_a_bad_signature() -> None:
    """64 bytes in base64 end in a character with 4 unused bits: another character there
    decodes to the same bytes. The verifier wants the canonical spelling."""
    lines = chain(3)
    entry = _entry(lines[1])
    sig = entry["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(sig[-3])
    entry["sig"] = sig[:-3] + alphabet[last ^ 0b0001] + "=="
    assert base64.b64decode(entry["sig"]) == base64.b64decode(sig)
    assert check(lines[:1] + [_line(entry)] + lines[2:]).first_break == (2, BAD_SIGNATURE)


def test_a_line_not_in_canonical_form_is_modified_even_when_it_parses_the_same() -> None:
    lines = chain(1)
    assert b"\\u001f" in lines[0]
    variant = lines[0].replace(b"\\u001f", b"\\u001F")
    assert json.loads(variant) == json.loads(lines[0])
    report = check([variant])
    assert report.first_break == (1, MODIFIED)
    assert "not in the exact form the log writes" in one_line(report)
    spaced = canonical_json(_entry(lines[0])).replace(",", ", ").encode() + b"\n"
    assert check([spaced]).first_break == (1, MODIFIED)


@pytest.mark.parametrize("raw, reason, words", [
    (b"", NOT_JSON, "an empty line"),
    (b"\xff\xfe", NOT_JSON, "not UTF-8"),
    (b'{"seq": 1', NOT_JSON, "not valid JSON"),
    (b'{"seq": NaN}', NOT_JSON, "NaN is not JSON"),
    (b"[1, 2]", MODIFIED, "not an audit entry"),
    (b'{"seq": 1}', MODIFIED, "no 'fields', 'hash'"),
])
def test_lines_that_are_no_entry(raw: bytes, reason: str, words: str) -> None:
    report = check(chain(2) + [raw + b"\n"] + BASE_LINES[2:4])
    assert report.first_break == (3, reason)
    assert words in one_line(report)


def test_a_duplicated_line_names_its_original() -> None:
    lines = chain(4)
    report = check(lines[:3] + [lines[1]] + lines[3:])
    assert report.first_break == (4, INSERTED)
    assert "a copy of line 2 (seq 2)" in one_line(report)


def test_reasons_are_the_documented_ones() -> None:
    assert set(REASONS) == {"modified", "deleted", "inserted", "reordered", "bad signature", "not JSON", "torn"}


def test_verify_audit_reads_a_file_and_names_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(chain(3)))
    assert verify_audit(path, PUB).ok
    with pytest.raises(AuditError, match=r"missing\.jsonl: no such file; pass --log"):
        verify_audit(tmp_path / "missing.jsonl", PUB)


# ------------------------------------------------------------------------------ the writer


def test_append_returns_what_the_file_holds_and_fields_become_plain(tmp_path: Path) -> None:
    class Color(enum.Enum):
        RED = "red"

    path = tmp_path / "recovery" / "audit.jsonl"
    with AuditLog(path, HOST, fsync=False) as log:
        entry = log.append("verify.ok", kind="field named kind", path=tmp_path, raw=b"\x01\xff", tags={"b", "a"},
                           nan=float("nan"), color=Color.RED, when=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                           lone="\ud800x", nested={1: (1, 2)})
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == entry
    assert entry["kind"] == "verify.ok"
    assert entry["fields"] == {"kind": "field named kind", "path": str(tmp_path), "raw": "01ff", "tags": ["a", "b"],
                               "nan": "nan", "color": "red", "when": "2026-01-02T00:00:00+00:00", "lone": "?x",
                               "nested": {"1": [1, 2]}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert verify_audit(path, PUB).ok


@given(st.lists(st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(max_size=20),
                 lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                                    max_size=3),
                 max_leaves=8),
    max_size=4), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_any_json_fields_round_trip_and_verify(field_sets: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        with AuditLog(path, HOST, fsync=False) as log:
            written = [log.append("step", **fields) for fields in field_sets]
        report = verify_audit(path, PUB)
    assert report.ok
    assert report.entries == written
    assert [e["fields"] for e in written] == field_sets


def test_reopening_continues_seq_and_prev(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, HOST, fsync=False) as log:
        first = [log.append("step", n=i) for i in range(3)]
        assert (log.last_seq, log.last_hash) == (3, first[-1]["hash"])
    with AuditLog(path, HOST, fsync=False) as log:
        assert (log.last_seq, log.last_hash, log.recovery) == (3, first[-1]["hash"], None)
        nxt = log.append("step", n=3)
    assert (nxt["seq"], nxt["prev"]) == (4, first[-1]["hash"])
    report = verify_audit(path, PUB)
    assert report.ok and [e["seq"] for e in report.entries] == [1, 2, 3, 4]


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a = AuditLog(path, HOST, fsync=False)
    b = AuditLog(path, HOST, fsync=False)
    try:
        for i in range(4):
            a.append("a", i=i)
            b.append("b", i=i)
    finally:
        a.close()
        b.close()
    report = verify_audit(path, PUB)
    assert report.ok and [e["kind"] for e in report.entries] == ["a", "b"] * 4


@given(st.integers(1, 6), st.data())
@settings(max_examples=40, deadline=None)
def test_a_torn_last_line_is_reported_then_cut_on_open(n: int, data: st.DataObject) -> None:
    intact = b"".join(chain(n))
    partial = data.draw(st.integers(1, len(BASE_LINES[n]) - 1), label="bytes of the torn line")
    torn = intact + BASE_LINES[n][:partial]
    report = verify_audit_bytes(torn, PUB)
    assert report.first_break == (n + 1, TORN) and len(report.entries) == n
    assert "an interrupted append" in one_line(report)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        path.write_bytes(torn)
        with AuditLog(path, HOST, fsync=False) as log:
            assert log.recovery is not None
            assert (log.recovery.offset, log.recovery.bytes_dropped, log.recovery.last_seq) == (len(intact), partial, n)
            assert "cut a torn last line" in str(log.recovery)
            assert path.read_bytes() == intact
            entry = log.append("step", after="torn")
        assert (entry["seq"], entry["prev"]) == (n + 1, json.loads(BASE_LINES[n - 1])["hash"])
        assert verify_audit(path, PUB).ok


def test_a_torn_only_line_leaves_an_empty_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"fields":{')
    with AuditLog(path, HOST, fsync=False) as log:
        assert log.recovery is not None and log.recovery.last_seq == 0
        assert log.append("step")["seq"] == 1


def test_the_writer_cuts_a_torn_tail_another_writer_left(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, HOST, fsync=False) as log:
        log.append("step", n=1)
        with open(path, "ab") as f:  # another writer died mid-append
            f.write(b'{"fields":{"n":2')
        assert log.append("step", n=3)["seq"] == 2
        assert log.recovery is not None
    assert verify_audit(path, PUB).ok


def test_a_damaged_last_line_refuses_to_continue(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = chain(3)
    path.write_bytes(b"".join(lines[:2]) + lines[2].replace(b'"step"', b'"stop"'))
    with pytest.raises(AuditError, match=r"audit\.jsonl: the last entry is damaged \(modified: .*move the file aside"):
        AuditLog(path, HOST, fsync=False)


def test_a_log_signed_by_another_host_key_refuses_to_continue(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(chain(2)))
    with pytest.raises(AuditError, match=r"bad signature"):
        AuditLog(path, OTHER, fsync=False)


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, HOST) as log:
        log.append("step", n=1)
        before = path.read_bytes()
        real_fsync = os.fsync

        calls = []

        def failing(fd: int) -> None:  # the append's fsync fails; the undo's works
            calls.append(fd)
            if len(calls) == 1:
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        monkeypatch.setattr(audit_mod.os, "fsync", failing)
        with pytest.raises(AuditError, match=r"cannot append entry seq 2 \(step\): EIO"):
            log.append("step", n=2)
        monkeypatch.setattr(audit_mod.os, "fsync", real_fsync)
        assert path.read_bytes() == before
        assert log.append("step", n=3)["seq"] == 2
    assert verify_audit(path, PUB).ok


def test_closed_log_and_bad_kind(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", HOST, fsync=False)
    with pytest.raises(ValueError, match="kind must be a non-empty string"):
        log.append("")
    log.close()
    log.close()
    assert log.closed
    with pytest.raises(AuditError, match="closed"):
        log.append("step")


# ------------------------------------------------------------------------------ host key


def test_host_key_is_made_once_with_the_documented_files(tmp_path: Path) -> None:
    key, pub_path = load_or_create_host_key(tmp_path)
    key_path = tmp_path / "recovery" / "host.key"
    assert pub_path == tmp_path / "recovery" / "host.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert pub_path.read_text() == f"lifeline-ed25519 {base64.b64encode(raw).decode()} host\n"
    again, _ = load_or_create_host_key(tmp_path)
    assert again.private_bytes_raw() == key.private_bytes_raw()
    assert read_public_key(pub_path).public_bytes_raw() == raw
    assert not list((tmp_path / "recovery").glob(".*tmp"))


def test_host_pub_is_rewritten_to_match_the_key(tmp_path: Path) -> None:
    _key, pub_path = load_or_create_host_key(tmp_path)
    expected = pub_path.read_text()
    pub_path.write_text(format_public_key(OTHER.public_key()))
    load_or_create_host_key(tmp_path)
    assert pub_path.read_text() == expected
    pub_path.unlink()
    load_or_create_host_key(tmp_path)
    assert pub_path.read_text() == expected


def test_unusable_host_keys_are_refused_with_the_fix(tmp_path: Path) -> None:
    load_or_create_host_key(tmp_path)
    key_path = tmp_path / "recovery" / "host.key"
    key_path.chmod(0o640)
    with pytest.raises(AuditError, match=r"host\.key: .*group or others \(mode 0640\); fix it with `chmod 600 "):
        load_or_create_host_key(tmp_path)
    key_path.chmod(0o600)
    key_path.write_bytes(HOST.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(AuditError, match="encrypted"):
        load_or_create_host_key(tmp_path)
    key_path.write_bytes(b"not a key")
    with pytest.raises(AuditError, match="not a PEM PKCS8 private key"):
        load_or_create_host_key(tmp_path)


def test_public_key_lines(tmp_path: Path) -> None:
    raw = PUB.public_bytes_raw()
    assert parse_public_key(format_public_key(PUB)).public_bytes_raw() == raw
    assert parse_public_key("# a comment\n\n" + format_public_key(PUB, "alice")).public_bytes_raw() == raw
    ssh = PUB.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert parse_public_key(ssh + " ops@host").public_bytes_raw() == raw
    with pytest.raises(AuditError, match=r"x\.pub: the key is not base64 of 32 bytes"):
        parse_public_key("lifeline-ed25519 AAAA host", "x.pub")
    with pytest.raises(AuditError, match="no public key found"):
        parse_public_key("ssh-rsa AAAA", "x.pub")
    with pytest.raises(AuditError, match=r"no such file; pass --pub"):
        read_public_key(tmp_path / "missing.pub")


def test_host_pub_loads_with_recovery_keys(tmp_path: Path) -> None:
    """The same .pub format and fingerprint as recovery/keys.py."""
    keys = pytest.importorskip("recovery.keys")
    key, pub_path = load_or_create_host_key(tmp_path)
    loaded = keys.load_public_key(pub_path)
    assert loaded.public_bytes_raw() == key.public_key().public_bytes_raw()
    assert keys.fingerprint(keys.key_id(loaded)) == key_fingerprint(loaded)


# ------------------------------------------------------------------------------ show


def test_format_entry_is_one_readable_line() -> None:
    entry = json.loads(BASE_LINES[0])
    text = format_entry(entry)
    assert "\n" not in text
    assert text.startswith("     1  2026-09-21T14:13:20.250Z  step  ")
    assert 'args={"n":[0],"name":"starlink"}' in text
    assert 'note="écrit ✓ \\u001f"' in text
    assert "playbook=fibre-lost-a" in text and "result=ok" in text
    assert format_entry({"seq": 2, "time": "t", "kind": "k", "fields": {}}) == "     2  t  k"


def test_show_lines_marks_what_is_not_an_entry() -> None:
    data = b"".join(chain(3)) + b"garbage\n" + b'{"fields'
    out = show_lines(data)
    assert len(out) == 5
    assert out[3] == "  line 4: not JSON (7 bytes)"
    assert out[4].startswith("  line 5: incomplete")
    assert show_lines(data, 2) == out[3:]
    assert show_lines(data, 0) == []


def test_an_audit_log_that_cannot_be_opened_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(AuditError, match=r"not-a-dir/audit\.jsonl: cannot open the audit log: "):
        AuditLog(blocker / "audit.jsonl", HOST)


def test_a_chain_damaged_under_an_open_log_is_broken_and_the_metric_says_so(tmp_path: Path) -> None:
    from recovery.service import RecoveryService

    path = tmp_path / "audit.jsonl"
    service = RecoveryService.__new__(RecoveryService)  # only what metrics() reads
    service.playbooks, service.refused, service.runs, service.outcomes = {}, {}, 2, {"failed": 1, "succeeded": 1}
    with AuditLog(path, HOST, fsync=False) as log:
        service.audit = log
        log.append("step", n=1)
        log.append("step", n=2)
        assert log.broken is None
        metrics = {f.name: f for f in service.metrics()}
        assert metrics["lifeline_audit_chain_ok"].samples[0].value == 1.0
        outcomes = {s.labels["outcome"]: s.value for s in metrics["lifeline_playbook_outcomes_total"].samples}
        assert outcomes == {"failed": 1, "succeeded": 1}
        # Someone edits the last entry behind the daemon's back: the next append refuses.
        path.write_bytes(path.read_bytes().replace(b'"n":2', b'"n":22'))
        with pytest.raises(AuditError, match="damaged"):
            log.append("step", n=3)
        assert log.broken is not None and "damaged" in log.broken
        metrics = {f.name: f for f in service.metrics()}
        assert metrics["lifeline_audit_chain_ok"].samples[0].value == 0.0
