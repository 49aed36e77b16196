"""The promotion gate of the register stage, with real registrations in a temporary store: better
models become champion, worse ones challenger, registry.min_score is a floor in the objective's
direction, the champion is rescored on the new test split, incompatible champions need
registry.force, every decision is recorded, and two concurrent registrations end with the better
model as champion."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import ROOT, TINY, composed
from mlflow.tracking import MlflowClient
from python_runner import start_python
from sklearn import metrics as skm

from pipeline.runner import PipelineResult, run_pipeline
from pipeline.stages.register import CHALLENGER, CHAMPION, Decision

UPSTREAM = "stages=[prepare,train,evaluate]"
BAD = ("train.epochs=1", "train.lr=1e-5")  # one epoch at a tiny learning rate: clearly worse
# per data set: the objective, an unreachable floor and a floor every trained model passes
CASES = {
    "breast_cancer": ("roc_auc", "maximize", 1.01, 0.5),
    "diabetes": ("rmse", "minimize", 1.0, 1000.0),
}


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory, migrated_db) -> str:
    path = tmp_path_factory.mktemp("registry") / "store" / "mlflow.db"
    path.parent.mkdir(parents=True)
    shutil.copy(migrated_db, path)  # the schema, created once per session
    yield f"sqlite:///{path}"
    while mlflow.active_run() is not None:
        mlflow.end_run()


class Pipelines:
    """Runs the pipeline in process against one store; trained upstream runs are made once."""

    def __init__(self, store: str):
        self.store = store
        self.trained: dict[tuple[str, str], PipelineResult] = {}

    def run(self, *overrides: str) -> PipelineResult:
        return run_pipeline(composed([*TINY, f"tracking.uri={self.store}", *overrides]))

    def model(self, data: str, quality: str) -> PipelineResult:
        """prepare+train+evaluate of a good (default settings) or bad model on `data`."""
        key = (data, quality)
        if key not in self.trained:
            self.trained[key] = self.run(UPSTREAM, f"data={data}", *(BAD if quality == "bad" else ()))
        return self.trained[key]

    def score(self, data: str, quality: str) -> float:
        result = self.model(data, quality)
        return result.outputs["evaluate"].metrics[result.objective.metric]

    def register(self, data: str, quality: str, name: str, *overrides: str) -> Decision:
        upstream = self.model(data, quality).parent_run_id
        result = self.run(
            "stages=[register]",
            f"data={data}",
            f"from_run={upstream}",
            f"registry.model_name={name}",
            *overrides,
        )
        decision = result.outputs["register"]
        _assert_recorded(result, decision)
        return decision


def _assert_recorded(result: PipelineResult, decision: Decision) -> None:
    """decision.json in the register run's artifacts, and the run's tags, say what happened."""
    client = MlflowClient()
    run_id = result.run_ids["register"]
    assert "outputs/decision.json" in [a.path for a in client.list_artifacts(run_id, "outputs")]
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="outputs/decision.json")
    assert json.loads(Path(local).read_text()) == json.loads(json.dumps(decision.__dict__))
    tags = client.get_run(run_id).data.tags
    assert tags["registry.alias"] == decision.alias and tags["registry.version"] == decision.version
    assert tags["registry.reason"] == decision.reason


@pytest.fixture(scope="module")
def pipelines(registry_store) -> Pipelines:
    return Pipelines(registry_store)


def _alias(name: str, alias: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


@pytest.mark.parametrize("data", list(CASES))
def test_better_model_is_promoted_worse_is_challenger(pipelines, data):
    metric, direction, _, _ = CASES[data]
    bad, good = pipelines.score(data, "bad"), pipelines.score(data, "good")
    assert (good > bad) if direction == "maximize" else (good < bad)
    name = f"gate-{data}"

    first = pipelines.register(data, "bad", name)
    assert (first.alias, first.reason) == (CHAMPION, "there was no champion")
    assert (first.objective, first.direction) == (metric, direction)

    better = pipelines.register(data, "good", name)
    assert better.alias == CHAMPION and "beats champion" in better.reason
    assert better.champion_version == first.version
    assert better.champion_score == pytest.approx(bad)  # the old champion, rescored on this split
    assert better.new_score == pytest.approx(good)
    assert _alias(name, CHAMPION) == better.version

    worse = pipelines.register(data, "bad", name)
    assert worse.alias == CHALLENGER and "does not beat" in worse.reason
    assert (worse.champion_version, worse.champion_comparable) == (better.version, True)
    assert worse.champion_score == pytest.approx(good)
    assert _alias(name, CHAMPION) == better.version
    assert _alias(name, CHALLENGER) == worse.version
    version = MlflowClient().get_model_version(name, worse.version)
    assert version.tags["model.run_id"] == pipelines.model(data, "bad").run_ids["train.network"]


@pytest.mark.parametrize("data", list(CASES))
def test_min_score_is_a_floor_in_the_objective_direction(pipelines, data):
    metric, direction, unreachable, lenient = CASES[data]
    name = f"floor-{data}"

    floored = pipelines.register(data, "good", name, f"registry.min_score={unreachable}")
    assert floored.alias == CHALLENGER and "registry.min_score" in floored.reason
    assert ("below" if direction == "maximize" else "above") in floored.reason
    assert _alias(name, CHAMPION) is None  # even with no champion at all

    champion = pipelines.register(data, "bad", name)
    assert champion.alias == CHAMPION

    again = pipelines.register(data, "good", name, f"registry.min_score={unreachable}")
    assert again.alias == CHALLENGER  # better than the champion, but below the floor
    assert _alias(name, CHAMPION) == champion.version

    passing = pipelines.register(data, "good", name, f"registry.min_score={lenient}")
    assert passing.alias == CHAMPION and passing.champion_version == champion.version
    assert _alias(name, CHAMPION) == passing.version


def test_champion_is_rescored_on_the_new_test_split(pipelines):
    name = "rescored"
    first = pipelines.register("breast_cancer", "good", name)
    assert first.alias == CHAMPION
    logged = float(MlflowClient().get_model_version(name, first.version).tags["test_roc_auc"])
    assert logged == pytest.approx(pipelines.score("breast_cancer", "good"), abs=1e-5)

    result = pipelines.run(
        "stages=[prepare,train,evaluate,register]",
        "data=breast_cancer",
        "seed=7",
        *BAD,
        f"registry.model_name={name}",
    )
    decision = result.outputs["register"]
    prepared = result.outputs["prepare"]
    old = pipelines.model("breast_cancer", "good").outputs["prepare"]
    assert prepared.split_digests["test"] != old.split_digests["test"]
    assert decision.champion_version == first.version
    assert decision.champion_same_data_digest is False and decision.champion_comparable is True

    # score the champion ourselves on the new test split
    champion = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    positive = prepared.preprocessing.classes[1]
    proba = champion.predict(prepared.frames["test"])[f"proba_{positive}"].to_numpy()
    truth = prepared.preprocessing.decode(prepared.targets["test"])
    rescored = skm.roc_auc_score(np.asarray(truth) == positive, proba)
    assert decision.champion_score == pytest.approx(rescored)
    assert decision.champion_score != pytest.approx(logged)  # not the number logged on seed 42
    assert decision.alias == CHALLENGER and _alias(name, CHAMPION) == first.version


def test_incompatible_champion_needs_force(pipelines):
    """A champion of another data set (other input columns) cannot be rescored; one judged on
    another objective is not compared across objectives; either way only registry.force promotes."""
    name = "shared"
    wine = pipelines.run(
        "stages=[prepare,train,evaluate,register]",
        "data=wine",
        "objective.metric=log_loss",
        f"registry.model_name={name}",
    )
    assert wine.outputs["register"].alias == CHAMPION
    wine_version = wine.outputs["register"].version

    other_columns = pipelines.run(
        "stages=[prepare,train,evaluate,register]",
        "data=breast_cancer",
        "objective.metric=log_loss",
        f"registry.model_name={name}",
    ).outputs["register"]
    assert other_columns.alias == CHALLENGER and other_columns.champion_comparable is False
    assert "cannot be compared" in other_columns.reason and "input columns differ" in other_columns.reason

    blocked = pipelines.register("breast_cancer", "good", name)  # judged on roc_auc
    assert blocked.alias == CHALLENGER and blocked.champion_comparable is False
    assert blocked.champion_score is None and blocked.champion_version == wine_version
    assert "judged on log_loss/minimize, this run on roc_auc/maximize" in blocked.reason
    assert "registry.force=true" in blocked.reason
    assert _alias(name, CHAMPION) == wine_version

    forced = pipelines.register("breast_cancer", "good", name, "registry.force=true")
    assert forced.alias == CHAMPION and forced.force is True
    assert "promoted because registry.force=true" in forced.reason
    assert _alias(name, CHAMPION) == forced.version


@pytest.mark.slow
def test_concurrent_registrations_end_with_the_better_champion(pipelines, registry_store, tmp_path):
    """Two `python -m pipeline stages=[register]` processes at once (file lock on a local store)."""
    name = "race"
    runs = {q: pipelines.model("breast_cancer", q) for q in ("good", "bad")}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = {
        quality: start_python(
            [
                sys.executable,
                "-m",
                "pipeline",
                *TINY,
                f"tracking.uri={registry_store}",
                "stages=[register]",
                f"from_run={result.parent_run_id}",
                f"registry.model_name={name}",
                f"hydra.run.dir={tmp_path / quality}",
            ],
            cwd=ROOT,
            env=env,
            merge=True,
        )
        for quality, result in runs.items()
    }
    try:
        outputs = {q: p.communicate(timeout=300)[0] for q, p in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for quality, process in processes.items():
        assert process.returncode == 0, outputs[quality][-3000:]

    client = MlflowClient()
    versions = {v.tags["model.run_id"]: v for v in client.search_model_versions(f"name = '{name}'")}
    assert len(versions) == 2
    good = versions[runs["good"].run_ids["train.network"]]
    bad = versions[runs["bad"].run_ids["train.network"]]
    assert _alias(name, CHAMPION) == str(good.version)
    # the bad one was either champion first and then replaced, or registered second as challenger
    assert set(client.get_model_version(name, str(bad.version)).aliases) <= {CHALLENGER}
    assert all(f"{name} v" in out for out in outputs.values())  # each printed its decision


def test_the_gate_rescores_a_champion_of_another_family(pipelines):
    """A gradient-boosting challenger against a logistic-regression champion: the champion is
    loaded and rescored like any model, whatever its family, and the version says its family."""
    name = "families"
    stages = "stages=[prepare,train,evaluate,register]"
    linear = pipelines.run(stages, "candidates=[linear]", f"registry.model_name={name}")
    first = linear.outputs["register"]
    assert (first.alias, first.family) == (CHAMPION, "linear")
    trees = pipelines.run(stages, "candidates=[hist_gradient_boosting]", f"registry.model_name={name}")
    decision = trees.outputs["register"]
    assert decision.family == "hist_gradient_boosting"
    assert decision.champion_version == first.version and decision.champion_comparable is True
    # same data and seed, so the same test split: rescoring gives the champion's own test score
    assert decision.champion_score == pytest.approx(linear.outputs["evaluate"].metrics["roc_auc"])
    better = decision.new_score > decision.champion_score
    assert decision.alias == (CHAMPION if better else CHALLENGER)
    client = MlflowClient()
    assert client.get_model_version(name, decision.version).tags["model.family"] == "hist_gradient_boosting"
    assert client.get_model_version(name, first.version).tags["model.family"] == "linear"
