"""Tuning with Optuna: `study.py` (storage, identity, sampler and pruner), `objective.py` (one
trial and the loop asking for them), `scheduling.py` (pure rules for sharing a study and stopping
at the total), `liveness.py` (heartbeats, dead workers, retries), `workers.py` (worker processes),
`space.py` (the search space) and `optuna_compat.py` (the only use of Optuna's internals)."""
