#!/usr/bin/env python3
"""The test tree's layout (issue 15): tests/unit/<room>/ and tests/integration/<room>/
mirror the package tree, and the shared helpers live in tests/support/. This moves test
modules written in the old flat places (tests/unit/test_x.py, tests/integration/test_x.py)
into their rooms and rewrites the imports of the old helper modules, so a branch written
against the old layout lands in the new one. Idempotent: run it again after a merge.

    python3 tools/test_layout.py          # from the repository root

A module it does not know goes to the room of the first lifeline package it imports
(printed, so that a wrong guess is seen); a helper module in an old place
(tests/integration/support.py, standby_pair.py, tests/hardware_support.py) is for a
human to merge into tests/support/.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

#: room -> the test modules (without ``test_``) of tests/unit/<room>/ and tests/integration/<room>/.
ROOMS: dict[str, dict[str, tuple[str, ...]]] = {
    "core": {"unit": ("events", "files", "listeners", "log")},
    "uplinks": {"unit": ("echo_codec", "routes", "starlink", "uplink_health", "uplink_policy", "uplink_service"),
                "integration": ("conntrack_netns", "probe", "probe_netns", "routes_netns")},
    "standby": {"unit": ("config_etcd_security", "hooks", "insync", "journal", "leadership", "leadership_switchover",
                         "lease_pause", "replication_protocol", "roles", "roles_switchover", "witness",
                         "witness_keys", "channel", "journal_format"),
                "integration": ("cluster_pair", "etcd_lease", "insync_race", "journal_files", "journal_verify",
                                "lease_pair", "replication", "standby_faults", "standby_service", "switchover",
                                "witness_process")},
    "venues": {"unit": ("venue_client", "venue_health", "venue_orders", "venue_reconcile", "venue_fencing"),
               "integration": ("venue_client_http", "venue_daemon", "venue_service",
                               "venue_reconciliation_under_faults", "venue_epoch_pair", "venue_fencing_service")},
    "guard": {"unit": ("guard_blocks", "guard_breaker_service", "guard_breakers", "guard_kill", "guard_gate",
                       "guard_limits", "guard_service"),
              "integration": ("guard_breakers_daemon", "kill_promotion", "kill_switch", "risk_gate_daemon",
                              "risk_gate_pair")},
    "hardware": {"unit": ("enclosure", "gnss", "ups", "watchdog", "hardware_service", "hardware_layers"),
                 "integration": ("enclosure_serial", "gnss_serial", "ups_serial", "hardware_daemon")},
    "recovery": {"unit": ("audit", "executor", "playbook", "recovery_keys", "recovery_signing", "refusal_coalescer",
                          "small_order_keys"),
                 "integration": ("audit_cli", "playbook_e2e", "playbook_names", "recovery_cli")},
    "lab": {"unit": ("nemesis_check", "report", "venue_emulator_sansio"),
            "integration": ("ha_drills", "hardware_drills", "lab_world", "live_drills", "live_uplink_drill", "nemesis",
                            "pair_lab", "preflight_lab", "report_browser", "report_drill", "uplink_drill",
                            "venue_drill", "venue_emulator", "venue_emulator_bounds")},
    "host": {"unit": ("config", "daemon_never_imports_lab", "eod", "health", "livedrills", "preflight", "reload",
                      "supervisor", "system"),
             "integration": ("control", "control_acl", "daemon_process", "health_endpoints", "host_check",
                             "listener_bounds", "metrics", "notify", "preflight_daemon", "reload_daemon",
                             "system_service")},
    "packaging": {"unit": ("packaging",), "integration": ("monitoring", "systemd_timers", "systemd_unit")},
}
#: modules renamed for what they test (old basename -> new basename).
RENAMED = {"venue_review_fixes": "venue_reconciliation_under_faults"}
#: the room of a new module: by its name (test_<room>_...), else the capability whose
#: modules it imports most (the ground floor, the lab and the host only when nothing else).
NAME_HINTS = {"uplink": "uplinks", "standby": "standby", "journal": "standby", "replication": "standby",
              "witness": "standby", "lease": "standby", "venue": "venues", "guard": "guard", "kill": "guard",
              "risk": "guard", "hardware": "hardware", "ups": "hardware", "gnss": "hardware",
              "enclosure": "hardware", "recovery": "recovery", "playbook": "recovery", "audit": "recovery",
              "lab": "lab", "drill": "lab", "nemesis": "lab", "report": "lab", "systemd": "packaging"}
GUESS = [("daemon.uplinks", "uplinks"), ("daemon.standby", "standby"), ("daemon.venues", "venues"),
         ("daemon.guard", "guard"), ("hardware", "hardware"), ("recovery", "recovery")]
FALLBACK = [("daemon.core", "core"), ("lab", "lab"), ("daemon", "host")]

#: where the names of the old helper modules live now.
HOMES = {
    "ROOT": "tests.support.cli", "cli": "tests.support.cli", "free_port": "tests.support.ports",
    "until": "tests.support.waiting", "wait_for": "tests.support.waiting", "wait_until": "tests.support.waiting",
    "drain": "tests.support.events",
    "Pair": "tests.support.pair", "Node": "tests.support.pair", "Writer": "tests.support.pair",
    "feed_lines": "tests.support.pair", "TIMERS": "tests.support.pair", "LeasePair": "tests.support.pair",
    "Feed": "tests.support.pair", "settled": "tests.support.pair", "LEASE_TIMINGS": "lab.pair",
    "LinkProxy": "tests.support.proxy",
}
OLD_HELPERS = {"support", "tests.integration.support", "standby_pair", "tests.integration.standby_pair"}
#: names a test module imported from another test module that now live in tests/support/
#: (``pair`` is test_switchover's witness-pair fixture).
FROM_TESTS = {"LeasePair", "Feed", "LEASE_TIMINGS", "LinkProxy", "settled", "pair"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def room_of(kind: str, stem: str, text: str) -> tuple[str, bool]:
    """The module's room and whether it was known (else guessed from its imports)."""
    for room, kinds in ROOMS.items():
        if stem in kinds.get(kind, ()):
            return room, True
    hint = NAME_HINTS.get(stem.split("_")[0])
    if hint:
        return hint, False
    imported = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", text, re.M)

    def count(prefix: str) -> int:
        return sum(1 for m in imported if m == prefix or m.startswith(prefix + "."))

    best = max(GUESS, key=lambda guess: count(guess[0]))
    if count(best[0]):
        return best[1], False
    for prefix, room in FALLBACK:
        if count(prefix):
            return room, False
    return "host", False


