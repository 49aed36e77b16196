"""The families' ensemble: weights chosen greedily on validation predictions, a blend that competes
with the families on validation, and, when it wins, a registered model that serves raw rows like
any family's."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import predict_alone
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from pipeline.ensemble import EnsembleModel, blend, greedy_weights
from pipeline.metrics import Objective
from pipeline.persistence import UntrustedFile
from pipeline.runner import run_pipeline
from pipeline.stages.evaluate import ensemble_predictor
from pipeline.summary import summary_lines

AUC, RMSE = Objective("roc_auc", "maximize"), Objective("rmse", "minimize")


def _binary(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = 1 / (1 + np.exp(-score))
    proba = np.column_stack([1 - p, p])
    return proba.argmax(axis=1), proba


def test_greedy_weights_blend_members_whose_errors_differ_and_leave_out_noise():
    """Two members seeing different halves of the signal blend better than either and share
    the weight; a member that is pure noise gets little or none (greedy selection on a finite
    split can fit a little of its noise); the weights sum to one."""
    rng = np.random.default_rng(0)
    n = 600
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (a + b + rng.normal(scale=0.5, size=n) > 0).astype(int)
    members = {
        "linear": _binary(2 * a + rng.normal(size=n)),
        "random_forest": _binary(2 * b + rng.normal(size=n)),
        "network": _binary(rng.normal(size=n)),
    }
    weights = greedy_weights(AUC, y, members, rounds=25)
    assert weights["linear"] >= 0.4 and weights["random_forest"] >= 0.4 and weights.get("network", 0) <= 0.1
    assert sum(weights.values()) == pytest.approx(1.0)
    best_single = max(AUC.score(y, *p) for p in members.values())
    assert AUC.score(y, *blend(weights, members)) > best_single + 0.05


def test_greedy_weights_keep_one_member_when_no_blend_is_better_or_none_when_undefined():
    y = np.array([0, 1] * 50)
    perfect = _binary((y - 0.5) * 4.0)
    worse = _binary(np.linspace(-1, 1, 100))
    assert greedy_weights(AUC, y, {"network": worse, "linear": perfect}, 25) == {"linear": 1.0}
    one_class = np.zeros(100, dtype=int)  # ROC-AUC is undefined: nothing to choose by
    assert greedy_weights(AUC, one_class, {"network": worse, "linear": perfect}, 25) == {}


def test_a_regression_blend_is_the_weighted_mean_of_values():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    members = {"linear": (y + rng.normal(size=300), None), "network": (y + rng.normal(size=300), None)}
    weights = greedy_weights(RMSE, y, members, rounds=10)
    assert set(weights) == {"linear", "network"}
    values, proba = blend(weights, members)
    expected = sum(w * members[n][0] for n, w in weights.items())
    assert proba is None and np.allclose(values, expected)
    assert RMSE.score(y, values, None) < min(RMSE.score(y, *p) for p in members.values())


def test_a_saved_ensemble_names_only_families(tmp_path):
    """A member's name becomes a path: a saved ensemble naming anything else is refused."""
    (tmp_path / "ensemble.json").write_text(json.dumps({"kind": "ensemble", "weights": {"../../x": 1.0}}))
    with pytest.raises(UntrustedFile, match="names no model family"):
        EnsembleModel.load(tmp_path)


