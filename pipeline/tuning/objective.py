"""One trial, and the loop that asks for trials: sample a point, train it while reporting the
validation objective every epoch (so the pruner can stop it), record how it ended in Optuna and in
its MLflow run. Every worker, in this process or another, runs `work`."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from pipeline.metrics import Objective
from pipeline.shutdown import interrupts_held
from pipeline.tuning import optuna_compat, scheduling
from pipeline.tuning.liveness import RUN_ID_ATTR, Heartbeat, reap_stale_trials
from pipeline.tuning.space import Dimension, apply_values, suggest

log = logging.getLogger(__name__)


@dataclass
class TrialContext:
    """What running one trial needs besides the study."""

    family: str  # the model family the study tunes
    cfg: DictConfig  # the settings a trial changes (pipeline.families.SETTINGS_SECTIONS)
    data: Any  # TrainingData
    objective: Objective
    dimensions: list[Dimension]
    epochs: int
    heartbeat_seconds: int
    trial_runs: Any = None  # tracking.trials.TrialRuns, or None when nothing is tracked
    since: int = 0  # the first trial number of this invocation


def _train(trial: optuna.Trial, ctx: TrialContext, values: dict[str, Any], on_epoch: Callable) -> float:
    from pipeline.families import family

    trained = family(ctx.family).fit(
        apply_values(ctx.cfg, values), ctx.data, ctx.objective, epochs=ctx.epochs, on_step=on_epoch
    )
    return trained.best_score


@dataclass
class _Reached:
    """How far a trial got: what an interrupt, wherever it lands, leaves to be ended."""

    trial: optuna.Trial | None = None
    run_id: str | None = None
    buffer: Any = None  # the run's MetricBuffer
    run_ended: bool = False


def run_next_trial(study: optuna.Study, ctx: TrialContext, n_trials: int) -> None:
    """Ask for a trial and run it (one beyond the total is failed at once as surplus). Ctrl-C or
    SIGTERM, wherever it lands from the ask to the end of the trial's run, ends what the trial
    reached: FAIL in Optuna unless it was told already, its MLflow run KILLED unless ended."""
    reached = _Reached()
    try:
        with interrupts_held():  # once asked for, the trial is this process's to end
            reached.trial = study.ask()
        if scheduling.is_surplus(
            study.get_trials(deepcopy=False), reached.trial.number, n_trials, time.time()
        ):
            reached.trial.set_user_attr("surplus", True)
            study.tell(reached.trial, state=TrialState.FAIL)
            return
        _run_trial(study, ctx, reached)
    except KeyboardInterrupt:
        if reached.trial is not None:
            _end_interrupted(study, ctx, reached)
        raise


def _run_trial(study: optuna.Study, ctx: TrialContext, reached: _Reached) -> None:
    """Train one trial, report every epoch, and record how it ended in Optuna and MLflow."""
    trial = reached.trial
    for key, value in (("pid", os.getpid()), ("host", socket.gethostname()), ("heartbeat", time.time())):
        trial.set_user_attr(key, value)
    metric_key = f"val_{ctx.objective.metric}"

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        if reached.buffer is not None:
            reached.buffer.add(epoch, record)
        trial.report(record[metric_key], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    try:
        # sampling, the MLflow run and the config copy fail like training does: the trial is
        # recorded FAIL instead of being left RUNNING
        values = suggest(trial, ctx.dimensions)
        if ctx.trial_runs is not None:
            reached.run_id = ctx.trial_runs.start(trial.number, values, trial.user_attrs.get("retry_of"))
            trial.set_user_attr(RUN_ID_ATTR, reached.run_id)
            reached.buffer = ctx.trial_runs.epochs(reached.run_id)
        with Heartbeat(study, trial, ctx.heartbeat_seconds):
            state, value, error = TrialState.COMPLETE, _train(trial, ctx, values, on_epoch), None
    except optuna.TrialPruned:
        state, value, error = TrialState.PRUNED, None, None
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded and the study goes on
        state, value, error = TrialState.FAIL, None, f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", error[:2000])
        log.warning("trial %d failed: %s", trial.number, error)
    if reached.buffer is not None:
        reached.buffer.flush()
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    if reached.run_id:
        _finish_run(ctx, reached.run_id, optuna_compat.reread(study, trial), state, error)
    reached.run_ended = True


def _end_interrupted(study: optuna.Study, ctx: TrialContext, reached: _Reached) -> None:
    """The ending of an interrupted trial, from wherever it was: Optuna first (the study's
    record), then its metrics and its run. A trial told already keeps its state and its run is
    finished with it; a run whose id was not returned yet is found by this process's pid."""
    frozen = optuna_compat.reread(study, reached.trial)
    if frozen.state == TrialState.RUNNING:
        reached.trial.set_user_attr("interrupted", True)
        optuna_compat.fail(study, frozen)  # False: another worker reaped it first, as good
    if reached.buffer is not None:
        try:
            reached.buffer.flush()
        except Exception as exc:  # noqa: BLE001 - the metrics are lost, the run still ends
            log.warning("could not write the last metrics of trial %d: %s", frozen.number, exc)
    if ctx.trial_runs is None or reached.run_ended:
        return
    if reached.run_id and frozen.state != TrialState.RUNNING:
        _finish_run(ctx, reached.run_id, frozen, frozen.state, frozen.user_attrs.get("error"))
    ctx.trial_runs.end_open_runs_of_this_process("interrupted")


def _finish_run(ctx: TrialContext, run_id: str, frozen: Any, state: TrialState, error: str | None) -> None:
    # `value` only for COMPLETE trials: Optuna gives a pruned trial its last reported value,
    # which is not comparable with the value of a trial that trained to the end
    final = {"value": frozen.value} if state == TrialState.COMPLETE else {}
    if state == TrialState.PRUNED and frozen.intermediate_values:
        final["last_reported"] = frozen.intermediate_values[max(frozen.intermediate_values)]
    ctx.trial_runs.finish(run_id, state.name, final, error)


def census(study: optuna.Study, since: int = 0) -> scheduling.Census:
    return scheduling.census(study.get_trials(deepcopy=False), since, time.time())


# how often a worker with no trial left looks whether the others' last trials have ended (or
# one failed and needs a redo): the search ends that much after its last trial at most
IDLE_POLL_SECONDS = 0.1


def work(
    study: optuna.Study,
    ctx: TrialContext,
    n_trials: int,
    deadline: float | None,
    progress: Callable[[scheduling.Census], None] | None = None,
) -> None:
    """Ask for trials until the study holds `n_trials` COMPLETE+PRUNED ones (counting what other
    workers run), the deadline passes, or the last `n_trials` trials all raised."""
    while deadline is None or time.time() < deadline:
        now = census(study, ctx.since)
        if progress is not None:
            progress(now)
        if scheduling.should_stop(now, n_trials):
            return
        if scheduling.all_claimed(now, n_trials):
            if reap_stale_trials(study, ctx.heartbeat_seconds) == 0:
                time.sleep(IDLE_POLL_SECONDS)  # others are finishing the last trials
            continue
        run_next_trial(study, ctx, n_trials)
