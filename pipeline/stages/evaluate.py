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
from scipy import sparse

from pipeline.config.choices import BASELINES
from pipeline.config.schema import EvaluateConfig
from pipeline.metrics import METRICS, Objective, task_metrics
from pipeline.stages import Stage, StageCall
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
    metrics: dict[str, float]  # the network's, on the test split
    baselines: list[dict[str, Any]]  # one row per baseline: val objective, test metrics, fit time
    best_baseline: str | None
    difference: float | None  # network minus best baseline, positive = network better
    interval: list[float] | None
    verdict: str
    notes: list[str] = field(default_factory=list)
    network_val: float | None = None  # the network's validation objective, when known
    figures: dict[str, Any] = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict[str, Any]]:
        """The comparison: the network first, then each baseline."""
        network = {
            "model": "network",
            f"val_{self.objective}": self.network_val,
            **{f"test_{k}": v for k, v in self.metrics.items()},
        }
        return [network, *self.baselines]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # not asdict(): it deep-copies the figures, and each copy re-registers with pyplot (a leak)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        (directory / "evaluation.json").write_text(json.dumps(values, indent=2, default=float))

    @classmethod
    def load(cls, directory: Path) -> Evaluation:
        values = json.loads((directory / "evaluation.json").read_text())
        rows = values.get("baselines", [])
        if rows and rows[0].get("model") == "network":  # saved when the network was row 0
            rows.pop(0)
        return cls(**values)


def _predict(model: Any, x: Any, task: str, n_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    if task == "regression":
        return model.predict(x), None
    proba = np.zeros((x.shape[0], n_classes))
    proba[:, model.classes_.astype(int)] = model.predict_proba(x)
    return proba.argmax(axis=1), proba


def fit_baselines(
    evaluate_cfg: EvaluateConfig, seed: int, prepared: PreparedData, objective: Objective
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray | None]], list[str]]:
    """Train each baseline on the training split; score it on val (for choosing) and test."""
    task, notes = prepared.task, []
    x_train, y_train = prepared.features["train"], prepared.targets["train"]
    rows, test_predictions = [], {}
    for name in evaluate_cfg.baselines:
        x_fit, y_fit = x_train, y_train
        if name == "random_forest" and x_train.shape[0] > evaluate_cfg.forest_max_rows:
            chosen = np.random.default_rng(seed).choice(
                x_train.shape[0], evaluate_cfg.forest_max_rows, replace=False
            )
            x_fit, y_fit = x_train[chosen], y_train[chosen]
            notes.append(
                f"random forest trained on a {evaluate_cfg.forest_max_rows}-row sample of "
                f"{x_train.shape[0]} training rows (evaluate.forest_max_rows)"
            )
        dense = name == "hist_gradient_boosting" and sparse.issparse(x_fit)
        model = BASELINES[name](task, seed)
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


def _best_baseline(rows: list[dict[str, Any]], objective: Objective) -> str:
    key = f"val_{objective.metric}"

    def rank(row: dict[str, Any]) -> tuple[bool, float]:
        # best val objective first; an undefined score (NaN, e.g. AUC on a one-class split) last
        value = float(row[key])
        return (bool(np.isnan(value)), -value if objective.maximize else value)

    return min(rows, key=rank)["model"]


def _figures(prepared: PreparedData, pred: np.ndarray, proba: np.ndarray | None, bins: int) -> dict[str, Any]:
    from pipeline import plots

    y = prepared.targets["test"]
    if prepared.task == "regression":
        return plots.regression(y, pred)
    labels = list(prepared.preprocessing.classes or [])
    return {
        "confusion_matrix.png": plots.confusion(y, pred, labels),
        **plots.roc_pr(y, proba, labels),
        "calibration_curve.png": plots.calibration(y, proba, bins),
    }


def evaluate(
    evaluate_cfg: EvaluateConfig,
    seed: int,
    prepared: PreparedData,
    predictor: Any,
    objective: Objective,
    with_figures: bool = True,
) -> Evaluation:
    """The network on the test split beside the baselines, and the verdict against the baseline
    with the best validation objective."""
    y = prepared.targets["test"]
    pred, proba = predictor.predict_encoded(prepared.frames["test"])
    rows, baseline_predictions, notes = fit_baselines(evaluate_cfg, seed, prepared, objective)
    best, difference, interval = None, None, None
    verdict = "no baselines were configured (evaluate.baselines=[])"
    if rows:
        best = _best_baseline(rows, objective)
        difference, interval = bootstrap_difference(
            objective,
            y,
            (pred, proba),
            baseline_predictions[best],
            evaluate_cfg.bootstrap,
            evaluate_cfg.confidence,
            seed,
        )
        verdict = verdict_line(objective.metric, best, difference, interval)
    return Evaluation(
        objective=objective.metric,
        direction=objective.direction,
        metrics=task_metrics(prepared.task, y, pred, proba),
        baselines=rows,
        best_baseline=best,
        difference=difference,
        interval=interval,
        verdict=verdict,
        notes=notes,
        figures=_figures(prepared, pred, proba, evaluate_cfg.calibration_bins) if with_figures else {},
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


def run(call: StageCall) -> Evaluation:
    predictor = call.upstream["train"].predictor(call.upstream["prepare"])
    return evaluate(
        call.cfg.evaluate,
        int(call.cfg.seed),
        call.upstream["prepare"],
        predictor,
        call.invocation.objective,
        with_figures=call.recorder.enabled,
    )


def record(run: Any, evaluation: Evaluation, call: StageCall) -> None:
    baseline_metrics = {
        f"baseline.{row['model']}.{k}": v
        for row in evaluation.baselines
        for k, v in row.items()
        if k.startswith(("val_", "test_")) and v is not None
    }
    difference = (
        {} if evaluation.difference is None else {"network_minus_best_baseline": evaluation.difference}
    )
    run.log(
        metrics={**{f"test_{k}": v for k, v in evaluation.metrics.items()}, **baseline_metrics, **difference},
        tags={
            "verdict": evaluation.verdict,
            "best_baseline": evaluation.best_baseline or "",
            "mlflow.note.content": comparison_markdown(evaluation),
        },
    )
    run.files(
        {
            "comparison.csv": evaluation.table().to_csv(index=False),
            "comparison.md": comparison_markdown(evaluation),
        }
    )
    run.figures(evaluation.figures)


STAGE = Stage(
    name="evaluate",
    needs=("prepare", "train"),
    output=Evaluation,
    run=run,
    record=record,
)
