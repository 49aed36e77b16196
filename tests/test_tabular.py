"""The tabular network (model=tabular): numeric embeddings and category embeddings of shapes that
match the table, an ensemble whose prediction is its members' mean, the same guarantees as any
network (determinism, early stopping, pruning), and a registered model that takes raw rows with
unseen categories and missing values."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from pipeline.codes import CodesEncoder, smooth_clip
from pipeline.metrics import resolve_objective
from pipeline.models import build_network, network_spec
from pipeline.tabular import PeriodicEmbeddings, category_width
from pipeline.training.loop import fit
from pipeline.training.tensors import TrainingData, outputs_to_predictions

N_NUMERIC, CARDINALITIES, MEMBERS = 3, [4, 7], 5


def _table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.exponential(size=n) * 100
    color = rng.choice(["red", "green", "blue", "grey"], size=n)
    label = (x1 + (color == "red") + rng.normal(scale=0.5, size=n)) > 0.4
    frame = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": np.where(label, "yes", "no")})
    frame.loc[[3, 30], "x2"] = np.nan
    frame.loc[[4, 40], "color"] = None
    return frame


def _spec(make_cfg, task: str = "binary", n_classes: int = 2, *overrides: str):
    cfg = make_cfg("model=tabular", f"model.members={MEMBERS}", *overrides)
    spec = network_spec(
        cfg.model, task, N_NUMERIC + len(CARDINALITIES), n_classes, None, (N_NUMERIC, CARDINALITIES)
    )
    return cfg, spec


def test_periodic_embeddings_have_one_vector_per_number():
    embeddings = PeriodicEmbeddings(n_features=3, k=8, d=6, scale=0.3)
    out = embeddings(torch.randn(10, 3))
    assert out.shape == (10, 3, 6) and (out >= 0).all()  # a ReLU ends each embedding


def test_the_network_embeds_numbers_and_categories_and_predicts_per_member(make_cfg):
    _, spec = _spec(make_cfg)
    network = build_network(spec)
    assert [e.num_embeddings for e in network.categories] == CARDINALITIES
    width = N_NUMERIC * spec.d_embedding + sum(category_width(c) for c in CARDINALITIES)
    assert network.adapters.shape == (MEMBERS, width)
    x = torch.cat([torch.randn(8, N_NUMERIC), torch.tensor([[0, 6]] * 8, dtype=torch.float32)], dim=1)
    out = network(x)
    assert out.shape == (8, MEMBERS, 1)  # one logit per member


def test_without_numeric_embeddings_each_number_is_one_input(make_cfg):
    _, spec = _spec(make_cfg, "binary", 2, "model.numeric_embedding=none")
    network = build_network(spec)
    width = N_NUMERIC + sum(category_width(c) for c in CARDINALITIES)
    assert network.adapters.shape == (MEMBERS, width)
    x = torch.cat([torch.randn(8, N_NUMERIC), torch.tensor([[1, 2]] * 8, dtype=torch.float32)], dim=1)
    assert network(x).shape == (8, MEMBERS, 1)
    assert not any(isinstance(m, PeriodicEmbeddings) for m in network.modules())


def test_an_unknown_numeric_embedding_is_refused_with_the_choices(make_cfg):
    from pipeline.config.validate import validate
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.numeric_embedding.*periodic.*none"):
        validate(make_cfg("model=tabular", "model.numeric_embedding=plr"))


def test_the_prediction_is_the_mean_over_members():
    logits = torch.tensor([[[2.0], [-1.0], [0.5]], [[0.0], [0.0], [0.0]]])  # 2 rows, 3 members
    pred, proba = outputs_to_predictions(logits, "binary", None)
    expected = torch.sigmoid(logits).mean(1).squeeze(1).numpy()
    np.testing.assert_allclose(proba[:, 1], expected, rtol=1e-6)
    multiclass = torch.randn(4, 3, 5)
    _, proba = outputs_to_predictions(multiclass, "multiclass", None)
    np.testing.assert_allclose(proba, torch.softmax(multiclass, -1).mean(1).numpy(), rtol=1e-6)
    values, _ = outputs_to_predictions(torch.tensor([[[1.0], [3.0]]]), "regression", (10.0, 2.0))
    assert values.tolist() == [10.0 + 2.0 * 2.0]


def test_codes_are_fitted_on_training_rows_and_take_unseen_and_missing_values():
    from pipeline.data.inspection import coerce_features

    types = {"x1": "numeric", "x2": "numeric", "color": "categorical"}
    frame = coerce_features(_table(), types)
    encoder = CodesEncoder(types, min_count=5).fit(frame)
    assert encoder.n_numeric == 2 and encoder.cardinalities == [5]  # four colours and the 0 code
    raw = pd.DataFrame({"x1": [0.0, 1e9], "x2": [np.nan, 5.0], "color": ["purple", None]})
    codes = encoder.transform(coerce_features(raw, types))
    assert codes[:, 2].tolist() == [0.0, 0.0]  # unseen and missing both take code 0
    assert np.isfinite(codes).all() and abs(codes[1, 0]) <= 3.0  # an outlier is smoothly clipped
    assert codes[0, 1] == pytest.approx(smooth_clip(np.zeros(1))[0])  # missing: the median


def _data(make_cfg):
    from pipeline.data.inspection import coerce_features
    from pipeline.splitting import split_rows

    frame = _table()
    types = {"x1": "numeric", "x2": "numeric", "color": "categorical"}
    rows = coerce_features(frame, types)
    index = split_rows(frame, frame["label"], "stratified", 0.2, 0.2, 0)
    encoder = CodesEncoder(types, min_count=5).fit(rows.iloc[index["train"]])
    y = (frame["label"] == "yes").to_numpy(int)
    x = {s: encoder.transform(rows.iloc[index[s]]) for s in index}
    layout = (encoder.n_numeric, encoder.cardinalities)
    return TrainingData(x["train"], y[index["train"]], x["val"], y[index["val"]], "binary", 2, None, layout)


def test_training_is_deterministic_and_restores_the_best_epoch(make_cfg):
    cfg = make_cfg("model=tabular", "model.members=4", "train.epochs=12", "train.early_stopping.patience=3")
    data = _data(make_cfg)
    objective = resolve_objective(None, None, "binary")
    first = fit(cfg.train, cfg.model, data, objective, seed=3)
    second = fit(cfg.train, cfg.model, data, objective, seed=3)
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]
    scores = [r["val_roc_auc"] for r in first.history]
    assert first.best_score == scores[first.best_epoch] == max(scores)
    with torch.no_grad():
        pred, proba = outputs_to_predictions(first.network(torch.as_tensor(data.x_val)), "binary", None)
    assert objective.score(data.y_val, pred, proba) == pytest.approx(first.best_score, abs=1e-6)
    assert first.best_score > 0.75


def test_a_pruned_tabular_trial_stops_early(make_cfg):
    cfg = make_cfg("model=tabular", "model.members=2", "train.epochs=10")
    data = _data(make_cfg)
    seen = []

    def prune_at_three(epoch: int, record: dict) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise optuna.TrialPruned("pruned at epoch 2")

    with pytest.raises(optuna.TrialPruned):
        fit(cfg.train, cfg.model, data, resolve_objective(None, None, "binary"), 0, on_epoch=prune_at_three)
    assert seen == [0, 1, 2]


def test_a_registered_tabular_network_takes_raw_rows(make_cfg, store, tmp_path):
    """Through the pipeline and the registry: the tabular network is the default for a table,
    and its registered pyfunc scores raw rows with unseen categories and missing values exactly
    as the trained model does in process."""
    from pipeline.runner import run_pipeline
    from pipeline.tracking import registry

    path = tmp_path / "shop.csv"
    _table(240).to_csv(path, index=False)
    result = run_pipeline(
        make_cfg(
            "data=table", f"data.path={path}", "data.target=label", "stages=[prepare,train,evaluate,register]",
            "model.members=3", "train.epochs=6",
        )
    )  # fmt: skip
    trained = result.outputs["train"]["network"]
    assert trained.spec.kind == "tabular" and trained.spec.members == 3
    raw = pd.DataFrame(
        {"x1": [0.2, np.nan, -1.0], "x2": [np.nan, 3.0, 1e4], "color": ["purple", None, "red"]}
    )
    expected = trained.predictor(result.outputs["prepare"]).predict_frame(raw)
    served = registry.load_model("models:/shop@champion").predict(raw)
    assert list(served.columns) == ["prediction", "proba_no", "proba_yes"]
    np.testing.assert_allclose(served["proba_yes"], expected["proba_yes"], rtol=1e-5)
    assert served["prediction"].tolist() == expected["prediction"].tolist()
