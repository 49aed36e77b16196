"""Saving and loading fitted scikit-learn objects (estimators, the preprocessing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib


def dump(obj: Any, path: Path) -> None:
    joblib.dump(obj, path)


def load(path: Path) -> Any:
    return joblib.load(path)
