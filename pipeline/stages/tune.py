"""Stage tune: an Optuna study over the configured search space. Each trial trains on the training
split and reports the validation objective every epoch (so the pruner can stop it early); one
MLflow run per trial nests under the study's one tune run. The study is persisted, so running
the stage again resumes toward the total `tune.n_trials`; `tune.n_jobs` worker processes (or
workers on other machines, through a database) share it."""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics import Objective
from pipeline.search_space import (
    Dimension,
    apply_values,
    parse_space,
    space_digest,
    suggest,
    values_from_params,
)

log = logging.getLogger(__name__)
RUN_ID_ATTR, PARENT_RUN_ATTR = "mlflow_run_id", "mlflow_tune_run_id"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneResult:
    best_values: dict[str, Any]
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    best_run_id: str | None
    study_name: str
    storage: str
    counts: dict[str, int] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tune.json").write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, directory: Path) -> TuneResult:
        return cls(**json.loads((directory / "tune.json").read_text()))


@dataclass
class StudySettings:
    """What a worker process needs to join the study (plain data, so it pickles for spawn)."""

    study_name: str
    storage: str
    direction: str
    sampler: str
    pruner: str
    seed: int
    epochs: int
    heartbeat_seconds: int
    pruner_startup_trials: int
    pruner_warmup_epochs: int | None
    pruner_reduction_factor: int


def storage_location(tune_cfg: DictConfig, store_dir: Path | None) -> str:
    """`tune.storage`, else $OPTUNA_STORAGE, else a journal file next to the local MLflow store
    (or in the working directory)."""
    if tune_cfg.storage:
        return str(tune_cfg.storage)
    if os.environ.get("OPTUNA_STORAGE"):  # keeps credentials out of the command line
        return os.environ["OPTUNA_STORAGE"]
    return str((store_dir or Path.cwd()) / "optuna.journal")


def make_storage(location: str, heartbeat_seconds: int) -> optuna.storages.BaseStorage:
    if "://" in location:
        return optuna.storages.RDBStorage(
            location,
            heartbeat_interval=heartbeat_seconds,
            grace_period=heartbeat_seconds * 3,
            failed_trial_callback=retry_stale_trial,
        )
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    Path(location).parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(location, lock_obj=JournalFileOpenLock(location))
    return optuna.storages.JournalStorage(backend)


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """Optuna's pruners judge the reported objective in the study's direction. With the default
    settings both train about half the epochs of no pruning on digits, for a best value within
    noise of it (bench/tuning.py)."""
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=settings.epochs,
            reduction_factor=settings.pruner_reduction_factor,
        )
    if settings.pruner == "median":
        warmup = settings.pruner_warmup_epochs
        if warmup is None:
            warmup = max(1, settings.epochs // 10)  # the first epochs say little about the last
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.pruner_startup_trials, n_warmup_steps=warmup
        )
    return optuna.pruners.NopPruner()


def default_study_name(cfg: DictConfig, data_digest: str, digest: str) -> str:
    return f"{cfg.tracking.experiment}-{cfg.data.name}-{data_digest[:8]}-{cfg.model.name}-{digest}"


def search_digest(dimensions: list[Dimension], objective: Objective) -> str:
    return space_digest(dimensions + [Dimension(objective.metric, objective.direction)])  # type: ignore[list-item]


def open_study(
    cfg: DictConfig, data_digest: str, objective: Objective, store_dir: Path | None, worker: int = 0
) -> tuple[optuna.Study, StudySettings]:
    """Create or load the study; refuse one whose search space or objective changed."""
    dimensions = parse_space(OmegaConf.to_container(cfg.tune.space, resolve=True), cfg)
    digest = search_digest(dimensions, objective)
    settings = StudySettings(
        study_name=cfg.tune.study_name or default_study_name(cfg, data_digest, digest),
        storage=storage_location(cfg.tune, store_dir),
        direction=objective.direction,
        sampler=cfg.tune.sampler,
        pruner=cfg.tune.pruner,
        seed=int(cfg.seed),
        epochs=int(cfg.tune.epochs),
        heartbeat_seconds=int(cfg.tune.heartbeat_seconds),
        pruner_startup_trials=int(cfg.tune.pruner_startup_trials),
        pruner_warmup_epochs=cfg.tune.pruner_warmup_epochs,
        pruner_reduction_factor=int(cfg.tune.pruner_reduction_factor),
    )
    study = load_study(settings, worker)
    recorded = study.user_attrs.get("search_digest")
    if recorded is None:
        study.set_user_attr("search_digest", digest)
        study.set_user_attr("objective", f"{objective.metric}/{objective.direction}")
    elif recorded != digest:
        raise ConfigError(
            f"study {settings.study_name!r} was created with another search space or objective "
            f"({study.user_attrs.get('objective')}); choose a new tune.study_name to start a "
            "new study"
        )
    return study, settings


