"""Stage train: each candidate family's final model, with the best parameters of the tune stage
it follows or, when no tune run is used, the configured ones; the output says which. Early
stopping on the validation split picks the epoch (or step) count. When several families compete
on a small table, that count is also fitted on folds of the training and validation rows: the
out-of-fold predictions are what the evaluate stage chooses on. With `train.refit` the family is
then fitted again for that count on the training and validation rows together."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.ensemble import Predictions
from pipeline.families import Family, settings_of
from pipeline.families import family as declared_family
from pipeline.metrics import Objective
from pipeline.stages import Stage, StageCall
from pipeline.stages.prepare import PreparedData
from pipeline.stages.tune import TuneResult
from pipeline.training.data import TrainingData, cross_validation_folds, with_validation_in_training
from pipeline.training.loop import EpochCallback
from pipeline.tuning.space import apply_values


def train(
    family: str,
    settings: DictConfig,
    prepared: PreparedData,
    objective: Objective,
    tuned: TuneResult | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
    explicit: frozenset[str] = frozenset(),
    cv_folds: int = 0,
) -> Any:
    """Fit `family` on the training split, early-stopped on the validation split, with the tuned
    values when `tuned` is given, except those the command line set (`explicit` keys); with
    `cv_folds`, its out-of-fold predictions on train and val; then refit on train and val when
    `settings.train.refit` is set.
    `settings`: the sections a family reads (`settings_of(cfg)`)."""
    tuned_values = dict(tuned.best_values) if tuned is not None else {}
    values = {k: v for k, v in tuned_values.items() if k not in explicit}
    declared = declared_family(family)
    settings = apply_values(settings, values)
    data = prepared.training_data(declared.encoding(settings))
    trained = declared.fit(
        settings,
        data,
        objective,
        on_step=on_epoch,
        progress=progress,
    )
    val_predictions = trained.fitted().predict(data.x_val)  # before a refit sees those rows
    started = time.perf_counter()
    oof = (
        out_of_fold(declared, settings, data, objective, trained.best_epoch + 1, cv_folds)
        if cv_folds
        else None
    )
    cv_seconds = time.perf_counter() - started
    if settings.train.refit:
        trained = refit(declared, settings, data, objective, trained)
    trained.val_predictions, trained.oof_predictions = val_predictions, oof
    trained.seconds += cv_seconds  # what the family cost, its out-of-fold fits included
    trained.params_source = "tune" if values else "config"
    trained.applied_values = values
    trained.overridden = {
        k: _plain(OmegaConf.select(settings, k)) for k in sorted(tuned_values) if k in explicit
    }
    return trained


def refit(
    declared: Family, settings: DictConfig, data: TrainingData, objective: Objective, first: Any
) -> Any:
    """`first`'s settings fitted again on the training and validation rows for its best epoch (or
    step) count, like FLAML's retrain_full and AutoGluon's refit_full. The result keeps `first`'s
    validation history and score: those are what selection compares, and the refit model has
    seen the validation rows."""
    again = declared.fit(
        settings, with_validation_in_training(data), objective, stop_after=first.best_epoch + 1
    )
    again.history, again.best_epoch, again.best_score = first.history, first.best_epoch, first.best_score
    again.stopped_early = first.stopped_early
    again.seconds += first.seconds
    again.refit = True
    return again


def out_of_fold(
    declared: Family, settings: DictConfig, data: TrainingData, objective: Objective, steps: int, folds: int
) -> Predictions:
    """Predictions for every training and validation row from `settings` fitted for `steps` epochs
    (or steps) on the other folds, as FLAML and AutoGluon score small tables: selection then
    rests on all those rows, not on the validation split's few hundred."""
    pred, proba = None, None
    for fold, held in cross_validation_folds(data, folds, int(settings.seed)):
        fold_pred, fold_proba = (
            declared.fit(settings, fold, objective, stop_after=steps).fitted().predict(fold.x_val)
        )
        if pred is None:
            rows = len(data.y_train) + len(data.y_val)
            pred = np.empty(rows, dtype=fold_pred.dtype)
            proba = None if fold_proba is None else np.empty((rows, fold_proba.shape[1]))
        pred[held] = fold_pred
        if proba is not None:
            proba[held] = fold_proba
    return pred, proba


def cv_folds(cfg: DictConfig, prepared: PreparedData) -> int:
    """The folds of the out-of-fold predictions: none with one candidate (nothing to choose), on
    more rows than `train.cv_max_rows`, or for a group or time split (folds would mix groups or
    let the past see the future)."""
    rows = len(prepared.targets["train"]) + len(prepared.targets["val"])
    if len(cfg.candidates) < 2 or rows > cfg.train.cv_max_rows:
        return 0
    return int(cfg.train.cv_folds) if prepared.card["split_strategy"] in ("random", "stratified") else 0


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def run(call: StageCall) -> Any:
    return train(
        call.family,
        settings_of(call.cfg),
        call.upstream["prepare"],
        call.invocation.objective,
        call.upstream.get("tune"),
        on_epoch=call.record.epochs,
        progress=call.invocation.progress,
        explicit=call.invocation.explicit,
        cv_folds=cv_folds(call.cfg, call.upstream["prepare"]),
    )


def _params(cfg: DictConfig, family: str, trained: Any) -> dict[str, Any]:
    from pipeline.tracking.recorder import flatten

    if family == "network":
        sections = {"train": cfg.train, "model": cfg.model}
    else:
        sections = {"family": {family: cfg.family[family]}}
    resolved = OmegaConf.to_container(OmegaConf.create(sections), resolve=True)
    return flatten(resolved) | trained.applied_values  # tuned values win


def record(run: Any, trained: Any, call: StageCall) -> None:
    metric = call.invocation.objective.metric
    tune_run = call.upstream_runs.get(f"tune.{call.family}")
    size = {}
    if call.family == "network":
        size["parameter_count"] = sum(p.numel() for p in trained.network.parameters())
    run.log(
        params=_params(call.cfg, call.family, trained),
        metrics={
            **size,
            f"best_val_{metric}": trained.best_score,
            "best_epoch": trained.best_epoch,
            "epochs_run": len(trained.history),
            "train_seconds": trained.seconds,
            "fit_rows": trained.fit_rows,
            "cv_folds": 0
            if trained.oof_predictions is None
            else cv_folds(call.cfg, call.upstream["prepare"]),
        },
        tags={
            "params.source": f"tune:{tune_run.run_id}"
            if trained.params_source == "tune" and tune_run
            else "config",
            "device": trained.device,
            "threads": trained.threads,
            "refit": str(trained.refit).lower(),
        },
    )
    if call.plots:
        from pipeline import plots  # matplotlib: imported only to draw

        curve = plots.learning_curve(trained.history, f"val_{metric}", trained.best_epoch)
        trained.figures = run.figures({"learning_curve.png": curve}) or {}  # the run report shows it again
    prepared: PreparedData = call.upstream["prepare"]
    run.model(trained.predictor(prepared), prepared.frames["test"].head(3))


STAGE = Stage(
    name="train",
    needs=("prepare",),
    uses=lambda cfg: () if cfg.train.params_from == "config" else ("tune",),
    output=lambda family: declared_family(family).output,
    run=run,
    record=record,
    per_family=True,
    system_metrics=True,
)