def _noisy_table(n: int, seed: int) -> pd.DataFrame:
    """A table where no one family is right: additive numbers, a text column with many levels
    and label noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    city = rng.choice([f"c{i}" for i in range(12)], size=n)
    effect = {f"c{i}": e for i, e in enumerate(rng.normal(size=12))}
    logit = x[:, 0] - x[:, 1] + np.sin(2 * x[:, 2]) + np.vectorize(effect.get)(city)
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(city=city, label=np.where(label, "y", "n"))
    frame.loc[[5, 17], "b"] = np.nan
    return frame


def test_an_ensemble_that_wins_on_validation_is_registered_and_serves_raw_rows(make_cfg, store, tmp_path):
    """Families with different encodings (the tabular network's codes, the linear model's one-hot
    columns) blended: the version says it is an ensemble and of what, the pyfunc scores raw rows
    (an unseen level, a missing number) as the evaluation did, with nothing but the code it
    carries (each kind of fitted model: the ensemble, a network, an estimator), and evaluate run
    alone on the stored train runs finds the same ensemble."""
    csv = tmp_path / "noisy.csv"
    _noisy_table(900, 0).to_csv(csv, index=False)
    table = ("data=table", f"data.path={csv}", "data.target=label")
    cfg = make_cfg(*table, "stages=[prepare,train,evaluate,register]", "candidates=[network,linear]")
    result = run_pipeline(cfg)
    evaluation, decision = result.outputs["evaluate"], result.outputs["register"]
    assert evaluation.winner == "ensemble" and set(evaluation.ensemble) == {"network", "linear"}
    row = evaluation.row("ensemble")
    assert evaluation.selected_on == "cv"  # two families on a small stratified table
    assert row["cv_roc_auc"] > max(evaluation.row(n)["cv_roc_auc"] for n in ("network", "linear"))
    assert decision.family == "ensemble" and decision.alias == "champion"

    version = MlflowClient().get_model_version(decision.model_name, decision.version)
    assert version.tags["model.family"] == "ensemble"
    assert version.tags["model.run_id"] == result.run_ids["evaluate"]
    assert set(version.tags["ensemble.weights"].replace(",", "").split()[::2]) == {"network", "linear"}
    assert "ensemble of" in version.description
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{decision.model_name}@champion"))
    assert "torch==" in requirements.read_text()  # a member is a network: served with torch
    lines = summary_lines(result)
    assert any(line.startswith("winner") and "ensemble of" in line for line in lines)
    assert any(
        line.startswith("families") and "cv roc_auc / val roc_auc / test roc_auc" in line for line in lines
    )
    logged = mlflow.get_logged_model(MlflowClient().get_run(result.run_ids["evaluate"]).data.tags["model.id"])
    assert {m.key: m.value for m in logged.metrics}["test_roc_auc"] == pytest.approx(row["test_roc_auc"])

    prepared = result.outputs["prepare"]
    test = prepared.frames["test"]
    served = mlflow.pyfunc.load_model(f"models:/{decision.model_name}@champion").predict(test)
    auc = roc_auc_score(prepared.targets["test"], served["proba_y"])
    assert auc == pytest.approx(evaluation.metrics["roc_auc"], abs=1e-6)
    rows = test.head(4).copy()
    rows.loc[rows.index[0], "city"], rows.loc[rows.index[1], "a"] = "unseen", np.nan
    expected = ensemble_predictor(prepared, result.outputs["train"], evaluation.ensemble).predict_frame(rows)
    got = predict_alone(store, f"models:/{decision.model_name}@champion", rows, tmp_path)
    np.testing.assert_allclose(got["proba_y"].to_numpy(float), expected["proba_y"].to_numpy(float), rtol=1e-5)

    alone = run_pipeline(
        make_cfg(
            *table, "stages=[evaluate]", "candidates=[network,linear]", f"from_run={result.parent_run_id}"
        )
    )
    assert alone.outputs["evaluate"].ensemble == evaluation.ensemble


def test_out_of_fold_predictions_come_from_fits_that_never_saw_the_row(make_cfg):
    """Each train or val row's out-of-fold prediction is the one of the family fitted on the other
    folds; stratified folds keep every class in each."""
    from conftest import prepare_config

    from pipeline.families import family, settings_of
    from pipeline.metrics import resolve_objective
    from pipeline.stages.train import out_of_fold
    from pipeline.training.data import cross_validation_folds

    cfg = make_cfg("data=wine", "tracking.enabled=false")
    prepared = prepare_config(cfg)
    data, objective = prepared.training_data(), resolve_objective(None, None, prepared.task)
    declared, settings = family("random_forest"), settings_of(cfg)
    pred, proba = out_of_fold(declared, settings, data, objective, steps=2, folds=3)
    rows = len(data.y_train) + len(data.y_val)
    assert pred.shape == (rows,) and proba.shape == (rows, 3)
    folds = cross_validation_folds(data, 3, int(cfg.seed))
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(rows))
    fold, held = folds[1]
    assert all(len(np.unique(f.y_val)) == 3 for f, _ in folds)
    alone = declared.fit(settings, fold, objective, stop_after=2).fitted().predict(fold.x_val)
    np.testing.assert_allclose(proba[held], alone[1])


@pytest.mark.parametrize(
    "overrides,strategy,expected",
    [
        (["candidates=[network,linear]"], "stratified", 5),
        (["candidates=[network,linear]", "train.cv_folds=3"], "random", 3),
        (["candidates=[network]"], "stratified", 0),  # nothing to choose between
        (["candidates=[network,linear]", "train.cv_max_rows=100"], "stratified", 0),  # enough rows
        (["candidates=[network,linear]"], "time", 0),  # folds would let the past see the future
        (["candidates=[network,linear]"], "group", 0),  # folds would split groups
        (["candidates=[network,linear]", "train.cv_folds=0"], "stratified", 0),
    ],
)
def test_when_out_of_fold_predictions_are_made(make_cfg, overrides, strategy, expected):
    from types import SimpleNamespace

    from pipeline.stages.train import cv_folds

    prepared = SimpleNamespace(
        targets={"train": np.zeros(140), "val": np.zeros(30)}, card={"split_strategy": strategy}
    )
    assert cv_folds(make_cfg(*overrides), prepared) == expected
