"""Stage tune against a real Optuna study (the default journal file next to a temporary SQLite
MLflow store): pruning, one nested MLflow run per trial, resuming, a SIGKILLed run, two worker
processes sharing the study, failing trials and a changed search space."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import ROOT, TINY
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from python_runner import start_python

from pipeline.config import validate
from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics import Objective
from pipeline.runner import run_pipeline
from pipeline.tuning.liveness import RUN_ID_ATTR
from pipeline.tuning.space import suggest
from pipeline.tuning.study import PARENT_RUN_ATTR, load_study, open_study

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
TUNE = "stages=[prepare,tune]"
ACCURACY = "objective.metric=accuracy"  # the metric these tests read back
LR_ONLY = {"train": {"lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}}}
DIVERGES = 1e12  # an lr that makes the loss NaN in the first epoch: TrainingDiverged


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_store(store: str) -> Path:
    """Point this process's MLflow client at the test's store (for tests that run the pipeline
    in a subprocess); returns its folder."""
    target = Path(store[len("sqlite:///") :])
    mlflow.set_tracking_uri(store)
    return target.parent


def tune_cfg(make_cfg, *overrides: str, space: dict | None = None):
    cfg = make_cfg(TUNE, ACCURACY, *overrides)
    if space is not None:
        cfg.tune.space.network = space
    return cfg


def journal(store_dir: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(JournalFileBackend(str(store_dir / "optuna.journal")))


def the_study(store_dir: Path) -> optuna.Study:
    """The one study in the store's default journal."""
    storage = journal(store_dir)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    assert len(summaries) == 1, [s.study_name for s in summaries]
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage)


def done(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=DONE)


def trial_runs(tune_run_id: str) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(tune_run_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{tune_run_id}'", max_results=1000)


def run_ids(runs: list) -> list[str]:
    return sorted(r.info.run_id for r in runs)


def running_runs(experiment_id: str) -> list:
    return MlflowClient().search_runs([experiment_id], "attributes.status = 'RUNNING'")


# --- one invocation ---------------------------------------------------------------------------


def test_median_pruner_prunes_and_every_trial_has_its_own_nested_run(make_cfg, fresh_store):
    # a wide lr range: slow learners fall behind the median after the warm-up epochs. Four good
    # trials (more than the median pruner's startup trials) and one that cannot learn are queued
    # to be sure of a pruned trial; the sampler picks the rest
    cfg = tune_cfg(
        make_cfg,
        "tune.n_trials=8",
        "tune.epochs=8",
        "tune.pruner=median",
        "tune.sampler=random",
        "tune.study_name=pruning",
        space=LR_ONLY,
    )
    queued = optuna.create_study(study_name="pruning", storage=journal(fresh_store), direction="maximize")
    for lr in (3e-3, 1e-2, 3e-3, 1e-2, 1e-7):
        queued.enqueue_trial({"train.lr": lr})
    result = run_pipeline(cfg)
    tune_run_id = result.run_ids["tune.network"]
    study = the_study(fresh_store)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 8 == len(trials)
    assert states[TrialState.PRUNED] >= 1, states
    assert study.trials[4].state == TrialState.PRUNED  # lr=1e-7
    assert study.user_attrs[PARENT_RUN_ATTR] == tune_run_id
    assert result.outputs["tune"]["network"].counts == {s.name: n for s, n in states.items()}

    client = MlflowClient()
    tune_run = client.get_run(tune_run_id)
    assert tune_run.info.status == "FINISHED"
    assert tune_run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert tune_run.data.tags["study.name"] == study.study_name
    runs = {r.info.run_id: r for r in trial_runs(tune_run_id)}
    assert len(runs) == len(trials)
    for trial in trials:
        run = runs[trial.user_attrs[RUN_ID_ATTR]]
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.run_name == f"trial-{trial.number:03d}"
        assert run.info.status == "FINISHED"
        assert tags["trial.number"] == str(trial.number)
        assert tags["trial.state"] == trial.state.name
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == sorted(trial.intermediate_values)
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)
        if trial.state == TrialState.COMPLETE:
            assert len(history) == 8
            assert metrics["value"] == pytest.approx(trial.value)
        else:
            assert len(history) < 8  # stopped early by the pruner
            assert "value" not in metrics
            assert metrics["last_reported"] == pytest.approx(
                trial.intermediate_values[max(trial.intermediate_values)]
            )
    best = result.outputs["tune"]["network"]
    assert best.best_run_id == study.best_trial.user_attrs[RUN_ID_ATTR]
    assert best.best_value == pytest.approx(study.best_value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # the defaults: warm-up scaled to the epoch budget
        (["tune.epochs=30"], {"_n_startup_trials": 2, "_n_warmup_steps": 3}),
        (["tune.epochs=5"], {"_n_startup_trials": 2, "_n_warmup_steps": 1}),
        (
            ["tune.pruner_startup_trials=0", "tune.pruner_warmup_epochs=0"],
            {"_n_startup_trials": 0, "_n_warmup_steps": 0},
        ),
        (
            ["tune.pruner_startup_trials=5", "tune.pruner_warmup_epochs=7"],
            {"_n_startup_trials": 5, "_n_warmup_steps": 7},
        ),
    ],
)
def test_the_median_pruner_is_built_from_the_tune_config(make_cfg, fresh_store, overrides, expected):
    cfg = tune_cfg(make_cfg, "tune.pruner=median", *overrides)
    validate(cfg)
    study, _, _ = open_study(cfg, "network", "digest", Objective("accuracy", "maximize"), fresh_store)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    assert study.pruner._percentile == 50.0
    assert {key: getattr(study.pruner, key) for key in expected} == expected


