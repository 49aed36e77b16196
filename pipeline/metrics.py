"""Metrics by name, their natural direction, and the objective: the one metric and direction used
everywhere a model is judged (tuning, the evaluation verdict, the registry gate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from pipeline.errors import ConfigError

CLASSIFICATION = ("binary", "multiclass")


def _sklearn() -> ModuleType:
    # imported on first use: a tuning worker that scores accuracy or rmse starts without paying
    # the 1.5 s scikit-learn import
    from sklearn import metrics

    return metrics


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # maximize or minimize
    tasks: tuple[str, ...]
    # (y_true, y_pred, proba) -> value; proba is (n, n_classes) for classification, None otherwise
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """The chance that a positive row outscores a negative one, ties counting half (the
    Mann-Whitney statistic): scikit-learn's area under the ROC curve to rounding, at a fraction
    of its cost. Its input checks take ~4 ms a call, the evaluation's bootstrap makes thousands of
    calls and every epoch of a network one."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")  # as scikit-learn's (which also warns)
    _, group, counts = np.unique(score, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2.0)[group]  # 1-based, tied rows share the mean rank
    return float((rank[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _roc_auc(y: np.ndarray, _pred: np.ndarray, proba: np.ndarray | None) -> float:
    assert proba is not None
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    if not np.isfinite(proba).all():  # scikit-learn's error names the bad input
        return float(_sklearn().roc_auc_score(y, proba[:, 1] if proba.shape[1] == 2 else proba))
    if proba.shape[1] == 2:
        return _binary_auc(y == 1, proba[:, 1])
    # one class against the rest, the unweighted mean over classes (scikit-learn's "ovr" macro):
    # undefined when a class is absent
    return float(np.mean([_binary_auc(y == k, proba[:, k]) for k in range(proba.shape[1])]))


def _log_loss(y: np.ndarray, _pred: np.ndarray, proba: np.ndarray | None) -> float:
    assert proba is not None
    # clip, then renormalize in float64: float32 network probabilities widened to float64 miss a
    # sum of exactly one by ~1e-7, which scikit-learn warns about on every call
    clipped = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.size == 0 or y.min() < 0 or y.max() >= proba.shape[1]:
        # scikit-learn's checks name what is wrong with the labels
        return float(_sklearn().log_loss(y, clipped, labels=np.arange(proba.shape[1])))
    return float(-np.mean(np.log(clipped[np.arange(len(y)), y])))


def _brier(y: np.ndarray, _pred: np.ndarray, proba: np.ndarray | None) -> float:
    """Multiclass Brier score: mean squared distance between probabilities and one-hot labels."""
    assert proba is not None
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: the confidence-weighted gap between confidence and accuracy per bin."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _rmse(y: np.ndarray, pred: np.ndarray, _proba: np.ndarray | None) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, float) - np.asarray(pred, float)) ** 2)))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", "maximize", CLASSIFICATION, lambda y, p, _: float(np.mean(y == p))),
        Metric(
            "balanced_accuracy",
            "maximize",
            CLASSIFICATION,
            lambda y, p, _: float(_sklearn().balanced_accuracy_score(y, p)),
        ),
        Metric(
            "precision_macro",
            "maximize",
            CLASSIFICATION,
            lambda y, p, _: float(_sklearn().precision_score(y, p, average="macro", zero_division=0)),
        ),
        Metric(
            "recall_macro",
            "maximize",
            CLASSIFICATION,
            lambda y, p, _: float(_sklearn().recall_score(y, p, average="macro", zero_division=0)),
        ),
        Metric(
            "f1_macro",
            "maximize",
            CLASSIFICATION,
            lambda y, p, _: float(_sklearn().f1_score(y, p, average="macro", zero_division=0)),
        ),
        Metric("roc_auc", "maximize", CLASSIFICATION, _roc_auc),
        Metric("log_loss", "minimize", CLASSIFICATION, _log_loss),
        Metric("brier", "minimize", CLASSIFICATION, _brier),
        Metric("ece", "minimize", CLASSIFICATION, lambda y, _p, proba: expected_calibration_error(y, proba)),
        Metric("rmse", "minimize", ("regression",), _rmse),
        Metric(
            "mae", "minimize", ("regression",), lambda y, p, _: float(_sklearn().mean_absolute_error(y, p))
        ),
        Metric("r2", "maximize", ("regression",), lambda y, p, _: float(_sklearn().r2_score(y, p))),
    ]
}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def better(self, a: float, b: float, min_delta: float = 0.0) -> bool:
        """True when score `a` beats `b` by at least `min_delta` in this objective's direction."""
        return a - b >= min_delta if self.maximize else b - a >= min_delta

    def improvement(self, a: float, b: float) -> float:
        """How much `a` is better than `b` (positive is better), whatever the direction."""
        return a - b if self.maximize else b - a

    def worst(self) -> float:
        return -np.inf if self.maximize else np.inf

    def score(self, y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None) -> float:
        return METRICS[self.metric].compute(y, pred, proba)


# continuous scores by default: on a validation split of a few hundred rows many configurations
# tie in accuracy, which leaves tuning, early stopping and pruning without a signal
DEFAULT_METRICS = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}


def resolve_objective(metric: str | None, direction: str | None, task: str) -> Objective:
    """The objective for a task: the configured metric and direction, else the task's default
    (roc_auc, log_loss or rmse) in its natural direction."""
    name = metric or DEFAULT_METRICS[task]
    if name not in METRICS:
        raise ConfigError(f"objective.metric={name!r} is unknown; expected one of {', '.join(METRICS)}")
    if task not in METRICS[name].tasks:
        valid = [m for m, spec in METRICS.items() if task in spec.tasks]
        raise ConfigError(
            f"objective.metric={name!r} does not apply to a {task} task; use one of {', '.join(valid)}"
        )
    return Objective(name, direction or METRICS[name].direction)


def task_metrics(task: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None) -> dict[str, float]:
    """Every metric that applies to the task, computed on one set of predictions."""
    return {
        name: spec.compute(y, pred, proba)
        for name, spec in METRICS.items()
        if task in spec.tasks and (proba is not None or task == "regression")
    }
