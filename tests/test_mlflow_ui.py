"""What users of MLflow, Optuna and Hydra expect, read back through MlflowClient: explicit
command-line values beat tuned ones (and leave the search space), plots that render offline,
system metrics, every split as a dataset, test metrics on the logged model, a model card on the
registered version, the dashboard finding the study, and a serving image whose requirements
resolve."""

from __future__ import annotations

import json
import re
import sys
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient
from python_runner import run_python

from pipeline.errors import ConfigError
from pipeline.runner import run_pipeline

NETWORK = ("candidates=[network]",)


def test_an_explicit_value_beats_the_tuned_one_when_training_alone(make_cfg):
    tuned = run_pipeline(make_cfg("stages=[prepare,tune]", *NETWORK))
    assert "train.lr" in tuned.outputs["tune"]["network"].best_values
    trained = run_pipeline(make_cfg("stages=[train]", *NETWORK, "train.lr=0.0001"), explicit={"train.lr"})
    model = trained.outputs["train"]["network"]
    assert "train.lr" not in model.applied_values and model.overridden == {"train.lr": 0.0001}
    assert model.params_source == "tune"  # the other tuned values still apply
    params = MlflowClient().get_run(trained.run_ids["train.network"]).data.params
    assert float(params["train.lr"]) == 0.0001


def test_an_explicit_value_leaves_the_search_and_names_its_own_study(make_cfg):
    free = run_pipeline(make_cfg("stages=[prepare,tune]", *NETWORK))
    fixed = run_pipeline(make_cfg("stages=[prepare,tune]", *NETWORK, "train.lr=0.001"), explicit={"train.lr"})
    client = MlflowClient()
    free_run, fixed_run = (client.get_run(r.run_ids["tune.network"]) for r in (free, fixed))
    assert free_run.data.tags["study.name"] != fixed_run.data.tags["study.name"]
    assert fixed_run.data.tags["fixed.train.lr"] == "0.001"
    assert "train.lr" not in fixed.outputs["tune"]["network"].best_values
    trials = client.search_runs([fixed.experiment_id], f"tags.mlflow.parentRunId = '{fixed_run.info.run_id}'")
    assert trials and all("train.lr" not in t.data.params for t in trials)


def test_a_worker_with_other_fixed_values_is_refused(make_cfg):
    named = ("stages=[prepare,tune]", *NETWORK, "tune.study_name=fixed")
    run_pipeline(make_cfg(*named, "train.lr=0.001"), explicit={"train.lr"})
    with pytest.raises(ConfigError, match=r"'fixed' fixes train.lr=0.001 and this run fixes train.lr=0.002"):
        run_pipeline(make_cfg(*named, "train.lr=0.002"), explicit={"train.lr"})


def test_the_summary_says_where_each_value_came_from(run_cli, make_cfg):
    run_pipeline(make_cfg("stages=[prepare,tune]", *NETWORK))  # in this process: the second run is the CLI's
    done = run_cli("stages=[train,evaluate]", *NETWORK, "train.lr=0.0001")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^  train\.lr +0\.0001 \(command line\)$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^  model\.hidden +\[.*\] \(tune run [0-9a-f]{8}\)$", done.stdout, re.MULTILINE)


