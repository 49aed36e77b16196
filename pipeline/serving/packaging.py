"""The registered model as an MLflow pyfunc bundling the preprocessing and a fitted model of any
family: raw feature rows in (numbers of any dtype, dates, text as nullable strings, missing values
in all), `prediction` and `proba_<class>` out. The model checks its input itself, so every way of
calling it (REST, `make predict`, `pyfunc.load_model`) refuses the same bad rows with the same
message. The modules it needs travel with the model (code_paths: `bundle.py`), so loading does not
depend on where it runs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, Schema

from pipeline import installed
from pipeline.data.inspection import DATE, NUMERIC
from pipeline.serving.bundle import PACKAGE_DIR, copy_bundle
from pipeline.serving.predictor import MODEL_DIR, PREPROCESSING_FILE, Predictor

REQUIREMENTS = ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "joblib", "skops")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, INVALID_PARAMETER_VALUE)


def _rows(mask: np.ndarray) -> str:
    """Row numbers (1-based, as in the request) of a mask: the first few and how many more."""
    rows = (np.flatnonzero(mask) + 1).tolist()
    shown = ", ".join(map(str, rows[:5]))
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _names(names: list[Any], limit: int = 10) -> str:
    """Column names for a message: the first `limit`, each cut to 40 characters, and how many more
    (a request's names are the client's: the message stays short whatever they send)."""
    cut = [str(n) if len(str(n)) <= 40 else str(n)[:40] + "..." for n in names[:limit]]
    return ", ".join(map(repr, cut)) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _finite_or_inf(value: Any) -> Any:
    """A Python integer beyond the float range (JSON's 1 followed by 400 zeros) as the infinity it
    overflows to, like 1e400 parses to; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return np.inf if value > 0 else -np.inf
    return value


def _numbers(values: pd.Series) -> pd.Series:
    """A numeric column as numbers, NaN where it holds text (or lists, objects)."""
    if pd.api.types.is_numeric_dtype(values):
        return values
    try:
        return pd.to_numeric(values, errors="coerce")
    except OverflowError:  # pandas refuses the whole column over one huge integer
        return pd.to_numeric(values.map(_finite_or_inf), errors="coerce")


def _as_text(value: Any) -> str | None:
    """A categorical value as the text the model's categories hold (3 -> '3', True -> 'True'); a
    whole float is an integer that a missing value in its column made a float (3.0 -> '3')."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _check_numeric(column: str, values: pd.Series) -> pd.Series:
    converted = _numbers(values)
    text = (converted.isna() & values.notna()).to_numpy()
    if text.any():
        raise _bad_input(
            f"column {column!r} must be numeric; rows {_rows(text)} hold text or other non-numbers"
        )
    as_float = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(as_float)
    if infinite.any():
        # never scored: the model would answer made-up labels or NaN probabilities
        raise _bad_input(
            f"column {column!r} holds infinite or out-of-range values in rows {_rows(infinite)}; "
            "send finite numbers or leave them empty"
        )
    return pd.Series(as_float, index=values.index, name=column)


def _check_scalars(column: str, values: pd.Series) -> pd.Series:
    """The column as objects, each one value (JSON can put a list or an object in a cell)."""
    values = values if values.dtype == object else values.astype(object)
    nested = values.map(lambda v: not pd.api.types.is_scalar(v)).to_numpy(dtype=bool)
    if nested.any():
        raise _bad_input(
            f"column {column!r} holds lists or objects in rows {_rows(nested)}; send one value per cell"
        )
    return values


def check_input(frame: pd.DataFrame, column_types: dict[str, str]) -> pd.DataFrame:
    """The rows the model can take (numbers as float64, categories as text), or an error naming
    the columns (and rows) it cannot; the data itself is never echoed."""
    if frame.empty:
        raise _bad_input("the request holds no rows; send at least one row")
    repeated = frame.columns[frame.columns.duplicated()].unique().tolist()
    if repeated:
        raise _bad_input(f"the input repeats column name(s) {_names(repeated)}; send each column once")
    missing = [c for c in column_types if c not in frame.columns]
    if missing:
        raise _bad_input(f"missing input column(s): {_names(missing)}")
    checked = {}
    for column, kind in column_types.items():
        if kind == NUMERIC:
            checked[column] = _check_numeric(column, frame[column])
        elif kind == DATE:
            _check_scalars(column, frame[column])  # dates stay as sent: text or datetimes
        else:
            checked[column] = _check_scalars(column, frame[column]).map(_as_text).astype(object)
    return frame.assign(**checked) if checked else frame


class PipelineModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        files = context.artifacts
        self.predictor = Predictor.from_files(Path(files["preprocessing"]), Path(files["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        frame = check_input(frame, self.predictor.preprocessing.column_types)
        return self.predictor.predict_frame(frame)


def signature(predictor: Predictor) -> ModelSignature:
    # every input is declared Any: MLflow refuses an int64 column for a double one (a table read
    # with pandas has int64 columns wherever a batch has no missing value), a missing value for
    # a long one, and a number in a text column (a code like 3); the model itself checks and
    # converts each column by its kind (check_input)
    inputs = [ColSpec(AnyType(), column) for column, kind in predictor.preprocessing.column_types.items()]
    classes = predictor.preprocessing.classes
    if classes is None:
        outputs = [ColSpec("double", "prediction")]
    else:
        label = "string" if any(isinstance(c, str) for c in classes) else "long"
        outputs = [ColSpec(label, "prediction")] + [ColSpec("double", f"proba_{c}") for c in classes]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _public(version: str) -> str:
    """A version a public index resolves: without a local label (`2.13.0+cpu` -> `2.13.0`)."""
    return version.split("+", 1)[0]


def pip_requirements(kinds: set[str]) -> list[str]:
    """The packages a model of these kinds (its own, or its members') needs where it is served,
    pinned to the versions it was made with; a network also needs torch, whose CPU build comes
    from PyTorch's index."""
    pinned = [f"{name}=={_public(installed.version(name))}" for name in REQUIREMENTS]
    if "network" in kinds:
        torch = f"torch=={_public(installed.version('torch'))}"
        pinned = [f"--extra-index-url {TORCH_CPU_INDEX}", torch, *pinned]
    return pinned


def log_model(predictor: Predictor, input_example: pd.DataFrame) -> tuple[str, str]:
    """Log the pyfunc in the active run; returns its model URI and logged-model id."""
    with tempfile.TemporaryDirectory() as tmp:
        predictor.save(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PACKAGE_DIR / "serving" / "model_code.py"),
            artifacts={
                "preprocessing": str(Path(tmp) / PREPROCESSING_FILE),
                "model": str(Path(tmp) / MODEL_DIR),
            },
            code_paths=[str(copy_bundle(Path(tmp) / "code"))],
            signature=signature(predictor),
            input_example=input_example,
            pip_requirements=pip_requirements(getattr(predictor.model, "kinds", {predictor.model.kind})),
        )
    return info.model_uri, info.model_id
