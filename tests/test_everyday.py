"""The everyday workflow does the right thing: a stage run alone takes the upstream run of its
objective and search, a resumed study samples new points, skipping tuning means the configured
values, the command line answers in one line, ports that are taken are refused, locks stay in the
store, dates become features, and the README's commands are valid as written."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY
from mlflow.tracking import MlflowClient
from python_runner import run_python

from pipeline.runner import run_pipeline

TUNE = ("stages=[prepare,tune]", "candidates=[network]")


def test_a_stage_alone_takes_the_tune_run_of_its_objective(make_cfg, capsys):
    accuracy = run_pipeline(make_cfg(*TUNE, "objective.metric=accuracy"))
    auc = run_pipeline(make_cfg(*TUNE, "objective.metric=roc_auc"))  # the newest tune run
    trained = run_pipeline(make_cfg("stages=[train]", "candidates=[network]", "objective.metric=accuracy"))
    assert trained.upstream_used["tune.network"] == accuracy.run_ids["tune.network"]
    assert (
        trained.outputs["train"]["network"].applied_values == accuracy.outputs["tune"]["network"].best_values
    )
    trained = run_pipeline(make_cfg("stages=[train]", "candidates=[network]", "objective.metric=roc_auc"))
    assert trained.upstream_used["tune.network"] == auc.run_ids["tune.network"]
    # no tune run for this objective: the configured values, and the train run says so
    other = run_pipeline(make_cfg("stages=[train]", "candidates=[network]", "objective.metric=log_loss"))
    assert "tune.network" not in other.upstream_used
    assert other.outputs["train"]["network"].params_source == "config"
    assert "tune.network: no finished run matches this data, objective and search" in capsys.readouterr().out


def test_a_resumed_study_samples_new_points(make_cfg):
    first = run_pipeline(make_cfg(*TUNE, "tune.n_trials=3", "tune.pruner=none"))
    run_pipeline(make_cfg(*TUNE, "tune.n_trials=6", "tune.pruner=none"))
    from pipeline.tuning.study import load_study, study_settings

    cfg = make_cfg(*TUNE, "tune.n_trials=6")
    prepared = first.outputs["prepare"]
    settings = study_settings(
        cfg, "network", prepared.digest, first.objective, Path(cfg.tracking.uri[10:]).parent
    )
    trials = load_study(settings).get_trials(deepcopy=False)
    assert len(trials) == 6
    earlier = [t.params for t in trials[:3]]
    assert all(t.params not in earlier for t in trials[3:])


def test_skipping_tuning_trains_with_the_configured_values(make_cfg):
    run_pipeline(make_cfg(*TUNE))
    fresh = run_pipeline(make_cfg("stages=[prepare,train,evaluate]", "candidates=[network]"))
    trained = fresh.outputs["train"]["network"]
    assert trained.params_source == "config" and trained.applied_values == {}
    assert "tune.network" not in fresh.upstream_used
    alone = run_pipeline(make_cfg("stages=[train]", "candidates=[network]"))  # continues the tune run
    assert alone.outputs["train"]["network"].params_source == "tune"


def test_a_finished_study_says_so(make_cfg, capsys):
    run_pipeline(make_cfg(*TUNE))
    capsys.readouterr()
    run_pipeline(make_cfg(*TUNE))
    out = capsys.readouterr().out
    assert re.search(r"tune network: study '.*' already has 2 finished trials \(tune.n_trials=2\): nothing to run; "
                     r"ask for more with tune.n_trials=4", out)  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.n_trails=3", "error: tune.n_trails is not a config key; did you mean tune.n_trials?"),
        (
            "tune.n_trials=abc",
            "error: tune.n_trials=abc is not valid: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            "data=nope",
            "error: data='nope' is not valid; expected one of breast_cancer, diabetes, digits, table, wine",
        ),
        ("+foo=1", "error: foo is not a config key"),
        ("tracking.uri=http://me:pw@example:5000", "error: tracking.uri holds a password"),
        ("tune.storage=postgresql://me:pw@db/optuna", "error: tune.storage holds a password"),
    ],
)
def test_every_config_error_is_one_line_with_exit_2(override, message, tmp_path):
    """Through the console script a user runs (.venv/bin/pipeline), before Hydra writes anything."""
    script = Path(sys.executable).parent / "pipeline"
    done = subprocess.run([str(script), override], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        (["pipeline.ui", "--backend-store-uri", "sqlite:///x.db", "--port"], "make ui UI_PORT="),
        (["pipeline.serving", "serve", "--port"], "make serve SERVE_PORT="),
        (["pipeline.dashboard", "--storage", "x.journal", "--port"], "make dashboard DASHBOARD_PORT="),
        (["pipeline.infra", "start", "--port"], "make server SERVER_PORT="),
    ],
)
def test_a_taken_port_is_refused_in_one_line(command, setting, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_python([sys.executable, "-m", *command, str(port)], cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: port {port} on 127.0.0.1 is in use") and setting in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


@pytest.mark.slow
def test_the_summary_names_the_run_and_locks_stay_in_the_store(run_cli, store):
    done = run_cli("candidates=[linear]")
    assert done.returncode == 0, done.stderr[-2000:]
    parent = MlflowClient(tracking_uri=store).search_runs(["1"], "tags.stage = 'pipeline'")[0].info.run_id
    assert re.search(rf"^run +{parent} +\(make reproduce RUN={parent}\)$", done.stdout, flags=re.MULTILINE)
    assert "View run" not in done.stdout
    store_dir = Path(store[len("sqlite:///") :]).parent
    assert (store_dir / "locks" / "registry-breast_cancer.lock").exists()
    assert not list(ROOT.glob("*.lock")) and not list(ROOT.glob(".registry-*"))
    locks = ["locks/registry-x.lock", ".registry-x.lock", "studies/x.journal.flock"]
    ignored = subprocess.run(["git", "check-ignore", *locks], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == locks  # a store kept in the checkout leaves nothing for git to add


def test_dates_become_features_and_time_splits_still_work(make_cfg, tmp_path):
    from conftest import prepare_config

    rng = np.random.default_rng(0)
    n = 200
    days = pd.date_range("2024-01-01", periods=n, freq="D")
    frame = pd.DataFrame(
        {
            "signup": days.strftime("%Y-%m-%d"),  # all distinct: once dropped as an identifier
            "seen": rng.choice(days.strftime("%d/%m/%Y")[:20], n),  # repeated: once one-hot encoded
            "x": rng.normal(size=n),
            "label": np.where(rng.normal(size=n) + (np.arange(n) > 100) > 0.5, "yes", "no"),
        }
    )
    frame.to_csv(tmp_path / "dates.csv", index=False)
    cfg = make_cfg(
        "data=table", f"data.path={tmp_path / 'dates.csv'}", "data.target=label", "data.split.time=signup"
    )
    prepared = prepare_config(cfg)
    assert prepared.preprocessing.column_types == {"seen": "date", "x": "numeric"}
    assert prepared.card["dropped_columns"] == {"signup": "used for the time split"}
    train_days = pd.to_datetime(frame["signup"]).iloc[prepared.index["train"]]
    test_days = pd.to_datetime(frame["signup"]).iloc[prepared.index["test"]]
    assert train_days.max() < test_days.min()
    # four plain features per date: year, month, weekday and days since the first
    assert prepared.features["train"].shape[1] == 1 + 4
    raw = pd.DataFrame({"seen": ["2024-01-05", None], "x": [0.1, 0.2]})
    assert np.isfinite(prepared.preprocessing.transform(raw)).all()
    # without a time split, the all-distinct column is a date feature too, not an identifier
    prepared = prepare_config(
        make_cfg("data=table", f"data.path={tmp_path / 'dates.csv'}", "data.target=label")
    )
    assert prepared.preprocessing.column_types == {"signup": "date", "seen": "date", "x": "numeric"}
    assert prepared.features["train"].shape[1] == 4 + 4 + 1


def _readme_commands() -> list[tuple[str, str | None]]:
    """Each command the README shows, and the error line it shows after it, if any."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.DOTALL):
        lines = [line.split("  #")[0].strip().removeprefix("$ ") for line in block.splitlines()]
        for i, line in enumerate(lines):
            if line.startswith(("make ", "python -m pipeline ", ".venv/bin/pipeline ")):
                after = lines[i + 1] if i + 1 < len(lines) else ""
                found.append((line, after.removeprefix("error: ") if after.startswith("error: ") else None))
    return found


