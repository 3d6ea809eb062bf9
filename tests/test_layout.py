"""The package layout docs/architecture.md draws, checked on the code itself.

Each package imports only those below it; argv is parsed only in gameart/cli; no module
imports another module's private names; scripts/ holds thin entry points."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

# package -> the first-party packages it may import (besides itself)
ALLOWED = {
    "gameart": set(),
    "modelspec": set(),
    "handler": {"modelspec"},
    "export": {"modelspec"},
    "gameart.paths": set(),
    "gameart.pipeline": {"gameart.paths", "modelspec", "handler", "export"},
    "gameart.ops": {"gameart.paths"},
    # the benchmark exports its own subject and measures the handler's stages
    "gameart.measure": {
        "gameart.paths",
        "gameart.pipeline",
        "gameart.ops",
        "modelspec",
        "handler",
        "export",
    },
    "gameart.demo": {"gameart.paths", "gameart.pipeline", "gameart.ops", "modelspec", "export"},
    "gameart.cli": {
        "gameart",
        "gameart.paths",
        "gameart.pipeline",
        "gameart.ops",
        "gameart.measure",
        "gameart.demo",
        "modelspec",
        "export",
    },
}
FIRST_PARTY = ("modelspec", "handler", "export", "gameart")


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "gameart" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO_ROOT).with_suffix("")
    return ".".join(p for p in relative.parts if p != "__init__")


def library_files() -> list[Path]:
    return sorted(
        p
        for top in ("modelspec", "handler", "export", "gameart")
        for p in (REPO_ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in the file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


@pytest.mark.parametrize("path", library_files(), ids=lambda p: module_name(p))
def test_each_package_imports_only_those_below_it(path):
    own = package_of(module_name(path))
    allowed = ALLOWED[own]
    for module, names in imports(path):
        if module.split(".")[0] not in FIRST_PARTY:
            continue
        # `from gameart.cli import serve` names a module: count the module, not the package
        targets = [f"{module}.{n}" for n in names] if module in ("gameart",) else [module]
        for target in targets:
            package = package_of(target)
            assert package == own or package in allowed, f"{own} imports {target}"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: module_name(p))
def test_no_private_names_across_modules(path):
    own = module_name(path)
    for module, names in imports(path):
        if module.split(".")[0] not in FIRST_PARTY or module == own:
            continue
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{own} imports {private} from {module}"


def test_argv_is_parsed_only_in_the_cli_package():
    for path in library_files():
        name = module_name(path)
        if name.startswith("gameart.cli") or name in ("export.cli", "export.__main__"):
            continue  # the command lines (export's is `python -m export`)
        tree = ast.parse(path.read_text())
        mains, modules = set(), set()  # names bound to a first-party main(), first-party modules
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] in FIRST_PARTY
            ):
                for alias in node.names:
                    if alias.name == "main":
                        mains.add(alias.asname or "main")
                    else:
                        modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "ArgumentParser":
                pytest.fail(f"{name} builds an ArgumentParser: move it to gameart/cli")
            if not isinstance(node, ast.Call):
                continue
            called = node.func
            if (isinstance(called, ast.Name) and called.id in mains) or (
                isinstance(called, ast.Attribute)
                and called.attr == "main"
                and isinstance(called.value, ast.Name)
                and called.value.id in modules
            ):
                pytest.fail(f"{name} calls another module's main(argv): use its typed function")


def test_scripts_are_thin_entry_points():
    for path in sorted((REPO_ROOT / "scripts").glob("*.py")):
        if path.name in ("check_install.py",):
            continue  # the install's own import check, no library behind it
        code = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert len(code) <= 12, f"{path.name} has {len(code)} lines: put the logic in gameart/"
        assert "gameart" in path.read_text(), path.name


def test_the_gpu_lease_script_parses_and_names_every_phase():
    """scripts/gpu_lease.sh runs only on a lent GPU machine, in one prepared call: a syntax
    error or a phase its usage line does not name would cost that lease."""
    script = REPO_ROOT / "scripts" / "gpu_lease.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    phases = re.findall(r"^([a-z0-9-]+)\)$", text, flags=re.MULTILINE)
    usage = re.search(r'^usage="usage: gpu_lease.sh (\S+) OUT', text, flags=re.MULTILINE)
    assert usage and sorted(usage.group(1).split("|")) == sorted(phases)
    assert {"issue13", "ort-gpu", "tests"} <= set(phases)
