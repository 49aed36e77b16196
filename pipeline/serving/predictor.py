"""The deployable model: fitted preprocessing plus a fitted model of any family, raw rows in, a
frame with `prediction` (labels as in the input data) and `proba_<class>` per class out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import persistence
from pipeline.preprocessing import Preprocessing

PREPROCESSING_FILE, MODEL_DIR = "preprocessing.skops", "model"


class Predictor:
    def __init__(self, preprocessing: Preprocessing, model: Any):
        self.preprocessing = preprocessing
        self.model = model  # a family's fitted model: predict(features) -> (pred, proba)

    def predict_encoded(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions as class indices (or values) and probabilities, for metric computation."""
        return self.model.predict(self.features(frame))

    def features(self, frame: pd.DataFrame) -> Any:
        """The rows as the model takes them; an ensemble's members each in their own encoding."""
        from pipeline.ensemble import MIXED

        if self.model.encoding == MIXED:
            return {e: self.preprocessing.transform(frame, encoding=e) for e in self.model.encodings}
        return self.preprocessing.transform(frame, encoding=self.model.encoding)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        pred, proba = self.predict_encoded(frame)
        out = pd.DataFrame({"prediction": self.preprocessing.decode(pred)}, index=frame.index)
        if proba is not None:
            for i, label in enumerate(self.preprocessing.classes or []):
                out[f"proba_{label}"] = proba[:, i]
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        persistence.dump(self.preprocessing, directory / PREPROCESSING_FILE)
        self.model.save(directory / MODEL_DIR)

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        return cls.from_files(directory / PREPROCESSING_FILE, directory / MODEL_DIR)

    @classmethod
    def from_files(cls, preprocessing: Path, model: Path) -> Predictor:
        from pipeline.families import load_fitted

        return cls(persistence.load(Path(preprocessing)), load_fitted(Path(model)))