def load_study(settings: StudySettings, worker: int = 0) -> optuna.Study:
    from pipeline.tracking import mask

    try:
        return optuna.create_study(
            study_name=settings.study_name,
            storage=make_storage(settings.storage, settings.heartbeat_seconds),
            direction=settings.direction,
            sampler=_sampler(settings.sampler, settings.seed + worker),
            pruner=_pruner(settings),
            load_if_exists=True,
        )
    except ValueError as exc:
        if "direction" in str(exc).lower():
            raise ConfigError(
                f"study {settings.study_name!r} optimizes in another direction; choose a new tune.study_name"
            ) from None
        raise
    except Exception as exc:
        if "OperationalError" in type(exc).__name__ or "connect" in str(exc).lower():
            raise PipelineError(
                f"cannot open the study storage {mask(settings.storage)}: {str(exc).splitlines()[0]}"
            ) from None
        raise


# --- trials and their MLflow runs -------------------------------------------------------------


def _end_trial_run(trial: FrozenTrial, status: str, state: str, error: str | None = None) -> None:
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.set_tag(run_id, "trial.state", state)
        if error:
            client.set_tag(run_id, "error", error[:5000])
        client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - a lost run must not stop the study
        log.warning("could not end MLflow run %s of trial %d: %s", run_id, trial.number, exc)


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose process died: its run ends KILLED and it is retried once, as a new trial."""
    _end_trial_run(trial, "KILLED", "FAIL", "the process running this trial died")
    pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
    if pid is not None and host and trial.user_attrs.get(RUN_ID_ATTR):
        from pipeline.tracking import end_runs_of_dead_process

        try:
            end_runs_of_dead_process(int(pid), str(host))
        except Exception as exc:  # noqa: BLE001 - tracking trouble must not stop the study
            log.warning("could not end the runs of dead process %s: %s", pid, exc)
    if "retry_of" not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        log.warning("trial %d was left running by a dead process: retrying it", trial.number)


def reap_stale_trials(study: optuna.Study, heartbeat_seconds: int) -> int:
    """Fail RUNNING trials whose process is gone (same host) or whose heartbeat stopped."""
    storage = study._storage
    if isinstance(storage, optuna.storages.RDBStorage):
        before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        optuna.storages.fail_stale_trials(study)
        return len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before
    from pipeline.tracking import process_alive

    host, now, reaped = socket.gethostname(), time.time(), 0
    grace = max(60.0, 6.0 * heartbeat_seconds)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if "pid" not in attrs:
            # killed between ask() and recording its process: stale once the grace period passed
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            dead = now - started > grace
        else:
            dead = (attrs.get("host") == host and not process_alive(int(attrs["pid"]))) or (
                now - float(attrs.get("heartbeat", now)) > grace
            )
        if not dead:
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # noqa: BLE001 - another worker reaped it first
            continue
        retry_stale_trial(study, study._storage.get_trial(trial._trial_id))
        reaped += 1
    return reaped


class _Heartbeat:
    """Marks a trial alive every few seconds from a background thread, so a long epoch is not
    mistaken for a dead process."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, seconds: int):
        self.storage, self.trial_id, self.seconds = study._storage, trial._trial_id, seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.seconds):
            try:
                if isinstance(self.storage, optuna.storages.RDBStorage):
                    self.storage.record_heartbeat(self.trial_id)
                else:
                    self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # noqa: BLE001 - the trial may have just finished
                return

    def __enter__(self) -> _Heartbeat:
        if isinstance(self.storage, optuna.storages.RDBStorage):
            self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


@dataclass
class TrialContext:
    """What running one trial needs besides the study."""

    cfg: DictConfig
    data: Any  # TrainingData
    objective: Objective
    dimensions: list[Dimension]
    epochs: int
    heartbeat_seconds: int
    experiment_id: str | None = None
    tune_run_id: str | None = None
    since: int = 0  # the first trial number of this invocation