def ensure_package(directory: Path) -> None:
    for d in [directory, *directory.parents]:
        if d == TESTS.parent:
            break
        init = d / "__init__.py"
        if not init.exists():
            d.mkdir(parents=True, exist_ok=True)
            init.write_text("")
            git("add", str(init.relative_to(ROOT)))


def moves() -> dict[str, str]:
    """Move the flat test modules; returns every test module's stem -> dotted name."""
    for old in ("integration/support.py", "integration/standby_pair.py", "hardware_support.py",
                "integration/report_samples.py"):
        if (TESTS / old).exists():
            print(f"test_layout: tests/{old} is back (a branch changed it): merge it into tests/support/ by hand")
    for kind in ("unit", "integration"):
        for path in sorted((TESTS / kind).glob("test_*.py")):
            stem = path.stem[len("test_"):]
            stem = RENAMED.get(stem, stem)
            room, known = room_of(kind, stem, path.read_text())
            new = TESTS / kind / room / f"test_{stem}.py"
            if new.exists():
                sys.exit(f"test_layout: both {path.relative_to(ROOT)} and {new.relative_to(ROOT)} exist: merge by hand")
            ensure_package(new.parent)
            if git("ls-files", "--", str(path.relative_to(ROOT))).strip():
                git("mv", str(path.relative_to(ROOT)), str(new.relative_to(ROOT)))
            else:
                path.rename(new)
            # one directory deeper: Path(__file__).parents[N] names the repository one level up
            text = new.read_text()
            fixed = re.sub(r"(Path\(__file__\)(?:\.resolve\(\))?\.parents\[)(\d+)\]",
                           lambda m: f"{m.group(1)}{int(m.group(2)) + 1}]", text)
            if fixed != text:
                new.write_text(fixed)
            print(f"moved {path.relative_to(ROOT)} -> {new.relative_to(ROOT)}"
                  + ("" if known else f"  (room guessed from its imports: {room}; add it to ROOMS)"))
    ensure_package(TESTS / "support")
    return {p.stem: ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in TESTS.rglob("test_*.py")}


