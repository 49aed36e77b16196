"""What happens around each epoch besides training: early stopping that keeps the best weights,
and the progress bar (closed however the loop ends, a pruned trial included)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from pipeline.metrics import Objective


class EarlyStopping:
    """Keeps the weights of the best validation epoch and says when `patience` epochs passed
    without an improvement of at least `min_delta`."""

    def __init__(self, objective: Objective, patience: int, min_delta: float):
        self.objective, self.patience, self.min_delta = objective, patience, min_delta
        self.best_score, self.best_epoch, self.best_val_loss = objective.worst(), -1, math.inf
        self.best_state: dict[str, Any] | None = None
        self.waited = 0
        self.stopped = False

    def update(self, epoch: int, score: float, val_loss: float, network: nn.Module) -> bool:
        """Record the epoch; True when training should stop now."""
        gain = self.objective.improvement(score, self.best_score)
        # a tie in the objective (common for accuracy on a small validation split) goes to the
        # epoch with the lower validation loss, so the first lucky epoch does not win by default
        tie_better = gain == 0 and val_loss < self.best_val_loss
        if math.isfinite(score) and (
            self.best_epoch < 0 or (gain > 0 and gain >= self.min_delta) or tie_better
        ):
            self.best_score, self.best_epoch, self.best_val_loss, self.waited = score, epoch, val_loss, 0
            self.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            self.waited += 1
        self.stopped = self.waited >= self.patience
        return self.stopped

    def restore(self, network: nn.Module) -> None:
        """Put the best epoch's weights back."""
        if self.best_state is not None:
            network.load_state_dict(self.best_state)


class ProgressBar:
    """A tqdm bar over the epochs when `enabled`; a context manager, so it is closed whether the
    loop finishes, stops early, diverges or is pruned."""

    def __init__(self, enabled: bool, epochs: int, metric: str):
        self.metric = metric
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc="train", unit="epoch", leave=False, dynamic_ncols=True)

    def __enter__(self) -> ProgressBar:
        return self

    def update(self, record: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(
            loss=f"{record['train_loss']:.4f}",
            val_loss=f"{record['val_loss']:.4f}",
            **{self.metric: f"{record[f'val_{self.metric}']:.4f}"},
            refresh=False,
        )
        self.bar.update(1)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def closed(self) -> bool:
        return self.bar is None or self.bar.disable
