"""The evaluate stage: metrics checked against scikit-learn, every family scored on the splits it
was trained for, the winner chosen on validation (never test), the verdict wording and the
bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import prepare_config
from sklearn import metrics as skm

from pipeline.families import settings_of
from pipeline.metrics import METRICS, Objective, expected_calibration_error, resolve_objective, task_metrics
from pipeline.stages.evaluate import Evaluation, bootstrap_difference, evaluate, verdict_line
from pipeline.stages.train import train


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


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_roc_auc_matches_sklearn_with_ties_float32_and_one_class_absent(decimals):
    """ROC-AUC is computed without scikit-learn (its input checks cost ~4 ms a call, thousands of
    calls a run): tied scores count half, as on scikit-learn's curve."""
    rng = np.random.default_rng(5)
    metric = METRICS["roc_auc"].compute
    for n in (3, 40, 500):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        proba = _proba(rng, n, 2).astype(np.float32)  # like the network's output
        if decimals is not None:
            proba = np.round(proba, decimals)  # many ties
        assert metric(y, None, proba) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), abs=1e-12)
        y3 = rng.integers(0, 3, n)
        y3[:3] = [0, 1, 2]
        proba3 = _proba(rng, n, 3)
        expected = skm.roc_auc_score(y3, proba3, multi_class="ovr", labels=[0, 1, 2])
        if decimals is not None:
            # scikit-learn refuses rounded rows that do not sum to one; "ovr" is the mean over classes
            proba3 = np.round(proba3, decimals)
            expected = np.mean([skm.roc_auc_score(y3 == k, proba3[:, k]) for k in range(3)])
        assert metric(y3, None, proba3) == pytest.approx(expected, abs=1e-12)
    # a class absent from a bootstrap resample leaves the score undefined, as scikit-learn's
    assert np.isnan(metric(np.array([0, 1, 0, 1]), None, _proba(rng, 4, 3)))
    assert np.isnan(metric(np.array([1, 1, 1]), None, _proba(rng, 3, 2)))


def test_fast_metrics_leave_bad_input_to_sklearn_errors():
    rng = np.random.default_rng(6)
    proba = _proba(rng, 10, 2)
    y = np.array([0, 1] * 5)
    bad = proba.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        METRICS["roc_auc"].compute(y, None, bad)
    with pytest.raises(ValueError, match="label"):
        METRICS["log_loss"].compute(np.array([0, 1, 2] + [0] * 7), None, proba)
    # labels given as floats are scored as scikit-learn scores them
    assert METRICS["log_loss"].compute(y.astype(float), None, proba) == pytest.approx(skm.log_loss(y, proba))


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
    # continuous scores by default: accuracy ties on small validation splits
    assert resolve_objective(None, None, "binary") == Objective("roc_auc", "maximize")
    assert resolve_objective(None, None, "multiclass") == Objective("log_loss", "minimize")
    assert resolve_objective(None, None, "regression") == Objective("rmse", "minimize")
    assert resolve_objective("accuracy", None, "binary") == Objective("accuracy", "maximize")
    assert Objective("rmse", "minimize").better(1.0, 2.0)
    assert not Objective("rmse", "minimize").better(2.0, 1.0)
    assert Objective("accuracy", "maximize").improvement(0.9, 0.8) == pytest.approx(0.1)
    assert Objective("rmse", "minimize").improvement(1.0, 3.0) == pytest.approx(2.0)


# --- families on the same split ---------------------------------------------------------------


@pytest.fixture
def prepared(make_cfg):
    return prepare_config(make_cfg("data=wine", "tracking.enabled=false"))


