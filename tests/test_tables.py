"""Your own table end to end: each task type from a messy file to a registered model that scores
raw rows (strings, unseen levels, missing values) with the file's own labels; the data card and
dataset lineage on the prepare run; prepare caching; and data errors through the command line."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from test_data import assert_store_clean, messy_table, write_csv

from pipeline.runner import run_pipeline

STAGES = "stages=[prepare,train,evaluate,register]"


def model_uri(path) -> str:
    """The champion of a table: registered under the file's stem."""
    return f"models:/{Path(path).stem}@champion"


def stage_run(client: MlflowClient, parent_run_id: str, stage: str):
    experiment = client.get_run(parent_run_id).info.experiment_id
    (run,) = client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.stage = '{stage}'"
    )
    return run


def assert_registered(result) -> MlflowClient:
    client = MlflowClient()
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    name = result.outputs["register"].model_name
    assert name == Path(result.outputs["prepare"].card["source"]).stem
    version = client.get_model_version_by_alias(name, "champion")
    assert str(version.version) == "1"
    assert result.outputs["register"].alias == "champion"
    return client


@pytest.mark.slow
def test_binary_string_target_end_to_end(make_cfg, tmp_path, capsys):
    path = write_csv(messy_table(), tmp_path / "customers.csv")
    result = run_pipeline(make_cfg("data=table", f"data.path={path}", "data.target=label", STAGES))
    client = assert_registered(result)
    prepared = result.outputs["prepare"]
    assert prepared.task == "binary" and prepared.preprocessing.classes == ["no", "yes"]

    # warnings: printed, in the card, counted, and the pipeline still finished
    printed = capsys.readouterr().out
    assert printed.count("warning: ") == prepared.card["warning_count"] == 5
    assert "warning: column 'label_copy' equals the target and was dropped (leak)" in printed

    # the data card and the dataset input on the prepare run
    prepare_run = stage_run(client, result.parent_run_id, "prepare")
    names = {a.path for a in client.list_artifacts(prepare_run.info.run_id, "outputs")}
    assert {"outputs/data_card.md", "outputs/data_card.json"} <= names
    card_dir = mlflow.artifacts.download_artifacts(
        run_id=prepare_run.info.run_id,
        artifact_path="outputs/data_card.json",
        dst_path=str(tmp_path),
    )
    assert '"warning_count": 5' in Path(card_dir).read_text()
    inputs = client.get_run(prepare_run.info.run_id).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}  # each split, with its context
    assert set(contexts) == {"training", "validation", "testing"}
    assert all(d.name == "table" for d in contexts.values())
    split = {"training": "train", "validation": "val", "testing": "test"}
    assert {c: d.digest for c, d in contexts.items()} == {
        c: prepared.split_digests[s] for c, s in split.items()
    }
    parent_inputs = client.get_run(result.parent_run_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in parent_inputs] == [prepared.split_digests["train"]]
    assert prepare_run.data.metrics["data.warnings"] == 5

    # the registered model scores raw rows: text, unseen levels, None and NaN
    model = mlflow.pyfunc.load_model(model_uri(result.outputs["prepare"].card["source"]))
    raw = pd.DataFrame(
        {
            "customer_id": ["new-1", "new-2", "new-3"],
            "x1": [0.3, None, -1.2],
            "x2": [np.nan, 4.0, 9.5],
            "color": ["red", "turquoise", None],
            "visits": [2.0, np.nan, 1.0],
            "income": [40_000.0, 55_000.0, None],
            "store": ["S1", "S99", None],
            "day": ["2024-02-01", "2030-01-01", None],
            "outcome_code": ["P", "N", "unknown"],
        }
    )
    out = model.predict(raw)
    assert list(out.columns) == ["prediction", "proba_no", "proba_yes"]
    assert set(out["prediction"]) <= {"yes", "no"} and len(out) == 3
    np.testing.assert_allclose(out["proba_no"] + out["proba_yes"], 1.0, rtol=1e-5)


@pytest.mark.slow
def test_multiclass_parquet_with_time_split_end_to_end(make_cfg, tmp_path):
    rng = np.random.default_rng(5)
    n = 240
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "shape": rng.choice(["round", "square", None], size=n),
            "when": pd.date_range("2023-01-01", periods=n, freq="D"),
        }
    )
    score = frame["x1"] + 0.5 * frame["x2"]
    frame["grade"] = pd.qcut(score, 3, labels=["low", "mid", "high"]).astype(str)
    frame.to_parquet(tmp_path / "grades.parquet", index=False)
    result = run_pipeline(
        make_cfg(
            "data=table",
            f"data.path={tmp_path / 'grades.parquet'}",
            "data.target=grade",
            "data.split.time=when",
            STAGES,
        )
    )
    assert_registered(result)
    prepared = result.outputs["prepare"]
    assert prepared.task == "multiclass" and prepared.card["split_strategy"] == "time"
    assert prepared.card["dropped_columns"] == {"when": "used for the time split"}
    out = mlflow.pyfunc.load_model(model_uri(result.outputs["prepare"].card["source"])).predict(
        pd.DataFrame({"x1": [1.5, -1.5], "x2": [None, 0.0], "shape": ["oval", "round"]})
    )
    assert set(out["prediction"]) <= {"low", "mid", "high"}
    assert [c for c in out.columns if c.startswith("proba_")] == [
        "proba_high",
        "proba_low",
        "proba_mid",
    ]


