"""The registered model as an MLflow pyfunc bundling preprocessing and a fitted model of any family: raw feature rows
in (numeric columns as numbers of any dtype, text as nullable strings, missing values in both),
`prediction` and `proba_<class>` out. The package travels with the model (code_paths), so loading
does not depend on where it runs."""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, Schema

from pipeline.data.inspection import NUMERIC
from pipeline.serving.predictor import MODEL_DIR, PREPROCESSING_FILE, Predictor

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the whole `pipeline` package
REQUIREMENTS = ("torch", "scikit-learn", "pandas", "numpy", "mlflow", "scipy", "joblib")


class PipelineModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        files = context.artifacts
        self.predictor = Predictor.from_files(Path(files["preprocessing"]), Path(files["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if frame.empty:
            raise MlflowException("the request holds no rows; send at least one row", INVALID_PARAMETER_VALUE)
        missing = [c for c in self.predictor.preprocessing.columns if c not in frame.columns]
        if missing:
            raise MlflowException(f"missing input column(s): {', '.join(missing)}", INVALID_PARAMETER_VALUE)
        for column, kind in self.predictor.preprocessing.column_types.items():
            if kind == NUMERIC and not pd.api.types.is_numeric_dtype(frame[column]):
                converted = pd.to_numeric(frame[column], errors="coerce")
                if (converted.isna() & frame[column].notna()).any():
                    raise MlflowException(f"column {column!r} must be numeric", INVALID_PARAMETER_VALUE)
        return self.predictor.predict_frame(frame)


def signature(predictor: Predictor) -> ModelSignature:
    # numeric columns are declared Any, not double: MLflow refuses an int64 column for a double
    # one (a table read with pandas has int64 columns wherever a batch has no missing value) and
    # a missing value for a long one; the model itself checks that they are numeric
    inputs = [
        ColSpec(AnyType() if kind == NUMERIC else "string", column)
        for column, kind in predictor.preprocessing.column_types.items()
    ]
    classes = predictor.preprocessing.classes
    if classes is None:
        outputs = [ColSpec("double", "prediction")]
    else:
        label = "string" if any(isinstance(c, str) for c in classes) else "long"
        outputs = [ColSpec(label, "prediction")] + [ColSpec("double", f"proba_{c}") for c in classes]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def log_model(predictor: Predictor, input_example: pd.DataFrame) -> str:
    """Log the pyfunc in the active run; returns its model URI."""
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
            pip_requirements=pip_requirements(),
        )
    return info.model_uri
