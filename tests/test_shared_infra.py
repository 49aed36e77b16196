"""Beyond one machine: a real PostgreSQL cluster and a real `mlflow server` on free loopback
ports, several worker processes on one study, a worker killed with SIGKILL mid-trial, and
credentials that never reach the store or the terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.infra import PostgresCluster, TrackingServer, free_port, postgres_available

ROOT = Path(__file__).resolve().parent.parent

if not postgres_available():
    if os.environ.get("CI"):
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are required when CI is set")
    pytest.skip(
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed on this machine",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def infra(tmp_path_factory):
    cluster = PostgresCluster().start()
    server = None
    try:
        server = TrackingServer(
            cluster.database_url("pipeline"),
            str(tmp_path_factory.mktemp("server") / "artifacts"),
            free_port(),
        ).start()
        yield cluster, server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


def _pipeline(*overrides: str, tmp: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        f"hydra.run.dir={tmp}",
        "train.threads=1",
        "candidates=[network]",
        "evaluate.bootstrap=20",
        *overrides,
    ]


def test_workers_share_one_study_and_survive_a_sigkill(infra, tmp_path):
    cluster, server = infra
    storage = cluster.database_url("optuna")
    experiment = "shared-sweep"
    n_trials = 5
    common = [f"tracking.uri={server.url}", f"tracking.experiment={experiment}"]
    prepared = subprocess.run(
        _pipeline("stages=[prepare]", *common, tmp=tmp_path / "prep"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prepared.returncode == 0, prepared.stderr

    worker_args = [
        *common,
        "stages=[tune]",
        f"tune.storage={storage}",
        "tune.study_name=shared",
        f"tune.n_trials={n_trials}",
        "tune.epochs=20",
        "tune.pruner=none",
        "tune.heartbeat_seconds=1",
        "train.early_stopping.patience=100",
    ]
    workers = [
        subprocess.Popen(
            _pipeline(*worker_args, tmp=tmp_path / f"w{i}"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    victim = workers[0]
    try:
        # kill the first worker while it runs a trial
        deadline = time.time() + 240
        killed_trial = None
        while time.time() < deadline and killed_trial is None:
            time.sleep(0.3)
            try:
                study = optuna.load_study(study_name="shared", storage=storage)
            except KeyError:
                continue
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                if trial.user_attrs.get("pid") == victim.pid and trial.user_attrs.get("mlflow_run_id"):
                    killed_trial = trial.number
        assert killed_trial is not None, "the first worker never ran a trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        for worker in workers[1:]:
            out, err = worker.communicate(timeout=400)
            assert worker.returncode == 0, err[-2000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials
    assert states[TrialState.RUNNING] == 0
    killed = next(t for t in trials if t.number == killed_trial)
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed_trial]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)

    mlflow.set_tracking_uri(server.url)
    client = MlflowClient()
    tune_run_id = study.user_attrs["mlflow_tune_run_id"]
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    trial_runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{tune_run_id}'", max_results=1000
    )
    runs_per_trial = Counter(int(r.data.tags["trial.number"]) for r in trial_runs)
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert {t.number for t in ran} == set(runs_per_trial)
    assert set(runs_per_trial.values()) == {1}, "every trial has exactly one MLflow run"
    by_number = {int(r.data.tags["trial.number"]): r for r in trial_runs}
    assert by_number[killed_trial].info.status == "KILLED"
    assert by_number[retries[0].number].data.tags["trial.retry_of"] == str(killed_trial)
    # only one tune run in the experiment: every worker nested under the study's one parent
    tune_runs = client.search_runs([experiment_id], "tags.stage = 'tune'")
    assert [r.info.run_id for r in tune_runs] == [tune_run_id]
    assert not client.search_runs([experiment_id], "attributes.status = 'RUNNING'")


def test_credentials_are_masked_everywhere(infra, tmp_path):
    cluster, server = infra
    secret = "s3cr3t-pw"
    storage = cluster.database_url("optuna").replace("postgres@", f"postgres:{secret}@")
    env = {**os.environ, "OPTUNA_STORAGE": storage}
    done = subprocess.run(
        _pipeline(
            f"tracking.uri={server.url}",
            "tracking.experiment=masking",
            "tune.n_trials=2",
            "tune.epochs=2",
            "train.epochs=2",
            f"tune.storage={storage}",
            tmp=tmp_path / "out",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert secret not in done.stdout + done.stderr
    mlflow.set_tracking_uri(server.url)
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("masking").experiment_id
    for run in client.search_runs([experiment_id]):
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(secret in v for v in values), run.info.run_name
        if run.data.tags.get("stage") == "pipeline":
            config = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
            assert secret not in config and "postgres:***@" in config
    log_file = tmp_path / "out" / "pipeline.log"
    assert secret not in log_file.read_text()
