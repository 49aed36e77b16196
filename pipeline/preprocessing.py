"""Preprocessing fitted on the training split only: a ColumnTransformer for tables (median impute +
standardize numbers; impute + one-hot categories with rare levels grouped and unknown ones ignored)
and one global scale for images, so a shifted pixel keeps the same background value."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder

from pipeline.data.inspection import CATEGORICAL, DATE, NUMERIC, coerce_features

TRANSFORM_CHUNK_ROWS = 65_536


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


class TableTransformer(ColumnTransformer):
    """A ColumnTransformer whose `fit` does not build the stacked output. ColumnTransformer.fit
    runs fit_transform and throws its result away; on a large table that stacked matrix (a COO
    copy of every value) is the biggest allocation of the whole prepare stage."""

    def fit(self, X: pd.DataFrame, y: object = None, **params: object) -> TableTransformer:
        self._fitting = True
        try:
            self.fit_transform(X, y, **params)
        finally:
            self._fitting = False
        return_freed_memory()
        return self

    def _hstack(self, Xs: list, *, n_samples: int) -> object:  # the documented subclass hook
        if getattr(self, "_fitting", False):
            return None
        return super()._hstack(Xs, n_samples=n_samples)


class MedianStandardizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Median imputation, then standardization: the numbers SimpleImputer(strategy="median") and
    StandardScaler give, computed a column at a time into a float32 result, because their
    whole-matrix float64 copies (four or so of the training split) dominate prepare's memory on
    large tables. A column with no value in the training split becomes zeros."""

    def fit(self, X: pd.DataFrame | np.ndarray, y: object = None) -> MedianStandardizer:
        self.n_features_in_ = X.shape[1]
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        medians, means, scales = [], [], []
        for values in _columns(X):
            median = float(np.nanmedian(values)) if not np.isnan(values).all() else 0.0
            filled = np.where(np.isnan(values), median, values)
            medians.append(median)
            means.append(float(filled.mean()) if len(filled) else 0.0)
            scales.append(float(filled.std()) if len(filled) else 0.0)
        self.median_ = np.asarray(medians)
        self.mean_ = np.asarray(means)
        self.scale_ = np.where(np.asarray(scales) > 0, scales, 1.0)  # a constant column stays 0
        return self

    def transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        out = np.empty(X.shape, dtype=np.float32)
        for j, values in enumerate(_columns(X)):
            out[:, j] = (np.where(np.isnan(values), self.median_[j], values) - self.mean_[j]) / self.scale_[j]
        return out


class DateParts(TransformerMixin, BaseEstimator):
    """Plain features of each date column: year, month, day of the week and days since the
    earliest date of the training split (missing dates stay missing, to be imputed)."""

    PARTS = ("year", "month", "day_of_week", "days")

    def fit(self, X: pd.DataFrame, y: object = None) -> DateParts:
        self.columns_ = list(X.columns)
        earliest = [X[c].min() for c in self.columns_]
        # as text: a saved model holds plain values only (pipeline.persistence)
        self.earliest_ = [None if pd.isna(e) else pd.Timestamp(e).isoformat() for e in earliest]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        parts = []
        for column, earliest in zip(self.columns_, self.earliest_, strict=True):
            dates = pd.to_datetime(X[column])
            days = (dates - pd.Timestamp(earliest)).dt.days if earliest is not None else dates.dt.day * np.nan
            parts += [dates.dt.year, dates.dt.month, dates.dt.dayofweek, days]
        return np.column_stack([np.asarray(p, dtype=np.float64) for p in parts])

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray([f"{c}_{part}" for c in self.columns_ for part in self.PARTS], dtype=object)


def _columns(X: pd.DataFrame | np.ndarray) -> Iterator[np.ndarray]:
    for j in range(X.shape[1]):
        column = X.iloc[:, j] if hasattr(X, "iloc") else X[:, j]
        yield np.asarray(column, dtype=np.float64)


def build_preprocessor(
    column_types: dict[str, str], image: bool, rare_level_min_count: int
) -> TransformerMixin:
    if image:
        return GlobalScaler()
    numeric = [c for c, t in column_types.items() if t == NUMERIC]
    categorical = [c for c, t in column_types.items() if t == CATEGORICAL]
    dates = [c for c, t in column_types.items() if t == DATE]
    parts = []
    if numeric:
        parts.append(("numeric", MedianStandardizer(), numeric))
    if dates:
        from sklearn.pipeline import make_pipeline

        parts.append(("dates", make_pipeline(DateParts(), MedianStandardizer()), dates))
    if categorical:
        parts.append(
            (
                "categorical",
                # a missing value is imputed as a level of its own (the encoder's NaN category)
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist",
                    min_frequency=rare_level_min_count,
                    sparse_output=True,
                    dtype=np.float32,
                ),
                categorical,
            )
        )
    return TableTransformer(parts, sparse_threshold=0.3, verbose_feature_names_out=False)


