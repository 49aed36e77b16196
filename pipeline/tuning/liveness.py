"""Trials of dead processes: a heartbeat marks a running trial alive, a trial whose process died
(same host) or whose heartbeat stopped is failed, its MLflow run ended KILLED, and it is retried
once as a new trial with the same parameters."""

from __future__ import annotations

import logging
import socket
import threading
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.shutdown import interrupts_held
from pipeline.tracking.provenance import process_alive
from pipeline.tuning import optuna_compat

log = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose process died: its run ends KILLED and it is retried once, as a new trial."""
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        from pipeline.tracking.trials import end_runs_of_dead_process, end_trial_run

        end_trial_run(run_id, "KILLED", "FAIL", "the process running this trial died")
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if pid is not None and host:
            try:
                end_runs_of_dead_process(int(pid), str(host))
            except Exception as exc:  # noqa: BLE001 - tracking trouble must not stop the study
                log.warning("could not end the runs of dead process %s: %s", pid, exc)
    if "retry_of" not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        log.warning("trial %d was left running by a dead process: retrying it", trial.number)


def _is_dead(trial: FrozenTrial, host: str, now: float, grace: float) -> bool:
    attrs = trial.user_attrs
    if "pid" not in attrs:
        # killed between ask() and recording its process: stale once the grace period passed
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > grace
    return (attrs.get("host") == host and not process_alive(int(attrs["pid"]))) or (
        now - float(attrs.get("heartbeat", now)) > grace
    )


def reap_stale_trials(study: optuna.Study, heartbeat_seconds: int) -> int:
    """Fail RUNNING trials whose process is gone (same host) or whose heartbeat stopped."""
    if optuna_compat.is_database(study):
        before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        optuna.storages.fail_stale_trials(study)
        return len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before
    host, now, reaped = socket.gethostname(), time.time(), 0
    grace = max(60.0, 6.0 * heartbeat_seconds)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_dead(trial, host, now, grace):
            continue
        with interrupts_held():  # a trial failed here is retried here: no other worker will
            if optuna_compat.fail(study, trial):
                retry_stale_trial(study, optuna_compat.reread(study, trial))
                reaped += 1
    return reaped


class Heartbeat:
    """Marks a trial alive every few seconds from a background thread, so a long epoch is not
    mistaken for a dead process."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, seconds: int):
        self.study, self.trial, self.seconds = study, trial, seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.seconds):
            try:
                optuna_compat.beat(self.study, self.trial, time.time())
            except Exception:  # noqa: BLE001 - the trial may have just finished
                return

    def __enter__(self) -> Heartbeat:
        if optuna_compat.is_database(self.study):
            optuna_compat.beat(self.study, self.trial, time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
