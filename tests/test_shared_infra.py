"""Beyond one machine: a real PostgreSQL cluster and a real `mlflow server` (both asking for
passwords) on free loopback ports, several worker processes on one study, a worker killed with
SIGKILL mid-trial, what an unauthenticated client gets, and passwords that never reach the store,
the files or the terminal."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from python_runner import AT_THE_START, run_python, start_python

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
            passfile=cluster.passfile,
        ).start()
        yield cluster, server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


def _env(cluster, server, **extra: str) -> dict[str, str]:
    """A client's environment: the credentials from make server's files, never on a command line."""
    return {**os.environ, **server.client_env, **cluster.client_env, **extra}


@pytest.fixture(autouse=True)
def _authenticated(infra, monkeypatch):
    cluster, server = infra
    for key, value in {**server.client_env, **cluster.client_env}.items():
        monkeypatch.setenv(key, value)


def _pipeline(*overrides: str, tmp: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        f"hydra.run.dir={tmp}",
        "train.threads=1",
        "candidates=[network]",
        "evaluate.bootstrap=20",
        "tracking.plots=false",  # as in every test's runs (conftest.TINY): images hold no secret
        "tracking.system_metrics=false",
        *overrides,
    ]


def test_workers_share_one_study_and_survive_a_sigkill(infra, tmp_path):
    cluster, server = infra
    storage = cluster.database_url("optuna")
    experiment = "shared-sweep"
    n_trials = 5
    common = [f"tracking.uri={server.url}", f"tracking.experiment={experiment}"]
    prepared = run_python(
        _pipeline("stages=[prepare]", *common, tmp=tmp_path / "prep"),
        cwd=ROOT,
        timeout=300,
        env=_env(cluster, server),
    )
    assert prepared.returncode == 0, prepared.stderr

    worker_args = [
        *common,
        "stages=[tune]",
        f"tune.storage={storage}",
        "tune.study_name=shared",
        f"tune.n_trials={n_trials}",
        "tune.epochs=60",  # trials long enough that the kill lands inside the one seen running
        "tune.pruner=none",
        # the killed trial is failed once its heartbeat is 3 beats late; a live one's beat can
        # come a second late on two cores shared with the rest of the suite
        "tune.heartbeat_seconds=2",
        "train.early_stopping.patience=100",
    ]

    def start_worker(i: int):
        return start_python(
            _pipeline(*worker_args, tmp=tmp_path / f"w{i}"), cwd=ROOT, env=_env(cluster, server)
        )

    # the first worker alone until it runs a trial (it could otherwise find the study finished by
    # the others when it got there late), killed in that trial; two more finish the study
    victim = start_worker(0)
    workers = [victim]
    try:
        deadline = time.time() + 240
        seen = None  # a trial of the first worker, running with its MLflow run
        while time.time() < deadline and seen is None and victim.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="shared", storage=storage)
            except KeyError:
                continue
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                if trial.user_attrs.get("pid") == victim.pid and trial.user_attrs.get("mlflow_run_id"):
                    seen = trial.number
        assert seen is not None, f"the first worker never ran a trial: {victim.communicate()[1][-2000:]}"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        # the trial seen running may have ended in the moment before the signal came, and the
        # next one begun: the killed trial is the one the dead process left running
        left = [
            (t.number, t.user_attrs.get("mlflow_run_id"))
            for t in optuna.load_study(study_name="shared", storage=storage).get_trials(
                states=(TrialState.RUNNING,)
            )
            if t.user_attrs.get("pid") == victim.pid
        ]
        assert len(left) == 1 and left[0][1], f"the kill did not land inside a trial's run: {left}"
        killed_trial = left[0][0]
        workers += [start_worker(i) for i in (1, 2)]
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
    shown = [(t.number, t.state.name, t.user_attrs) for t in trials]  # what a failure shows
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials, shown
    assert states[TrialState.RUNNING] == 0, shown
    killed = next(t for t in trials if t.number == killed_trial)
    assert killed.state == TrialState.FAIL, shown
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed_trial]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED), shown

    mlflow.set_tracking_uri(server.url)
    client = MlflowClient()
    tune_run_id = study.user_attrs["mlflow_tune_run_id"]
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    trial_runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{tune_run_id}'", max_results=1000
    )
    runs_per_trial = Counter(int(r.data.tags["trial.number"]) for r in trial_runs)
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert {t.number for t in ran} == set(runs_per_trial), (runs_per_trial, shown)
    assert set(runs_per_trial.values()) == {1}, "every trial has exactly one MLflow run"
    by_number = {int(r.data.tags["trial.number"]): r for r in trial_runs}
    assert by_number[killed_trial].info.status == "KILLED"
    assert by_number[retries[0].number].data.tags["trial.retry_of"] == str(killed_trial)
    # only one tune run in the experiment: every worker nested under the study's one parent
    tune_runs = client.search_runs([experiment_id], "tags.stage = 'tune'")
    assert [r.info.run_id for r in tune_runs] == [tune_run_id]
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    assert not running, [(r.info.run_name, r.data.tags.get("stage")) for r in running]


def _request(url: str, body: bytes, auth: tuple[str, str] | None) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


OPEN_STORAGE = (
    AT_THE_START
    + """