def test_each_family_is_scored_on_validation_and_test(make_cfg, prepared):
    # without a refit the final model is the one validation scored, so its val score can be checked
    cfg = make_cfg("data=wine", "evaluate.bootstrap=50", "train.refit=false")
    objective = resolve_objective(None, None, prepared.task)
    trained = {
        name: train(name, settings_of(cfg), prepared, objective) for name in ("linear", "random_forest")
    }
    result = evaluate(cfg.evaluate, cfg.seed, prepared, trained, objective, with_figures=False)

    assert [r["model"] for r in result.rows] == ["linear", "random_forest", "dummy"]
    for name, model in trained.items():
        row = result.row(name)
        # the val column is the model's own validation score, the test columns the test split's
        pred, proba = model.fitted().predict(prepared.features["val"])
        assert row["val_log_loss"] == pytest.approx(
            skm.log_loss(prepared.targets["val"], proba, labels=[0, 1, 2]), rel=1e-4
        )
        pred, proba = model.fitted().predict(prepared.features["test"])
        assert row["test_accuracy"] == pytest.approx(skm.accuracy_score(prepared.targets["test"], pred))
    floor = result.row("dummy")  # the floor predicts the training split's class shares
    shares = np.bincount(prepared.targets["train"], minlength=3) / len(prepared.targets["train"])
    assert floor["test_log_loss"] == pytest.approx(
        skm.log_loss(
            prepared.targets["test"], np.tile(shares, (len(prepared.targets["test"]), 1)), labels=[0, 1, 2]
        )
    )
    assert result.winner == min(trained, key=lambda n: result.row(n)["val_log_loss"])
    assert result.metrics == {k[5:]: v for k, v in result.row(result.winner).items() if k.startswith("test_")}


class _Fixed:
    """Stands in for a trained family: a fixed validation score and fixed test predictions."""

    encoding = "onehot"

    def __init__(self, val_score, pred, proba, val_loss=0.5):
        self.best_score, self.best_epoch, self.seconds = val_score, 0, 0.0
        self.history = [{"val_loss": val_loss}]
        self.pred, self.proba = pred, proba

    def fitted(self):
        return self

    def predict(self, features):
        return self.pred, self.proba


@pytest.mark.parametrize("metric,direction", [("accuracy", "maximize"), ("log_loss", "minimize")])
def test_the_winner_is_chosen_on_validation_where_test_would_pick_another(
    make_cfg, prepared, metric, direction
):
    """The family with the better val objective wins, even when another scores better on test
    (choosing on test would leak); an undefined val score never wins."""
    cfg = make_cfg("data=wine", "evaluate.bootstrap=20")
    objective = Objective(metric, direction)
    y = prepared.targets["test"]
    n, k = len(y), prepared.n_classes
    right = np.eye(k)[y] * 0.9 + 0.1 / k
    uniform = np.full((n, k), 1 / k)
    better_val, worse_val = (0.9, 0.5) if objective.maximize else (0.2, 0.9)
    trained = {
        "random_forest": _Fixed(float("nan"), y, right),
        "hist_gradient_boosting": _Fixed(worse_val, y, right),  # the best on test
        "linear": _Fixed(better_val, uniform.argmax(axis=1), uniform),  # the best on validation
    }
    result = evaluate(cfg.evaluate, cfg.seed, prepared, trained, objective, with_figures=False)
    assert result.winner == "linear"
    assert result.row("hist_gradient_boosting")[f"test_{metric}"] != result.row("linear")[f"test_{metric}"]
    assert [c["other"] for c in result.comparisons] == ["hist_gradient_boosting"]
    assert result.comparisons[0]["difference"] < 0  # test says the loser was better: reported, not used
    assert "logistic regression wins on validation" in result.verdict
    assert "gradient boosting is ahead by" in result.verdict


def test_a_tie_on_validation_goes_to_the_lower_validation_loss(make_cfg, prepared):
    cfg = make_cfg("data=wine", "evaluate.bootstrap=20")
    y = prepared.targets["test"]
    proba = np.eye(prepared.n_classes)[y]
    trained = {"network": _Fixed(1.0, y, proba, val_loss=0.3), "linear": _Fixed(1.0, y, proba, val_loss=0.1)}
    result = evaluate(
        cfg.evaluate, cfg.seed, prepared, trained, Objective("accuracy", "maximize"), with_figures=False
    )
    assert result.winner == "linear"
    # the winner is compared with the best other family, which here is the network
    assert [c["other"] for c in result.comparisons] == ["network"]


