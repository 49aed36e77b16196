"""The garbage collector while a command starts.

Importing torch, MLflow, scikit-learn and pandas creates over a million objects that live as
long as the process. CPython's full collection scans every one of them again each time the
long-lived objects have grown by a quarter since the last one: ten passes in a sweep's first
seconds (1.5 to 1.8 s of them) that free next to nothing. So while a command starts, only the
young generations are collected (a cycle made and dropped at once is still freed). Start-up is
over when the process has trained its first epoch (its last big imports are torch's, for the
first optimizer step), or after `LATEST_SECONDS` at most: then what exists is frozen (never
scanned again) and full collections resume for whatever comes after. Freezing without a full
collection first keeps the little cyclic garbage that start-up left in the old generation
(some thousand objects, mostly from composing the config) for the life of the process; a full
collection then would take longer (0.4 s) than all of the passes that are left.

A command that loads a saved model also imports scipy's ufuncs before torch and MLflow (see
`import_scipy_ufuncs_first`)."""

from __future__ import annotations

import gc
import threading

LATEST_SECONDS = 60.0
_NEVER = 2**30  # collections of the middle generation before a full one: never, in practice
_lock = threading.Lock()
_deferred: list[tuple[int, int, int]] = []  # the thresholds to restore, while deferred


def defer_full_collections() -> None:
    """Call as a command starts; `resume_full_collections()` ends it."""
    with _lock:
        if _deferred:
            return
        _deferred.append(gc.get_threshold())
        young, middle, _ = _deferred[0]
        gc.set_threshold(young, middle, _NEVER)
    latest = threading.Timer(LATEST_SECONDS, resume_full_collections)
    latest.daemon = True
    latest.start()


def resume_full_collections() -> None:
    """Start-up is over: freeze what exists, collect as usual from now on. Does nothing unless
    deferred (a library caller's process keeps its own settings)."""
    with _lock:
        if not _deferred:
            return
        gc.collect(1)  # the young generations' garbage: cheap to free
        gc.freeze()
        gc.set_threshold(*_deferred.pop())


def import_scipy_ufuncs_first() -> None:
    """Call as a command starts, before it imports torch or MLflow. Importing skops (which reads
    the saved preprocessing and tree models) names each of scipy's ufuncs by scanning the loaded
    modules in import order until one holds it: behind the 2,500 modules of torch and MLflow that
    scan takes one to two seconds; ahead of them, about a tenth of a second."""
    import scipy.special  # noqa: F401
