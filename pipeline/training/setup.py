"""What a training run sets up before its first epoch: seeds, the device, the thread count and the
loss for the task."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config.choices import REGRESSION_LOSSES
from pipeline.errors import ConfigError

SMALL_DATA_ROWS = 20_000
DEFAULT_THREADS = torch.get_num_threads()
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def warm_up() -> None:
    """Pay torch's one-off costs before a first trial needs them: the first optimizer imports
    torch._dynamo (seconds), the first backward pass sets up autograd."""
    layer = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    F.cross_entropy(layer(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long)).backward()
    optimizer.step()


def make_loss(task: str, train_cfg: Any, y_train: np.ndarray, n_classes: int, device: torch.device) -> Loss:
    """The loss of the task: the configured regression loss, BCE on one logit, or cross-entropy;
    classes weighted by inverse frequency with `train.class_weights`. An ensemble's members each
    get the loss on the same targets, averaged."""
    return each_member(_task_loss(task, train_cfg, y_train, n_classes, device))


def each_member(loss: Loss) -> Loss:
    def members_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.dim() == 3:  # (batch, members, outputs)
            batch, members = out.shape[:2]
            return loss(out.reshape(batch * members, -1), y.repeat_interleave(members))
        return loss(out, y)

    return members_loss


def _task_loss(task: str, train_cfg: Any, y_train: np.ndarray, n_classes: int, device: torch.device) -> Loss:
    if task == "regression":
        return REGRESSION_LOSSES[train_cfg.loss]
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