# --- verdict and bootstrap --------------------------------------------------------------------


def test_verdict_line_wording():
    comparisons = [
        {"other": "random_forest", "difference": 0.004, "interval": [-0.01, 0.018]},
        {"other": "network", "difference": 0.05, "interval": [0.01, 0.09]},
    ]
    assert verdict_line("hist_gradient_boosting", 0.991, "roc_auc", "binary", comparisons) == (
        "gradient boosting wins on validation (val roc_auc 0.9910); on test roc_auc, it and random forest "
        "are within noise (+0.004 [-0.010, +0.018]); it beats the network by 0.050 [0.010, 0.090]"
    )
    behind = [{"other": "linear", "difference": -2.5, "interval": [-4.0, -1.0]}]
    assert verdict_line("network", 50.0, "rmse", "regression", behind) == (
        "the network wins on validation (val rmse 50.0000); on test rmse, linear regression is ahead by "
        "2.500 [1.000, 4.000]"
    )
    assert verdict_line("linear", 0.9, "accuracy", "binary", []).endswith("it was the only candidate")


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
        winner="linear",
        metrics={"accuracy": 0.9},
        rows=[{"model": "linear", "val_accuracy": 0.9}, {"model": "dummy", "val_accuracy": 0.4}],
        comparisons=[{"other": "network", "difference": 0.1, "interval": [0.05, 0.15]}],
        verdict="v",
        notes=["n"],
        figures={"a.png": figure},
    )
    evaluation.save(tmp_path)
    assert plt.get_fignums() == [figure.number]  # saving made no copies that pyplot keeps open
    plt.close("all")
    loaded = Evaluation.load(tmp_path)
    assert loaded.figures == {} and loaded.metrics == {"accuracy": 0.9}
    assert loaded.comparisons == evaluation.comparisons and loaded.row("dummy")["val_accuracy"] == 0.4


class _FixedWithFolds(_Fixed):
    """A stand-in family that also has out-of-fold predictions on the train and val rows."""

    def __init__(self, val_score, pred, proba, oof):
        super().__init__(val_score, pred, proba)
        self.val_predictions, self.oof_predictions = None, oof


def test_out_of_fold_scores_choose_when_every_family_has_them(make_cfg, prepared):
    """On out-of-fold predictions (every train and val row) the family that validation alone would
    have ranked second wins; the rows show both scores and the verdict says what chose."""
    cfg = make_cfg("data=wine", "evaluate.bootstrap=20")
    objective = Objective("log_loss", "minimize")
    y_test, k = prepared.targets["test"], prepared.n_classes
    pooled = np.concatenate([prepared.targets["train"], prepared.targets["val"]])
    sure, unsure = np.eye(k)[pooled] * 0.9 + 0.1 / k, np.eye(k)[pooled] * 0.4 + 0.6 / k
    test_proba = np.eye(k)[y_test] * 0.9 + 0.1 / k
    trained = {
        "linear": _FixedWithFolds(0.1, y_test, test_proba, (pooled, unsure)),  # best on val alone
        "random_forest": _FixedWithFolds(0.3, y_test, test_proba, (pooled, sure)),  # best out of fold
    }
    result = evaluate(cfg.evaluate, cfg.seed, prepared, trained, objective, with_figures=False)
    assert result.winner == "random_forest" and result.selected_on == "cv"
    assert result.row("random_forest")["cv_log_loss"] == pytest.approx(skm.log_loss(pooled, sure))
    assert result.row("linear")["val_log_loss"] == 0.1
    assert "random forest wins on out-of-fold predictions of train and val (cv log_loss" in result.verdict
    # a family without them (trained before they existed, or alone): validation chooses for all
    trained["linear"].oof_predictions = None
    result = evaluate(cfg.evaluate, cfg.seed, prepared, trained, objective, with_figures=False)
    assert result.winner == "linear" and result.selected_on == "val"
