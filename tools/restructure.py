#!/usr/bin/env python3
"""The mechanical part of issue 15's restructure: move modules to their rooms and rewrite
every reference to their old names (imports, ``python -m`` strings, mock targets, paths in
docs). Idempotent: run it again after merging a branch that added code in the old places.

    python3 tools/restructure.py          # from the repository root

Moves (old -> new):
  daemon/{log,files,events,bus,service,control_client,acl,accept,listeners}.py -> daemon/core/   (the ground floor)
  daemon/hardware_service.py                              -> hardware/service.py
  daemon/lab/*                                            -> lab/          (the lab's own room)
"""
from __future__ import annotations

import io
import re
import subprocess
import tokenize
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CORE = ("log", "files", "events", "bus", "service", "control_client", "acl", "accept", "listeners")

#: module renames, dotted (longest first where one is a prefix of another).
MODULES: list[tuple[str, str]] = [
    ("daemon.lab", "lab"),
    ("daemon.hardware_service", "hardware.service"),
    *[(f"daemon.{name}", f"daemon.core.{name}") for name in CORE],
]

#: the text files the rewrite looks at (besides every *.py).
TEXT_GLOBS = ["README.md", "pyproject.toml", "run", ".ci/*", "bench/*.py", "systemd/*", "debian/*",
              "examples/*", "monitoring/**/*"]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def tracked(path: Path) -> bool:
    return bool(git("ls-files", "--", str(path.relative_to(ROOT))).strip())


def move(old: Path, new: Path) -> None:
    if not old.exists():
        return
    if new.exists():
        if old.read_bytes() == new.read_bytes():
            git("rm", "-q", "-f", str(old.relative_to(ROOT)))
            return
        sys.exit(f"restructure: both {old} and {new} exist and differ: merge them by hand")
    new.parent.mkdir(parents=True, exist_ok=True)
    if tracked(old):
        git("mv", str(old.relative_to(ROOT)), str(new.relative_to(ROOT)))
    else:
        old.rename(new)
    print(f"moved {old.relative_to(ROOT)} -> {new.relative_to(ROOT)}")


