"""Gradient-boosted trees (scikit-learn's HistGradientBoosting): boosting iterations are added in
steps, and the validation objective after each step lets a pruner stop a weak configuration."""

from __future__ import annotations

import math
from typing import Any

from pipeline.families import Family
from pipeline.families.estimator import TrainedEstimator, fit_in_steps
from pipeline.metrics import Objective
from pipeline.training.data import TrainingData
from pipeline.training.setup import thread_count

NAME = "hist_gradient_boosting"


def fit(
    settings: Any,
    data: TrainingData,
    objective: Objective,
    *,
    epochs: int | None = None,
    on_step: Any = None,
    progress: bool = False,
    stop_after: int | None = None,
) -> TrainedEstimator:
    from sklearn import ensemble

    s = settings.family[NAME]
    steps = int(epochs or s.steps)
    kind = (
        ensemble.HistGradientBoostingRegressor
        if data.task == "regression"
        else ensemble.HistGradientBoostingClassifier
    )
    estimator = kind(
        learning_rate=float(s.learning_rate),
        max_leaf_nodes=int(s.max_leaf_nodes),
        min_samples_leaf=int(s.min_samples_leaf),
        l2_regularization=float(s.l2_regularization),
        max_features=float(s.max_features),
        early_stopping=False,
        warm_start=True,
        random_state=int(settings.seed),
    )

    def grow(model: Any, step: int) -> None:
        model.set_params(max_iter=max(1, math.ceil(int(s.max_iter) * (step + 1) / steps)))

    threads = thread_count(settings.train.threads, int(data.x_train.shape[0]))
    return fit_in_steps(
        NAME, estimator, grow, steps, data, objective, on_step, threads, dense=True, stop_after=stop_after
    )


FAMILY = Family(
    name=NAME,
    fit=fit,
    output=TrainedEstimator,
    title=lambda task: "gradient boosting",
    steps=lambda cfg: int(cfg.family[NAME].steps),
    label=lambda cfg: NAME,
)
