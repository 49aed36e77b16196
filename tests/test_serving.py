"""The registered model outside the pipeline: the pyfunc loaded in a fresh process, a real
`mlflow models serve` answering (and refusing) REST requests, and batch scoring of a file
(`make predict`), on a table with a text column and missing values."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import CONF, ROOT, TINY
from hydra import compose, initialize_config_dir

from pipeline.runner import run_pipeline
from pipeline.serving import cli as serving

MODEL = "table"  # the champion of table.csv


def TABLE(served) -> list[str]:  # noqa: N802 - reads like the overrides it stands for
    return ["data=table", f"data.path={served['root'] / 'table.csv'}"]


LABELS = ["no", "yes"]


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = (x1 + 1.5 * (color == "red") + rng.normal(scale=0.5, size=n)) > 0.5
    frame = pd.DataFrame(
        {
            "id": np.arange(1000, 1000 + n),
            "x1": x1,
            "x2": x2,
            "color": pd.Series(color, dtype=object),
            "label": np.where(label, "yes", "no"),
        }
    )
    frame.loc[[3, 10, 50], "x2"] = np.nan
    frame.loc[[4, 20, 60], "color"] = None
    return frame


@pytest.fixture(scope="module")
def served(tmp_path_factory, migrated_db):
    """A champion trained by the pipeline on a table (numbers with gaps, text with gaps): a tree
    family (gradient boosting), served like any other family."""
    root = tmp_path_factory.mktemp("serving")
    (root / "store").mkdir()
    shutil.copy(migrated_db, root / "store" / "mlflow.db")
    store = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    csv = root / "table.csv"
    _table(240, 0).to_csv(csv, index=False)
    overrides = [
        *TINY,
        f"tracking.uri={store}",
        "stages=[prepare,train,evaluate,register]",
        "data=table",
        f"data.path={csv}",
        "data.target=label",
        "candidates=[hist_gradient_boosting]",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    result = run_pipeline(cfg)
    assert result.outputs["register"].alias == "champion"
    assert result.outputs["register"].model_name == MODEL
    assert result.outputs["register"].family == "hist_gradient_boosting"
    prepared = result.outputs["prepare"]
    predictor = result.outputs["train"]["hist_gradient_boosting"].predictor(prepared)
    assert predictor.preprocessing.column_types == {
        "x1": "numeric",
        "x2": "numeric",
        "color": "categorical",
    }
    rows = prepared.frames["test"].head(12).copy()
    rows.loc[0, "x2"] = np.nan  # a missing number
    rows.loc[1, "color"] = None  # a missing text value
    rows.loc[2, "color"] = "purple"  # a level never seen in training
    yield {
        "store": store,
        "root": root,
        "rows": rows,
        "expected": predictor.predict_frame(rows),
        "predictor": predictor,
    }
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == ["prediction", *[f"proba_{c}" for c in LABELS]]
    assert list(got["prediction"].astype(str)) == list(expected["prediction"].astype(str))
    for column in got.columns[1:]:
        np.testing.assert_allclose(
            got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-5, atol=1e-7
        )


def test_pyfunc_round_trip_in_a_fresh_process(served, tmp_path):
    rows_file, out_file = tmp_path / "rows.pkl", tmp_path / "out.pkl"
    served["rows"].to_pickle(rows_file)
    code = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({served['store']!r})\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        f"model.predict(pd.read_pickle({str(rows_file)!r})).to_pickle({str(out_file)!r})\n"
        "print('loaded', 'pipeline' in sys.modules)\n"
    )
    # a fresh interpreter, started outside the repository
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded True" in done.stdout
    _assert_same(pd.read_pickle(out_file), served["expected"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"raw": text.decode(errors="replace")}


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer /ping within {timeout}s:\n{log.read_text()[-3000:]}")


def _split(frame: pd.DataFrame) -> dict:
    return json.loads(frame.to_json(orient="split", index=False))


@pytest.mark.slow
def test_served_model_answers_like_the_pipeline_and_refuses_bad_requests(served, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": served["store"],
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.serving",
                "serve",
                "--port",
                str(port),
                "data=table",
                f"data.path={served['root'] / 'table.csv'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(url, process, log)
        assert f"serving {MODEL} v1 (alias champion)" in log.read_text()
        rows = served["rows"]
        good = json.dumps({"dataframe_split": _split(rows)}).encode()
        assert b"null" in good  # the missing number and the missing text travel as JSON null

        status, answer = _post(f"{url}/invocations", good)
        assert status == 200, answer
        _assert_same(pd.DataFrame(answer["predictions"]), served["expected"])

        # one row whose number and text are both missing: columns of nothing but nulls
        gaps = pd.DataFrame({"x1": [0.3], "x2": [None], "color": [None]})
        status, answer = _post(f"{url}/invocations", json.dumps({"dataframe_split": _split(gaps)}).encode())
        assert status == 200, answer
        _assert_same(pd.DataFrame(answer["predictions"]), served["predictor"].predict_frame(gaps))

        missing_column = _split(rows.drop(columns=["x1"]))
        wrong_type = _split(rows)
        wrong_type["data"][0][wrong_type["columns"].index("x1")] = "not a number"
        bad_requests = {
            "missing column": json.dumps({"dataframe_split": missing_column}).encode(),
            "text in a numeric column": json.dumps({"dataframe_split": wrong_type}).encode(),
            "empty body": b"",
            "not json": b"{rows: 1",
            "no rows": json.dumps({"dataframe_split": {"columns": list(rows.columns), "data": []}}).encode(),
        }
        for what, body in bad_requests.items():
            status, answer = _post(f"{url}/invocations", body)
            assert 400 <= status < 500, (what, status, answer)
            assert process.poll() is None, f"the server died on: {what}"

        status, answer = _post(f"{url}/invocations", good)  # still up and still right
        assert status == 200
        _assert_same(pd.DataFrame(answer["predictions"]), served["expected"])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
def test_make_predict_scores_a_file(served, tmp_path):
    rows = served["rows"].copy()
    rows.insert(0, "id", np.arange(len(rows)) + 7)
    rows["label"] = "yes"  # extra columns (like the target) are ignored
    source, output = tmp_path / "rows.csv", tmp_path / "out" / "preds.csv"
    rows.to_csv(source, index=False)
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "predict",
            f"INPUT={source}",
            f"OUTPUT={output}",
            f"ARGS=tracking.uri={served['store']} data=table data.path={served['root'] / 'table.csv'} serve.batch_size=5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows/second" in done.stdout and f"{len(rows)} rows" in done.stdout
    scored = pd.read_csv(output)
    assert list(scored.columns) == ["id", "prediction", "proba_no", "proba_yes"]
    assert len(scored) == len(rows) and list(scored["id"]) == list(rows["id"])
    _assert_same(scored.drop(columns=["id"]), served["expected"])


def test_predict_in_batches_matches_one_pass(served, tmp_path, capsys):
    source = tmp_path / "rows.csv"
    served["rows"].to_csv(source, index=False)
    for batch in (1, 4, 1000):
        output = tmp_path / f"preds-{batch}.csv"
        serving.main(
            [
                "predict",
                "--input",
                str(source),
                "--output",
                str(output),
                f"tracking.uri={served['store']}",
                "data=table",
                f"data.path={served['root'] / 'table.csv'}",
                f"serve.batch_size={batch}",
            ]
        )
        _assert_same(pd.read_csv(output), served["expected"])
    assert "rows/second" in capsys.readouterr().out


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        serving.main(argv)
    assert exited.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_clear_errors(served, tmp_path, capsys):
    store = f"tracking.uri={served['store']}"
    rows = tmp_path / "rows.csv"
    served["rows"].to_csv(rows, index=False)
    err = _error(["predict", "--input", str(tmp_path / "absent.csv"), store, *TABLE(served)], capsys)
    assert "does not exist" in err
    # no champion: another model name, an empty store, and for serve before anything starts
    err = _error(["predict", "--input", str(rows), store, "data=wine"], capsys)
    assert "no model has alias champion: run make pipeline first" in err and "wine" in err
    empty = f"tracking.uri=sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    err = _error(["predict", "--input", str(rows), empty], capsys)
    assert "no model has alias champion: run make pipeline first" in err
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # looking does not create a store
    err = _error(["serve", "--port", str(_free_port()), store, "data=digits"], capsys)
    assert "no model has alias champion: run make pipeline first" in err
    # rows the model cannot take
    served["rows"].drop(columns=["color"]).to_csv(tmp_path / "short.csv", index=False)
    err = _error(["predict", "--input", str(tmp_path / "short.csv"), store, *TABLE(served)], capsys)
    assert "lacks the model's input column(s): color" in err
    bad = served["rows"].copy().astype({"x1": object})
    bad.loc[2, "x1"] = "abc"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    err = _error(["predict", "--input", str(tmp_path / "bad.csv"), store, *TABLE(served)], capsys)
    assert "column 'x1' must be numeric" in err
    err = _error(["predict", "--input", str(rows), store, "data=nope"], capsys)
    assert "data='nope' is not valid" in err and "wine" in err


def test_serving_environment_and_model_names():
    env = serving.child_env("sqlite:////tmp/x/mlflow.db")
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/x/mlflow.db"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    cfg = serving.compose_config(["data=wine"])
    assert serving.default_model_uri(cfg) == "models:/wine@champion"
    cfg = serving.compose_config(["registry.model_name=shared", "serve.port=5002"])
    assert serving.default_model_uri(cfg) == "models:/shared@champion" and cfg.serve.port == 5002
    cfg = serving.compose_config(["serve.model_uri=models:/x/3"])
    assert serving.default_model_uri(cfg) == "models:/x/3"