def moves() -> None:
    core = ROOT / "daemon" / "core"
    core.mkdir(exist_ok=True)
    init = core / "__init__.py"
    if not init.exists():
        init.write_text('"""The ground floor: logging, durable files, durations and config machinery, event types,\n'
                        'the Service vocabulary, the error root. Imports nothing of lifeline above it."""\n')
        git("add", str(init.relative_to(ROOT)))
    for name in CORE:
        move(ROOT / "daemon" / f"{name}.py", core / f"{name}.py")
    move(ROOT / "daemon" / "hardware_service.py", ROOT / "hardware" / "service.py")
    old_lab = ROOT / "daemon" / "lab"
    if old_lab.is_dir():
        init = old_lab / "__init__.py"
        if init.exists() and (ROOT / "lab" / "__init__.py").exists():
            # lab/__init__.py (its docstring) is the room's; daemon/lab's is obsolete.
            git("rm", "-q", "-f", str(init.relative_to(ROOT)))
        for path in sorted(old_lab.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                new = ROOT / "lab" / path.relative_to(old_lab)
                move(path, new)
                if new.suffix == ".py":
                    # one directory shallower: Path(__file__).parents[N] names the repository one level up
                    text = new.read_text()
                    fixed = re.sub(r"(Path\(__file__\)(?:\.resolve\(\))?\.parents\[)(\d+)\]",
                                   lambda m: f"{m.group(1)}{int(m.group(2)) - 1}]", text)
                    if fixed != text:
                        new.write_text(fixed)
        for path in sorted(old_lab.rglob("*"), reverse=True):
            if path.is_dir() and not any(p for p in path.iterdir() if p.name != "__pycache__"):
                subprocess.run(["rm", "-rf", str(path)])
        if old_lab.exists() and not any(p for p in old_lab.iterdir() if p.name != "__pycache__"):
            subprocess.run(["rm", "-rf", str(old_lab)])


def _patterns() -> list[tuple[re.Pattern[str], str]]:
    out: list[tuple[re.Pattern[str], str]] = []
    for old, new in MODULES:
        # dotted: not part of a longer name; ``daemon.log`` as a file name ("daemon.log") stays.
        tail = r"(?![\w])" + (r"(?![\"'])" if old == "daemon.log" else "")
        out.append((re.compile(r"(?<![\w.\-/])" + re.escape(old) + tail), new))
        # paths: daemon/lab/x -> lab/x, daemon/log.py -> daemon/core/log.py
        old_path, new_path = old.replace(".", "/"), new.replace(".", "/")
        if old == "daemon.lab":
            out.append((re.compile(r"(?<![\w./\-])daemon/lab/"), "lab/"))
        else:
            out.append((re.compile(r"(?<![\w./\-])" + re.escape(old_path) + r"\.py\b"), new_path + ".py"))
    # from daemon import log / events ... -> from daemon.core import ...
    names = "|".join(CORE)
    out.append((re.compile(rf"^(\s*)from daemon import ({names})\b", re.M), r"\1from daemon.core import \2"))
    out.append((re.compile(r"^(\s*)from daemon import lab\b", re.M), r"\1import lab"))
    return out


#: where daemon/config.py's names live since the split (the capability sections).
CONFIG_HOMES = {
    **{n: "daemon.core.config" for n in (
        "UNIX_PATH_MAX", "ConfigError", "ListenersConfig", "option", "parse_host_port", "describe_value", "NodeConfig", "to_dict",
        "dump_toml", "closest")},
    **{n: "daemon.core.durations" for n in ("Duration", "format_duration")},
    **{n: "daemon.uplinks.config" for n in ("UPLINK_KIND_DEFAULTS", "UplinkConfig", "FailoverConfig")},
    **{n: "daemon.standby.config" for n in ("JournalConfig", "LeaseConfig", "StandbyConfig")},
    **{n: "daemon.venues.config" for n in ("VENUE_PROBE_CALLS", "VenueConfig", "ccxt_exchange_ids")},
    **{n: "hardware.config" for n in (
        "UpsConfig", "GnssConfig", "EnclosureConfig", "HardwareWatchdogConfig", "HardwareConfig")},
    "RecoveryConfig": "recovery.config",
    "SystemConfig": "daemon.system_config",
}
#: the rooms below the host: they import config names from their homes, never daemon.config.
BELOW_HOST = ("daemon/core/", "daemon/uplinks/", "daemon/standby/", "daemon/venues/", "hardware/", "recovery/",
              "daemon/system.py", "daemon/system_config.py")
_FROM_CONFIG = re.compile(r"^(\s*)from daemon\.config import ([\w, ]+?)(\s*#.*)?$", re.M)


def _split_config_import(match: re.Match[str]) -> str:
    indent, names = match.group(1), [n.strip() for n in match.group(2).split(",") if n.strip()]
    homes: dict[str, list[str]] = {}
    for name in names:
        homes.setdefault(CONFIG_HOMES.get(name, "daemon.config"), []).append(name)
    return "\n".join(f"{indent}from {home} import {', '.join(sorted(ns))}" for home, ns in sorted(homes.items()))


#: names that moved to another module (to break an import circle): module -> {name: new module}.
MOVED_NAMES = {
    "daemon.core.events": {"EventBus": "daemon.core.bus", "Subscription": "daemon.core.bus"},
    "daemon.standby.lease": {"open_lease_store": "daemon.standby.stores"},
    "daemon.standby.service": {"record_to_json": "daemon.standby"},
    "daemon.cli": {"format_status": "daemon.status", "format_duration_short": "daemon.status"},
}


def _moved_names(text: str) -> str:
    for module, moved in MOVED_NAMES.items():
        pattern = re.compile(rf"^([ \t]*)from {re.escape(module)} import (\(([^)]*)\)|([\w, ]+?))([ \t]*#[^\n]*)?$",
                             re.M)

        def split(match: re.Match[str]) -> str:
            indent = match.group(1)
            body = match.group(3) if match.group(3) is not None else match.group(4)
            names = [n.strip() for n in body.replace("\n", " ").split(",") if n.strip()]
            if not any(n.split(" as ")[0] in moved for n in names):
                return match.group(0)
            homes: dict[str, list[str]] = {}
            for name in names:
                homes.setdefault(moved.get(name.split(" as ")[0], module), []).append(name)
            lines = []
            for home, ns in homes.items():
                line = f"{indent}from {home} import {', '.join(sorted(ns))}"
                if len(line) > 110:
                    inner = "".join(f"{indent}    {n},\n" for n in sorted(ns))
                    line = f"{indent}from {home} import (\n{inner}{indent})"
                lines.append(line)
            return "\n".join(lines)

        text = pattern.sub(split, text)
    return text


def _prose_spans(text: str) -> list[tuple[int, int]]:
    """Offsets of the strings and comments of Python source (where a module's dotted name is
    a name, not an attribute of a variable that happens to be called ``daemon``)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT):
                spans.append((starts[tok.start[0] - 1] + tok.start[1], starts[tok.end[0] - 1] + tok.end[1]))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [(0, len(text))]
    return spans


_IMPORT_LINE = re.compile(r"^[ \t]*(from|import)[ \t]", re.M)


def _sub_outside_code(pattern: re.Pattern[str], repl: str, text: str) -> str:
    """``pattern.sub`` in .py files, only in import statements, strings and comments."""
    spans = _prose_spans(text)
    import_lines = [(m.start(), text.find("\n", m.start()) if "(" not in text[m.start():text.find("\n", m.start())]
                     else text.find(")", m.start())) for m in _IMPORT_LINE.finditer(text)]

    def inside(pos: int) -> bool:
        return any(a <= pos < b for a, b in spans) or any(a <= pos <= b for a, b in import_lines)

    return pattern.sub(lambda m: m.expand(repl) if inside(m.start()) else m.group(0), text)


def text_files() -> list[Path]:
    files = {p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and ".git" not in p.parts}
    for pattern in TEXT_GLOBS:
        files.update(p for p in ROOT.glob(pattern) if p.is_file())
    files.discard(Path(__file__).resolve())
    return sorted(files)


def rewrite() -> None:
    patterns = _patterns()
    for path in text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        new = text
        for pattern, repl in patterns:
            new = _sub_outside_code(pattern, repl, new) if path.suffix == ".py" else pattern.sub(repl, new)
        if path.suffix == ".py":
            new = _moved_names(new)
        if str(path.relative_to(ROOT)).startswith(BELOW_HOST):
            new = _FROM_CONFIG.sub(_split_config_import, new)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")


def main() -> None:
    moves()
    rewrite()


if __name__ == "__main__":
    main()
