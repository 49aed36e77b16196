"""The registered model outside the pipeline: the pyfunc loaded in a fresh process, a real
`make serve` (our app) answering (and refusing) REST requests, and batch scoring of a file
(`make predict`), on a table with a text column and missing values."""

from __future__ import annotations

import json
import os
import select
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
from conftest import CONF, ROOT, TINY, predict_alone
from hydra import compose, initialize_config_dir
from python_runner import start_python

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


def test_a_model_carries_the_modules_that_load_and_score_it_and_no_others(tmp_path):
    """The bundle follows imports from the model's code and each kind of fitted model, adds the
    modules of the types a saved file may hold and the architectures chosen by name, and leaves
    out the stages, the search and the tracking (models of every kind load from it alone in this
    file's round trip and in tests/test_ensemble.py)."""
    from pipeline.persistence import TRUSTED
    from pipeline.serving.bundle import ROOTS, bundled_modules, copy_bundle

    modules = set(bundled_modules())
    assert set(ROOTS) <= modules
    assert {t.rsplit(".", 1)[0] for t in TRUSTED if t.startswith("pipeline.")} <= modules
    assert {"pipeline.models", "pipeline.tabular", "pipeline.serving", "pipeline"} <= modules
    left_out = (
        "pipeline.stages",
        "pipeline.tuning",
        "pipeline.tracking",
        "pipeline.training.loop",
        "pipeline.runner",
    )
    assert not [m for m in modules if m.startswith(left_out)]
    copied = copy_bundle(tmp_path)
    assert copied == tmp_path / "pipeline"
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py")}
    assert len(files) == len(modules) and "pipeline/serving/model_code.py" in files
    assert (copied / "families" / "network.py").read_bytes() == (
        ROOT / "pipeline/families/network.py"
    ).read_bytes()