def _start_trial_run(ctx: TrialContext, trial: optuna.Trial, values: dict[str, Any]) -> str | None:
    if ctx.tune_run_id is None:
        return None
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import log_values

    client = MlflowClient()
    tags = {
        "mlflow.parentRunId": ctx.tune_run_id,
        "stage": "tune.trial",
        "trial.number": str(trial.number),
        "trial.state": "RUNNING",
        "pid": str(os.getpid()),
        "host": socket.gethostname(),
    }
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        tags["trial.retry_of"] = str(retry_of)
    run = client.create_run(ctx.experiment_id, run_name=f"trial-{trial.number:03d}", tags=tags)
    log_values(run.info.run_id, params={k: v for k, v in values.items()}, client=client)
    return run.info.run_id


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext) -> TrialState:
    """Train one trial, report every epoch, and record how it ended in Optuna and MLflow."""
    from pipeline.training import fit

    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("heartbeat", time.time())
    run_id, buffer = None, None
    metric_key = f"val_{ctx.objective.metric}"

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        if buffer is not None:
            buffer.add(epoch, record)
        trial.report(record[metric_key], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    try:
        # sampling, the MLflow run and the config copy fail like training does: the trial is
        # recorded FAIL instead of being left RUNNING
        values = suggest(trial, ctx.dimensions)
        run_id = _start_trial_run(ctx, trial, values)
        if run_id:
            from pipeline.tracking import MetricBuffer

            trial.set_user_attr(RUN_ID_ATTR, run_id)
            buffer = MetricBuffer(run_id, flush_seconds=30.0)
        trial_cfg = apply_values(ctx.cfg, values)
        with _Heartbeat(study, trial, ctx.heartbeat_seconds):
            result = fit(
                trial_cfg.train,
                trial_cfg.model,
                ctx.data,
                ctx.objective,
                int(ctx.cfg.seed),
                epochs=ctx.epochs,
                on_epoch=on_epoch,
            )
        state, value, error = TrialState.COMPLETE, result.best_score, None
    except optuna.TrialPruned:
        state, value, error = TrialState.PRUNED, None, None
    except KeyboardInterrupt:
        if buffer is not None:
            buffer.flush()
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        _end_trial_run(study._storage.get_trial(trial._trial_id), "KILLED", "FAIL", "interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded and the study goes on
        state, value, error = TrialState.FAIL, None, f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", error[:2000])
        log.warning("trial %d failed: %s", trial.number, error)
    if buffer is not None:
        buffer.flush()
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    frozen = study._storage.get_trial(trial._trial_id)
    if run_id:
        from pipeline.tracking import log_values

        # `value` only for COMPLETE trials: Optuna gives a pruned trial its last reported value,
        # which is not comparable with the value of a trial that trained to the end
        final = {"value": frozen.value} if state == TrialState.COMPLETE else {}
        if state == TrialState.PRUNED and frozen.intermediate_values:
            final["last_reported"] = frozen.intermediate_values[max(frozen.intermediate_values)]
        log_values(run_id, metrics=final)
        status = "FAILED" if state == TrialState.FAIL else "FINISHED"
        _end_trial_run(frozen, status, state.name, error)
    return state


@dataclass
class Census:
    done: int
    running: int
    waiting: int
    failed: int  # trials that raised, since this invocation started
    failing: int  # of those, how many in a row ended the study's latest finished trials


def _awaiting_retry(trials: list[FrozenTrial]) -> set[int]:
    """Trials whose process died, failed a moment ago, whose retry is not queued yet. They keep
    their place in the total, so no worker starts a new trial between the failing and the
    queueing of the retry (which would leave the retry surplus)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    recent = time.time() - 60
    return {
        t.number
        for t in trials
        if t.state == TrialState.FAIL
        and "pid" in t.user_attrs
        and t.number not in retried
        and not any(t.user_attrs.get(k) for k in ("error", "surplus", "interrupted"))
        and "retry_of" not in t.user_attrs
        and t.datetime_complete is not None
        and t.datetime_complete.timestamp() > recent
    }


def census(study: optuna.Study, since: int = 0) -> Census:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    counts[TrialState.RUNNING] += len(_awaiting_retry(trials))
    recent = sorted(
        (
            t
            for t in trials
            if t.number >= since and t.state.is_finished() and not t.user_attrs.get("surplus")
        ),
        key=lambda t: t.number,
    )
    raised = [
        t.state == TrialState.FAIL and bool(t.user_attrs.get("error"))
        for t in recent
        if t.state in DONE or t.user_attrs.get("error")
    ]  # not the trials of dead processes
    failing = next((i for i, error in enumerate(reversed(raised)) if not error), len(raised))
    return Census(
        counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        counts[TrialState.RUNNING],
        counts[TrialState.WAITING],
        sum(raised),
        failing,
    )


def _is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """After a race between workers, a trial beyond the total is not run."""
    trials = study.get_trials(deepcopy=False)
    holding = _awaiting_retry(trials)
    counted = (*DONE, TrialState.RUNNING, TrialState.WAITING)
    earlier = [t for t in trials if t.number < trial.number and (t.state in counted or t.number in holding)]
    return len(earlier) >= n_trials


def work(
    study: optuna.Study, ctx: TrialContext, n_trials: int, deadline: float | None, progress: Any = None
) -> None:
    """Ask for trials until the study holds `n_trials` COMPLETE+PRUNED ones (counting what other
    workers run), the deadline passes, or the last `n_trials` trials all raised (a search space
    whose every point fails; a trial failing now and then does not stop the study)."""
    while True:
        if deadline is not None and time.time() >= deadline:
            return
        now = census(study, ctx.since)
        if progress is not None:
            progress(now)
        if now.done >= n_trials or now.failing >= n_trials:
            return
        if now.waiting == 0 and now.done + now.running >= n_trials:
            if reap_stale_trials(study, ctx.heartbeat_seconds) == 0:
                time.sleep(0.5)  # others are finishing the last trials; one may fail: a redo
            continue
        trial = study.ask()
        if _is_surplus(study, trial, n_trials):
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        run_trial(study, trial, ctx)


def _worker_main(
    settings: StudySettings,
    ctx: TrialContext,
    worker: int,
    threads: int,
    tracking_uri: str | None,
    n_trials: int,
    deadline: float | None,
) -> None:
    """Entry point of a spawned worker process."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    ctx.cfg.train.threads = threads  # this worker's fair share of the cores, whatever was configured
    work(load_study(settings, worker), ctx, n_trials, deadline)


def _waiting_worker(jobs: Any) -> None:
    """Entry point of a pooled worker: pay the one-off costs of a first trial (imports, torch's
    first optimizer and backward pass), then wait for a study to join (or None: the pipeline ended
    before tuning). All of it happens while the pipeline reads and prepares the data."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the store a first run opens

    from pipeline.training import warm_up

    warm_up()
    job = jobs.get()
    if job is not None:
        _worker_main(*job)


class WorkerPool:
    """Worker processes spawned (not forked) as the command starts, so the seconds each spends
    importing torch, MLflow and Optuna and warming up pass while the main process imports, reads
    and prepares the data, instead of delaying the study's second worker."""

    def __init__(self, count: int):
        context = multiprocessing.get_context("spawn")
        # a Queue, not a SimpleQueue: put() hands the (large) job to a feeder thread instead of
        # blocking until a worker still importing reads it
        self._jobs = [context.Queue() for _ in range(count)]
        for jobs in self._jobs:
            jobs.cancel_join_thread()  # exiting never waits on a worker that is gone
        self.processes = [
            context.Process(target=_waiting_worker, args=(jobs,), daemon=True, name=f"tune-worker-{i + 1}")
            for i, jobs in enumerate(self._jobs)
        ]
        for process in self.processes:
            process.start()
        self._given = 0

    def __len__(self) -> int:
        return len(self.processes) - self._given

    def give(self, jobs: list[tuple]) -> list[Any]:
        """Hand each job (the arguments of `_worker_main`) to a waiting process; returns them."""
        given = []
        for job in jobs:
            self._jobs[self._given].put(job)
            given.append(self.processes[self._given])
            self._given += 1
        return given

    def close(self) -> None:
        """Let the processes that got no job exit."""
        for jobs in self._jobs[self._given :]:
            jobs.put(None)
        self._given = len(self._jobs)


def start_workers(cfg: DictConfig) -> WorkerPool | None:
    """The extra tuning workers a run of `cfg` needs (tune among the stages, `tune.n_jobs` > 1),
    started now so that their start-up overlaps whatever comes before the study."""
    if "tune" not in cfg.stages or int(cfg.tune.n_jobs) <= 1:
        return None
    return WorkerPool(int(cfg.tune.n_jobs) - 1)


def tune(
    cfg: DictConfig,
    data: Any,
    objective: Objective,
    study: optuna.Study,
    settings: StudySettings,
    experiment_id: str | None = None,
    tune_run_id: str | None = None,
    progress: bool = False,
    pool: WorkerPool | None = None,
) -> TuneResult:
    """Run the study to `tune.n_trials` COMPLETE+PRUNED trials and return the best point.
    With `tune.n_jobs` > 1 the extra workers come from `pool` when it has them (already started)."""
    n_trials, n_jobs = int(cfg.tune.n_trials), int(cfg.tune.n_jobs)
    deadline = time.time() + cfg.tune.timeout if cfg.tune.timeout else None
    if tune_run_id is not None:
        study.set_user_attr(PARENT_RUN_ATTR, tune_run_id)
    since = len(study.get_trials(deepcopy=False))
    reap_stale_trials(study, settings.heartbeat_seconds)
    dimensions = parse_space(OmegaConf.to_container(cfg.tune.space, resolve=True), cfg)
    ctx = TrialContext(
        cfg,
        data,
        objective,
        dimensions,
        settings.epochs,
        settings.heartbeat_seconds,
        experiment_id,
        tune_run_id,
        since,
    )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, desc="tune", unit="trial", leave=False, dynamic_ncols=True)

    def show(now: Census) -> None:
        if bar is not None:
            bar.n = min(now.done, n_trials)
            bar.set_postfix(running=now.running, failed=now.failed, refresh=False)
            bar.refresh()

    try:
        if n_jobs == 1:
            work(study, ctx, n_trials, deadline, show)
        else:
            _run_workers(study, ctx, settings, n_trials, n_jobs, deadline, show, pool)
            # finish here what dead workers left undone (their trials were reaped and re-queued)
            work(study, ctx, n_trials, deadline, show)
    finally:
        if bar is not None:
            bar.close()
    now = census(study, since)
    if now.done < n_trials and now.failing >= n_trials:
        log.warning("stopped tuning: the last %d trials all failed", now.failing)
    return summarize(study, dimensions, settings, n_trials)


def _run_workers(
    study: optuna.Study,
    ctx: TrialContext,
    settings: StudySettings,
    n_trials: int,
    n_jobs: int,
    deadline: float | None,
    show: Any,
    pool: WorkerPool | None = None,
) -> None:
    """This process is worker 0; `n_jobs - 1` spawned processes join it (pooled ones when the
    pool has enough), each with a fair share of the cores, so no process waits for another to
    start before trials run."""
    import mlflow

    threads = max(1, (ctx.cfg.train.threads or os.cpu_count() or 1) // n_jobs)
    uri = mlflow.get_tracking_uri() if ctx.tune_run_id else None
    jobs = [(settings, ctx, i, threads, uri, n_trials, deadline) for i in range(1, n_jobs)]
    if pool is not None and len(pool) >= len(jobs):
        workers = pool.give(jobs)
    else:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_worker_main, args=job, daemon=True) for job in jobs]
        for process in workers:
            process.start()
    own = copy.deepcopy(ctx)
    own.cfg.train.threads = threads
    try:
        work(study, own, n_trials, deadline, show)
        while any(p.is_alive() for p in workers):
            now = census(study, ctx.since)
            show(now)
            if now.done >= n_trials and now.running == 0:
                # the study is complete: a worker still starting up would only find that out and
                # exit, so do not wait for it (it ends by itself, or with this process)
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        for process in workers:
            process.terminate()
        raise
    for process in workers:
        process.join()


