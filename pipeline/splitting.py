"""Train/validation/test splits by strategy: random, stratified, group (no group in two splits)
or time (test is the latest rows)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.errors import DataError

SPLITS = ("train", "val", "test")


def default_strategy(
    strategy: str | None, task: str, group: str | None = None, time: str | None = None
) -> str:
    """The configured strategy, else group or time when that column is given, else stratified
    for classification and random for regression."""
    if strategy:
        return strategy
    if group:
        return "group"
    if time:
        return "time"
    return "random" if task == "regression" else "stratified"


def split_rows(
    frame: pd.DataFrame,
    target: pd.Series,
    strategy: str,
    val_size: float,
    test_size: float,
    seed: int,
    group: str | None = None,
    time: str | None = None,
) -> dict[str, np.ndarray]:
    """Positional row indices of each split."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split  # a second to import

    rows = np.arange(len(frame))
    if strategy in ("random", "stratified"):
        # sorted integer codes stratify exactly as the labels do, without comparing strings
        stratify = pd.factorize(target, sort=True)[0] if strategy == "stratified" else None
        rest, test = train_test_split(rows, test_size=test_size, random_state=seed, stratify=stratify)
        inner = stratify[rest] if stratify is not None else None
        train, val = train_test_split(
            rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=inner
        )
    elif strategy == "group":
        groups = frame[group].astype(str).to_numpy()
        if len(np.unique(groups)) < 3:
            raise DataError(
                f"data.split.group={group!r} has fewer than 3 groups; a group split needs at least 3"
            )
        outer = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        rest, test = next(outer.split(rows, groups=groups))
        inner = GroupShuffleSplit(n_splits=1, test_size=val_size / (1 - test_size), random_state=seed)
        train_pos, val_pos = next(inner.split(rest, groups=groups[rest]))
        train, val = rest[train_pos], rest[val_pos]
    else:
        when = frame[time]
        order_key = when if pd.api.types.is_numeric_dtype(when) else pd.to_datetime(when, errors="coerce")
        if order_key.isna().any():
            raise DataError(
                f"data.split.time={time!r} has missing or unparseable values; "
                "fill them or choose another column"
            )
        order = np.argsort(order_key.to_numpy(), kind="stable")
        keys = order_key.to_numpy()[order]
        n_test = max(1, round(len(rows) * test_size))
        n_val = max(1, round(len(rows) * val_size))
        # cut where the time changes, so rows with the same time never land in two splits
        changes = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        test_at = _cut(changes, len(rows) - n_test, len(rows), time)
        val_at = _cut(changes, test_at - n_val, test_at, time)
        train, val, test = order[:val_at], order[val_at:test_at], order[test_at:]
    splits = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    for name, index in splits.items():
        if len(index) == 0:
            raise DataError(f"the {name} split is empty; add rows or change data.split sizes")
    return splits


def _cut(changes: np.ndarray, wanted: int, below: int, time: str | None) -> int:
    """The position below `below` where the time changes that is nearest to `wanted`."""
    usable = changes[changes < below]
    if len(usable) == 0:
        raise DataError(
            f"data.split.time={time!r} has too few distinct values to split train/val/test by time"
        )
    return int(usable[np.argmin(np.abs(usable - wanted))])


def split_digests(frame: pd.DataFrame, index: dict[str, np.ndarray]) -> dict[str, str]:
    """A digest of each split's rows, so two runs can be shown to have used the same rows. Rows
    are hashed once for the whole frame; a split's digest covers its rows' hashes."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return {name: hashlib.sha256(hashed[rows].tobytes()).hexdigest()[:16] for name, rows in index.items()}
