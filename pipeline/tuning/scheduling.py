"""The rules that let several workers share one study and stop at exactly `tune.n_trials`: pure
functions over a list of trials (anything with number, state, user_attrs and datetime_complete),
so they are tested on plain lists without a storage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
RETRY_WINDOW_SECONDS = 60.0


@dataclass
class Census:
    done: int
    running: int
    waiting: int
    failed: int  # trials that raised, since this invocation started
    failing: int  # of those, how many in a row ended the study's latest finished trials


def awaiting_retry(trials: Sequence[Any], now: float) -> set[int]:
    """Trials whose process died, failed a moment ago, whose retry is not queued yet. They keep
    their place in the total, so no worker starts a new trial between the failing and the
    queueing of the retry (which would leave the retry surplus)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    recent = now - RETRY_WINDOW_SECONDS
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


def census(trials: Sequence[Any], since: int, now: float) -> Census:
    """How the study stands: finished, running (a trial awaiting its retry counts as running),
    queued, and the failures of this invocation's trials."""
    counts = Counter(t.state for t in trials)
    counts[TrialState.RUNNING] += len(awaiting_retry(trials, now))
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


def is_surplus(trials: Sequence[Any], number: int, n_trials: int, now: float) -> bool:
    """After a race between workers, a trial beyond the total is not run: `n_trials` earlier
    trials already count (finished, running, queued, or awaiting their retry)."""
    holding = awaiting_retry(trials, now)
    counted = (*DONE, TrialState.RUNNING, TrialState.WAITING)
    earlier = [t for t in trials if t.number < number and (t.state in counted or t.number in holding)]
    return len(earlier) >= n_trials


def should_stop(now: Census, n_trials: int) -> bool:
    """The study holds the total, or the last `n_trials` trials all raised (a search space whose
    every point fails; a trial failing now and then does not stop the study)."""
    return now.done >= n_trials or now.failing >= n_trials


def all_claimed(now: Census, n_trials: int) -> bool:
    """Nothing queued and every remaining place taken by a running trial: wait, do not ask."""
    return now.waiting == 0 and now.done + now.running >= n_trials
