"""The few places that reach into Optuna's internals, kept in one small adapter: a study's storage
and a trial's storage id have no public accessor, and reaping a dead worker's trial needs both."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def is_database(study: optuna.Study) -> bool:
    """RDB storage (PostgreSQL, MySQL): the only kind with Optuna's own heartbeats."""
    return isinstance(storage_of(study), optuna.storages.RDBStorage)


def reread(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as the storage holds it now."""
    return storage_of(study).get_trial(trial_id(trial))


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Mark a RUNNING trial FAIL; False when another worker changed its state first."""
    try:
        storage_of(study).set_trial_state_values(trial_id(trial), TrialState.FAIL)
    except Exception:  # noqa: BLE001 - another worker reaped it first
        return False
    return True


def beat(study: optuna.Study, trial: optuna.Trial, now: float) -> None:
    """Mark a trial alive: Optuna's heartbeat in a database, a user attribute in a journal."""
    storage = storage_of(study)
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.record_heartbeat(trial_id(trial))
    else:
        storage.set_trial_user_attr(trial_id(trial), "heartbeat", now)