@pytest.mark.slow
def test_regression_semicolon_latin1_end_to_end(make_cfg, tmp_path):
    rng = np.random.default_rng(6)
    n = 200
    frame = pd.DataFrame(
        {
            "région": rng.choice(["Île-de-France", "Bretagne", "Côte d'Azur"], size=n),
            "surface": rng.uniform(20, 150, n).round(1),
            "pièces": rng.integers(1, 6, n),
        }
    )
    frame["prix"] = 3000 * frame["surface"] + 20_000 * (frame["région"] == "Île-de-France")
    frame.loc[[4, 9], "surface"] = None
    path = write_csv(frame, tmp_path / "biens.csv", sep=";", encoding="latin-1")
    result = run_pipeline(make_cfg("data=table", f"data.path={path}", "data.target=prix", STAGES))
    assert_registered(result)
    prepared = result.outputs["prepare"]
    assert prepared.task == "regression" and prepared.preprocessing.classes is None
    assert set(prepared.preprocessing.columns) == {"région", "surface", "pièces"}
    out = mlflow.pyfunc.load_model(model_uri(result.outputs["prepare"].card["source"])).predict(
        # "pièces" as pandas reads a file of whole numbers: int64
        pd.DataFrame({"région": ["Bretagne", "Alsace"], "surface": [50.0, None], "pièces": [2, 3]})
    )
    assert list(out.columns) == ["prediction"] and np.isfinite(out["prediction"]).all()


def test_prepare_is_reused_unless_forced(make_cfg, tmp_path, capsys):
    path = write_csv(messy_table(120), tmp_path / "rows.csv")
    args = ["data=table", f"data.path={path}", "data.target=label", "stages=[prepare]"]
    first = run_pipeline(make_cfg(*args))
    source = first.run_ids["prepare"]
    assert "reusing" not in capsys.readouterr().out

    second = run_pipeline(make_cfg(*args))
    assert f"prepare: reusing run {source}" in capsys.readouterr().out
    client = MlflowClient()
    hit = stage_run(client, second.parent_run_id, "prepare")
    assert hit.data.tags["reused.run"] == source and hit.data.tags["prepare.cache"] == "hit"
    assert second.run_ids["prepare"] == source
    assert second.outputs["prepare"].split_digests == first.outputs["prepare"].split_digests

    forced = run_pipeline(make_cfg(*args, "prepare.force=true"))
    assert "reusing" not in capsys.readouterr().out
    fresh = stage_run(client, forced.parent_run_id, "prepare")
    assert "reused.run" not in fresh.data.tags and forced.run_ids["prepare"] == fresh.info.run_id
    assert {a.path for a in client.list_artifacts(fresh.info.run_id, "outputs")} >= {"outputs/data_card.md"}

    changed = run_pipeline(make_cfg(*args, "data.split.val_size=0.2"))  # other settings: a miss
    assert "reusing" not in capsys.readouterr().out
    assert changed.run_ids["prepare"] not in (source, fresh.info.run_id)


TABLE = b"x1,x2,label\n" + b"0.5,1,yes\n1.5,2,no\n2.5,3,yes\n3.5,4,no\n" * 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("rows.parquet", b"not a parquet file at all\x00\xff" * 20, [], "could not be read as parquet"),
        (
            "rows.csv",
            b"a,b,c\n" + b"1,2,3\n" * 30,
            [],
            "target column 'label' is not in the table; its columns are: a, b, c",
        ),
        ("rows.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, [], "is not a readable table"),
        ("rows.csv", b"x1,x2,x1,label\n" + b"1,2,3,yes\n4,5,6,no\n" * 20, [], "repeats column names: 'x1'"),
        ("rows.csv", b"x1,label\n" + b"1,\n2,\n" * 20, [], "target column 'label' has no values"),
        (
            "rows.csv",
            TABLE,
            ["registry.model_name=../../x"],
            "registry.model_name='../../x' is not valid",
        ),
    ],
    ids=["unreadable", "no-target", "binary-csv", "repeated-names", "empty-target", "model-name-path"],
)
def test_cli_data_error_is_one_line(name, content, extra, message, run_cli, store, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    done = run_cli("data=table", f"data.path={path}", "data.target=label", STAGES, *extra)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert_store_clean(store)
    # nothing half-written: no lock file anywhere (a model name with '..' would have put one
    # outside the store's locks/ folder)
    assert not list(tmp_path.rglob("*.lock"))