def _targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize(("command", "error"), _readme_commands(), ids=lambda c: str(c)[:60])
def test_the_readme_commands_are_valid_as_written(command, error):
    """Each command the README shows names a make target that exists, and its overrides compose
    into a config that passes validation (what `python -m pipeline` checks before running), or
    fail with the very line the README shows after it. (That the command line composes each one
    as typed is the next test's: `--cfg job`.)"""
    from conftest import composed

    from pipeline.config import validate
    from pipeline.config.overrides import compose_checked
    from pipeline.errors import ConfigError

    words = shlex.split(command)
    if words[0] == "make":
        assert words[1] in _targets(), command
        args = next((w.split("=", 1)[1] for w in words if w.startswith("ARGS=")), "")
        if words[1] not in (
            "pipeline",
            "sweep",
            "sweep-worker",
            "train",
            "tune",
            "prepare",
            "evaluate",
            "register",
        ):
            return
        overrides = shlex.split(args)
    else:
        overrides = [w for w in words[3 if words[0] == "python" else 1 :] if not w.startswith("-")]
        if any("," in o.split("=", 1)[-1] and "[" not in o for o in overrides):
            return  # a Hydra sweep (-m): each value is checked when its job runs
    if error is None:
        validate(composed(overrides))
        return
    try:
        validate(compose_checked(overrides))
    except ConfigError as refused:
        assert str(refused) == error
    else:  # the config is fine: the README's error comes from the data (its example file)
        assert error.startswith(("target column", "data.path=")), error


