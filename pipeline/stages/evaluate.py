"""Stage evaluate: every candidate family side by side, with the dummy floor. The winner is the
family with the best validation objective (the test split never chooses); it is then scored on
test, compared with the best other family and with the network by paired bootstrap intervals,
and its plots are drawn."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config.choices import FLOOR_TITLES, FLOORS
from pipeline.config.schema import EvaluateConfig
from pipeline.ensemble import ENSEMBLE, Predictions, blend, describe, greedy_weights
from pipeline.families import family as declared_family
from pipeline.metrics import Objective, task_metrics
from pipeline.stages import Stage, StageCall
from pipeline.stages.prepare import PreparedData


@dataclass
class Evaluation:
    objective: str
    direction: str
    winner: str  # the family with the best validation objective
    metrics: dict[str, float]  # the winner's, on the test split
    rows: list[dict[str, Any]]  # per family and floor: val objective, test metrics, fit time
    comparisons: list[dict[str, Any]]  # the winner against others: difference and interval on test
    verdict: str
    notes: list[str] = field(default_factory=list)
    ensemble: dict[str, float] = field(default_factory=dict)  # the ensemble's weights; {} when none
    selected_on: str = "val"  # what chose the winner: "val", or "cv" (out-of-fold predictions)
    figures: dict[str, Any] = field(default_factory=dict, repr=False)  # Figures, then their PNGs

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def row(self, model: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["model"] == model)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # not asdict(): it deep-copies the figures, and each copy re-registers with pyplot (a leak)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        (directory / "evaluation.json").write_text(json.dumps(values, indent=2, default=float))

    @classmethod
    def load(cls, directory: Path) -> Evaluation:
        return cls(**json.loads((directory / "evaluation.json").read_text()))


def title(name: str, task: str) -> str:
    """How the verdict names a family or the floor."""
    if name in FLOORS:
        return FLOOR_TITLES["regression" if task == "regression" else "classification"]
    if name == ENSEMBLE:
        return "the ensemble"
    return declared_family(name).title(task)


def _resample(predictions: Predictions, idx: np.ndarray) -> Predictions:
    pred, proba = predictions
    return pred[idx], None if proba is None else proba[idx]


def bootstrap_difference(
    objective: Objective,
    y: np.ndarray,
    ours: Predictions,
    theirs: Predictions,
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


def compare_phrase(other: str, difference: float, interval: list[float]) -> str:
    """How the winner stands against `other` on test, in words."""
    low, high = interval
    if low > 0:
        return f"it beats {other} by {difference:.3f} [{low:.3f}, {high:.3f}]"
    if high < 0:
        return f"{other} is ahead by {-difference:.3f} [{-high:.3f}, {-low:.3f}]"
    return f"it and {other} are within noise ({difference:+.3f} [{low:+.3f}, {high:+.3f}])"


def verdict_line(
    winner: str,
    score: float,
    metric: str,
    task: str,
    comparisons: list[dict[str, Any]],
    basis: str = "val",
) -> str:
    """`score`: the winner's on the basis it was chosen on, "val" or "cv" (out-of-fold)."""
    on = "validation" if basis == "val" else "out-of-fold predictions of train and val"
    head = f"{title(winner, task)} wins on {on} ({basis} {metric} {score:.4f})"
    if not comparisons:
        return f"{head}; it was the only candidate"
    phrases = [compare_phrase(title(c["other"], task), c["difference"], c["interval"]) for c in comparisons]
    return f"{head}; on test {metric}, " + "; ".join(phrases)


def _row(
    name: str, val_score: float, test: Predictions, prepared: PreparedData, seconds: float
) -> dict[str, Any]:
    metrics = task_metrics(prepared.task, prepared.targets["test"], *test)
    return {
        "model": name,
        "val": val_score,
        **{f"test_{k}": v for k, v in metrics.items()},
        "fit_seconds": round(seconds, 3),
    }


def _family_row(
    name: str, model: Any, prepared: PreparedData, objective: Objective
) -> tuple[dict[str, Any], Predictions]:
    """A trained family on val (its score at its best epoch or step), on its out-of-fold
    predictions when it has them, and on test."""
    fitted = model.fitted()
    test = fitted.predict(prepared.encoded(fitted.encoding)["test"])
    row = _row(name, float(model.best_score), test, prepared, model.seconds)
    row["val_loss"] = model.history[model.best_epoch].get("val_loss") if model.history else None
    if getattr(model, "oof_predictions", None) is not None:
        row["cv"] = objective.score(_pooled_targets(prepared), *model.oof_predictions)
    return row, test


