"""What every family trains on; plain arrays, so that the families without a network never import torch."""

from __future__ import annotations

from dataclasses import dataclass
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
