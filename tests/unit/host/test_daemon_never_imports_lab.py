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


# ------------------------------------------------------------------ function-local imports

LIFELINE = ("daemon", "hardware", "recovery", "lab")


def local_imports(source: str) -> list[tuple[int, str, bool]]:
    """(line, module, annotated) of every import of a lifeline module inside a function.

    Annotated: a ``# lazy: WHY`` comment on the statement, or in the comments and imports
    right above it (one comment for a block), or a module-level ``# lazy-imports: WHY``
    line for the whole file (the CLI registry). Imports at module level, including those
    under ``if TYPE_CHECKING:``, are not local."""
    lines = source.splitlines()
    whole_file = any(line.startswith("# lazy-imports:") for line in lines)
    found: list[tuple[int, str, bool]] = []

    def annotated(node: ast.stmt) -> bool:
        if whole_file or any("# lazy:" in lines[n - 1] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)):
            return True
        n = node.lineno - 1
        while n >= 1:
            text = lines[n - 1].strip()
            if text.startswith("#"):
                if text.startswith("# lazy:"):
                    return True
            elif not text.startswith(("from ", "import ")):
                return False
            n -= 1
        return False

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                modules = ([alias.name for alias in child.names] if isinstance(child, ast.Import)
                           else [child.module or ""] if child.level == 0 else [])
                for module in modules:
                    if module.split(".")[0] in LIFELINE:
                        found.append((child.lineno, module, annotated(child)))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def test_the_local_import_checker_sees_annotations() -> None:
    source = ("import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from daemon.app import Daemon\n"
              "def f():\n    import json\n    from daemon.core import log\n"
              "    from hardware.errors import HardwareError  # lazy: why\n"
              "    # lazy: why, for the block\n    from recovery import audit\n    import lab.cli\n"
              "    x = 1\n    from daemon import eod\n")
    assert local_imports(source) == [(7, "daemon.core", False), (8, "hardware.errors", True),
                                     (10, "recovery", True), (11, "lab.cli", True), (13, "daemon", False)]
    assert all(annotated for _, _, annotated in local_imports("# lazy-imports: the CLI\n" + source))


def test_no_unannotated_function_local_import_of_lifeline() -> None:
    """A lifeline module is imported at module level. Inside a function only where that
    saves start-up time for an optional dependency or the CLI, said in a ``# lazy:``
    comment; an import cycle that a local import would hide is a layering defect to fix
    (a Protocol the composition root injects, or the shared piece moved down)."""
    offenders, lazy = [], 0
    for package in LIFELINE:
        for path in sorted((REPO / package).rglob("*.py")):
            for line, module, annotated in local_imports(path.read_text(encoding="utf-8")):
                if annotated:
                    lazy += 1
                else:
                    offenders.append(f"{path.relative_to(REPO)}:{line} imports {module} inside a function")
    assert offenders == [], "hoist these to module level, or say why with a `# lazy:` comment"
    # 83 when this was written: the CLI modules' handlers (start-up), ccxt, matplotlib, etcd's httpx;
    # 94 with the guard's commands (`lifeline risk`, `kill`) and the kill switch's ccxt client
    assert lazy <= 96, f"{lazy} annotated local imports: more than the CLI and optional dependencies need"


def test_no_import_cycle_between_modules() -> None:
    """No two modules import each other, directly or through others (type-only imports
    aside), counting the imports inside functions too; `lint-imports` checks the same
    between sibling packages (the acyclic_siblings contract)."""
    import grimp

    graph = grimp.build_graph(*LIFELINE, exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} -> {imported} -> ... -> {module}")
    assert cycles == []