def _pooled_targets(prepared: PreparedData) -> np.ndarray:
    """The targets of the out-of-fold predictions: training rows, then validation rows."""
    return np.concatenate([prepared.targets["train"], prepared.targets["val"]])


def _selection_basis(trained: dict[str, Any]) -> str:
    """What chooses: out-of-fold predictions ("cv") when every family has them, else "val"."""
    with_oof = [getattr(m, "oof_predictions", None) is not None for m in trained.values()]
    return "cv" if with_oof and all(with_oof) else "val"


def _ensemble(
    rounds: int,
    trained: dict[str, Any],
    test_predictions: dict[str, Predictions],
    prepared: PreparedData,
    objective: Objective,
    basis: str,
) -> tuple[dict[str, float], dict[str, Any] | None, Predictions | None]:
    """The families' greedy ensemble, its weights chosen on the selection basis: its weights, its
    row and its test predictions; none when it would be a single family (or fewer than two
    families have predictions to choose on)."""
    cv = basis == "cv"
    attribute, y = (
        ("oof_predictions", _pooled_targets(prepared)) if cv else ("val_predictions", prepared.targets["val"])
    )
    chosen_on = {n: getattr(m, attribute, None) for n, m in trained.items()}
    chosen_on = {n: p for n, p in chosen_on.items() if p is not None}
    weights = greedy_weights(objective, y, chosen_on, rounds) if rounds and len(chosen_on) > 1 else {}
    if len(weights) < 2:
        return {}, None, None
    test = blend(weights, test_predictions)
    val = {n: getattr(trained[n], "val_predictions", None) for n in weights}
    val_score = (
        np.nan if None in val.values() else objective.score(prepared.targets["val"], *blend(weights, val))
    )
    row = _row(ENSEMBLE, val_score, test, prepared, sum(trained[n].seconds for n in weights))
    if cv:
        row["cv"] = objective.score(y, *blend(weights, chosen_on))
    return weights, row, test


def ensemble_predictor(prepared: PreparedData, trained: dict[str, Any], weights: dict[str, float]) -> Any:
    """The ensemble as a deployable model: raw rows in, like any family's."""
    from pipeline.ensemble import EnsembleModel
    from pipeline.serving.predictor import Predictor

    return Predictor(
        prepared.preprocessing, EnsembleModel({n: trained[n].fitted() for n in weights}, weights)
    )


def _floor(prepared: PreparedData, name: str) -> tuple[Predictions, Predictions, float]:
    from pipeline.families.estimator import EstimatorModel

    started = time.perf_counter()
    estimator = FLOORS[name](prepared.task).fit(prepared.features["train"], prepared.targets["train"])
    model = EstimatorModel(estimator, prepared.task, prepared.n_classes)
    seconds = time.perf_counter() - started
    return model.predict(prepared.features["val"]), model.predict(prepared.features["test"]), seconds


def _winner(rows: list[dict[str, Any]], objective: Objective, basis: str = "val") -> str:
    def rank(row: dict[str, Any]) -> tuple[bool, float, float]:
        # best objective on the basis (val or cv) first; an undefined score (NaN, e.g. AUC on a
        # one-class split) last; a tie (common on a small validation split) goes to the lower
        # validation loss
        value = float(row[basis])
        loss = row.get("val_loss")
        return (
            bool(np.isnan(value)),
            -value if objective.maximize else value,
            np.inf if loss is None else loss,
        )

    return min(rows, key=rank)["model"]


def _rivals(winner: str, rows: list[dict[str, Any]], objective: Objective, basis: str) -> list[str]:
    """Whom the winner is compared with: the best other model on the basis, and the network."""
    others = [r for r in rows if r["model"] != winner]
    rivals = [_winner(others, objective, basis)] if others else []
    if "network" not in rivals and winner != "network" and any(r["model"] == "network" for r in rows):
        rivals.append("network")
    return rivals


