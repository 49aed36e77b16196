"""Reading data sets: scikit-learn's built-in ones, or a CSV/Parquet table from a file."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config.choices import BUILTIN_DATASETS
from pipeline.digests import file_digest
from pipeline.errors import DataError

IMAGE_SHAPES = {"digits": (1, 8, 8)}


@dataclass
class Table:
    """A data set as read: the raw frame, which column is the target, and where it came from."""

    frame: pd.DataFrame
    target: str
    source: str  # a path or a built-in name
    source_digest: str
    image_shape: tuple[int, ...] | None = None


def frame_digest(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()


def load_builtin(name: str) -> Table:
    bunch = BUILTIN_DATASETS[name]()
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
