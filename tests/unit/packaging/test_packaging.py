"""What lifeline installs and loads: lean extras (the core has no ccxt), a lock with hashes
that matches pyproject.toml (checked without network), and client commands that start
without loading the daemon's heavy libraries."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from daemon.cli import LAZY_COMMAND_HELP, build_parser
from tests.support.cli import ROOT as REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "requirements" / "lifeline.lock"
LOCKED_EXTRAS = ("venues", "starlink")  # the Debian package's venv: lifeline[venues,starlink]
# The interpreter the package is built for: Debian bookworm's python3 on Linux.
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.2",
          "sys_platform": "linux", "platform_system": "Linux", "implementation_name": "cpython"}


def requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    found = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return [r for r in found if r.marker is None or r.marker.evaluate(TARGET)]


def parse_lock(text: str) -> dict[str, tuple[str, list[str], str]]:
    """name -> (version, hashes, via) from a `pip-compile --generate-hashes` style file."""
    pins: dict[str, tuple[str, list[str], str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9._-]+)==([^\s\\;]+)", block)
        if head is None:
            continue
        via = re.search(r"# via (.*)", block)
        pins[canonicalize_name(head.group(1))] = (head.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
                                                  via.group(1) if via else "")
    return pins


def test_the_core_installs_without_ccxt_and_the_extras_add_it() -> None:
    core = {canonicalize_name(r.name) for r in requirements()}
    assert {"trio", "cryptography", "pyserial", "psutil", "httpx", "pyroute2", "crc32c"} <= core
    assert "ccxt" not in core and "aiohttp" not in core
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [Requirement(r).name for r in extras["venues"]] == ["ccxt"]
    assert "lifeline[venues]" in extras["lab"]  # the venue drill runs a daemon with venues
    test = [Requirement(r) for r in extras["test"]]
    assert any(r.name == "lifeline" and {"venues", "lab"} <= r.extras for r in test), "./run test needs them"
    assert [Requirement(r).name for r in extras["starlink"]] == ["starlink-grpc-core"]


def test_the_lock_pins_every_dependency_within_its_bounds_with_hashes() -> None:
    pins = parse_lock(LOCK.read_text())
    assert len(pins) > 20
    for requirement in requirements(LOCKED_EXTRAS):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{LOCK.name} lacks {requirement}: regenerate it with `./run lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{LOCK.name} pins {name}=={version}, outside pyproject.toml's {requirement}: `./run lock`"
    for name, (version, hashes, _) in pins.items():
        assert hashes, f"{name}=={version} has no --hash in {LOCK.name}"


def test_the_lock_holds_no_direct_dependency_that_pyproject_dropped() -> None:
    wanted = {canonicalize_name(r.name) for r in requirements(LOCKED_EXTRAS)}
    for name, (version, _, via) in parse_lock(LOCK.read_text()).items():
        if "lifeline (pyproject.toml)" in via:
            assert name in wanted, f"{LOCK.name} still pins {name}=={version} for lifeline: `./run lock`"


def test_lazy_commands_show_the_same_help_as_their_full_parsers() -> None:
    full, lean = build_parser(), build_parser("status")
    assert lean.format_help() == full.format_help()
    choices = full._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in LAZY_COMMAND_HELP:
        assert name in choices


LOADED = ("import sys\nfrom daemon.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
          "print(' '.join(m for m in ('trio', 'ccxt', 'cryptography', 'psutil', 'pyroute2', 'httpx', 'aiohttp') "
          "if m in sys.modules))\n")


def loaded_by(*argv: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", LOADED, *argv], capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    return set(result.stdout.splitlines()[-1].split()) if result.stdout.strip() else set()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["status"], ["role"], ["venues"],
                                  ["config", "check", "--no-host", "CONFIG"]])
def test_client_commands_load_none_of_the_daemon_s_heavy_libraries(argv: list[str], tmp_path: Path) -> None:
    config = tmp_path / "lifeline.toml"  # with a venue: its validation must not import ccxt
    config.write_text(f'[node]\nname = "a"\n[control]\nsocket = "{tmp_path / "absent.sock"}"\n'
                      '[venues.kraken]\nexchange = "kraken"\n')
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    if argv[0] in ("status", "role", "venues"):
        argv += ["--config", str(config)]  # the daemon is not running: exit 2 after reading the config
    assert loaded_by(*argv) == set()


def test_the_witness_and_the_drills_still_get_their_full_parsers() -> None:
    args = build_parser("witness").parse_args(["witness", "--listen", "127.0.0.1:0", "--state", "s",
                                               "--key-file", "k"])
    assert args.key_file == Path("k") and args.min_epoch == 0
    assert build_parser("drill").parse_args(["drill", "venue"]).drill_command == "venue"
    assert build_parser("audit").parse_args(["audit", "verify"]).audit_command == "verify"


def test_lab_quick_shortens_every_drill_but_keeps_what_is_given() -> None:
    from lab.cli import QUICK, apply_quick

    args = build_parser("lab").parse_args(["lab", "--quick", "--venue-repeat", "2"])
    apply_quick(args)
    assert (args.repeat, args.soak, args.compress, args.promotion_repeat, args.venue_repeat) == \
        (QUICK["repeat"], QUICK["soak"], QUICK["compress"], QUICK["promotion_repeat"], 2)
    assert all(value for value in QUICK.values()), "--quick skips no drill"
    full = build_parser("lab").parse_args(["lab"])
    assert (full.repeat, full.promotion_repeat, full.venue_repeat) == (5, 3, 3)


@pytest.mark.parametrize("module", ["daemon.witness_server", "daemon.app"])
def test_the_witness_and_the_daemon_need_no_optional_library(module: str) -> None:
    """The witness host installs the core only; the daemon loads ccxt only for [venues]."""
    code = (f"import sys, {module}\n"
            "print(' '.join(m for m in ('ccxt', 'requests', 'aiohttp', 'starlink_grpc', 'grpc') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
