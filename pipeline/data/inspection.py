"""Inspecting a table before it is split: the task, each column's role and type, the checks that
stop a run (errors) or are counted (warnings), and the one raw-to-model coercion of feature rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.read import Table
from pipeline.errors import DataError
from pipeline.splitting import default_strategy

ID_NAME = re.compile(r"(^id$|_id$|^id_|uuid|guid|^index$|^unnamed: ?0$)", re.IGNORECASE)
NUMERIC, CATEGORICAL, DATE = "numeric", "categorical", "date"
# a date as text: 2024-01-31, 31/01/2024, 2024.01.31, with an optional time of day
DATE_TEXT = re.compile(r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
LEAK_CHECK_ROWS = 20_000


@dataclass
class Inspection:
    """What prepare learned about a table before splitting it."""

    task: str
    task_inferred: bool
    column_types: dict[str, str]  # feature column -> numeric | categorical
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why
    warnings: list[str] = field(default_factory=list)
    rows_dropped_missing_target: int = 0
    split_strategy: str = "random"


def _label(value: Any) -> str:
    """A class value for a message: 'yes' or 3, not np.int64(3)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def infer_task(target: pd.Series) -> str:
    values = target.dropna()
    unique = values.nunique()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "binary" if unique <= 2 else "multiclass"
    if pd.api.types.is_float_dtype(values) and not np.all(np.equal(np.mod(values, 1), 0)):
        return "regression"
    if unique <= 2:
        return "binary"
    return "multiclass" if unique <= 20 and unique <= max(3, 0.05 * len(values)) else "regression"


def _mostly_numbers(series: pd.Series) -> int | None:
    """For a text column whose values are nearly all numbers ('12', '3.5', with a few '?' or
    'unknown'), how many values are not numbers; None for a real text column."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return None
    present = series.dropna()
    if len(present) == 0 or not (
        pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)
    ):
        return None
    sample = present.iloc[:2000]  # most text columns are told apart by their first values
    if pd.to_numeric(sample.astype(str).str.strip(), errors="coerce").isna().mean() > 0.05:
        return None
    parsed = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
    failed = int(parsed.isna().sum())
    if failed < len(present) and failed <= 0.05 * len(present):
        return failed
    return None


def _looks_like_id(column: str, series: pd.Series) -> bool:
    """A name like `id`/`customer_id`, or text/integers unique per row (integers only when they
    run consecutively, like row numbers: a unique integer measurement is still a feature)."""
    if ID_NAME.search(column):
        return True
    if len(series) <= 20 or series.nunique(dropna=False) != len(series):
        return False
    if pd.api.types.is_bool_dtype(series):
        return False
    if not pd.api.types.is_numeric_dtype(series):
        if _mostly_numbers(series) is None:
            return True  # unique text
        series = pd.to_numeric(series, errors="coerce")
    values = series.dropna().to_numpy(dtype="float64")
    if len(values) < len(series) or not np.isfinite(values).all() or np.any(np.mod(values, 1)):
        return False  # measurements, not counters
    return bool(values.max() - values.min() == len(values) - 1)


def _column_type(series: pd.Series, int_max_levels: int) -> str:
    if _mostly_numbers(series) is not None:
        return NUMERIC
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return CATEGORICAL
    if (
        int_max_levels
        and pd.api.types.is_integer_dtype(series)
        and series.nunique(dropna=True) <= int_max_levels
    ):
        return CATEGORICAL
    return NUMERIC


def looks_like_dates(series: pd.Series) -> bool:
    """Dates: a datetime column, or text whose values (nearly all) read as dates."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return False
    sample = series.dropna().astype(str).str.strip().iloc[:2000]
    if len(sample) == 0 or sample.str.match(DATE_TEXT).mean() < 0.95:
        return False
    return bool(to_dates(sample).notna().mean() >= 0.95)


