"""Preprocessing fitted on the training split only: a ColumnTransformer for tables (median impute +
standardize numbers; impute + one-hot categories with rare levels grouped and unknown ones ignored)
and one global scale for images, so a shifted pixel keeps the same background value."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipeline.data import CATEGORICAL, NUMERIC


class GlobalScaler(TransformerMixin, BaseEstimator):
    """Standardize every value with one mean and one standard deviation (for images)."""

    def fit(self, X: pd.DataFrame, y: object = None) -> GlobalScaler:
        values = np.asarray(X, dtype="float64")
        self.mean_ = float(np.nanmean(values))
        self.scale_ = float(np.nanstd(values)) or 1.0
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        values = (np.asarray(X, dtype="float64") - self.mean_) / self.scale_
        return np.nan_to_num(values, nan=0.0)


def build_preprocessor(
    column_types: dict[str, str], image: bool, rare_level_min_count: int
) -> TransformerMixin:
    if image:
        return GlobalScaler()
    numeric = [c for c, t in column_types.items() if t == NUMERIC]
    categorical = [c for c, t in column_types.items() if t == CATEGORICAL]
    parts = []
    if numeric:
        parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric))
    if categorical:
        parts.append(
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="(missing)"),
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist",
                        min_frequency=rare_level_min_count,
                        sparse_output=True,
                        dtype=np.float32,
                    ),
                ),
                categorical,
            )
        )
    return ColumnTransformer(parts, sparse_threshold=0.3, verbose_feature_names_out=False)


def to_model_input(
    transformed: np.ndarray | sparse.spmatrix, sparse_above: int
) -> np.ndarray | sparse.csr_matrix:
    """float32 features; kept sparse only when the one-hot output is wide."""
    if sparse.issparse(transformed):
        if transformed.shape[1] > sparse_above:
            return sparse.csr_matrix(transformed, dtype=np.float32)
        return transformed.toarray().astype(np.float32, copy=False)
    return np.asarray(transformed, dtype=np.float32)


class Preprocessing:
    """The fitted preprocessing of one prepared data set: raw rows in, model features out, and the
    class labels to decode predictions with. It travels inside the registered model."""

    def __init__(
        self,
        transformer: TransformerMixin,
        column_types: dict[str, str],
        classes: list | None,
        sparse_above: int,
        image_shape: tuple[int, ...] | None,
    ):
        self.transformer = transformer
        self.column_types = column_types
        self.classes = classes
        self.sparse_above = sparse_above
        self.image_shape = image_shape

    @property
    def columns(self) -> list[str]:
        return list(self.column_types)

    def transform(self, frame: pd.DataFrame) -> np.ndarray | sparse.csr_matrix:
        from pipeline.data import coerce_features

        return to_model_input(
            self.transformer.transform(coerce_features(frame, self.column_types)), self.sparse_above
        )

    def encode_target(self, values: pd.Series) -> np.ndarray:
        if self.classes is None:
            return pd.to_numeric(values).to_numpy(dtype=np.float64)
        lookup = {label: i for i, label in enumerate(self.classes)}
        return values.map(lookup).to_numpy(dtype=np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.classes is None:
            return codes
        return np.asarray(self.classes, dtype=object)[codes]
