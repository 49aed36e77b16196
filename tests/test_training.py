"""The training engine on real data sets: early stopping, determinism, every task head and loss,
the CNN with augmentation, divergence, device selection, and per-epoch metrics in MLflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import prepare_config
from mlflow.tracking import MlflowClient
from torch.nn import functional as F

from pipeline.errors import ConfigError, TrainingDiverged
from pipeline.metrics import resolve_objective
from pipeline.models import ImageAugmentation
from pipeline.runner import run_pipeline
from pipeline.training.loop import fit
from pipeline.training.setup import select_device
from pipeline.training.tensors import TrainingData, network_outputs, predict

_DATA_CACHE: dict[str, TrainingData] = {}


def _data(make_cfg, name: str) -> TrainingData:
    """Prepared training data of a built-in data set (cached: preparing is deterministic)."""
    if name not in _DATA_CACHE:
        _DATA_CACHE[name] = prepare_config(make_cfg(f"data={name}")).training_data()
    return _DATA_CACHE[name]


def _fit(make_cfg, name: str, *overrides: str, data: TrainingData | None = None):
    """Fit on the CPU unless a test picks the device: exact comparisons below assume float32
    (on CUDA the loop runs in bfloat16 autocast)."""
    if not any(o.startswith("train.device=") for o in overrides):
        overrides = ("train.device=cpu", *overrides)
    cfg = make_cfg(f"data={name}", *overrides)
    data = data or _data(make_cfg, name)
    objective = resolve_objective(None, None, data.task)
    return fit(cfg.train, cfg.model, data, objective, int(cfg.seed)), data, objective


def _val_score(result, data: TrainingData, objective) -> float:
    pred, proba = predict(result.network, data.x_val, data.task, result.target_scaling)
    return objective.score(data.y_val, pred, proba)


def test_early_stopping_restores_best_epoch_weights(make_cfg):
    result, data, objective = _fit(
        make_cfg,
        "diabetes",
        "train.schedule=none",
        "train.lr=0.01",
        "train.epochs=200",
        "train.early_stopping.patience=3",
    )
    key = f"val_{objective.metric}"
    scores = [row[key] for row in result.history]
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 1 + 3  # stopped `patience` epochs after the best
    assert result.best_score == scores[result.best_epoch] == min(scores)
    # every epoch after the best one was worse, so the last weights are not the best ones
    assert all(s > result.best_score for s in scores[result.best_epoch + 1 :])
    # the returned network is the best epoch's, not the last one's
    assert _val_score(result, data, objective) == pytest.approx(result.best_score, rel=1e-6)
    assert _val_score(result, data, objective) < scores[-1]


def test_same_seed_and_config_give_identical_history(make_cfg):
    first, _, _ = _fit(make_cfg, "wine", "train.epochs=4")
    second, _, _ = _fit(make_cfg, "wine", "train.epochs=4")

    def drop_timing(history):
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]

    assert drop_timing(first.history) == drop_timing(second.history)
    for name, tensor in first.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name
    other, _, _ = _fit(make_cfg, "wine", "train.epochs=4", "seed=7")
    assert drop_timing(other.history) != drop_timing(first.history)


def test_binary_head_uses_bce_on_one_logit(make_cfg):
    result, data, objective = _fit(make_cfg, "breast_cancer", "train.epochs=3")
    assert data.task == "binary" and result.spec.n_outputs == 1
    out = network_outputs(result.network, data.x_val)
    assert out.shape == (len(data.y_val), 1)
    expected = F.binary_cross_entropy_with_logits(
        out.squeeze(1), torch.as_tensor(data.y_val, dtype=torch.float32)
    )
    assert result.history[result.best_epoch]["val_loss"] == pytest.approx(float(expected), rel=1e-5)
    pred, proba = predict(result.network, data.x_val, data.task, result.target_scaling)
    assert proba.shape == (len(data.y_val), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert set(np.unique(pred)) <= {0, 1}
    assert result.best_score > 0.8


def test_multiclass_head_uses_cross_entropy_with_label_smoothing(make_cfg):
    result, data, objective = _fit(make_cfg, "wine", "train.epochs=3", "train.label_smoothing=0.2")
    assert data.task == "multiclass" and data.n_classes == 3 and result.spec.n_outputs == 3
    out = network_outputs(result.network, data.x_val)
    y = torch.as_tensor(data.y_val, dtype=torch.long)
    smoothed = float(F.cross_entropy(out, y, label_smoothing=0.2))
    plain = float(F.cross_entropy(out, y))
    assert result.history[result.best_epoch]["val_loss"] == pytest.approx(smoothed, rel=1e-5)
    assert not math.isclose(smoothed, plain, rel_tol=1e-3)
    _, proba = predict(result.network, data.x_val, data.task, result.target_scaling)
    assert proba.shape == (len(data.y_val), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_regression_standardizes_target_and_predicts_in_target_units(make_cfg, loss):
    result, data, objective = _fit(make_cfg, "diabetes", "train.epochs=6", f"train.loss={loss}")
    assert data.task == "regression" and result.spec.n_outputs == 1
    mean, std = result.target_scaling
    assert mean == pytest.approx(float(np.mean(data.y_train)))
    assert std == pytest.approx(float(np.std(data.y_train)))
    # the loss is computed on the standardized target
    out = network_outputs(result.network, data.x_val).squeeze(1)
    y_std = torch.as_tensor((data.y_val - mean) / std, dtype=torch.float32)
    expected = F.huber_loss(out, y_std) if loss == "huber" else F.mse_loss(out, y_std)
    other = F.mse_loss(out, y_std) if loss == "huber" else F.huber_loss(out, y_std)
    assert result.history[result.best_epoch]["val_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert not math.isclose(float(expected), float(other), rel_tol=1e-3)
    # predictions are in the target's units (diabetes progression, ~25..346), not standardized
    pred, proba = predict(result.network, data.x_val, data.task, result.target_scaling)
    assert proba is None
    np.testing.assert_allclose(pred, out.numpy() * std + mean, rtol=1e-5)
    assert abs(pred.mean() - data.y_val.mean()) < 0.5 * std
    assert pred.std() > 0.2 * std  # not stuck in standardized units near 0
    rmse = float(np.sqrt(np.mean((pred - data.y_val) ** 2)))
    assert objective.metric == "rmse"
    assert rmse == pytest.approx(result.best_score, rel=1e-6)
    assert rmse < float(np.std(data.y_val))  # better than predicting the mean


def test_cnn_with_augmentation_learns_digits(make_cfg):
    result, data, objective = _fit(make_cfg, "digits", "model=cnn", "train.epochs=3")
    assert data.image_shape == (1, 8, 8)
    assert result.spec.kind == "cnn" and result.spec.n_outputs == 10
    assert len(result.history) == 3
    assert result.best_score > 0.5  # chance is 0.1


def test_image_augmentation_keeps_shape_and_background():
    shape = (1, 8, 8)
    background = -0.4
    images = torch.full((16, 64), background)
    images.view(16, *shape)[:, :, 3:5, 3:5] = 2.0  # a bright blob in the middle of each image
    augment = ImageAugmentation(shape, max_shift=2, max_rotation_degrees=15.0, noise_std=0.0)
    generator = torch.Generator().manual_seed(0)
    moved = augment(images, generator)
    assert moved.shape == images.shape
    grids = moved.view(16, *shape)
    # what enters from outside the frame is the background, never zero
    assert torch.allclose(grids[:, :, 0, 0], torch.tensor(background))
    assert grids.min() >= background - 1e-5
    assert not torch.allclose(moved, images)  # it did move something
    blank = torch.full((4, 64), background)
    assert torch.allclose(augment(blank, generator), blank, atol=1e-6)
    noisy = ImageAugmentation(shape, 1, 10.0, noise_std=0.05)(images, torch.Generator().manual_seed(0))
    assert noisy.shape == images.shape and not torch.allclose(
        noisy.view(16, *shape)[:, :, 0, 0], torch.tensor(background)
    )


def test_cnn_on_a_table_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="model=cnn needs an image data set"):
        _fit(make_cfg, "breast_cancer", "model=cnn", "train.epochs=1")


def test_infinite_features_raise_training_diverged(make_cfg):
    clean = _data(make_cfg, "wine")
    x_train = np.array(clean.x_train, dtype=np.float64, copy=True)
    x_train[0, 0] = np.inf
    data = TrainingData(x_train, clean.y_train, clean.x_val, clean.y_val, clean.task, clean.n_classes)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1: the loss became nan.*train\.lr"):
        _fit(make_cfg, "wine", "train.epochs=3", data=data)


def test_huge_learning_rate_raises_training_diverged(make_cfg):
    with pytest.raises(TrainingDiverged, match="training diverged at epoch"):
        _fit(
            make_cfg,
            "diabetes",
            "train.optimizer=sgd",
            "train.lr=1e10",
            "train.grad_clip=0",
            "train.epochs=3",
        )


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="needs a CPU-only machine",
)
def test_device_selection_falls_back_to_cpu(make_cfg):
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device=cuda is not available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="train.device=mps is not available"):
        select_device("mps")
    result, _, _ = _fit(make_cfg, "wine", "train.epochs=1", "train.device=auto")
    assert result.device == "cpu"


@pytest.mark.slow
def test_train_stage_logs_every_epoch_to_mlflow(make_cfg):
    result = run_pipeline(make_cfg("stages=[prepare,train]", "data=wine", "train.epochs=5"))
    trained = result.outputs["train"]["network"]
    client = MlflowClient()
    run_id = result.run_ids["train.network"]
    for key in ("train_loss", "val_loss", "val_log_loss", "lr"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(len(trained.history))), key
        logged = {m.step: m.value for m in history}
        assert [logged[i] for i in range(len(trained.history))] == pytest.approx(
            [row[key] for row in trained.history]
        ), key
    run = client.get_run(run_id)
    assert run.data.metrics["epochs_run"] == len(trained.history)
    assert run.data.metrics["best_epoch"] == trained.best_epoch
    assert run.data.metrics["best_val_log_loss"] == pytest.approx(trained.best_score)


def test_metric_buffer_writes_in_the_background_and_flush_waits(store):
    """With a send at every epoch, a writer thread stores the metrics while training goes on;
    flush() returns only when all of them are in the store, in order. A write that fails is
    raised by flush(), not lost in the thread."""
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.buffer import MetricBuffer
    from pipeline.tracking.store import connect

    experiment_id = connect(store, "buffer")
    client = MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    buffer = MetricBuffer(run_id, client=client, flush_seconds=0.0)
    for epoch in range(40):
        buffer.add(epoch, {"train_loss": 1.0 / (epoch + 1), "val_loss": 2.0 / (epoch + 1)})
    assert buffer._writer is not None and buffer._writer.is_alive()
    buffer.flush()
    assert buffer._writer is None
    history = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == list(range(40))
    assert [m.value for m in history] == pytest.approx([1.0 / (e + 1) for e in range(40)])
    assert len(client.get_metric_history(run_id, "val_loss")) == 40

    broken = MetricBuffer("no-such-run", client=client, flush_seconds=0.0)
    broken.add(0, {"train_loss": 1.0})
    broken.add(1, {"train_loss": 0.5})
    with pytest.raises(MlflowException):
        broken.flush()