from pipeline.tuning.study import make_storage
wait_for_the_start()  # the same moment in every process
make_storage(sys.argv[1], 1)
"""
)


def test_workers_that_open_a_new_study_database_at_once_all_succeed(infra):
    cluster, _ = infra
    url = cluster.create_database("new_studies")
    at = str(time.time() + 2)
    openers = [start_python([sys.executable, "-c", OPEN_STORAGE, url, at], cwd=ROOT) for _ in range(4)]
    for opener in openers:
        _, err = opener.communicate(timeout=120)
        assert opener.returncode == 0, err[-2000:]
    assert optuna.get_all_study_summaries(url) == []  # one schema, usable


def test_only_the_owner_gets_into_the_tracking_server(infra):
    _, server = infra
    create = f"{server.url}/api/2.0/mlflow/experiments/create"
    body = json.dumps({"name": "intruder"}).encode()
    assert _request(create, body, None) == 401
    assert _request(create, body, ("nobody", "guess")) == 401
    artifact = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/intruder/x.txt"
    upload = urllib.request.Request(artifact, data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=30)
    assert refused.value.code == 401
    assert _request(create, body, (server.username, server.password)) == 200


@pytest.mark.parametrize("where", ["tcp", "socket"])
def test_postgres_asks_everyone_for_the_password(infra, where):
    cluster, _ = infra
    host = "127.0.0.1" if where == "tcp" else cluster.directory
    psql = [
        shutil.which("psql") or "psql",
        "-h",
        host,
        "-p",
        str(cluster.port),
        "-U",
        cluster.user,
        "-w",
        "-d",
        "optuna",
    ]
    anonymous = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    refused = subprocess.run(
        [*psql, "-c", "select 1"], capture_output=True, text=True, env=anonymous, timeout=60
    )
    assert refused.returncode != 0
    assert "password" in refused.stderr.lower()
    allowed = subprocess.run(
        [*psql, "-tAc", "select 1"],
        capture_output=True,
        text=True,
        env={**anonymous, **cluster.client_env},
        timeout=60,
    )
    assert allowed.returncode == 0 and allowed.stdout.strip() == "1", allowed.stderr


def _everything_written(*folders: Path) -> str:
    texts = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(texts)


def test_passwords_never_appear_in_what_is_written_or_printed(infra, tmp_path):
    """The passwords through every supported way (MLflow's environment variables, OPTUNA_STORAGE
    with a password, a credentials file), for a run that succeeds, for unreachable hosts and for
    a wrong password: not in any output, log, the store's tables or the artifacts."""
    cluster, server = infra
    db_password = (
        Path(cluster.passfile).read_text().strip().rsplit(":", 1)[1]
    )  # as a user would put it in a URL
    storage = cluster.database_url("optuna").replace(f"{cluster.user}@", f"{cluster.user}:{db_password}@")
    closed = free_port()
    overrides = ["tracking.experiment=masking", "tune.n_trials=2", "tune.epochs=2", "train.epochs=2"]
    cases = {
        "success": ([f"tracking.uri={server.url}", *overrides], {"OPTUNA_STORAGE": storage}, 0),
        "credentials file": (  # signing in is what this case tests: the first stage shows it
            [
                f"tracking.uri={server.url}",
                f"tracking.credentials={tmp_path / 'credentials.env'}",
                "stages=[prepare]",
                *overrides,
            ],
            {"MLFLOW_TRACKING_PASSWORD": "", "OPTUNA_STORAGE": storage},
            0,
        ),
        "tracking server unreachable": (
            ["tracking.connect_timeout=3", *overrides],
            {"MLFLOW_TRACKING_URI": f"http://admin:{server.password}@127.0.0.1:{closed}"},
            2,
        ),
        "study storage unreachable": (
            [f"tracking.uri={server.url}", "tracking.connect_timeout=3", *overrides],
            {"OPTUNA_STORAGE": storage.replace(str(cluster.port), str(closed))},
            2,
        ),
        "wrong tracking password": (
            [f"tracking.uri={server.url}", *overrides],
            {"MLFLOW_TRACKING_PASSWORD": "wrong-" + server.password},
            2,
        ),
    }
    (tmp_path / "credentials.env").write_text(f"MLFLOW_TRACKING_PASSWORD={server.password}\n")
    started = {}
    for name, (args, extra, _) in cases.items():  # all at once: the unreachable ones mostly wait
        env = _env(cluster, server, **extra)
        if not env.get("MLFLOW_TRACKING_PASSWORD"):
            env.pop("MLFLOW_TRACKING_PASSWORD")
        started[name] = start_python(
            _pipeline(*args, tmp=tmp_path / "outputs" / name.replace(" ", "-")), cwd=ROOT, env=env
        )
    printed = []
    for name, (_, _, code) in cases.items():
        out, err = started[name].communicate(timeout=400)
        assert started[name].returncode == code, (name, err[-2000:])
        if code:
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (name, err[-2000:])
        printed.append(out + err)
        if name == "success":  # the summary links to the server's own UI; MLflow's lines stay in the log
            assert re.search(rf"^runs +{re.escape(server.url)}/#/experiments/\d+\S*$", out, re.MULTILINE)
            assert "View run" not in out + err
    dump = subprocess.run(
        [shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump", "-h", "127.0.0.1", "-p", str(cluster.port),
         "-U", cluster.user, "-w", "pipeline"],
        capture_output=True, text=True, env={**os.environ, **cluster.client_env}, timeout=120,
    )  # fmt: skip
    assert dump.returncode == 0, dump.stderr
    written = (
        _everything_written(tmp_path / "outputs", Path(server.artifacts)) + dump.stdout + "\n".join(printed)
    )
    assert "masking" in dump.stdout  # the runs did reach the store
    for secret in (db_password, server.password):
        assert secret not in written


