"""The stages against a real temporary MLflow store: alone and together, in process and through
`python -m pipeline`, what every run records, and how runs end when the process is stopped."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from python_runner import start_python

from pipeline.errors import ConfigError, UpstreamMissing
from pipeline.runner import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
# each run of a network-only pipeline, by its key (stage, or stage.family), and what it used
UPSTREAM = {
    "prepare": [],
    "tune.network": ["prepare"],
    "train.network": ["prepare", "tune.network"],
    "evaluate": ["prepare", "train.network"],
    "register": ["prepare", "train.network", "evaluate"],
}


def _key(run) -> str:
    family = run.data.tags.get("model.family")
    stage = run.data.tags["stage"]
    return f"{stage}.{family}" if family and stage in ("tune", "train") else stage


def _db_path(store: str) -> Path:
    return Path(store[len("sqlite:///") :])


def _assert_stage_run(client: MlflowClient, result, key: str) -> None:
    """The stage run finished, hangs under the parent and names its upstream runs."""
    run = client.get_run(result.run_ids[key])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    stage = key.split(".")[0]
    assert tags["stage"] == stage
    assert tags["mlflow.parentRunId"] == result.parent_run_id
    for name in ("data.digest", "config.digest", "data.name", "model.name"):
        assert tags[name], name
    for upstream in UPSTREAM[key]:
        assert tags[f"upstream.{upstream}"] == result.run_ids[upstream]
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stages"] == stage


@pytest.mark.slow
def test_each_stage_alone_finds_the_upstream_runs(make_cfg):
    prepared = run_pipeline(make_cfg("stages=[prepare]"))
    client = MlflowClient()
    assert prepared.upstream_used == {}
    _assert_stage_run(client, prepared, "prepare")
    prepare_id = prepared.run_ids["prepare"]

    # evaluate needs a train run that does not exist yet: it names the stage to run first
    with pytest.raises(
        UpstreamMissing, match="no finished 'train' run of family 'network'.*run stage train first"
    ):
        run_pipeline(make_cfg("stages=[evaluate]"))

    tuned = run_pipeline(make_cfg("stages=[tune]"))
    assert tuned.upstream_used == {"prepare": prepare_id}
    _assert_stage_run(client, tuned, "tune.network")

    trained = run_pipeline(make_cfg("stages=[train]"))
    assert trained.upstream_used == {"prepare": prepare_id, "tune.network": tuned.run_ids["tune.network"]}
    assert trained.outputs["train"]["network"].params_source == "tune"
    _assert_stage_run(client, trained, "train.network")
    assert client.get_run(trained.run_ids["train.network"]).data.tags["model.uri"]

    evaluated = run_pipeline(make_cfg("stages=[evaluate]"))
    assert evaluated.upstream_used == {
        "prepare": prepare_id,
        "train.network": trained.run_ids["train.network"],
    }
    _assert_stage_run(client, evaluated, "evaluate")

    registered = run_pipeline(make_cfg("stages=[register]"))
    assert registered.upstream_used == {
        "prepare": prepare_id,
        "train.network": trained.run_ids["train.network"],
        "evaluate": evaluated.run_ids["evaluate"],
    }
    _assert_stage_run(client, registered, "register")
    decision = registered.outputs["register"]
    assert decision.alias == "champion"
    version = client.get_model_version_by_alias("breast_cancer", "champion")
    assert str(version.version) == decision.version
    assert version.tags["model.run_id"] == trained.run_ids["train.network"]

    # no run was left open; only the parent of the evaluate attempt without a train run failed
    runs = client.search_runs([prepared.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [(r.data.tags["stage"], r.data.tags["stages"]) for r in failed] == [("pipeline", "evaluate")]
    assert "UpstreamMissing" in failed[0].data.tags["error"]


@pytest.mark.slow
def test_standalone_stage_uses_the_prepare_run_of_its_data_set(make_cfg):
    wine = run_pipeline(make_cfg("stages=[prepare]", "data=wine"))
    cancer = run_pipeline(make_cfg("stages=[prepare]"))  # the newest prepare run is not wine's
    assert wine.run_ids["prepare"] != cancer.run_ids["prepare"]

    trained = run_pipeline(make_cfg("stages=[train]", "data=wine"))
    assert trained.upstream_used == {"prepare": wine.run_ids["prepare"]}  # no tune run: config params
    assert trained.outputs["prepare"].name == "wine"
    assert trained.outputs["train"]["network"].params_source == "config"
    assert trained.outputs["train"]["network"].spec.n_outputs == 3  # wine's three classes
    tags = MlflowClient().get_run(trained.run_ids["train.network"]).data.tags
    assert tags["upstream.prepare"] == wine.run_ids["prepare"]
    assert tags["data.name"] == "wine"
    assert "upstream.tune" not in tags


@pytest.mark.slow
def test_standalone_stage_without_upstream_exits_with_one_line(run_cli, store):
    proc = run_cli("stages=[evaluate]")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "'prepare'" in errors[0] and "run stage prepare first" in errors[0]
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status == "FAILED" for r in runs)  # the parent run, ended FAILED


@pytest.mark.slow
def test_cli_runs_every_stage_and_records_them(run_cli, store):
    proc = run_cli("data=wine")
    assert proc.returncode == 0, proc.stderr
    assert "registry" in proc.stdout
    assert "workflowType=machine_learning" in proc.stdout
    assert "wine v1 -> champion" in proc.stdout

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("pipeline")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_stage = {_key(r): r for r in children}
    assert sorted(by_stage) == sorted(UPSTREAM)
    assert len(children) == len(UPSTREAM)
    for stage, run in by_stage.items():
        assert run.info.status == "FINISHED", stage
        tags = run.data.tags
        assert tags["data.digest"] == parent.data.tags["data.digest"], stage
        assert tags["config.digest"] == parent.data.tags["config.digest"], stage
        assert tags["data.name"] == "wine"
        for upstream in UPSTREAM[stage]:
            assert tags[f"upstream.{upstream}"] == by_stage[upstream].info.run_id, (stage, upstream)
        assert parent.data.tags[f"upstream.{stage}"] == run.info.run_id
    # trials hang under the tune run and finished too
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{by_stage['tune.network'].info.run_id}'"
    )
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    # tracking.plots=false (as in every quick test run): no stage draws a figure, nor the report
    for stage, run in by_stage.items():
        assert "plots" not in {a.path for a in client.list_artifacts(run.info.run_id)}, stage
    report = Path(client.download_artifacts(parent.info.run_id, "report.html")).read_text()
    assert "No plots were drawn (tracking.plots=false)" in report and "data:image/png" not in report

    # the parent records what is needed to repeat the run
    assert parent.data.tags["git.commit"]
    assert {"version.python", "version.torch", "version.mlflow", "version.optuna"} <= set(parent.data.params)
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    config_text = Path(client.download_artifacts(parent.info.run_id, "config.yaml")).read_text()
    assert "name: wine" in config_text

    version = client.get_model_version_by_alias("wine", "champion")
    assert str(version.version) == "1"
    assert version.tags["model.run_id"] == by_stage["train.network"].info.run_id
    assert version.tags["model.family"] == "network" and version.tags["objective"] == "log_loss/minimize"


@pytest.mark.slow
def test_sigterm_ends_open_runs_killed(store, tmp_path):
    db = _db_path(store)
    db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=store)
    client.search_experiments()  # create the store's schema here, before the child process uses it
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "tune.n_trials=50",
        # trials of seconds, so that the signal lands in one (a 30-epoch trial ends in half a
        # second, and the signal could come between two)
        "tune.epochs=400",
        "tune.pruner=none",
        "train.early_stopping.patience=1000",
        "train.threads=1",
        f"tracking.uri={store}",
        f"hydra.run.dir={tmp_path / 'outputs'}",
    ]
    proc = start_python(args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        tune_running = False
        while time.monotonic() < deadline and proc.poll() is None:
            experiment = client.get_experiment_by_name("pipeline")
            if experiment is not None:
                running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
                if any(r.data.tags.get("stage") == "tune.trial" for r in running):
                    tune_running = True
                    break
            time.sleep(0.5)
        assert tune_running, "no tuning trial started in time"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # ended within its grace (60 s): 143 when its ending was stuck, with where it waited in the log
    log = "".join(p.read_text() for p in (tmp_path / "outputs").glob("*.log"))
    assert proc.returncode == 130, f"{stderr[-2000:]}\n{log[-6000:]}"
    assert "Traceback" not in stderr
    runs = client.search_runs([experiment.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("stage"), []).append(run)
    (parent,) = by_stage["pipeline"]
    assert parent.info.status == "KILLED"
    assert by_stage["prepare"][0].info.status == "FINISHED"
    assert by_stage["tune"][0].info.status == "KILLED"
    assert any(t.info.status == "KILLED" for t in by_stage["tune.trial"])
    assert "train" not in by_stage


def test_tracking_disabled_runs_without_a_store(make_cfg, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study journal goes to the working directory without a store
    result = run_pipeline(
        make_cfg("tracking.enabled=false", "stages=[prepare,tune,train,evaluate]", "data=wine")
    )
    assert result.parent_run_id is None and result.run_ids == {} and result.upstream_used == {}
    assert set(result.outputs) == {"prepare", "tune", "train", "evaluate"}
    assert 0.0 <= result.outputs["evaluate"].metrics["accuracy"] <= 1.0
    client = MlflowClient(tracking_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert experiments == ["0"] and not client.search_runs(experiments)  # nothing was tracked


def test_register_needs_tracking(make_cfg, store):
    with pytest.raises(ConfigError, match="stage 'register' needs the MLflow store"):
        run_pipeline(make_cfg("tracking.enabled=false", "stages=[prepare,register]"))
    client = MlflowClient(tracking_uri=store)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
