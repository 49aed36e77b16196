"""The network family: the architecture the `model` group selects, trained by
`pipeline.training.loop.fit` with the `train` group's loop settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.families import Family
from pipeline.metrics import Objective
from pipeline.models import NetworkSpec, build_network, encoding_of
from pipeline.training.result import TrainedModel
from pipeline.training.tensors import TrainingData, predict

NAME = "network"
WEIGHTS_FILE, SPEC_FILE = "weights.pt", "network.json"


class NetworkModel:
    """A trained network over the prepared features, predictions in the data's units."""

    kind = "network"

    def __init__(self, network: nn.Module, spec: NetworkSpec, target_scaling: tuple[float, float] | None):
        self.network, self.spec, self.target_scaling = network.cpu().eval(), spec, target_scaling
        self.encoding = spec.encoding

    def predict(self, features: Any) -> tuple[np.ndarray, np.ndarray | None]:
        return predict(self.network, features, self.spec.task, self.target_scaling)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), directory / WEIGHTS_FILE)
        described = {"kind": self.kind, "spec": self.spec.to_dict(), "target_scaling": self.target_scaling}
        (directory / SPEC_FILE).write_text(json.dumps(described, indent=2))

    @classmethod
    def load(cls, directory: Path) -> NetworkModel:
        described = json.loads((directory / SPEC_FILE).read_text())
        spec = NetworkSpec(**described["spec"])
        network = build_network(spec)
        # weights_only: a state_dict is plain tensors; never unpickle arbitrary objects here
        network.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        scaling = described.get("target_scaling")
        return cls(network, spec, tuple(scaling) if scaling else None)


def fit(
    settings: Any,
    data: TrainingData,
    objective: Objective,
    *,
    epochs: int | None = None,
    on_step: Any = None,
    progress: bool = False,
    stop_after: int | None = None,
) -> TrainedModel:
    from pipeline.training.loop import fit as fit_network

    return fit_network(
        settings.train,
        settings.model,
        data,
        objective,
        int(settings.seed),
        epochs=epochs,
        on_epoch=on_step,
        progress=progress,
        stop_after=stop_after,
    )


FAMILY = Family(
    name=NAME,
    fit=fit,
    output=TrainedModel,
    title=lambda task: "the network",
    steps=lambda cfg: int(cfg.tune.epochs),
    label=lambda cfg: str(cfg.model.name),
    encoding=lambda cfg: encoding_of(str(cfg.model.name)),
)