def to_dates(series: pd.Series) -> pd.Series:
    """Dates as naive datetimes (UTC when they carry a zone); NaT for what is not a date."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it guesses a format per value
        parsed = pd.to_datetime(series, errors="coerce", format="mixed", utc=True)
    return parsed.dt.tz_localize(None)


def coerce_features(frame: pd.DataFrame, column_types: dict[str, str]) -> pd.DataFrame:
    """The one raw-to-model coercion used in prepare and at predict time: numeric columns become
    float64, dates datetimes and categorical ones a pandas Categorical of text labels, missing in
    all (the preprocessing imputes). Float64 columns pass through uncopied and categories hold each
    label once, so the coerced frame of a large table costs little beyond the table itself."""
    out = {}
    for column, kind in column_types.items():
        series = frame[column]
        if kind == NUMERIC:
            out[column] = (
                series
                if series.dtype == "float64"
                else pd.to_numeric(series, errors="coerce").astype("float64")
            )
        elif kind == DATE:
            out[column] = series if series.dtype == "datetime64[ns]" else to_dates(series)
        else:
            out[column] = _text_categories(series)
    return pd.DataFrame(out, index=frame.index, copy=False)


def _text_categories(series: pd.Series) -> pd.Series:
    """A column as categories labelled by the text of its values (3 -> '3', True -> 'True');
    missing stays missing (the one-hot encoder gives it a level of its own)."""
    codes, levels = pd.factorize(series, use_na_sentinel=True)
    labels = [str(v) for v in levels]
    if len(set(labels)) < len(labels):  # two values with one text (3 and '3'): merge them by it
        return _text_categories(series.astype(str).where(series.notna()))
    categories = pd.Index(labels, dtype=object)
    return pd.Series(
        pd.Categorical.from_codes(codes, categories=categories), index=series.index, name=series.name
    )


def _predicts_perfectly(feature: pd.Series, target: pd.Series, task: str) -> bool:
    """A leak check: does this one column alone determine the target?"""
    if len(feature) > LEAK_CHECK_ROWS:  # a sample decides as well and keeps large tables fast
        rows = np.random.default_rng(0).choice(len(feature), size=LEAK_CHECK_ROWS, replace=False)
        feature, target = feature.iloc[rows], target.iloc[rows]
    both = pd.DataFrame({"x": feature, "y": target}).dropna()
    if len(both) < 10:
        return False
    numbers = pd.api.types.is_numeric_dtype(both["x"]), pd.api.types.is_numeric_dtype(both["y"])
    if all(numbers):
        if np.array_equal(both["x"].to_numpy(float), both["y"].to_numpy(float)):
            return True
    elif not any(numbers) and both["x"].astype(str).equals(both["y"].astype(str)):
        return True
    levels = both["x"].nunique()
    # each level must cover several rows, or any unique-ish column would "predict" perfectly
    if task != "regression" and levels <= max(50, 0.05 * len(both)) and levels * 5 <= len(both):
        # few levels, each mapped to exactly one class, and more than one class covered
        return bool(both.groupby("x")["y"].nunique().max() == 1 and both["y"].nunique() > 1)
    if pd.api.types.is_numeric_dtype(both["x"]) and pd.api.types.is_numeric_dtype(both["y"]):
        if both["x"].std() > 0 and both["y"].std() > 0:
            return bool(abs(np.corrcoef(both["x"], both["y"])[0, 1]) > 0.99999)
    return False


def inspect(table: Table, data_cfg: Any) -> tuple[pd.DataFrame, Inspection]:
    """Validate the table and decide the task and each column's role.

    Returns the cleaned frame (rows with a missing target removed) and what was found.
    """
    _check_columns(table, data_cfg)
    warnings: list[str] = []
    frame, dropped_rows = _drop_rows_without_target(table, data_cfg, warnings)
    frame, task = _decide_task(frame, table.target, data_cfg)
    split = data_cfg.split
    strategy = default_strategy(split.strategy, task, split.group, split.time)
    if strategy == "stratified" and task == "regression":
        raise DataError(
            "data.split.strategy=stratified needs classes; "
            "a regression target splits with random, group or time"
        )
    reserved = {
        c: f"used for the {kind} split" for c, kind in ((split.group, "group"), (split.time, "time")) if c
    }
    for column in reserved:
        if column not in frame.columns:
            raise DataError(
                f"split column {column!r} is not in the table; its columns are: {', '.join(frame.columns)}"
            )
    dropped: dict[str, str] = {c: "listed in data.drop" for c in data_cfg.drop}
    dropped.update(reserved)
    column_types = _column_roles(frame, table.target, task, data_cfg, dropped, warnings)
    if strategy == "stratified":
        _check_class_sizes(frame[table.target], split)
    inspection = Inspection(
        task=task,
        task_inferred=data_cfg.task is None,
        column_types=column_types,
        dropped=dropped,
        warnings=warnings,
        rows_dropped_missing_target=dropped_rows,
        split_strategy=strategy,
    )
    return frame, inspection


def _check_columns(table: Table, data_cfg: Any) -> None:
    frame = table.frame
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(
            f"the table {table.source!r} is empty; it needs a header and at least {data_cfg.min_rows} rows"
        )
    if table.target not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:30])) + (" ..." if frame.shape[1] > 30 else "")
        raise DataError(f"target column {table.target!r} is not in the table; its columns are: {shown}")
    unknown_drop = [c for c in data_cfg.drop if c not in frame.columns]
    if unknown_drop:
        raise DataError(f"data.drop names columns that do not exist: {unknown_drop}")


def _drop_rows_without_target(table: Table, data_cfg: Any, warnings: list[str]) -> tuple[pd.DataFrame, int]:
    frame = table.frame
    missing_target = frame[table.target].isna()
    if missing_target.all():
        raise DataError(f"target column {table.target!r} has no values; choose another data.target")
    if missing_target.any():
        warnings.append(f"{int(missing_target.sum())} rows have no target value and were dropped")
        frame = frame.loc[~missing_target]
    if len(frame) < data_cfg.min_rows:
        raise DataError(
            f"the table has {len(frame)} usable rows, "
            f"fewer than data.min_rows={data_cfg.min_rows}; "
            "add rows or lower data.min_rows"
        )
    return frame, int(missing_target.sum())


def _decide_task(frame: pd.DataFrame, column: str, data_cfg: Any) -> tuple[pd.DataFrame, str]:
    target = frame[column]
    if pd.api.types.is_numeric_dtype(target) and np.isinf(target.to_numpy(dtype="float64")).any():
        raise DataError(f"target {column!r} holds infinite values; replace them or drop those rows")
    task = data_cfg.task or infer_task(target)
    if task != "regression" and target.nunique() < 2:
        raise DataError(
            f"target {column!r} has a single class ({_label(target.iloc[0])}); "
            "a classifier needs at least two"
        )
    if task == "regression" and not pd.api.types.is_numeric_dtype(target):
        raise DataError(f"data.task=regression needs a numeric target; {column!r} holds text")
    if (
        task != "regression"
        and pd.api.types.is_float_dtype(target)
        and np.all(np.mod(target.to_numpy(), 1) == 0)
    ):
        # integer labels read as floats (a column with gaps): keep the labels as in the file
        frame = frame.assign(**{column: target.astype("int64")})
    return frame, task


def _column_roles(
    frame: pd.DataFrame,
    target_column: str,
    task: str,
    data_cfg: Any,
    dropped: dict[str, str],
    warnings: list[str],
) -> dict[str, str]:
    """Each usable feature column's type; the others land in `dropped` with the reason."""
    target = frame[target_column]
    column_types: dict[str, str] = {}
    for column in frame.columns:
        if column == target_column or column in dropped:
            continue
        series = frame[column]
        if series.notna().any() and looks_like_dates(series):
            column_types[column] = DATE  # year, month, weekday and days since the first date
            continue
        why = _reason_to_drop(column, series)
        if why is not None:
            dropped[column], warning = why
            warnings.append(warning)
            continue
        kind = _feature_type(column, series, data_cfg, warnings)
        if _predicts_perfectly(series, target, task):
            if series.astype(str).equals(target.astype(str)):
                dropped[column] = "equals the target (leak)"
                warnings.append(f"column {column!r} equals the target and was dropped (leak)")
                continue
            warnings.append(f"column {column!r} alone predicts the target perfectly: check it is not a leak")
        column_types[column] = kind
    if not column_types:
        raise DataError("no feature columns are left after dropping identifiers, empty and listed columns")
    return column_types


def _reason_to_drop(column: str, series: pd.Series) -> tuple[str, str] | None:
    """(why, warning) when a column cannot be a feature."""
    if series.isna().all():
        return "all values missing", f"column {column!r} has no values and was dropped"
    if pd.api.types.is_timedelta64_dtype(series):
        return "a duration", f"column {column!r} holds durations and was dropped"
    if _looks_like_id(column, series):
        return "looks like an identifier", f"column {column!r} looks like an identifier and was dropped"
    return None


def _feature_type(column: str, series: pd.Series, data_cfg: Any, warnings: list[str]) -> str:
    kind = _column_type(series, data_cfg.categorical_int_max_levels)
    not_numbers = _mostly_numbers(series)
    if not_numbers:
        warnings.append(
            f"column {column!r} holds numbers and {not_numbers} values that are not; "
            "those were treated as missing"
        )
    if kind == NUMERIC:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
        if np.isinf(values).any():
            raise DataError(
                f"column {column!r} holds infinite values; "
                "replace them with a finite value or leave them empty"
            )
    return kind


def _check_class_sizes(target: pd.Series, split: Any) -> None:
    counts = target.value_counts()
    needed = max(3, int(np.ceil(2 / min(split.val_size, split.test_size))))
    if counts.min() < needed:
        raise DataError(
            f"class {_label(counts.idxmin())} has {int(counts.min())} rows, "
            f"too few to stratify into train/val/test (needs {needed}); "
            "add rows, merge rare classes or set data.split.strategy=random"
        )


def read_and_inspect(data_cfg: Any) -> tuple[Table, tuple[pd.DataFrame, Inspection]]:
    """The data set read and inspected: what every invocation does first."""
    from pipeline.data.read import read_source

    table = read_source(data_cfg)
    return table, inspect(table, data_cfg)
