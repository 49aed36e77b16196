"""Stage train: the final network, with the best parameters of the tune stage it follows or, when
no tune run is used, the configured ones; the output says which."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import ModelConfig, TrainConfig
from pipeline.metrics import Objective
from pipeline.models import parameter_count
from pipeline.stages import Stage, StageCall
from pipeline.stages.prepare import PreparedData
from pipeline.stages.tune import TuneResult
from pipeline.training.loop import EpochCallback, fit
from pipeline.training.result import TrainedModel
from pipeline.tuning.space import apply_values


def train(
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    seed: int,
    prepared: PreparedData,
    objective: Objective,
    tuned: TuneResult | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
) -> TrainedModel:
    """Train the final network on the training split, early-stopped on the validation split,
    with the tuned values when `tuned` is given and `train.params_from=auto`."""
    use_tuned = tuned is not None and train_cfg.params_from == "auto"
    values = dict(tuned.best_values) if use_tuned and tuned else {}
    settings = apply_values(OmegaConf.create({"train": train_cfg, "model": model_cfg}), values)
    trained = fit(
        settings.train,
        settings.model,
        prepared.training_data(),
        objective,
        int(seed),
        on_epoch=on_epoch,
        progress=progress,
    )
    trained.params_source = "tune" if use_tuned else "config"
    trained.applied_values = values
    return trained


def run(call: StageCall) -> TrainedModel:
    cfg = call.cfg
    return train(
        cfg.train,
        cfg.model,
        int(cfg.seed),
        call.upstream["prepare"],
        call.invocation.objective,
        call.upstream.get("tune"),
        on_epoch=call.record.epochs,
        progress=call.invocation.progress,
    )


def _params(cfg: DictConfig, trained: TrainedModel) -> dict[str, Any]:
    from pipeline.tracking.recorder import flatten

    resolved = {
        "train": OmegaConf.to_container(cfg.train, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
    }
    return flatten(resolved) | trained.applied_values  # tuned values win


def record(run: Any, trained: TrainedModel, call: StageCall) -> None:
    from pipeline import plots

    metric = call.invocation.objective.metric
    tune_run = call.upstream_runs["tune"].run_id if "tune" in call.upstream_runs else None
    run.log(
        params=_params(call.cfg, trained),
        metrics={
            "parameter_count": parameter_count(trained.network),
            f"best_val_{metric}": trained.best_score,
            "best_epoch": trained.best_epoch,
            "epochs_run": len(trained.history),
            "train_seconds": trained.seconds,
        },
        tags={
            "params.source": f"tune:{tune_run}" if trained.params_source == "tune" else "config",
            "device": trained.device,
            "threads": trained.threads,
        },
    )
    run.figures(
        {"learning_curve.png": plots.learning_curve(trained.history, f"val_{metric}", trained.best_epoch)}
    )
    prepared: PreparedData = call.upstream["prepare"]
    run.model(trained.predictor(prepared), prepared.frames["test"].head(3))


STAGE = Stage(
    name="train",
    needs=("prepare",),
    uses=lambda cfg: () if cfg.train.params_from == "config" else ("tune",),
    output=TrainedModel,
    run=run,
    record=record,
)
