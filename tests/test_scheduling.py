"""The rules for sharing one study between workers, on plain lists of trials (no storage): what
counts toward the total, a trial of a dead process awaiting its retry, retrying once, surplus
trials after a race, and stopping at exactly `tune.n_trials`."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

from optuna.trial import TrialState

from pipeline.tuning.scheduling import (
    RETRY_WINDOW_SECONDS,
    all_claimed,
    awaiting_retry,
    census,
    is_surplus,
    should_stop,
)

NOW = datetime(2026, 12, 1, 12, 0, 0)


def trial(number: int, state: TrialState, ago: float | None = 1.0, **attrs) -> SimpleNamespace:
    finished = state.is_finished()
    return SimpleNamespace(
        number=number,
        state=state,
        user_attrs=attrs,
        datetime_complete=NOW - timedelta(seconds=ago) if finished and ago is not None else None,
    )


def died(number: int, ago: float = 1.0, **attrs) -> SimpleNamespace:
    """A trial whose process died: reaped to FAIL, with the process that ran it, no error."""
    return trial(number, TrialState.FAIL, ago, pid=123, **attrs)


T = NOW.timestamp()


def test_a_dead_trial_awaits_its_retry_until_the_retry_is_queued():
    trials = [trial(0, TrialState.COMPLETE), died(1)]
    assert awaiting_retry(trials, T) == {1}
    queued = [*trials, trial(2, TrialState.WAITING, retry_of=1)]
    assert awaiting_retry(queued, T) == set()


def test_only_dead_processes_await_a_retry_and_only_once():
    trials = [
        trial(0, TrialState.FAIL, error="TrainingDiverged: ..."),  # raised: not retried
        trial(1, TrialState.FAIL, pid=5, surplus=True),  # asked beyond the total, never run
        trial(2, TrialState.FAIL, pid=5, interrupted=True),  # Ctrl-C: not a dead process
        died(3, retry_of=0),  # a retry that died too: retried once, never twice
        died(4, ago=RETRY_WINDOW_SECONDS + 5),  # reaped long ago: its retry was lost, let it go
        trial(5, TrialState.FAIL),  # killed before it recorded its process
    ]
    assert awaiting_retry(trials, T) == set()


def test_census_counts_done_running_queued_and_the_failing_streak():
    trials = [
        trial(0, TrialState.COMPLETE),
        trial(1, TrialState.PRUNED),
        trial(2, TrialState.RUNNING, ago=None),
        trial(3, TrialState.WAITING, ago=None),
        died(4),  # holds its place as running until its retry is queued
        trial(5, TrialState.FAIL, error="e"),
        trial(6, TrialState.FAIL, error="e"),
        trial(7, TrialState.FAIL, pid=9, surplus=True),
    ]
    now = census(trials, since=0, now=T)
    assert (now.done, now.running, now.waiting) == (2, 2, 1)
    assert (now.failed, now.failing) == (2, 2)  # the two that raised, both the latest finished
    # failures before this invocation do not count toward its streak
    assert census(trials, since=6, now=T).failed == 1


def test_a_success_ends_the_failing_streak():
    trials = [
        trial(0, TrialState.FAIL, error="e"),
        trial(1, TrialState.COMPLETE),
        trial(2, TrialState.FAIL, error="e"),
    ]
    now = census(trials, since=0, now=T)
    assert (now.failed, now.failing) == (2, 1)
    assert not should_stop(now, n_trials=2)
    assert should_stop(census([*trials, trial(3, TrialState.FAIL, error="e")], 0, T), n_trials=2)


def test_a_trial_beyond_the_total_is_surplus():
    trials = [
        trial(0, TrialState.COMPLETE),
        trial(1, TrialState.RUNNING, ago=None),
        trial(2, TrialState.PRUNED),
    ]
    asked = trial(3, TrialState.RUNNING, ago=None)
    assert is_surplus([*trials, asked], 3, n_trials=3, now=T)
    assert not is_surplus([*trials, asked], 3, n_trials=4, now=T)
    # a failed trial leaves room; a dead one awaiting its retry does not
    failed = [
        trial(0, TrialState.COMPLETE),
        trial(1, TrialState.FAIL, error="e"),
        trial(2, TrialState.PRUNED),
    ]
    assert not is_surplus([*failed, asked], 3, n_trials=3, now=T)
    dead = [trial(0, TrialState.COMPLETE), died(1), trial(2, TrialState.PRUNED)]
    assert is_surplus([*dead, asked], 3, n_trials=3, now=T)


def test_workers_stop_at_exactly_the_total():
    """Two workers take turns asking: every asked trial beyond the total is surplus, and the
    census says all places are claimed before any worker could ask for one more."""
    n_trials, trials = 5, []
    for _ in range(12):
        now = census(trials, 0, T)
        if should_stop(now, n_trials) or all_claimed(now, n_trials):
            continue
        asked = trial(len(trials), TrialState.RUNNING, ago=None)
        trials.append(asked)
        if is_surplus(trials, asked.number, n_trials, T):
            asked.state, asked.user_attrs["surplus"] = TrialState.FAIL, True
    running = [t for t in trials if t.state == TrialState.RUNNING]
    assert len(running) == n_trials and all_claimed(census(trials, 0, T), n_trials)
    for t in running:
        t.state = TrialState.COMPLETE
    assert census(trials, 0, T).done == n_trials and should_stop(census(trials, 0, T), n_trials)


def test_a_worker_with_no_trial_left_waits_for_the_others_and_returns_within_a_poll():
    """Every trial is claimed and another worker's last one still runs: this worker asks for
    nothing more, and returns within a poll of that trial's end."""
    import os
    import threading
    import time

    import optuna

    from pipeline.tuning.objective import IDLE_POLL_SECONDS, TrialContext, work

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    running = study.ask()  # the other worker's last trial, alive
    running.set_user_attr("pid", os.getpid())
    ctx = TrialContext("network", None, None, None, [], epochs=1, heartbeat_seconds=10)
    ended = []

    def finish_later() -> None:
        time.sleep(0.5)
        study.tell(running, 0.5)
        ended.append(time.monotonic())

    threading.Thread(target=finish_later).start()
    work(study, ctx, n_trials=1, deadline=time.time() + 30)
    returned = time.monotonic()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # it asked for nothing
    assert returned - ended[0] < IDLE_POLL_SECONDS + 0.2