def to_model_input(
    transformed: np.ndarray | sparse.spmatrix, sparse_above: int
) -> np.ndarray | sparse.csr_matrix:
    """float32 features; kept sparse only when the one-hot output is wide."""
    if sparse.issparse(transformed):
        if transformed.shape[1] > sparse_above:
            return sparse.csr_matrix(transformed, dtype=np.float32)
        return transformed.toarray().astype(np.float32, copy=False)
    return np.asarray(transformed, dtype=np.float32)


def return_freed_memory() -> None:
    """Hand freed heap pages back to the operating system. glibc keeps the pages of freed
    temporaries for reuse, and after a large fit or a chunked transform those amount to a quarter
    of the prepare stage's peak; elsewhere this does nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def stack_rows(parts: list) -> np.ndarray | sparse.csr_matrix:
    """Stack row blocks, freeing each block once copied, so the peak is about one result's size
    rather than two (np.empty touches its pages only as they are written)."""
    if len(parts) == 1:
        return parts.pop()
    n_rows, n_cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
    if not sparse.issparse(parts[0]):
        dense = np.empty((n_rows, n_cols), dtype=np.float32)
        at = 0
        while parts:
            part = parts.pop(0)
            dense[at : at + part.shape[0]] = part
            at += part.shape[0]
        return dense
    nnz = sum(p.nnz for p in parts)
    index_dtype = np.int32 if max(nnz, n_cols) < 2**31 else np.int64
    data, indices = np.empty(nnz, dtype=np.float32), np.empty(nnz, dtype=index_dtype)
    indptr = np.empty(n_rows + 1, dtype=index_dtype)
    indptr[0], row, at = 0, 0, 0
    while parts:
        part = parts.pop(0)
        data[at : at + part.nnz] = part.data
        indices[at : at + part.nnz] = part.indices
        indptr[row + 1 : row + 1 + part.shape[0]] = part.indptr[1:] + at
        row, at = row + part.shape[0], at + part.nnz
    return sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


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
        codes: Any = None,
    ):
        self.transformer = transformer
        self.column_types = column_types
        self.classes = classes
        self.sparse_above = sparse_above
        self.image_shape = image_shape
        self.codes = codes  # pipeline.codes.CodesEncoder of a table, for networks that embed

    @property
    def layout(self) -> tuple[int, list[int]] | None:
        """(numbers, cardinalities) of the coded features, when there are any."""
        return None if self.codes is None else (self.codes.n_numeric, self.codes.cardinalities)

    @property
    def columns(self) -> list[str]:
        return list(self.column_types)

    def transform(
        self, frame: pd.DataFrame, rows: np.ndarray | None = None, encoding: str = "onehot"
    ) -> np.ndarray | sparse.csr_matrix:
        """Model features of `frame` (or of its `rows`, by position), computed a chunk of rows at a
        time so the transformers' float64 intermediates stay small whatever the table's size.
        `encoding`: "onehot" (standardized numbers, one-hot categories) or "codes"."""
        n_rows = len(frame) if rows is None else len(rows)
        encoder = self.codes if encoding == "codes" else self.transformer
        parts = []
        for start in range(0, max(n_rows, 1), TRANSFORM_CHUNK_ROWS):
            stop = start + TRANSFORM_CHUNK_ROWS
            chunk = frame.iloc[start:stop] if rows is None else frame.iloc[rows[start:stop]]
            transformed = encoder.transform(coerce_features(chunk, self.column_types))
            parts.append(to_model_input(transformed, self.sparse_above))
            del transformed
            return_freed_memory()
        return stack_rows(parts)

    def encode_target(self, values: pd.Series) -> np.ndarray:
        if self.classes is None:
            return pd.to_numeric(values).to_numpy(dtype=np.float64)
        lookup = {label: i for i, label in enumerate(self.classes)}
        return values.map(lookup).to_numpy(dtype=np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.classes is None:
            return codes
        return np.asarray(self.classes, dtype=object)[codes]