def test_the_hyperband_pruner_is_built_from_the_tune_config(make_cfg, fresh_store):
    objective = Objective("accuracy", "maximize")
    study, _, _ = open_study(
        tune_cfg(make_cfg, "tune.pruner=hyperband", "tune.epochs=20"), "network", "a", objective, fresh_store
    )
    pruner = study.pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, 20, 4)
    cfg = tune_cfg(make_cfg, "tune.pruner=hyperband", "tune.pruner_reduction_factor=3", "tune.study_name=rf3")
    study, _, _ = open_study(cfg, "network", "b", objective, fresh_store)
    assert study.pruner._reduction_factor == 3


CONFIGURED = ["train.lr=0.01", "train.weight_decay=0.0001", "train.batch_size=64", "model.hidden=[32,16]",
              "model.dropout=0.1", "model.activation=gelu"]  # fmt: skip


def first_point(cfg, store_dir: Path) -> tuple[optuna.Study, dict]:
    """Open the study and draw its first trial's values."""
    study, _, identity = open_study(cfg, "network", "d", Objective("accuracy", "maximize"), store_dir)
    return study, suggest(study.ask(), identity.dimensions)


def test_a_new_studys_first_trial_tries_the_configured_values_once(make_cfg, fresh_store):
    study, values = first_point(tune_cfg(make_cfg, *CONFIGURED), fresh_store)
    assert values == {
        "train.lr": 0.01, "train.weight_decay": 0.0001, "train.batch_size": 64, "model.hidden": [32, 16],
        "model.dropout": 0.1, "model.activation": "gelu",
    }  # fmt: skip
    # joining the study later does not queue the defaults again
    study, _, _ = open_study(
        tune_cfg(make_cfg, *CONFIGURED), "network", "d", Objective("accuracy", "maximize"), fresh_store
    )
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def test_a_configured_value_outside_the_space_is_left_to_the_sampler(make_cfg, fresh_store):
    _, values = first_point(
        tune_cfg(make_cfg, *CONFIGURED, "train.lr=5.0", "model.hidden=[512]"), fresh_store
    )
    assert 0.0003 <= values["train.lr"] <= 0.03 and values["train.weight_decay"] == 0.0001
    assert all(16 <= width <= 256 for width in values["model.hidden"])


