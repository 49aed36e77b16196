"""Your own table (data=table), without training: reading CSV/Parquet, inferring the task and the
column roles, every data error (one clear message, no run left RUNNING, nothing registered), every
warning (in the data card and counted), splits without leakage, and preprocessing fitted on the
training rows only. The end-to-end runs of tables live in test_tables.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import prepare_config
from mlflow.tracking import MlflowClient

from pipeline.data.card import card_markdown
from pipeline.data.inspection import infer_task
from pipeline.data.read import read_table
from pipeline.errors import DataError
from pipeline.runner import run_pipeline
from pipeline.splitting import default_strategy, split_rows

STAGES = "stages=[prepare,train,evaluate,register]"


def messy_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A table like real exports: an ID, mixed types, missing values, a rare level, a column
    with no values, a group and a time column, a string target, a leak and a near-leak."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, size=n)
    x2[rng.choice(n, 20, replace=False)] = np.nan
    color = rng.choice(["red", "green", "blue"], size=n).astype(object)
    color[rng.choice(n, 3, replace=False)] = "purple"  # a rare level
    color[rng.choice(n, 12, replace=False)] = None
    store = rng.choice([f"S{i}" for i in range(12)], size=n)
    score = x1 + (color == "red") + 0.2 * np.nan_to_num(x2, nan=5.0) + rng.normal(0, 0.3, n)
    label = np.where(score > np.median(score), "yes", "no").astype(object)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "x1": x1,
            "x2": x2,
            "color": color,
            "visits": rng.integers(0, 6, size=n),
            "income": rng.integers(20_000, 90_000, size=n),  # unique integers, yet a measurement
            "notes": [None] * n,
            "store": store,
            "day": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 90, n), unit="D"),
            "label": label,
        }
    )
    frame["day"] = frame["day"].dt.strftime("%Y-%m-%d")
    frame["label_copy"] = frame["label"]  # the target itself: dropped
    frame["outcome_code"] = np.where(frame["label"] == "yes", "P", "N")  # determines it: warned
    frame.loc[rng.choice(n, 7, replace=False), "label"] = None  # rows without a target
    return frame


def write_csv(frame: pd.DataFrame, path: Path, **kwargs) -> Path:
    frame.to_csv(path, index=False, **kwargs)
    return path


def classes_table(n: int = 60, counts: dict[str, int] | None = None, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    counts = counts or {"a": n // 2, "b": n - n // 2}
    labels = np.concatenate([[k] * v for k, v in counts.items()])
    rng.shuffle(labels)
    return pd.DataFrame({"x": rng.normal(size=len(labels)), "y": labels})


def assert_store_clean(store: str) -> None:
    """Nothing registered and no run left RUNNING; an error before tracking starts leaves no
    store at all."""
    if not Path(store.removeprefix("sqlite:///")).exists():
        return
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.search_registered_models() == []
    experiments = [e.experiment_id for e in client.search_experiments()]
    if experiments:
        running = client.search_runs(experiments, "attributes.status = 'RUNNING'")
        assert running == []


# --- reading ----------------------------------------------------------------------------------


def test_semicolon_latin1_csv_is_read(tmp_path):
    frame = pd.DataFrame(
        {
            "city": ["Zürich", "Besançon", "Málaga"] * 10,
            "x": np.arange(30) / 7,
            "y": ["sí", "no", "sí"] * 10,
        }
    )
    path = write_csv(frame, tmp_path / "rows.csv", sep=";", encoding="latin-1")
    table = read_table(str(path), "y")
    assert list(table.frame.columns) == ["city", "x", "y"]
    assert table.frame["city"].tolist()[:3] == ["Zürich", "Besançon", "Málaga"]
    assert table.frame["x"].dtype == np.float64
    # delimiter and encoding can also be given
    given = read_table(str(path), "y", delimiter=";", encoding="latin-1")
    assert given.frame.equals(table.frame)


def test_tab_and_bom_csv_are_read(tmp_path):
    frame = pd.DataFrame({"y": ["a", "b"] * 15, "x": np.arange(30)})
    path = write_csv(frame, tmp_path / "rows.tsv", sep="\t", encoding="utf-8-sig")
    table = read_table(str(path), "y")
    assert list(table.frame.columns) == ["y", "x"]  # the BOM is not part of the first name


@pytest.mark.parametrize(
    ("encoding", "sep"),
    [("utf-16", "\t"), ("utf-16-le", ","), ("utf-16-be", ";")],
    ids=["bom-tab", "le-no-bom", "be-no-bom"],
)
def test_utf16_csv_is_read(encoding, sep, tmp_path):
    """UTF-16 (a spreadsheet's "Unicode text"), with a byte order mark or without, is read as
    text: not as latin-1 with a NUL byte between letters."""
    frame = pd.DataFrame(
        {
            "city": ["Zürich", "Málaga", "東京"] * 10,
            "x": np.arange(30) / 7,
            "n": np.arange(30),
            "y": ["sí", "no", "sí"] * 10,
        }
    )
    path = write_csv(frame, tmp_path / "rows.csv", sep=sep, encoding=encoding)
    table = read_table(str(path), "y")
    assert list(table.frame.columns) == ["city", "x", "n", "y"]
    assert table.frame["city"].tolist() == frame["city"].tolist()
    assert table.frame["y"].tolist() == frame["y"].tolist()
    assert table.frame["x"].dtype == np.float64 and table.frame["n"].dtype == np.int64
    np.testing.assert_allclose(table.frame["x"], frame["x"])


def test_parquet_is_read(tmp_path):
    frame = messy_table(60)
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    table = read_table(str(tmp_path / "rows.parquet"), "label")
    assert table.frame.shape == frame.shape
    assert table.source_digest == read_table(str(tmp_path / "rows.parquet"), "label").source_digest


# --- inference ----------------------------------------------------------------------------------


def test_task_inference():
    assert infer_task(pd.Series(["yes", "no", None, "yes"])) == "binary"
    assert infer_task(pd.Series(["a", "b", "c"] * 10)) == "multiclass"
    assert infer_task(pd.Series([0, 1, 2, 3] * 30)) == "multiclass"
    assert infer_task(pd.Series(np.linspace(0, 1, 50))) == "regression"
    assert infer_task(pd.Series(np.arange(200))) == "regression"


def test_column_roles_and_card(make_cfg, tmp_path):
    path = write_csv(messy_table(), tmp_path / "rows.csv")
    cfg = make_cfg("data=table", f"data.path={path}", "data.target=label")
    prepared = prepare_config(cfg)
    card = prepared.card
    types = {c: f["type"] for c, f in card["features"].items()}
    assert types == {
        "x1": "numeric",
        "x2": "numeric",
        "color": "categorical",
        "visits": "numeric",
        "income": "numeric",
        "store": "categorical",
        "day": "date",  # dates become year, month, weekday and days since the first
        "outcome_code": "categorical",
    }
    assert card["task"] == "binary" and card["task_inferred"] is True
    assert card["rows"] == 240 and card["rows_used"] == 233
    assert sum(card["split_sizes"].values()) == 233 and card["split_strategy"] == "stratified"
    assert set(card["class_balance"]) == {"no", "yes"}
    assert prepared.preprocessing.classes == ["no", "yes"]
    markdown = card_markdown(card)
    assert "# Data card: rows.csv" in markdown and "| customer_id | looks like an identifier |" in markdown
    assert f"- warnings: {card['warning_count']}" in markdown


def test_every_warning_is_in_the_card(make_cfg, tmp_path):
    path = write_csv(messy_table(), tmp_path / "rows.csv")
    prepared = prepare_config(make_cfg("data=table", f"data.path={path}", "data.target=label"))
    card = prepared.card
    warnings = "\n".join(card["warnings"])
    assert "column 'notes' has no values and was dropped" in warnings
    assert "7 rows have no target value and were dropped" in warnings
    assert card["rows_dropped_missing_target"] == 7
    assert "column 'customer_id' looks like an identifier and was dropped" in warnings
    assert "column 'label_copy' equals the target and was dropped (leak)" in warnings
    assert "column 'outcome_code' alone predicts the target perfectly" in warnings
    assert card["warning_count"] == len(card["warnings"]) == 5
    assert card["dropped_columns"] == {
        "customer_id": "looks like an identifier",
        "notes": "all values missing",
        "label_copy": "equals the target (leak)",
    }
    assert "outcome_code" in prepared.preprocessing.columns  # warned, not dropped


def test_mostly_numeric_text_and_row_numbers(make_cfg, tmp_path):
    rng = np.random.default_rng(3)
    n = 100
    amount = rng.normal(50, 10, n).round(2).astype(object)
    amount[[3, 40]] = "?"
    frame = pd.DataFrame(
        {
            "row": np.arange(1, n + 1),
            "amount": amount,
            "size": rng.normal(size=n),
            "y": rng.normal(size=n),
        }
    )
    path = write_csv(frame, tmp_path / "rows.csv")
    prepared = prepare_config(make_cfg("data=table", f"data.path={path}", "data.target=y"))
    assert prepared.task == "regression" and prepared.card["split_strategy"] == "random"
    assert prepared.preprocessing.column_types == {"amount": "numeric", "size": "numeric"}
    assert prepared.card["dropped_columns"] == {"row": "looks like an identifier"}
    assert any("'amount' holds numbers and 2 values that are not" in w for w in prepared.card["warnings"])
    assert (
        np.isnan(prepared.frames["train"]["amount"]).sum()
        + np.isnan(prepared.frames["val"]["amount"]).sum()
        + np.isnan(prepared.frames["test"]["amount"]).sum()
        == 2
    )


def test_integer_labels_with_gaps_keep_their_values(make_cfg, tmp_path):
    frame = classes_table(80)
    frame["y"] = frame["y"].map({"a": 0, "b": 1}).astype(float)
    frame.loc[[0, 1], "y"] = np.nan  # read back as float64
    prepared = prepare_config(
        make_cfg("data=table", f"data.path={write_csv(frame, tmp_path / 'r.csv')}", "data.target=y")
    )
    assert prepared.preprocessing.classes == [0, 1]
    assert all(isinstance(c, int) for c in prepared.preprocessing.classes)


def test_preprocessing_is_fitted_on_the_training_rows_only(make_cfg, tmp_path):
    path = write_csv(messy_table(), tmp_path / "rows.csv")
    prepared = prepare_config(make_cfg("data=table", f"data.path={path}", "data.target=label"))
    numeric = prepared.preprocessing.transformer.named_transformers_["numeric"]
    train = prepared.frames["train"][["x1", "x2", "visits", "income"]]
    everything = pd.concat([prepared.frames[s] for s in ("train", "val", "test")])[train.columns]
    np.testing.assert_allclose(numeric.median_, train.median().to_numpy())
    assert not np.allclose(numeric.median_, everything.median().to_numpy())
    np.testing.assert_allclose(numeric.mean_, train.fillna(train.median()).mean().to_numpy())
    # unseen and missing categories do not break the transform
    raw = prepared.frames["test"].head(2).copy()
    raw.loc[raw.index[0], "color"] = "never seen"
    raw.loc[raw.index[1], ["color", "x2"]] = [None, np.nan]
    features = prepared.preprocessing.transform(raw)
    assert features.shape == (2, prepared.features["train"].shape[1]) and np.isfinite(features).all()


def test_median_standardizer_matches_imputer_and_scaler():
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.preprocessing import MedianStandardizer

    rng = np.random.default_rng(3)
    train = pd.DataFrame({"a": rng.normal(5, 2, 500), "b": rng.exponential(3, 500), "c": 7.0})
    train.loc[rng.random(500) < 0.2, "a"] = np.nan
    new = train.sample(50, random_state=1).assign(b=np.nan)
    ours = MedianStandardizer().fit(train)
    sklearn_pair = make_pipeline(SimpleImputer(strategy="median"), StandardScaler()).fit(train)
    for frame in (train, new):
        got = ours.transform(frame)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, sklearn_pair.transform(frame), rtol=1e-5, atol=1e-5)
    assert list(ours.get_feature_names_out()) == ["a", "b", "c"]
    empty = MedianStandardizer().fit(pd.DataFrame({"a": [np.nan] * 4}))
    np.testing.assert_array_equal(empty.transform(pd.DataFrame({"a": [1.0, np.nan]})), [[1.0], [0.0]])


@pytest.mark.parametrize("wide", [False, True])
def test_chunked_transform_equals_one_pass(wide, monkeypatch):
    """Features computed a chunk at a time (dense or sparse) equal the transformer's own output."""
    from scipy import sparse
    from sklearn.compose import ColumnTransformer

    from pipeline import preprocessing
    from pipeline.data.inspection import CATEGORICAL, NUMERIC, coerce_features

    rng = np.random.default_rng(0)
    n = 1000
    levels = np.array([f"level_{i}" for i in range(300 if wide else 6)], dtype=object)
    frame = pd.DataFrame({"x": rng.normal(size=n), "color": levels[rng.integers(0, len(levels), n)]})
    frame.loc[rng.random(n) < 0.1, "color"] = None
    types = {"x": NUMERIC, "color": CATEGORICAL}
    fitted = preprocessing.build_preprocessor(types, image=False, rare_level_min_count=2)
    fitted.fit(coerce_features(frame, types))
    reference = ColumnTransformer(fitted.transformers, sparse_threshold=0.3, verbose_feature_names_out=False)
    expected = reference.fit(coerce_features(frame, types)).transform(coerce_features(frame, types))
    prep = preprocessing.Preprocessing(fitted, types, None, sparse_above=200, image_shape=None)
    monkeypatch.setattr(preprocessing, "TRANSFORM_CHUNK_ROWS", 128)
    rows = rng.permutation(n)[:700]
    whole, some = prep.transform(frame), prep.transform(frame, rows)
    assert sparse.issparse(whole) is wide and whole.dtype == np.float32
    dense = whole.toarray() if wide else whole
    expected = expected.toarray() if sparse.issparse(expected) else expected
    np.testing.assert_allclose(dense, expected, atol=1e-6)
    np.testing.assert_allclose(some.toarray() if wide else some, expected[rows], atol=1e-6)


def test_prepared_rows_hold_the_table_once(make_cfg, tmp_path):
    """Numbers pass through uncopied, text is stored as categories, and each split's raw rows
    come back as text on request; the prepared data survives a save and load unchanged."""
    from pipeline.stages.prepare import PreparedData

    path = write_csv(messy_table(), tmp_path / "rows.csv")
    cfg = make_cfg("data=table", f"data.path={path}", "data.target=label")
    prepared = prepare_config(cfg)
    assert prepared.rows["color"].dtype == "category"
    assert prepared.frames["test"]["color"].dtype == "str"
    assert sum(len(prepared.frames[s]) for s in prepared.frames) == len(prepared.rows)
    prepared.save(tmp_path / "saved")
    loaded = PreparedData.load(tmp_path / "saved")
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(loaded.frames[split], prepared.frames[split])
        np.testing.assert_array_equal(loaded.targets[split], prepared.targets[split])
        np.testing.assert_array_equal(loaded.features[split], prepared.features[split])
    assert loaded.split_digests == prepared.split_digests


# --- splits ---------------------------------------------------------------------------------------


def test_default_strategy():
    assert default_strategy(None, "binary") == "stratified"
    assert default_strategy(None, "regression") == "random"
    assert default_strategy(None, "binary", group="store") == "group"
    assert default_strategy(None, "regression", time="day") == "time"
    assert default_strategy("random", "binary", group="store") == "random"


def test_group_split_keeps_each_group_in_one_split():
    frame = messy_table(300)
    splits = split_rows(frame, frame["label"], "group", 0.15, 0.15, seed=7, group="store")
    seen = [set(frame["store"].iloc[splits[s]]) for s in ("train", "val", "test")]
    assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sorted(np.concatenate(list(splits.values()))) == list(range(len(frame)))


def test_time_split_puts_the_latest_rows_in_test():
    frame = messy_table(300)  # 90 distinct days: many rows share a day
    splits = split_rows(frame, frame["label"], "time", 0.15, 0.15, seed=7, time="day")
    day = pd.to_datetime(frame["day"])
    train, val, test = (day.iloc[splits[s]] for s in ("train", "val", "test"))
    assert train.max() < val.min() and val.max() < test.min()
    assert 0.08 < len(test) / len(frame) < 0.25
    with pytest.raises(DataError, match="too few distinct values"):
        split_rows(frame.assign(day="2024-01-01"), frame["label"], "time", 0.15, 0.15, 7, time="day")


def test_prepare_with_group_and_time_splits(make_cfg, tmp_path):
    frame = messy_table(300).drop(columns=["label_copy", "outcome_code"])
    # stand-ins for the split columns, which prepare keeps out of the features
    frame["store_size"] = frame["store"].str[1:].astype(float) * 1.5
    frame["day_number"] = (pd.to_datetime(frame["day"]) - pd.Timestamp("2024-01-01")).dt.days + 0.5
    path = write_csv(frame, tmp_path / "rows.csv")
    grouped = prepare_config(
        make_cfg("data=table", f"data.path={path}", "data.target=label", "data.split.group=store")
    )
    assert grouped.card["split_strategy"] == "group"
    assert grouped.card["dropped_columns"]["store"] == "used for the group split"
    sizes = [set(grouped.frames[s]["store_size"]) for s in ("train", "val", "test")]
    assert not (sizes[0] & sizes[1] or sizes[0] & sizes[2] or sizes[1] & sizes[2])
    timed = prepare_config(
        make_cfg(
            "data=table",
            f"data.path={path}",
            "data.target=label",
            "data.split.strategy=time",
            "data.split.time=day",
        )
    )
    assert "day" not in timed.preprocessing.columns
    days = {s: timed.frames[s]["day_number"] for s in ("train", "val", "test")}
    assert days["train"].max() < days["val"].min() and days["val"].max() < days["test"].min()


# --- errors ---------------------------------------------------------------------------------------


def _rows(frame: pd.DataFrame):
    return lambda path: write_csv(frame, path)


def _inf(path: Path) -> Path:
    frame = classes_table(60)
    frame["x"] = frame["x"].astype(object)
    frame.loc[5, "x"] = "inf"
    return write_csv(frame, path)


def _bytes(content: bytes):
    return lambda path: path.write_bytes(content)


def _repeated_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.arange(40) / 3
    pq.write_table(pa.table([x, x, ["a", "b"] * 20], names=["x1", "x1", "y"]), path)


GARBAGE = bytes(np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8))


