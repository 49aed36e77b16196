"""Interruptions: signals to parallel tuning workers and to the pipeline that leads them, a killed
pipeline whose worker outlives it, and a registration killed halfway. Each ends with one line,
loses nothing and leaves nothing running (or the next run ends what was left)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from python_runner import ForkedProcess, start_python
from test_faults import DECISION, MODEL, QUICK, _cli, _db, _env, _running, _runs

from pipeline.runner import run_pipeline
from pipeline.tracking.buffer import MetricBuffer
from pipeline.tracking.trials import TrialRuns
from pipeline.tuning import optuna_compat, scheduling
from pipeline.tuning.liveness import RUN_ID_ATTR, reap_stale_trials


def _study(store_dir: Path) -> optuna.Study | None:
    journal = store_dir / "optuna.journal"
    if not journal.exists():
        return None
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        [summary] = optuna.get_all_study_summaries(storage, include_best_trial=False)
        return optuna.load_study(study_name=summary.study_name, storage=storage)
    except Exception:  # noqa: BLE001 - being created
        return None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# a tuning worker's signal handling alone: it ends its "trial" in 2.5 s once signalled
ENDING_WORKER = """
import os, sys, time
from pathlib import Path
from pipeline.tuning.workers import follow_parent
marker = Path(sys.argv[2])
follow_parent(int(sys.argv[1]))
marker.write_text(f"running {os.getpid()}")
try:
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(2.5)
    marker.write_text("ended")
