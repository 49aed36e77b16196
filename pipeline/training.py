"""The training engine: a plain PyTorch loop over in-memory tensors with the practices every
course teaches built in (schedules with warmup, clipping, class weights, early stopping that
restores the best weights, seeding, divergence checks), and predictions in the data's units."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn
from torch.nn import functional as F

from pipeline.errors import TrainingDiverged
from pipeline.metrics import Objective
from pipeline.models import ImageAugmentation, NetworkSpec, build_network, network_spec

EVAL_CHUNK = 8192
SMALL_DATA_ROWS = 20_000
DEFAULT_THREADS = torch.get_num_threads()
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainingData:
    """Model-ready arrays: features already preprocessed, targets encoded (class index or value)."""

    x_train: Any
    y_train: np.ndarray
    x_val: Any
    y_val: np.ndarray
    task: str
    n_classes: int
    image_shape: tuple[int, ...] | None = None


@dataclass
class TrainingResult:
    network: nn.Module
    spec: NetworkSpec
    target_scaling: tuple[float, float] | None
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    stopped_early: bool
    seconds: float
    device: str
    threads: int = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(requested: str) -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (requested == "cuda" and not cuda) or (requested == "mps" and not mps):
        from pipeline.errors import ConfigError

        raise ConfigError(
            f"train.device={requested} is not available on this machine; use train.device=auto or cpu"
        )
    return torch.device(requested)


def thread_count(configured: int | None, n_rows: int) -> int:
    """`train.threads`, else one thread for small data (where intra-op threads cost more than
    they give, and collapse when another process shares the cores), else torch's default."""
    if configured:
        return int(configured)
    return 1 if n_rows < SMALL_DATA_ROWS else DEFAULT_THREADS


def _tensor(x: Any, device: torch.device) -> torch.Tensor:
    if sparse.issparse(x):
        x = x.toarray()
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


def _lr_factor(epoch: int, epochs: int, warmup: int, schedule: str) -> float:
    """Linear warmup, then the schedule's multiplier (plateau is handled by its own scheduler)."""
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "cosine":
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def _make_optimizer(params: Any, train_cfg: Any) -> torch.optim.Optimizer:
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay
        )
    optimizer = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def warm_up() -> None:
    """Pay torch's one-off costs before a first trial needs them: the first optimizer imports
    torch._dynamo (seconds), the first backward pass sets up autograd."""
    layer = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    F.cross_entropy(layer(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long)).backward()
    optimizer.step()


def _loss_fn(
    task: str, train_cfg: Any, y_train: np.ndarray, n_classes: int, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "regression":
        if train_cfg.loss == "huber":
            return lambda out, y: F.huber_loss(out.squeeze(1), y)
        return lambda out, y: F.mse_loss(out.squeeze(1), y)
    counts = np.bincount(y_train.astype(int), minlength=n_classes).astype(np.float64)
    if task == "binary":
        pos_weight = None
        if train_cfg.class_weights and counts[1] > 0:
            pos_weight = torch.tensor(counts[0] / counts[1], device=device, dtype=torch.float32)
        return lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(1), y, pos_weight=pos_weight)
    weight = None
    if train_cfg.class_weights:
        weight = torch.tensor(
            counts.sum() / (n_classes * np.maximum(counts, 1)), device=device, dtype=torch.float32
        )
    smoothing = float(train_cfg.label_smoothing)
    return lambda out, y: F.cross_entropy(out, y, weight=weight, label_smoothing=smoothing)