def evaluate(
    evaluate_cfg: EvaluateConfig,
    seed: int,
    prepared: PreparedData,
    trained: dict[str, Any],
    objective: Objective,
    with_figures: bool = True,
) -> Evaluation:
    """Every family, their ensemble and the floor on val and test; the winner chosen on the
    out-of-fold predictions when every family has them, else on val; compared on test."""
    task, y_test = prepared.task, prepared.targets["test"]
    rows, test_predictions = [], {}
    for name, model in trained.items():
        row, test_predictions[name] = _family_row(name, model, prepared, objective)
        rows.append(row)
    basis = _selection_basis(trained)
    weights, blended, test = _ensemble(
        evaluate_cfg.ensemble_rounds, trained, test_predictions, prepared, objective, basis
    )
    if blended is not None:
        rows.append(blended)
        test_predictions[ENSEMBLE] = test
    winner = _winner(rows, objective, basis)
    comparisons = []
    for other in _rivals(winner, rows, objective, basis):
        difference, interval = bootstrap_difference(
            objective,
            y_test,
            test_predictions[winner],
            test_predictions[other],
            evaluate_cfg.bootstrap,
            evaluate_cfg.confidence,
            seed,
        )
        comparisons.append({"other": other, "difference": difference, "interval": interval})
    floor_val, floor_test, seconds = _floor(prepared, "dummy")
    rows.append(
        _row("dummy", objective.score(prepared.targets["val"], *floor_val), floor_test, prepared, seconds)
    )
    for row in rows:  # the objective's name in the column, like the test metrics
        row[f"val_{objective.metric}"] = row.pop("val")
        if "cv" in row:
            row[f"cv_{objective.metric}"] = row.pop("cv")
    win_row = next(r for r in rows if r["model"] == winner)
    pred, proba = test_predictions[winner]
    return Evaluation(
        objective=objective.metric,
        direction=objective.direction,
        winner=winner,
        metrics={k[len("test_") :]: v for k, v in win_row.items() if k.startswith("test_")},
        rows=rows,
        comparisons=comparisons,
        verdict=verdict_line(
            winner, win_row[f"{basis}_{objective.metric}"], objective.metric, task, comparisons, basis
        ),
        notes=[f"the ensemble's weights: {describe(weights)}"] if weights else [],
        ensemble=weights,
        selected_on=basis,
        figures=_figures(prepared, pred, proba, evaluate_cfg.calibration_bins) if with_figures else {},
    )


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


def comparison_markdown(evaluation: Evaluation) -> str:
    frame = evaluation.table()
    metric_columns = [c for c in frame.columns if c.startswith(("cv_", "val_", "test_"))]
    lines = ["| " + " | ".join(["model", *metric_columns]) + " |", "|" + "---|" * (len(metric_columns) + 1)]
    for _, row in frame.iterrows():
        name = f"**{row['model']}** (winner)" if row["model"] == evaluation.winner else str(row["model"])
        cells = [name] + ["" if pd.isna(row[c]) else f"{row[c]:.4f}" for c in metric_columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**Verdict:** {evaluation.verdict}"] + [f"- {n}" for n in evaluation.notes]
    return "\n".join(lines) + "\n"


def run(call: StageCall) -> Evaluation:
    return evaluate(
        call.cfg.evaluate,
        int(call.cfg.seed),
        call.upstream["prepare"],
        call.upstream["train"],
        call.invocation.objective,
        with_figures=call.plots,
    )


def record(run: Any, evaluation: Evaluation, call: StageCall) -> None:
    per_model = {
        f"{'floor' if row['model'] in FLOORS else 'family'}.{row['model']}.{k}": v
        for row in evaluation.rows
        for k, v in row.items()
        if k.startswith(("val_", "cv_", "test_")) and v is not None
    }
    differences = {f"winner_minus_{c['other']}": c["difference"] for c in evaluation.comparisons}
    weights = {f"ensemble.weight.{n}": w for n, w in evaluation.ensemble.items()}
    run.log(
        metrics={
            **{f"test_{k}": v for k, v in evaluation.metrics.items()},
            **per_model,
            **differences,
            **weights,
        },
        tags={
            "winner": evaluation.winner,
            "verdict": evaluation.verdict,
            "mlflow.note.content": comparison_markdown(evaluation),
        },
    )
    prepared = call.upstream["prepare"]
    if evaluation.winner == ENSEMBLE:  # the registered model; a family's is logged by its train run
        run.model(
            ensemble_predictor(prepared, call.upstream["train"], evaluation.ensemble),
            prepared.frames["test"].head(3),
        )
    test_set = (prepared.name, prepared.split_digests["test"])  # as the prepare run logged it
    for row in evaluation.rows:
        logged = run if row["model"] == ENSEMBLE else call.upstream_runs.get(f"train.{row['model']}")
        if logged is not None and logged.tags.get("model.id"):
            scores = {k: v for k, v in row.items() if k.startswith("test_") and v is not None}
            run.model_metrics(logged.tags["model.id"], scores, test_set)
    run.files(
        {
            "comparison.csv": evaluation.table().to_csv(index=False),
            "comparison.md": comparison_markdown(evaluation),
        }
    )
    evaluation.figures = run.figures(evaluation.figures) or evaluation.figures  # drawn once, as PNGs


STAGE = Stage(
    name="evaluate",
    needs=("prepare", "train"),
    output=Evaluation,
    run=run,
    record=record,
)
