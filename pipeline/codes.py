"""Features for a network that embeds its inputs (model=tabular): numbers scaled robustly (median
and inter-quartile range, then smoothly clipped, as RealMLP does, so an outlier cannot dominate),
dates as their numeric parts, and categories as integer codes (0 for missing, rare or unseen).
Fitted on the training split only; it travels inside the registered model."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from pipeline.data.inspection import CATEGORICAL, DATE, NUMERIC

CLIP = 3.0  # values this many scales from the median start to be squeezed


def smooth_clip(values: np.ndarray) -> np.ndarray:
    """x / sqrt(1 + (x / 3)^2): unchanged near 0, never beyond 3 in size."""
    return values / np.sqrt(1.0 + (values / CLIP) ** 2)


class CodesEncoder(TransformerMixin, BaseEstimator):
    """[robust-scaled numbers and date parts..., category codes...] as one float32 matrix; the
    network splits it at `n_numeric` and embeds the codes."""

    def __init__(self, column_types: dict[str, str] | None = None, min_count: int = 10):
        self.column_types = column_types
        self.min_count = min_count

    def fit(self, X: pd.DataFrame, y: object = None) -> CodesEncoder:
        from pipeline.preprocessing import DateParts

        types = self.column_types or {}
        self.numeric_ = [c for c, t in types.items() if t == NUMERIC]
        self.categorical_ = [c for c, t in types.items() if t == CATEGORICAL]
        dates = [c for c, t in types.items() if t == DATE]
        self.dates_ = DateParts().fit(X[dates]) if dates else None
        numbers = self._numbers(X)
        self.median_ = np.nanmedian(numbers, axis=0) if numbers.shape[1] else np.zeros(0)
        self.median_ = np.nan_to_num(self.median_)
        q75, q25 = (
            np.nanpercentile(numbers, q, axis=0) if numbers.shape[1] else np.zeros(0) for q in (75, 25)
        )
        scale = np.nan_to_num((q75 - q25) / 1.349)  # the inter-quartile range of a normal is 1.349 sigma
        spread = np.nan_to_num(np.nanstd(numbers, axis=0)) if numbers.shape[1] else np.zeros(0)
        self.scale_ = np.where(scale > 0, scale, np.where(spread > 0, spread, 1.0))
        self.levels_ = []
        for column in self.categorical_:
            counts = X[column].astype(object).dropna().astype(str).value_counts()
            self.levels_.append([str(v) for v in counts.index[counts >= self.min_count]])
        return self

    def _numbers(self, X: pd.DataFrame) -> np.ndarray:
        parts = [X[self.numeric_].to_numpy(dtype=np.float64, na_value=np.nan)] if self.numeric_ else []
        if self.dates_ is not None:
            parts.append(self.dates_.transform(X[self.dates_.columns_]))
        return np.hstack(parts) if parts else np.zeros((len(X), 0))

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        numbers = self._numbers(X)
        numbers = np.where(np.isnan(numbers), self.median_, numbers)
        scaled = smooth_clip((numbers - self.median_) / self.scale_)
        codes = [
            X[column]
            .astype(object)
            .map({v: i + 1 for i, v in enumerate(levels)})
            .fillna(0)
            .to_numpy(np.float64)
            for column, levels in zip(self.categorical_, self.levels_, strict=True)
        ]
        return np.column_stack([scaled, *codes]).astype(np.float32) if codes else scaled.astype(np.float32)

    @property
    def n_numeric(self) -> int:
        return len(self.numeric_) + (4 * len(self.dates_.columns_) if self.dates_ is not None else 0)

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, 0 (missing, rare, unseen) included."""
        return [len(levels) + 1 for levels in self.levels_]
