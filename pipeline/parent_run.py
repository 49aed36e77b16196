"""What the invocation's parent run records: what ran on what (tags), how to repeat it (config,
git state, package versions, seed) and, at the end, the outcome of its stages."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.digests import values_digest
from pipeline.metrics import Objective
from pipeline.tracking.provenance import mask_values, package_versions


def config_digest(cfg: DictConfig) -> str:
    """A digest of the settings that decide results (not where they are tracked or served)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for key in ("stages", "from_run", "tracking", "serve", "progress"):
        plain.pop(key, None)
    return values_digest(plain)


def parent_tags(
    cfg: DictConfig,
    stages: list[str],
    data_digest: str,
    digest: str,
    git: dict[str, str],
    objective: Objective,
) -> dict[str, str]:
    return {
        "stage": "pipeline",
        "stages": ",".join(stages),
        "data.digest": data_digest,
        "data.name": cfg.data.name,
        "model.name": cfg.model.name,
        "config.digest": digest,
        "git.commit": git.get("commit", ""),
        "git.dirty": git.get("dirty", ""),
        "seed": str(cfg.seed),
        "threads": str(cfg.train.threads or "auto"),  # the train stage records the count it used
        "objective": f"{objective.metric}/{objective.direction}",
        "candidates": ",".join(cfg.candidates),
    }


def record_invocation(
    parent: Any, cfg: DictConfig, git: dict[str, str], objective: Objective, task: str
) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    files = {"config.yaml": OmegaConf.to_yaml(OmegaConf.create(mask_values(plain)))}
    if git.get("diff"):
        files["git.diff"] = git["diff"]
    parent.files(files)
    parent.log(
        params={f"version.{k}": v for k, v in package_versions().items()}
        | {
            "seed": cfg.seed,
            "data.name": cfg.data.name,
            "model.name": cfg.model.name,
            "objective": objective.metric,
        },
        tags={"data.task": task},
    )


def record_outcome(
    parent: Any, stages: list[str], outputs: dict[str, Any], run_ids: dict[str, str], objective: Objective
) -> None:
    metrics: dict[str, float] = {}
    tags: dict[str, Any] = {f"upstream.{s}": r for s, r in run_ids.items()}
    if "evaluate" in outputs:
        evaluation = outputs["evaluate"]
        won = evaluation.row(evaluation.winner)
        metrics.update({k: won[k] for k in (f"val_{objective.metric}", f"cv_{objective.metric}") if k in won})
        metrics.update({f"test_{k}": v for k, v in evaluation.metrics.items()})
        tags["winner"] = evaluation.winner
    if "train" in stages and "network" in outputs.get("train", {}):
        tags["threads"] = outputs["train"]["network"].threads  # the count it used
    if "register" in outputs:
        decision = outputs["register"]
        tags.update(
            {
                "registry.model": decision.model_name,
                "registry.version": decision.version,
                "registry.alias": decision.alias,
            }
        )
    parent.log(metrics=metrics, tags=tags)
