"""Stage evaluate: the network's metrics and plots on the held-out test split, beside simple
baselines trained on the same split and preprocessing, with a verdict on whether deep learning
earned its place (the difference in the objective, with a bootstrap confidence interval)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import sparse

from pipeline import plots
from pipeline.metrics import METRICS, Objective, task_metrics
from pipeline.predictor import Predictor
from pipeline.stages.prepare import PreparedData

BASELINE_TITLES = {
    "dummy": "majority class",
    "linear": "logistic regression",
    "random_forest": "random forest",
    "hist_gradient_boosting": "gradient boosting",
}


@dataclass
class Evaluation:
    objective: str
    direction: str
    metrics: dict[str, float]
    baselines: list[dict[str, Any]]
    best_baseline: str | None
    difference: float | None  # network minus best baseline, positive = network better
    interval: list[float] | None
    verdict: str
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.baselines)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # not asdict(): it deep-copies the figures, and each copy re-registers with pyplot (a leak)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        (directory / "evaluation.json").write_text(json.dumps(values, indent=2, default=float))

    @classmethod
    def load(cls, directory: Path) -> Evaluation:
        return cls(**json.loads((directory / "evaluation.json").read_text()))


def _baseline_model(name: str, task: str, seed: int) -> Any:
    from sklearn import dummy, ensemble, linear_model

    if task == "regression":
        return {
            "dummy": lambda: dummy.DummyRegressor(strategy="mean"),
            "linear": lambda: linear_model.Ridge(alpha=1.0),
            "random_forest": lambda: ensemble.RandomForestRegressor(
                n_estimators=100, min_samples_leaf=2, n_jobs=-1, random_state=seed
            ),
            "hist_gradient_boosting": lambda: ensemble.HistGradientBoostingRegressor(random_state=seed),
        }[name]()
    return {
        "dummy": lambda: dummy.DummyClassifier(strategy="prior"),
        "linear": lambda: linear_model.LogisticRegression(max_iter=500),
        "random_forest": lambda: ensemble.RandomForestClassifier(
            n_estimators=100, n_jobs=-1, random_state=seed
        ),
        "hist_gradient_boosting": lambda: ensemble.HistGradientBoostingClassifier(random_state=seed),
    }[name]()


def _predict(model: Any, x: Any, task: str, n_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    if task == "regression":
        return model.predict(x), None
    proba = np.zeros((x.shape[0], n_classes))
    proba[:, model.classes_.astype(int)] = model.predict_proba(x)
    return proba.argmax(axis=1), proba


def fit_baselines(
    cfg: DictConfig, prepared: PreparedData, objective: Objective
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray | None]], list[str]]:
    """Train each baseline on the training split; score it on val (for choosing) and test."""
    task, seed, notes = prepared.task, int(cfg.seed), []
    x_train, y_train = prepared.features["train"], prepared.targets["train"]
    rows, test_predictions = [], {}
    for name in cfg.evaluate.baselines:
        x_fit, y_fit = x_train, y_train
        if name == "random_forest" and x_train.shape[0] > cfg.evaluate.forest_max_rows:
            chosen = np.random.default_rng(seed).choice(
                x_train.shape[0], cfg.evaluate.forest_max_rows, replace=False
            )
            x_fit, y_fit = x_train[chosen], y_train[chosen]
            notes.append(
                f"random forest trained on a {cfg.evaluate.forest_max_rows}-row sample of "
                f"{x_train.shape[0]} training rows (evaluate.forest_max_rows)"
            )
        dense = name == "hist_gradient_boosting" and sparse.issparse(x_fit)
        model = _baseline_model(name, task, seed)
        started = time.perf_counter()
        model.fit(x_fit.toarray() if dense else x_fit, y_fit)
        seconds = time.perf_counter() - started

        val_pred, val_proba, test_pred, test_proba = (
            value
            for split in ("val", "test")
            for value in _predict(
                model,
                prepared.features[split].toarray() if dense else prepared.features[split],
                task,
                prepared.n_classes,
            )
        )
        test_predictions[name] = (test_pred, test_proba)
        row = {
            "model": name,
            f"val_{objective.metric}": objective.score(prepared.targets["val"], val_pred, val_proba),
        }
        row.update(
            {
                f"test_{k}": v
                for k, v in task_metrics(task, prepared.targets["test"], test_pred, test_proba).items()
            }
        )
        row["fit_seconds"] = round(seconds, 3)
        rows.append(row)
    return rows, test_predictions, notes


def _resample(predictions: tuple, idx: np.ndarray) -> tuple:
    pred, proba = predictions
    return pred[idx], None if proba is None else proba[idx]


def bootstrap_difference(
    objective: Objective,
    y: np.ndarray,
    ours: tuple,
    theirs: tuple,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, list[float]]:
    """Paired bootstrap over test rows of (ours - theirs) in the objective's better direction."""
    point = objective.improvement(objective.score(y, *ours), objective.score(y, *theirs))
    if resamples == 0:
        return point, [point, point]
    rng = np.random.default_rng(seed)
    n = len(y)
    draws = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, n, n)

        draws[i] = objective.improvement(
            objective.score(y[idx], *_resample(ours, idx)), objective.score(y[idx], *_resample(theirs, idx))
        )
    tail = (1 - confidence) / 2
    finite = draws[np.isfinite(draws)]
    low, high = np.quantile(finite, [tail, 1 - tail]) if len(finite) else (np.nan, np.nan)
    return point, [float(low), float(high)]