ERRORS = {
    "missing file": ("rows.csv", None, "does not exist or is not a file"),
    "unreadable parquet": (
        "rows.parquet",
        lambda p: p.write_bytes(b"\x00garbage\xff" * 50),
        "could not be read as parquet",
    ),
    "unknown format": (
        "rows.xlsx",
        lambda p: p.write_bytes(b"PK\x03\x04"),
        "unknown format '.xlsx'",
    ),
    "empty table": ("rows.csv", lambda p: p.write_text("x,y\n"), "is empty"),
    "empty file": ("rows.csv", lambda p: p.write_text(""), "is empty"),
    "target missing": (
        "rows.csv",
        _rows(classes_table(40).rename(columns={"y": "label"})),
        "target column 'y' is not in the table; its columns are: x, label",
    ),
    "one class": (
        "rows.csv",
        _rows(classes_table(40, {"yes": 40})),
        "target 'y' has a single class \\('yes'\\)",
    ),
    "class too rare": (
        "rows.csv",
        _rows(classes_table(counts={"a": 50, "b": 5})),
        "class 'b' has 5 rows, too few to stratify",
    ),
    "too few rows": (
        "rows.csv",
        _rows(classes_table(10)),
        "10 usable rows, fewer than data.min_rows=20",
    ),
    "infinite values": ("rows.csv", _inf, "column 'x' holds infinite values"),
    "repeated column names": (
        "rows.csv",
        _bytes(b"x1,x2,x1,y\n" + b"1,2,3,a\n4,5,6,b\n" * 20),
        "repeats column names: 'x1' \\(columns 1, 3\\); give each column its own name",
    ),
    "repeated column names in parquet": (
        "rows.parquet",
        _repeated_parquet,
        "repeats column names: 'x1' \\(columns 1, 2\\)",
    ),
    "binary data as csv": ("rows.csv", _bytes(GARBAGE), "is not a readable table \\(it holds binary data\\)"),
    "csv with NUL bytes": (
        "rows.csv",
        _bytes(b"x,y\n" + b"1.5,a\n2.5,b\n" * 20 + b"3.5\x00,a\n"),
        "is not a readable table",
    ),
    "csv with NUL bytes past the sampled head": (
        "rows.csv",
        _bytes(b"x,y\n" + b"1.5,a\n2.5,b\n" * 8000 + b"3.5,a\x00\x01\xff\n"),
        "is not a readable table \\(it holds binary data: NUL bytes in column 'y'\\)",
    ),
    "target without values": (
        "rows.csv",
        _rows(classes_table(40).assign(y=None)),
        "target column 'y' has no values; choose another data.target",
    ),
    "group split with 2 groups": (
        "rows.csv",
        _rows(classes_table(60).assign(g=["a", "b"] * 30)),
        "fewer than 3 groups",
    ),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if "group" in c else []) for c in ERRORS]
)
def test_data_errors_stop_before_anything_is_registered(case, make_cfg, store, tmp_path):
    name, write, message = ERRORS[case]
    path = tmp_path / name
    if write is not None:
        write(path)
    extra = ["data.split.group=g"] if "group" in case else []
    cfg = make_cfg("data=table", f"data.path={path}", "data.target=y", STAGES, *extra)
    with pytest.raises(DataError, match=message) as caught:
        run_pipeline(cfg)
    assert "\n" not in str(caught.value)
    assert_store_clean(store)
    if "group" in case:  # raised inside the prepare run: it and its parent ended FAILED
        client = MlflowClient(tracking_uri=store)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]
