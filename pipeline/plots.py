"""Figures for people: learning curves, confusion matrices, ROC/PR and calibration curves,
predicted-vs-actual and residuals. Each function returns a matplotlib Figure."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def learning_curve(history: list[dict[str, float]], objective_key: str, best_epoch: int) -> Figure:
    figure, (losses, score) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history) + 1)
    if history and "train_loss" in history[0]:  # tree families report validation only
        losses.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    losses.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    score.plot(epochs, [h[objective_key] for h in history], color="tab:green", label=objective_key)
    for axis in (losses, score):
        axis.axvline(best_epoch + 1, color="grey", linestyle="--", linewidth=1, label="best epoch")
        axis.set_xlabel("epoch")
        axis.legend()
    losses.set_title("loss")
    score.set_title(objective_key)
    figure.tight_layout()
    return figure


def confusion(y: np.ndarray, pred: np.ndarray, labels: list) -> Figure:
    matrix = skm.confusion_matrix(y, pred, labels=np.arange(len(labels)))
    normalized = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 4 + 0.35 * len(labels)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for axis, values, title, fmt in (
        (axes[0], matrix, "counts", "d"),
        (axes[1], normalized, "normalized by true class", ".2f"),
    ):
        skm.ConfusionMatrixDisplay(values, display_labels=labels).plot(
            ax=axis, colorbar=False, values_format=fmt, cmap="Blues"
        )
        axis.set_title(f"confusion matrix ({title})")
        axis.grid(False)  # the style's grid would cross the cells
    figure.tight_layout()
    return figure


def _per_class(y: np.ndarray, proba: np.ndarray, labels: list) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if proba.shape[1] == 2:
        return [(str(labels[1]), (y == 1).astype(int), proba[:, 1])]
    return [(str(label), (y == i).astype(int), proba[:, i]) for i, label in enumerate(labels)]


def roc_pr(y: np.ndarray, proba: np.ndarray, labels: list) -> dict[str, Figure]:
    roc, roc_axis = plt.subplots(figsize=(5, 4.5), layout="tight")
    pr, pr_axis = plt.subplots(figsize=(5, 4.5), layout="tight")
    for name, truth, score in _per_class(y, proba, labels):
        if truth.min() == truth.max():
            continue
        skm.RocCurveDisplay.from_predictions(truth, score, name=name, ax=roc_axis)
        skm.PrecisionRecallDisplay.from_predictions(truth, score, name=name, ax=pr_axis)
    roc_axis.plot([0, 1], [0, 1], "k--", linewidth=1)
    roc_axis.set_title("ROC curve" + (" (one vs rest)" if proba.shape[1] > 2 else ""))
    pr_axis.set_title("precision-recall curve")
    return {"roc_curve.png": roc, "precision_recall_curve.png": pr}


def calibration(y: np.ndarray, proba: np.ndarray, bins: int) -> Figure:
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    centers, accuracy, counts = [], [], []
    for b in range(bins):
        mask = index == b
        if mask.any():
            centers.append(confidence[mask].mean())
            accuracy.append(correct[mask].mean())
            counts.append(mask.sum())
    figure, axis = plt.subplots(figsize=(5, 4.5), layout="tight")
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    axis.plot(centers, accuracy, "o-", label="model")
    axis.set_xlabel("confidence (top class probability)")
    axis.set_ylabel("accuracy")
    axis.set_title("calibration curve")
    axis.legend()
    return figure


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, Figure]:
    scatter, axis = plt.subplots(figsize=(5, 4.5), layout="tight")
    axis.scatter(y, pred, s=10, alpha=0.6)
    low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    axis.plot([low, high], [low, high], "k--", linewidth=1)
    axis.set_xlabel("actual")
    axis.set_ylabel("predicted")
    axis.set_title("predicted vs actual")
    residual_figure, (over_pred, histogram) = plt.subplots(1, 2, figsize=(10, 4))
    residuals = y - pred
    over_pred.scatter(pred, residuals, s=10, alpha=0.6)
    over_pred.axhline(0, color="k", linestyle="--", linewidth=1)
    over_pred.set_xlabel("predicted")
    over_pred.set_ylabel("residual (actual - predicted)")
    histogram.hist(residuals, bins=30)
    histogram.set_xlabel("residual")
    residual_figure.suptitle("residuals")
    residual_figure.tight_layout()
    return {"predicted_vs_actual.png": scatter, "residuals.png": residual_figure}


def search_history(trials: list[dict[str, Any]], maximize: bool, title: str = "search history") -> Figure:
    """Each finished trial's validation value and the best so far."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    done = [(t["number"], t["value"]) for t in trials if t["value"] is not None]
    if done:
        numbers, values = zip(*done, strict=True)
        best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
        axis.scatter(numbers, values, s=14, label="trial")
        axis.step(numbers, best, where="post", color="tab:red", label="best so far")
        axis.legend()
    axis.set_xlabel("trial")
    axis.set_ylabel("validation value")
    axis.set_title(title)
    figure.tight_layout()
    return figure


def param_importances(importances: dict[str, float]) -> Figure:
    """Optuna's importances (already computed by the tune stage), largest on top."""
    ordered = sorted(importances.items(), key=lambda kv: kv[1])
    figure, axis = plt.subplots(figsize=(6, 0.9 + 0.3 * len(ordered)))
    axis.barh([k for k, _ in ordered], [v for _, v in ordered])
    axis.set_xlabel("importance")
    axis.set_title("parameter importances")
    figure.tight_layout()
    return figure


def intermediate_values(curves: dict[int, dict[int, float]], pruned: set[int]) -> Figure:
    """Every trial's validation value per epoch (pruned trials dashed)."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for number, values in curves.items():
        steps = sorted(values)
        axis.plot(
            [s + 1 for s in steps],
            [values[s] for s in steps],
            linestyle="--" if number in pruned else "-",
            linewidth=1,
            alpha=0.8,
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation value")
    axis.set_title("trials per epoch (dashed: pruned)")
    figure.tight_layout()
    return figure