"""
# the worker's parent, to be killed
PARENT = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["parent killed", "signalled twice"])
def test_a_worker_ends_its_trial_once_however_many_signals_come(how, tmp_path):
    # after its parent's death the worker is told twice (parent-death signal, then its pid check);
    # after Ctrl-C the pipeline's SIGTERM can follow the terminal's SIGINT: neither may cut the
    # ending of the trial short
    marker = tmp_path / "marker"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, ENDING_WORKER, str(marker)], cwd=ROOT, env=_env()
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text().startswith("running"):
            assert time.monotonic() < deadline and parent.poll() is None, "the worker did not start"
            time.sleep(0.1)
        worker = int(marker.read_text().split()[1])
        if how == "parent killed":
            parent.kill()
            parent.wait()
        else:
            os.kill(worker, signal.SIGTERM)
            time.sleep(0.5)
            os.kill(worker, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(worker)
        assert marker.read_text() == "ended"
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.slow
def test_tuning_workers_leave_ctrl_c_to_the_pipeline(make_cfg):
    from pipeline.tuning.workers import start_workers

    pool = start_workers(make_cfg("stages=[prepare,tune]", "tune.n_jobs=2"))
    try:
        [process] = pool.processes
        ignored = int(Path(f"/proc/{process.pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
        assert ignored & (1 << (signal.SIGINT - 1)), "the worker would be interrupted mid-trial"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's is back
    finally:
        pool.close()
        for process in pool.processes:
            process.join(timeout=120)


PARALLEL = [
    "stages=[prepare,tune]",
    "candidates=[network]",
    "tune.n_jobs=2",
    "tune.n_trials=8",
    "tune.epochs=400",  # trials long enough to be interrupted
    "tune.pruner=none",
    "train.early_stopping.patience=1000",
]


def _start_parallel(store: str, tmp_path: Path) -> tuple[ForkedProcess, int]:
    """A pipeline tuning with a worker process; returns once both run a trial with its MLflow
    run, with the worker's pid."""
    process = start_python(
        _cli(store, tmp_path / "out", *PARALLEL),
        cwd=ROOT,
        env=_env(),
        new_session=True,  # its own process group, like a command in a terminal
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.3)
        study = _study(_db(store).parent)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study else []
        pids = {t.user_attrs.get("pid") for t in running if RUN_ID_ATTR in t.user_attrs}
        if len(pids) == 2:
            return process, next(pid for pid in pids if pid != process.pid)
    process.kill()
    raise AssertionError(f"no two trials ran at once: {process.communicate()[1][-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_interrupting_parallel_tuning_ends_every_trial_and_run(how, store, tmp_path):
    process, worker = _start_parallel(store, tmp_path)
    try:
        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:  # the terminal sends SIGINT to every process of the command
            os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert _gone(worker)
    study = _study(_db(store).parent)
    left = [(t.number, t.user_attrs) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    assert not left, f"trials left running: {left}; stderr: {stderr[-3000:]}"
    trial_runs = [r for r in _runs(store) if r.data.tags.get("stage") == "tune.trial"]
    assert {r.data.tags["pid"] for r in trial_runs} == {str(process.pid), str(worker)}
    assert _running(store) == []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        assert MlflowClient(tracking_uri=store).get_run(trial.user_attrs[RUN_ID_ATTR]).info.status == "KILLED"


@pytest.mark.slow
def test_a_worker_outlives_a_sigkilled_pipeline_by_seconds_and_the_next_run_reaps_it(
    store, run_cli, tmp_path
):
    process, worker = _start_parallel(store, tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(worker), "the worker went on after its pipeline was killed"
    client = MlflowClient(tracking_uri=store)
    # the worker ended its own trial; the killed process's runs are left to the next run
    ended = {r.info.status for r in _runs(store) if r.data.tags.get("pid") == str(worker)}
    assert "KILLED" in ended and "RUNNING" not in ended
    left = {r.data.tags.get("stage") for r in _runs(store) if r.info.status == "RUNNING"}
    assert left == {"pipeline", "tune", "tune.trial"}

    later = run_cli("stages=[prepare]")  # any later run of the experiment
    assert later.returncode == 0, later.stderr[-3000:]
    assert "run(s) KILLED that a dead process left running" in later.stdout
    assert _running(store) == []
    [tune_run] = [r for r in _runs(store) if r.data.tags.get("stage") == "tune"]
    assert tune_run.info.status == "KILLED"
    assert f"process {process.pid}" in client.get_run(tune_run.info.run_id).data.tags["killed.reason"]


# --- interrupted: Ctrl-C at each step of a trial's life --------------------------------------

# (where, what is patched, whether the signal comes before it acts or once it has)
TRIAL_STEPS = {
    "asked: the new trial not returned yet": (optuna.Study, "ask", "after"),
    "checking for surplus": (scheduling, "is_surplus", "before"),
    "run created: its id not returned yet": (TrialRuns, "start", "after"),
    "writing the last metrics": (MetricBuffer, "flush", "before"),
    "telling Optuna the trial completed": (optuna.Study, "tell", "before"),
    "told: the run not finished yet": (optuna.Study, "tell", "after"),
}


@pytest.mark.parametrize("step", TRIAL_STEPS)
def test_ctrl_c_at_any_step_of_a_trial_leaves_nothing_running(step, store, make_cfg, monkeypatch):
    owner, name, when = TRIAL_STEPS[step]
    real, sent = getattr(owner, name), []

    def with_ctrl_c(*args, **kwargs):  # a real SIGINT to this process, as the terminal sends it
        if not sent and when == "before":
            sent.append(name)
            os.kill(os.getpid(), signal.SIGINT)
        result = real(*args, **kwargs)
        if not sent and when == "after":
            sent.append(name)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(owner, name, with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(make_cfg("stages=[prepare,tune]", "tune.n_trials=1", "tune.epochs=2"))
    assert sent
    [trial] = _study(_db(store).parent).trials
    runs = [r for r in _runs(store) if r.data.tags.get("stage") == "tune.trial"]
    assert _running(store) == []
    if step == "told: the run not finished yet":
        [run] = runs
        assert (trial.state, run.info.status) == (TrialState.COMPLETE, "FINISHED")
        assert run.data.metrics["value"] == trial.value
    else:
        assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"]
        assert len(runs) == (0 if name in ("ask", "is_surplus") else 1)
        assert all(r.info.status == "KILLED" and r.data.tags["trial.state"] == "FAIL" for r in runs)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_reaping_a_dead_trial_still_queues_its_retry(tmp_path, monkeypatch):
    study = optuna.create_study(
        storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j")))
    )
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no process has now
    dead.set_user_attr("pid", child.pid)
    dead.set_user_attr("host", socket.gethostname())
    real = optuna_compat.fail

    def fail_then_ctrl_c(*args):
        failed = real(*args)
        os.kill(os.getpid(), signal.SIGINT)  # the trial is failed, its retry not queued yet
        return failed

    monkeypatch.setattr(optuna_compat, "fail", fail_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        reap_stale_trials(study, heartbeat_seconds=10)
    [failed] = study.get_trials(states=(TrialState.FAIL,))
    [retry] = study.get_trials(states=(TrialState.WAITING,))
    assert failed.number == dead.number and retry.user_attrs["retry_of"] == dead.number
    assert retry.system_attrs["fixed_params"] == failed.params


# --- interrupted: a registration killed halfway -----------------------------------------------

# the register stage held at one step (`decide`: the version exists, no alias yet; `tag`: the gate
# set the alias, the decision is not written yet), so that the test can interrupt it there
HELD_REGISTRATION = """
import sys, time
import pipeline.stages.register as register
import pipeline.tracking.registry as registry
step, held = sys.argv.pop(1), sys.argv.pop(1)
decide, tag = register.decide, registry.tag_version
def hold():
    open(held, "w").close()  # the test signals once this file is there
    time.sleep(120)
def held_decide(*args, **kwargs):
    hold()
    return decide(*args, **kwargs)
def held_tag(name, version, tags):
    if tags.get("registry.decision") in ("champion", "challenger"):
        hold()
    return tag(name, version, tags)
register.decide, registry.tag_version = held_decide, held_tag
if step == "decide":
    registry.tag_version = tag
else:
    register.decide = decide
from pipeline.__main__ import cli
cli()
"""


def _versions(store: str) -> dict[str, dict[str, str]]:
    found = MlflowClient(tracking_uri=store).search_model_versions(f"name = '{MODEL}'")
    return {str(v.version): dict(v.tags) for v in found}


def _holds_alias(store: str, version: str) -> bool:
    aliases = MlflowClient(tracking_uri=store).get_registered_model(MODEL).aliases
    return version in {str(v) for v in aliases.values()}


def _interrupt_registration(
    store: str, out: Path, step: str, sig: signal.Signals
) -> tuple[str, subprocess.CompletedProcess]:
    """A register stage signalled when held at `step`; returns its new version and its output."""
    before = set(_versions(store))
    stage = _cli(store, out, "stages=[register]", "candidates=[linear]")[3:]
    held = out.parent / f"{out.name}.held"
    command = [sys.executable, "-c", HELD_REGISTRATION, step, str(held), *stage]
    process = start_python(command, cwd=ROOT, env=_env())
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            new = set(_versions(store)) - before if held.exists() else set()
            if new:
                process.send_signal(sig)
                stdout, stderr = process.communicate(timeout=60)
                return min(new), subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
    raise AssertionError(f"the registration did not reach {step}: {process.communicate()[1][-3000:]}")


def _decision(store: str, version: str) -> str | None:
    return _versions(store)[version].get(DECISION)


def _left_line(version: str, decision: str) -> str:
    return (
        f"register: {MODEL} v{version} was left without a decision by an interrupted registration; "
        f"tagged {DECISION}={decision}"
    )


@pytest.mark.slow
def test_an_interrupted_registration_leaves_no_version_without_a_decision(store, make_cfg, tmp_path, capsys):
    run_pipeline(make_cfg(*QUICK))  # in this process: the registrations to interrupt are commands
    assert _decision(store, "1") == "champion"

    # SIGTERM: the version is tagged on the way out
    term, done = _interrupt_registration(store, tmp_path / "term", "decide", signal.SIGTERM)
    assert done.returncode == 130, done.stderr[-3000:]
    assert _decision(store, term) == "interrupted"
    assert _running(store) == []

    # SIGKILL: nothing can be tagged then; the next registration does it, and says so
    killed, done = _interrupt_registration(store, tmp_path / "kill", "decide", signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert _decision(store, killed) is None
    # ... here that next registration is killed too, once the gate set its alias (challenger)
    aliased, done = _interrupt_registration(store, tmp_path / "alias", "tag", signal.SIGKILL)
    assert _left_line(killed, "interrupted") in done.stdout
    assert _decision(store, killed) == "interrupted"
    assert _decision(store, aliased) is None and _holds_alias(store, aliased)

    capsys.readouterr()
    run_pipeline(make_cfg("stages=[register]", "candidates=[linear]"))
    # the alias it holds was the gate's decision
    assert _left_line(aliased, "challenger") in capsys.readouterr().out
    assert _decision(store, aliased) == "challenger"
    assert all(tags.get(DECISION) for tags in _versions(store).values())
    assert _running(store) == []
