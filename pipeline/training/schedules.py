"""The learning rate over the epochs: a linear warm-up, then the configured schedule; `plateau`
halves the rate when the objective stalls instead of following a fixed curve."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config.choices import SCHEDULES


class LearningRate:
    def __init__(self, optimizer: torch.optim.Optimizer, train_cfg: Any, epochs: int, maximize: bool):
        self.optimizer = optimizer
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.curve = SCHEDULES[train_cfg.schedule]
        self.warmup, self.epochs = int(train_cfg.warmup_epochs), epochs
        self.plateau = None
        if self.curve is None:
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if maximize else "min",
                factor=0.5,
                patience=max(1, train_cfg.early_stopping.patience // 3),
            )

    def factor(self, epoch: int) -> float:
        if self.warmup and epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        assert self.curve is not None
        return self.curve(epoch, self.epochs, self.warmup)

    def start_epoch(self, epoch: int) -> None:
        if self.plateau is None:
            factor = self.factor(epoch)
            for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
                group["lr"] = base * factor

    def end_epoch(self, score: float) -> None:
        if self.plateau is not None:
            self.plateau.step(score)

    @property
    def current(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
