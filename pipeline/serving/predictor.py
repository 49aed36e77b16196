"""The deployable model: fitted preprocessing plus trained network, raw rows in, a frame with
`prediction` (labels as in the input data) and `proba_<class>` per class out."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.models import NetworkSpec, build_network
from pipeline.preprocessing import Preprocessing
from pipeline.training.tensors import predict

PREPROCESSING_FILE, WEIGHTS_FILE, SPEC_FILE = "preprocessing.joblib", "weights.pt", "network.json"


class Predictor:
    def __init__(
        self,
        preprocessing: Preprocessing,
        network: nn.Module,
        spec: NetworkSpec,
        target_scaling: tuple[float, float] | None,
    ):
        self.preprocessing = preprocessing
        self.network = network.cpu().eval()
        self.spec = spec
        self.target_scaling = target_scaling

    def predict_encoded(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions as class indices (or values) and probabilities, for metric computation."""
        return predict(self.network, self.preprocessing.transform(frame), self.spec.task, self.target_scaling)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        pred, proba = self.predict_encoded(frame)
        out = pd.DataFrame({"prediction": self.preprocessing.decode(pred)}, index=frame.index)
        if proba is not None:
            for i, label in enumerate(self.preprocessing.classes or []):
                out[f"proba_{label}"] = proba[:, i]
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.preprocessing, directory / PREPROCESSING_FILE)
        torch.save(self.network.state_dict(), directory / WEIGHTS_FILE)
        (directory / SPEC_FILE).write_text(
            json.dumps({"spec": self.spec.to_dict(), "target_scaling": self.target_scaling}, indent=2)
        )

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        return cls.from_files(directory / PREPROCESSING_FILE, directory / WEIGHTS_FILE, directory / SPEC_FILE)

    @classmethod
    def from_files(cls, preprocessing: Path, weights: Path, spec: Path) -> Predictor:
        described = json.loads(Path(spec).read_text())
        network_spec = NetworkSpec(**described["spec"])
        network = build_network(network_spec)
        # weights_only: a state_dict is plain tensors; never unpickle arbitrary objects here
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        scaling = described.get("target_scaling")
        return cls(joblib.load(preprocessing), network, network_spec, tuple(scaling) if scaling else None)