ECHO_MODEL = """
import mlflow


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


mlflow.models.set_model(Echo())
"""

# in its own process: the tracking URI and the active experiment are the process's
LOG_AND_LIST = """
import sys
from pathlib import Path

import mlflow

from pipeline.tracking import integrity

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("model-listing")
with mlflow.start_run():
    info = mlflow.pyfunc.log_model(name="model", python_model=sys.argv[2], pip_requirements=["mlflow"])
print("local folder:", integrity._local_folder(info.model_uri))
listing, digest = integrity.model_listing(info.model_uri)
print("files:", sorted(listing))
downloaded = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=sys.argv[3])
integrity.check(Path(downloaded), listing, digest, "the model")
print("a download matches it")
"""


def test_a_model_logged_to_the_server_is_hashed_as_stored_there(infra, tmp_path):
    """The manifest recorded for a model logged through the server comes from the files the
    server stores (downloaded: nothing of them is on this machine), and it is what a later check
    of a download finds."""
    cluster, server = infra
    code = tmp_path / "echo.py"
    code.write_text(ECHO_MODEL)
    done = run_python(
        [sys.executable, "-c", LOG_AND_LIST, server.url, str(code), str(tmp_path / "got")],
        cwd=ROOT,
        timeout=120,
        env=_env(cluster, server),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "local folder: None" in done.stdout
    assert "'MLmodel'" in done.stdout and "a download matches it" in done.stdout, done.stdout