def summarize(
    study: optuna.Study, dimensions: list[Dimension], settings: StudySettings, n_trials: int
) -> TuneResult:
    from pipeline.tracking import mask

    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials if not t.user_attrs.get("surplus"))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        errors = Counter(
            t.user_attrs.get("error", "unknown error")
            for t in trials
            if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")
        )
        summary = "; ".join(f"{n}x {e}" for e, n in errors.most_common(3)) or "no trial completed"
        raise PipelineError(f"tuning failed: no trial completed ({dict(counts)}): {summary}")
    best = study.best_trial
    return TuneResult(
        best_values=values_from_params(best.params, dimensions),
        best_params=dict(best.params),
        best_value=float(best.value),
        best_trial=best.number,
        best_run_id=best.user_attrs.get(RUN_ID_ATTR),
        study_name=settings.study_name,
        storage=mask(settings.storage),
        counts=dict(counts),
    )


def trials_frame(study: optuna.Study) -> Any:
    return study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))


def study_figures(study: optuna.Study) -> dict[str, str]:
    """Optuna's plots as standalone HTML pages, which the MLflow UI shows in its artifact view."""
    from optuna import visualization as vis

    plots = {
        "optimization_history.html": vis.plot_optimization_history,
        "param_importances.html": vis.plot_param_importances,
        "parallel_coordinate.html": vis.plot_parallel_coordinate,
        "intermediate_values.html": vis.plot_intermediate_values,
    }
    pages = {}
    for name, plot in plots.items():
        try:
            pages[name] = plot(study).to_html(include_plotlyjs="cdn", full_html=True)
        except Exception as exc:  # noqa: BLE001 - e.g. importances need two finished trials
            log.info("skipped %s: %s", name, exc)
    return pages