@pytest.fixture
def finished(finished_once):
    """The module's run, with MLflow pointed at its store (another test may have moved it)."""
    mlflow.set_tracking_uri(finished_once[1])
    return finished_once


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory, migrated_db):
    """One default-shaped pipeline run (two families) in its own store."""
    import shutil

    from conftest import CONF, TINY
    from hydra import compose, initialize_config_dir

    folder = tmp_path_factory.mktemp("ui")
    shutil.copy(migrated_db, folder / "mlflow.db")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                *TINY,
                f"tracking.uri={store}",
                "candidates=[network,linear]",
                "tracking.plots=true",
                "tracking.system_metrics=true",
            ],
        )
    result = run_pipeline(cfg)
    mlflow.set_tracking_uri(store)
    yield result, store, folder
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _all_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_plots_render_offline(finished):
    result, store, _ = finished
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([result.experiment_id], max_results=1000)
    tune_runs = [r for r in runs if r.data.tags.get("stage") == "tune"]
    for run in tune_runs:
        names = _all_artifacts(client, run.info.run_id)
        assert {"plots/optimization_history.png", "plots/intermediate_values.png"} <= set(names)
    for run in runs:
        for name in _all_artifacts(client, run.info.run_id):
            if name.endswith((".html", ".htm", ".js", ".css", ".svg")):
                text = Path(client.download_artifacts(run.info.run_id, name)).read_text(errors="replace")
                assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|cdn\.""", text), (
                    run.info.run_name,
                    name,
                )


def test_train_and_tune_runs_sample_system_metrics_and_trials_do_not(finished):
    result, store, _ = finished
    client = MlflowClient(tracking_uri=store)
    for key in ("train.network", "tune.network"):
        metrics = client.get_run(result.run_ids[key]).data.metrics
        assert any(k.startswith("system/cpu") for k in metrics), (key, sorted(metrics))
        assert any(k.startswith("system/system_memory") for k in metrics), key
    trials = client.search_runs([result.experiment_id], "tags.stage = 'tune.trial'")
    assert trials and not any(k.startswith("system/") for t in trials for k in t.data.metrics)


def test_test_metrics_are_linked_to_the_logged_models(finished):
    result, store, _ = finished
    client = MlflowClient(tracking_uri=store)
    evaluation = result.outputs["evaluate"]
    for family in ("network", "linear"):
        model_id = client.get_run(result.run_ids[f"train.{family}"]).data.tags["model.id"]
        logged = {m.key: m for m in client.get_logged_model(model_id).metrics}
        assert logged["test_roc_auc"].value == pytest.approx(evaluation.row(family)["test_roc_auc"])
        assert logged["test_roc_auc"].dataset_digest == result.outputs["prepare"].split_digests["test"]


def test_the_registered_version_carries_a_model_card(finished):
    result, store, _ = finished
    decision, evaluation = result.outputs["register"], result.outputs["evaluate"]
    version = MlflowClient(tracking_uri=store).get_model_version(decision.model_name, decision.version)
    card = version.description
    for heading in ("## Data", "## Model", "## Scores", "## Gate", "## Use"):
        assert heading in card, heading
    assert result.outputs["prepare"].digest in card and evaluation.verdict in card and decision.reason in card
    assert f"| roc_auc | {evaluation.metrics['roc_auc']:.4f} |" in card
    curl = next(line for line in card.splitlines() if line.startswith("curl "))
    body = json.loads(curl.split("-d '", 1)[1].rstrip("'"))
    assert body["dataframe_split"]["columns"] == result.outputs["prepare"].preprocessing.columns
    tags = version.tags
    assert tags["model.family"] == evaluation.winner and tags["registry.decision"] == decision.alias
    assert tags["objective"] == "roc_auc/maximize" and float(tags["test_score"]) == pytest.approx(
        evaluation.metrics["roc_auc"], abs=1e-5
    )


def test_the_comparison_shows_every_validation_score(finished):
    result, store, _ = finished
    client = MlflowClient(tracking_uri=store)
    text = Path(client.download_artifacts(result.run_ids["evaluate"], "comparison.md")).read_text()
    network = next(line for line in text.splitlines() if "network" in line)
    assert (
        "| |" not in network and f"{result.outputs['evaluate'].row('network')['val_roc_auc']:.4f}" in network
    )


def test_the_dashboard_finds_the_studies_the_pipeline_used(finished, monkeypatch):
    from pipeline.dashboard import study_storage

    _, store, folder = finished
    assert study_storage([f"tracking.uri={store}"]) == str(folder / "optuna.journal")
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://optuna@db.example/optuna")
    assert study_storage([f"tracking.uri={store}"]) == "postgresql://optuna@db.example/optuna"


def test_the_retry_of_dead_trials_uses_no_deprecated_optuna_callback(tmp_path):
    from pipeline.tuning.study import make_storage

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # heartbeats are marked experimental
        storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", 5)
    assert storage.get_heartbeat_stale_trial_callback() is not None


@pytest.mark.slow
def test_a_serving_image_folder_with_resolvable_requirements(finished, tmp_path):
    result, store, _ = finished
    output = tmp_path / "dockerfile"
    made = run_python(
        [sys.executable, "-m", "pipeline.serving", "dockerfile", "--output", str(output), f"tracking.uri={store}"],
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    assert (output / "Dockerfile").is_file()
    model = output / "model_dir" / "model"
    pinned = dict(
        line.split("==") for line in (model / "requirements.txt").read_text().splitlines() if "==" in line
    )
    for name, version in pinned.items():
        assert version == metadata.version(name).split("+")[0], name  # public versions, no +cpu
    if result.outputs["register"].family == "network":
        assert (
            "--extra-index-url https://download.pytorch.org/whl/cpu"
            in (model / "requirements.txt").read_text()
        )
    scored = run_python(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", str(model),
         "-i", str(model / "serving_input_example.json"), "-t", "json", "--env-manager", "local"],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert '"prediction"' in scored.stdout
