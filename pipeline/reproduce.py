"""`make reproduce RUN=<run id>`: re-run train and evaluate of a finished pipeline run with its
logged config and best parameters, in a separate experiment and without registering, and report
each test metric's difference from the original."""

from __future__ import annotations

import argparse
import sys
import tempfile

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline.config import PipelineConfig
from pipeline.console import quiet_libraries
from pipeline.data.identity import prepared_digest
from pipeline.data.read import read_source
from pipeline.errors import PipelineError
from pipeline.runner import PipelineResult, run_pipeline
from pipeline.tracking.provenance import git_state, mask
from pipeline.tracking.store import tracking_uri as resolve_tracking_uri


def original_config(run_id: str) -> DictConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp)
        logged = OmegaConf.load(path)
    return OmegaConf.merge(OmegaConf.structured(PipelineConfig), logged)


def reproduce(
    run_id: str, tracking_uri: str | None = None
) -> tuple[PipelineResult, dict[str, tuple[float, float]], list[str]]:
    """Returns the new result, {metric: (original, reproduced)} and warnings."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        parent = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise PipelineError(f"RUN={run_id} is not a run in {mask(uri)}") from None
    if parent.data.tags.get("stage") != "pipeline" or parent.info.status != "FINISHED":
        raise PipelineError(
            f"RUN={run_id} is not a finished pipeline run; give the parent run of `make pipeline`"
        )
    cfg = original_config(run_id)
    warnings = []
    current = git_state()
    if parent.data.tags.get("git.commit") != current["commit"]:
        warnings.append(
            f"the original ran at commit {parent.data.tags.get('git.commit')}, this tree is at {current['commit']}"
        )
    if parent.data.tags.get("git.dirty") == "true":
        warnings.append("the original ran on a tree with uncommitted changes (see its git.diff artifact)")
    digest = prepared_digest(read_source(cfg.data).source_digest, cfg.data, cfg.seed)
    if digest != parent.data.tags.get("data.digest"):
        raise PipelineError(
            f"the data differs from the original run's (digest {digest[:8]} vs "
            f"{parent.data.tags.get('data.digest', '?')[:8]}); reproduce needs the same data"
        )
    original_metrics = {k: v for k, v in parent.data.metrics.items() if k.startswith("test_")}
    cfg.stages = ["prepare", "train", "evaluate"]
    cfg.from_run = run_id  # the tune upstream (best params) is the original run's
    cfg.tracking.uri = uri
    cfg.tracking.experiment = f"{cfg.tracking.experiment}-reproduce"
    cfg.prepare.force = True
    threads = parent.data.tags.get("threads")
    if threads and not cfg.train.threads:
        cfg.train.threads = int(threads)
    result = run_pipeline(cfg)
    new = result.outputs["evaluate"].metrics
    compared = {
        k[len("test_") :]: (v, new[k[len("test_") :]])
        for k, v in original_metrics.items()
        if k[len("test_") :] in new
    }
    return result, compared, warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    if not args.run_id:
        print("error: give the pipeline run to reproduce: make reproduce RUN=<run id>", file=sys.stderr)
        sys.exit(2)
    quiet_libraries()
    try:
        result, compared, warnings = reproduce(args.run_id, args.tracking_uri)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"reproduced run {args.run_id} as run {result.parent_run_id}: {result.link}")
    print(f"{'metric':<20}{'original':>12}{'reproduced':>12}{'difference':>12}")
    for name, (before, after) in sorted(compared.items()):
        print(f"{name:<20}{before:>12.6f}{after:>12.6f}{after - before:>+12.2e}")
    identical = all(abs(a - b) == 0 for a, b in compared.values())
    print("identical metrics" if identical else "metrics differ")


if __name__ == "__main__":
    from pipeline.shutdown import run_then_exit

    run_then_exit(main)  # without the seconds of module teardown at exit
