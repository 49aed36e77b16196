"""Stage train: the final model, with the best parameters of the tune stage it follows or, when no
tune run is used, the configured ones; the output says which."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from pipeline.metrics import Objective
from pipeline.models import NetworkSpec, build_network, parameter_count
from pipeline.predictor import Predictor
from pipeline.search_space import apply_values
from pipeline.stages.prepare import PreparedData
from pipeline.stages.tune import TuneResult
from pipeline.training import EpochCallback, fit


@dataclass
class TrainedModel:
    spec: NetworkSpec
    state_dict: dict[str, torch.Tensor]
    target_scaling: tuple[float, float] | None
    history: list[dict[str, float]]
    best_epoch: int
    best_val_score: float
    params_source: str  # "tune" or "config"
    applied_values: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    threads: int = 1

    @property
    def parameter_count(self) -> int:
        return parameter_count(self.network())

    def network(self) -> torch.nn.Module:
        network = build_network(self.spec)
        network.load_state_dict(self.state_dict)
        return network.eval()

    def predictor(self, prepared: PreparedData) -> Predictor:
        return Predictor(prepared.preprocessing, self.network(), self.spec, self.target_scaling)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, directory / "weights.pt")
        pd.DataFrame(self.history).rename_axis("epoch").to_csv(directory / "history.csv")
        meta = {
            "spec": self.spec.to_dict(),
            "target_scaling": self.target_scaling,
            "best_epoch": self.best_epoch,
            "best_val_score": self.best_val_score,
            "params_source": self.params_source,
            "applied_values": self.applied_values,
            "seconds": self.seconds,
            "device": self.device,
            "threads": self.threads,
        }
        (directory / "trained.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> TrainedModel:
        meta = json.loads((directory / "trained.json").read_text())
        history = pd.read_csv(directory / "history.csv", index_col="epoch").to_dict("records")
        scaling = meta.pop("target_scaling")
        return cls(
            spec=NetworkSpec(**meta.pop("spec")),
            state_dict=torch.load(directory / "weights.pt", map_location="cpu", weights_only=True),
            target_scaling=tuple(scaling) if scaling else None,
            history=history,
            **meta,
        )


def train(
    cfg: DictConfig,
    prepared: PreparedData,
    objective: Objective,
    tuned: TuneResult | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
) -> TrainedModel:
    """Train the final network on the training split, early-stopped on the validation split."""
    use_tuned = tuned is not None and cfg.train.params_from == "auto"
    values = dict(tuned.best_values) if use_tuned and tuned else {}
    run_cfg = apply_values(cfg, values)
    result = fit(
        run_cfg.train,
        run_cfg.model,
        prepared.training_data(),
        objective,
        int(cfg.seed),
        on_epoch=on_epoch,
        progress=progress,
    )
    return TrainedModel(
        spec=result.spec,
        state_dict={k: v.detach().cpu().clone() for k, v in result.network.state_dict().items()},
        target_scaling=result.target_scaling,
        history=result.history,
        best_epoch=result.best_epoch,
        best_val_score=result.best_score,
        params_source="tune" if use_tuned else "config",
        applied_values=values,
        seconds=result.seconds,
        device=result.device,
        threads=result.threads,
    )