def test_a_study_whose_setting_up_was_interrupted_is_set_up_by_the_next_run(
    make_cfg, fresh_store, monkeypatch
):
    real = optuna.Study.enqueue_trial

    def ctrl_c(*args, **kwargs):  # created, its configured point not queued yet
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(optuna.Study, "enqueue_trial", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        first_point(tune_cfg(make_cfg, *CONFIGURED), fresh_store)
    monkeypatch.setattr(optuna.Study, "enqueue_trial", real)
    _, values = first_point(tune_cfg(make_cfg, *CONFIGURED), fresh_store)
    assert values["train.lr"] == 0.01 and values["model.activation"] == "gelu"
    assert the_study(fresh_store).user_attrs["fixed"] is not None


def test_start_from_config_false_samples_the_first_trial(make_cfg, fresh_store):
    _, values = first_point(tune_cfg(make_cfg, *CONFIGURED, "tune.start_from_config=false"), fresh_store)
    assert values["train.lr"] != 0.01 and values["model.dropout"] != 0.1


def test_the_same_seed_and_study_state_give_the_same_points_and_another_worker_new_ones(
    make_cfg, fresh_store
):
    def points(name: str, worker: int) -> list[dict]:
        cfg = tune_cfg(make_cfg, "tune.start_from_config=false", f"tune.study_name={name}")
        _, settings, identity = open_study(
            cfg, "network", "d", Objective("accuracy", "maximize"), fresh_store
        )
        study = load_study(settings, worker)
        found = []
        for _ in range(3):
            trial = study.ask()
            found.append(suggest(trial, identity.dimensions))
            study.tell(trial, 0.5)
        return found

    assert points("first", 0) == points("second", 0)
    assert not {json.dumps(p, sort_keys=True) for p in points("first-joined", 0)} & {
        json.dumps(p, sort_keys=True) for p in points("second-joined", 1)
    }


@pytest.mark.parametrize(
    ("override", "minimum"),
    [
        ("tune.pruner_startup_trials=-1", 0),
        ("tune.pruner_warmup_epochs=-1", 0),
        ("tune.pruner_reduction_factor=1", 2),
    ],
)
def test_pruner_settings_out_of_range_are_refused(make_cfg, override, minimum):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"{key}={value} is out of range; it must be >= {minimum}"):
        validate(make_cfg(override))


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_median_pruner_judges_in_the_direction_of_the_study(make_cfg, fresh_store, direction):
    """After the startup trials and the warm-up epochs, a trial worse than the median (in the
    study's direction) is pruned and a better one is not."""
    cfg = tune_cfg(make_cfg, "tune.epochs=20", "tune.pruner_startup_trials=2", "tune.pruner_warmup_epochs=2")
    metric = "accuracy" if direction == "maximize" else "log_loss"
    study, _, _ = open_study(cfg, "network", "digest", Objective(metric, direction), fresh_store)

    def score(quality: float) -> float:  # an accuracy, or a loss that falls as quality rises
        return quality if direction == "maximize" else 1.0 - quality

    for quality in (0.8, 0.9):  # the two startup trials
        trial = study.ask()
        for epoch in range(20):
            trial.report(score(quality + 0.001 * epoch), epoch)
        study.tell(trial, score(quality + 0.019))

    def pruned_at(quality: float) -> int | None:
        trial = study.ask()
        for epoch in range(20):
            trial.report(score(quality), epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                return epoch
        study.tell(trial, score(quality))
        return None

    assert pruned_at(0.5) == 2  # the first epoch after the warm-up
    assert pruned_at(0.95) is None


def test_resume_continues_toward_the_total_under_one_tune_run(make_cfg, fresh_store):
    first = run_pipeline(tune_cfg(make_cfg, "tune.n_trials=3"))
    assert len(done(the_study(fresh_store))) == 3
    second = run_pipeline(tune_cfg(make_cfg, "tune.n_trials=5"))

    study = the_study(fresh_store)
    assert len(done(study)) == 5
    assert len(study.trials) == 5
    tune_run_id = first.run_ids["tune.network"]
    assert second.run_ids["tune.network"] == tune_run_id == study.user_attrs[PARENT_RUN_ATTR]
    runs = trial_runs(tune_run_id)
    assert run_ids(runs) == sorted(t.user_attrs[RUN_ID_ATTR] for t in study.trials)
    client = MlflowClient()
    tune_run = client.get_run(tune_run_id)
    assert tune_run.info.status == "FINISHED"
    assert tune_run.data.tags["mlflow.parentRunId"] in (first.parent_run_id, second.parent_run_id)
    assert tune_run.data.tags["resumed"] == "true"
    metrics = tune_run.data.metrics
    assert metrics["trials.complete"] + metrics.get("trials.pruned", 0) == 5
    assert tune_run.data.tags["tune.n_trials"] == "5"  # a tag: MLflow params never change
    assert running_runs(first.experiment_id) == []


def test_a_changed_search_space_is_refused_for_a_named_study(make_cfg, fresh_store):
    first = run_pipeline(tune_cfg(make_cfg, "tune.n_trials=1", "tune.study_name=fixed"))
    changed = tune_cfg(
        make_cfg,
        "tune.n_trials=2",
        "tune.study_name=fixed",
        "tune.space.network.train.lr.high=0.05",
        "prepare.force=true",
    )
    with pytest.raises(ConfigError, match=r"'fixed'.*another search space.*new tune\.study_name"):
        run_pipeline(changed)
    study = optuna.load_study(study_name="fixed", storage=journal(fresh_store))
    assert len(study.trials) == 1  # nothing ran against the old study
    # the refused invocation's prepare run was still open (its outputs are saved once the tune
    # stage has started): it is finished all the same, its outputs sound, and nothing stays open
    prepared = MlflowClient().search_runs([first.experiment_id], "tags.stage = 'prepare'")
    assert len(prepared) == 2
    assert all(r.info.status == "FINISHED" and r.data.tags.get("outputs.sha256") for r in prepared)
    assert running_runs(first.experiment_id) == []


def test_the_prepared_data_is_saved_once_the_tune_stage_has_started(make_cfg, fresh_store):
    result = run_pipeline(tune_cfg(make_cfg, "tune.n_trials=2"))
    client = MlflowClient()
    prepare_run = client.get_run(result.run_ids["prepare"])
    tune_run = client.get_run(result.run_ids["tune.network"])
    assert tune_run.info.start_time <= prepare_run.info.end_time  # the prepare run was still open
    # ... yet the tune run is not nested under it: both are the invocation's
    assert prepare_run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert tune_run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert prepare_run.info.status == "FINISHED" and prepare_run.data.tags["outputs.sha256"]
    assert prepare_run.data.params["data.task"] == "binary"  # its record was written too
    assert prepare_run.info.end_time <= min(r.info.start_time for r in trial_runs(tune_run.info.run_id))
    again = run_pipeline(make_cfg("stages=[prepare]"))  # sealed and found: reused
    assert client.get_run(again.run_ids["prepare"]).info.run_id == prepare_run.info.run_id


def test_a_failed_save_of_the_prepared_data_fails_the_tune_run_before_any_trial(
    make_cfg, fresh_store, monkeypatch
):
    from pipeline.stages.prepare import PreparedData

    def full_disk(self, directory: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "rows.parquet"))

    monkeypatch.setattr(PreparedData, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_pipeline(tune_cfg(make_cfg, "tune.n_trials=2", "tune.study_name=unsaved"))
    client = MlflowClient()
    experiment = client.get_experiment_by_name(make_cfg().tracking.experiment)
    runs = {r.data.tags.get("stage", "pipeline"): r for r in client.search_runs([experiment.experiment_id])}
    assert {stage: r.info.status for stage, r in runs.items()} == {
        "pipeline": "FAILED",
        "prepare": "FAILED",
        "tune": "FAILED",
    }
    assert "outputs.sha256" not in runs["prepare"].data.tags
    study = optuna.load_study(study_name="unsaved", storage=journal(fresh_store))
    assert [t.state for t in study.trials] == [TrialState.WAITING]  # the first point, never run


# --- failing trials ---------------------------------------------------------------------------


def test_a_failing_trial_is_recorded_and_the_study_goes_on(make_cfg, fresh_store):
    space = {"train": {"lr": {"type": "categorical", "choices": [0.001, 0.003, 0.01, DIVERGES]}}}
    cfg = tune_cfg(make_cfg, "tune.n_trials=3", "tune.study_name=failing", space=space)
    # the first trial is sure to diverge; the sampler picks the others
    study = optuna.create_study(study_name="failing", storage=journal(fresh_store), direction="maximize")
    study.enqueue_trial({"train.lr": DIVERGES})
    result = run_pipeline(cfg)

    study = optuna.load_study(study_name="failing", storage=journal(fresh_store))
    assert len(done(study)) == 3
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert failed and failed[0].number == 0
    client = MlflowClient()
    for trial in failed:
        assert trial.params["train.lr"] == DIVERGES
        assert trial.user_attrs["error"].startswith("TrainingDiverged: training diverged")
        run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        assert run.info.status == "FAILED"
        assert run.data.tags["trial.state"] == "FAIL"
        assert run.data.tags["error"] == trial.user_attrs["error"]
        assert "value" not in run.data.metrics
    assert all(t.params["train.lr"] != DIVERGES for t in done(study))
    assert result.outputs["tune"]["network"].counts["FAIL"] == len(failed)
    assert client.get_run(result.run_ids["tune.network"]).info.status == "FINISHED"


def test_when_every_trial_fails_the_stage_fails_with_the_errors(make_cfg, fresh_store):
    space = {"train": {"lr": {"type": "categorical", "choices": [DIVERGES]}}}
    cfg = tune_cfg(make_cfg, "tune.n_trials=2", space=space)
    with pytest.raises(PipelineError, match=r"no trial completed.*2x TrainingDiverged: training diverged"):
        run_pipeline(cfg)
    study = the_study(fresh_store)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    client = MlflowClient()
    tune_run = client.get_run(study.user_attrs[PARENT_RUN_ATTR])
    assert tune_run.info.status == "FAILED"
    assert "no trial completed" in tune_run.data.tags["error"]
    assert client.get_run(tune_run.data.tags["mlflow.parentRunId"]).info.status == "FAILED"
    for trial in study.trials:
        assert client.get_run(trial.user_attrs[RUN_ID_ATTR]).info.status == "FAILED"


# --- processes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_retries_it_and_leaves_nothing_running(
    make_cfg, store, fresh_store, tmp_path
):
    overrides = [
        TUNE,
        "tune.n_trials=2",
        "tune.epochs=400",  # a first trial long enough to be caught mid-way
        "tune.pruner=none",
        "train.early_stopping.patience=100",
        "train.threads=1",
    ]
    process = start_python(
        [
            sys.executable,
            "-m",
            "pipeline",
            *TINY,
            f"tracking.uri={store}",
            f"hydra.run.dir={tmp_path / 'outputs'}",
            *overrides,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        output=tmp_path / "killed.log",
        merge=True,
    )
    victim = None
    try:
        deadline = time.time() + 240
        while victim is None and time.time() < deadline and process.poll() is None:
            time.sleep(0.3)
            if not (fresh_store / "optuna.journal").exists():
                continue
            try:
                study = the_study(fresh_store)
            except Exception:  # noqa: BLE001
                continue  # the study is being created
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if RUN_ID_ATTR in trial.user_attrs and 0 < len(trial.intermediate_values) < 200:
                    victim = trial
        assert victim is not None, (tmp_path / "killed.log").read_text()[-3000:]
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()  # no zombie: the process must be really gone for the reaping below

    client = MlflowClient()
    study = the_study(fresh_store)
    assert study.trials[victim.number].state == TrialState.RUNNING
    tune_run_id = study.user_attrs[PARENT_RUN_ATTR]
    experiment_id = client.get_run(tune_run_id).info.experiment_id
    [killed_parent] = client.search_runs(
        [experiment_id], f"tags.pid = '{process.pid}' and tags.stage = 'pipeline'"
    )
    left = {r.info.run_id for r in running_runs(experiment_id)}
    assert {killed_parent.info.run_id, tune_run_id, victim.user_attrs[RUN_ID_ATTR]} <= left

    result = run_pipeline(make_cfg(*overrides, "tune.epochs=40"))  # the same study, shorter trials

    study = the_study(fresh_store)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 2
    assert states[TrialState.RUNNING] == 0
    assert running_runs(experiment_id) == []
    # the killed trial failed, its run ended KILLED, and it was run again once with its params
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    killed_run = client.get_run(killed.user_attrs[RUN_ID_ATTR])
    assert killed_run.info.status == "KILLED"
    assert killed_run.data.tags["trial.state"] == "FAIL"
    [retry] = [t for t in study.trials if "retry_of" in t.user_attrs]
    assert retry.user_attrs["retry_of"] == victim.number
    assert retry.state in DONE
    assert retry.params == victim.params
    retry_run = client.get_run(retry.user_attrs[RUN_ID_ATTR])
    assert retry_run.data.tags["trial.retry_of"] == str(victim.number)
    # one tune run holds every trial run; the killed invocation's runs did not stay RUNNING
    assert result.run_ids["tune.network"] == tune_run_id
    assert client.get_run(tune_run_id).info.status == "FINISHED"
    assert client.get_run(killed_parent.info.run_id).info.status == "KILLED"
    expected = sorted(t.user_attrs[RUN_ID_ATTR] for t in study.trials)
    assert run_ids(trial_runs(tune_run_id)) == expected


@pytest.mark.slow
def test_two_worker_processes_share_the_study_without_duplicates(run_cli, fresh_store):
    # trials of a second or so each, so the pooled worker joins while there is work left
    done_run = run_cli(
        TUNE,
        "tune.n_jobs=2",
        "tune.n_trials=6",
        "tune.pruner=none",
        "tune.epochs=150",
        "train.early_stopping.patience=1000",
    )
    assert done_run.returncode == 0, done_run.stderr[-3000:]

    study = the_study(fresh_store)
    finished = done(study)
    assert len(finished) == 6
    assert len({t.number for t in finished}) == 6
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both processes ran trials
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    # only surplus trials (asked in a race, never run) may be anything else
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state not in DONE)
    runs = trial_runs(study.user_attrs[PARENT_RUN_ATTR])
    by_number = Counter(r.data.tags["trial.number"] for r in runs)
    assert all(n == 1 for n in by_number.values()), by_number
    assert run_ids(runs) == sorted(t.user_attrs[RUN_ID_ATTR] for t in finished)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_worker_pool_is_started_only_for_parallel_tuning_and_exits_when_not_needed(make_cfg):
    """The command line starts n_jobs - 1 workers before anything else when the stages tune in
    parallel; workers of a pipeline that ends before tuning are ended by close() instead of
    waiting forever (still importing: SIGTERM after a second's grace, status 143), and close()
    returns once they are gone (one left at exit would be sent SIGTERM mid-exit)."""
    from pipeline.tuning.workers import start_workers

    assert start_workers(make_cfg("stages=[prepare,tune]", "tune.n_jobs=1")) is None
    assert start_workers(make_cfg("stages=[prepare,train]", "tune.n_jobs=3")) is None
    pool = start_workers(make_cfg("stages=[prepare,tune]", "tune.n_jobs=2"))
    assert pool is not None
    assert len(pool) == 1 and all(p.is_alive() for p in pool.processes)
    started = time.monotonic()
    pool.close()  # they are still importing
    assert time.monotonic() - started < 20
    assert len(pool) == 0
    for process in pool.processes:
        assert not process.is_alive() and process.exitcode in (0, 143, -signal.SIGTERM)
