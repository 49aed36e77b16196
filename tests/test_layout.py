"""The shape of the code, measured from the files: size limits that keep modules and functions
readable, stages that never import MLflow, and each named choice validated from its registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.config import choices
from pipeline.config.validate import RULES

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
MODULE_LINES, RUNNER_LINES, FUNCTION_LINES = 400, 220, 60
LONG_FUNCTION_MARK = "# long:"  # a function over the limit says why on the line above it


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _functions(path: Path) -> list[tuple[str, int, int]]:
    tree = ast.parse(path.read_text())
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert sizes["runner.py"] <= RUNNER_LINES
    assert {name: n for name, n in sizes.items() if n > MODULE_LINES} == {}


def test_no_function_is_over_the_size_limit_unless_it_says_why():
    too_long = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for name, start, length in _functions(path):
            above = lines[start - 2].strip() if start >= 2 else ""
            decorated = lines[start - 1].strip().startswith("@")
            if length > FUNCTION_LINES and not above.startswith(LONG_FUNCTION_MARK) and not decorated:
                too_long.append(f"{path.relative_to(PACKAGE)}:{start} {name} ({length} lines)")
    assert too_long == []


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stages_never_import_mlflow(path):
    assert not {m for m in _imports(path) if m == "mlflow" or m.startswith("mlflow.")}


def test_every_registry_is_what_validation_reads():
    """Each choice's valid names come from its registry in choices.py, never a second list."""
    source = (PACKAGE / "config" / "validate.py").read_text()
    registries = [
        name
        for name, value in vars(choices).items()
        if name.isupper()
        and isinstance(value, (dict, tuple))
        and name not in ("BUILTIN_DATASETS", "FLOORS", "FLOOR_TITLES")
    ]
    for name in registries:
        assert f"choices.{name}" in source, name
    checked = {key for key, _ in RULES}
    assert {"train.optimizer", "model.activation", "tune.sampler", "tune.pruner"} <= checked


def test_the_limits_fail_on_a_long_function(tmp_path):
    """The measuring code itself: a 70-line function is found, and the mark above it excuses it."""
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    path = tmp_path / "long.py"
    path.write_text(f"def long():\n{body}\n")
    assert _functions(path) == [("long", 1, 71)]
