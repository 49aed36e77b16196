"""The CI workflows are valid GitHub Actions (checked by actionlint with shellcheck), only call
make targets that exist, and never let a workflow input run commands."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: make install provides it (dev extra)"
    return found


def _actionlint() -> str:
    return _tool("actionlint")


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "pipeline.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_passes_with_shellcheck(workflow):
    result = subprocess.run(
        [_actionlint(), f"-shellcheck={_tool('shellcheck')}", "-pyflakes=", str(workflow)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_no_input_is_pasted_into_a_script(workflow):
    """`${{ ... }}` expressions in a `run:` block are pasted into the script before it runs:
    inputs go through `env:` instead."""
    steps = [step for job in yaml.safe_load(workflow.read_text())["jobs"].values() for step in job["steps"]]
    for step in steps:
        assert "${{" not in step.get("run", ""), step.get("name", step["run"])


def _run_step(name: str) -> str:
    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / "pipeline.yml").read_text())["jobs"]
    return next(step["run"] for job in jobs.values() for step in job["steps"] if step.get("name") == name)


@pytest.mark.parametrize(
    "preset", ["data=breast_cancer; touch INJECTED", "$(touch INJECTED)", "`touch INJECTED`"]
)
def test_a_hostile_preset_cannot_run_commands(tmp_path, preset):
    """The nightly run step with a preset that tries to run a command: the command never runs,
    and the pipeline receives the words as overrides (which it then refuses)."""
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > received.txt\n')
    fake.chmod(0o755)
    env = {**os.environ, "PRESET": preset, "N_TRIALS": "3"}
    done = subprocess.run(
        ["bash", "-c", _run_step("Run the pipeline")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "INJECTED").exists()
    received = (tmp_path / "received.txt").read_text().split("\n")
    assert received[:2] == ["-m", "pipeline"] and "tune.n_trials=3" in received
    bad = subprocess.run(
        ["bash", "-c", _run_step("Run the pipeline")],
        cwd=tmp_path,
        env={**env, "N_TRIALS": "3; touch INJECTED"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and not (tmp_path / "INJECTED").exists()


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
        assert "install" in called
    assert called <= _make_targets(), f"unknown make targets: {called - _make_targets()}"


def test_ci_run_does_what_the_readme_says():
    script = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("make install", "make test"):
        assert command in script and command in readme