def outputs_to_predictions(
    outputs: torch.Tensor, task: str, target_scaling: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Network outputs to (predictions, class probabilities); regression back in target units."""
    outputs = outputs.float()
    if task == "regression":
        mean, std = target_scaling or (0.0, 1.0)
        return outputs.squeeze(1).cpu().numpy() * std + mean, None
    if task == "binary":
        p1 = torch.sigmoid(outputs.squeeze(1))
        proba = torch.stack([1 - p1, p1], dim=1)
    else:
        proba = torch.softmax(outputs, dim=1)
    proba_np = proba.cpu().numpy().astype(np.float64)
    return proba_np.argmax(axis=1), proba_np


@torch.no_grad()
def network_outputs(network: nn.Module, x: Any, device: torch.device | None = None) -> torch.Tensor:
    device = device or next(network.parameters()).device
    network.eval()
    chunks = []
    for start in range(0, x.shape[0], EVAL_CHUNK):
        chunks.append(network(_tensor(x[start : start + EVAL_CHUNK], device)))
    return torch.cat(chunks) if chunks else torch.empty(0, 1)


def predict(
    network: nn.Module, x: Any, task: str, target_scaling: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    return outputs_to_predictions(network_outputs(network, x), task, target_scaling)


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
) -> TrainingResult:
    """Train a network on `data` and return it with the weights of its best validation epoch."""
    started = time.perf_counter()
    threads = thread_count(train_cfg.threads, int(data.x_train.shape[0]))
    torch.set_num_threads(threads)
    seed_everything(seed)
    device = select_device(train_cfg.device)
    epochs = int(epochs or train_cfg.epochs)

    spec = network_spec(model_cfg, data.task, int(data.x_train.shape[1]), data.n_classes, data.image_shape)
    network = build_network(spec).to(device)
    model = torch.compile(network) if train_cfg.compile else network

    x_train, x_val = _tensor(data.x_train, device), _tensor(data.x_val, device)
    target_scaling = None
    if data.task == "regression":
        # the network learns a standardized target; predictions are scaled back
        y = data.y_train.astype(np.float64)
        target_scaling = (float(y.mean()), float(y.std() or 1.0))
        y_train = torch.as_tensor(
            (y - target_scaling[0]) / target_scaling[1], dtype=torch.float32, device=device
        )
        y_val = torch.as_tensor(
            (data.y_val - target_scaling[0]) / target_scaling[1], dtype=torch.float32, device=device
        )
    elif data.task == "binary":
        y_train = torch.tensor(data.y_train, dtype=torch.float32, device=device)
        y_val = torch.tensor(data.y_val, dtype=torch.float32, device=device)
    else:
        y_train = torch.tensor(data.y_train, dtype=torch.long, device=device)
        y_val = torch.tensor(data.y_val, dtype=torch.long, device=device)

    loss_fn = _loss_fn(data.task, train_cfg, data.y_train, data.n_classes, device)
    optimizer = _make_optimizer(network.parameters(), train_cfg)
    plateau = None
    if train_cfg.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if objective.maximize else "min",
            factor=0.5,
            patience=max(1, train_cfg.early_stopping.patience // 3),
        )
    augment = None
    if spec.kind == "cnn" and model_cfg.augment.enabled and data.image_shape:
        a = model_cfg.augment
        augment = ImageAugmentation(data.image_shape, a.max_shift, a.max_rotation_degrees, a.noise_std)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    generator = torch.Generator(device=device).manual_seed(seed)
    shuffle_generator = torch.Generator().manual_seed(seed)

    n_rows, batch_size = x_train.shape[0], int(train_cfg.batch_size)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    patience, min_delta = train_cfg.early_stopping.patience, train_cfg.early_stopping.min_delta
    # plain locals: config lookups cost microseconds each, and the batch loop is the hot path
    grad_clip, warmup, schedule = float(train_cfg.grad_clip), int(train_cfg.warmup_epochs), train_cfg.schedule
    parameters = list(network.parameters())
    # each batch's share of the epoch's rows (the last batch may be short)
    batch_sizes = [min(batch_size, n_rows - start) for start in range(0, n_rows, batch_size)]
    batch_weights = torch.tensor(batch_sizes, dtype=torch.float32, device=device) / n_rows
    best_score, best_epoch, best_state, waited = objective.worst(), -1, None, 0
    best_val_loss = math.inf
    history: list[dict[str, float]] = []
    stopped_early = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="train", unit="epoch", leave=False, dynamic_ncols=True)

    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        if plateau is None:
            factor = _lr_factor(epoch, epochs, warmup, schedule)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
        model.train()
        order = torch.randperm(n_rows, generator=shuffle_generator).to(device)
        batch_losses = []
        for start in range(0, n_rows, batch_size):
            index = order[start : start + batch_size]
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
        train_loss = float(torch.stack(batch_losses) @ batch_weights)
        if not math.isfinite(train_loss):
            if bar is not None:
                bar.close()
            raise TrainingDiverged(
                f"training diverged at epoch {epoch + 1}: the loss became {train_loss}; "
                "lower train.lr or set train.grad_clip"
            )

        model.eval()
        with torch.no_grad(), autocast:
            val_out = torch.cat(
                [model(x_val[s : s + EVAL_CHUNK]) for s in range(0, x_val.shape[0], EVAL_CHUNK)]
            )
            val_loss = float(loss_fn(val_out.float(), y_val))
        pred, proba = outputs_to_predictions(val_out, data.task, target_scaling)
        score = objective.score(data.y_val, pred, proba)
        if plateau is not None:
            plateau.step(score)
        record = {
            "train_loss": train_loss,
            "val_loss": val_loss,
            f"val_{objective.metric}": score,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - epoch_started,
        }
        history.append(record)

        gain = objective.improvement(score, best_score)
        # a tie in the objective (common for accuracy on a small validation split) goes to the
        # epoch with the lower validation loss, so the first lucky epoch does not win by default
        tie_better = gain == 0 and val_loss < best_val_loss
        if math.isfinite(score) and (best_epoch < 0 or (gain > 0 and gain >= min_delta) or tie_better):
            best_score, best_epoch, best_val_loss, waited = score, epoch, val_loss, 0
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            waited += 1
        if bar is not None:
            bar.set_postfix(
                loss=f"{train_loss:.4f}",
                val_loss=f"{val_loss:.4f}",
                **{objective.metric: f"{score:.4f}"},
                refresh=False,
            )
            bar.update(1)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if waited >= patience:
            stopped_early = True
            break

    if bar is not None:
        bar.close()
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return TrainingResult(
        network=network,
        spec=spec,
        target_scaling=target_scaling,
        history=history,
        best_epoch=best_epoch,
        best_score=best_score,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        device=str(device),
        threads=threads,
    )
