"""The package's shape: module size and import order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400

# Modules allowed over MAX_LINES, each with its size as a ceiling (none today: every module is
# under the limit; an entry is a debt to pay, not a licence).
OVER_LIMIT: dict[str, int] = {}


def _line_counts() -> dict[str, int]:
    return {
        p.relative_to(SRC).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(SRC.rglob("*.py"))
    }


def test_no_module_passes_the_line_limit() -> None:
    counts = _line_counts()
    assert counts, f"no modules found under {SRC}"
    too_long = {
        name: (n, OVER_LIMIT.get(name, MAX_LINES)) for name, n in counts.items() if n > OVER_LIMIT.get(name, MAX_LINES)
    }
    assert not too_long, "modules over their line limit (lines, limit): " + ", ".join(
        f"{name} ({n} > {limit})" for name, (n, limit) in sorted(too_long.items())
    )


def test_the_over_limit_list_is_current() -> None:
    counts = _line_counts()
    missing = sorted(name for name in OVER_LIMIT if name not in counts)
    assert not missing, f"OVER_LIMIT names modules that do not exist: {missing}"
    back_under = sorted(name for name in OVER_LIMIT if counts[name] <= MAX_LINES)
    assert not back_under, f"back under {MAX_LINES} lines, remove from OVER_LIMIT: {back_under}"


@pytest.mark.parametrize("module", ["ptrag.experiments.cross_celltype", "ptrag.experiments.sweep"])
def test_experiment_modules_import_without_a_cycle(module: str) -> None:
    # a fresh interpreter each: a cycle only shows when its module is the first one imported
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"import {module} failed:\n{proc.stderr}"


def test_the_protocols_share_the_split_step_instead_of_importing_each_other() -> None:
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "ptrag" / "experiments"
    imported = {}
    for name in ("cross_celltype", "sweep", "split_step"):
        tree = ast.parse((src / f"{name}.py").read_text())
        imported[name] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "ptrag.experiments.cross_celltype" not in imported["sweep"]
    assert (
        "ptrag.experiments.split_step" in imported["sweep"]
        and "ptrag.experiments.split_step" in imported["cross_celltype"]
    )
    assert not {"ptrag.experiments.sweep", "ptrag.experiments.cross_celltype"} & imported["split_step"]


#: Which top-level packages each package may import (docs/architecture.md, "Import rule"),
#: counting imports inside functions too.
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "errors": set(),
    "lazy": set(),
    "model_checks": {"errors"},
    "nn": {"errors", "model_checks"},
    "data": {"errors", "lazy"},
    "genes": {"errors", "data"},
    "eval": {"errors", "data"},
    "train": {"errors", "lazy", "model_checks", "nn", "data"},
    "experiments": {"errors", "data", "eval", "train"},
    "cli": {"errors", "data", "genes", "eval", "train", "experiments"},
    "__main__": {"cli"},
    "__init__": {"errors", "lazy"},
}
MAX_FUNCTION_LINES = 60


def _modules():
    import ast

    for path in sorted((SRC / "ptrag").rglob("*.py")):
        parts = path.relative_to(SRC / "ptrag").parts
        yield (parts[0] if len(parts) > 1 else path.stem), path, ast.parse(path.read_text(encoding="utf-8"))


def _ptrag_imports(tree) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.split(".")[1] for name in names if name.startswith("ptrag.")}


def test_packages_follow_the_import_rule() -> None:
    broken = []
    for package, path, tree in _modules():
        for target in _ptrag_imports(tree) - {package} - ALLOWED_IMPORTS[package]:
            broken.append(f"{path.relative_to(SRC)} imports ptrag.{target}")
    assert not broken, "imports against docs/architecture.md's rule: " + "; ".join(broken)


def _code_lines(node) -> int:
    """Lines of a function without its docstring (the numpy-style parameter lists are not code)."""
    import ast

    body = node.body
    doc = body[0] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else None
    skipped = doc.end_lineno - doc.lineno + 1 if doc is not None and isinstance(doc.value.value, str) else 0
    return node.end_lineno - node.lineno + 1 - skipped


def test_no_function_passes_the_line_limit() -> None:
    import ast

    too_long = [
        f"{path.relative_to(SRC)}:{node.name} ({_code_lines(node)})"
        for _, path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines of code: " + ", ".join(too_long)
