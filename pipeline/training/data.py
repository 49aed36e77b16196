"""What every family trains on; plain arrays, so that the families without a network never import torch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np


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
    layout: tuple[int, list[int]] | None = None  # coded features: (numbers, category cardinalities)


def with_validation_in_training(data: TrainingData) -> TrainingData:
    """The same data with the validation rows appended to the training rows (a refit's)."""
    from scipy import sparse

    stack = sparse.vstack if sparse.issparse(data.x_train) else np.concatenate
    return replace(
        data,
        x_train=stack([data.x_train, data.x_val]),
        y_train=np.concatenate([data.y_train, data.y_val]),
    )


def cross_validation_folds(
    data: TrainingData, folds: int, seed: int
) -> list[tuple[TrainingData, np.ndarray]]:
    """`folds` folds of the training and validation rows together (stratified by class when every
    class has a row in each fold): per fold, data whose validation rows are the fold and the
    fold's positions among those rows (training rows first, as `with_validation_in_training`)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    pooled = with_validation_in_training(data)
    y = pooled.y_train
    stratify = data.task != "regression" and np.bincount(y.astype(int)).min() >= folds
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (
            replace(
                pooled, x_train=pooled.x_train[fit], y_train=y[fit], x_val=pooled.x_train[held], y_val=y[held]
            ),
            held,
        )
        for fit, held in splitter.split(np.zeros(len(y)), y)
    ]
