"""The training callbacks on their own: early stopping keeps and restores the best weights, and
the progress bar is closed however the loop ends, a pruned trial included."""

from __future__ import annotations

import optuna
import pytest
import torch
from tqdm.auto import tqdm

from pipeline.metrics import Objective
from pipeline.training.callbacks import EarlyStopping, ProgressBar


def test_early_stopping_restores_the_best_weights():
    network = torch.nn.Linear(2, 1)
    stopping = EarlyStopping(Objective("accuracy", "maximize"), patience=2, min_delta=0.0)
    scores = [0.5, 0.8, 0.7, 0.6]
    for epoch, score in enumerate(scores):
        with torch.no_grad():
            network.weight.fill_(float(epoch))  # each epoch leaves other weights
        stop = stopping.update(epoch, score, val_loss=1.0 - score, network=network)
    assert stop and stopping.stopped and stopping.best_epoch == 1 and stopping.best_score == 0.8
    assert float(network.weight[0, 0]) == 3.0
    stopping.restore(network)
    assert torch.all(network.weight == 1.0)  # the best epoch's weights, not the last


def test_a_tie_goes_to_the_lower_validation_loss_and_min_delta_is_required():
    network = torch.nn.Linear(2, 1)
    stopping = EarlyStopping(Objective("rmse", "minimize"), patience=5, min_delta=0.1)
    stopping.update(0, 1.0, val_loss=0.5, network=network)
    stopping.update(1, 1.0, val_loss=0.4, network=network)  # same score, lower loss: better
    assert stopping.best_epoch == 1
    stopping.update(2, 0.95, val_loss=0.3, network=network)  # better by less than min_delta
    assert stopping.best_epoch == 1 and stopping.waited == 1
    stopping.update(3, float("nan"), val_loss=0.1, network=network)  # an undefined score never wins
    assert stopping.best_epoch == 1


def test_the_progress_bar_is_closed_when_a_trial_is_pruned():
    record = {"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5}
    with pytest.raises(optuna.TrialPruned):
        with ProgressBar(True, 10, "accuracy") as bar:
            bar.update(record)
            raise optuna.TrialPruned("pruned at epoch 0")
    assert bar.closed
    assert bar.bar not in tqdm._instances


def test_fit_closes_its_progress_bar_when_pruned(make_cfg):
    from conftest import prepare_config

    from pipeline.metrics import resolve_objective
    from pipeline.training.loop import fit

    cfg = make_cfg("data=wine", "train.epochs=5")
    data = prepare_config(cfg).training_data()
    open_before = len(tqdm._instances)

    def prune(epoch, record):
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    with pytest.raises(optuna.TrialPruned):
        fit(
            cfg.train,
            cfg.model,
            data,
            resolve_objective(None, None, data.task),
            0,
            on_epoch=prune,
            progress=True,
        )
    assert len(tqdm._instances) == open_before
