"""The whole pipeline in process, every family on tiny budgets, against a real temporary store."""

from collections import Counter

from mlflow.tracking import MlflowClient

from pipeline.runner import run_pipeline

FAMILIES = ["network", "hist_gradient_boosting", "random_forest", "linear"]


def test_pipeline_end_to_end_registers_the_winner_of_every_family(make_cfg):
    result = run_pipeline(make_cfg(f"candidates=[{','.join(FAMILIES)}]"))
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert Counter(r.data.tags["stage"] for r in children) == {
        "prepare": 1,
        "tune": 4,
        "train": 4,
        "evaluate": 1,
        "register": 1,
    }
    assert all(r.info.status == "FINISHED" for r in children)
    per_family = {(r.data.tags["stage"], r.data.tags.get("model.family")) for r in children}
    assert {(s, f) for s in ("tune", "train") for f in FAMILIES} <= per_family
    # trials of each family nest under their family's tune run, tagged with the family
    for run in children:
        if run.data.tags["stage"] == "tune":
            trials = client.search_runs(
                [result.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
            )
            assert len(trials) == 2 and {t.data.tags["model.family"] for t in trials} == {
                run.data.tags["model.family"]
            }
    evaluation = result.outputs["evaluate"]
    best = max(FAMILIES, key=lambda f: evaluation.row(f)["val_roc_auc"])
    assert evaluation.row(evaluation.winner)["val_roc_auc"] == evaluation.row(best)["val_roc_auc"]
    version = client.get_model_version_by_alias("breast_cancer", "champion")
    assert str(version.version) == "1"
    assert version.tags["model.family"] == evaluation.winner == parent.data.tags["winner"]
    assert version.tags["objective"] == "roc_auc/maximize"
    assert (
        float(version.tags["test_score"]) == round(evaluation.metrics["roc_auc"], 6)
        or abs(float(version.tags["test_score"]) - evaluation.metrics["roc_auc"]) < 1e-5
    )
    assert (
        float(version.tags["val_score"]) == evaluation.row(evaluation.winner)["val_roc_auc"]
        or abs(float(version.tags["val_score"]) - evaluation.row(evaluation.winner)["val_roc_auc"]) < 1e-5
    )
