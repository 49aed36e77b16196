"""Fitted scikit-learn objects (estimators, the preprocessing) saved and loaded with skops: loading
rebuilds only the types this project lists as trusted, never running code from the file (a
pickle, joblib's format, runs whatever its writer put in it). The list lives here, never in a
saved file, so a file cannot vouch for itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

TRUSTED = [
    "pipeline.preprocessing.Preprocessing",
    "pipeline.preprocessing.TableTransformer",
    "pipeline.preprocessing.MedianStandardizer",
    "pipeline.preprocessing.GlobalScaler",
    "pipeline.preprocessing.DateParts",
    "pipeline.codes.CodesEncoder",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]


class UntrustedFile(PipelineError):
    """A saved object that holds types this project does not trust, or is not a skops file."""


def dump(obj: Any, path: Path) -> None:
    import skops.io

    skops.io.dump(obj, path)


def load(path: Path) -> Any:
    import skops.io

    try:
        return skops.io.load(path, trusted=TRUSTED)
    except Exception as exc:  # noqa: BLE001 - untrusted types, or not a skops file at all
        names = getattr(exc, "args", [""])[0]
        raise UntrustedFile(
            f"{path.name} cannot be loaded safely ({type(exc).__name__}: {str(names).splitlines()[0][:200]}); "
            "it was not written by this version of the pipeline: run the stage that writes it again"
        ) from None
