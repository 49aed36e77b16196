"""The model families: each one fits, reports its validation objective step by step (so a pruner
can stop it) and keeps its best step; tree families are pruned and resumed like the network;
registered names do not name a family; the gate compares champions across families."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from conftest import prepare_config
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pipeline.families import family, settings_of
from pipeline.metrics import resolve_objective
from pipeline.runner import run_pipeline
from pipeline.stages.register import model_name

TREES = ["hist_gradient_boosting", "random_forest"]
ALL = ["network", "hist_gradient_boosting", "random_forest", "linear"]


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    from conftest import CONF, TINY
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, "tracking.enabled=false"])
    prepared = prepare_config(cfg)
    return cfg, prepared, resolve_objective(None, None, prepared.task)


@pytest.mark.parametrize("name", ALL)
def test_each_family_learns_and_keeps_its_best_step(cancer, name):
    cfg, prepared, objective = cancer
    reports = []
    trained = family(name).fit(
        settings_of(cfg),
        prepared.training_data(),
        objective,
        on_step=lambda step, rec: reports.append((step, rec)),
    )
    key = f"val_{objective.metric}"
    assert [step for step, _ in reports] == list(range(len(trained.history)))
    assert [rec[key] for _, rec in reports] == [row[key] for row in trained.history]
    assert trained.best_score == max(row[key] for row in trained.history)
    assert trained.history[trained.best_epoch][key] == trained.best_score
    # the kept model is the best step's: scoring it again gives that step's validation score
    pred, proba = trained.fitted().predict(prepared.features["val"])
    assert objective.score(prepared.targets["val"], pred, proba) == pytest.approx(
        trained.best_score, abs=1e-6
    )
    assert trained.best_score > 0.9  # a useful model of breast_cancer (the floor's AUC is 0.5)


def test_tree_families_grow_in_steps(cancer):
    cfg, prepared, objective = cancer
    trained = family("random_forest").fit(settings_of(cfg), prepared.training_data(), objective)
    assert len(trained.history) == cfg.family.random_forest.steps
    forest = trained.fitted().estimator
    expected = (
        cfg.family.random_forest.n_estimators * (trained.best_epoch + 1) // cfg.family.random_forest.steps
    )
    assert len(forest.estimators_) == expected


@pytest.mark.parametrize("name", ALL)
def test_a_refit_adds_the_validation_rows_for_the_chosen_step_count(cancer, name):
    """With train.refit the final model is fitted again on train and val for the best epoch (or
    step) count; its validation score and history stay those of the first fit, which saw no val row."""
    from omegaconf import OmegaConf

    from pipeline.stages.train import train

    cfg, prepared, objective = cancer
    settings = settings_of(cfg)
    OmegaConf.update(settings, "train.refit", False)
    # a process's first fit pays torch's one-off costs, which the timing below must not see
    if name == "network":
        train(name, settings, prepared, objective)
    first = train(name, settings, prepared, objective)
    OmegaConf.update(settings, "train.refit", True)
    final = train(name, settings, prepared, objective)

    n_train, n_val = len(prepared.targets["train"]), len(prepared.targets["val"])
    assert (first.refit, first.fit_rows) == (False, n_train)
    assert (final.refit, final.fit_rows) == (True, n_train + n_val)
    key = f"val_{objective.metric}"
    assert (final.best_epoch, final.best_score) == (first.best_epoch, first.best_score)
    assert [row[key] for row in final.history] == [row[key] for row in first.history]
    test = prepared.encoded(final.fitted().encoding)["test"]
    first_proba, final_proba = first.fitted().predict(test)[1], final.fitted().predict(test)[1]
    assert not np.allclose(first_proba, final_proba)  # another model: it learnt from more rows
    assert objective.score(prepared.targets["test"], *final.fitted().predict(test)) > 0.9
    if name == "random_forest":  # grown to the chosen step: as many trees as the first fit kept
        assert len(final.fitted().estimator.estimators_) == len(first.fitted().estimator.estimators_)
    if name == "network":  # trained for the chosen epoch count, then stopped
        assert final.seconds > first.seconds


def test_a_fitted_estimator_round_trips(cancer, tmp_path):
    cfg, prepared, objective = cancer
    trained = family("hist_gradient_boosting").fit(settings_of(cfg), prepared.training_data(), objective)
    trained.save(tmp_path)
    loaded = type(trained).load(tmp_path)
    assert loaded.best_score == trained.best_score and loaded.history == trained.history
    before = trained.fitted().predict(prepared.features["test"])[1]
    after = loaded.fitted().predict(prepared.features["test"])[1]
    assert (before == after).all()


def _study(store_dir: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(store_dir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


# one wide dimension per tree family: a good value, and one that learns nothing (a learning rate
# too small to move the probabilities; leaves too large to split the training rows)
PRUNING = {
    "hist_gradient_boosting": (
        "learning_rate",
        {"type": "float", "low": 1e-7, "high": 1.0, "log": True},
        0.1,
        1e-7,
    ),
    "random_forest": ("min_samples_leaf", {"type": "int", "low": 1, "high": 400}, 1, 400),
}


@pytest.mark.parametrize("name", TREES)
def test_tree_family_trials_are_pruned_and_resumed(make_cfg, store, name):
    """A configuration that learns nothing falls behind the median after the warm-up step and is
    pruned; running the stage again continues the same study under the same tune run."""
    mlflow.set_tracking_uri(store)
    store_dir = Path(store[len("sqlite:///") :]).parent
    key, dimension, good, bad = PRUNING[name]
    path = f"family.{name}.{key}"

    def cfg(n_trials: int):
        composed = make_cfg(
            "stages=[prepare,tune]",
            f"candidates=[{name}]",
            "objective.metric=log_loss",  # probabilities, not only their order, must be right
            "tune.sampler=random",
            "tune.pruner=median",
            "tune.pruner_warmup_epochs=1",
            "tune.study_name=trees",
            f"tune.n_trials={n_trials}",
        )
        composed.tune.space[name] = {"family": {name: {key: dimension}}}
        return composed

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(store_dir / "optuna.journal")))
    queued = optuna.create_study(study_name="trees", storage=storage, direction="minimize")
    for value in (good, good, bad):  # two start-up trials, then one that cannot learn
        queued.enqueue_trial({path: value}, skip_if_exists=False)
    first = run_pipeline(cfg(3))
    study = _study(store_dir, "trees")
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[2].state == TrialState.PRUNED
    assert len(study.trials[2].intermediate_values) < family(name).steps(cfg(3))
    second = run_pipeline(cfg(5))
    study = _study(store_dir, "trees")
    counts = Counter(t.state for t in study.trials)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 5 == len(study.trials)
    run_key = f"tune.{name}"
    assert second.run_ids[run_key] == first.run_ids[run_key]  # one tune run holds the study
    trials = MlflowClient().search_runs(
        [first.experiment_id], f"tags.mlflow.parentRunId = '{first.run_ids[run_key]}'"
    )
    assert len(trials) == 5 and {t.data.tags["model.family"] for t in trials} == {name}


def test_registered_names_say_what_data_not_which_family(make_cfg, tmp_path):
    assert model_name(make_cfg()) == "breast_cancer"
    assert model_name(make_cfg("data=wine")) == "wine"
    table = make_cfg("data=table", f"data.path={tmp_path / 'customers.csv'}", "data.target=churn")
    assert model_name(table) == "customers"
    assert model_name(make_cfg("registry.model_name=shop")) == "shop"