def test_pyfunc_round_trip_in_a_process_with_only_the_models_code(served, tmp_path):
    """In a process of its own, outside the repository (`make predict` below loads it in a fresh
    interpreter), the model scores rows as the pipeline did, and refuses what the server and make
    predict refuse before calling it."""
    uri = f"models:/{MODEL}@champion"
    _assert_same(predict_alone(served["store"], uri, served["rows"], tmp_path), served["expected"])
    rows = served["rows"].copy()
    rows.loc[rows.index[1], "x2"] = float("inf")
    refused = predict_alone(served["store"], uri, rows, tmp_path)
    assert (
        refused
        == "column 'x2' holds infinite or out-of-range values in rows 2; send finite numbers or leave them empty"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _strict_json(text: bytes | str) -> dict:
    """The body as JSON, failing on what only Python's json reads (NaN, Infinity)."""

    def refuse(constant: str):
        pytest.fail(f"the response is not strict JSON: it holds {constant}")

    return json.loads(text, parse_constant=refuse)


def _request(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    """The status and the JSON answer; every answer, errors included, must be strict JSON."""
    status, text = _request(url, body, content_type)
    return status, _strict_json(text)


def _refused(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """A refused request's status and message: one short JSON message, no stack trace."""
    status, text = _request(url, body, content_type)
    assert 400 <= status < 500, (status, text[:500])
    answer = _strict_json(text)
    assert set(answer) == {"error_code", "message"}, answer
    assert "Traceback" not in answer["message"] and "\n" not in answer["message"]
    return status, answer["message"]


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


MAX_ROWS = 1000  # the server's serve.max_rows


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    """One `python -m pipeline.serving serve` on a free port for the module's HTTP tests, started
    from the tests' python server (`make predict` below runs in an interpreter of its own);
    yields its URL, process and log."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": served["store"],
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    command = [sys.executable, "-m", "pipeline.serving", "serve", "--port", str(port), "data=table",
               f"data.path={served['root'] / 'table.csv'}", f"serve.max_rows={MAX_ROWS}"]  # fmt: skip
    process = start_python(command, cwd=ROOT, env=env, output=log, merge=True, new_session=True)
    try:
        _wait_ready(url, process, log)
        yield {"url": url, "process": process, "log": log}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _ping_time(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:
        assert response.status == 200 and _strict_json(response.read()) == {"status": "ok"}
    return time.monotonic() - started


@pytest.mark.slow
def test_served_model_answers_like_the_pipeline_and_refuses_bad_requests(served, server):
    url, process = server["url"], server["process"]
    assert f"serving {MODEL} v1 (alias champion)" in server["log"].read_text()
    rows = served["rows"]
    good = json.dumps({"dataframe_split": _split(rows)}).encode()
    assert b"null" in good  # the missing number and the missing text travel as JSON null

    status, answer = _post(f"{url}/invocations", good)
    assert status == 200, answer
    _assert_same(pd.DataFrame(answer["predictions"]), served["expected"])
    # the other JSON forms and CSV answer the same
    records = json.loads(rows.to_json(orient="records"))
    for form in ({"dataframe_records": records}, {"instances": records}, {"inputs": records}):
        status, answer = _post(f"{url}/invocations", json.dumps(form).encode())
        assert status == 200, (list(form), answer)
        _assert_same(pd.DataFrame(answer["predictions"]), served["expected"])
    status, answer = _post(f"{url}/invocations", rows.to_csv(index=False).encode(), "text/csv")
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
        "a row too short": json.dumps({"dataframe_split": {"columns": ["x1", "x2"], "data": [[1]]}}).encode(),
        "records that are not objects": b'{"dataframe_records": [1, 2]}',
        "a list in a text column": b'{"dataframe_records": [{"x1": 1, "x2": 2, "color": ["red"]}]}',
        "repeated columns": json.dumps(
            {"dataframe_split": {"columns": ["x1", "x2", "x1", "color"], "data": [[1, 2, 3, "red"]]}}
        ).encode(),
    }
    for what, body in bad_requests.items():
        status, message = _refused(f"{url}/invocations", body)
        assert status == 400, (what, status, message)
        assert process.poll() is None, f"the server died on: {what}"
    status, message = _refused(f"{url}/invocations", b"<rows/>", "application/xml")
    assert status == 415 and "application/json or text/csv" in message
    status, message = _refused(f"{url}/nowhere", b"{}")  # even a wrong path answers JSON
    assert status == 404

    status, answer = _post(f"{url}/invocations", good)  # still up and still right
    assert status == 200
    _assert_same(pd.DataFrame(answer["predictions"]), served["expected"])


def _with_cell(rows: pd.DataFrame, row: int, column: str, literal: str) -> bytes:
    """A dataframe_split body whose cell holds a JSON literal as written (Infinity, 1e400, ...)."""
    split = _split(rows)
    split["data"][row][split["columns"].index(column)] = "@CELL@"
    return json.dumps({"dataframe_split": split}).replace('"@CELL@"', literal).encode()


@pytest.mark.slow
def test_served_model_refuses_numbers_that_are_not_finite(served, server):
    """Infinity is no number a model can score: 400 naming the column and row, never a 200 with
    made-up labels or NaN probabilities; NaN is a missing value and is scored."""
    url, rows = server["url"], served["rows"].head(5)
    for literal in ("Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, '"Infinity"'):
        status, message = _refused(f"{url}/invocations", _with_cell(rows, 2, "x1", literal))
        assert status == 400, (literal, message)
        assert "column 'x1' holds infinite or out-of-range values in rows 3" in message, (literal, message)
    records = json.loads(rows.to_json(orient="records"))
    records[4]["x2"] = "@CELL@"
    body = json.dumps({"dataframe_records": records}).replace('"@CELL@"', "-Infinity").encode()
    status, message = _refused(f"{url}/invocations", body)
    assert "column 'x2' holds infinite or out-of-range values in rows 5" in message
    infinite = rows.astype({"x2": object})
    infinite.loc[infinite.index[1], "x2"] = "inf"
    status, message = _refused(f"{url}/invocations", infinite.to_csv(index=False).encode(), "text/csv")
    assert "column 'x2' holds infinite or out-of-range values in rows 2" in message, message

    status, answer = _post(f"{url}/invocations", _with_cell(rows, 2, "x1", "NaN"))
    assert status == 200, answer
    missing = rows.copy()
    missing.loc[missing.index[2], "x1"] = np.nan
    _assert_same(pd.DataFrame(answer["predictions"]), served["predictor"].predict_frame(missing))


def _raw_response(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """Read one HTTP response (status and JSON body) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), _strict_json(body[:length])


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


@pytest.mark.slow
def test_served_model_refuses_oversize_requests_and_stays_responsive(served, server):
    url = server["url"]
    big = 150 * 2**20

    # a client that waits for "100 Continue" before sending: the refusal comes from the
    # Content-Length alone, and none of the 150 MB is sent
    with _connect(url) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % big
        )
        status, answer = _raw_response(sock, timeout=10)
        assert status == 413 and "serve.max_request_mb=20" in answer["message"], answer
        assert time.monotonic() - started < 5
    assert _ping_time(url) < 2

    # a streamed (chunked) body: refused as soon as it passes the limit, while still sending
    with _connect(url) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk, sent, started = b"1" * 2**20, 0, time.monotonic()
        while sent < big and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, answer = _raw_response(sock, timeout=10)
        assert status == 413 and "serve.max_request_mb=20" in answer["message"], answer
        assert sent < 100 * 2**20, f"the server read {sent / 2**20:.0f} MB before refusing"
        assert time.monotonic() - started < 15
    assert _ping_time(url) < 2

    # an ordinary client that sends all 150 MB before it reads the answer
    started = time.monotonic()
    status, message = _refused(f"{url}/invocations", b"[" * big)
    assert status == 413 and "serve.max_request_mb=20" in message
    assert time.monotonic() - started < 30
    assert _ping_time(url) < 2

    # more rows than serve.max_rows, in a body well under the byte limit
    rows = served["rows"].head(1)
    many = {"dataframe_split": {**_split(rows), "data": _split(rows)["data"] * (MAX_ROWS + 1)}}
    status, message = _refused(f"{url}/invocations", json.dumps(many).encode())
    assert status == 413 and f"{MAX_ROWS + 1} rows is more than serve.max_rows={MAX_ROWS}" in message
    status, answer = _post(f"{url}/invocations", json.dumps({"dataframe_split": _split(rows)}).encode())
    assert status == 200 and len(answer["predictions"]) == 1
    assert server["process"].poll() is None


@pytest.mark.slow
def test_served_model_errors_are_short_and_never_quote_the_request(served, server):
    url = server["url"]
    secret = "SECRET-VALUE-" * 20
    rows = pd.concat([served["rows"]] * 40, ignore_index=True).head(MAX_ROWS)
    rows["color"] = secret
    rows["notes"] = secret
    # a missing column, in each JSON form and in CSV: named, short, the data never echoed
    missing = rows.drop(columns=["x1"])
    bodies = {
        "dataframe_split": (json.dumps({"dataframe_split": _split(missing)}).encode(), "application/json"),
        "dataframe_records": (
            json.dumps({"dataframe_records": json.loads(missing.to_json(orient="records"))}).encode(),
            "application/json",
        ),
        "csv": (missing.to_csv(index=False).encode(), "text/csv"),
    }
    for what, (body, content_type) in bodies.items():
        status, message = _refused(f"{url}/invocations", body, content_type)
        assert status == 400 and message == "missing input column(s): 'x1'", (what, message)
    # the model's messages never quote the request either
    wrong = rows.astype({"x2": object})
    wrong.loc[7, "x2"] = secret
    status, message = _refused(f"{url}/invocations", json.dumps({"dataframe_split": _split(wrong)}).encode())
    assert message.startswith("column 'x2' must be numeric; rows 8 hold") and len(message) < 300

    # JSON nested 100,000 levels deep, arrays or objects: 400 before it is parsed
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        status, message = _refused(f"{url}/invocations", deep)
        assert status == 400 and "nests deeper than 64 levels" in message

    # CSV bodies: a charset, repeated names, binary data
    status, answer = _post(
        f"{url}/invocations",
        served["rows"].to_csv(index=False).encode("utf-16"),
        "text/csv; charset=utf-16",
    )
    assert status == 200, answer
    _assert_same(pd.DataFrame(answer["predictions"]), served["expected"])
    for body, expected in (
        (b"x1,x2,x1,color\n1,2,3,red\n", "the CSV header repeats column name(s) 'x1'"),
        (b"x1,x2,color\n1,2\x00,red\n", "holds NUL bytes"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "is not utf-8 text"),
    ):
        status, message = _refused(f"{url}/invocations", body, "text/csv")
        assert status == 400 and expected in message, message
    assert "Traceback" not in server["log"].read_text()  # none of these was a failure of ours


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
    # a model name that is a path is refused like the pipeline refuses it, before any store opens
    fresh = tmp_path / "fresh" / "mlflow.db"
    for command in (["predict", "--input", str(rows)], ["serve", "--port", str(_free_port())]):
        err = _error([*command, f"tracking.uri=sqlite:///{fresh}", "registry.model_name=../../x"], capsys)
        assert "registry.model_name='../../x' is not valid" in err
    assert not fresh.parent.exists()
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


def test_predict_refuses_rows_that_are_not_finite_in_one_line(served, tmp_path, capsys):
    """`make predict` scores no file with an infinite number in it: one line naming the column
    and the rows, and no output written; NaN is a missing value and is scored."""
    args = [f"tracking.uri={served['store']}", *TABLE(served)]
    output = tmp_path / "preds.csv"

    def predict(source: Path) -> list[str]:
        return ["predict", "--input", str(source), "--output", str(output), *args]

    rows = served["rows"].reset_index(drop=True).astype({"x1": object})
    for row, literal in ((2, "inf"), (4, "-Infinity"), (5, "1e400"), (9, "1" + "0" * 400)):
        rows.loc[row, "x1"] = literal
    rows.to_csv(tmp_path / "infinite.csv", index=False)
    err = _error(predict(tmp_path / "infinite.csv"), capsys)
    assert "column 'x1' holds infinite or out-of-range values in rows 3, 5, 6, 10" in err, err
    assert "(rows counted after the header)" in err and not output.exists()

    table = served["rows"].reset_index(drop=True)
    table.loc[1, "x2"] = -np.inf
    table.to_parquet(tmp_path / "infinite.parquet", index=False)
    err = _error(predict(tmp_path / "infinite.parquet"), capsys)
    assert "column 'x2' holds infinite or out-of-range values in rows 2" in err and not output.exists()

    missing = served["rows"].reset_index(drop=True).astype({"x1": object})
    missing.loc[3, "x1"] = "NaN"
    missing.to_csv(tmp_path / "nan.csv", index=False)
    serving.main(predict(tmp_path / "nan.csv"))
    expected = served["rows"].reset_index(drop=True)
    expected.loc[3, "x1"] = np.nan
    _assert_same(pd.read_csv(output), served["predictor"].predict_frame(expected))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_predict_reads_utf16_files(encoding, served, tmp_path):
    """UTF-16, with a byte order mark or without, as spreadsheet programs export it."""
    source, output = tmp_path / "rows.csv", tmp_path / "preds.csv"
    source.write_bytes(served["rows"].to_csv(index=False).encode(encoding))
    args = [f"tracking.uri={served['store']}", *TABLE(served)]
    serving.main(["predict", "--input", str(source), "--output", str(output), *args])
    _assert_same(pd.read_csv(output), served["expected"])


def test_predict_refuses_unreadable_files_in_one_line(served, tmp_path, capsys):
    args = [f"tracking.uri={served['store']}", *TABLE(served)]
    files = {
        "repeated.csv": (b"x1,x2,x1,color\n1,2,3,red\n", "repeats column names: 'x1' (columns 1, 3)"),
        "nul.csv": (b"x1,x2,color\n1,2\x00,red\n", "is not a readable table"),
        "garbage.csv": (
            bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
            "is not a readable table",
        ),
    }
    for name, (content, message) in files.items():
        (tmp_path / name).write_bytes(content)
        err = _error(
            ["predict", "--input", str(tmp_path / name), "--output", str(tmp_path / "out.csv"), *args], capsys
        )
        assert message in err, (name, err)
    assert not (tmp_path / "out.csv").exists()


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
