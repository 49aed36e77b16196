"""Reading data sets: scikit-learn's built-in ones, or a CSV/Parquet table from a file."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}
SAMPLE_BYTES = 65536


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _encodings(head: bytes, configured: str | None, where: str) -> list[str]:
    """The encodings to try: the configured one, UTF-16 when a BOM or NUL-spaced text says so,
    else UTF-8 (dropping a BOM), then Windows-1252, then latin-1. NUL bytes in any other pattern mean binary data."""
    if configured:
        return [configured]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return ["utf-16"]
    if b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > 0.9 * len(odd):
            return ["utf-16-le"]
        if even.count(0) > 0.9 * len(even):
            return ["utf-16-be"]
        raise DataError(f"{where} is not a readable table (it holds binary data); give a CSV or Parquet file")
    return ["utf-8-sig", "cp1252", "latin-1"]  # cp1252 before latin-1: Windows quotes read right


def _check_text(sample: str, where: str) -> None:
    """Text decoded from binary data is full of control characters. Only C0 controls count: the
    C1 range (0x80-0x9F) is what a Windows-1252 file's quotes and euro signs read as in latin-1."""
    control = sum(1 for c in sample if (ord(c) < 32 and c not in "\t\r\n") or ord(c) == 0x7F)
    if sample and control > 0.01 * len(sample):
        raise DataError(f"{where} is not a readable table (it holds binary data); give a CSV or Parquet file")


def repeated_names(names: list[str]) -> list[str]:
    """The column names that occur more than once (after stripping spaces), in header order.
    Empty names do not count: trailing commas are common, and pandas names those `Unnamed: 3`."""
    seen: dict[str, int] = {}
    for name in (n.strip() for n in names):
        seen[name] = seen.get(name, 0) + 1
    return [name for name, count in seen.items() if count > 1 and name]


def _check_header(names: list[str], where: str) -> None:
    """Repeated names are an error: pandas would rename the second `x1` to `x1.1` (a CSV) or refuse
    the file with Arrow's words (Parquet), and a model would learn from whichever came first."""
    repeated = repeated_names(names)
    if repeated:
        positions = [[i for i, n in enumerate(names, 1) if n.strip() == name] for name in repeated]
        shown = "; ".join(
            f"{name[:40]!r} (columns {', '.join(map(str, at))})"
            for name, at in zip(repeated[:10], positions, strict=False)
        )
        raise DataError(f"{where} repeats column names: {shown}; give each column its own name")


def _check_no_nul(frame: pd.DataFrame, where: str) -> None:
    """NUL bytes past the sampled head (binary data appended to a table) end up inside text values;
    no table's text holds them, so they are refused rather than read as odd categories."""
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        if series.dropna().astype(str).str.contains("\x00", regex=False).any():
            raise DataError(
                f"{where} is not a readable table (it holds binary data: NUL bytes in column "
                f"{str(column)[:40]!r}); give a CSV or Parquet file"
            )


def _read_csv(
    file: Path, delimiter: str | None, encoding: str | None, where: str, dtype: Any
) -> pd.DataFrame:
    with file.open("rb") as handle:
        head = handle.read(SAMPLE_BYTES)
    encodings = _encodings(head, encoding, where)
    for i, enc in enumerate(encodings):
        try:
            with file.open("r", encoding=enc, newline="") as handle:
                sample = handle.read(SAMPLE_BYTES)
            _check_text(sample, where)
            sep = delimiter or _sniff_delimiter(sample)
            header = next(csv.reader(sample.splitlines()[:1], delimiter=sep), [])
            _check_header(header, where)
            frame = pd.read_csv(file, sep=sep, encoding=enc, low_memory=False, dtype=dtype)
            _check_no_nul(frame, where)
            return frame
        except UnicodeDecodeError:
            if i == len(encodings) - 1:
                raise
    raise AssertionError("unreachable")


def read_frame(
    path: str,
    fmt: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
    where: str | None = None,
    dtype: Any = None,
) -> pd.DataFrame:
    """A CSV or Parquet file as a frame; a missing, empty, binary or unreadable file, an unknown
    format and repeated column names are one-line errors naming `where` (the setting or flag)."""
    where = where or f"data.path={path!r}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{where} does not exist or is not a file; give the path of a CSV or Parquet file")
    suffix = file.suffix.lower()
    fmt = fmt or FORMATS.get(suffix)
    if fmt is None:
        raise DataError(
            f"{where} has an unknown format {suffix or '(no extension)'!r}; "
            "use a .csv or .parquet file, or set data.format=csv|parquet"
        )
    try:
        frame = (
            _read_parquet(file, where)
            if fmt == "parquet"
            else _read_csv(file, delimiter, encoding, where, dtype)
        )
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{where} is empty; the table needs a header and rows") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{where} could not be read as {fmt}: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_table(
    path: str,
    target: str,
    fmt: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
) -> Table:
    """Read a CSV or Parquet file as the table to learn from."""
    frame = read_frame(path, fmt, delimiter, encoding)
    file = Path(path).expanduser()
    return Table(frame, target, str(file), file_digest(file))


def _read_parquet(file: Path, where: str) -> pd.DataFrame:
    """A Parquet file as a frame, costing about the table's own size: self_destruct frees each
    Arrow column once converted, split_blocks keeps numeric columns zero-copy, and the Arrow pool
    hands back the pages that decoding left behind (otherwise held until the process ends)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_header([str(name) for name in pq.read_schema(file).names], where)  # before reading rows
    frame = pd.read_parquet(file, to_pandas_kwargs={"self_destruct": True, "split_blocks": True})
    pa.default_memory_pool().release_unused()
    return frame


def read_source(data_cfg: Any) -> Table:
    """The data set a config's data section names: a built-in set or a table file."""
    if data_cfg.name == "table":
        return read_table(
            data_cfg.path, data_cfg.target, data_cfg.format, data_cfg.delimiter, data_cfg.encoding
        )
    return load_builtin(data_cfg.name)
