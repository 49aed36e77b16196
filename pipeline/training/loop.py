"""The training loop: a plain PyTorch loop over in-memory tensors with the practices every course
teaches built in (schedules with warm-up, clipping, class weights, early stopping that restores
the best weights, seeding, divergence checks). `fit` reads top to bottom: set up, then per epoch
train, validate, record, and ask the callbacks whether to stop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.config.choices import OPTIMIZERS
from pipeline.errors import TrainingDiverged
from pipeline.metrics import Objective
from pipeline.models import ImageAugmentation, NetworkSpec, build_network, network_spec
from pipeline.startup import resume_full_collections
from pipeline.training.callbacks import EarlyStopping, ProgressBar
from pipeline.training.result import TrainedModel
from pipeline.training.schedules import LearningRate
from pipeline.training.setup import Loss, make_loss, seed_everything, select_device, thread_count
from pipeline.training.tensors import (
    EVAL_CHUNK,
    TrainingData,
    outputs_to_predictions,
    target_tensors,
    to_tensor,
)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainingState:
    """Everything one training run works with, built once before the first epoch."""

    spec: NetworkSpec
    network: nn.Module
    model: nn.Module  # the network, compiled when train.compile is set
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    target_scaling: tuple[float, float] | None
    loss_fn: Loss
    optimizer: torch.optim.Optimizer
    schedule: LearningRate
    augment: ImageAugmentation | None
    autocast: Any
    generator: torch.Generator  # augmentation noise, on the device
    shuffler: torch.Generator  # batch order, on the CPU
    batch_size: int
    batch_weights: torch.Tensor  # each batch's share of the epoch's rows (the last may be short)
    grad_clip: float
    epochs: int
    device: torch.device


def start(
    train_cfg: Any, model_cfg: Any, data: TrainingData, objective: Objective, seed: int, epochs: int
) -> TrainingState:
    seed_everything(seed)
    device = select_device(train_cfg.device)
    spec = network_spec(
        model_cfg, data.task, int(data.x_train.shape[1]), data.n_classes, data.image_shape, data.layout
    )
    network = build_network(spec).to(device)
    y_train, y_val, target_scaling = target_tensors(data, device)
    optimizer = OPTIMIZERS[train_cfg.optimizer](network.parameters(), train_cfg)
    augment = None
    if spec.kind == "cnn" and model_cfg.augment.enabled and data.image_shape:
        a = model_cfg.augment
        augment = ImageAugmentation(data.image_shape, a.max_shift, a.max_rotation_degrees, a.noise_std)
    n_rows, batch_size = int(data.x_train.shape[0]), int(train_cfg.batch_size)
    sizes = [min(batch_size, n_rows - s) for s in range(0, n_rows, batch_size)]
    return TrainingState(
        spec=spec,
        network=network,
        model=torch.compile(network) if train_cfg.compile else network,
        x_train=to_tensor(data.x_train, device),
        y_train=y_train,
        x_val=to_tensor(data.x_val, device),
        y_val=y_val,
        target_scaling=target_scaling,
        loss_fn=make_loss(data.task, train_cfg, data.y_train, data.n_classes, device),
        optimizer=optimizer,
        schedule=LearningRate(optimizer, train_cfg, epochs, objective.maximize),
        augment=augment,
        autocast=torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext(),
        generator=torch.Generator(device=device).manual_seed(seed),
        shuffler=torch.Generator().manual_seed(seed),
        batch_size=batch_size,
        batch_weights=torch.tensor(sizes, dtype=torch.float32, device=device) / n_rows,
        grad_clip=float(train_cfg.grad_clip),
        epochs=epochs,
        device=device,
    )


def train_epoch(run: TrainingState) -> float:
    """One pass over the shuffled training rows; returns the mean training loss."""
    # plain locals: attribute lookups cost microseconds each, and the batch loop is the hot path
    model, x_train, y_train, loss_fn, optimizer = (
        run.model,
        run.x_train,
        run.y_train,
        run.loss_fn,
        run.optimizer,
    )
    augment, generator, autocast, grad_clip = run.augment, run.generator, run.autocast, run.grad_clip
    n_rows, batch_size = x_train.shape[0], run.batch_size
    parameters = list(run.network.parameters())
    model.train()
    order = torch.randperm(n_rows, generator=run.shuffler).to(run.device)
    batch_losses = []
    for start_row in range(0, n_rows, batch_size):
        index = order[start_row : start_row + batch_size]
        xb, yb = x_train[index], y_train[index]
        if augment is not None:
            xb = augment(xb, generator)
        with autocast:
            loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        batch_losses.append(loss.detach())  # summed once per epoch, not per batch
    return float(torch.stack(batch_losses) @ run.batch_weights)


@torch.no_grad()
def validate(run: TrainingState) -> tuple[torch.Tensor, float]:
    """Validation outputs and loss."""
    run.model.eval()
    with run.autocast:
        outputs = torch.cat(
            [run.model(run.x_val[s : s + EVAL_CHUNK]) for s in range(0, run.x_val.shape[0], EVAL_CHUNK)]
        )
        return outputs, float(run.loss_fn(outputs.float(), run.y_val))


def run_epoch(run: TrainingState, epoch: int, data: TrainingData, objective: Objective) -> dict[str, float]:
    """Train and validate one epoch; returns its record (losses, objective, learning rate)."""
    started = time.perf_counter()
    run.schedule.start_epoch(epoch)
    train_loss = train_epoch(run)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}: the loss became {train_loss}; "
            "lower train.lr or set train.grad_clip"
        )
    outputs, val_loss = validate(run)
    pred, proba = outputs_to_predictions(outputs, data.task, run.target_scaling)
    score = objective.score(data.y_val, pred, proba)
    run.schedule.end_epoch(score)
    if epoch == 0:
        resume_full_collections()  # a command's start-up is over (pipeline.startup)
    return {
        "train_loss": train_loss,
        "val_loss": val_loss,
        f"val_{objective.metric}": score,
        "lr": run.schedule.current,
        "epoch_seconds": time.perf_counter() - started,
    }


def fit(
    train_cfg: Any,
    model_cfg: Any,
    data: TrainingData,
    objective: Objective,
    seed: int,
    *,
    epochs: int | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
    stop_after: int | None = None,
) -> TrainedModel:
    """Train a network on `data` and return it with the weights of its best validation epoch.
    `on_epoch(epoch, record)` sees every epoch's record (metrics to log, a pruner to consult).
    `stop_after`: train exactly that many epochs of the schedule and keep the last weights (a
    refit, whose validation rows are among its training rows, has nothing to stop on)."""
    started = time.perf_counter()
    threads = thread_count(train_cfg.threads, int(data.x_train.shape[0]))
    torch.set_num_threads(threads)
    run = start(train_cfg, model_cfg, data, objective, seed, int(epochs or train_cfg.epochs))
    key = f"val_{objective.metric}"
    # a refit trains a fixed count: nothing to stop on, no best weights to keep aside
    stopping = (
        EarlyStopping(objective, train_cfg.early_stopping.patience, train_cfg.early_stopping.min_delta)
        if stop_after is None
        else None
    )
    last = run.epochs if stop_after is None else min(stop_after, run.epochs)
    history: list[dict[str, float]] = []
    with ProgressBar(progress, last, objective.metric) as bar:
        for epoch in range(last):
            record = run_epoch(run, epoch, data, objective)
            history.append(record)
            stop = stopping is not None and stopping.update(
                epoch, record[key], record["val_loss"], run.network
            )
            bar.update(record)
            if on_epoch is not None:
                on_epoch(epoch, record)
            if stop:
                break
    if stopping is not None:
        stopping.restore(run.network)
        best_epoch, best_score, stopped = stopping.best_epoch, stopping.best_score, stopping.stopped
    else:
        best_epoch, best_score, stopped = len(history) - 1, history[-1][key], False
    return TrainedModel(
        network=run.network.eval(),
        spec=run.spec,
        target_scaling=run.target_scaling,
        history=history,
        best_epoch=best_epoch,
        best_score=best_score,
        stopped_early=stopped,
        seconds=time.perf_counter() - started,
        device=str(run.device),
        threads=threads,
        fit_rows=int(data.x_train.shape[0]),
    )
