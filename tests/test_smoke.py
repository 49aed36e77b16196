"""The whole pipeline in process, on tiny budgets, against a real temporary store."""

from mlflow.tracking import MlflowClient

from pipeline.runner import run_pipeline


def test_pipeline_end_to_end_registers_champion(make_cfg):
    result = run_pipeline(make_cfg())
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert sorted(r.data.tags["stage"] for r in children) == sorted(
        ["prepare", "tune", "train", "evaluate", "register"]
    )
    assert all(r.info.status == "FINISHED" for r in children)
    version = client.get_model_version_by_alias("breast_cancer-mlp", "champion")
    assert str(version.version) == "1"
