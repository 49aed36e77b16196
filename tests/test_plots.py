"""Every figure the stages draw, for each task, rendered to PNG as the recorder renders them (the
quick test runs turn plots off: tracking.plots=false)."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pipeline import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _rendered(figures: dict[str, object]) -> dict[str, bytes]:
    images = {}
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        images[name] = buffer.getvalue()
    return images


@pytest.mark.parametrize("classes", [2, 3])
def test_classification_figures(classes):
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, 120)
    proba = rng.dirichlet(np.ones(classes), 120)
    proba[np.arange(120), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    labels = [f"class {k}" for k in range(classes)]
    figures = {
        "confusion_matrix.png": plots.confusion(y, proba.argmax(axis=1), labels),
        **plots.roc_pr(y, proba, labels),
        "calibration_curve.png": plots.calibration(y, proba, 10),
    }
    images = _rendered(figures)
    assert set(images) == {
        "confusion_matrix.png",
        "roc_curve.png",
        "precision_recall_curve.png",
        "calibration_curve.png",
    }
    assert all(image.startswith(PNG) and len(image) > 5000 for image in images.values())


def test_regression_and_training_figures():
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, 80)
    history = [
        {"train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_rmse": 1 / (e + 1)} for e in range(6)
    ]
    figures = {
        **plots.regression(y, y + rng.normal(0, 0.3, 80)),
        "learning_curve.png": plots.learning_curve(history, "val_rmse", best_epoch=4),
    }
    images = _rendered(figures)
    assert len(images) >= 3 and all(image.startswith(PNG) for image in images.values())


def test_search_figures():
    trials = [{"number": n, "value": v} for n, v in enumerate([0.8, None, 0.85, 0.83, 0.9])]
    figures = {
        "optimization_history.png": plots.search_history(trials, maximize=True),
        "param_importances.png": plots.param_importances({"train.lr": 0.7, "model.dropout": 0.3}),
        "intermediate_values.png": plots.intermediate_values({0: {0: 0.7, 1: 0.8}, 1: {0: 0.6}}, pruned={1}),
    }
    images = _rendered(figures)
    assert all(image.startswith(PNG) and len(image) > 5000 for image in images.values())
    assert not plt.get_fignums()  # every figure was closed


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            "breast_cancer",
            {"confusion_matrix.png", "roc_curve.png", "precision_recall_curve.png", "calibration_curve.png"},
        ),
        (
            "wine",
            {"confusion_matrix.png", "roc_curve.png", "precision_recall_curve.png", "calibration_curve.png"},
        ),
        ("diabetes", {"predicted_vs_actual.png", "residuals.png"}),
    ],
)
def test_the_evaluate_stage_draws_its_figures_for_each_task(make_cfg, data, expected):
    from conftest import prepare_config

    from pipeline.stages.evaluate import _figures

    prepared = prepare_config(make_cfg(f"data={data}"))
    y = prepared.targets["test"]
    if prepared.task == "regression":
        pred, proba = y + np.random.default_rng(2).normal(0, 10, len(y)), None
    else:
        k = len(prepared.preprocessing.classes)
        proba = np.full((len(y), k), 0.2 / k)
        proba[np.arange(len(y)), y] += 0.8
        pred = proba.argmax(axis=1)
    images = _rendered(_figures(prepared, pred, proba, bins=10))
    assert set(images) == expected
    assert all(image.startswith(PNG) for image in images.values())