RUNS_PIPELINE = ("pipeline", "sweep", "sweep-worker", "prepare", "tune", "train", "evaluate", "register")


def _as_typed(command: str) -> list[str] | None:
    """The README command as a user types it; one that would run the pipeline prints its
    composed config instead (`--cfg job`: what it would run, and nothing written); None for the
    commands that start servers, build or test (their targets are checked above)."""
    words = shlex.split(command)
    if words[0] == "make":
        if words[1] not in RUNS_PIPELINE:
            return None
        args = next((w.split("=", 1)[1] for w in words if w.startswith("ARGS=")), "")
        rest = [w for w in words[2:] if not w.startswith("ARGS=")]
        return ["make", "-s", "-C", str(ROOT), words[1], *rest, f"ARGS={args} --cfg job"]
    if "-m" in words:
        return None  # a sweep runs its jobs; each value is validated above
    return [str(Path(sys.executable).parent / "pipeline"), *words[1:]]


@pytest.mark.parametrize(("command", "error"), _readme_commands(), ids=lambda c: str(c)[:60])
def test_the_readme_commands_run_as_written(command, error, tmp_path):
    """Each README command that runs the pipeline, typed as written in a fresh folder beside the
    README's example table: it composes (exit 0), or prints the very error line the README shows
    (exit 2, one line)."""
    typed = _as_typed(command)
    if typed is None:
        return
    if error is not None:
        typed = [w for w in typed if w != "--cfg job"]
    pd.DataFrame({"customer_id": ["C0", "C1"], "x1": [0.3, 0.8], "x2": [3.2, 5.4], "color": ["red", "green"],
                  "visits": [3, 3], "income": [67137, 82275], "notes": [None, None], "store": ["S5", "S2"],
                  "day": ["2024-01-01", "2024-02-08"], "churned": ["yes", "no"]}).to_csv(tmp_path / "customers.csv", index=False)  # fmt: skip
    done = subprocess.run(typed, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if error is None:
        assert done.returncode == 0 and "stages:" in done.stdout, (command, done.stderr[-2000:])
    else:
        assert (done.returncode, done.stderr.strip().splitlines()) == (2, [f"error: {error}"]), command
    if not error or "config" in _kind_of(error):
        assert not (tmp_path / "outputs").exists()  # a config is refused before Hydra's run folder


def _kind_of(error: str) -> str:
    """Whether the README's error line is about the config or the data (the run's log keeps
    what the data got wrong)."""
    return "data" if error.startswith(("target column", "data.path=")) else "config"


def test_the_readme_shows_commands():
    assert len(_readme_commands()) >= 15


def test_a_console_script_runs_without_activating_the_venv(tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "pipeline"), *TINY, "stages=[prepare]", "--cfg", "job"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "stages:\n- prepare" in done.stdout, done.stderr
