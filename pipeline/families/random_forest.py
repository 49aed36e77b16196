"""Random forests (or extra-trees, `family.random_forest.extra_trees=true`): trees are added in
steps, and the validation objective after each step lets a pruner stop a weak configuration."""

from __future__ import annotations

import math
from typing import Any

from pipeline.families import Family
from pipeline.families.estimator import TrainedEstimator, fit_in_steps
from pipeline.metrics import Objective
from pipeline.training.data import TrainingData
from pipeline.training.setup import thread_count

NAME = "random_forest"


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
    regression = data.task == "regression"
    if s.extra_trees:
        kind = ensemble.ExtraTreesRegressor if regression else ensemble.ExtraTreesClassifier
    else:
        kind = ensemble.RandomForestRegressor if regression else ensemble.RandomForestClassifier
    threads = thread_count(settings.train.threads, int(data.x_train.shape[0]))
    # a forest draws bootstrap samples (of max_samples rows when set); extra-trees uses every row
    sampling = (
        {} if s.extra_trees else {"max_samples": None if s.max_samples is None else float(s.max_samples)}
    )
    estimator = kind(
        max_features=s.max_features,
        min_samples_leaf=int(s.min_samples_leaf),
        **sampling,
        n_jobs=threads,
        warm_start=True,
        random_state=int(settings.seed),
    )

    def grow(model: Any, step: int) -> None:
        model.set_params(n_estimators=max(1, math.ceil(int(s.n_estimators) * (step + 1) / steps)))

    return fit_in_steps(
        NAME, estimator, grow, steps, data, objective, on_step, threads, stop_after=stop_after
    )


FAMILY = Family(
    name=NAME,
    fit=fit,
    output=TrainedEstimator,
    title=lambda task: "random forest",
    steps=lambda cfg: int(cfg.family[NAME].steps),
    label=lambda cfg: NAME,
)
