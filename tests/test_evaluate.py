"""The evaluate stage: metrics checked against scikit-learn, baselines trained on the very split the
network saw, the val-chosen best baseline, the verdict wording and the bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import prepare_config
from sklearn import metrics as skm

from pipeline.metrics import Objective, expected_calibration_error, resolve_objective, task_metrics
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages.evaluate import (
    Evaluation,
    bootstrap_difference,
    evaluate,
    fit_baselines,
    verdict_line,
)


def _proba(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    raw = rng.random((n, k)) + 0.05
    return raw / raw.sum(axis=1, keepdims=True)


# --- metrics against scikit-learn -------------------------------------------------------------


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    proba = _proba(rng, 200, 2)
    pred = proba.argmax(axis=1)
    got = task_metrics("binary", y, pred, proba)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": skm.precision_score(y, pred, average="macro"),
        "recall_macro": skm.recall_score(y, pred, average="macro"),
        "f1_macro": skm.f1_score(y, pred, average="macro"),
        "roc_auc": skm.roc_auc_score(y, proba[:, 1]),
        "log_loss": skm.log_loss(y, proba),
        # the multiclass Brier score (sum over both classes) is twice the usual binary one
        "brier": 2 * skm.brier_score_loss(y, proba[:, 1]),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert set(got) == set(expected) | {"ece"}


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    proba = _proba(rng, 300, 4)
    pred = proba.argmax(axis=1)
    got = task_metrics("multiclass", y, pred, proba)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": skm.precision_score(y, pred, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y, pred, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0),
        "roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr", labels=[0, 1, 2, 3]),
        "log_loss": skm.log_loss(y, proba, labels=[0, 1, 2, 3]),
        "brier": skm.brier_score_loss(y, proba, labels=[0, 1, 2, 3], scale_by_half=False),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.normal(10, 3, 150)
    pred = y + rng.normal(0, 1, 150)
    got = task_metrics("regression", y, pred, None)
    assert got == pytest.approx(
        {
            "rmse": skm.root_mean_squared_error(y, pred),
            "mae": skm.mean_absolute_error(y, pred),
            "r2": skm.r2_score(y, pred),
        }
    )


def test_log_loss_of_float32_probabilities_matches_sklearn_without_warning(recwarn):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 100)
    proba = _proba(rng, 100, 3).astype(np.float32).astype(np.float64)  # like the network's output
    got = task_metrics("multiclass", y, proba.argmax(axis=1), proba)["log_loss"]
    assert got == pytest.approx(skm.log_loss(y, proba / proba.sum(axis=1, keepdims=True)), rel=1e-6)
    assert not [w for w in recwarn if "do not sum to one" in str(w.message)]


def test_expected_calibration_error_by_hand():
    # one row per bin: |accuracy - confidence| per row, each weighted 1/4
    proba = np.array([[0.95, 0.05], [0.15, 0.85], [0.25, 0.75], [0.35, 0.65]])
    y = np.array([0, 0, 1, 1])  # correct, wrong, correct, correct
    assert expected_calibration_error(y, proba) == pytest.approx((0.05 + 0.85 + 0.25 + 0.35) / 4)
    # two rows share the 0.9-1.0 bin: accuracy 1/2 vs mean confidence 0.94, weight 2/3
    proba = np.array([[0.92, 0.08], [0.04, 0.96], [0.45, 0.55]])
    y = np.array([0, 0, 1])
    assert expected_calibration_error(y, proba) == pytest.approx(2 / 3 * 0.44 + 1 / 3 * 0.45)
    # perfectly confident and right: zero
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_objective_defaults_and_direction():
    assert resolve_objective(None, None, "binary") == Objective("accuracy", "maximize")
    assert resolve_objective(None, None, "regression") == Objective("rmse", "minimize")
    assert Objective("rmse", "minimize").better(1.0, 2.0)
    assert not Objective("rmse", "minimize").better(2.0, 1.0)
    assert Objective("accuracy", "maximize").improvement(0.9, 0.8) == pytest.approx(0.1)
    assert Objective("rmse", "minimize").improvement(1.0, 3.0) == pytest.approx(2.0)


# --- baselines on the same split --------------------------------------------------------------


@pytest.fixture
def prepared(make_cfg):
    return prepare_config(make_cfg("data=wine", "tracking.enabled=false"))


def test_baselines_train_and_score_on_the_prepared_split(make_cfg, prepared, monkeypatch):
    cfg = make_cfg("data=wine", "evaluate.baselines=[dummy,linear]")
    objective = resolve_objective(None, None, prepared.task)
    fitted: dict[str, tuple] = {}

    def recording(name):
        original = evaluate_stage.BASELINES[name]

        def build(task, seed):
            model = original(task, seed)
            fit = model.fit

            def record(x, y):
                fitted[name] = (model, x, y)
                return fit(x, y)

            model.fit = record
            return model

        return build

    for name in ("dummy", "linear"):
        monkeypatch.setitem(evaluate_stage.BASELINES, name, recording(name))
    rows, test_predictions, notes = fit_baselines(cfg.evaluate, cfg.seed, prepared, objective)

    assert [r["model"] for r in rows] == ["dummy", "linear"] and notes == []
    for row in rows:
        model, x, y = fitted[row["model"]]
        # trained on exactly the prepared training features and targets
        assert x is prepared.features["train"] and y is prepared.targets["train"]
        pred, proba = test_predictions[row["model"]]
        assert len(pred) == len(prepared.targets["test"]) == len(prepared.frames["test"])
        assert proba.shape == (len(prepared.targets["test"]), prepared.n_classes)
        # the val column is scored on the val split, the test columns on the test split
        val_pred = model.predict(prepared.features["val"])
        assert row["val_accuracy"] == pytest.approx(skm.accuracy_score(prepared.targets["val"], val_pred))
        assert row["test_accuracy"] == pytest.approx(
            skm.accuracy_score(prepared.targets["test"], model.predict(prepared.features["test"]))
        )
    assert (
        prepared.features["train"].shape[0]
        + prepared.features["val"].shape[0]
        + prepared.features["test"].shape[0]
    ) == prepared.card["rows_used"]


class _FixedPredictor:
    """Stands in for the network: fixed test predictions."""

    def __init__(self, pred, proba):
        self.pred, self.proba = pred, proba

    def predict_encoded(self, frame):
        assert len(frame) == len(self.pred)
        return self.pred, self.proba


@pytest.mark.parametrize("metric,direction", [("accuracy", "maximize"), ("log_loss", "minimize")])
def test_best_baseline_is_chosen_by_the_val_objective(make_cfg, prepared, monkeypatch, metric, direction):
    """The baseline with the better val objective is the one compared, even when another has the
    better test score (choosing on test would leak)."""
    cfg = make_cfg("data=wine", "evaluate.bootstrap=20")
    objective = Objective(metric, direction)
    y = prepared.targets["test"]
    n, k = len(y), prepared.n_classes
    onehot = np.eye(k)[y] * 0.9 + 0.1 / k
    uniform = np.full((n, k), 1 / k)
    better_val, worse_val = (0.9, 0.5) if objective.maximize else (0.2, 0.9)
    rows = [
        {"model": "random_forest", f"val_{metric}": float("nan"), f"test_{metric}": 1.0},
        {"model": "linear", f"val_{metric}": worse_val, f"test_{metric}": 1.0},  # best on test
        {"model": "dummy", f"val_{metric}": better_val, f"test_{metric}": 0.1},
    ]
    # an undefined val score (NaN) never wins, wherever it sits in the list
    predictions = {
        "linear": (y, onehot),
        "dummy": (uniform.argmax(axis=1), uniform),
        "random_forest": (y, onehot),
    }
    monkeypatch.setattr(evaluate_stage, "fit_baselines", lambda *a: (rows, predictions, []))
    result = evaluate(
        cfg.evaluate, cfg.seed, prepared, _FixedPredictor(y, onehot), objective, with_figures=False
    )
    assert result.best_baseline == "dummy"
    assert "majority class" in result.verdict
    assert [r["model"] for r in result.baselines] == ["random_forest", "linear", "dummy"]
    assert [r["model"] for r in result.rows()] == ["network", "random_forest", "linear", "dummy"]


def test_evaluate_end_to_end_on_real_baselines(make_cfg, prepared):
    cfg = make_cfg("data=wine", "evaluate.baselines=[dummy,linear]", "evaluate.bootstrap=50")
    objective = resolve_objective(None, None, prepared.task)
    y = prepared.targets["test"]
    proba = np.eye(prepared.n_classes)[y]  # a perfect "network"
    result = evaluate(
        cfg.evaluate, cfg.seed, prepared, _FixedPredictor(y, proba), objective, with_figures=False
    )
    baselines = result.baselines
    best = max(baselines, key=lambda r: r["val_accuracy"])["model"]
    assert result.best_baseline == best
    assert result.metrics["accuracy"] == 1.0
    low, high = result.interval
    assert low <= result.difference <= high
    assert result.verdict == verdict_line("accuracy", best, result.difference, result.interval)


# --- verdict and bootstrap --------------------------------------------------------------------


def test_verdict_line_wording():
    assert verdict_line("accuracy", "linear", 0.05, [0.01, 0.09]) == (
        "the network beats logistic regression by 0.050 [0.010, 0.090] in test accuracy: "
        "deep learning earns its place here"
    )
    assert verdict_line("rmse", "random_forest", -2.5, [-4.0, -1.0]) == (
        "random forest is better here by 2.500 [1.000, 4.000] in test rmse: consider it"
    )
    assert verdict_line("accuracy", "hist_gradient_boosting", 0.01, [-0.02, 0.04]) == (
        "the network and gradient boosting are within noise: +0.010 [-0.020, +0.040] in test "
        "accuracy; the simpler model may be enough"
    )


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_bootstrap_interval_contains_the_point_estimate(task):
    rng = np.random.default_rng(4)
    n = 200
    if task == "regression":
        y = rng.normal(0, 1, n)
        ours, theirs = (y + rng.normal(0, 0.5, n), None), (y + rng.normal(0, 0.6, n), None)
        objective = Objective("rmse", "minimize")
    else:
        y = rng.integers(0, 3, n)
        p1, p2 = _proba(rng, n, 3), _proba(rng, n, 3)
        p1[np.arange(n), y] += 0.3
        p1 /= p1.sum(axis=1, keepdims=True)
        ours, theirs = (p1.argmax(axis=1), p1), (p2.argmax(axis=1), p2)
        objective = Objective("accuracy", "maximize")
    point, (low, high) = bootstrap_difference(objective, y, ours, theirs, 300, 0.95, seed=7)
    assert point == pytest.approx(
        objective.improvement(objective.score(y, *ours), objective.score(y, *theirs))
    )
    assert low <= point <= high and low < high
    assert point > 0  # ours is the better one in both cases
    # repeatable with the seed; zero resamples give the point estimate as the interval
    assert bootstrap_difference(objective, y, ours, theirs, 300, 0.95, seed=7) == (
        point,
        [low, high],
    )
    assert bootstrap_difference(objective, y, ours, theirs, 0, 0.95, seed=7) == (
        point,
        [point, point],
    )
    # identical predictions: no difference, and an interval of zero width
    same, interval = bootstrap_difference(objective, y, ours, ours, 100, 0.95, seed=7)
    assert same == 0 and interval == [0.0, 0.0]


def test_evaluation_save_round_trips_without_copying_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    figure, _ = plt.subplots()
    evaluation = Evaluation(
        objective="accuracy",
        direction="maximize",
        metrics={"accuracy": 0.9},
        baselines=[{"model": "dummy"}],
        best_baseline="dummy",
        difference=0.1,
        interval=[0.05, 0.15],
        verdict="v",
        notes=["n"],
        figures={"a.png": figure},
    )
    evaluation.save(tmp_path)
    assert plt.get_fignums() == [figure.number]  # saving made no copies that pyplot keeps open
    plt.close("all")
    loaded = Evaluation.load(tmp_path)
    assert loaded.figures == {} and loaded.metrics == {"accuracy": 0.9} and loaded.interval == [0.05, 0.15]


def test_verdict_names_regression_baselines_as_such():
    line = verdict_line("rmse", "linear", 0.5, [-1.0, 2.0])
    assert line.startswith("the network and linear regression are within noise")
    assert "predicting the mean is better" in verdict_line("rmse", "dummy", -3.0, [-5.0, -1.0])
