"""`make ui` and `make dashboard`: real servers on free loopback ports over a real store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.infra import free_port
from pipeline.runner import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 120) -> bytes:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.read()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def test_ui_serves_the_store_and_prints_the_runs_table_link(make_cfg, store, tmp_path):
    result = run_pipeline(make_cfg("stages=[prepare]"))
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ui", "--backend-store-uri", store, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        link = process.stdout.readline().strip()
        assert link == (
            f"MLflow UI: http://127.0.0.1:{port}/#/experiments/{result.experiment_id}"
            "?workflowType=machine_learning"
        )
        _wait_for(f"http://127.0.0.1:{port}/health", process)
        body = json.dumps({"experiment_ids": [result.experiment_id], "max_results": 10}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        assert {r["info"]["run_id"] for r in runs} >= {result.parent_run_id, result.run_ids["prepare"]}
        # one worker on a small machine (MLflow's default is 4), and no deprecation warnings
        [server] = [
            p.cmdline()
            for p in psutil.Process(process.pid).children(recursive=True)
            if "uvicorn" in p.cmdline()
        ]
        assert server[server.index("--workers") + 1] == "1", server
        assert "Warning" not in (tmp_path / "ui.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_link_names_the_active_experiment_of_that_name(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.ui import _experiment_id

    client = MlflowClient(tracking_uri=store)
    kept = client.create_experiment("kept")
    client.delete_experiment(client.create_experiment("gone"))
    assert _experiment_id(store, "kept") == kept
    assert _experiment_id(store, "gone") is None and _experiment_id(store, "never") is None
    (tmp_path / "other.db").write_text("not a database")
    assert _experiment_id(f"sqlite:///{tmp_path / 'other.db'}", "kept") is None


def test_dashboard_shows_the_study(make_cfg, store):
    run_pipeline(make_cfg("stages=[prepare,tune]"))
    journal = Path(store[len("sqlite:///") :]).parent / "optuna.journal"
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            str(journal),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        studies = json.loads(_wait_for(f"http://127.0.0.1:{port}/api/studies", process))["study_summaries"]
        assert len(studies) == 1 and studies[0]["study_name"].startswith("pipeline-breast_cancer-")
    finally:
        process.terminate()
        process.wait(timeout=30)
