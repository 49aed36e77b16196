"""Reading data sets (scikit-learn's built-in ones or a CSV/Parquet table), inferring column types
and the task, checking the table (errors stop the run, warnings are counted), and the data card."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.splitting import default_strategy

IMAGE_SHAPES = {"digits": (1, 8, 8)}
ID_NAME = re.compile(r"(^id$|_id$|^id_|uuid|guid|^index$|^unnamed: ?0$)", re.IGNORECASE)
NUMERIC, CATEGORICAL = "numeric", "categorical"
LEAK_CHECK_ROWS = 20_000


@dataclass
class Table:
    """A data set as read: the raw frame, which column is the target, and where it came from."""

    frame: pd.DataFrame
    target: str
    source: str  # a path or a built-in name
    source_digest: str
    image_shape: tuple[int, ...] | None = None


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


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frame_digest(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()


def load_builtin(name: str) -> Table:
    from sklearn import datasets

    loader = {
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
    }[name]
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return Table(frame, "target", name, frame_digest(frame), IMAGE_SHAPES.get(name))


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_table(
    path: str,
    target: str,
    fmt: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
) -> Table:
    """Read a CSV or Parquet file; unknown formats and unreadable files are errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"data.path={path!r} does not exist or is not a file; give the path of a CSV or Parquet file"
        )
    suffix = file.suffix.lower()
    fmt = fmt or {
        ".csv": "csv",
        ".tsv": "csv",
        ".txt": "csv",
        ".parquet": "parquet",
        ".pq": "parquet",
    }.get(suffix)
    if fmt is None:
        raise DataError(
            f"data.path={path!r} has an unknown format {suffix or '(no extension)'!r}; "
            "use a .csv or "
            ".parquet file, or set data.format=csv|parquet"
        )
    try:
        if fmt == "parquet":
            frame = _read_parquet(file)
        else:
            encodings = [encoding] if encoding else ["utf-8-sig", "latin-1"]  # -sig: drop a BOM
            for i, enc in enumerate(encodings):
                try:
                    with file.open("r", encoding=enc, newline="") as handle:
                        sep = delimiter or _sniff_delimiter(handle.read(65536))
                    frame = pd.read_csv(file, sep=sep, encoding=enc, low_memory=False)
                    break
                except UnicodeDecodeError:
                    if i == len(encodings) - 1:
                        raise
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"data.path={path!r} is empty; the table needs a header and rows") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"data.path={path!r} could not be read as {fmt}: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return Table(frame, target, str(file), file_digest(file))


def _read_parquet(file: Path) -> pd.DataFrame:
    """A Parquet file as a frame, costing about the table's own size: self_destruct frees each
    Arrow column once converted, split_blocks keeps numeric columns zero-copy, and the Arrow pool
    hands back the pages that decoding left behind (otherwise held until the process ends)."""
    import pyarrow as pa

    frame = pd.read_parquet(file, to_pandas_kwargs={"self_destruct": True, "split_blocks": True})
    pa.default_memory_pool().release_unused()
    return frame


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