def _import_lines(indent: str, groups: dict[str, list[str]], tail: str = "") -> str:
    lines = [f"{indent}from {home} import {', '.join(names)}" for home, names in sorted(groups.items())]
    if tail and lines:
        lines[-1] += tail
    return "\n".join(lines)


def rewrite_imports(text: str, modules: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        indent, module, body, tail = match.group(1), match.group(2), match.group(3), match.group(4) or ""
        names = [n.strip() for n in body.replace("(", "").replace(")", "").replace("\n", " ").split(",") if n.strip()]
        groups: dict[str, list[str]] = {}
        if module in OLD_HELPERS:
            for name in names:
                groups.setdefault(HOMES.get(name.split(" as ")[0], "tests.support.pair"), []).append(name)
            return _import_lines(indent, groups, tail)
        if module == "tests.hardware_support":
            return f"{indent}from tests.support.hardware import {body.strip()}{tail}"
        if module == "report_samples":
            return f"{indent}from tests.integration.lab.report_samples import {body.strip()}{tail}"
        stem = module.rsplit(".", 1)[-1]
        if not stem.startswith("test_") or stem[len("test_"):] not in [*ROOMS_ALL, *RENAMED] and stem not in modules:
            return match.group(0)
        stem = "test_" + RENAMED.get(stem[len("test_"):], stem[len("test_"):])
        if module == modules.get(stem) and not any(n.split(" as ")[0] in FROM_TESTS for n in names):
            return match.group(0)  # already where it belongs
        for name in names:
            base = name.split(" as ")[0]
            if base == "Witness" and stem == "test_lease_pair":
                groups.setdefault("lab.procs", []).append("WitnessProcess as Witness")
            elif base == "pair":
                groups.setdefault("tests.support.pair", []).append("witness_pair as pair")
                tail = tail or "  # noqa: F401  (the fixture: a witness pair on loopback)"
            elif base in FROM_TESTS:
                groups.setdefault(HOMES[base], []).append(name)
            else:
                groups.setdefault(modules.get(stem, module), []).append(name)
        if len(groups) == 1 and modules.get(stem) in groups:  # only the module's name changes
            return f"{indent}from {modules[stem]} import {body}{tail}"
        return _import_lines(indent, groups, tail)

    text = re.sub(r"^([ \t]*)from ([\w.]+) import (\([^)]*\)|[^#\n]+?)([ \t]+#[^\n]*)?$", one, text, flags=re.M)

    def module_import(match: re.Match[str]) -> str:
        indent, stem, alias = match.group(1), match.group(2), match.group(3)
        if stem == "test_lease_pair":
            return f"{indent}from tests.support import pair as {alias}"
        if stem not in modules:
            return match.group(0)
        package, name = modules[stem].rsplit(".", 1)
        return f"{indent}from {package} import {name} as {alias}"

    return re.sub(r"^([ \t]*)import (test_\w+) as (\w+)$", module_import, text, flags=re.M)


ROOMS_ALL = [stem for kinds in ROOMS.values() for stems in kinds.values() for stem in stems]


def rewrite_paths(text: str, modules: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        kind, stem = match.group(1), match.group(2)
        stem = "test_" + RENAMED.get(stem[len("test_"):], stem[len("test_"):])
        dotted = modules.get(stem)
        if dotted is None or dotted.split(".")[1] != kind:
            return match.group(0)
        return dotted.replace(".", "/") + ".py"

    return re.sub(r"(?<![\w/])tests/(unit|integration)/(test_\w+)\.py", one, text)


def main() -> None:
    modules = moves()
    files = [ROOT / f for f in git("ls-files", "--cached", "--others", "--exclude-standard").splitlines()]
    files = [p for p in files if p.is_file() and p.resolve() != Path(__file__).resolve()
             and p.suffix in {".py", ".md", ".yml", ".toml", ".service", ".timer", ""}]
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        new = rewrite_paths(text, modules)
        if path.suffix == ".py" and TESTS in path.parents:
            new = rewrite_imports(new, modules)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
