"""The CI workflows are valid GitHub Actions (checked by actionlint) and only call make targets
that exist."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert found, "actionlint is missing: make install provides it (dev extra)"
    return found


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "pipeline.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_passes(workflow):
    result = subprocess.run(
        [_actionlint(), "-shellcheck=", "-pyflakes=", str(workflow)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ nope.value }}\n"
    )
    result = subprocess.run(
        [_actionlint(), "-shellcheck=", "-pyflakes=", str(broken)], capture_output=True, text=True
    )
    assert result.returncode != 0


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_called_make_targets_exist(workflow):
    called = set(re.findall(r"\bmake ([a-z][a-z-]*)", workflow.read_text()))
    if workflow.name == "pipeline.yml":
        assert {"install", "pipeline"} <= called
    assert called <= _make_targets(), f"unknown make targets: {called - _make_targets()}"


def test_ci_run_does_what_the_readme_says():
    script = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("make install", "make test"):
        assert command in script and command in readme
