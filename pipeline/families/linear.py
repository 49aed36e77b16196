"""Linear models: logistic regression for classification, ridge regression for regression, with
one regularization strength `C` (ridge's alpha is 1/C)."""

from __future__ import annotations

from typing import Any

from pipeline.families import Family
from pipeline.families.estimator import TrainedEstimator, fit_in_steps
from pipeline.metrics import Objective
from pipeline.training.data import TrainingData
from pipeline.training.setup import thread_count

NAME = "linear"


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
    from sklearn import linear_model

    s = settings.family[NAME]
    if data.task == "regression":
        estimator = linear_model.Ridge(alpha=1.0 / float(s.C))
    else:
        estimator = linear_model.LogisticRegression(C=float(s.C), max_iter=int(s.max_iter))
    threads = thread_count(settings.train.threads, int(data.x_train.shape[0]))
    return fit_in_steps(
        NAME, estimator, lambda model, step: None, 1, data, objective, on_step, threads, stop_after=stop_after
    )


FAMILY = Family(
    name=NAME,
    fit=fit,
    output=TrainedEstimator,
    title=lambda task: "linear regression" if task == "regression" else "logistic regression",
    steps=lambda cfg: 1,
    label=lambda cfg: NAME,
)
