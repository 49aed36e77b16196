"""A trained network: its weights (those of the best validation epoch), how to rebuild it, its
learning curve, and where its settings came from. `fit` returns it, the train stage saves it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from pipeline.ensemble import load_predictions, save_predictions
from pipeline.models import NetworkSpec, build_network


@dataclass
class TrainedModel:
    network: nn.Module
    spec: NetworkSpec
    target_scaling: tuple[float, float] | None
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float  # the validation objective at the best epoch
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    threads: int = 1
    params_source: str = "config"  # "tune" or "config"
    applied_values: dict[str, Any] = field(default_factory=dict)  # tuned values, by config path
    family: str = "network"
    overridden: dict[str, Any] = field(default_factory=dict)  # tuned values the command line replaced
    refit: bool = False  # fitted again on train and val for the best epoch (or step) count
    fit_rows: int = 0  # the rows the final weights were fitted on (train, or train and val after a refit)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)  # PNGs the record drew; never saved
    # the first fit's predictions on the validation split (what chooses without out-of-fold ones)
    val_predictions: tuple[Any, Any] | None = field(default=None, repr=False)
    # out-of-fold predictions on the train and val rows (train.cv_folds), when made
    oof_predictions: tuple[Any, Any] | None = field(default=None, repr=False)

    def fitted(self) -> Any:
        """The network as a model that predicts from prepared features."""
        from pipeline.families.network import NetworkModel

        return NetworkModel(self.network, self.spec, self.target_scaling)

    def predictor(self, prepared: Any) -> Any:
        from pipeline.serving.predictor import Predictor

        return Predictor(prepared.preprocessing, self.fitted())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        torch.save(state, directory / "weights.pt")
        pd.DataFrame(self.history).rename_axis("epoch").to_csv(directory / "history.csv")
        meta = {
            "spec": self.spec.to_dict(),
            "target_scaling": self.target_scaling,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "stopped_early": self.stopped_early,
            "params_source": self.params_source,
            "applied_values": self.applied_values,
            "family": self.family,
            "overridden": self.overridden,
            "seconds": self.seconds,
            "device": self.device,
            "threads": self.threads,
            "refit": self.refit,
            "fit_rows": self.fit_rows,
        }
        (directory / "trained.json").write_text(json.dumps(meta, indent=2))
        save_predictions(self, directory)

    @classmethod
    def load(cls, directory: Path) -> TrainedModel:
        meta = json.loads((directory / "trained.json").read_text())
        spec = NetworkSpec(**meta.pop("spec"))
        network = build_network(spec)
        # weights_only: a state_dict is plain tensors; never unpickle arbitrary objects here
        network.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
        scaling = meta.pop("target_scaling")
        if "best_val_score" in meta:  # saved before the rename
            meta["best_score"] = meta.pop("best_val_score")
        meta.pop("family", None)
        history = pd.read_csv(directory / "history.csv", index_col="epoch").to_dict("records")
        return cls(
            network=network.eval(),
            spec=spec,
            target_scaling=tuple(scaling) if scaling else None,
            history=history,
            **load_predictions(directory),
            **meta,
        )
