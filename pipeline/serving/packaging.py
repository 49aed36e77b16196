"""The registered model as an MLflow pyfunc bundling the preprocessing and a fitted model of any
family: raw feature rows in (numbers of any dtype, dates, text as nullable strings, missing values
in all), `prediction` and `proba_<class>` out. The model checks its input itself, so every way of
calling it (REST, `make predict`, `pyfunc.load_model`) refuses the same bad rows with the same
message. The package travels with the model (code_paths), so loading does not depend on where it
runs."""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, Schema

from pipeline.data.inspection import DATE, NUMERIC
from pipeline.serving.predictor import MODEL_DIR, PREPROCESSING_FILE, Predictor

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the whole `pipeline` package
REQUIREMENTS = ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "joblib", "skops")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, INVALID_PARAMETER_VALUE)


def _rows(mask: np.ndarray) -> str:
    """Row numbers (1-based, as in the request) of a mask: the first few and how many more."""
    rows = (np.flatnonzero(mask) + 1).tolist()
    shown = ", ".join(map(str, rows[:5]))
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def check_input(frame: pd.DataFrame, column_types: dict[str, str]) -> pd.DataFrame:
    """The rows the model can take, or an error naming the columns (and rows) it cannot; the
    data itself is never echoed."""
    if frame.empty:
        raise _bad_input("the request holds no rows; send at least one row")
    missing = [c for c in column_types if c not in frame.columns]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise _bad_input(f"missing input column(s): {', '.join(map(str, missing[:10]))}{more}")
    numbers = {}
    for column, kind in column_types.items():
        if kind != NUMERIC:
            continue
        values = frame[column]
        converted = (
            values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values, errors="coerce")
        )
        text = (converted.isna() & values.notna()).to_numpy()
        if text.any():
            raise _bad_input(f"column {column!r} must be numeric; rows {_rows(text)} hold text")
        as_float = converted.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(as_float).any():
            raise _bad_input(
                f"column {column!r} holds infinite values in rows {_rows(np.isinf(as_float))}; "
                "send finite numbers or leave them empty"
            )
        numbers[column] = converted
    return frame.assign(**numbers) if numbers else frame


class PipelineModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        files = context.artifacts
        self.predictor = Predictor.from_files(Path(files["preprocessing"]), Path(files["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        frame = check_input(frame, self.predictor.preprocessing.column_types)
        return self.predictor.predict_frame(frame)


def signature(predictor: Predictor) -> ModelSignature:
    # numeric and date columns are declared Any, not double: MLflow refuses an int64 column for
    # a double one (a table read with pandas has int64 columns wherever a batch has no missing
    # value) and a missing value for a long one; the model itself checks them (check_input)
    inputs = [
        ColSpec(AnyType() if kind in (NUMERIC, DATE) else "string", column)
        for column, kind in predictor.preprocessing.column_types.items()
    ]
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


def pip_requirements(kind: str) -> list[str]:
    """The packages the model needs where it is served, pinned to the versions it was made with;
    a network also needs torch, whose CPU build comes from PyTorch's index."""
    pinned = [f"{name}=={_public(metadata.version(name))}" for name in REQUIREMENTS]
    if kind == "network":
        pinned = [
            f"--extra-index-url {TORCH_CPU_INDEX}",
            f"torch=={_public(metadata.version('torch'))}",
            *pinned,
        ]
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
            code_paths=[str(PACKAGE_DIR)],
            signature=signature(predictor),
            input_example=input_example,
            pip_requirements=pip_requirements(predictor.model.kind),
        )
    return info.model_uri, info.model_id
