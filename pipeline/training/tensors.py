"""Arrays to tensors and network outputs back to predictions in the data's units."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn

from pipeline.training.data import TrainingData

EVAL_CHUNK = 8192


def to_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if sparse.issparse(x):
        x = x.toarray()
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


def target_tensors(
    data: TrainingData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float] | None]:
    """(train targets, val targets, target scaling): regression learns a standardized target
    (predictions are scaled back), binary a float label, multiclass a class index."""
    if data.task == "regression":
        y = data.y_train.astype(np.float64)
        mean, std = float(y.mean()), float(y.std() or 1.0)
        scaled = [
            torch.as_tensor((v - mean) / std, dtype=torch.float32, device=device) for v in (y, data.y_val)
        ]
        return scaled[0], scaled[1], (mean, std)
    dtype = torch.float32 if data.task == "binary" else torch.long
    return (
        torch.tensor(data.y_train, dtype=dtype, device=device),
        torch.tensor(data.y_val, dtype=dtype, device=device),
        None,
    )


def outputs_to_predictions(
    outputs: torch.Tensor, task: str, target_scaling: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Network outputs to (predictions, class probabilities); regression back in target units.
    An ensemble's outputs (batch, members, outputs) are averaged: its members' values, or their
    probabilities."""
    outputs = outputs.float()
    members = outputs.dim() == 3
    if task == "regression":
        mean, std = target_scaling or (0.0, 1.0)
        values = outputs.mean(1) if members else outputs
        return values.squeeze(1).cpu().numpy() * std + mean, None
    if task == "binary":
        p1 = torch.sigmoid(outputs.squeeze(-1))
        p1 = p1.mean(1) if members else p1
        proba = torch.stack([1 - p1, p1], dim=1)
    else:
        proba = torch.softmax(outputs, dim=-1)
        proba = proba.mean(1) if members else proba
    proba_np = proba.cpu().numpy().astype(np.float64)
    return proba_np.argmax(axis=1), proba_np


@torch.no_grad()
def network_outputs(network: nn.Module, x: Any, device: torch.device | None = None) -> torch.Tensor:
    device = device or next(network.parameters()).device
    network.eval()
    chunks = []
    for start in range(0, x.shape[0], EVAL_CHUNK):
        chunks.append(network(to_tensor(x[start : start + EVAL_CHUNK], device)))
    return torch.cat(chunks) if chunks else torch.empty(0, 1)


def predict(
    network: nn.Module, x: Any, task: str, target_scaling: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    return outputs_to_predictions(network_outputs(network, x), task, target_scaling)
