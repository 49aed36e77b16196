"""Stored files are data: a stage output or a registered model's file changed in the artifact
store is refused with one line naming the file, before any of it is loaded, and nothing in it
runs (pickles are gone: fitted objects are skops files loaded with a trusted-types list)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from conftest import ROOT, TINY
from mlflow.tracking import MlflowClient
from python_runner import run_python

from pipeline import persistence
from pipeline.runner import run_pipeline

pytestmark = pytest.mark.slow


class _Payload:
    """A pickle that creates a file when it is loaded: what an attacker would put in its place."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _local(uri: str) -> Path:
    return Path(urlparse(uri).path)


def _cli(store: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", *args, f"tracking.uri={store}"]
    return run_python(command, cwd=ROOT, timeout=300)


def _one_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def test_a_tampered_stage_output_is_refused_and_runs_nothing(make_cfg, store, tmp_path):
    prepared = run_pipeline(make_cfg("stages=[prepare]"))
    run = MlflowClient().get_run(prepared.run_ids["prepare"])
    outputs = _local(run.info.artifact_uri) / "outputs"
    marker = tmp_path / "code-ran"
    (outputs / "preprocessing.skops").write_bytes(pickle.dumps(_Payload(marker)))

    done = _cli(store, tmp_path, "pipeline", *TINY, "stages=[train]", f"hydra.run.dir={tmp_path / 'out'}")
    line = _one_error(done)
    assert "file preprocessing.skops was changed" in line and run.info.run_id in line
    assert not marker.exists()

    # the manifest rewritten to match: the digest recorded in the store still refuses it
    from pipeline.tracking import integrity

    integrity.seal(outputs)
    done = _cli(store, tmp_path, "pipeline", *TINY, "stages=[train]", f"hydra.run.dir={tmp_path / 'out2'}")
    assert "manifest differs from the digest recorded" in _one_error(done)
    assert not marker.exists()


def test_a_pickle_is_never_unpickled(tmp_path):
    """Even past the digests (someone who can write the tracking database too), loading a
    fitted object takes only trusted types: a pickle is refused, and its code does not run."""
    marker = tmp_path / "code-ran"
    (tmp_path / "preprocessing.skops").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(persistence.UntrustedFile, match="cannot be loaded safely"):
        persistence.load(tmp_path / "preprocessing.skops")
    assert not marker.exists()


@pytest.fixture
def tampered_champion(make_cfg, store, tmp_path):
    """A registered champion whose bundled code was changed to create a file when imported."""
    result = run_pipeline(make_cfg("stages=[prepare,train,evaluate,register]", "candidates=[linear]"))
    mlflow.set_tracking_uri(store)
    version = MlflowClient().get_model_version_by_alias("breast_cancer", "champion")
    model_id = MlflowClient().get_run(version.tags["model.run_id"]).data.tags["model.id"]
    folder = _local(mlflow.get_logged_model(model_id).artifact_location)
    marker = tmp_path / "code-ran"
    code = folder / "code" / "pipeline" / "serving" / "packaging.py"
    code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")
    return result, marker


def test_a_tampered_model_is_refused_by_serving_predict_and_the_gate(
    tampered_champion, make_cfg, store, tmp_path
):
    result, marker = tampered_champion
    rows = tmp_path / "rows.csv"
    result.outputs["prepare"].frames["test"].head(3).to_csv(rows, index=False)

    from pipeline.ports import free_port

    served = _cli(
        store, tmp_path, "pipeline.serving", "serve", "--port", str(free_port()), "data=breast_cancer"
    )
    assert "code/pipeline/serving/packaging.py was changed" in _one_error(served)
    predicted = _cli(
        store,
        tmp_path,
        "pipeline.serving",
        "predict",
        "--input",
        str(rows),
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert "code/pipeline/serving/packaging.py was changed" in _one_error(predicted)
    assert not marker.exists()

    gate = run_pipeline(make_cfg("stages=[prepare,train,evaluate,register]", "candidates=[linear]", "seed=3"))
    decision = gate.outputs["register"]
    assert decision.alias == "challenger" and decision.champion_comparable is False
    assert "code/pipeline/serving/packaging.py was changed" in decision.reason
    assert not marker.exists()


def test_a_crash_prints_and_logs_no_password(store, tmp_path):
    """A run that crashes on an unexpected error whose message carries a URL with a password
    (the worst case): one masked line, exit 1, and the traceback in the run's log masked too."""
    secret = "s3cret-pw-value"
    crash = (
        "import os, sys\n"
        "import pipeline.runner as runner\n"
        "def crash(*args, **kwargs):\n"
        "    raise RuntimeError('lost the study at ' + os.environ['OPTUNA_STORAGE'])\n"
        "runner.run_pipeline = crash\n"
        "from pipeline.__main__ import cli\n"
        "cli()\n"
    )
    outputs = tmp_path / "outputs"
    done = run_python(
        [sys.executable, "-c", crash, *TINY, f"tracking.uri={store}", f"hydra.run.dir={outputs}"],
        cwd=ROOT, timeout=300,
        env={**os.environ, "OPTUNA_STORAGE": f"postgresql://me:{secret}@127.0.0.1:1/optuna"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: unexpected RuntimeError: lost the study at postgresql://me:***@127.0.0.1:1/optuna "
        "(the traceback is in the run's pipeline.log)"
    ]
    log = (outputs / "pipeline.log").read_text()
    assert "RuntimeError: lost the study at postgresql://me:***@" in log  # the traceback is there
    written = "".join(p.read_text(errors="replace") for p in outputs.rglob("*") if p.is_file())
    assert secret not in done.stdout + done.stderr + written


def test_a_champion_without_recorded_digests_is_refused_until_registered_again(make_cfg, store, tmp_path):
    """A champion registered by an older version (no model digest on it): serving and make
    predict refuse it in one line, the gate does not load it to rescore, and registry.force=true
    puts a verified version in its place."""
    quick = ("stages=[prepare,train,evaluate,register]", "candidates=[linear]")
    first = run_pipeline(make_cfg(*quick))
    name, version = first.outputs["register"].model_name, first.outputs["register"].version
    client = MlflowClient()
    for tag in ("model.sha256", "model.run_id"):
        client.delete_model_version_tag(name, version, tag)
    rows = tmp_path / "rows.csv"
    first.outputs["prepare"].frames["test"].head(3).to_csv(rows, index=False)
    predicted = _cli(store, tmp_path, "pipeline.serving", "predict", "--input", str(rows), "--output",
                     str(tmp_path / "p.csv"))  # fmt: skip
    assert "has no recorded digest" in _one_error(predicted)
    gate = run_pipeline(make_cfg(*quick, "seed=3")).outputs["register"]
    assert gate.alias == "challenger" and gate.champion_comparable is False
    assert "registry.force=true" in gate.reason, gate.reason
    forced = run_pipeline(make_cfg(*quick, "seed=4", "registry.force=true")).outputs["register"]
    assert forced.alias == "champion"
    assert client.get_model_version(name, forced.version).tags["model.sha256"]
