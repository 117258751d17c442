"""`lifeline audit verify|show` on real files: the exit code and the first break in one
line, the defaults (state directory, config), and the same as a real process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recovery.audit import (
    AuditLog,
    add_audit_parser,
    format_public_key,
    load_or_create_host_key,
    run_audit_command,
)
from tests.support.cli import ROOT, cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifeline")
    sub = p.add_subparsers(dest="command", required=True)
    add_audit_parser(sub)
    return p


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, list[str], list[str]]:
    args = parser().parse_args([str(a) for a in argv])
    code = run_audit_command(args)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def make_state(state_dir: Path, count: int = 5) -> Path:
    """A state directory with a host key and an audit log of ``count`` entries, as the
    daemon leaves it; returns the log's path."""
    key, _pub = load_or_create_host_key(state_dir)
    path = state_dir / "recovery" / "audit.jsonl"
    with AuditLog(path, key) as log:
        log.append("verify.ok", playbook="fibre-lost", version=3, signers=["3f2a-91c0", "77b1-0c2e"])
        log.append("run.started", playbook="fibre-lost", version=3, trigger="ActiveUplinkChanged")
        for i in range(max(0, count - 3)):
            log.append("step", playbook="fibre-lost", index=i, action="uplink.use", result="ok", duration_ms=4)
        log.append("run.finished", playbook="fibre-lost", outcome="succeeded")
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def broken_line(out: list[str]) -> str:
    broken = [line for line in out if line.startswith("BROKEN")]
    assert len(broken) == 1, out
    return broken[0]


def test_verify_an_intact_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_state(tmp_path)
    code, out, err = run(capsys, "audit", "verify", "--state-dir", tmp_path)
    assert code == 0 and err == []
    assert out[0].endswith("5 line(s), 5 entries verified with host key " + out[0].rsplit(" ", 1)[-1])
    assert out[-1].startswith("OK: every hash, link and signature verified; head seq 5 hash ")


def _modify(lines: list[bytes]) -> list[bytes]:
    lines[2] = lines[2].replace(b'"index":0', b'"index":7')
    return lines


def _delete(lines: list[bytes]) -> list[bytes]:
    del lines[1]
    return lines


def _swap(lines: list[bytes]) -> list[bytes]:
    lines[1], lines[3] = lines[3], lines[1]
    return lines


def _insert(lines: list[bytes]) -> list[bytes]:
    lines.insert(3, lines[0])
    return lines


def _garbage(lines: list[bytes]) -> list[bytes]:
    lines.insert(2, b"rm -rf /var/lib/lifeline\n")
    return lines


@pytest.mark.parametrize("tamper, expected", [
    (_modify, "BROKEN at line 3 (modified): the content of entry seq 3 does not match its hash"),
    (_delete, "BROKEN at line 2 (deleted): seq 2 missing: line 2 has seq 3 after seq 1"),
    (_swap, "BROKEN at line 2 (reordered): seq 4 where seq 2 belongs; seq 2 is on line 4"),
    (_insert, "BROKEN at line 4 (inserted): a copy of line 1 (seq 1) after seq 3"),
    (_garbage, "BROKEN at line 3 (not JSON): not valid JSON"),
])
def test_verify_names_the_first_break_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  tamper: object, expected: str) -> None:
    path = make_state(tmp_path)
    path.write_bytes(b"".join(tamper(lines_of(path))))  # type: ignore[operator]
    code, out, err = run(capsys, "audit", "verify", "--state-dir", tmp_path)
    assert code == 1 and err == []
    assert broken_line(out).startswith(expected)


