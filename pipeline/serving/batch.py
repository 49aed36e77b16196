"""`make predict`: score a CSV or Parquet file with the model, in batches, and write the
predictions, led by the input's id columns."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from pipeline.serving.target import ServingError, input_columns, load, resolve_target

PARQUET = (".parquet", ".pq")


def read_rows(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """The rows to score, read like the pipeline reads a table (encodings, delimiters, binary
    files and repeated column names are handled the same way), text columns kept as text."""
    from pipeline.data.inspection import CATEGORICAL
    from pipeline.data.read import read_frame
    from pipeline.errors import DataError

    text = {name: "object" for name, kind in columns.items() if kind == CATEGORICAL}
    try:
        frame = read_frame(str(path), where=f"input file {str(path)!r}", dtype=text or None)
    except DataError as exc:
        raise ServingError(str(exc)) from None
    if frame.empty:
        raise ServingError(f"input file {str(path)!r} has no rows")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ServingError(f"input file {str(path)!r} lacks the model's input column(s): {shown}")
    for name, kind in columns.items():
        if kind == CATEGORICAL:
            column = frame[name].astype(object)
            frame[name] = column.where(column.notna(), None)
    return frame


def _with_ids(frame: pd.DataFrame, predictions: pd.DataFrame, inputs: list[str]) -> pd.DataFrame:
    """The predictions, led by the input's id columns (those that are not model inputs)."""
    from pipeline.data.inspection import ID_NAME

    ids = [c for c in frame.columns if ID_NAME.search(c) and c not in predictions.columns and c not in inputs]
    return pd.concat([frame[ids].reset_index(drop=True), predictions], axis=1) if ids else predictions


def predict(cfg: DictConfig, input_path: Path, output_path: Path, model_uri: str | None) -> dict[str, Any]:
    """Score a file in batches of serve.batch_size; returns what it did."""
    import mlflow

    from pipeline.serving.packaging import check_input

    target = resolve_target(cfg, model_uri)
    if not input_path.is_file():
        raise ServingError(
            f"input file {str(input_path)!r} does not exist; give --input <csv or parquet file>"
        )
    model = load(target)
    columns = input_columns(model)
    frame = read_rows(input_path, columns)
    try:
        # the whole file at once, so rows are numbered as in the file (and never half-scored)
        inputs = check_input(frame[list(columns)], columns)
    except mlflow.exceptions.MlflowException as exc:
        counted = "counted from 1" if input_path.suffix.lower() in PARQUET else "counted after the header"
        raise ServingError(f"input file {str(input_path)!r}: {exc.message} (rows {counted})") from None
    batch, started, parts = int(cfg.serve.batch_size), time.perf_counter(), []
    for start in range(0, len(inputs), batch):
        parts.append(model.predict(inputs.iloc[start : start + batch]))
    seconds = time.perf_counter() - started
    predictions = pd.DataFrame(pd.concat(parts) if len(parts) > 1 else parts[0]).reset_index(drop=True)
    out = _with_ids(frame, predictions, list(columns))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.suffix.lower() in PARQUET:
        out.to_parquet(output_path, index=False)
    else:
        out.to_csv(output_path, index=False)
    rate = len(out) / seconds if seconds > 0 else float("inf")
    print(
        f"predict: {len(out)} rows scored with {target.description} in {seconds:.2f}s "
        f"({rate:,.0f} rows/second, batches of {batch}) -> {output_path}",
        flush=True,
    )
    return {"rows": len(out), "seconds": seconds, "rows_per_second": rate, "columns": list(out.columns)}