def coerce_features(frame: pd.DataFrame, column_types: dict[str, str]) -> pd.DataFrame:
    """The one raw-to-model coercion used in prepare and at predict time: numeric columns become
    float64 and categorical ones a pandas Categorical of text labels, NaN for missing in both
    (the preprocessing imputes). Float64 columns pass through uncopied and categories hold each
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

    warnings: list[str] = []
    missing_target = frame[table.target].isna()
    if missing_target.any():
        count = int(missing_target.sum())
        warnings.append(f"{count} rows have no target value and were dropped")
        frame = frame.loc[~missing_target]
    if len(frame) < data_cfg.min_rows:
        raise DataError(
            f"the table has {len(frame)} usable rows, "
            f"fewer than data.min_rows={data_cfg.min_rows}; "
            "add rows or lower data.min_rows"
        )
    target = frame[table.target]
    if pd.api.types.is_numeric_dtype(target) and np.isinf(target.to_numpy(dtype="float64")).any():
        raise DataError(f"target {table.target!r} holds infinite values; replace them or drop those rows")
    task = data_cfg.task or infer_task(target)
    if task != "regression" and target.nunique() < 2:
        raise DataError(
            f"target {table.target!r} has a single class ({_label(target.iloc[0])}); "
            "a classifier needs at least two"
        )
    if task == "regression" and not pd.api.types.is_numeric_dtype(target):
        raise DataError(f"data.task=regression needs a numeric target; {table.target!r} holds text")
    if (
        task != "regression"
        and pd.api.types.is_float_dtype(target)
        and np.all(np.mod(target.to_numpy(), 1) == 0)
    ):
        # integer labels read as floats (a column with gaps): keep the labels as in the file
        frame = frame.assign(**{table.target: target.astype("int64")})
        target = frame[table.target]

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
    column_types: dict[str, str] = {}
    for column in frame.columns:
        if column == table.target or column in dropped:
            continue
        series = frame[column]
        if series.isna().all():
            dropped[column] = "all values missing"
            warnings.append(f"column {column!r} has no values and was dropped")
            continue
        if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
            dropped[column] = "a date/time (data.split.time can split on it)"
            warnings.append(f"column {column!r} holds dates/times and was dropped")
            continue
        if _looks_like_id(column, series):
            dropped[column] = "looks like an identifier"
            warnings.append(f"column {column!r} looks like an identifier and was dropped")
            continue
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
        if _predicts_perfectly(series, target, task):
            if series.astype(str).equals(target.astype(str)):
                dropped[column] = "equals the target (leak)"
                warnings.append(f"column {column!r} equals the target and was dropped (leak)")
                continue
            warnings.append(f"column {column!r} alone predicts the target perfectly: check it is not a leak")
        column_types[column] = kind
    if not column_types:
        raise DataError("no feature columns are left after dropping identifiers, empty and listed columns")

    if task != "regression":
        counts = target.value_counts()
        needed = max(3, int(np.ceil(2 / min(split.val_size, split.test_size))))
        if strategy == "stratified" and counts.min() < needed:
            raise DataError(
                f"class {_label(counts.idxmin())} has {int(counts.min())} rows, "
                f"too few to stratify into train/val/test (needs {needed}); "
                "add rows, merge rare classes or set data.split.strategy=random"
            )
    inspection = Inspection(
        task=task,
        task_inferred=data_cfg.task is None,
        column_types=column_types,
        dropped=dropped,
        warnings=warnings,
        rows_dropped_missing_target=int(missing_target.sum()),
        split_strategy=strategy,
    )
    return frame, inspection


def data_card(
    table: Table, frame: pd.DataFrame, inspection: Inspection, split_sizes: dict[str, int]
) -> dict[str, Any]:
    """What a person wants to know about the data before trusting a model trained on it."""
    target = frame[table.target]
    card: dict[str, Any] = {
        "source": table.source,
        "source_digest": table.source_digest,
        "rows": int(len(table.frame)),
        "rows_used": int(len(frame)),
        "columns": int(table.frame.shape[1]),
        "target": table.target,
        "task": inspection.task,
        "task_inferred": inspection.task_inferred,
        "features": {
            c: {"type": t, "missing_share": round(float(frame[c].isna().mean()), 4)}
            for c, t in inspection.column_types.items()
        },
        "dropped_columns": inspection.dropped,
        "rows_dropped_missing_target": inspection.rows_dropped_missing_target,
        "warnings": inspection.warnings,
        "warning_count": len(inspection.warnings),
        "split_sizes": split_sizes,
    }
    if inspection.task != "regression":
        balance = target.value_counts(normalize=True).sort_index()
        card["class_balance"] = {str(k): round(float(v), 4) for k, v in balance.items()}
    else:
        card["target_summary"] = {k: float(v) for k, v in target.describe().items()}
    return card


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Data card: {Path(card['source']).name}",
        "",
        f"- rows: {card['rows']} ({card['rows_used']} used), columns: {card['columns']}",
        f"- target: `{card['target']}`, task: {card['task']}"
        + (" (inferred)" if card["task_inferred"] else ""),
        f"- splits: {card['split_sizes']}",
        f"- warnings: {card['warning_count']}",
        "",
        "| feature | type | missing |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {f['type']} | {f['missing_share']:.1%} |" for c, f in card["features"].items()]
    if card["dropped_columns"]:
        lines += ["", "| dropped column | why |", "|---|---|"]
        lines += [f"| {c} | {why} |" for c, why in card["dropped_columns"].items()]
    if "class_balance" in card:
        lines += ["", "| class | share |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in card["class_balance"].items()]
    if card["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in card["warnings"]]
    return "\n".join(lines) + "\n"


def config_digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
