"""The lab is its own room: no module under daemon/, hardware/ or recovery/ imports
``lab`` (the drills, emulators, simulators), except the CLI registry, which loads a lab
subcommand lazily inside the function that runs it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from tests.support.cli import ROOT as REPO

PRODUCTION = ("daemon", "hardware", "recovery")
#: The one place allowed to import the lab: the CLI registry, lazily (inside a function).
CLI_LOADER = Path("daemon/cli.py")


def _is_lab(name: str | None) -> bool:
    return name is not None and (name == "lab" or name.startswith("lab."))


def lab_imports(tree: ast.Module) -> list[tuple[int, str, bool]]:
    """(line, module, at module level) of every import of ``lab`` in ``tree``, including
    ``importlib.import_module("lab...")`` and ``__import__("lab...")``."""
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names = [node.args[0].value]
        found.extend((node.lineno, name, top) for name in names if _is_lab(name))  # type: ignore[attr-defined]
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def test_the_checker_sees_every_form_of_import() -> None:
    source = ("import lab\nfrom lab.venues import server\nimport labrador\nimport importlib\n"
              "def f():\n    from lab.venues.__main__ import main\n    importlib.import_module('lab.sim')\n")
    assert lab_imports(ast.parse(source)) == [(1, "lab", True), (2, "lab.venues", True),
                                              (6, "lab.venues.__main__", False), (7, "lab.sim", False)]


def test_no_production_module_imports_the_lab() -> None:
    offenders = []
    for package in PRODUCTION:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative.parts[:2] == ("daemon", "lab"):
                continue  # the rest of the lab, still under daemon/ until it moves to lab/
            for line, module, top in lab_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if relative == CLI_LOADER and not top:
                    continue  # the CLI registry loading a lab subcommand when it runs
                offenders.append(f"{relative}:{line} imports {module}")
    assert offenders == [], "the daemon must not import the lab (move the code, or load it lazily in daemon/cli.py)"


def test_starting_the_cli_and_the_app_loads_no_lab_module() -> None:
    code = ("import sys, daemon.cli, daemon.app\n"
            "daemon.cli.build_parser().parse_args(['sim', 'venue'])\n"
            "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_cli_lists_the_lab_commands_with_the_labs_own_help() -> None:
    import daemon.cli
    import lab.cli

    assert daemon.cli.LAB_COMMAND_HELP == lab.cli.COMMAND_HELP


def test_a_lab_command_completes_its_parser_from_the_lab() -> None:
    import daemon.cli

    parser = daemon.cli.build_parser()
    args = parser.parse_args(["drill", "uplink", "--repeat", "2", "--json"])
    assert (args.command, args.drill_command, args.repeat, args.json) == ("drill", "uplink", 2, True)
    args = parser.parse_args(["lab", "--seconds", "1", "status"])
    assert (args.command, args.seconds, args.lab_command) == ("lab", 1.0, "status")
    assert "DRILL" in daemon.cli.build_parser()._subparsers._group_actions[0].choices["drill"].format_help()
