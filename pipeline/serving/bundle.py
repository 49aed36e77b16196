"""The code a logged model carries (its `code/` folder): the modules that loading it and scoring
rows import, found by following imports from a few roots, not the whole package. A third of the
package's files, so logging, downloading, checking and serving a model each copy and hash less;
the integrity manifest covers every file that is there."""

from __future__ import annotations

import ast
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent.parent

ROOTS = (
    "pipeline.serving.model_code",  # what MLflow runs to build the pyfunc
    # each kind of fitted model: `pipeline.families.load_fitted` imports the one the files name
    "pipeline.ensemble",
    "pipeline.families.estimator",
    "pipeline.families.network",
)


def _source(module: str) -> Path | None:
    """The file of a module of the package (its `__init__.py` for a subpackage), if there is one."""
    path = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
    )


def _loading_imports(body: list[ast.stmt]) -> Iterator[str]:
    """The modules that statements run as a module loads import: function bodies run later, if
    ever, and are left out; class bodies and module-level blocks run now."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # submodules
        for block in ("body", "orelse", "finalbody"):
            yield from _loading_imports(getattr(node, block, []))
        for handler in getattr(node, "handlers", []):
            yield from _loading_imports(handler.body)


def _named_imports(tree: ast.Module) -> Iterator[str]:
    """Modules named by a literal anywhere in `import_module("...")`: the networks' classes, chosen
    by the name a saved model records."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield str(node.args[0].value)


def _trusted_modules() -> Iterator[str]:
    """The modules of the package's types that a saved file may hold (skops imports them by name)."""
    from pipeline.persistence import TRUSTED

    return (name.rsplit(".", 1)[0] for name in TRUSTED if name.startswith(f"{PACKAGE}."))


@functools.cache
def bundled_modules() -> tuple[str, ...]:
    """Every module of the package that loading a logged model can import, with its parents."""
    found: dict[str, Path] = {}
    pending = [*ROOTS, *_trusted_modules()]
    while pending:
        module = pending.pop()
        if not (module == PACKAGE or module.startswith(f"{PACKAGE}.")) or module in found:
            continue
        source = _source(module)
        if source is None:  # a name imported from a module, not a module itself
            continue
        found[module] = source
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        tree = ast.parse(source.read_text(), filename=str(source))
        pending.extend(_loading_imports(tree.body))
        pending.extend(_named_imports(tree))
    return tuple(sorted(found))


def copy_bundle(into: Path) -> Path:
    """Copy the bundled modules' files into `into/pipeline` (the package's layout); returns that
    folder, for `code_paths`."""
    for module in bundled_modules():
        source = _source(module)
        assert source is not None
        target = into / source.relative_to(PACKAGE_DIR.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return into / PACKAGE