def verdict_line(metric: str, baseline: str, difference: float, interval: list[float]) -> str:
    title = BASELINE_TITLES.get(baseline, baseline)
    if METRICS[metric].tasks == ("regression",):
        title = {"dummy": "predicting the mean", "linear": "linear regression"}.get(baseline, title)
    low, high = interval
    if low > 0:
        return (
            f"the network beats {title} by {difference:.3f} [{low:.3f}, {high:.3f}] in test {metric}: "
            "deep learning earns its place here"
        )
    if high < 0:
        return f"{title} is better here by {-difference:.3f} [{-high:.3f}, {-low:.3f}] in test {metric}: consider it"
    return (
        f"the network and {title} are within noise: {difference:+.3f} [{low:+.3f}, {high:+.3f}] in test "
        f"{metric}; the simpler model may be enough"
    )


def evaluate(
    cfg: DictConfig,
    prepared: PreparedData,
    predictor: Predictor,
    objective: Objective,
    with_figures: bool = True,
) -> Evaluation:
    task = prepared.task
    y = prepared.targets["test"]
    pred, proba = predictor.predict_encoded(prepared.frames["test"])
    metrics = task_metrics(task, y, pred, proba)
    rows, baseline_predictions, notes = fit_baselines(cfg, prepared, objective)

    best, difference, interval = None, None, None
    verdict = "no baselines were configured (evaluate.baselines=[])"
    if rows:
        key = f"val_{objective.metric}"

        def rank(row: dict[str, Any]) -> tuple[bool, float]:
            # best val objective first; an undefined score (NaN, e.g. AUC on a one-class split) last
            value = float(row[key])
            return (bool(np.isnan(value)), -value if objective.maximize else value)

        best = min(rows, key=rank)["model"]
        difference, interval = bootstrap_difference(
            objective,
            y,
            (pred, proba),
            baseline_predictions[best],
            cfg.evaluate.bootstrap,
            cfg.evaluate.confidence,
            int(cfg.seed),
        )
        verdict = verdict_line(objective.metric, best, difference, interval)
    network_row = {
        "model": "network",
        f"val_{objective.metric}": None,
        **{f"test_{k}": v for k, v in metrics.items()},
    }
    figures: dict[str, Any] = {}
    if with_figures:
        if task == "regression":
            figures.update(plots.regression(y, pred))
        else:
            labels = list(prepared.preprocessing.classes or [])
            figures["confusion_matrix.png"] = plots.confusion(y, pred, labels)
            figures.update(plots.roc_pr(y, proba, labels))
            figures["calibration_curve.png"] = plots.calibration(y, proba, cfg.evaluate.calibration_bins)
    return Evaluation(
        objective=objective.metric,
        direction=objective.direction,
        metrics=metrics,
        baselines=[network_row, *rows],
        best_baseline=best,
        difference=difference,
        interval=interval,
        verdict=verdict,
        notes=notes,
        figures=figures,
    )


def comparison_markdown(evaluation: Evaluation) -> str:
    frame = evaluation.table()
    metric_columns = [c for c in frame.columns if c.startswith(("val_", "test_"))]
    lines = ["| " + " | ".join(["model", *metric_columns]) + " |", "|" + "---|" * (len(metric_columns) + 1)]
    for _, row in frame.iterrows():
        cells = [str(row["model"])] + ["" if pd.isna(row[c]) else f"{row[c]:.4f}" for c in metric_columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**Verdict:** {evaluation.verdict}"] + [f"- {n}" for n in evaluation.notes]
    return "\n".join(lines) + "\n"
