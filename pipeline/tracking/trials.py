"""The MLflow side of tuning trials: one run per trial nested under the study's tune run, ended with
the trial's state, and the runs of a dead process ended KILLED. Plain data, so tuning workers in
other processes receive it."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.tracking.buffer import MetricBuffer
from pipeline.tracking.recorder import log_values
from pipeline.tracking.store import end_killed

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)


@dataclass
class TrialRuns:
    tracking_uri: str
    experiment_id: str
    tune_run_id: str
    family: str = "network"

    def connect(self) -> None:
        """Point this process (a spawned worker) at the store."""
        mlflow.set_tracking_uri(self.tracking_uri)

    def start(self, number: int, params: dict[str, Any], retry_of: int | None = None) -> str:
        client = MlflowClient()
        tags = {
            "mlflow.parentRunId": self.tune_run_id,
            "stage": "tune.trial",
            "model.family": self.family,
            "trial.number": str(number),
            "trial.state": "RUNNING",
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
        }
        if retry_of is not None:
            tags["trial.retry_of"] = str(retry_of)
        run = client.create_run(self.experiment_id, run_name=f"trial-{number:03d}", tags=tags)
        log_values(run.info.run_id, params=params, client=client)
        return run.info.run_id

    def epochs(self, run_id: str) -> MetricBuffer:
        return MetricBuffer(run_id, flush_seconds=30.0)

    def finish(self, run_id: str, state: str, metrics: dict[str, float], error: str | None = None) -> None:
        log_values(run_id, metrics=metrics)
        end_trial_run(run_id, "FAILED" if state == "FAIL" else "FINISHED", state, error)

    def end_open_runs_of_this_process(self, error: str) -> None:
        """End KILLED this process's trial runs still open under the tune run (after an interrupt:
        one whose start was cut short has no id anywhere)."""
        try:
            runs = open_runs_of(
                MlflowClient(), [self.experiment_id], os.getpid(), socket.gethostname(), self.tune_run_id
            )
        except Exception as exc:  # noqa: BLE001 - the next run ends them (their process is gone)
            log.warning("could not look for open trial runs: %s", exc)
            return
        for run in runs:
            end_trial_run(run.info.run_id, "KILLED", "FAIL", error)


def end_trial_run(run_id: str, status: str, state: str, error: str | None = None) -> None:
    """End a trial's run with Optuna's state as a tag; a lost run must not stop the study."""
    client = MlflowClient()
    try:
        client.set_tag(run_id, "trial.state", state)
        if error:
            client.set_tag(run_id, "error", error[:5000])
        client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not end MLflow run %s: %s", run_id, exc)


def open_runs_of(
    client: MlflowClient, experiment_ids: list[str], pid: int, host: str, parent_run_id: str | None = None
) -> list[Run]:
    """The RUNNING runs of the process `pid` on `host` (the children of one run, if given)."""
    under = f" and tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id else ""
    return client.search_runs(
        experiment_ids,
        f"attributes.status = 'RUNNING' and tags.pid = '{pid}' and tags.host = '{host}'{under}",
        max_results=100,
    )


def end_runs_of_dead_process(pid: int, host: str) -> list[str]:
    """End KILLED the RUNNING runs a dead process (pid on host) owned, found from another process
    (a worker that reaped one of its trials); returns their ids."""
    client = MlflowClient()
    runs = open_runs_of(client, [e.experiment_id for e in client.search_experiments()], pid, host)
    for run in runs:
        end_killed(client, run.info.run_id, f"process {pid} on {host} died while it ran")
    return [r.info.run_id for r in runs]
