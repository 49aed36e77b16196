"""While a command starts, the garbage collector skips its full passes over the objects the
imports create; young cycles are still freed; full collections come back after the first epoch
(or the latest time), over only what was made since. Each case runs in an interpreter of its own."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from pipeline.startup import resume_full_collections

ROOT = Path(__file__).resolve().parent.parent

WATCH = """
import gc, json, sys, time
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None)
from pipeline import startup
"""


def _python(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WATCH + code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_imports_run_no_full_collection_until_the_first_epoch_then_only_over_new_objects():
    seen = _python("""
before = gc.get_threshold()
startup.defer_full_collections()
import mlflow, optuna, pandas, sklearn.ensemble, torch  # about a million long-lived objects
deferred = len(full)
import numpy as np
from pipeline.config.overrides import compose_checked
from pipeline.metrics import resolve_objective
from pipeline.training.loop import fit
from pipeline.training.data import TrainingData
rng = np.random.default_rng(0)
x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64)
data = TrainingData(x, y, x, y, "binary", 2)
cfg = compose_checked(["train.epochs=2", "train.device=cpu", "model=mlp"])
fit(cfg.train, cfg.model, data, resolve_objective(None, None, "binary"), 0)
print(json.dumps({"deferred": deferred, "before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "objects": len(gc.get_objects())}))
""")
    assert seen["deferred"] == 0
    assert seen["after"] == seen["before"]
    # what start-up made is frozen: a full collection scans only what came after
    assert seen["frozen"] > 200_000 > seen["objects"]


def test_young_cycles_are_still_freed_while_full_collections_wait():
    seen = _python("""
import weakref
startup.defer_full_collections()
class Node: pass
freed = []
for _ in range(5000):
    a, b = Node(), Node()
    a.other, b.other = b, a
    weakref.finalize(a, freed.append, 1)
    del a, b
print(json.dumps({"freed": len(freed), "full": len(full)}))
""")
    assert seen["full"] == 0
    assert seen["freed"] >= 4500  # all but those made since the last young collection


def test_full_collections_resume_by_themselves_after_the_latest_time():
    seen = _python("""
before = gc.get_threshold()
startup.LATEST_SECONDS = 0.2
startup.defer_full_collections()
deferred = gc.get_threshold()
time.sleep(1.0)
print(json.dumps({"before": before, "deferred": deferred, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count()}))
""")
    assert seen["deferred"][2] > 1000 * seen["before"][2]
    assert seen["after"] == seen["before"]
    assert seen["frozen"] > 0


def test_a_library_caller_keeps_its_collector_settings():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    resume_full_collections()  # never deferred in this process: nothing changes
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen
