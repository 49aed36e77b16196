"""What the scikit-learn families share: fitting in steps (more boosting iterations or more trees
each step) with the validation objective reported after each, so a trial can be pruned and the
best step kept; the fitted estimator as a model that predicts; and its trained result."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from pipeline.ensemble import load_predictions, save_predictions
from pipeline.metrics import Objective

if TYPE_CHECKING:  # a served tree model never imports torch
    from pipeline.training.data import TrainingData

StepCallback = Callable[[int, dict[str, float]], None]
ESTIMATOR_FILE, ESTIMATOR_META = "estimator.skops", "estimator.json"


class EstimatorModel:
    """A fitted scikit-learn estimator over the prepared features: class indices and
    probabilities for classification, values for regression."""

    kind = "estimator"
    encoding = "onehot"

    def __init__(self, estimator: Any, task: str, n_classes: int, dense: bool = False):
        self.estimator, self.task, self.n_classes, self.dense = estimator, task, n_classes, dense

    def predict(self, features: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if self.dense and sparse.issparse(features):
            features = features.toarray()
        if self.task == "regression":
            return np.asarray(self.estimator.predict(features), dtype=np.float64), None
        proba = np.zeros((features.shape[0], self.n_classes))
        proba[:, self.estimator.classes_.astype(int)] = self.estimator.predict_proba(features)
        return proba.argmax(axis=1), proba

    def save(self, directory: Path) -> None:
        from pipeline.persistence import dump

        directory.mkdir(parents=True, exist_ok=True)
        dump(self.estimator, directory / ESTIMATOR_FILE)
        meta = {"kind": self.kind, "task": self.task, "n_classes": self.n_classes, "dense": self.dense}
        (directory / ESTIMATOR_META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> EstimatorModel:
        from pipeline.persistence import load

        meta = json.loads((directory / ESTIMATOR_META).read_text())
        return cls(load(directory / ESTIMATOR_FILE), meta["task"], meta["n_classes"], meta["dense"])


@dataclass
class TrainedEstimator:
    """A scikit-learn family's trained model: the estimator of its best step, the validation
    objective step by step, and where its settings came from."""

    family: str
    model: EstimatorModel
    history: list[dict[str, float]]
    best_epoch: int  # the best step
    best_score: float
    stopped_early: bool = False
    seconds: float = 0.0
    threads: int = 1
    params_source: str = "config"
    applied_values: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    overridden: dict[str, Any] = field(default_factory=dict)  # tuned values the command line replaced
    refit: bool = False  # fitted again on train and val for the best epoch (or step) count
    fit_rows: int = 0  # the rows the final model was fitted on (train, or train and val after a refit)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)  # PNGs the record drew; never saved
    # the first fit's predictions on the validation split (what chooses without out-of-fold ones)
    val_predictions: tuple[Any, Any] | None = field(default=None, repr=False)
    # out-of-fold predictions on the train and val rows (train.cv_folds), when made
    oof_predictions: tuple[Any, Any] | None = field(default=None, repr=False)

    def fitted(self) -> EstimatorModel:
        return self.model

    def predictor(self, prepared: Any) -> Any:
        from pipeline.serving.predictor import Predictor

        return Predictor(prepared.preprocessing, self.model)

    def save(self, directory: Path) -> None:
        self.model.save(directory / "model")
        meta = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("model", "figures", "val_predictions", "oof_predictions")
        }
        (directory / "trained.json").write_text(json.dumps(meta, indent=2, default=float))
        save_predictions(self, directory)

    @classmethod
    def load(cls, directory: Path) -> TrainedEstimator:
        meta = json.loads((directory / "trained.json").read_text())
        return cls(
            model=EstimatorModel.load(directory / "model"),
            **load_predictions(directory),
            **meta,
        )


def val_record(model: EstimatorModel, data: TrainingData, objective: Objective) -> dict[str, float]:
    """The validation objective, and the validation loss the learning curve shows."""
    pred, proba = model.predict(data.x_val)
    record = {f"val_{objective.metric}": objective.score(data.y_val, pred, proba)}
    if proba is None:
        record["val_loss"] = float(np.mean((np.asarray(data.y_val, float) - pred) ** 2))
    else:
        clipped = np.clip(proba[np.arange(len(data.y_val)), data.y_val.astype(int)], 1e-7, 1.0)
        record["val_loss"] = float(-np.mean(np.log(clipped)))
    return record


def fit_in_steps(
    family: str,
    estimator: Any,
    grow: Callable[[Any, int], None],
    steps: int,
    data: TrainingData,
    objective: Objective,
    on_step: StepCallback | None,
    threads: int,
    dense: bool = False,
    stop_after: int | None = None,
) -> TrainedEstimator:
    """Fit `estimator` in `steps` steps (`grow(estimator, step)` sets how far step `step` goes,
    with warm_start keeping what is fitted), score the validation split after each, report it
    (a pruner may stop the trial there) and keep a copy of the best step's estimator.
    `stop_after`: fit exactly that many steps and keep the last (a refit, whose validation rows
    are among its training rows, has nothing to choose by)."""
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    x_train = data.x_train.toarray() if dense and sparse.issparse(data.x_train) else data.x_train
    model = EstimatorModel(estimator, data.task, data.n_classes, dense)
    history: list[dict[str, float]] = []
    best, best_step, best_score = None, -1, objective.worst()
    key = f"val_{objective.metric}"
    with threadpool_limits(threads):
        for step in range(steps if stop_after is None else min(stop_after, steps)):
            step_started = time.perf_counter()
            grow(estimator, step)
            estimator.fit(x_train, data.y_train)
            record = val_record(model, data, objective)
            record["step_seconds"] = time.perf_counter() - step_started
            history.append(record)
            if stop_after is not None:
                best, best_step, best_score = estimator, step, record[key]
            elif best_step < 0 or objective.improvement(record[key], best_score) > 0:
                best, best_step, best_score = copy.deepcopy(estimator), step, record[key]
            if on_step is not None:
                on_step(step, record)
    return TrainedEstimator(
        family=family,
        model=EstimatorModel(best, data.task, data.n_classes, dense),
        history=history,
        best_epoch=best_step,
        best_score=float(best_score),
        seconds=time.perf_counter() - started,
        threads=threads,
        fit_rows=int(x_train.shape[0]),
    )
