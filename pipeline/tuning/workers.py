"""Tuning workers on this machine (`tune.n_jobs`): the pipeline's own process is worker 0 and
`n_jobs - 1` spawned processes join the study, each with a fair share of the cores. They are
started as the command starts, so their imports and warm-up overlap the data preparation."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from pipeline.shutdown import exit_now, raise_on_first_sigterm
from pipeline.startup import defer_full_collections, resume_full_collections
from pipeline.tuning import scheduling
from pipeline.tuning.objective import IDLE_POLL_SECONDS, TrialContext, census, work
from pipeline.tuning.study import StudySettings, load_study


@dataclass
class WorkerJob:
    """What a spawned worker needs to join the study and run trials (it pickles for spawn)."""

    settings: StudySettings
    ctx: TrialContext
    worker: int  # 1.. (0 is the pipeline's own process)
    threads: int  # torch threads: this worker's share of the cores
    n_trials: int
    deadline: float | None


EXIT_GRACE_SECONDS = 30.0  # to end the running trial once the pipeline's process is gone


def follow_parent(parent: int) -> None:
    """End this worker when the pipeline's process is gone: Linux's parent-death signal (it fires
    when the parent *thread* that spawned us exits), and a check of the parent pid every second
    for the rest. SIGTERM ends the running trial like Ctrl-C: FAIL in Optuna, KILLED in MLflow.
    Only the first signal does: a second one (the pid check after the parent-death signal, or
    the pipeline's own SIGTERM after a Ctrl-C) would cut short the ending of the trial."""
    import ctypes

    ending = raise_on_first_sigterm()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the pid check below still ends us

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        if not ending.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
        # an orphan never outlives its grace, whatever its trial's ending waits on
        time.sleep(EXIT_GRACE_SECONDS)
        os._exit(143)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(job: WorkerJob) -> None:
    """Entry point of a spawned worker."""
    import optuna
    import torch

    torch.set_num_threads(job.threads)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Using an existing study" lines
    if job.ctx.trial_runs is not None:
        job.ctx.trial_runs.connect()
    job.ctx.cfg.train.threads = job.threads  # this worker's fair share, whatever was configured
    work(load_study(job.settings, job.worker), job.ctx, job.n_trials, job.deadline)


def _run_spawned(job: WorkerJob, parent: int) -> None:
    defer_full_collections()  # until its first trial (see pipeline.startup)
    follow_parent(parent)
    try:
        run_job(job)
    except KeyboardInterrupt:
        exit_now(143)
    exit_now(0)  # the pipeline's process waits for this one: no teardown of the modules


def _wait_for_jobs(jobs: Any, finished: Any, parent: int) -> None:
    """Entry point of a pooled worker: pay the one-off costs of a first trial (imports, torch's
    first optimizer and backward pass) while the pipeline reads and prepares the data, then run
    the jobs it is given, one study after another (one per family), until None."""
    defer_full_collections()  # until it is warm (see pipeline.startup)
    follow_parent(parent)
    try:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the store a first run opens

        from pipeline.training.setup import warm_up

        warm_up()
        resume_full_collections()
        while (given := jobs.get()) is not None:
            number, job = given
            run_job(job)
            finished.put(number)
    except KeyboardInterrupt:
        exit_now(143)  # SIGTERM: the trial was ended on the way out
    exit_now(0)  # the pipeline's process waits for this one: no teardown of the modules


def _start(processes: list[Any]) -> None:
    """Start worker processes that ignore Ctrl-C: the terminal sends SIGINT to every process of
    the command, and the pipeline's process ends its workers itself (SIGTERM, once), so that
    none is interrupted again while it ends its trial, nor prints a traceback while it imports.
    An ignored signal stays ignored in a spawned interpreter."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        for process in processes:
            process.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


class PooledRun:
    """A job running in a pooled process: alive until the process reports the job finished (the
    process itself stays, for the next study) or dies."""

    def __init__(self, process: Any, finished: Any, number: int):
        self.process, self._finished, self._number, self._done = process, finished, number, False

    def is_alive(self) -> bool:
        # an earlier job's report may still be queued (its study ended without waiting for it)
        while not self._done and not self._finished.empty():
            self._done = self._finished.get() >= self._number
        return not self._done and self.process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        ends = None if timeout is None else time.monotonic() + timeout
        while self.is_alive() and (ends is None or time.monotonic() < ends):
            time.sleep(0.1)

    def terminate(self) -> None:
        self.process.terminate()


class WorkerPool:
    """Worker processes spawned (not forked) as the command starts, so the seconds each spends
    importing torch, MLflow and Optuna and warming up pass while the main process imports, reads
    and prepares the data, instead of delaying the study's second worker. They serve every
    study of the command (one per family) without starting again."""

    def __init__(self, count: int):
        context = multiprocessing.get_context("spawn")
        # Queues, not SimpleQueues: put() hands the (large) job to a feeder thread instead of
        # blocking until a worker still importing reads it
        self._jobs = [context.Queue() for _ in range(count)]
        self._finished = [context.Queue() for _ in range(count)]
        for queue in self._jobs + self._finished:
            queue.cancel_join_thread()  # exiting never waits on a worker that is gone
        self.processes = [
            context.Process(
                target=_wait_for_jobs,
                args=(jobs, finished, os.getpid()),
                daemon=True,
                name=f"tune-worker-{i + 1}",
            )
            for i, (jobs, finished) in enumerate(zip(self._jobs, self._finished, strict=True))
        ]
        _start(self.processes)
        self._given = 0  # jobs handed out so far: each one's number
        self._closed = False

    def __len__(self) -> int:
        return 0 if self._closed else sum(p.is_alive() for p in self.processes)

    def give(self, jobs: list[WorkerJob]) -> list[PooledRun]:
        """Hand each job to a pooled process (they are idle between studies); returns the runs."""
        given = []
        for index, job in enumerate(jobs):
            self._given += 1
            self._jobs[index].put((self._given, job))
            given.append(PooledRun(self.processes[index], self._finished[index], self._given))
        return given

    def close(self, grace: float = 1.0, timeout: float = 30.0) -> None:
        """Let the processes exit and wait until they have (one still there when this process
        exits is sent SIGTERM by multiprocessing, mid-way through its own exit). An idle one
        exits at once; one still starting up (the study ended without it), or still in a trial
        after a failure here, gets SIGTERM after `grace` seconds and ends its trial as after
        Ctrl-C, within `timeout`."""
        if self._closed:
            return
        self._closed = True
        for jobs in self._jobs:
            jobs.put(None)
        ends = time.monotonic() + grace
        for process in self.processes:
            process.join(max(0.0, ends - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout)


def start_workers(cfg: DictConfig) -> WorkerPool | None:
    """The extra tuning workers a run of `cfg` needs (tune among the stages, `tune.n_jobs` > 1),
    started now so that their start-up overlaps whatever comes before the study."""
    if "tune" not in cfg.stages or int(cfg.tune.n_jobs) <= 1:
        return None
    return WorkerPool(int(cfg.tune.n_jobs) - 1)


def _spawn(jobs: list[WorkerJob], pool: WorkerPool | None) -> list[Any]:
    if pool is not None and len(pool) >= len(jobs):
        return pool.give(jobs)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_run_spawned, args=(job, os.getpid()), daemon=True) for job in jobs]
    _start(processes)
    return processes


def run_workers(
    study: Any,
    ctx: TrialContext,
    settings: StudySettings,
    n_trials: int,
    n_jobs: int,
    deadline: float | None,
    show: Callable[[scheduling.Census], None],
    pool: WorkerPool | None = None,
    meanwhile: Callable[[], None] = lambda: None,
) -> None:
    """This process is worker 0; `n_jobs - 1` spawned processes join it (pooled ones when the
    pool has enough), so no process waits for another to start before trials run. `meanwhile`
    runs here once the others have their jobs, before this process's own first trial."""
    threads = max(1, (ctx.cfg.train.threads or os.cpu_count() or 1) // n_jobs)
    jobs = [WorkerJob(settings, ctx, i, threads, n_trials, deadline) for i in range(1, n_jobs)]
    workers = _spawn(jobs, pool)
    own = copy.deepcopy(ctx)
    own.cfg.train.threads = threads
    try:
        meanwhile()
        work(study, own, n_trials, deadline, show)
        while any(p.is_alive() for p in workers):
            now = census(study, ctx.since)
            show(now)
            if now.done >= n_trials and now.running == 0:
                # the study is complete: a worker still starting up would only find that out and
                # exit, so do not wait for it (it ends by itself, or with this process)
                return
            time.sleep(IDLE_POLL_SECONDS)
    except KeyboardInterrupt:
        # SIGTERM the workers, and give them time to end their trials (FAIL, runs KILLED)
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(timeout=30)
        raise
    for process in workers:
        process.join()