def test_entries_written_without_the_host_key_fail_on_the_signature(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An attacker without host.key rebuilds a self-consistent chain with a key of their
    own: every hash and link holds, the signature does not."""
    forged_dir = tmp_path / "forged"
    make_state(forged_dir)
    real_dir = tmp_path / "real"
    load_or_create_host_key(real_dir)
    code, out, _ = run(capsys, "audit", "verify", "--log", forged_dir / "recovery" / "audit.jsonl",
                       "--pub", real_dir / "recovery" / "host.pub")
    assert code == 1
    assert broken_line(out).startswith("BROKEN at line 1 (bad signature): the signature of entry seq 1 does not "
                                       "verify with key")
    # Against its own key the forged chain is consistent: hence the copy of host.pub
    # kept off the host.
    code, _, _ = run(capsys, "audit", "verify", "--state-dir", forged_dir)
    assert code == 0


def test_verify_with_a_copy_of_the_public_key_kept_elsewhere(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = make_state(tmp_path / "state")
    offsite = tmp_path / "offsite-host.pub"
    offsite.write_text((tmp_path / "state" / "recovery" / "host.pub").read_text())
    # Someone with write access swaps host.pub on the host: the off-site copy still tells.
    (tmp_path / "state" / "recovery" / "host.pub").write_text(format_public_key(Ed25519PrivateKey.generate()
                                                                                .public_key()))
    assert run(capsys, "audit", "verify", "--log", path, "--pub", offsite)[0] == 0
    assert run(capsys, "audit", "verify", "--state-dir", tmp_path / "state")[0] == 1


def test_a_torn_last_line_is_reported_until_the_daemon_cuts_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = make_state(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"fields":{"playbook":"fibre-lost"')
    code, out, _ = run(capsys, "audit", "verify", "--state-dir", tmp_path)
    assert code == 1
    assert broken_line(out).startswith("BROKEN at line 6 (torn): the last line is incomplete")
    key, _ = load_or_create_host_key(tmp_path)
    with AuditLog(path, key) as log:
        assert log.recovery is not None and log.recovery.last_seq == 5
    assert run(capsys, "audit", "verify", "--state-dir", tmp_path)[0] == 0


def test_defaults_come_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    make_state(state)
    config = tmp_path / "lifeline.toml"
    config.write_text(f'[node]\nname = "a"\nstate_dir = "{state}"\n')
    code, out, _ = run(capsys, "audit", "verify", "--config", config)
    assert code == 0 and out[0].startswith(f"{state}/recovery/audit.jsonl: ")
    # recovery.audit_log moves the log; the key stays in STATE_DIR/recovery.
    moved = tmp_path / "elsewhere.jsonl"
    (state / "recovery" / "audit.jsonl").rename(moved)
    config.write_text(f'[node]\nname = "a"\nstate_dir = "{state}"\n[recovery]\naudit_log = "{moved}"\n')
    code, out, _ = run(capsys, "audit", "verify", "--config", config)
    assert code == 0 and out[0].startswith(f"{moved}: ")


def test_unusable_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_or_create_host_key(tmp_path)
    code, out, err = run(capsys, "audit", "verify", "--state-dir", tmp_path)
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith(f"lifeline audit verify: {tmp_path}/recovery/audit.jsonl: no such file; pass --log")
    code, _, err = run(capsys, "audit", "verify", "--log", tmp_path / "x", "--pub", tmp_path / "missing.pub")
    assert code == 2 and len(err) == 1 and "missing.pub: no such file; pass --pub" in err[0]
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nname = 3\n")
    code, _, err = run(capsys, "audit", "show", "--config", bad)
    assert code == 2 and len(err) == 1 and "bad.toml" in err[0] and "--state-dir" in err[0]
    code, _, err = run(capsys, "audit", "show", "--log", tmp_path / "nope.jsonl")
    assert code == 2 and "nope.jsonl: no such file" in err[0]


def test_show_prints_the_entries_readably(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_state(tmp_path)
    code, out, _ = run(capsys, "audit", "show", "--log", path)
    assert code == 0 and len(out) == 5
    first = json.loads(lines_of(path)[0])
    assert out[0] == (f"     1  {first['time']}  verify.ok  playbook=fibre-lost "
                      f'signers=["3f2a-91c0","77b1-0c2e"] version=3')
    assert out[-1].split()[0] == "5" and "run.finished" in out[-1] and "outcome=succeeded" in out[-1]
    code, tail, _ = run(capsys, "audit", "show", "--state-dir", tmp_path, "-n", "2")
    assert code == 0 and tail == out[-2:]


def test_as_a_real_process(tmp_path: Path) -> None:
    path = make_state(tmp_path)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "recovery.audit", "audit", "verify", "--state-dir",
                               str(tmp_path)], check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)

    ok = verify()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("OK: ")
    path.write_bytes(b"".join(_swap(lines_of(path))))
    broken = verify()
    assert broken.returncode == 1
    assert broken_line(broken.stdout.splitlines()).startswith("BROKEN at line 2 (reordered)")


def test_through_the_lifeline_command_once_wired(tmp_path: Path) -> None:
    """`lifeline audit ...` once daemon/cli.py registers add_audit_parser."""
    help_run = cli("audit", "--help", timeout=60)
    if help_run.returncode != 0:
        pytest.skip("daemon/cli.py does not register `lifeline audit` yet")
    path = make_state(tmp_path)
    path.write_bytes(b"".join(_delete(lines_of(path))))
    result = cli("audit", "verify", "--state-dir", str(tmp_path), timeout=60)
    assert result.returncode == 1
    assert broken_line(result.stdout.splitlines()).startswith("BROKEN at line 2 (deleted)")
