"""`make reproduce`: the same commit, data and threads give identical metrics; other data is refused."""

import pandas as pd
import pytest
from sklearn.datasets import load_wine

from pipeline.errors import PipelineError
from pipeline.reproduce import reproduce
from pipeline.runner import run_pipeline


@pytest.fixture
def wine_csv(tmp_path):
    frame = load_wine(as_frame=True).frame
    path = tmp_path / "wine.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_reproduce_gives_identical_metrics_and_registers_nothing(make_cfg, store, wine_csv):
    original = run_pipeline(
        make_cfg(
            "data=table",
            f"data.path={wine_csv}",
            "data.target=target",
            "stages=[prepare,tune,train,evaluate]",
        )
    )
    result, compared, warnings = reproduce(original.parent_run_id, store)
    assert result.experiment_id != original.experiment_id
    assert "register" not in result.outputs
    assert compared and set(compared) >= {"accuracy", "log_loss"}
    for name, (before, after) in compared.items():
        assert before == pytest.approx(after, abs=1e-9), name
    # the train stage used the original tune run's best params
    assert result.outputs["train"]["network"].params_source == "tune"
    assert (
        result.outputs["train"]["network"].applied_values == original.outputs["tune"]["network"].best_values
    )


@pytest.mark.slow
def test_reproduce_refuses_other_data(make_cfg, store, wine_csv):
    original = run_pipeline(
        make_cfg(
            "data=table", f"data.path={wine_csv}", "data.target=target", "stages=[prepare,train,evaluate]"
        )
    )
    frame = pd.read_csv(wine_csv)
    frame.loc[0, "alcohol"] += 1.0
    frame.to_csv(wine_csv, index=False)
    with pytest.raises(PipelineError, match="data differs"):
        reproduce(original.parent_run_id, store)
